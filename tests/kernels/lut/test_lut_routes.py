"""The LUT family's routes beyond the basic GEMV/GEMM (interpreter on CPU, or a GPU when present).

- M <= 16, fp16 x, 3- or 4-bit codes: the tensor-core GEMV (its pure-Triton twin under the interpreter), pairs
  of x rows per decoded weight;
- large M (>= configs.DECODE_ONCE_MIN_M) for nf4, 3-bit and sq: decode once + dense GEMM;
- split-K and sq outliers through the fixed-order finish kernel: bitwise the same output every run;
- row strides past 2^31 elements (64-bit offsets), on untouched virtual memory.

Tolerances as in test_lut_kernels.py (FP16_TOL 2e-3 covers one fp16 rounding per weight and output;
the tensor-core route also rounds the NF4 code book to fp16 once, 2^-11 relative per weight, which
adds like a random walk and stays far below it).
"""
import pytest
import torch

import lowbit
from helpers import assert_close, nan_out
from lowbit.kernels import KernelConfig, KernelPath
from lowbit.kernels.lut import FAMILY, configs
from lowbit.kernels.lut import workspace_numel

FP16_TOL, FP32_TOL = 2e-3, 2e-5
_CACHE = {}


def qweight(scheme, n, k, device, **opts):
    key = (scheme, n, k, device, tuple(sorted(opts.items())))
    if key not in _CACHE:
        g = torch.Generator().manual_seed(99 + n + k)
        w = torch.randn(n, k, generator=g) * torch.linspace(0.3, 1.5, n).unsqueeze(1)
        if scheme in ("lut3", "lut4", "sq3", "sq4"):
            opts = dict(opts, iters=2)
        _CACHE[key] = lowbit.quantize_weight(w, scheme, **opts).to(device)
    return _CACHE[key]


def run(qw, m, dtype, path, cfg, device, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, qw.K, generator=g).to(dtype).to(device)
    b = torch.randn(qw.N, generator=g).to(dtype).to(device) if bias else None
    out = nan_out((m, qw.N), dtype, device)
    y = FAMILY.launch(x, qw, b, path, cfg, out)
    return y, lowbit.reference.linear(x, qw, b, out_dtype=torch.float64)


def labels(qw, m, path, dtype, cfg):
    return [p.label for p in FAMILY.launch_plans(qw, m, path, dtype, cfg)]


# -- the tensor-core M = 1 GEMV -------------------------------------------------------------------
MMA_CASES = [  # (scheme, options, K, config, bias)
    pytest.param("lut4", {}, 384, KernelConfig(1, 64, 32, 1, 1, 4, 1), True, id="lut4-direct"),
    pytest.param("lut4", {}, 512, KernelConfig(1, 64, 32, 2, 1, 8, 1), False, id="lut4-8warps-split2"),
    pytest.param("lut4", {}, 512, KernelConfig(1, 64, 64, 1, 1, 4, 1), True, id="lut4-unroll8"),
    pytest.param("sq4", {"outlier_fraction": 0.02}, 512, KernelConfig(1, 64, 32, 2, 1, 4, 1), True, id="sq4-split2"),
    pytest.param("sq4", {"outlier_fraction": 0.02}, 384, KernelConfig(1, 64, 32, 1, 1, 4, 1), False, id="sq4-split1"),
    pytest.param("nf4", {"group_size": 64}, 512, KernelConfig(1, 64, 64, 1, 1, 4, 1), True, id="nf4g64"),
    pytest.param("nf4", {"group_size": 32}, 512, KernelConfig(1, 64, 32, 2, 1, 4, 1), True, id="nf4g32-split2"),
    pytest.param("nf4", {"group_size": 128}, 1024, KernelConfig(1, 64, 64, 1, 1, 8, 1), False, id="nf4g128"),
    pytest.param("nf4", {"group_size": -1}, 384, KernelConfig(1, 64, 32, 1, 1, 4, 1), True, id="nf4-per-channel"),
    pytest.param("lut3", {}, 384, KernelConfig(1, 64, 32, 1, 1, 4, 1), True, id="lut3-direct"),
    pytest.param("lut3", {}, 512, KernelConfig(1, 64, 64, 2, 1, 4, 1), False, id="lut3-unroll2-split2"),
    pytest.param("lut3", {}, 768, KernelConfig(1, 64, 32, 1, 1, 8, 1), True, id="lut3-8warps"),
    pytest.param("sq3", {"outlier_fraction": 0.02}, 512, KernelConfig(1, 64, 32, 2, 1, 4, 1), True, id="sq3-split2"),
    pytest.param("sq3", {"outlier_fraction": 0.02}, 384, KernelConfig(1, 64, 32, 1, 1, 4, 1), True, id="sq3-split1"),
]


@pytest.mark.parametrize("scheme,split,expect", [
    pytest.param("sq3", 1, ["mma gemv"], id="sq3-split1"), pytest.param("sq4", 1, ["mma gemv"], id="sq4-split1"),
    pytest.param("sq3", 2, ["mma gemv", "finish + outliers"], id="sq3-split2"),
])
def test_mma_gemv_adds_the_outliers_itself_without_split(scheme, split, expect):
    """One split: the GEMV owns its rows whole and adds their outliers (no finish launch, no workspace)."""
    qw = lowbit.QuantizedWeight.empty(scheme, (8192, 8192))
    cfg = KernelConfig(1, 64, 64, split, 1, 8, 1)
    assert labels(qw, 1, KernelPath.GEMV, torch.float16, cfg) == expect
    ws = workspace_numel(KernelPath.GEMV, 1, qw, cfg, torch.float16)
    assert ws == (0 if split == 1 else split * 8192)


@pytest.mark.parametrize("scheme,opts,k,cfg,bias", MMA_CASES)
def test_mma_gemv_matches_reference(scheme, opts, k, cfg, bias, device):
    qw = qweight(scheme, 192, k, device, **opts)
    assert labels(qw, 1, KernelPath.GEMV, torch.float16, cfg)[0] == "mma gemv"  # the route under test
    y, ref = run(qw, 1, torch.float16, KernelPath.GEMV, cfg, device, bias=bias)
    assert_close(f"{scheme} mma gemv", ref, y, FP16_TOL)


@pytest.mark.parametrize("why,scheme,n,k,dtype,cfg", [
    pytest.param("N not a multiple of 64", "lut4", 200, 384, torch.float16, KernelConfig(1, 64, 32, 1, 1, 4, 1),
                 id="ragged-N"),
    pytest.param("K streams do not divide", "lut4", 192, 392, torch.float16, KernelConfig(1, 64, 32, 1, 1, 4, 1),
                 id="ragged-K"),
    pytest.param("bf16 x", "lut4", 192, 384, torch.bfloat16, KernelConfig(1, 64, 32, 1, 1, 4, 1), id="bf16"),
    pytest.param("K not whole 4-bit words (x would be read past K)", "lut4", 192, 380, torch.float16,
                 KernelConfig(1, 64, 32, 1, 1, 4, 1), id="lut4-K-not-whole-words"),
    pytest.param("K not whole 3-bit units (x would be read past K)", "lut3", 192, 500, torch.float16,
                 KernelConfig(1, 64, 32, 1, 1, 4, 1), id="lut3-K-not-whole-units"),
    pytest.param("3-bit units do not divide into streams", "lut3", 192, 352, torch.float16,
                 KernelConfig(1, 64, 32, 1, 1, 4, 1), id="lut3-ragged-streams"),
])
def test_mma_shape_rules_fall_back_to_the_cuda_core_gemv(why, scheme, n, k, dtype, cfg, device):
    qw = qweight(scheme, n, k, device)
    assert labels(qw, 1, KernelPath.GEMV, dtype, cfg)[0] == "gemv", why
    y, ref = run(qw, 1, dtype, KernelPath.GEMV, cfg, device)
    assert_close(why, ref, y, FP16_TOL if dtype == torch.float16 else 1e-2)


@pytest.mark.parametrize("scheme", ["lut4", "lut3", "sq3", "nf4"])
def test_mma_heuristic_at_m1(scheme):
    qw = lowbit.QuantizedWeight.empty(scheme, (8192, 8192))
    cfg = FAMILY.heuristic(KernelPath.GEMV, 1, qw, torch.float16)
    assert (cfg.block_m, cfg.block_n) == (1, configs.MMA_ROWS)
    assert labels(qw, 1, KernelPath.GEMV, torch.float16, cfg)[0] == "mma gemv"
    f32 = FAMILY.heuristic(KernelPath.GEMV, 1, qw, torch.float32)
    assert labels(qw, 1, KernelPath.GEMV, torch.float32, f32)[0] == "gemv"  # fp32 x: the CUDA-core GEMV


# -- the tensor-core GEMV at M > 1: pairs of x rows share each decoded weight ---------------------------
MMA_ROWS_CASES = [  # (scheme, options, M, K, config, bias): ragged M (rows past M read zeros, stores masked)
    pytest.param("lut4", {}, 2, 384, KernelConfig(2, 64, 32, 1, 1, 4, 1), True, id="lut4-m2"),
    pytest.param("lut4", {}, 3, 512, KernelConfig(4, 64, 32, 2, 1, 4, 1), False, id="lut4-m3-split2"),
    pytest.param("lut4", {}, 16, 384, KernelConfig(16, 64, 32, 1, 1, 4, 1), True, id="lut4-m16"),
    pytest.param("lut4", {}, 11, 384, KernelConfig(4, 64, 32, 1, 1, 4, 1), True, id="lut4-m11-three-row-blocks"),
    pytest.param("nf4", {"group_size": 64}, 5, 512, KernelConfig(8, 64, 64, 1, 1, 4, 1), True, id="nf4g64-m5"),
    pytest.param("nf4", {"group_size": -1}, 16, 512, KernelConfig(16, 64, 32, 2, 1, 4, 1), True, id="nf4-per-channel-m16"),
    pytest.param("nf4", {"group_size": 64}, 13, 512, KernelConfig(8, 64, 64, 1, 1, 4, 1), True, id="nf4g64-m13-two-ctas"),
    pytest.param("lut3", {}, 7, 384, KernelConfig(8, 64, 32, 1, 1, 4, 1), True, id="lut3-m7"),
    pytest.param("sq3", {"outlier_fraction": 0.02}, 4, 384, KernelConfig(4, 64, 32, 1, 1, 4, 1), True,
                 id="sq3-m4-finish-outliers"),
    pytest.param("sq4", {"outlier_fraction": 0.02}, 16, 512, KernelConfig(16, 64, 32, 2, 1, 4, 1), False,
                 id="sq4-m16-split2"),
]


@pytest.mark.parametrize("scheme,opts,m,k,cfg,bias", MMA_ROWS_CASES)
def test_mma_gemv_rows_of_x_match_reference(scheme, opts, m, k, cfg, bias, device):
    qw = qweight(scheme, 192, k, device, **opts)
    plan = labels(qw, m, KernelPath.GEMV, torch.float16, cfg)
    assert plan[0] == "mma gemv", plan  # the route under test
    if opts.get("outlier_fraction"):  # M > 1: the outliers join in the finish kernel, not the GEMV
        assert plan[1:] == ["finish + outliers"], plan
    y, ref = run(qw, m, torch.float16, KernelPath.GEMV, cfg, device, bias=bias, seed=m)
    assert_close(f"{scheme} mma gemv M={m}", ref, y, FP16_TOL)


def test_mma_gemv_strided_rows_of_x(device):
    """x rows with a stride (a view into a wider buffer) reach the row pairs at their own offsets."""
    qw = qweight("lut4", 192, 384, device)
    g = torch.Generator().manual_seed(5)
    wide = torch.randn(6, 384 + 64, generator=g).to(torch.float16).to(device)
    x = wide[:, 32:32 + 384]  # row stride 448 (a multiple of 8, 16-byte aligned rows)
    cfg = KernelConfig(8, 64, 32, 1, 1, 4, 1)
    out = nan_out((6, 192), torch.float16, device)
    y = FAMILY.launch(x, qw, None, KernelPath.GEMV, cfg, out)
    ref = lowbit.reference.linear(x.contiguous(), qw, None, out_dtype=torch.float64)
    assert_close("lut4 mma gemv strided x", ref, y, FP16_TOL)


@pytest.mark.parametrize("scheme,m", [("lut4", 2), ("lut4", 16), ("nf4", 9), ("lut3", 16), ("sq3", 8)])
def test_mma_route_serves_up_to_16_rows(scheme, m):
    """Dispatch: fp16 x with 3-/4-bit codes takes the tensor-core GEMV up to MMA_MAX_M rows (block_m = M
    rounded up to a power of two); past that, or for bf16/fp32 x, the GEMM (or the CUDA-core GEMV at
    M <= 2, fp32 x: <= gemv_max_m)."""
    qw = lowbit.QuantizedWeight.empty(scheme, (8192, 8192))
    assert FAMILY.choose_path(m, qw, torch.float16) is KernelPath.GEMV
    cfg = FAMILY.heuristic(KernelPath.GEMV, m, qw, torch.float16)
    cap = configs.MMA_GROUPED_MAX_BLOCK_M if scheme == "nf4" else 16  # (grouped NF4: two CTAs of 8 rows)
    assert cfg.block_m == min(cap, 1 << (m - 1).bit_length()) and cfg.block_n == configs.MMA_ROWS
    assert labels(qw, m, KernelPath.GEMV, torch.float16, cfg)[0] == "mma gemv"
    assert FAMILY.choose_path(17, qw, torch.float16) is KernelPath.GEMM
    assert FAMILY.choose_path(m, qw, torch.bfloat16) is (KernelPath.GEMV if m <= 2 else KernelPath.GEMM)
    assert FAMILY.choose_path(m, qw, torch.float32) is (KernelPath.GEMV if m <= FAMILY.gemv_max_m else KernelPath.GEMM)


# -- large M: decode once, dense GEMM ---------------------------------------------------------------
@pytest.mark.parametrize("scheme,opts,dtype", [
    pytest.param("sq3", {}, torch.float16, id="sq3-f16"), pytest.param("sq4", {}, torch.float32, id="sq4-f32"),
    pytest.param("nf4", {"group_size": 64}, torch.float16, id="nf4-f16"),
    pytest.param("lut3", {}, torch.float32, id="lut3-f32"),
])
def test_large_m_decodes_once(scheme, opts, dtype, device):
    m = configs.DECODE_ONCE_MIN_M + 3
    qw = qweight(scheme, 72, 192, device, **opts)
    cfg = FAMILY.interpreter_config(KernelPath.GEMM, m, qw, dtype) if device == "cpu" else \
        FAMILY.heuristic(KernelPath.GEMM, m, qw, dtype)
    assert "decode weight" in labels(qw, m, KernelPath.GEMM, dtype, cfg)
    y, ref = run(qw, m, dtype, KernelPath.GEMM, cfg, device)
    assert_close(f"{scheme} decode once", ref, y, FP16_TOL if dtype == torch.float16 else FP32_TOL)


def test_lut4_large_m_keeps_the_fused_decode():
    qw = lowbit.QuantizedWeight.empty("lut4", (4096, 4096))
    cfg = FAMILY.heuristic(KernelPath.GEMM, 4096, qw, torch.float16)
    assert labels(qw, 4096, KernelPath.GEMM, torch.float16, cfg) == ["gemm"]


# -- deterministic split-K -------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,opts,m,path,cfg", [
    pytest.param("sq4", {}, 3, "gemv", KernelConfig(4, 64, 32, 4, 1, 4, 2), id="gemv-split4-outliers"),
    pytest.param("sq4", {"outlier_fraction": 0.02}, 1, "gemv", KernelConfig(1, 64, 32, 2, 1, 4, 1), id="mma-split2"),
    pytest.param("nf4", {"group_size": 64}, 20, "gemm", KernelConfig(16, 64, 64, 4, 8, 4, 2), id="gemm-split4"),
])
def test_split_k_is_bitwise_deterministic(scheme, opts, m, path, cfg, device):
    qw = qweight(scheme, 192, 512, device, **opts)
    first, ref = run(qw, m, torch.float16, KernelPath(path), cfg, device, seed=5)
    assert_close("split-K", ref, first, FP16_TOL)
    for _ in range(2):
        again, _ = run(qw, m, torch.float16, KernelPath(path), cfg, device, seed=5)
        assert torch.equal(first, again)


# -- 64-bit offsets ----------------------------------------------------------------------------------
BIG = 2 ** 31 + 64  # a row stride past 2^31 elements


def _strided_rows(rows: torch.Tensor, device) -> torch.Tensor:
    """`rows` [M, C] placed BIG elements apart in one buffer (virtual memory: untouched pages cost nothing)."""
    m, c = rows.shape
    buf = torch.empty((m - 1) * BIG + c, dtype=rows.dtype, device=device)
    view = buf.as_strided((m, c), (BIG, 1))
    view.copy_(rows)
    return view


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.mem_get_info()[0] < 10 * 2 ** 30,
                    reason="needs ~9 GiB of free GPU memory for the strided buffers")
@pytest.mark.parametrize("scheme,path,cfg", [
    pytest.param("sq4", "gemv", KernelConfig(2, 64, 32, 2, 1, 4, 2), id="gemv-finish"),
    pytest.param("lut4", "gemm", KernelConfig(16, 64, 32, 1, 8, 4, 2), id="gemm"),
])
def test_row_strides_past_2_31(scheme, path, cfg, device):
    qw = qweight(scheme, 96, 128, device, outlier_fraction=0.02) if scheme == "sq4" else qweight(scheme, 96, 128, device)
    g = torch.Generator().manual_seed(3)
    x_rows = torch.randn(2, qw.K, generator=g).to(torch.float16)
    x = _strided_rows(x_rows, device)
    out = _strided_rows(torch.full((2, qw.N), float("nan"), dtype=torch.float16), device)
    assert x.stride(0) == out.stride(0) == BIG
    y = FAMILY.launch(x, qw, None, path, cfg, out)
    ref = lowbit.reference.linear(x_rows.to(device), qw, out_dtype=torch.float64)
    assert_close("strided rows", ref, y, FP16_TOL)
