"""OneBit binary kernels (1-bit signs, g[K] and h[N]) against the PyTorch oracle, both paths."""
import pytest
import torch

import lowbit
from lowbit import reference as ref
from lowbit.formats import QuantizedWeight
from lowbit.kernels import KernelConfig, KernelPath, sign
from lowbit.kernels.sign import configs as C

from helpers import INTERPRET
from helpers import assert_close, nan_out

FAM = sign.FAMILY
N, K = 200, 384
GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM
# Output rounding dominates: half an ulp relative to max|y| is 2^-11 (fp16), 2^-8 (bf16), 2^-24
# (fp32). x * g is exact in fp32 (fp16 x fp16 needs 22 significant bits), the fp32 accumulation
# over K = 384 random-sign terms adds ~sqrt(K) * 2^-24, and * h one more rounding. bf16 also
# rounds x * g to bf16 (2^-9 per term, random signs). The interpreter truncates fp32 -> bf16 casts (a
# full ulp, 2^-7, for x * g and the output): 1.5e-2 there.
TOL = {torch.float16: 1e-3, torch.bfloat16: 1.5e-2 if INTERPRET else 8e-3, torch.float32: 3e-5}
# 256 rows = 16 lanes of 16 binary rows; block_k 64 = 4 warps x 16 (the fp16 dot's K)
SPLIT4 = (GEMV, KernelConfig(block_m=8, block_n=256, block_k=64, split_k=4, group_m=1))
# Forced GEMV at M > 16 uses wide tiles: the interpreter's cost is per program, and the masks
# under test (ragged M, N, K) are the same at any tile size.
WIDE_GEMV = KernelConfig(block_m=16, block_n=256, block_k=128, split_k=2, group_m=1)


def _weight(n=N, k=K):
    return lowbit.quantize_weight(torch.randn(n, k), "binary")


def _signs(qw):
    return ref.binary.signs(qw)


@pytest.mark.parametrize("path,cfg", [(GEMV, None), SPLIT4, (GEMM, None),
                                      (GEMM, KernelConfig(block_m=16, block_n=256, block_k=32))])
def test_exact_with_power_of_two_scales(device, path, cfg):
    """Integer x and power-of-two g, h: every product and partial sum is exact in fp32, so y must
    equal the int64 sign product scaled by g and h, bit for bit; g indexes K and h indexes N."""
    qw = _weight()
    g = (2.0 ** torch.randint(-2, 3, (K,))).half()
    h = (2.0 ** torch.randint(-2, 3, (N,))).half()
    qw = QuantizedWeight(qw.scheme, qw.spec, qw.shape, {"qweight": qw["qweight"], "g": g, "h": h}).to(device)
    m = 5
    x = torch.randint(-8, 9, (m, K)).float().to(device)
    cfg = cfg or FAM.heuristic(path, m, qw, torch.float32)
    out = FAM.launch(x, qw, None, path, cfg, nan_out((m, N), torch.float32, device))
    s = _signs(qw).cpu().double()
    want = ((x.cpu().double() * g.double()) @ s.t()) * h.double()
    assert torch.equal(out.cpu().double(), want)


# (M, dtype, bias, explicit (path, config) or None); both paths run for each case
CASES = [
    (1, torch.float16, True, None),
    (2, torch.float32, False, None),
    (7, torch.float16, False, SPLIT4),
    (16, torch.float32, True, None),
    (33, torch.float16, True, (GEMM, KernelConfig(block_m=32, block_n=256, block_k=32))),
    (100, torch.float16, False, None),
]


def _check_parity(m, dtype, use_bias, explicit, device):
    qw = _weight().to(device)
    x = (torch.randn(m, K) * 2).to(dtype).to(device)
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
        assert_close(f"binary {path.value} M={m} {dtype}", want, out, TOL[dtype])


@pytest.mark.parametrize("m,dtype,use_bias,explicit", CASES)
def test_matches_reference(device, m, dtype, use_bias, explicit):
    _check_parity(m, dtype, use_bias, explicit, device)


def test_bf16(device):
    _check_parity(33, torch.bfloat16, True, None, device)


def test_forward_leading_dims_and_strides(device):
    qw = _weight().to(device)
    x = torch.randn(3, K, 4, device=device).transpose(1, 2)  # [3, 4, K], K not unit stride
    y = lowbit.linear(x, qw)
    assert y.shape == (3, 4, N) and y.dtype == x.dtype
    assert_close("forward 3-D", ref.linear(x, qw, out_dtype=torch.float64), y, TOL[torch.float32])


def test_custom_op_opcheck(device):
    qw = _weight().to(device)
    x = torch.randn(2, K, device=device)
    cfg = FAM.heuristic(GEMV, 2, qw, x.dtype).to_list()
    torch.library.opcheck(torch.ops.lowbit.sign_linear.default,
                          (x, qw["qweight"], qw["g"], qw["h"], None, N, "binary", "gemv", cfg),
                          test_utils=("test_schema", "test_faketensor"))


def test_bad_inputs(device):
    qw = _weight().to(device)
    x = torch.randn(2, K, device=device)
    with pytest.raises(ValueError, match="does not match the weight's K"):
        lowbit.linear(torch.randn(2, K - 32, device=device), qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(x.to(torch.int32), qw)
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        lowbit.linear(x.double(), qw)
    nf4 = lowbit.quantize_weight(torch.randn(N, K), "nf4").to(device)
    with pytest.raises(ValueError, match="the sign kernels serve binary/ternary/ternary_a16, not scheme 'nf4'"):
        FAM.launch(x, nf4, None, GEMV, KernelConfig(block_k=32), nan_out((2, N), x.dtype, device))
    good = nan_out((2, N), x.dtype, device)
    with pytest.raises(ValueError, match="K slice of at least 16"):
        FAM.launch(x, qw, None, GEMV, KernelConfig(block_n=256, block_k=32), good)
    with pytest.raises(ValueError, match="at least 16 lanes"):
        FAM.launch(x, qw, None, GEMV, KernelConfig(block_n=128, block_k=64), good)
    with pytest.raises(ValueError, match="GEMM tiles need"):
        FAM.launch(x, qw, None, GEMM, KernelConfig(block_n=8, block_k=32), good)
    with pytest.raises(ValueError, match="out must have shape"):
        FAM.launch(x, qw, None, GEMM, KernelConfig(block_n=256, block_k=32), nan_out((3, N), x.dtype, device))


def test_family_interface():
    qw = _weight()
    for path in (GEMV, GEMM):
        for c in FAM.search_space(path, qw):
            assert C.kind_config_problem(C.BINARY, path, c) is None, c
    cases = [c for c in FAM.aot_cases() if c.label.startswith("binary ")]
    assert 0 < len(cases) <= 15
    assert FAM.heuristic(GEMM, 4096, qw, torch.float32).block_m <= 32  # fp32 FMA dots get small tiles
