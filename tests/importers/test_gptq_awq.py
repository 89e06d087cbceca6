"""GPTQ and AutoAWQ importers against tensors packed by hand (tests/importers/packers.py).

AutoGPTQ, GPTQModel and AutoAWQ need CUDA builds, so they are not installed here: the
checkpoints are packed from the formats' published descriptions instead. Each test checks
that lowbit.dequantize equals the format's own rule exactly, in float64 and in fp16 (AutoGPTQ's
torch path and AutoAWQ's dequantizer compute scale * (q - z) in fp16: the integer difference
is exact and the product rounds once, as lowbit's exact product rounded to fp16 does), and that
lowbit.linear (the kernels) matches lowbit.reference.linear.
"""
import pytest
import torch

import lowbit
from lowbit.formats import Scheme
from lowbit.importers import GPTQZeros, Refused, from_awq, from_gptq

from kernel_check import check_kernel
from packers import awq_pack, gptq_pack_qweight, gptq_pack_qzeros


def gptq_case(n, k, bits, group, seed=0, zero_range=None):
    g = torch.Generator().manual_seed(seed)
    gs = k if group == -1 else group
    groups = k // gs
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g)
    lo, hi = zero_range or (1, 2 ** bits)
    zeros = torch.randint(lo, hi, (groups, n), generator=g)  # the real zero points
    scales = (torch.rand(groups, n, generator=g) * 0.02 + 0.001).to(torch.float16)
    return codes, zeros, scales


def gptq_rule(codes, zeros, scales, gs, dtype=torch.float64):
    """AutoGPTQ's dequantization: W[n, k] = scales[k // gs, n] * (q[n, k] - z[k // gs, n])."""
    gi = torch.arange(codes.shape[1]) // gs
    diff = codes - zeros[gi].t()  # integers
    return (scales[gi].t().to(dtype) * diff.to(dtype)).to(dtype)


def check_layer(qw, expect64, expect16, device):
    assert torch.equal(lowbit.dequantize(qw, torch.float64), expect64)
    assert torch.equal(lowbit.dequantize(qw, torch.float16), expect16)
    check_kernel(qw, device)


@pytest.mark.parametrize("bits,group", [
    pytest.param(4, 32, id="int4-g32"), pytest.param(4, 128, id="int4-g128"), pytest.param(4, -1, id="int4-perchan"),
    pytest.param(2, 64, id="int2-g64"), pytest.param(3, 32, id="int3-g32"), pytest.param(3, -1, id="int3-perchan"),
    pytest.param(8, 64, id="int8-g64"),
])
@pytest.mark.parametrize("fmt", [pytest.param(GPTQZeros.V1, id="v1"), pytest.param(GPTQZeros.V2, id="v2")])
def test_gptq_exact(bits, group, fmt, device):
    n, k = 64, 256
    codes, zeros, scales = gptq_case(n, k, bits, group, zero_range=(1, 2 ** bits) if fmt is GPTQZeros.V1 else None)
    fields = zeros - 1 if fmt is GPTQZeros.V1 else zeros
    gs = k if group == -1 else group
    g_idx = (torch.arange(k) // gs).to(torch.int32)
    qw = from_gptq(gptq_pack_qweight(codes, bits), gptq_pack_qzeros(fields, bits), scales, g_idx,
                   bits=bits, group_size=group, zeros_format=fmt)
    assert qw.scheme is Scheme(f"int{bits}") and qw.shape == (n, k)
    assert qw.spec.group_size == group and qw["scales"].dtype == torch.float16
    check_layer(qw, gptq_rule(codes, zeros, scales, gs), gptq_rule(codes, zeros, scales, gs, torch.float16), device)


def test_gptq_symmetric_zeros_become_lowbit_symmetric():
    """GPTQ sym=True stores z = 2^(b-1) everywhere: lowbit's symmetric spec reproduces it without a zeros tensor."""
    n, k, bits = 32, 128, 4
    codes, _, scales = gptq_case(n, k, bits, 128)
    zeros = torch.full((1, n), 8)
    qw = from_gptq(gptq_pack_qweight(codes, bits), gptq_pack_qzeros(zeros - 1, bits), scales, bits=4, group_size=128)
    assert qw.spec.symmetric and "zeros" not in qw.tensors
    assert torch.equal(lowbit.dequantize(qw, torch.float64), gptq_rule(codes, zeros, scales, 128))


def test_gptq_three_bit_straddling_codes_known_words():
    """Code 10 straddles words 0/1 and code 21 words 1/2 (the 3-bit layout, from AutoGPTQ's pack loop)."""
    codes = torch.zeros(1, 32, dtype=torch.int64)
    codes[0, 10], codes[0, 21] = 5, 6
    qweight = gptq_pack_qweight(codes, 3)
    assert qweight[:, 0].tolist() == [1 << 30, 1 | 0, 3]
    fields = torch.zeros(1, 32, dtype=torch.int64)
    qw = from_gptq(qweight.expand(3, 32).contiguous(), gptq_pack_qzeros(fields, 3), torch.ones(1, 32, dtype=torch.float16),
                   bits=3, group_size=-1, zeros_format="gptq_v2")
    w = lowbit.dequantize(qw, torch.float64)
    assert w[0].tolist() == [5.0 if j == 10 else 6.0 if j == 21 else 0.0 for j in range(32)]


def test_gptq_group_256_maps_to_lowbit_128():
    n, k, bits = 32, 512, 4
    codes, zeros, scales = gptq_case(n, k, bits, 256)
    qw = from_gptq(gptq_pack_qweight(codes, bits), gptq_pack_qzeros(zeros - 1, bits), scales, bits=4, group_size=256)
    assert qw.spec.group_size == 128 and qw["scales"].shape == (4, n)
    assert torch.equal(lowbit.dequantize(qw, torch.float64), gptq_rule(codes, zeros, scales, 256))


def test_gptq_act_order_refused():
    n, k, bits = 32, 128, 4
    codes, zeros, scales = gptq_case(n, k, bits, 32)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1))
    g_idx = (perm // 32).to(torch.int32)  # desc_act: groups formed in a permuted input order
    with pytest.raises(Refused, match="act-order"):
        from_gptq(gptq_pack_qweight(codes, bits), gptq_pack_qzeros(zeros - 1, bits), scales, g_idx, bits=4, group_size=32)


def test_gptq_v1_zero_of_zero_is_refused():
    n, k, bits = 32, 64, 4
    codes, zeros, scales = gptq_case(n, k, bits, 32)
    fields = zeros - 1
    fields[1, 31] = 15  # the packer's -1 for a zero point of 0 (last field in its word)
    with pytest.raises(Refused, match="kernels disagree"):
        from_gptq(gptq_pack_qweight(codes, bits), gptq_pack_qzeros(fields, bits), scales, bits=4, group_size=32)
    qw = from_gptq(gptq_pack_qweight(codes, bits), gptq_pack_qzeros(fields, bits), scales, bits=4, group_size=32,
                   zeros_format="gptq_v2")  # in v2 a field of 15 is simply the zero 15
    assert float(qw["zeros"][1, 31]) == 15.0


@pytest.mark.parametrize("kwargs,exc,match", [
    pytest.param({"bits": 5}, Refused, r"bits=5 is not supported", id="bits"),
    pytest.param({"zeros_format": "gptq_v3"}, ValueError, "unknown GPTQ checkpoint_format", id="format"),
    pytest.param({"in_features": 96}, ValueError, r"qweight has shape \(32, 32\), expected \(12, 32\)", id="shape"),
    pytest.param({"bits": True}, TypeError, "bits must be an int", id="bool-bits"),
])
def test_gptq_bad_input(kwargs, exc, match):
    n, k = 32, 256
    codes, zeros, scales = gptq_case(n, k, 4, 32)
    args = dict(bits=4, group_size=32)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        from_gptq(gptq_pack_qweight(codes, 4), gptq_pack_qzeros(zeros - 1, 4), scales, **args)


def test_gptq_group_16_refused():
    codes, zeros, scales = gptq_case(32, 64, 4, 16)
    with pytest.raises(Refused, match=r"group size 16 with in_features K=64 cannot be served exactly"):
        from_gptq(gptq_pack_qweight(codes, 4), gptq_pack_qzeros(zeros - 1, 4), scales, bits=4, group_size=16)


def test_gptq_bad_tensors():
    n, k = 32, 64
    codes, zeros, scales = gptq_case(n, k, 4, 32)
    qweight, qzeros = gptq_pack_qweight(codes, 4), gptq_pack_qzeros(zeros - 1, 4)
    with pytest.raises(TypeError, match="qweight must be torch.int32"):
        from_gptq(qweight.to(torch.int64), qzeros, scales, bits=4, group_size=32)
    with pytest.raises(ValueError, match=r"scales has shape \(2, 16\), expected \(2, 32\)"):
        from_gptq(qweight, qzeros, scales[:, :16], bits=4, group_size=32)
    with pytest.raises(ValueError, match="scales contains NaN"):
        from_gptq(qweight, qzeros, scales.clone().fill_(float("nan")), bits=4, group_size=32)
    with pytest.raises(ValueError, match="g_idx has 63 entries"):
        from_gptq(qweight, qzeros, scales, torch.zeros(63, dtype=torch.int32), bits=4, group_size=32, in_features=64)


# -- AutoAWQ GEMM ---------------------------------------------------------------------------------------
def test_awq_known_word():
    """Outputs 0..7 with codes 0..7: nibble i holds output AWQ_ORDER[i], so the word reads 0x75316420."""
    word = awq_pack(torch.arange(8).reshape(1, 8))
    assert int(word[0, 0]) & 0xFFFFFFFF == 0x75316420


@pytest.mark.parametrize("group", [pytest.param(32, id="g32"), pytest.param(128, id="g128"),
                                   pytest.param(-1, id="perchan")])
def test_awq_exact(group, device):
    n, k = 48, 256
    g = torch.Generator().manual_seed(3)
    gs = k if group == -1 else group
    codes = torch.randint(0, 16, (n, k), generator=g)
    zeros = torch.randint(0, 16, (k // gs, n), generator=g)
    scales = (torch.rand(k // gs, n, generator=g) * 0.02 + 0.001).to(torch.float16)
    qw = from_awq(awq_pack(codes.t()), awq_pack(zeros), scales, group_size=group)
    assert qw.scheme is Scheme.INT4 and qw.shape == (n, k) and qw.spec.group_size == group
    check_layer(qw, gptq_rule(codes, zeros, scales, gs), gptq_rule(codes, zeros, scales, gs, torch.float16), device)


def test_awq_bad_input():
    codes = torch.randint(0, 16, (64, 32))
    qweight, qzeros = awq_pack(codes), awq_pack(torch.zeros(2, 32, dtype=torch.int64))
    scales = torch.ones(2, 32, dtype=torch.float16)
    with pytest.raises(Refused, match=r"bits=8 is not supported"):
        from_awq(qweight, qzeros, scales, group_size=32, bits=8)
    with pytest.raises(Refused, match="group_size=48 does not divide"):
        from_awq(qweight, qzeros, scales, group_size=48)
    with pytest.raises(ValueError, match=r"qzeros has shape \(2, 4\), expected \(4, 4\)"):
        from_awq(qweight, qzeros, scales, group_size=16)
