"""Ternary kernels (BitNet b1.58 W1.58A8 and W1.58A16) against the PyTorch oracle.

Integer parts are compared exactly: the int8 activation quantizer against
reference.ternary.quantize_activations, and the int32 accumulation through inputs that make
the rescale exact. Float outputs are compared with relative-error bounds justified per case.
"""
import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit import reference as ref
from lowbit.formats import QuantizedWeight, Scheme, make_spec
from lowbit.kernels import KernelConfig, KernelPath, sign
from lowbit.kernels.sign import configs as C

from helpers import INTERPRET
from helpers import assert_close, nan_out

FAM = sign.FAMILY
N, K = 200, 384
GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM
# bf16 tl.dot is wrong under the interpreter, so the kernels widen bf16 operands to fp32 there (exact,
# like the tensor cores' products): bf16 runs under the interpreter too
FLOATS = (torch.float16, torch.bfloat16, torch.float32)
# Output rounding dominates every float comparison: half an ulp relative to max|y| is 2^-11
# (fp16), 2^-8 (bf16), 2^-24 (fp32). The fp32 epilogue (acc * gamma, / scale, + bias) adds a few
# 2^-24, and A16's fp32 accumulation over K = 384 terms adds at most ~K * 2^-24 relative.
# The interpreter truncates fp32 -> bf16 casts (a full ulp, 2^-7, instead of half): 1.5e-2 there.
TOL = {torch.float16: 1e-3, torch.bfloat16: 1.5e-2 if INTERPRET else 8e-3, torch.float32: 3e-5}


def _weight(scheme, per_channel=False, n=N, k=K):
    return lowbit.quantize_weight(torch.randn(n, k), scheme, per_channel=per_channel)


def _with_gamma(qw, gamma):
    """The same codes with a chosen gamma (for exact-rescale checks)."""
    return QuantizedWeight(qw.scheme, qw.spec, qw.shape, {"qweight": qw["qweight"], "gamma": gamma})


def _ternary_t(qw):
    return ref.ternary.ternary_values(qw)


# 128 rows = 32 W1.58A8 lanes or 16 W1.58A16 lanes; block_k 128 = 4 warps x 32 (the int8 dot's K).
# K = 384 has three such steps, so split_k=4 runs three splits.
SPLIT4 = (GEMV, KernelConfig(block_m=8, block_n=128, block_k=128, split_k=4, group_m=1))
# Forced GEMV at M > 16 uses wide tiles: the interpreter's cost is per program, and the masks
# under test (ragged M, N, K) are the same at any tile size.
WIDE_GEMV = KernelConfig(block_m=16, block_n=256, block_k=128, split_k=2, group_m=1)


# -- the activation quantizer --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
def test_quantize_activations_bit_exact(device, dtype):
    x = torch.randn(6, K) * torch.logspace(-3, 3, 6).unsqueeze(1)
    x[3] = 0.0  # all-zero row: scale = 127 / 1e-5, x_q = 0
    x[4] = torch.rand(K) * 200 - 100
    x[4, :8] = torch.tensor([127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5])  # amax 127: scale 1, exact ties
    x = x.to(dtype).to(device)
    xq, scale = sign.quantize_activations(x)
    rq, rs = ref.ternary.quantize_activations(x)
    assert xq.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(xq, rq)
    assert torch.equal(scale, rs)
    if dtype is not torch.bfloat16:  # bf16 cannot hold 126.5
        assert xq[4, :8].tolist() == [127, 0, 2, 2, 0, -2, -2, 126]  # half to even


def test_quantize_activations_ties_and_leading_dims(device):
    # amax 63.5 gives scale 2 exactly, so x = j/4 lands on every tie j/2 + 0.5 of the grid
    row = torch.arange(-254, 255, dtype=torch.float32) / 4
    x = torch.stack([row, -row, row * 0.999]).reshape(3, 1, -1).to(device)
    xq, scale = sign.quantize_activations(x)
    rq, rs = ref.ternary.quantize_activations(x)
    assert xq.shape == x.shape and scale.shape == x.shape[:-1]
    assert torch.equal(xq, rq) and torch.equal(scale, rs)


def test_quantize_activations_two_pass_rows(device):
    # rows longer than the register tile take the two-sweep path (absmax loop, then quantize loop)
    x = (torch.randn(3, 300) * 5).to(device)
    x[1] = 0.0
    x_strided = torch.randn(300, 3, device=device).t()  # non-contiguous rows
    for inp in (x, x_strided):
        xq, scale = sign.quantize_activations(inp, max_block=128)
        rq, rs = ref.ternary.quantize_activations(inp)
        assert torch.equal(xq, rq) and torch.equal(scale, rs)


# -- exact int32 accumulation ----------------------------------------------------------------------

@pytest.mark.parametrize("path,cfg", [
    (GEMV, None), SPLIT4,
    (GEMM, None), (GEMM, KernelConfig(block_m=16, block_n=64, block_k=32, num_warps=4)),
])
def test_a8_int32_accumulation_exact(device, path, cfg):
    """Integer x with |x| max 127 per row gives scale = 1 exactly, so x_q = x; with gamma a power
    of two the rescale is exact and y must equal the int64 product of x_q and T."""
    m = 7
    qw = _weight("ternary", per_channel=True)
    gamma = 2.0 ** torch.randint(-3, 4, (N,)).float()
    qw = _with_gamma(qw, gamma)
    x = torch.randint(-127, 128, (m, K)).float()
    x[:, 5] = 127.0
    x[3] = 0.0  # all-zero row -> exactly the bias
    bias = torch.zeros(N)  # keeps y integral while the bias path still runs
    x, bias, qw = x.to(device), bias.to(device), qw.to(device)
    cfg = cfg or FAM.heuristic(path, m, qw, torch.float32)
    out = FAM.launch(x, qw, bias, path, cfg, nan_out((m, N), torch.float32, device))
    t = _ternary_t(qw).cpu()
    want = (x.cpu().to(torch.int64) @ t.t()).double() * gamma.double()
    assert torch.equal(out.cpu().double(), want)
    assert torch.equal(out[3].cpu(), torch.zeros(N))


def test_a8_zero_row_gives_bias(device):
    qw = _weight("ternary").to(device)
    x = torch.zeros(3, K, device=device)
    x[1] = torch.randn(K)
    bias = torch.randn(N, device=device)
    for path in (GEMV, GEMM):
        y = lowbit.linear(x, qw, bias, path=path)
        assert torch.equal(y[0], bias) and torch.equal(y[2], bias)
        assert bool(torch.isfinite(y).all())


# -- float parity with reference.linear ----------------------------------------------------------

# (M, dtype, per_channel, bias, explicit (path, config) or None): ragged M spread over cases; both
# paths run for each case, with the heuristic config where no explicit one is given.
A8_CASES = [
    (1, torch.float16, False, False, None),
    (2, torch.float32, True, True, None),
    (3, torch.float16, True, False, (GEMV, KernelConfig(block_m=4, block_n=64, block_k=128, split_k=8, group_m=1))),
    (7, torch.float32, False, True, SPLIT4),
    (16, torch.float16, False, True, None),
    (33, torch.float16, True, True, (GEMM, KernelConfig(block_m=32, block_n=64, block_k=64, num_warps=4))),
    (64, torch.float32, True, False, None),
    (100, torch.float16, False, False, None),
]


def _check_parity(scheme, m, dtype, per_channel, use_bias, explicit, device):
    qw = _weight(scheme, per_channel).to(device)
    x = (torch.randn(m, K) * 3).to(dtype).to(device)
    bias = torch.randn(N).to(dtype).to(device) if use_bias else None
    want = ref.linear(x, qw, bias, out_dtype=torch.float64)
    for path in (GEMV, GEMM):
        if explicit and explicit[0] is path:
            use = explicit[1]
        elif path is GEMV and m > 16:
            use = WIDE_GEMV
        else:
            use = FAM.heuristic(path, m, qw, dtype)
        out = FAM.launch(x, qw, bias, path, use, nan_out((m, N), dtype, device))
        assert out.dtype == dtype
        assert_close(f"{scheme} {path.value} M={m} {dtype}", want, out, TOL[dtype])


@pytest.mark.parametrize("m,dtype,per_channel,use_bias,cfg", A8_CASES)
def test_a8_matches_reference(device, m, dtype, per_channel, use_bias, cfg):
    _check_parity("ternary", m, dtype, per_channel, use_bias, cfg, device)


@pytest.mark.parametrize("m,dtype,per_channel,use_bias,cfg", [
    (1, torch.float32, True, True, None),
    (3, torch.float16, False, False, SPLIT4),
    (16, torch.float32, False, True, None),
    (33, torch.float16, True, False, None),
    (100, torch.float16, True, True, (GEMM, KernelConfig(block_m=64, block_n=128, block_k=32, num_warps=4))),
])
def test_a16_matches_reference(device, m, dtype, per_channel, use_bias, cfg):
    _check_parity("ternary_a16", m, dtype, per_channel, use_bias, cfg, device)


def test_a16_exact_on_integers(device):
    """Small integers and gamma = 1: every fp32 partial sum is an integer below 2^24, so exact."""
    qw = _with_gamma(_weight("ternary_a16"), torch.ones(1)).to(device)
    x = torch.randint(-8, 9, (5, K)).float().to(device)
    want = (x.cpu().to(torch.int64) @ _ternary_t(qw).cpu().t()).float()
    for path in (GEMV, GEMM):
        cfg = FAM.heuristic(path, 5, qw, torch.float32)
        out = FAM.launch(x, qw, None, path, cfg, nan_out((5, N), torch.float32, device))
        assert torch.equal(out.cpu(), want)


@pytest.mark.parametrize("scheme", ["ternary", "ternary_a16"])
def test_bf16(device, scheme):
    _check_parity(scheme, 33, torch.bfloat16, True, True, None, device)


def test_forward_leading_dims_and_strides(device):
    """lowbit.linear: [B, T, K] input, non-contiguous x, default path choice by M, out dtype of x."""
    qw = _weight("ternary").to(device)
    x = torch.randn(2, K, 9, device=device).transpose(1, 2)  # [2, 9, K], K not unit stride
    y = lowbit.linear(x, qw)
    assert y.shape == (2, 9, N) and y.dtype == x.dtype
    assert_close("forward 3-D", ref.linear(x, qw, out_dtype=torch.float64), y, TOL[torch.float32])
    x1 = x[:, :1]  # M = 2 goes to the GEMV path
    assert_close("gemv", ref.linear(x1, qw, out_dtype=torch.float64), lowbit.linear(x1, qw), TOL[torch.float32])


def test_bitnet_b158_inference_numerics(device):
    """lowbit.linear on quantize_weight(w, "ternary") equals BitNet b1.58's published inference formulas.

    BitNet's code quantizes weights with gamma = mean|W| and round(W / gamma) clipped to [-1, 1];
    activations with 127 / absmax per token; y = F.linear(x_q / s, T * gamma). Written out here
    independently of lowbit.reference, in float64 after the fp32 quantizers.
    """
    layer = torch.nn.Linear(K, N, bias=True)
    qw = lowbit.quantize_weight(layer.weight.data, "ternary")
    x = torch.randn(2, 5, K)
    w = layer.weight.data.float()
    gamma = w.abs().mean().clamp(min=1e-5)
    t = (w / gamma).round().clamp(-1, 1)
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    xq = (x * s).round().clamp(-128, 127)
    bitnet = F.linear(xq.double() / s.double(), t.double() * gamma.double(), layer.bias.data.double())
    assert torch.equal(_ternary_t(qw).float(), t)  # same ternary codes
    y = lowbit.linear(x.to(device), qw.to(device), layer.bias.data.to(device))
    assert_close("BitNet b1.58 formula", bitnet, y, TOL[torch.float32])
    assert_close("ref", ref.linear(x, qw, layer.bias.data, out_dtype=torch.float64), y, TOL[torch.float32])


def test_custom_ops_opcheck(device):
    """Schema and fake (meta) implementation of the custom op for both ternary kinds."""
    qw = _weight("ternary", per_channel=True).to(device)
    x = torch.randn(3, K, device=device)
    for kind, q in (("a8", qw), ("a16", _weight("ternary_a16", per_channel=True).to(device))):
        cfg = FAM.heuristic(GEMV, 3, q).to_list()
        torch.library.opcheck(torch.ops.lowbit.sign_linear.default,
                              (x, q["qweight"], None, q["gamma"], None, N, kind, "gemv", cfg),
                              test_utils=("test_schema", "test_faketensor"))


def test_forward_compiles_fullgraph(device):
    """lowbit.linear traces into one graph (custom ops with fake kernels, no host sync)."""
    qw = _weight("ternary", per_channel=True).to(device)
    qa = _weight("ternary_a16").to(device)
    bias = torch.randn(N, device=device)

    def f(x):
        return lowbit.linear(x, qw, bias) + lowbit.linear(x, qa)

    x = torch.randn(2, 3, K, device=device)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), f(x))


# -- bad input -----------------------------------------------------------------------------------

def test_bad_inputs(device):
    qw = _weight("ternary").to(device)
    x = torch.randn(2, K, device=device)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        lowbit.linear(torch.randn(2, K + 16, device=device), qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(x.to(torch.int32), qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(x.double(), qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        sign.quantize_activations(x.double())
    y0 = lowbit.linear(x[:0], qw)  # zero rows: an empty output, as F.linear gives
    assert y0.shape == (0, N) and y0.dtype == x.dtype
    with pytest.raises(ValueError, match="bias must have shape"):
        lowbit.linear(x, qw, torch.zeros(N + 1, device=device))


def test_non_ternary_weight_rejected(device):
    int2 = lowbit.quantize_weight(torch.randn(N, K), "int2", group_size=64).to(device)
    x = torch.randn(2, K, device=device)
    with pytest.raises(ValueError, match="the sign kernels serve binary/ternary/ternary_a16, not scheme 'int2'"):
        FAM.search_space(GEMV, int2)
    with pytest.raises(ValueError, match="not scheme 'int2'"):
        FAM.launch(x, int2, None, GEMV, KernelConfig(), nan_out((2, N), x.dtype, device))
    # a ternary container whose codes include 3 never reaches a kernel: construction rejects it
    qw = _weight("ternary")
    bad = qw["qweight"].clone()
    bad[2, 7] |= 3 << 10
    with pytest.raises(ValueError, match="code 3"):
        QuantizedWeight(Scheme.TERNARY, make_spec("ternary"), (N, K), {"qweight": bad, "gamma": qw["gamma"]})
    qw.tensors["qweight"] = bad  # bypasses construction: the oracle rejects it as well
    with pytest.raises(ValueError, match="code 3"):
        ref.ternary.ternary_values(qw)


def test_bad_launch_arguments(device):
    qw = _weight("ternary").to(device)
    x = torch.randn(4, K, device=device)
    good = nan_out((4, N), x.dtype, device)
    ok = KernelConfig(block_m=4, block_n=64, block_k=128, group_m=1)
    with pytest.raises(ValueError, match="K slice of at least 32"):
        FAM.launch(x, qw, None, GEMV, KernelConfig(block_n=64, block_k=64), good)
    with pytest.raises(ValueError, match="at least 16 lanes"):
        FAM.launch(x, qw, None, GEMV, KernelConfig(block_n=32, block_k=128), good)
    with pytest.raises(ValueError, match="GEMM tiles need"):
        FAM.launch(x, qw, None, GEMM, KernelConfig(block_m=8, block_k=64), good)
    with pytest.raises(ValueError, match="power of two"):
        FAM.launch(x, qw, None, GEMM, KernelConfig(block_n=48), good)
    with pytest.raises(ValueError, match="explicit path"):
        FAM.launch(x, qw, None, None, ok, good)
    with pytest.raises(ValueError, match="out must have shape"):
        FAM.launch(x, qw, None, GEMV, ok, nan_out((4, N + 1), x.dtype, device))
    with pytest.raises(ValueError, match="out must be"):
        FAM.launch(x, qw, None, GEMV, ok, nan_out((4, N), torch.float16, device))
    with pytest.raises(ValueError, match="x2d"):
        FAM.launch(x.reshape(2, 2, K), qw, None, GEMV, ok, good)


def test_family_interface():
    qw = _weight("ternary")
    for path in (GEMV, GEMM):
        space = FAM.search_space(path, qw)
        assert space and all(isinstance(c, KernelConfig) for c in space)
        for c in space:
            assert C.kind_config_problem(C.TERNARY_A8, path, c) is None, c
    assert FAM.heuristic(GEMV, 1, qw).block_m == 1
    assert FAM.choose_path(1) is GEMV and FAM.choose_path(64) is GEMM
    cases = list(FAM.aot_cases())
    assert 0 < len(cases) <= 50  # W1.58A8, W1.58A16 and binary: 11-16 distinct launches each (with quantizers)
    a8_gemm = [c for c in cases if c.integer_mma]
    assert a8_gemm and all(c.expects_tensor_cores for c in a8_gemm)


# -- W1.58A8 on pre-quantized activations (tensor parallelism's row-parallel layers) -----------------

@pytest.mark.parametrize("m", [pytest.param(3, id="gemv"), pytest.param(33, id="gemm")])
def test_linear_quantized_exact(device, m):
    """Given int8 x_q and a per-token scale, the kernel equals the oracle: integer dot exact, then
    * gamma / scale in fp32 (power-of-two gamma and scale keep that exact too)."""
    qw = _with_gamma(_weight("ternary", per_channel=True), 2.0 ** torch.randint(-3, 4, (N,)).float()).to(device)
    xq = torch.randint(-128, 128, (m, K), dtype=torch.int8).to(device)
    scale = (2.0 ** torch.randint(-2, 3, (m,))).float().to(device)
    y = sign.linear_quantized(xq, scale, qw)
    want = ref.ternary.linear_quantized(xq.cpu(), scale.cpu(), qw.to("cpu"))
    assert y.dtype == torch.float32 and torch.equal(y.cpu(), want)
    assert sign.linear_quantized(xq, scale, qw, torch.float16).dtype == torch.float16


def test_linear_quantized_bad_inputs(device):
    qw = _weight("ternary").to(device)
    xq = torch.zeros(2, K, dtype=torch.int8, device=device)
    scale = torch.ones(2, device=device)
    with pytest.raises(TypeError, match="int8"):
        sign.linear_quantized(xq.float(), scale, qw)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        sign.linear_quantized(xq[:, :-1], scale, qw)
    with pytest.raises(ValueError, match="scale must be fp32 of shape"):
        sign.linear_quantized(xq, scale[:1], qw)
    with pytest.raises(ValueError, match="W1.58A8"):
        sign.linear_quantized(xq, scale, _weight("ternary_a16").to(device))
    torch.library.opcheck(torch.ops.lowbit.sign_linear_quantized.default,
                          (xq, scale, qw["qweight"], qw["gamma"], N, torch.float32, "gemv",
                           FAM.heuristic(GEMV, 2, qw).to_list()),
                          test_utils=("test_schema", "test_faketensor"))
