"""compressed-tensors pack-quantized importer against the real compressed-tensors packer.

Weights are quantized and packed by compressed-tensors itself (calculate_qparams +
PackedQuantizationCompressor.compress, what llm-compressor writes), imported, and checked:
lowbit.dequantize in the scale's dtype equals PackedQuantizationCompressor.decompress bit for
bit (compressed-tensors computes (q - zp) exactly in the scale dtype and rounds the product
once, as lowbit's exact product rounded to that dtype does), and lowbit.linear matches
lowbit.reference.linear.
"""
import pytest
import torch

import lowbit
from lowbit.importers import Refused, from_compressed_tensors

from kernel_check import check_kernel

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor, pack_to_int32  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme  # noqa: E402
from compressed_tensors.quantization.utils import calculate_qparams  # noqa: E402


def ct_layer(w, bits, strategy, group, symmetric, scale_dtype):
    """Quantize and pack `w` [N, K] with compressed-tensors; returns (compressed dict, scheme)."""
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group if strategy == "group" else None)
    n, k = w.shape
    wf = w.float()
    if strategy == "group":
        mn, mx = wf.reshape(n, k // group, group).amin(-1), wf.reshape(n, k // group, group).amax(-1)
    elif strategy == "channel":
        mn, mx = wf.amin(-1, keepdim=True), wf.amax(-1, keepdim=True)
    else:
        mn, mx = wf.amin().reshape(1), wf.amax().reshape(1)
    scale, zp = calculate_qparams(mn, mx, args)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = {"weight": w, "weight_scale": scale.to(scale_dtype), "weight_zero_point": zp}
    return PackedQuantizationCompressor.compress(state, scheme), scheme


CASES = [
    pytest.param(4, "group", 32, True, torch.bfloat16, id="int4-g32-sym-bf16"),
    pytest.param(4, "group", 128, False, torch.bfloat16, id="int4-g128-asym-bf16"),
    pytest.param(4, "channel", None, False, torch.float16, id="int4-chan-asym-fp16"),
    pytest.param(4, "channel", None, True, torch.float32, id="int4-chan-sym-fp32"),
    pytest.param(8, "group", 64, False, torch.bfloat16, id="int8-g64-asym-bf16"),
    pytest.param(8, "channel", None, True, torch.float16, id="int8-chan-sym-fp16"),
    pytest.param(2, "group", 32, False, torch.float16, id="int2-g32-asym"),
    pytest.param(3, "group", 32, False, torch.float16, id="int3-dense-g32-asym"),
    pytest.param(4, "tensor", None, True, torch.bfloat16, id="int4-tensor-sym"),
]


@pytest.mark.parametrize("bits,strategy,group,symmetric,scale_dtype", CASES)
def test_real_packer_round_trip(bits, strategy, group, symmetric, scale_dtype, device):
    n, k = 48, 256
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(bits)).to(scale_dtype)
    packed, scheme = ct_layer(w, bits, strategy, group, symmetric, scale_dtype)
    assert ("weight_zero_point" in packed) == (not symmetric and strategy != "tensor")
    peer = PackedQuantizationCompressor.decompress(packed, scheme)["weight"]
    qw = from_compressed_tensors(packed["weight_packed"], packed["weight_scale"], packed.get("weight_zero_point"),
                                 packed["weight_shape"], num_bits=bits, strategy=strategy, group_size=group)
    assert qw.shape == (n, k) and qw.scheme.value == f"int{bits}"
    assert qw["scales"].dtype == scale_dtype
    mine = lowbit.dequantize(qw, peer.dtype)
    assert peer.dtype == scale_dtype and torch.equal(mine, peer)
    check_kernel(qw, device)


def test_legacy_three_bit_layout():
    """Older compressed-tensors put floor(32/3) = 10 codes per word; the packed width tells the layouts apart."""
    n, k = 4, 64
    g = torch.Generator().manual_seed(0)
    q = torch.randint(-4, 4, (n, k), generator=g)
    u = (q + 4).tolist()
    words = [[sum(u[r][10 * j + i] << (3 * i) for i in range(10) if 10 * j + i < k) for j in range(7)] for r in range(n)]
    legacy = torch.tensor(words, dtype=torch.int32)
    scale = torch.rand(n, 2, generator=g).to(torch.float16) + 0.1
    qw = from_compressed_tensors(legacy, scale, None, (n, k), num_bits=3, strategy="group", group_size=32)
    expect = (q.to(torch.float64) * scale.to(torch.float64).repeat_interleave(32, dim=1))
    assert torch.equal(lowbit.dequantize(qw, torch.float64), expect)
    dense = pack_to_int32(q.to(torch.int8), 3)  # the current packer: 6 words
    assert dense.shape == (n, 6)
    qw2 = from_compressed_tensors(dense, scale, None, (n, k), num_bits=3, strategy="group", group_size=32)
    assert torch.equal(lowbit.dequantize(qw2, torch.float64), expect)


def test_unpacked_int8_zero_point():
    """Older files store the zero point unpacked as int8 [N, G]."""
    n, k = 16, 64
    w = torch.randn(n, k)
    packed, scheme = ct_layer(w, 4, "group", 32, False, torch.float16)
    from compressed_tensors.compressors.pack_quantized import unpack_from_int32

    zp = unpack_from_int32(packed["weight_zero_point"], 4, torch.Size((n, 2)), packed_dim=0)
    a = from_compressed_tensors(packed["weight_packed"], packed["weight_scale"], packed["weight_zero_point"],
                                packed["weight_shape"], num_bits=4, strategy="group", group_size=32)
    b = from_compressed_tensors(packed["weight_packed"], packed["weight_scale"], zp, packed["weight_shape"],
                                num_bits=4, strategy="group", group_size=32)
    assert zp.dtype == torch.int8 and torch.equal(lowbit.dequantize(a), lowbit.dequantize(b))


def test_refusals_and_bad_input():
    n, k = 16, 64
    packed, _ = ct_layer(torch.randn(n, k), 4, "group", 32, True, torch.float16)
    args = (packed["weight_packed"], packed["weight_scale"], None, packed["weight_shape"])
    with pytest.raises(Refused, match="act-order"):
        from_compressed_tensors(*args, torch.randperm(k).div(32, rounding_mode="floor").to(torch.int32),
                                num_bits=4, strategy="group", group_size=32)
    with pytest.raises(Refused, match="strategy 'tensor_group' is not imported"):
        from_compressed_tensors(*args, num_bits=4, strategy="tensor_group", group_size=32)
    with pytest.raises(Refused, match="group size 16 with in_features K=64 cannot be served"):
        from_compressed_tensors(packed["weight_packed"], torch.ones(n, 4, dtype=torch.float16), None,
                                packed["weight_shape"], num_bits=4, strategy="group", group_size=16)
    with pytest.raises(ValueError, match=r"weight_scale has shape \(16, 2\), expected \(16, 1\)"):
        from_compressed_tensors(*args, num_bits=4, strategy="channel")
    with pytest.raises(ValueError, match="weight_packed has 8 words along dim 1, expected 16"):
        from_compressed_tensors(*args, num_bits=8, strategy="group", group_size=32)
    with pytest.raises(Refused, match=r"num_bits=9 is not supported"):
        from_compressed_tensors(*args, num_bits=9, strategy="group", group_size=32)
    with pytest.raises(ValueError, match="weight_shape"):
        from_compressed_tensors(packed["weight_packed"], packed["weight_scale"], None, (17, k),
                                num_bits=4, strategy="group", group_size=32)
