"""OneBit 1-bit kernels (scheme "binary"): y = ((x * g) . S^T) * h with signs packed 32 per int32.

The sign-code kernels of :mod:`._ternary_kernels` serve this scheme with BITS = 1. A bit
decodes to s = 2 * bit - 1. The per-input scale g[K] is folded into the weight tile as
s * g[k], which is exact in fp16 and fp32 because only the sign changes. The per-output
scale h[N] is applied in the epilogue. The GEMV path handles small M (memory-bound,
split-K); the GEMM path uses tensor-core tiles.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .._checks import check_linear_args
from ..formats import Scheme, dim_bucket
from . import _ternary_launch as L
from ._common import KernelConfig, KernelFamily, KernelPath, check_runtime, flatten_rows
from .ternary import check_out


def _run(x, qweight, g, h, bias, path: KernelPath, cfg: KernelConfig, out):
    x = x if x.stride(-1) == 1 else x.contiguous()
    return L.run(L.BINARY, path, cfg, x, None, qweight, g, h, bias, out)


@torch.library.custom_op("lowbit::binary_linear", mutates_args=())
def binary_linear(x: torch.Tensor, qweight: torch.Tensor, g: torch.Tensor, h: torch.Tensor,
                  bias: Optional[torch.Tensor], path: str, config: List[int]) -> torch.Tensor:
    """OneBit linear on x [M, K]: sign bits qweight [K/32, N], g [K], h [N]."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    return _run(x, qweight, g, h, bias, KernelPath(path), L.config_from_list(config), out)


@binary_linear.register_fake
def _(x, qweight, g, h, bias, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


class BinaryFamily(KernelFamily):
    """1-bit sign weights with OneBit's two fp16 scale vectors."""

    name = "binary"
    schemes = frozenset({Scheme.BINARY})
    gemv_max_m = 8

    def _check(self, x, qw, bias) -> None:
        check_linear_args(x, qw, bias)
        self.check_served(qw)
        check_runtime(x)

    def forward(self, x, qw, bias, path):
        self._check(x, qw, bias)
        x2d = flatten_rows(x)
        m = x2d.shape[0]
        path = KernelPath.parse(path) or self.choose_path(m)
        cfg = self.select_config(x, path, m, qw)
        y = binary_linear(x2d, qw["qweight"], qw["g"], qw["h"], bias, path.value, L.config_list(cfg))
        return y.reshape(*x.shape[:-1], qw.N)

    def launch(self, x2d, qw, bias, path, config, out):
        self._check(x2d, qw, bias)
        if x2d.dim() != 2:
            raise ValueError(f"launch takes x2d [M, K], got shape {tuple(x2d.shape)}")
        path = KernelPath.parse(path)
        if path is None:
            raise ValueError("launch needs an explicit path ('gemv' or 'gemm')")
        L.check_config(L.BINARY, path, config)
        check_out(out, x2d, qw.N)
        return _run(x2d, qw["qweight"], qw["g"], qw["h"], bias, path, config, out)

    def search_space(self, path, qw=None):
        return L.search_space(L.BINARY, KernelPath.parse(path))

    def heuristic(self, path, m, qw, dtype=torch.float16):
        return L.heuristic(L.BINARY, KernelPath.parse(path), m, qw.N, qw.K, dtype)

    def config_for(self, path, m, qw, dtype):
        """The cached config, else the heuristic for this activation dtype (fp32 needs smaller tiles)."""
        from ..autotune import lookup

        cfg = lookup(self.name, qw, path, dim_bucket(m), dtype)
        return cfg if cfg is not None else self.heuristic(path, m, qw, dtype)

    def aot_cases(self):
        """Heuristic configs of both paths for fp16/bf16/fp32, the largest tiles, and the split-K reduction."""
        fam, kind, gemv, gemm = self.name, L.BINARY, KernelPath.GEMV, KernelPath.GEMM
        f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
        def h(p, m, dt=f16):
            return L.heuristic(kind, p, m, 8192, 8192, dt)

        def sc(p, cfg, dt=f16):
            return L.sign_aot_case(fam, kind, p, dt, cfg, f16)

        one = h(gemv, 1)
        one_split1 = KernelConfig(**{**one.to_dict(), "split_k": 1})
        corner = KernelConfig(block_m=8, block_n=64, block_k=8 * kind.vpw, split_k=4, group_m=1)
        cases = [sc(gemv, one), sc(gemv, one_split1), sc(gemv, h(gemv, 8)), sc(gemv, corner),
                 sc(gemv, one, bf16), sc(gemv, h(gemv, 4, f32), f32)]
        big = KernelConfig(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=4)
        cases += [sc(gemm, h(gemm, 16)), sc(gemm, h(gemm, 64)), sc(gemm, h(gemm, 4096)), sc(gemm, big),
                  sc(gemm, h(gemm, 4096, bf16), bf16), sc(gemm, h(gemm, 64, f32), f32)]
        cases.append(L.reduce_aot_case(fam, kind, f16, 8, f16))
        return cases


FAMILY = BinaryFamily()
