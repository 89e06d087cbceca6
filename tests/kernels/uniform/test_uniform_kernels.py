"""Uniform int1..int8 kernels (tensor-core GEMV, CUDA-core GEMV, GEMM) against the float64 oracle.

Runs under the Triton interpreter on machines without a GPU (tests/conftest.py), where the
tensor-core GEMV runs its pure-Triton twin of the PTX step (same packing, fragments and index
arithmetic; test_uniform_fragments.py checks the twin against the PTX rules). Shapes are ragged
and small: N=200, K=384 (K is not a multiple of a 1024-code super-step, 3-bit blocks are whole).

Error bound: rel = max|y - y_ref| / max|y_ref| with y_ref = reference.linear in float64.
- fp32 x (CUDA-core GEMV, exact-FMA GEMM): codes and (q - z) are exact, products and sums are
  fp32: rel <= K*u*sum|x*w|/max|y| ~ 384 * 6e-8 * 5 ~ 1.2e-4 worst case. TOL_FP32 = 2e-4.
- fp16 x, tensor-core GEMV: products of fp16 (base + q) and x are exact in fp32, sums fp32;
  D - C (C = sum base*x, base <= 1024) cancels about 10 bits, so the fp32 part grows to
  ~2^-14 * sum|x| / max|y| ~ 3e-4 at worst here (observed ~1e-5), plus one fp16 rounding of y
  (4.9e-4). TOL_FP16_GEMV = 1e-3.
- fp16 x, GEMM: the dequantized weight is rounded to fp16 once (2^-11 per element, random
  signs) plus the output rounding: rel ~ 1e-3 typical, 3x margin: TOL_FP16_GEMM = 3e-3.
- bf16 x (GEMV only under the interpreter, whose fp32->bf16 cast truncates): rel <= 2^-8 ~
  3.9e-3. TOL_BF16 = 8e-3.
"""
import pytest
import torch

import lowbit
from lowbit import reference
from lowbit.kernels import KernelConfig, KernelPath
from lowbit.kernels import uniform as U
from lowbit.kernels.uniform import configs as C

from helpers import INTERPRET, assert_close, nan_out

N, K = 200, 384
TOL_FP32 = 2e-4
TOL_FP16_GEMV = 1e-3
TOL_FP16_GEMM = 3e-3
TOL_BF16 = 8e-3
FAMILY = U.FAMILY
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
GEMV, GEMM = "gemv", "gemm"

_QW_CACHE: dict = {}


def make_qw(bits, gs, sym, device, n=N, k=K):
    """A quantized random weight (cached per shape/spec: quantizing is the slow part on CPU)."""
    key = (bits, gs, sym, str(device), n, k)
    if key not in _QW_CACHE:
        g = torch.Generator().manual_seed(1000 * bits + gs + 7 * sym + k)
        w = torch.randn(n, k, generator=g) * 0.05
        _QW_CACHE[key] = lowbit.quantize_weight(w, f"int{bits}", group_size=gs, symmetric=sym).to(device)
    return _QW_CACHE[key]


def tol_for(dtype, path):
    if dtype == torch.float32:
        return TOL_FP32
    if dtype == torch.bfloat16:
        return TOL_BF16
    return TOL_FP16_GEMV if KernelPath(path) is KernelPath.GEMV else TOL_FP16_GEMM


def ref_of(x, qw, bias):
    return reference.linear(x, qw, bias, out_dtype=torch.float64)


def _id(bits, gs, sym, path, m, dtype, extra=""):
    return f"int{bits}-g{gs}-{'sym' if sym else 'asym'}-{path}-m{m}-{str(dtype).removeprefix('torch.')}{extra}"


# (bits, group_size, symmetric, path, M, dtype, bias): every width on both paths, every group size,
# both zero modes, M over {1, 2, 3, 7, 16, 33, 64, 100}, fp16/bf16/fp32 on the GEMV path.
_LINEAR = [
    (1, 128, False, GEMV, 1, F16, True), (1, 32, True, GEMV, 3, F32, False), (1, 64, False, GEMV, 16, F16, False),
    (1, -1, False, GEMM, 33, F16, False), (1, 64, True, GEMM, 64, F32, True),
    (2, 64, False, GEMV, 2, F32, True), (2, -1, True, GEMV, 7, F16, False), (2, 128, False, GEMV, 1, BF16, True),
    (2, 64, True, GEMV, 1, F16, False),
    (2, 32, False, GEMM, 64, F16, True), (2, 128, True, GEMM, 100, F32, False),
    (3, 32, False, GEMV, 1, F16, False), (3, 128, True, GEMV, 16, F32, True), (3, 64, False, GEMV, 3, BF16, False),
    (3, -1, True, GEMV, 13, F16, True),
    (3, 64, False, GEMM, 17, F32, False), (3, -1, True, GEMM, 33, F16, True), (3, 128, False, GEMM, 100, F16, False),
    (4, -1, False, GEMV, 3, F32, False), (4, 128, True, GEMV, 1, F16, True), (4, 64, False, GEMV, 16, F16, False),
    (4, 32, True, GEMV, 1, BF16, True),
    (4, 32, True, GEMM, 17, F16, False), (4, 64, False, GEMM, 64, F32, True),
    (8, 32, True, GEMV, 2, F16, True), (8, 128, False, GEMV, 7, F32, False), (8, 64, True, GEMV, 1, BF16, False),
    (8, -1, True, GEMM, 16, F32, False), (8, 64, False, GEMM, 100, F16, True),
]
LINEAR_CASES = [pytest.param(*c, id=_id(*c[:6], "-bias" if c[6] else "")) for c in _LINEAR]


@pytest.mark.parametrize("bits,gs,sym,path,m,dtype,with_bias", LINEAR_CASES)
def test_linear_forced_path(bits, gs, sym, path, m, dtype, with_bias, device):
    qw = make_qw(bits, gs, sym, device)
    x = torch.randn(m, K, device=device).to(dtype)
    bias = torch.randn(N, device=device).to(dtype) if with_bias else None
    y = lowbit.linear(x, qw, bias, path=path)
    assert y.shape == (m, N) and y.dtype == dtype
    assert_close(f"int{bits} g{gs} {path} M={m}", ref_of(x, qw, bias), y, tol_for(dtype, path))


def _cfg(bm, bn, bk, sk=1, nw=2, st=1, gm=1):
    return KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, group_m=gm, num_warps=nw, num_stages=st)


# explicit configs through FAMILY.launch into NaN-filled outputs: split-K, every BLOCK_M of the
# tensor-core GEMV, the EVEN path (whole super-steps, warps dividing them: no masks) and the masked
# one, N a multiple of BLOCK_N or not.
_LAUNCH = [
    # (bits, gs, sym, path, M, N, K, dtype, config)
    (4, 128, False, GEMV, 1, 64, 512, F16, _cfg(1, 32, 32, nw=2)),  # EVEN: 2 super-steps, 2 warps
    (4, 64, True, GEMV, 1, 200, 384, F16, _cfg(1, 64, 32, sk=3, nw=4)),
    (1, 64, False, GEMV, 1, 128, 2048, F16, _cfg(1, 128, 64, sk=2, nw=2)),  # EVEN with split-K
    (2, 32, True, GEMV, 3, 200, 384, F32, _cfg(2, 128, 32, sk=3, nw=4, st=2)),
    (3, 64, False, GEMV, 7, 96, 512, F16, _cfg(4, 32, 64, sk=2, nw=2)),
    (3, 32, True, GEMV, 2, 200, 384, BF16, _cfg(2, 64, 32, sk=4, nw=4)),
    (8, 64, True, GEMV, 4, 64, 256, F16, _cfg(4, 64, 64, nw=2)),
    (2, 128, False, GEMV, 16, 64, 256, F16, _cfg(16, 64, 128, nw=2)),  # two MMAs of 8 columns
    (8, -1, False, GEMV, 12, 200, 384, F16, _cfg(16, 32, 64, sk=2, nw=8)),
    (8, 64, True, GEMV, 1, 200, 384, F32, _cfg(1, 128, 64, sk=8, nw=4, st=2)),
    (1, 128, True, GEMM, 7, 200, 384, F32, _cfg(16, 64, 128, sk=2, nw=4, st=2, gm=8)),
    (2, -1, False, GEMM, 33, 200, 384, F16, _cfg(32, 128, 64, sk=4, nw=4, st=2, gm=8)),
    (3, 32, False, GEMM, 16, 200, 384, F16, _cfg(16, 128, 32, sk=8, nw=4, st=2, gm=8)),
    (4, 32, False, GEMM, 100, 200, 384, F16, _cfg(64, 128, 32, sk=2, nw=4, st=2, gm=8)),
    (8, 128, False, GEMM, 3, 200, 384, F16, _cfg(16, 64, 64, sk=3, nw=4, st=2, gm=8)),
]
LAUNCH_CASES = [pytest.param(*c, id=_id(*c[:5], c[7], f"-n{c[5]}k{c[6]}-{c[8].label()}")) for c in _LAUNCH]


@pytest.mark.parametrize("bits,gs,sym,path,m,n,k,dtype,cfg", LAUNCH_CASES)
def test_launch_explicit_config(bits, gs, sym, path, m, n, k, dtype, cfg, device):
    qw = make_qw(bits, gs, sym, device, n=n, k=k)
    x = torch.randn(m, k, device=device).to(dtype)
    bias = torch.randn(n, device=device).to(dtype)
    out = nan_out((m, n), dtype, device)
    got = FAMILY.launch(x, qw, bias, KernelPath(path), cfg, out)
    assert got is out
    assert_close(f"{cfg.label()} int{bits}", ref_of(x, qw, bias), out, tol_for(dtype, path))


def test_even_flag_covers_both_paths():
    """The EVEN launches above really are even (whole super-steps, a multiple of the warps per split)
    and the 384-code ones are not, so both variants of the tensor-core GEMV run."""
    assert C.gemv_geometry(4, _cfg(1, 32, 32, nw=2)).even(512, 2)
    assert C.gemv_geometry(1, _cfg(1, 128, 64, sk=2, nw=2)).even(2048, 2)
    assert not C.gemv_geometry(1, _cfg(1, 128, 64, sk=2, nw=2)).even(2048, 1)  # 1 super-step, 2 warps
    assert not C.gemv_geometry(4, _cfg(1, 64, 32, sk=3, nw=2)).even(384, 1)


@pytest.mark.parametrize("bits,gs,path,dtype", [
    pytest.param(4, 128, GEMV, F16, id="int4-g128-gemv-f16"),
    pytest.param(3, -1, GEMV, F16, id="int3-gchan-gemv-f16"),
    pytest.param(2, 64, GEMM, F16, id="int2-g64-gemm-f16"),
])
def test_k_28672(bits, gs, path, dtype, device):
    """The longest K of the usual LLM shapes (Llama-70B down projection), a few columns."""
    k = 28672
    qw = make_qw(bits, gs, False, device, n=48, k=k)
    m = 1 if path == GEMV else 17
    x = torch.randn(m, k, device=device).to(dtype)
    assert_close(f"K=28672 int{bits}", ref_of(x, qw, None), lowbit.linear(x, qw, path=path), tol_for(dtype, path))


@pytest.mark.parametrize("path", [GEMV, GEMM])
def test_noncontiguous_inputs(path, device):
    qw = make_qw(4, 64, False, device)
    tol = tol_for(F16, path)
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
    # a strided bias (every other element of a longer vector)
    b2 = torch.randn(2 * N, device=device).half()
    bias = b2[::2]
    assert not bias.is_contiguous()
    x = torch.randn(3, K, device=device).half()
    assert_close("strided bias", ref_of(x, qw, bias), lowbit.linear(x, qw, bias, path=path), tol)


def test_noncontiguous_weight_tensors(device):
    """qweight/scales/zeros as transposed-storage views (same shapes, other strides) give the same result."""
    qw = make_qw(3, 64, False, device)
    views = {name: t.t().contiguous().t() for name, t in qw.tensors.items()}
    assert not views["qweight"].is_contiguous() and not views["scales"].is_contiguous()
    qv = lowbit.QuantizedWeight(qw.scheme, qw.spec, qw.shape, views)
    x = torch.randn(2, K, device=device).half()
    for path in (GEMV, GEMM):
        assert_close(f"strided weight {path}", ref_of(x, qw, None), lowbit.linear(x, qv, path=path), tol_for(F16, path))


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_odd_shape_per_channel(bits, device):
    """N=37, K=100: no tile divides either, and the last packed block is partial (zero-padded)."""
    qw = make_qw(bits, -1, False, device, n=37, k=100)
    for path, m, dtype in ((GEMV, 2, F32), (GEMV, 1, F16), (GEMM, 17, F32)):
        x = torch.randn(m, 100, device=device).to(dtype)
        assert_close(f"37x100 {path} {dtype}", ref_of(x, qw, None), lowbit.linear(x, qw, path=path),
                     tol_for(dtype, path))


def test_torch_compile_fullgraph(device):
    """The forward traces into one graph (custom op + fake, no host sync or data-dependent branch)."""
    qw = make_qw(4, 64, False, device)
    f = torch.compile(lambda x: lowbit.linear(x, qw), fullgraph=True, backend="eager")
    x = torch.randn(3, K, device=device).half()
    assert_close("compiled", ref_of(x, qw, None), f(x), TOL_FP16_GEMV)


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
    x = torch.randn(2, K, device=device).half()
    base = _cfg(2, 64, 32, sk=1, nw=8)
    split = _cfg(2, 64, 32, sk=6, nw=8)
    y1 = FAMILY.launch(x, qw, None, KernelPath.GEMV, base, nan_out((2, N), x.dtype, device))
    ya = FAMILY.launch(x, qw, None, KernelPath.GEMV, split, nan_out((2, N), x.dtype, device))
    yb = FAMILY.launch(x, qw, None, KernelPath.GEMV, split, nan_out((2, N), x.dtype, device))
    assert torch.equal(ya, yb)  # fixed-order reduction: bitwise repeatable
    assert_close("split vs no split", y1, ya, TOL_FP16_GEMV)


def test_default_dispatch_and_config(device):
    """Without `path`, M picks the path; the config is a valid member of the declared space."""
    qw = make_qw(2, 128, True, device)
    for m in (1, 16, 100):
        path = FAMILY.choose_path(m)
        assert path is (KernelPath.GEMV if m <= FAMILY.gemv_max_m else KernelPath.GEMM)
        cfg = FAMILY.heuristic(path, m, qw)
        assert cfg in FAMILY.search_space(path, qw), cfg
        x = torch.randn(m, K, device=device).half()
        assert_close(f"default M={m}", ref_of(x, qw, None), lowbit.linear(x, qw), tol_for(F16, path))


# --- search spaces and heuristics (no kernel launches) ------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("gs", [32, 64, 128, -1])
def test_search_space_pruned_and_heuristic_valid(bits, gs):
    qw = make_qw(bits, gs, False, "cpu")
    for dtype in (F16, BF16, F32):
        for path in KernelPath:
            space = FAMILY.search_space(path, qw, dtype)
            assert space, f"empty {path.value} space for int{bits} g{gs} {dtype}"
            for cfg in space:
                assert C.spec_problem(path, cfg, qw.spec, dtype) is None
                if path is KernelPath.GEMM or not C.mma_gemv(bits, dtype):
                    assert cfg.block_k % C.block_of(bits)[0] == 0  # whole packing blocks per K tile
                    if gs != -1:
                        assert gs % cfg.block_k == 0  # ... inside one group
                else:
                    geo = C.gemv_geometry(bits, cfg)
                    assert cfg.block_k % geo.codes_per_iteration == 0 and geo.inner_trips >= 1
                    if gs != -1:
                        assert gs % cfg.block_k == 0  # a virtual group inside one group
            for m in (1, 2, 3, 4, 7, 8, 9, 16, 33, 64, 100, 1024, 4096):
                if path is not FAMILY.choose_path(m):
                    continue
                cfg = FAMILY.heuristic(path, m, qw, dtype)
                assert cfg in space, (path, m, cfg)


def test_gemv_kernel_choice_by_dtype():
    """fp16/bf16 run the tensor-core GEMV except bf16 int8 (8-bit fields do not fit bf16's mantissa);
    fp32 runs the CUDA-core GEMV."""
    assert C.mma_gemv(4, F16) and C.mma_gemv(4, BF16) and C.mma_gemv(8, F16)
    assert not C.mma_gemv(8, BF16) and not C.mma_gemv(4, F32)


def test_fp32_gemm_uses_its_own_small_tiles():
    """fp32 x runs exact FMA dots; only the small fp32 tiles avoid spills, and dispatch uses them."""
    qw = make_qw(4, 128, False, "cpu")
    f32 = FAMILY.search_space(KernelPath.GEMM, qw, torch.float32)
    assert f32 and {(c.block_m, c.block_n, c.block_k) for c in f32} <= {t[:3] for t in C.FP32_GEMM_TILES}
    for m in (17, 33, 4096):
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
    cfg = _cfg(4, 64, 32, sk=4, nw=2)
    per_split, split = C.split_plan(KernelPath.GEMV, qw.N, qw.K, qw.bits, cfg, m)
    geo = C.gemv_geometry(4, cfg)
    assert geo.superstep_codes == 64 and geo.supersteps(K) == 6  # BLOCK_M 4: 2 slots of 32 codes
    assert split == 3 and per_split == 2  # 6 super-steps over 4 splits: 2 each, 3 splits
    assert U.workspace_numel(KernelPath.GEMV, m, qw, cfg) == split * m * N
    assert U.workspace_numel(KernelPath.GEMV, m, qw, _cfg(4, 64, 32, sk=1)) == 0
    # split_k beyond the number of K steps is clamped, so no split is empty
    assert C.split_plan(KernelPath.GEMM, qw.N, qw.K, qw.bits, _cfg(16, 64, 32, sk=64), 1)[1] == 12

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
    FAMILY.launch(x, qw, None, KernelPath.GEMM, _cfg(16, 64, 32, sk=3, nw=4, st=2, gm=8), out)
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
    args = (x, qw["qweight"], qw["scales"], qw["zeros"], None, 4, 128, False, "gemv", _cfg(8, 64, 128, 2).to_list())
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
                      _cfg(1, 64, 32), torch.empty(1, N, device="meta").half())


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, torch.int8])
def test_bad_dtype(dtype, device):
    qw = make_qw(4, 128, False, device)
    x = torch.ones(2, K, device=device, dtype=dtype)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(x, qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        FAMILY.launch(x, qw, None, KernelPath.GEMV, _cfg(2, 64, 32), nan_out((2, N), torch.float16, device))


def test_k_mismatch(device):
    qw = make_qw(4, 128, False, device)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        lowbit.linear(torch.randn(2, K - 10, device=device).half(), qw)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        FAMILY.launch(torch.randn(2, K + 1, device=device).half(), qw, None, KernelPath.GEMV,
                      _cfg(2, 64, 32), nan_out((2, N), torch.float16, device))


def test_scheme_not_served(device):
    nf4 = lowbit.quantize_weight(torch.randn(N, K), "nf4").to(device)
    x = torch.randn(2, K, device=device).half()
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.search_space(KernelPath.GEMV, nf4)
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.launch(x, nf4, None, KernelPath.GEMM, KernelConfig(), nan_out((2, N), x.dtype, device))
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.heuristic(KernelPath.GEMV, 1, nf4)
    with pytest.raises(ValueError, match="not scheme 'nf4'"):
        FAMILY.launch_plans(nf4, 1, KernelPath.GEMV, torch.float16, KernelConfig())
    with pytest.raises(TypeError, match="QuantizedWeight"):
        FAMILY.launch(x, torch.randn(N, K), None, KernelPath.GEMM, KernelConfig(), nan_out((2, N), x.dtype, device))


def test_bad_config_and_out(device):
    qw = make_qw(4, 32, False, device)
    x = torch.randn(2, K, device=device).half()

    def run(path, cfg, out_shape=(2, N), out_dtype=torch.float16, xx=x):
        return FAMILY.launch(xx, qw, None, path, cfg, nan_out(out_shape, out_dtype, device))

    with pytest.raises(ValueError, match="does not divide group_size=32"):  # a virtual group spans two groups
        run(KernelPath.GEMV, _cfg(1, 64, 64))
    with pytest.raises(ValueError, match="not a multiple of the 16 codes"):  # int4 blocks: 16 codes a slot
        run(KernelPath.GEMV, _cfg(1, 64, 8))
    with pytest.raises(ValueError, match="block_n=256"):
        run(KernelPath.GEMV, _cfg(1, 256, 32))
    with pytest.raises(ValueError, match="num_warps=16"):
        run(KernelPath.GEMV, _cfg(1, 64, 32, nw=16))
    with pytest.raises(ValueError, match="group_size=32"):  # fp32 x: CUDA-core GEMV tile past the group
        run(KernelPath.GEMV, _cfg(2, 128, 64, st=2), out_dtype=torch.float32, xx=x.float())
    with pytest.raises(ValueError, match=">= 16"):
        run(KernelPath.GEMM, _cfg(8, 64, 32))
    with pytest.raises(ValueError, match="power of two"):
        run(KernelPath.GEMV, _cfg(3, 64, 32))
    with pytest.raises(ValueError, match="out must have shape"):
        run(KernelPath.GEMV, _cfg(2, 64, 32), out_shape=(3, N))
    with pytest.raises(ValueError, match="out must be"):
        run(KernelPath.GEMV, _cfg(2, 64, 32), out_dtype=torch.float32)
    with pytest.raises(ValueError, match="bias must have shape"):
        lowbit.linear(x, qw, torch.zeros(N + 1, device=device).half())
    with pytest.raises(ValueError, match="unknown kernel path"):
        lowbit.linear(x, qw, path="gemm2")


@pytest.mark.parametrize("poison", [float("inf"), float("-inf"), float("nan")])
def test_gemv_non_finite_x_gives_a_non_finite_row_only(poison, device):
    """The tensor-core GEMV sums q * x and removes the zero point with z * sum(x), so x = +-inf can give NaN
    where the reference gives +-inf (0 * inf for a code 0, inf - inf in the zero term; the README states
    it). Found by tests/test_properties.py (dev profile: int2 g32, N = 1, K = 32). What must hold: the
    poisoned row is non-finite in every column the reference makes non-finite, NaN where it has NaN, and
    the other rows stay within tolerance."""
    qw = make_qw(2, 32, False, device, n=8, k=64)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 64, generator=g).to(F16)
    x[1, 5] = poison
    x = x.to(device)
    out = FAMILY.launch(x, qw, None, KernelPath.GEMV, FAMILY.heuristic(KernelPath.GEMV, 3, qw, F16),
                        nan_out((3, 8), F16, device))
    ref = reference.linear(x, qw, None, out_dtype=torch.float64).cpu()
    got = out.double().cpu()
    assert not torch.isfinite(got[1]).any()
    assert torch.equal(torch.isfinite(got), torch.isfinite(ref))
    assert torch.isnan(got[torch.isnan(ref)]).all()
    inf = torch.isinf(ref)
    assert ((got[inf] == ref[inf]) | torch.isnan(got[inf])).all()
    keep = torch.tensor([0, 2])
    assert_close("clean rows", ref[keep], got[keep], TOL_FP16_GEMV)


def _gemv_kernel(qw, m, dtype):
    cfg = FAMILY.heuristic(KernelPath.GEMV, m, qw, dtype)
    return cfg, FAMILY.launch_plans(qw, m, KernelPath.GEMV, dtype, cfg)[0].case.kernel.__name__


@pytest.mark.parametrize("version", [(3, 6), (3, 9)])
def test_triton_3_6_runs_the_tensor_core_gemv(version, monkeypatch):
    """From configs.MMA_GEMV_MIN_TRITON = 3.6 on (the GPU machines' version; test_uniform_aot.py checks the
    fragment layout under the installed Triton) the GEMV path takes every M <= 16 and plans the tensor-core
    GEMV for fp16/bf16 x where the pair decode fits (not bf16 int8), the CUDA-core GEMV otherwise."""
    assert C.MMA_GEMV_MIN_TRITON == (3, 6)
    monkeypatch.setattr(C, "triton_version", lambda: version)
    assert FAMILY.choose_path(1) is KernelPath.GEMV and FAMILY.choose_path(16) is KernelPath.GEMV
    assert FAMILY.choose_path(17) is KernelPath.GEMM
    for bits in (1, 2, 3, 4, 8):
        qw = make_qw(bits, 64, bits == 4, "cpu")
        for dtype in (F16, BF16, F32):
            want = "_uniform_gemv_kernel" if C.pair_fields_fit(bits, dtype) else "_uniform_gemv_fma_kernel"
            assert C.mma_gemv(bits, dtype) == (want == "_uniform_gemv_kernel")
            for m in (1, 5, 16):
                assert _gemv_kernel(qw, m, dtype)[1] == want, (bits, dtype, m)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("dtype", [F16, BF16])
def test_older_triton_runs_the_cuda_core_gemv(bits, dtype, device, monkeypatch):
    """Under a Triton older than configs.MMA_GEMV_MIN_TRITON (not checked for the MMA fragment layout) the
    GEMV path plans and runs the CUDA-core GEMV for fp16/bf16 x too, and only at M = 1; checked here at
    M = 1, 5 and 16 against the float64 oracle."""
    monkeypatch.setattr(C, "triton_version", lambda: (3, 5))
    qw = make_qw(bits, 64, bits == 4, device)
    for m in (1, 5, 16):
        cfg, kernel = _gemv_kernel(qw, m, dtype)
        assert kernel == "_uniform_gemv_fma_kernel"
        g = torch.Generator().manual_seed(m)
        x = torch.randn(m, K, generator=g).to(dtype).to(device)
        out = FAMILY.launch(x, qw, None, KernelPath.GEMV, cfg, nan_out((m, N), dtype, device))
        assert_close(f"int{bits} {dtype} M={m} CUDA-core GEMV", reference.linear(x, qw, None, out_dtype=torch.float64),
                     out, tol_for(dtype, GEMV))
    assert FAMILY.choose_path(1) is KernelPath.GEMV and FAMILY.choose_path(2) is KernelPath.GEMM
    monkeypatch.undo()
    assert FAMILY.choose_path(16) is KernelPath.GEMV
    assert C.mma_gemv(bits, dtype) == (C.pair_fields_fit(bits, dtype) and C.triton_version() >= (3, 6))


@pytest.mark.parametrize("dtype", [F16] if INTERPRET else [F16, BF16])  # bf16 tl.dot: GPU only (interpreter)
def test_int1_symmetric_gemm_keeps_the_half_zero(dtype, device):
    """int1 symmetric stores z = 0.5; the GEMM's pair decode used to form base + z in the activation type,
    which rounds once the magic base reaches 1024 (fp16) and gave a relative error of 0.69 (found by
    tests/test_properties.py, dev profile: int1 sym g32, N = 1, K = 32, M = 1 on the GEMM path)."""
    for n, k, m in ((1, 32, 1), (N, K, 20)):
        qw = make_qw(1, 32, True, device, n=n, k=k)
        g = torch.Generator().manual_seed(n + k)
        x = torch.randn(m, k, generator=g).to(dtype).to(device)
        cfg = FAMILY.interpreter_config(KernelPath.GEMM, m, qw, dtype) if INTERPRET else \
            FAMILY.heuristic(KernelPath.GEMM, m, qw, dtype)
        out = FAMILY.launch(x, qw, None, KernelPath.GEMM, cfg, nan_out((m, n), dtype, device))
        assert_close(f"int1 sym GEMM {n}x{k} M={m}", reference.linear(x, qw, None, out_dtype=torch.float64), out,
                     tol_for(dtype, GEMM))
