"""Weights with a low-rank term on the kernels: every scheme and path against reference.linear (float64).

Tolerances: the family kernels write x W_hat^T (+ bias) in x's dtype and the generic correction
adds (x B^T) A^T in fp32 and rounds once more, so fp16 outputs carry two roundings of 2^-11 on top
of the family's own error (its GEMM bound is 3e-3): TOL_FP16 = 4e-3. fp32 is exact up to
accumulation order: TOL_FP32 = 2e-4 (the families' fp32 bound). Each test also checks that
leaving the correction out would fail it (the term is far above the tolerance).
"""
import pytest
import torch

import lowbit
from helpers import assert_close, nan_out, rel_err
from lowbit.formats import QuantizedWeight, Scheme
from lowbit.kernels import KernelPath, family_for, lowrank as lr

TOL_FP16 = 4e-3
TOL_FP32 = 2e-4
N, K = 72, 160  # ragged: not powers of two, K a multiple of 32 for the grouped schemes
OPTIONS = {s: {} for s in Scheme}
OPTIONS.update({Scheme.INT1: {"group_size": 32}, Scheme.INT2: {"group_size": 32}, Scheme.INT3: {"group_size": 32},
                Scheme.INT4: {"group_size": 32}, Scheme.INT8: {"group_size": 32}, Scheme.NF4: {"group_size": 32},
                Scheme.LUT3: {"iters": 2}, Scheme.LUT4: {"iters": 2}, Scheme.SQ3: {"iters": 2},
                Scheme.SQ4: {"iters": 2}})


def _tol(dtype):
    return TOL_FP32 if dtype == torch.float32 else TOL_FP16


def _qw(scheme, rank=12, device="cpu", n=N, k=K):
    """A weight of `scheme` with a rank-`rank` term. The quantizer's factors are replaced by random fp16 ones
    with A B about 0.3 |W|: the kernels must add any term, and the SVD's is tiny for int8."""
    torch.manual_seed(1)
    w = torch.randn(n, k)
    qw = lowbit.quantize_weight(w, scheme, lowrank=rank, **OPTIONS[Scheme(scheme)])
    qw.tensors["lowrank_a"] = (torch.randn(n, rank) * 0.55 / rank ** 0.25).half()
    qw.tensors["lowrank_b"] = (torch.randn(rank, k) * 0.55 / rank ** 0.25).half()
    return qw.to(device)


def _without_term(qw):
    return QuantizedWeight(qw.scheme, qw.spec, qw.shape,
                           {k: v for k, v in qw.tensors.items() if not k.startswith("lowrank_")})


def _check(name, y, x, qw, bias=None):
    ref = lowbit.reference.linear(x, qw, bias, out_dtype=torch.float64)
    tol = _tol(x.dtype)
    assert_close(name, ref, y, tol)
    # the term matters: the same call without it is far outside the tolerance
    assert rel_err(lowbit.reference.linear(x, _without_term(qw), bias, out_dtype=torch.float64), ref) > 5 * TOL_FP16


CASES = [pytest.param(s.value, path, dtype, m, id=f"{s.value}-{path}-{str(dtype)[6:]}-m{m}")
         for s in Scheme for path, m in (("gemv", 3), ("gemm", 33))
         for dtype in (torch.float16, torch.float32)]


@pytest.mark.parametrize("scheme,path,dtype,m", CASES)
def test_every_scheme_and_path(scheme, path, dtype, m, device):
    qw = _qw(scheme, device=device)
    x = torch.randn(m, K, device=device, dtype=dtype)
    bias = torch.randn(N, device=device, dtype=dtype)
    _check(f"{scheme} {path}", lowbit.linear(x, qw, bias, path=path), x, qw, bias)


@pytest.mark.parametrize("scheme", ["int4", "lut3", "ternary", "binary"])
@pytest.mark.parametrize("path", [KernelPath.GEMV, KernelPath.GEMM])
def test_explicit_launch_into_a_nan_output(scheme, path, device):
    """FAMILY.launch (the tuner's and tests' entry) adds the term in place into the given output."""
    qw = _qw(scheme, device=device)
    fam = family_for(qw.scheme)
    m = 5
    x = torch.randn(m, K, device=device, dtype=torch.float16)
    cfg = fam.default_config(x, path, m, qw)
    out = nan_out((m, N), torch.float16, device)
    y = fam.launch(x, qw, None, path, cfg, out)
    assert y.data_ptr() == out.data_ptr()
    _check(f"{scheme} launch", out, x, qw)


@pytest.mark.parametrize("m", [1, 2, 7, 16, 33, 100])
@pytest.mark.parametrize("rank", [1, 5, 17, 33])
def test_correction_kernels_ragged_with_split(m, rank, device):
    """add_lowrank alone: y + (x B^T) A^T for ragged M, r (BLOCK_R 16/32/64 masks) and a K split in 3 ranges."""
    n, k = 50, 200
    qw = _qw("lut3", rank=rank, device=device, n=n, k=k)
    x = torch.randn(m, k, device=device, dtype=torch.float32)
    y = torch.randn(m, n, device=device, dtype=torch.float32)
    want = y.double() + lowbit.reference.lowrank.apply(x, qw)
    for cfg in (lr.LowrankConfig(block_m=16, block_n=32, block_k=32, split=3),
                lr.LowrankConfig(block_m=16, block_n=64, block_k=64, split=1)):
        got = lr.add_lowrank(x, qw, y.clone(), config=cfg)
        assert_close(f"m={m} r={rank} {cfg}", want, got, 1e-5)
        inplace = y.clone()
        assert lr.add_lowrank(x, qw, inplace, inplace=True, config=cfg) is inplace
        assert torch.equal(inplace, got)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_correction_dtypes(dtype, device):
    """fp16 x runs fp16 projection dots; bf16 and fp32 run exact fp32 ones (so bf16 is right in the interpreter)."""
    qw = _qw("int3", rank=9, device=device)
    x = torch.randn(6, K, device=device, dtype=dtype)
    y = torch.randn(6, N, device=device, dtype=dtype)
    got = lr.add_lowrank(x, qw, y, config=lr.LowrankConfig(16, 32, 64, 2))
    assert got.dtype == dtype
    want = y.double() + lowbit.reference.lowrank.apply(x, qw)
    assert_close(str(dtype), want, got, {torch.float16: 2e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5}[dtype])


def test_fp32_factors(device):
    """Factors stored in fp32 (tiny weights) run the exact fp32 projection."""
    torch.manual_seed(2)
    w = torch.randn(N, K) * 1e-10
    qw = lowbit.quantize_weight(w, "int2", group_size=32, lowrank=6).to(device)
    assert qw["lowrank_a"].dtype == torch.float32
    x = torch.randn(4, K, device=device) * 1e10
    _check("fp32 factors", lowbit.linear(x, qw), x, qw)


def test_leading_dims_and_strided_x(device):
    qw = _qw("nf4", device=device)
    x = torch.randn(2, 3, 2 * K, device=device, dtype=torch.float16)[..., ::2]
    y = lowbit.linear(x, qw)
    assert y.shape == (2, 3, N)
    _check("3-D strided x", y, x, qw)


def test_launch_plans_and_aot_cases():
    qw = QuantizedWeight.empty("int3", (8192, 8192), lowrank=32)
    plans = lr.launch_plans(qw, 1, torch.float16)
    assert [p.label for p in plans] == ["lowrank x.B^T", "lowrank y += t.A^T"]
    # the projection reads x and B once; the expansion reads A and y and writes y
    assert plans[0].hbm_bytes >= 32 * 8192 * 2 + 8192 * 2
    assert plans[1].hbm_bytes >= 8192 * 32 * 2 + 2 * 8192 * 2
    assert plans[0].weights_per_iteration * plans[0].loop_trips * plans[0].ctas == 32 * 8192
    assert lr.launch_plans(QuantizedWeight.empty("int3", (64, 128)), 1, torch.float16) == []
    cases = lr.aot_cases()
    assert {c.kernel.__name__ for c in cases} == {"_lowrank_project_kernel", "_lowrank_expand_kernel"}
    assert all(c.family == "lowrank" for c in cases)
