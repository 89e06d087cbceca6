"""Stand-ins for what the autotune tests cannot have on a CPU machine: a GPU, CUDA weights, a kernel family.

Lookups on CUDA are exercised with a weight stand-in whose .device says "cuda" and a GpuInfo planted
for device 0; the tuner runs on FakeFamily, a PyTorch family whose configs can be made wrong or broken.
"""
import torch
import triton

import lowbit
from lowbit.autotune import cache
from lowbit.formats import dim_bucket
from lowbit.kernels import KernelConfig, KernelFamily, KernelPath

GPU = cache.GpuInfo("Fake GPU 80GB", (9, 0), triton.__version__)
BROKEN = KernelConfig(block_k=13)  # FakeFamily computes garbage for it
CRASH = KernelConfig(block_k=7)  # and raises for this one
CFG_A = KernelConfig(block_m=1, block_n=256, block_k=64, split_k=4, group_m=1, num_warps=4, num_stages=2)
CFG_B = KernelConfig(block_m=2, block_n=128, block_k=32, split_k=2, group_m=1, num_warps=4, num_stages=2)


def small_qw(scheme="int4", n=40, k=128, **opts):
    """A small random weight (int4 defaults to group 64)."""
    if scheme == "int4":
        opts.setdefault("group_size", 64)
    return lowbit.quantize_weight(torch.randn(n, k), scheme, **opts)


class FakeCudaWeight:
    """Looks like a QuantizedWeight on cuda:0 to lookup() (scheme, spec, N, K, device) without a GPU."""

    def __init__(self, qw):
        self.scheme, self.spec, self.N, self.K = qw.scheme, qw.spec, qw.N, qw.K
        self.device = torch.device("cuda", 0)


def plant_gpu(gpu=GPU):
    """Make lookups on cuda:0 see `gpu` without initialising CUDA."""
    cache._DEVICE_GPU[0] = gpu


def key_of(qw, path=KernelPath.GEMV, m=1, dtype=torch.float16, family="uniform"):
    return cache.CacheKey.of(family, qw, path, dim_bucket(m), dtype)


class FakeFamily(KernelFamily):
    """A PyTorch stand-in family (any scheme): exact for every config except BROKEN and CRASH."""

    name = "fake"
    schemes = frozenset(lowbit.Scheme)

    def __init__(self, space=None):
        self.space = space or [KernelConfig(block_k=16), KernelConfig(block_k=32), BROKEN, CRASH]
        self.launched = []

    def forward(self, x2d, qw, bias, path, config):
        raise NotImplementedError

    def run(self, x2d, qw, bias, path, config, out):
        raise NotImplementedError

    def launch(self, x2d, qw, bias, path, config, out):
        self.launched.append(config)
        if config == CRASH:
            raise ValueError("config cannot run")
        y = lowbit.reference.linear(x2d, qw, out_dtype=torch.float32)
        out.copy_(y * 1.5 if config == BROKEN else y)
        return out

    def search_space(self, path, qw=None, dtype=torch.float16):
        return list(self.space)

    def heuristic(self, path, m, qw, dtype=torch.float16):
        return KernelConfig()

    def aot_cases(self):
        return []
