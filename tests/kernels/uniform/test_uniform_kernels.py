"""Uniform int1..int8 kernels (GEMV and GEMM paths) against the float64 reference oracle.

Runs under the Triton interpreter on machines without a GPU (tests/conftest.py). Shapes are
ragged and small: N=200, K=384 (not powers of two; 3-bit words leave a partial last word).

Error bound: rel = max|y - y_ref| / max|y_ref| with y_ref = reference.linear in float64.
The kernels dequantize exactly in fp32 (q - z is an exact small integer, and its product with
an fp16 scale needs at most 9 + 11 significant bits) and accumulate in fp32, so
- fp32 x: only fp32 rounding of products and sums remains, |err| <= K*u*sum|x*w| with
  u = 2^-24; for these random inputs sum|x*w| / max|y| is about 0.25*sqrt(K) ~ 5, so the
  worst case is rel <= 384 * 6e-8 * 5 ~ 1.2e-4 (observed ~1e-7, errors being random-signed).
  TOL_FP32 = 2e-4 covers the worst case.
- fp16 x, GEMV: fp32 math, then one rounding of y to fp16: rel <= 2^-11 ~ 4.9e-4, plus the
  fp32 part above. Bound TOL_FP16_GEMV = 1e-3.
- fp16 x, GEMM: the dequantized weight is also rounded to fp16 for the tensor cores (relative
  2^-11 per element); those errors are independent, so they add like a random walk to about
  2^-11 * sqrt(sum (x*w)^2) <= 2^-11 * max|y| per output, plus the output rounding (2^-11):
  rel <= 2 * 2^-11 ~ 1e-3 typical, with a 3x margin for the tails: TOL_FP16_GEMM = 3e-3.
- bf16 x (GEMV only under the interpreter, whose fp32->bf16 cast truncates): one truncation of
  y, rel <= 2^-8 ~ 3.9e-3. Bound TOL_BF16 = 8e-3.
"""
import pytest
import torch

import lowbit
from lowbit import reference
from lowbit.kernels import KernelConfig, KernelPath
from lowbit.kernels import uniform as U
from lowbit.kernels.uniform import configs as C

from helpers import assert_close, nan_out
from helpers import INTERPRET

N, K = 200, 384
TOL_FP32 = 2e-4
TOL_FP16_GEMV = 1e-3
TOL_FP16_GEMM = 3e-3
TOL_BF16 = 8e-3
FAMILY = U.FAMILY

_QW_CACHE: dict = {}


def make_qw(bits, gs, sym, device, n=N, k=K):
    """A quantized random weight (cached per shape/spec: quantizing is the slow part on CPU)."""
    key = (bits, gs, sym, str(device), n, k)
    if key not in _QW_CACHE:
        g = torch.Generator().manual_seed(1000 * bits + gs + 7 * sym)
        w = torch.randn(n, k, generator=g) * 0.05
        _QW_CACHE[key] = lowbit.quantize_weight(w, f"int{bits}", group_size=gs, symmetric=sym).to(device)
    return _QW_CACHE[key]


def tol_for(dtype, path):
    if dtype == torch.float32:
        return TOL_FP32
    if dtype == torch.bfloat16:
        return TOL_BF16
    return TOL_FP16_GEMV if path is KernelPath.GEMV else TOL_FP16_GEMM


def ref_of(x, qw, bias):
    return reference.linear(x, qw, bias, out_dtype=torch.float64)


# (bits, group_size, symmetric, path, M, dtype, bias): every width on both paths, twice each,
# spreading M over {1,2,3,7,16,33,64,100}, all group sizes, both zero modes, fp16/fp32, bias on/off.
F16, F32 = torch.float16, torch.float32
GEMV, GEMM = "gemv", "gemm"
LINEAR_CASES = [
    (1, 128, False, GEMV, 1, F16, True), (1, 32, True, GEMV, 3, F32, False),
    (1, -1, False, GEMM, 33, F16, False), (1, 64, True, GEMM, 16, F32, True),
    (2, 64, False, GEMV, 2, F32, True), (2, -1, True, GEMV, 7, F16, False),
    (2, 32, False, GEMM, 64, F16, True), (2, 128, True, GEMM, 100, F32, False),
    (3, 32, False, GEMV, 1, F16, False), (3, 128, True, GEMV, 16, F32, True),
    (3, 64, False, GEMM, 7, F32, False), (3, -1, True, GEMM, 33, F16, True),
    (3, 128, False, GEMM, 100, F16, False),
    (4, -1, False, GEMV, 3, F32, False), (4, 128, True, GEMV, 1, F16, True),
    (4, 32, True, GEMM, 2, F16, False), (4, 64, False, GEMM, 64, F32, True),
    (8, 32, True, GEMV, 2, F16, True), (8, 128, False, GEMV, 7, F32, False),
    (8, -1, True, GEMM, 16, F32, False), (8, 64, False, GEMM, 100, F16, True),
]


@pytest.mark.parametrize("bits,gs,sym,path,m,dtype,with_bias", LINEAR_CASES)
def test_linear_forced_path(bits, gs, sym, path, m, dtype, with_bias, device):
    qw = make_qw(bits, gs, sym, device)
    x = torch.randn(m, K, device=device).to(dtype)
    bias = torch.randn(N, device=device).to(dtype) if with_bias else None
    y = lowbit.linear(x, qw, bias, path=path)
    assert y.shape == (m, N) and y.dtype == dtype
    assert_close(f"int{bits} g{gs} {path} M={m}", ref_of(x, qw, bias), y, tol_for(dtype, KernelPath(path)))


# explicit configs through FAMILY.launch into NaN-filled outputs, split-K > 1 included
LAUNCH_CASES = [
    # (bits, gs, sym, path, M, dtype, config)
    (1, 64, False, GEMV, 1, F16, KernelConfig(block_m=1, block_n=128, block_k=64, split_k=4)),
    (2, 32, True, GEMV, 3, F32, KernelConfig(block_m=2, block_n=128, block_k=32, split_k=3)),
    (3, 64, False, GEMV, 7, F16, KernelConfig(block_m=4, block_n=256, block_k=64, split_k=2)),
    (3, 32, True, GEMV, 2, F32, KernelConfig(block_m=2, block_n=128, block_k=32, split_k=16)),
    (4, 128, False, GEMV, 16, F16, KernelConfig(block_m=8, block_n=128, block_k=64, split_k=1)),
    (8, 64, True, GEMV, 1, F32, KernelConfig(block_m=1, block_n=256, block_k=64, split_k=8)),
    (1, 128, True, GEMM, 7, F32, KernelConfig(block_m=16, block_n=64, block_k=128, split_k=2)),
    (2, -1, False, GEMM, 33, F16, KernelConfig(block_m=32, block_n=128, block_k=64, split_k=4)),
    (3, 32, False, GEMM, 16, F16, KernelConfig(block_m=16, block_n=128, block_k=32, split_k=8)),
    (3, 128, True, GEMM, 64, F32, KernelConfig(block_m=64, block_n=64, block_k=128, split_k=1)),
    (4, 32, False, GEMM, 100, F16, KernelConfig(block_m=64, block_n=128, block_k=32, split_k=2)),
    (8, 128, False, GEMM, 3, F16, KernelConfig(block_m=16, block_n=64, block_k=64, split_k=3)),
]


@pytest.mark.parametrize("bits,gs,sym,path,m,dtype,cfg", LAUNCH_CASES)
def test_launch_explicit_config(bits, gs, sym, path, m, dtype, cfg, device):
    qw = make_qw(bits, gs, sym, device)
    x = torch.randn(m, K, device=device).to(dtype)
    bias = torch.randn(N, device=device).to(dtype)
    out = nan_out((m, N), dtype, device)
    got = FAMILY.launch(x, qw, bias, KernelPath(path), cfg, out)
    assert got is out
    assert_close(f"{cfg.label()} int{bits}", ref_of(x, qw, bias), out, tol_for(dtype, KernelPath(path)))


@pytest.mark.parametrize("path", [GEMV, GEMM])
def test_3d_and_noncontiguous_input(path, device):
    qw = make_qw(4, 64, False, device)
    tol = tol_for(F16, KernelPath(path))
    # 3-D input [2, 3, K] -> [2, 3, N]
    x3 = torch.randn(2, 3, K, device=device).half()
    y3 = lowbit.linear(x3, qw, None, path=path)
    assert y3.shape == (2, 3, N)
    assert_close("3-D x", ref_of(x3, qw, None), y3, tol)
    # row-strided view (a slice of a wider buffer): the kernels read it through stride_xm, no copy
    wide = torch.randn(5, K + 40, device=device).half()
    xs = wide[:, 8:8 + K]
    assert not xs.is_contiguous()
    assert_close("row-strided x", ref_of(xs, qw, None), lowbit.linear(xs, qw, None, path=path), tol)
    # transposed storage (K not unit-stride): copied to unit stride, same result
    xt = torch.randn(K, 4, device=device).half().t()
    assert_close("transposed x", ref_of(xt, qw, None), lowbit.linear(xt, qw, None, path=path), tol)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_odd_shape_per_channel(bits, device):
    """N=37, K=100: no tile size divides either, and the last packed word is partial."""
    qw = make_qw(bits, -1, False, device, n=37, k=100)
    for path, m in ((GEMV, 2), (GEMM, 17)):
        x = torch.randn(m, 100, device=device)
        assert_close(f"37x100 {path}", ref_of(x, qw, None), lowbit.linear(x, qw, path=path), TOL_FP32)


def test_torch_compile_fullgraph(device):
    """The forward traces into one graph (custom op + fake, no host sync or data-dependent branch)."""
    qw = make_qw(4, 64, False, device)
    f = torch.compile(lambda x: lowbit.linear(x, qw), fullgraph=True, backend="eager")
    x = torch.randn(3, K, device=device).half()
    assert_close("compiled", ref_of(x, qw, None), f(x), TOL_FP16_GEMV)


def test_bf16_gemv(device):
    qw = make_qw(4, 128, False, device)
    x = torch.randn(2, K, device=device).bfloat16()
    bias = torch.randn(N, device=device).bfloat16()
    y = lowbit.linear(x, qw, bias, path=GEMV)
    assert y.dtype == torch.bfloat16
    assert_close("bf16 gemv", ref_of(x, qw, bias), y, TOL_BF16)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="tl.dot on bf16 is wrong in the Triton interpreter; runs on a GPU")
@pytest.mark.parametrize("bits", [3, 4])
def test_bf16_gemm_gpu(bits, device):
    qw = make_qw(bits, 128, False, device)
    x = torch.randn(64, K, device=device).bfloat16()
    # bf16 weight rounding (2^-8) in the dot plus bf16 output rounding: same argument as fp16 GEMM
    assert_close("bf16 gemm", ref_of(x, qw, None), lowbit.linear(x, qw, None, path=GEMM), 3e-2)


def test_split_k_is_deterministic_and_matches_no_split(device):
    qw = make_qw(3, 64, False, device)
    x = torch.randn(2, K, device=device)
    base = KernelConfig(block_m=2, block_n=128, block_k=32, split_k=1)
    split = KernelConfig(block_m=2, block_n=128, block_k=32, split_k=6)
    y1 = FAMILY.launch(x, qw, None, KernelPath.GEMV, base, nan_out((2, N), x.dtype, device))
    ya = FAMILY.launch(x, qw, None, KernelPath.GEMV, split, nan_out((2, N), x.dtype, device))
    yb = FAMILY.launch(x, qw, None, KernelPath.GEMV, split, nan_out((2, N), x.dtype, device))
    assert torch.equal(ya, yb)  # fixed-order reduction: bitwise repeatable
    assert_close("split vs no split", y1, ya, TOL_FP32)


def test_default_dispatch_and_config(device):
    """Without `path`, M picks the path; the config is a valid member of the declared space."""
    qw = make_qw(2, 128, True, device)
    for m in (1, 100):
        path = FAMILY.choose_path(m)
        assert path is (KernelPath.GEMV if m <= FAMILY.gemv_max_m else KernelPath.GEMM)
        cfg = FAMILY.heuristic(path, m, qw)
        assert cfg in FAMILY.search_space(path, qw), cfg
        x = torch.randn(m, K, device=device).half()
        assert_close(f"default M={m}", ref_of(x, qw, None), lowbit.linear(x, qw), tol_for(F16, path))


# --- search spaces and heuristics (no kernel launches) ------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("gs", [32, 64, 128, -1])
def test_search_space_pruned_and_heuristic_valid(bits, gs, device):
    qw = make_qw(bits, gs, False, "cpu")
    for path in KernelPath:
        space = FAMILY.search_space(path, qw)
        assert space, f"empty {path.value} space for int{bits} g{gs}"
        for cfg in space:
            assert C.spec_problem(path, cfg, qw.spec) is None
            if gs != -1:
                assert C.tile_codes(bits, cfg.block_k) <= gs  # a K tile never spans more than 2 groups
                if bits != 3:
                    assert gs % cfg.block_k == 0  # ... and exactly one group for power-of-two widths
            assert C.shared_bytes(path, cfg, bits) <= C.SHARED_BUDGET
        assert len(space) <= len(C.declared_space(path))
        for m in (1, 2, 3, 4, 7, 8, 16, 33, 64, 100, 1024, 4096):
            cfg = FAMILY.heuristic(path, m, qw)
            assert cfg in space, (path, m, cfg)


def test_fp32_gemm_uses_its_own_small_tiles():
    """fp32 x runs exact FMA dots; only the small fp32 tiles avoid spills, and dispatch uses them."""
    qw = make_qw(4, 128, False, "cpu")
    f32 = FAMILY.search_space(KernelPath.GEMM, qw, torch.float32)
    assert f32 and {(c.block_m, c.block_n, c.block_k) for c in f32} <= {t[:3] for t in C.FP32_GEMM_TILES}
    assert all(C.shared_bytes(KernelPath.GEMM, c, 4, 4) <= C.SHARED_BUDGET for c in f32)
    for m in (5, 33, 4096):
        assert FAMILY.heuristic(KernelPath.GEMM, m, qw, torch.float32) in f32
        assert FAMILY.heuristic(KernelPath.GEMM, m, qw, torch.float16) in FAMILY.search_space(KernelPath.GEMM, qw)
    # a (cached) fp16-sized tile is refused for fp32 activations, so dispatch falls back to the fp32 heuristic
    big = FAMILY.heuristic(KernelPath.GEMM, 4096, qw, torch.float16)
    assert FAMILY.tuned_config_problem(KernelPath.GEMM, big, qw, torch.float32) is not None
    assert FAMILY.tuned_config_problem(KernelPath.GEMM, big, qw, torch.float16) is None


# --- extra memory is O(tiles) -------------------------------------------------------------
def test_workspace_formula_and_no_dense_weight(device, monkeypatch):
    qw = make_qw(4, 32, False, device)
    m = 3
    cfg = KernelConfig(block_m=4, block_n=128, block_k=32, split_k=4)
    per_split, split = C.split_plan(qw.N, qw.K, qw.bits, cfg, m)
    assert split == 4 and per_split == 3  # 384 / 32 = 12 tiles over 4 splits
    assert U.workspace_numel(KernelPath.GEMV, m, qw, cfg) == split * m * N
    assert U.workspace_numel(KernelPath.GEMV, m, qw, KernelConfig(block_m=4, block_k=32, split_k=1)) == 0
    # split_k beyond the number of K tiles is clamped, so no split is empty
    assert C.split_plan(qw.N, qw.K, qw.bits, KernelConfig(block_m=1, block_k=32, split_k=64), 1)[1] == 12

    allocs = []
    for name in ("empty", "zeros", "full", "ones", "empty_like", "zeros_like", "full_like", "empty_strided"):
        real = getattr(torch, name)

        def wrapped(*a, _real=real, **kw):
            t = _real(*a, **kw)
            allocs.append((tuple(t.shape), t.dtype))
            return t
        monkeypatch.setattr(torch, name, wrapped)
    x = torch.randn(m, K, device=device).half()
    out = nan_out((m, N), x.dtype, device)
    allocs.clear()
    FAMILY.launch(x, qw, None, KernelPath.GEMV, cfg, out)
    FAMILY.launch(x, qw, None, KernelPath.GEMM, KernelConfig(block_m=16, block_n=64, block_k=32, split_k=3), out)
    lowbit.linear(x, qw, path="gemm")
    floats = [(s, d) for s, d in allocs if d.is_floating_point]
    assert ((split, m, N), torch.float32) in floats  # the GEMV workspace
    biggest = max((torch.Size(s).numel() for s, _ in floats), default=0)
    assert biggest < N * K, f"a float tensor of {biggest} elements was allocated (N*K = {N * K})"
    monkeypatch.undo()
    assert_close("after allocation tracking", ref_of(x, qw, None), out, TOL_FP16_GEMM)


# --- custom op ---------------------------------------------------------------------------
def test_custom_op_fake_and_opcheck(device):
    qw = make_qw(4, 128, False, device)
    x = torch.randn(6, K, device=device).half()
    args = (x, qw["qweight"], qw["scales"], qw["zeros"], None, 4, 128, False, "gemv",
            [1, 128, 128, 2, 1, 4, 2])
    torch.library.opcheck(torch.ops.lowbit.uniform_linear.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fargs = (fx,) + tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args[1:])
        fy = torch.ops.lowbit.uniform_linear(*fargs)
    assert fy.shape == (6, N) and fy.dtype == x.dtype


# --- bad input ---------------------------------------------------------------------------
def test_bad_device(device):
    qw = make_qw(4, 128, False, device)
    with pytest.raises(ValueError, match="is on"):
        lowbit.linear(torch.randn(1, K, device="meta").half(), qw)
    with pytest.raises(ValueError, match="is on"):
        FAMILY.launch(torch.randn(1, K, device="meta").half(), qw, None, KernelPath.GEMV,
                      KernelConfig(block_m=1, block_k=32), torch.empty(1, N, device="meta").half())


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int8])
def test_bad_dtype(dtype, device):
    qw = make_qw(4, 128, False, device)
    x = torch.ones(2, K, device=device, dtype=dtype)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(x, qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        FAMILY.launch(x, qw, None, KernelPath.GEMV, KernelConfig(block_m=2, block_k=32),
                      nan_out((2, N), torch.float16, device))


def test_k_mismatch(device):
    qw = make_qw(4, 128, False, device)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        lowbit.linear(torch.randn(2, K - 10, device=device).half(), qw)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        FAMILY.launch(torch.randn(2, K + 1, device=device).half(), qw, None, KernelPath.GEMV,
                      KernelConfig(block_m=2, block_k=32), nan_out((2, N), torch.float16, device))


def test_scheme_not_served(device):
    nf4 = lowbit.quantize_weight(torch.randn(N, K), "nf4").to(device)
    x = torch.randn(2, K, device=device).half()
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.search_space(KernelPath.GEMV, nf4)
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.launch(x, nf4, None, KernelPath.GEMM, KernelConfig(), nan_out((2, N), x.dtype, device))
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.heuristic(KernelPath.GEMV, 1, nf4)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        FAMILY.launch(x, torch.randn(N, K), None, KernelPath.GEMM, KernelConfig(), nan_out((2, N), x.dtype, device))


def test_bad_config_and_out(device):
    qw = make_qw(4, 32, False, device)
    x = torch.randn(2, K, device=device).half()

    def run(path, cfg, out_shape=(2, N), out_dtype=torch.float16):
        return FAMILY.launch(x, qw, None, path, cfg, nan_out(out_shape, out_dtype, device))

    with pytest.raises(ValueError, match="group_size=32"):  # a 64-wide K tile would span two groups
        run(KernelPath.GEMV, KernelConfig(block_m=2, block_k=64))
    with pytest.raises(ValueError, match=">= 16"):
        run(KernelPath.GEMM, KernelConfig(block_m=8, block_k=32))
    with pytest.raises(ValueError, match="power of two"):
        run(KernelPath.GEMV, KernelConfig(block_m=3, block_k=32))
    with pytest.raises(ValueError, match="out must have shape"):
        run(KernelPath.GEMV, KernelConfig(block_m=2, block_k=32), out_shape=(3, N))
    with pytest.raises(ValueError, match="out must be"):
        run(KernelPath.GEMV, KernelConfig(block_m=2, block_k=32), out_dtype=torch.float32)
    with pytest.raises(ValueError, match="bias must have shape"):
        lowbit.linear(x, qw, torch.zeros(N + 1, device=device).half())
    with pytest.raises(ValueError, match="unknown kernel path"):
        lowbit.linear(x, qw, path="gemm2")
