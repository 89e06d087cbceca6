"""The lane layouts of the sign codes (ternary W1.58A8 / W1.58A16, binary): exact bits, the operand
identities the kernels rely on, padding, value checks, and the conversion from format version 1."""
import pytest
import torch

import lowbit
from lowbit import reference as ref
from lowbit.formats import LaneLayout, QuantizedWeight, Scheme, make_spec
from lowbit.reference.packing import pack_codes

A8, A16 = make_spec("ternary"), make_spec("ternary_a16")
BIN = make_spec("binary")
RAGGED = [pytest.param(1, 1, id="1x1"), pytest.param(5, 17, id="5x17"), pytest.param(19, 40, id="19x40"),
          pytest.param(33, 100, id="33x100")]


def _trits(n, k):
    return torch.randint(-1, 2, (n, k))


@pytest.mark.parametrize("n,k", RAGGED)
@pytest.mark.parametrize("spec", [pytest.param(A8, id="a8"), pytest.param(A16, id="a16")])
def test_ternary_round_trip_and_shape(spec, n, k):
    t = _trits(n, k)
    q = ref.ternary.pack(t + 1, spec)
    layout = spec.layout
    assert q.dtype == torch.int32 and q.is_contiguous()
    assert tuple(q.shape) == (layout.lanes(n), layout.words(k))
    assert torch.equal(ref.ternary.unpack(q, spec, (n, k)), t + 1)


@pytest.mark.parametrize("n,k", RAGGED)
def test_binary_round_trip_and_shape(n, k):
    bits = torch.randint(0, 2, (n, k))
    q = ref.binary.pack(bits, BIN)
    assert tuple(q.shape) == (-(-n // 16), -(-k // 16) * 16 * 16 // 32)
    assert torch.equal(ref.binary.unpack(q, BIN, (n, k)), bits)


def test_lane_layout_sizes():
    lay = LaneLayout(field_bits=2, lane_bits=8)
    assert (lay.rows_per_lane, lay.lanes(9), lay.padded_k(17), lay.words(17)) == (4, 3, 32, 8)
    lay = LaneLayout(field_bits=1, lane_bits=16)
    assert (lay.rows_per_lane, lay.lanes(16), lay.lanes(17), lay.words(16)) == (16, 1, 2, 8)


def test_a8_byte_bits_known_answer():
    """Rows (t0, t1, t2, t3) = (-1, 0, 1, -1) at k = 0: fields (0, 1, 2, 0b11) -> 0b11_10_01_00; the padded
    k = 1..15 hold t = 0 for every row: 0b00_01_01_01."""
    t = torch.tensor([[-1], [0], [1], [-1]])
    q = ref.ternary.pack(t + 1, A8)
    b = q.view(torch.uint8)[0]
    assert b[0].item() == 0b11100100
    assert set(b[1:].tolist()) == {0b00010101}


def test_a8_bytes_are_int8_operands():
    """For every valid byte, int8(b) = c0 + 4 c1 + 16 c2 + 64 t3 with c = t + 1, and b & 0x03, 0x0C, 0x30 are
    c0, 4 c1, 16 c2: four int8 dots give each row (the W1.58A8 kernel's decode)."""
    trits = torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * 4)  # [81, 4]: every lane
    q = ref.ternary.pack(trits.reshape(-1, 1) + 1, A8)  # rows 4 r .. 4 r + 3 at k = 0: lane r = combination r
    b = q.view(torch.int8)[:, 0].to(torch.int64)
    c = trits + 1
    assert torch.equal(b, c[:, 0] + 4 * c[:, 1] + 16 * c[:, 2] + 64 * trits[:, 3])
    u = b & 0xFF
    assert torch.equal(u & 0x03, c[:, 0]) and torch.equal(u & 0x0C, 4 * c[:, 1]) and torch.equal(u & 0x30, 16 * c[:, 2])


def _fp16_of(bits: torch.Tensor) -> torch.Tensor:
    return (bits.to(torch.int64) & 0xFFFF).to(torch.int32).to(torch.int16).view(torch.float16).to(torch.float64)


def test_a16_masked_lanes_are_fp16_operands():
    """A W1.58A16 lane ANDed with one field's bits is an fp16 whose value is c * 2^(p - 24) (fields at bit
    p = 2 f < 10, and 2 f - 8 after a shift by 8 for f = 5, 6), or 2 t for the top field (sign and top
    exponent bits): what kernels._mask_operand forms, undone by kernels._field_value."""
    g = torch.Generator().manual_seed(3)
    trits = torch.randint(-1, 2, (512, 8), generator=g)
    q = ref.ternary.pack((trits + 1).reshape(-1, 1), A16)  # lane r holds rows 8 r .. 8 r + 7 at k = 0
    lanes = q.view(torch.int16)[:, 0].to(torch.int64) & 0xFFFF
    for f in range(8):
        c = (trits[:, f] + 1).to(torch.float64)
        if f < 5:
            v = _fp16_of(lanes & (3 << 2 * f)) * 2.0 ** (24 - 2 * f)
            assert torch.equal(v, c), f
        elif f < 7:
            v = _fp16_of((lanes >> 8) & (3 << (2 * f - 8))) * 2.0 ** (32 - 2 * f)
            assert torch.equal(v, c), f
        else:
            assert torch.equal(_fp16_of(lanes & 0xC000), 2.0 * trits[:, f].to(torch.float64))


def test_binary_masked_lanes_are_fp16_operands():
    """Bit f < 10 ANDed out is b * 2^(f - 24); bits 10-14 the same after a shift by 10; bit 15 with the
    exponent of 1.0 OR-ed in is -s (kernels._mask_operand / _field_value)."""
    g = torch.Generator().manual_seed(4)
    bits = torch.randint(0, 2, (512, 16), generator=g)
    q = ref.binary.pack(bits.reshape(-1, 1), BIN)
    lanes = q.view(torch.int16)[:, 0].to(torch.int64) & 0xFFFF
    for f in range(16):
        b = bits[:, f].to(torch.float64)
        if f < 10:
            assert torch.equal(_fp16_of(lanes & (1 << f)) * 2.0 ** (24 - f), b), f
        elif f < 15:
            assert torch.equal(_fp16_of((lanes >> 10) & (1 << (f - 10))) * 2.0 ** (34 - f), b), f
        else:
            assert torch.equal(_fp16_of((lanes & 0x8000) | 0x3C00), -(2 * b - 1))


@pytest.mark.parametrize("spec", [pytest.param(A8, id="a8"), pytest.param(A16, id="a16")])
def test_ternary_padding_is_zero_weight(spec):
    """Rows past N and columns past K decode to t = 0 (their products vanish whatever x holds there)."""
    n, k = 5, 3
    q = ref.ternary.pack(_trits(n, k) + 1, spec)
    lay = spec.layout
    full = ref.ternary.unpack(q, spec, (lay.lanes(n) * lay.rows_per_lane, lay.padded_k(k)))
    assert bool((full[n:] == 1).all()) and bool((full[:, k:] == 1).all())


@pytest.mark.parametrize("spec,flip", [pytest.param(A8, 0b11, id="a8-low-field-3"),
                                       pytest.param(A8, 0b10 << 6, id="a8-top-field-minus2"),
                                       pytest.param(A16, 0b11 << 4, id="a16-low-field-3"),
                                       pytest.param(A16, 0b10 << 14, id="a16-top-field-minus2")])
def test_invalid_codes_are_rejected(spec, flip):
    scheme = Scheme.TERNARY if spec is A8 else Scheme.TERNARY_A16
    qw = lowbit.quantize_weight(torch.randn(16, 32), scheme)
    bad = qw["qweight"].clone()
    lane_mask = (0xFF if spec is A8 else 0xFFFF)
    word = int(bad[1, 2]) & 0xFFFFFFFF
    word = (word & ~lane_mask) | flip  # lane 0 of the word: every field t = ... with one invalid field
    bad[1, 2] = word - (1 << 32) if word >= 1 << 31 else word
    with pytest.raises(ValueError, match="not a ternary value"):
        QuantizedWeight(scheme, spec, (16, 32), {"qweight": bad, "gamma": qw["gamma"]})
    qw.tensors["qweight"] = bad  # edited after construction: the oracle refuses it too
    with pytest.raises(ValueError, match="not a ternary value"):
        ref.ternary.ternary_values(qw)


def test_bits_per_weight():
    w = torch.randn(64, 256)
    assert lowbit.quantize_weight(w, "ternary").bits_per_weight == pytest.approx(2 + 32 / w.numel())
    assert lowbit.quantize_weight(w, "ternary_a16").bits_per_weight == pytest.approx(2 + 32 / w.numel())
    assert lowbit.quantize_weight(w, "binary").bits_per_weight == pytest.approx(1 + 16 * (64 + 256) / w.numel())


# -- format version 1 -> this layout -----------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["ternary", "ternary_a16"])
def test_convert_legacy_ternary(scheme):
    w = torch.randn(19, 40)
    qw = lowbit.quantize_weight(w, scheme, per_channel=True)
    t = ref.ternary.ternary_values(qw)
    old = {"qweight": pack_codes(t + 1, 2), "gamma": qw["gamma"]}  # version 1: [ceil(K/16), N] along K
    new = ref.ternary.convert_legacy(old, qw.spec, qw.shape)
    assert torch.equal(new["qweight"], qw["qweight"]) and new["gamma"] is qw["gamma"]
    QuantizedWeight(qw.scheme, qw.spec, qw.shape, new)  # a valid weight of this version
    with pytest.raises(ValueError, match="version-1 ternary qweight must be int32"):
        ref.ternary.convert_legacy({"qweight": old["qweight"][:-1], "gamma": qw["gamma"]}, qw.spec, qw.shape)
    bad = old["qweight"].clone()
    bad[0, 0] |= 3
    with pytest.raises(ValueError, match="code 3"):
        ref.ternary.convert_legacy({"qweight": bad, "gamma": qw["gamma"]}, qw.spec, qw.shape)


def test_convert_legacy_binary():
    qw = lowbit.quantize_weight(torch.randn(21, 70), "binary")
    bits = ref.binary.unpack(qw["qweight"], qw.spec, qw.shape)
    old = {"qweight": pack_codes(bits, 1), "g": qw["g"], "h": qw["h"]}
    new = ref.binary.convert_legacy(old, qw.spec, qw.shape)
    assert torch.equal(new["qweight"], qw["qweight"])
    assert torch.equal(lowbit.dequantize(QuantizedWeight(qw.scheme, qw.spec, qw.shape, new)), lowbit.dequantize(qw))
    with pytest.raises(ValueError, match="version-1 binary qweight must be int32"):
        ref.binary.convert_legacy({**old, "qweight": old["qweight"].float()}, qw.spec, qw.shape)


def test_binary_g_is_normalized_exactly():
    """g is rescaled by a power of two into (1/2, 1] (h the other way), so x * g never exceeds |x|."""
    w = torch.randn(16, 64) * 300
    qw = lowbit.quantize_weight(w, "binary")
    gmax = float(qw["g"].float().max())
    assert 0.5 < gmax <= 1.0
    signs = ref.binary.signs(qw).double()
    assert torch.allclose(lowbit.dequantize(qw, torch.float64),
                          signs * torch.outer(qw["h"].double(), qw["g"].double()), rtol=0, atol=0)
