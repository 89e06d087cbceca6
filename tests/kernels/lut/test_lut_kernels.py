"""LUT family kernels (lut3/lut4/sq3/sq4/nf4) against the float64 reference, under the interpreter on CPU.

Error bounds, as rel_err = max|out - ref| / max|ref| against reference.linear in float64:
- FP16_TOL = 2e-3 for fp16 outputs. The final cast rounds each element by at most 2^-11 of
  itself (<= 4.9e-4 of max|ref|). The GEMM path also feeds the tile to tensor cores in fp16:
  LUT entries are fp16 already (exact), NF4 products NF4[q]*absmax round by 2^-11 each, and
  those independent roundings add like a random walk to ~2^-11 * ||x*w||_2 <= 4.9e-4 * max|y|
  on these randn shapes. fp32 accumulation (K <= 384) adds < 1e-5. Sum ~1e-3; 2e-3 leaves 2x.
- FP32_TOL = 2e-5 for fp32 activations (exact ieee dots, no fp16 anywhere): the fp32 sum of
  K = 384 products errs by ~sqrt(K) * 2^-24 * sum|x*w| ~ 20 * 6e-8 * 4 max|y| ~ 5e-6.
- BF16_TOL = 1e-2 for the bf16 GEMV case: the interpreter's fp32->bf16 cast truncates (error
  < 2^-8 = 3.9e-3 of the element) instead of rounding; 1e-2 leaves 2.5x.
Integer-free: every scheme here has float outputs, so nothing is compared exactly.
"""
import pytest
import torch

import lowbit
from helpers import assert_close, nan_out
from lowbit.formats import LUTSpec, QuantizedWeight, Scheme
from lowbit.kernels import KernelConfig, KernelPath, operands
from lowbit.kernels.lut import FAMILY

FP16_TOL, FP32_TOL, BF16_TOL = 2e-3, 2e-5, 1e-2
TOL = {torch.float16: FP16_TOL, torch.float32: FP32_TOL, torch.bfloat16: BF16_TOL}
N, K = 200, 384

# test name -> (scheme, quantizer options)
SCHEMES = {"lut3": ("lut3", {}), "lut4": ("lut4", {}), "sq3": ("sq3", {}), "sq4": ("sq4", {"outlier_fraction": 0.02}),
           "nf4": ("nf4", {"group_size": 64}), "nf4pc": ("nf4", {"group_size": -1}),
           "nf4g32": ("nf4", {"group_size": 32})}

_CACHE = {}


def qweight(name, device, n=N, k=K):
    """Quantize a fixed randn weight once per (scheme, shape); rows scaled so tables differ per row."""
    key = (name, n, k, device)
    if key not in _CACHE:
        g = torch.Generator().manual_seed(1234 + n + k)
        w = torch.randn(n, k, generator=g) * torch.linspace(0.2, 2.0, n).unsqueeze(1)
        scheme, opts = SCHEMES[name]
        _CACHE[key] = lowbit.quantize_weight(w, scheme, **opts).to(device)
    return _CACHE[key]


def interp_config(path, m, qw):
    """The heuristic config, except large-M GEMV cases get wide K tiles (fewer interpreter steps)."""
    cfg = FAMILY.heuristic(path, m, qw)
    if path is KernelPath.GEMV and m > 8:
        cfg = KernelConfig(8, 64, 256, 1, 1, 4, 2)
        while FAMILY.config_problem(path, cfg, qw, torch.float32):  # NF4: a tile inside one group
            cfg = KernelConfig(8, 64, cfg.block_k // 2, 1, 1, 4, 2)
    return cfg


def run_launch(qw, m, dtype, path, device, bias=True, config=None):
    x = torch.randn(m, qw.K, dtype=dtype, device=device)
    b = torch.randn(qw.N, dtype=dtype, device=device) if bias else None
    cfg = config or interp_config(path, m, qw)
    out = nan_out((m, qw.N), dtype, device)
    y = FAMILY.launch(x, qw, b, path, cfg, out)
    assert y is out and y.dtype == dtype
    ref = lowbit.reference.linear(x, qw, b, out_dtype=torch.float64)
    return y, ref


# scheme x path x dtype, with M spread over {1, 2, 3, 7, 16, 33, 64, 100}
CASES = [
    ("lut3", "gemv", torch.float16, 1), ("lut3", "gemv", torch.float32, 7), ("lut3", "gemm", torch.float16, 33),
    ("lut3", "gemm", torch.float32, 2),
    ("lut4", "gemv", torch.float16, 3), ("lut4", "gemv", torch.float32, 64), ("lut4", "gemm", torch.float16, 100),
    ("lut4", "gemm", torch.float32, 16),
    ("sq3", "gemv", torch.float16, 2), ("sq3", "gemv", torch.float32, 33), ("sq3", "gemm", torch.float16, 64),
    ("sq3", "gemm", torch.float32, 1),
    ("sq4", "gemv", torch.float16, 16), ("sq4", "gemv", torch.float32, 1), ("sq4", "gemm", torch.float16, 7),
    ("sq4", "gemm", torch.float32, 64),
    ("nf4", "gemv", torch.float16, 100), ("nf4", "gemv", torch.float32, 2), ("nf4", "gemm", torch.float16, 1),
    ("nf4", "gemm", torch.float32, 33),
    ("nf4pc", "gemv", torch.float16, 7), ("nf4pc", "gemm", torch.float16, 16),
    ("nf4g32", "gemv", torch.float32, 3), ("nf4g32", "gemm", torch.float32, 64),
]


@pytest.mark.parametrize("name,path,dtype,m", CASES)
def test_launch_matches_reference(name, path, dtype, m, device):
    qw = qweight(name, device)
    y, ref = run_launch(qw, m, dtype, KernelPath(path), device, bias=m % 2 == 1)
    assert_close(f"{name} {path} {dtype} M={m}", ref, y, TOL[dtype])


@pytest.mark.parametrize("name,dtype", [("lut4", torch.float16), ("sq3", torch.float16), ("nf4", torch.float32)])
def test_gemv_split_k_accumulates_once(name, dtype, device):
    """Split-K partial sums meet in an fp32 buffer; bias is added by one split only."""
    qw = qweight(name, device)
    cfg = KernelConfig(2, 64, 32, 4, 1, 4, 2)
    y, ref = run_launch(qw, 3, dtype, KernelPath.GEMV, device, config=cfg)
    assert_close(f"{name} split-K", ref, y, TOL[dtype])


def test_bf16_gemv(device):
    qw = qweight("sq4", device)
    y, ref = run_launch(qw, 2, torch.bfloat16, KernelPath.GEMV, device)
    assert_close("bf16 gemv", ref, y, BF16_TOL)


def _sq_with_rows(device, row_counts, k=K, n=N, bits=3, fixed=None):
    """An sq weight whose CSR has exactly `row_counts[r]` outliers in row r at random columns, plus
    `fixed` {row: [cols]}; every other row is empty."""
    base = qweight("lut3" if bits == 3 else "lut4", "cpu", n, k)
    g = torch.Generator().manual_seed(7)
    per_row = {r: sorted(torch.randperm(k, generator=g)[:c].tolist()) for r, c in row_counts.items()}
    per_row.update(fixed or {})
    rows, cols = [], []
    for r in sorted(per_row):
        rows += [r] * len(per_row[r])
        cols += per_row[r]
    counts = torch.bincount(torch.tensor(rows), minlength=n)
    row_ptr = torch.zeros(n + 1, dtype=torch.int32)
    row_ptr[1:] = counts.cumsum(0).to(torch.int32)
    nnz = len(cols)
    tensors = dict(base.tensors, row_ptr=row_ptr, col_idx=torch.tensor(cols, dtype=torch.int32),
                   values=(torch.randn(nnz, generator=g) * 3).to(torch.float16))
    scheme = Scheme.SQ3 if bits == 3 else Scheme.SQ4
    return QuantizedWeight(scheme, LUTSpec(bits, nnz / (n * k)), (n, k), tensors).to(device)


@pytest.mark.parametrize("path,dtype,m", [("gemv", torch.float16, 3), ("gemm", torch.float32, 33),
                                          ("gemm", torch.float16, 16)])
def test_heavy_outlier_row_and_empty_rows(path, dtype, m, device):
    """One row holds 300 of 384 possible outliers, a few rows hold one or two (two at the corners of
    the last, partial tiles), most hold none."""
    qw = _sq_with_rows(device, {5: 300, 0: 1, 199: 2, 100: 7}, fixed={198: [0, K - 1]})
    rp = qw["row_ptr"].cpu()
    assert int((rp[1:] == rp[:-1]).sum()) == N - 5  # precondition: 195 rows without outliers
    y, ref = run_launch(qw, m, dtype, KernelPath(path), device)
    assert_close("heavy row", ref, y, TOL[dtype])
    # the heavy row alone: its outliers dominate, so check it separately against its own scale
    assert_close("row 5", ref[:, 5], y[:, 5], TOL[dtype])


def test_quantizer_leaves_rows_without_outliers(device):
    qw = qweight("sq3", device)  # 0.45% of 200 x 384 = 346 outliers over 200 rows
    rp = qw["row_ptr"].cpu()
    assert qw["col_idx"].numel() == round(0.0045 * N * K)
    assert int((rp[1:] == rp[:-1]).sum()) > 0
    y, ref = run_launch(qw, 1, torch.float32, KernelPath.GEMV, device)
    assert_close("sq3 natural", ref, y, FP32_TOL)


def test_sq_with_zero_stored_outliers(device):
    """A tiny weight where round(fraction * N * K) == 0: the outlier pass is skipped by shape."""
    w = torch.randn(4, 16)
    qw = lowbit.quantize_weight(w, "sq4").to(device)
    assert qw["col_idx"].numel() == 0
    x = torch.randn(3, 16, device=device)
    for path in ("gemv", "gemm"):
        assert_close(path, lowbit.reference.linear(x, qw, out_dtype=torch.float64), lowbit.linear(x, qw, path=path), FP32_TOL)


@pytest.mark.parametrize("name", ["lut4", "sq3", "nf4"])
def test_public_linear_any_leading_dims(name, device):
    """lowbit.linear: 3-D, non-contiguous input; default path choice by M; output keeps x's dtype."""
    qw = qweight(name, device)
    base = torch.randn(K, 2, 5, dtype=torch.float16, device=device)
    x = base.permute(1, 2, 0)  # [2, 5, K], K not contiguous
    x0 = x.clone()
    b = torch.randn(N, dtype=torch.float32, device=device)  # bias dtype may differ from x
    y = lowbit.linear(x, qw, b)
    if device == "cuda":  # on a GPU, also prove the forward never synchronises with the host
        torch.cuda.set_sync_debug_mode("error")
        try:
            for path in ("gemv", "gemm"):
                lowbit.linear(x, qw, b, path=path)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert y.shape == (2, 5, N) and y.dtype == torch.float16
    assert torch.equal(x, x0)
    ref = lowbit.reference.linear(x, qw, b, out_dtype=torch.float64)
    assert_close(name, ref, y, FP16_TOL)


def test_dispatch_picks_gemv_then_gemm(device):
    qw = qweight("lut4", device)
    assert FAMILY.choose_path(1) is KernelPath.GEMV and FAMILY.choose_path(8) is KernelPath.GEMV
    assert FAMILY.choose_path(9) is KernelPath.GEMM
    x = torch.randn(12, K, device=device, dtype=torch.float16)
    assert_close("M=12", lowbit.reference.linear(x, qw, out_dtype=torch.float64), lowbit.linear(x, qw), FP16_TOL)


def test_custom_op_fake_and_compile(device):
    """The op's fake matches the real output, and torch.compile(fullgraph=True) traces the forward."""
    qw = qweight("sq4", device)
    x = torch.randn(3, K, device=device)
    ops = operands(qw)
    sparse = [ops[name] for name in ("row_ptr", "col_idx", "values")]
    args = (x, ops["qweight"], ops["lut"], None, *sparse, None, 4, 0, "gemv", [2, 64, 128, 1, 1, 4, 2])
    torch.library.opcheck(torch.ops.lowbit.lut_linear.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    fn = torch.compile(lambda t: lowbit.linear(t, qw), fullgraph=True, backend="aot_eager")
    assert_close("compiled", lowbit.reference.linear(x, qw, out_dtype=torch.float64), fn(x), FP32_TOL)


def test_search_space_heuristic_and_aot_cases():
    qw3, qw4 = qweight("lut3", "cpu"), qweight("nf4", "cpu")
    for qw in (qw3, qw4):
        gemv = FAMILY.search_space(KernelPath.GEMV, qw)
        gemm = FAMILY.search_space(KernelPath.GEMM, qw)
        assert gemv and gemm and len(set(gemv)) == len(gemv)
        assert all(c.block_k >= (16 if qw.bits == 3 else 8) for c in gemv)
        assert all(min(c.block_m, c.block_n, c.block_k) >= 16 for c in gemm)
        for m in (1, 2, 7, 8):
            assert FAMILY.heuristic(KernelPath.GEMV, m, qw).block_m >= min(m, 8)
        for m in (9, 100, 4096):
            assert min(FAMILY.heuristic(KernelPath.GEMM, m, qw).to_dict()[f] for f in ("block_m", "block_n")) >= 16
    cases = FAMILY.aot_cases()
    assert 10 <= len(cases) <= 50
    assert any(c.expects_tensor_cores for c in cases)


# -- bad input through the public API ------------------------------------------------------------
def test_bad_csr_is_rejected_at_construction():
    good = _sq_with_rows("cpu", {3: 4, 9: 2})
    t = dict(good.tensors)
    bad_rp = t["row_ptr"].clone()
    bad_rp[5] = 6  # 0..0, 6, 4, ... : not monotone
    with pytest.raises(ValueError, match="monotone"):
        QuantizedWeight(good.scheme, good.spec, good.shape, dict(t, row_ptr=bad_rp))
    bad_col = t["col_idx"].clone()
    bad_col[0] = K
    with pytest.raises(ValueError, match="col_idx out of range"):
        QuantizedWeight(good.scheme, good.spec, good.shape, dict(t, col_idx=bad_col))
    bad_col[0] = -1
    with pytest.raises(ValueError, match="col_idx out of range"):
        QuantizedWeight(good.scheme, good.spec, good.shape, dict(t, col_idx=bad_col))
    with pytest.raises(ValueError, match="end at nnz"):
        QuantizedWeight(good.scheme, good.spec, good.shape, dict(t, col_idx=t["col_idx"][:-1], values=t["values"][:-1]))


@pytest.mark.parametrize("shape", [(N, 4), (N, 16), (N + 1, 8)])
def test_wrong_lut_size(shape, device):
    qw = qweight("lut3", device)
    with pytest.raises(ValueError, match="'lut' has shape"):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, dict(qw.tensors, lut=torch.zeros(shape, dtype=torch.float16)))
    # a tensors dict swapped after validation is caught by the kernel path before any launch
    broken = QuantizedWeight(qw.scheme, qw.spec, qw.shape, dict(qw.tensors))
    broken.tensors["lut"] = torch.zeros(shape, dtype=torch.float16, device=device)
    with pytest.raises(ValueError, match="'lut' has shape"):
        lowbit.linear(torch.randn(1, K, device=device), broken)


@pytest.mark.parametrize("frac,exc", [(0.0, ValueError), (-0.01, ValueError), (0.2, ValueError), (0.1000001, ValueError),
                                      ("0.01", TypeError), (True, TypeError)])
def test_outlier_fraction_out_of_range(frac, exc):
    with pytest.raises(exc, match="outlier_fraction"):
        lowbit.quantize_weight(torch.randn(8, 64), "sq3", outlier_fraction=frac)
    if exc is ValueError:
        with pytest.raises(ValueError, match="outlier_fraction"):
            good = _sq_with_rows("cpu", {1: 2})
            QuantizedWeight(good.scheme, LUTSpec(3, frac), good.shape, good.tensors)


def test_corrupted_csr_after_validation_cannot_crash(device):
    """Values mutated in place after validation: the kernels stay in bounds (the interpreter would segfault)."""
    qw = _sq_with_rows(device, {0: 3, 150: 5})
    qw.tensors["row_ptr"][1:] = torch.tensor([7, -5] * 100, dtype=torch.int32, device=device)
    qw.tensors["col_idx"][:] = torch.tensor([10 ** 6, -3, 5, K, 2 ** 31 - 1, 0, 1, 383], dtype=torch.int32,
                                            device=device)
    for path in ("gemv", "gemm"):
        y = lowbit.linear(torch.randn(2, K, device=device), qw, path=path)
        assert bool(torch.isfinite(y).all())


def test_bad_activation_and_launch_arguments(device):
    qw = qweight("lut4", device)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(torch.ones(2, K, dtype=torch.int32, device=device), qw)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        lowbit.linear(torch.randn(2, K + 1, device=device), qw)
    assert lowbit.linear(torch.randn(0, K, device=device), qw).shape == (0, N)  # as F.linear
    x = torch.randn(2, K, device=device)
    with pytest.raises(ValueError, match="out must have shape"):
        FAMILY.launch(x, qw, None, "gemv", FAMILY.heuristic(KernelPath.GEMV, 2, qw), nan_out((2, N + 1), x.dtype, device))
    with pytest.raises(ValueError, match="block_k >= 16"):
        FAMILY.launch(x, qw, None, "gemm", KernelConfig(8, 64, 64), nan_out((2, N), x.dtype, device))
    with pytest.raises(ValueError, match="the lut kernels serve lut3/lut4/nf4/sq3/sq4, not scheme 'int4'"):
        FAMILY.launch(x, lowbit.quantize_weight(torch.randn(N, K), "int4").to(device), None, "gemv",
                      KernelConfig(1, 64, 64), nan_out((2, N), x.dtype, device))
