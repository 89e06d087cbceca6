"""Interpreter-sized configs (KernelFamily.interpreter_config): valid for every family, correct, and
never chosen for tensors that do not run under the interpreter.

Error bounds are each family's own, as stated (and justified) in its kernel test file; larger
tiles change only the fp32 summation order, which those bounds already cover (fp32 sums of
K = 384 products, ~sqrt(K) * 2^-24 relative, far below every bound):
- uniform: fp16 GEMV 1e-3, fp16 GEMM 3e-3, fp32 2e-4 (tests/kernels/uniform/test_uniform_kernels.py)
- lut/sq/nf4: fp16 2e-3, fp32 2e-5 (tests/kernels/lut/test_lut_kernels.py)
- ternary/ternary_a16/binary: fp16 1e-3, fp32 3e-5 (tests/kernels/sign/test_ternary_kernels.py, _binary_)
"""
import pytest
import torch

import lowbit
from helpers import INTERPRET
from helpers import assert_close, nan_out
from lowbit.dispatch import choose_config
from lowbit.kernels import KernelPath, lut, sign, uniform

M, N, K = 33, 200, 384
GEMV_M = 3

# scheme -> (family, quantizer options, {dtype: {path: bound}})
_UNI = {torch.float16: {KernelPath.GEMV: 1e-3, KernelPath.GEMM: 3e-3}, torch.float32: {KernelPath.GEMV: 2e-4,
                                                                                     KernelPath.GEMM: 2e-4}}
_LUT = {torch.float16: {p: 2e-3 for p in KernelPath}, torch.float32: {p: 2e-5 for p in KernelPath}}
_SIGN = {torch.float16: {p: 1e-3 for p in KernelPath}, torch.float32: {p: 3e-5 for p in KernelPath}}
SCHEMES = {
    "int4": (uniform.FAMILY, {"group_size": 64}, _UNI),
    "int3": (uniform.FAMILY, {"group_size": 64}, _UNI),  # 3-bit: 32 codes in 3 words
    "int2pc": (uniform.FAMILY, {"group_size": -1}, _UNI),  # per channel: BLOCK_K not capped by a group
    "lut4": (lut.FAMILY, {"iters": 3}, _LUT),
    "sq3": (lut.FAMILY, {"iters": 3}, _LUT),  # outliers: GEMV atomic pass, GEMM per-tile fusion
    "nf4": (lut.FAMILY, {"group_size": 32}, _LUT),
    "ternary": (sign.FAMILY, {}, _SIGN),
    "ternary_a16": (sign.FAMILY, {}, _SIGN),
    "binary": (sign.FAMILY, {}, _SIGN),
}
_CACHE = {}


def _qw(name):
    if name not in _CACHE:
        g = torch.Generator().manual_seed(7)
        w = torch.randn(N, K, generator=g) * torch.linspace(0.2, 2.0, N).unsqueeze(1)
        scheme = name.removesuffix("pc")
        _CACHE[name] = lowbit.quantize_weight(w, scheme, **SCHEMES[name][1])
    return _CACHE[name]


@pytest.mark.skipif(not INTERPRET, reason="interpreter configs are only chosen under TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("path", list(KernelPath), ids=lambda p: p.value)
@pytest.mark.parametrize("name", list(SCHEMES))
def test_interpreter_config_runs_and_matches_reference(name, path, dtype):
    fam, _, bounds = SCHEMES[name]
    qw = _qw(name)
    m = GEMV_M if path is KernelPath.GEMV else M
    x = torch.randn(m, K, dtype=dtype)
    bias = torch.randn(N, dtype=dtype)
    cfg = fam.interpreter_config(path, m, qw, dtype)
    assert cfg.split_k == 1 and cfg.block_n >= 128, cfg.label()  # large tiles, one K pass
    assert choose_config(fam, x, path, m, qw) == cfg  # lowbit.linear picks it for CPU tensors
    out = nan_out((m, N), dtype, "cpu")
    y = fam.launch(x, qw, bias, path, cfg, out)  # launch validates the config for this weight
    ref = lowbit.reference.linear(x, qw, bias, out_dtype=torch.float64)
    assert_close(f"{name} {path.value} {cfg.label()}", ref, y, bounds[dtype][path])
    # the forward (custom op, leading dims) goes through the same selection
    y3 = lowbit.linear(x.reshape(1, m, K), qw, bias, path=path.value)
    assert_close(f"{name} forward", ref, y3.reshape(m, N), bounds[dtype][path])


# Tile sizes (block_m, block_n, block_k) the GPU heuristics pick; split-K is left out because it
# depends on the GPU's SM count. The uniform GEMV rows are the tensor-core GEMV's (x rows, weight
# rows, codes per virtual group) since issue 13.
GPU_TILES = {
    ("int4", KernelPath.GEMV): (4, 64, 64), ("int4", KernelPath.GEMM): (64, 128, 64),
    ("int3", KernelPath.GEMV): (4, 64, 64), ("int3", KernelPath.GEMM): (64, 128, 64),
    ("lut4", KernelPath.GEMV): (4, 32, 32), ("lut4", KernelPath.GEMM): (64, 128, 32),
    ("nf4", KernelPath.GEMV): (4, 32, 32), ("nf4", KernelPath.GEMM): (64, 128, 32),
    # sign family: block_n counts output rows, 16 lanes (GEMV) or 64 lanes (GEMM) of 4, 8 or 16 rows
    ("ternary", KernelPath.GEMV): (4, 64, 1024), ("ternary", KernelPath.GEMM): (32, 256, 128),
    ("ternary_a16", KernelPath.GEMV): (4, 128, 1024), ("ternary_a16", KernelPath.GEMM): (32, 512, 64),
    ("binary", KernelPath.GEMV): (4, 256, 512), ("binary", KernelPath.GEMM): (16, 1024, 64),
}


@pytest.mark.parametrize("name,path", list(GPU_TILES), ids=lambda v: getattr(v, "value", v))
def test_gpu_path_keeps_heuristic_configs(name, path):
    fam = SCHEMES[name][0]
    qw = _qw(name)
    m = GEMV_M if path is KernelPath.GEMV else M
    h = fam.heuristic(path, m, qw, torch.float16)
    assert (h.block_m, h.block_n, h.block_k) == GPU_TILES[(name, path)]
    assert h != fam.interpreter_config(path, m, qw, torch.float16)
    # a tensor that is not a CPU tensor (meta stands in for CUDA here) never gets the interpreter config
    x = torch.empty(m, K, dtype=torch.float16, device="meta")
    assert fam.default_config(x, path, m, qw) == h
    assert choose_config(fam, x, path, m, qw) == h  # no cache entry for a meta tensor: the heuristic
