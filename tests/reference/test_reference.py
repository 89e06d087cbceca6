"""Reference oracle: packing round trips, quantizer error bounds, scheme-specific invariants."""

import pytest
import torch

import lowbit
from lowbit import reference as ref
from lowbit.formats import Scheme, code_block, packed_words, values_per_word
from lowbit.reference.nf4 import NF4_VALUES

ALL_SCHEMES = [s.value for s in Scheme]
UNIFORM = ["int1", "int2", "int3", "int4", "int8"]


def _opts(scheme):
    return {"group_size": 64} if scheme.startswith("int") or scheme == "nf4" else {}


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("k", [1, 9, 10, 31, 64, 383])
def test_pack_unpack_bit_exact(bits, k):
    g = torch.Generator().manual_seed(bits * 1000 + k)
    q = torch.randint(0, 2 ** bits, (37, k), generator=g)
    q[0] = 2 ** bits - 1  # all-ones codes exercise the sign bit of the word
    packed = ref.pack_codes(q, bits)
    assert packed.dtype == torch.int32 and packed.shape == (packed_words(k, bits), 37)
    assert torch.equal(ref.unpack_codes(packed, bits, k), q)


def test_three_bit_packs_32_codes_in_3_words():
    """Exactly 3.0 bits per code: code r < 30 of a block is pair J = r // 2, half h = r % 2, a 3-bit
    field of word J // 5 at bit 3 * (J % 5) + 16 * h; bit j of codes 30 and 31 sits in bits 15 and 31
    of word j."""
    assert code_block(3) == (32, 3) and packed_words(32, 3) == 3 and packed_words(33, 3) == 6
    with pytest.raises(ValueError, match="3 words"):
        values_per_word(3)
    q = torch.tensor([[(5 * i + 3) % 8 for i in range(64)]])
    packed = ref.pack_codes(q, 3)
    assert packed.shape == (6, 1)
    for b in range(2):
        words = [int(packed[3 * b + j, 0]) & 0xFFFFFFFF for j in range(3)]
        block = q[0, 32 * b:32 * b + 32].tolist()
        for r in range(30):
            pair, h = divmod(r, 2)
            assert (words[pair // 5] >> (3 * (pair % 5) + 16 * h)) & 7 == block[r], (b, r)
        assert sum(((words[j] >> 15) & 1) << j for j in range(3)) == block[30]
        assert sum(((words[j] >> 31) & 1) << j for j in range(3)) == block[31]


def test_three_bit_pads_the_last_block_with_zero_codes():
    q = torch.full((2, 40), 7)
    packed = ref.pack_codes(q, 3)
    assert packed.shape == (6, 2)
    full = ref.unpack_codes(packed, 3, 64)  # the padding codes read back as zeros
    assert torch.equal(full[:, :40], q) and not full[:, 40:].any()


def test_version1_three_bit_layout_reads_back():
    """unpack_codes_v1 reads format-version-1 files (10 codes per word, bits 30-31 unused)."""
    from lowbit.reference.packing import unpack_codes_v1

    q = torch.randint(0, 8, (5, 23), generator=torch.Generator().manual_seed(3))
    words = torch.zeros(5, 3, dtype=torch.int64)
    for i in range(23):
        words[:, i // 10] |= q[:, i] << (3 * (i % 10))
    old = words.to(torch.int32).t().contiguous()
    assert torch.equal(unpack_codes_v1(old, 23), q)
    with pytest.raises(ValueError, match="version-1"):
        unpack_codes_v1(old, 40)


def test_pack_rejects_out_of_range_codes():
    with pytest.raises(ValueError, match="out of range"):
        ref.pack_codes(torch.tensor([[4]]), 2)
    with pytest.raises(TypeError):
        ref.pack_codes(torch.zeros(2, 2), 2)


def _reencode(qw, w_hat):
    """Encode w_hat with qw's own stored metadata (an oracle independent of the quantizers)."""
    w_hat = w_hat.double()
    if qw.scheme.value.startswith("int") or qw.scheme.value == "nf4":
        g = qw.group_size
        meta = (qw["absmax"] if qw.scheme.value == "nf4" else qw["scales"]).t().double().repeat_interleave(g, 1)
        if qw.scheme.value == "nf4":
            table = torch.tensor(NF4_VALUES, dtype=torch.float64)
            return ((w_hat / meta).unsqueeze(-1) - table).abs().argmin(-1)
        z = (qw["zeros"].t().double().repeat_interleave(g, 1) if "zeros" in qw.tensors
             else torch.tensor(qw.spec.symmetric_zero, dtype=torch.float64))
        return torch.round(w_hat / meta + z).long()
    if "lut" in qw.tensors:
        dense = w_hat - ref.lut.sparse_part(qw)
        return (dense.unsqueeze(-1) - qw["lut"].double().unsqueeze(1)).abs().argmin(-1)
    if "gamma" in qw.tensors:
        gm = qw["gamma"].double()
        return torch.round(w_hat / (gm.unsqueeze(1) if qw.spec.per_channel else gm)).long() + 1
    return (w_hat >= 0).long()


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_every_scheme_round_trips(scheme):
    """Codes -> dequantize -> encode with the stored metadata gives back the same codes."""
    w = torch.randn(48, 128, dtype=torch.float32)
    qw = lowbit.quantize_weight(w, scheme, **_opts(scheme))
    w_hat = lowbit.dequantize(qw, torch.float64)
    assert w_hat.shape == w.shape and torch.isfinite(w_hat).all()
    codes = ref.weight_codes(qw)
    assert torch.equal(_reencode(qw, w_hat), codes)
    assert torch.equal(ref.pack_weight_codes(qw.scheme, qw.spec, codes), qw["qweight"])


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("symmetric", [False, True])
def test_uniform_rtn_error_at_most_half_step(bits, group_size, symmetric):
    w = torch.randn(40, 256) * torch.logspace(-2, 1, 40).unsqueeze(1)
    qw = lowbit.quantize_weight(w, f"int{bits}", group_size=group_size, symmetric=symmetric)
    g = 256 if group_size == -1 else group_size
    s = qw["scales"].t().float().repeat_interleave(g, dim=1)  # the stored fp16 step, per element
    err = (lowbit.dequantize(qw, torch.float64) - w.double()).abs()
    assert bool((err <= s.double() / 2 * (1 + 1e-6) + 1e-12).all()), f"max err/step {float((err / s).max()):.4f}"
    assert qw["scales"].dtype == torch.float16
    assert ("zeros" in qw.tensors) == (not symmetric)


def test_uniform_all_zero_group_is_exact():
    w = torch.zeros(4, 64)
    w[1, 3] = 0.5
    qw = lowbit.quantize_weight(w, "int4", group_size=32)
    assert torch.equal(lowbit.dequantize(qw)[0], torch.zeros(64))


def test_nf4_table_matches_the_normal_quantile_construction():
    """bitsandbytes' NF4: 8 positive and 7 negative normal quantiles plus 0, scaled to [-1, 1]."""
    offset = 0.9677083
    # bitsandbytes builds the probabilities with a float32 linspace, then takes normal quantiles
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float32)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float32)[:-1].double())
    vals = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    vals = vals / vals.abs().max()
    table = torch.tensor(NF4_VALUES, dtype=torch.float64)
    assert len(NF4_VALUES) == 16 and NF4_VALUES[7] == 0.0 and NF4_VALUES[0] == -1.0 and NF4_VALUES[15] == 1.0
    assert torch.allclose(table, vals, rtol=0, atol=1e-7)


def test_nf4_codes_are_nearest_table_entries():
    w = torch.randn(16, 128)
    qw = lowbit.quantize_weight(w, "nf4")
    codes = ref.unpack_codes(qw["qweight"], 4, 128)
    absmax = qw["absmax"].t().float().repeat_interleave(64, dim=1)
    normed = (w / absmax).unsqueeze(-1)
    best = (normed - torch.tensor(NF4_VALUES)).abs().argmin(-1)
    table = torch.tensor(NF4_VALUES)
    # equal distance ties may pick either neighbour; compare the distances, not the indices
    d_code = (normed.squeeze(-1) - table[codes]).abs()
    d_best = (normed.squeeze(-1) - table[best]).abs()
    assert torch.allclose(d_code, d_best, atol=1e-6)


@pytest.mark.parametrize("scheme,frac", [("sq3", 0.0045), ("sq4", 0.0045), ("sq3", 0.05), ("sq4", 0.1)])
def test_sparse_outliers_count_and_exact_reconstruction(scheme, frac):
    w = torch.randn(64, 200)
    w[3, 7] = 40.0
    qw = lowbit.quantize_weight(w, scheme, outlier_fraction=frac)
    nnz = qw["col_idx"].numel()
    assert nnz == round(frac * w.numel())
    rp = qw["row_ptr"].long()
    rows = torch.repeat_interleave(torch.arange(64), rp[1:] - rp[:-1])
    cols = qw["col_idx"].long()
    w_hat = lowbit.dequantize(qw, torch.float64)
    # each outlier is reproduced as exactly its fp16 value
    assert torch.equal(w_hat[rows, cols], w[rows, cols].half().double())
    # they are the largest-magnitude weights
    thresh = w.abs()[rows, cols].min()
    mask = torch.zeros_like(w, dtype=torch.bool)
    mask[rows, cols] = True
    assert bool((w.abs()[~mask] <= thresh).all())
    assert bool(mask[3, 7])


def test_lut_is_weighted_kmeans_and_deterministic():
    w = torch.randn(8, 256)
    sens = torch.rand(8, 256)
    a = lowbit.quantize_weight(w, "lut3", sensitivity=sens)
    b = lowbit.quantize_weight(w, "lut3", sensitivity=sens)
    assert torch.equal(a["lut"], b["lut"]) and torch.equal(a["qweight"], b["qweight"])
    # every code points at the nearest table entry of its row
    codes = ref.unpack_codes(a["qweight"], 3, 256)
    lut = a["lut"].double()
    dist = (w.double().unsqueeze(-1) - lut.unsqueeze(1)).abs()
    assert torch.allclose(dist.gather(2, codes.unsqueeze(-1)).squeeze(-1), dist.min(-1).values)
    # sensitivity moves the centroids: heavy weight on large |w| lowers their error
    heavy = (w.abs() > 1.5).double() * 100 + 1
    c = lowbit.quantize_weight(w, "lut3", sensitivity=heavy)
    err_heavy = ((lowbit.dequantize(c) - w).abs() * (w.abs() > 1.5)).sum()
    err_plain = ((lowbit.dequantize(lowbit.quantize_weight(w, "lut3")) - w).abs() * (w.abs() > 1.5)).sum()
    assert err_heavy < err_plain


@pytest.mark.parametrize("per_channel", [False, True])
def test_ternary_values_are_gamma_times_trits(per_channel):
    w = torch.randn(30, 96)
    qw = lowbit.quantize_weight(w, "ternary", per_channel=per_channel)
    gamma = qw["gamma"].double()
    expect_gamma = w.abs().mean(1).double() if per_channel else w.abs().mean().double().reshape(1)
    assert torch.allclose(gamma, expect_gamma, rtol=1e-6)
    w_hat = lowbit.dequantize(qw, torch.float64)
    trits = w_hat / (gamma.unsqueeze(1) if per_channel else gamma)
    assert bool(torch.isin(trits.round(), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)).all())
    assert torch.allclose(trits, trits.round(), atol=1e-12)
    assert torch.equal(trits.round(), (w.double() / (gamma.unsqueeze(1) if per_channel else gamma)).round().clamp(-1, 1))


def test_ternary_activation_quantization_matches_bitnet_formula():
    x = torch.randn(5, 64, dtype=torch.float16)
    x[2] = 0  # an all-zero row must not divide by zero
    xq, scale = ref.ternary.quantize_activations(x)
    amax = x.float().abs().amax(-1).clamp(min=1e-5)
    assert torch.equal(xq, torch.round(x.float() * (127.0 / amax).unsqueeze(-1)).clamp(-128, 127).to(torch.int8))
    assert torch.equal(xq[2], torch.zeros(64, dtype=torch.int8))
    qw = lowbit.quantize_weight(torch.randn(12, 64), "ternary")
    y = ref.linear(x, qw, out_dtype=torch.float64)
    assert torch.isfinite(y).all() and torch.equal(y[2], torch.zeros(12, dtype=torch.float64))


def test_ternary_rejects_code_three():
    qw = lowbit.quantize_weight(torch.randn(4, 32), "ternary")
    qw.tensors["qweight"] = torch.full_like(qw["qweight"], -1)  # every 2-bit field = 3
    with pytest.raises(ValueError, match="not a ternary value"):
        lowbit.dequantize(qw)


def test_binary_svid_rank_one_magnitudes():
    h0, g0 = torch.rand(20) + 0.5, torch.rand(64) + 0.5
    signs = torch.randint(0, 2, (20, 64)) * 2 - 1
    w = signs * torch.outer(h0, g0)
    qw = lowbit.quantize_weight(w, "binary")
    assert qw["g"].shape == (64,) and qw["h"].shape == (20,)
    # an exactly rank-1 |W| with known signs is reproduced up to fp16 storage of g and h
    assert torch.allclose(lowbit.dequantize(qw), w, rtol=2e-3)


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_reference_linear_equals_dequantized_matmul(scheme):
    w = torch.randn(24, 192)
    x = torch.randn(2, 3, 192, dtype=torch.float64)
    bias = torch.randn(24, dtype=torch.float64)
    qw = lowbit.quantize_weight(w, scheme, **_opts(scheme))
    y = ref.linear(x, qw, bias)
    assert y.shape == (2, 3, 24) and y.dtype == torch.float64
    if scheme == "ternary":  # A8: the activations are quantized first, per token
        xq, s = ref.ternary.quantize_activations(x)
        expect = (xq.double() / s.double().unsqueeze(-1)) @ lowbit.dequantize(qw, torch.float64).t() + bias
    else:
        expect = x @ lowbit.dequantize(qw, torch.float64).t() + bias
    assert torch.allclose(y, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_reference_linear_keeps_x_dtype(dtype):
    qw = lowbit.quantize_weight(torch.randn(8, 64), "int4", group_size=32)
    assert ref.linear(torch.randn(3, 64, dtype=dtype), qw).dtype == dtype


def test_bits_per_weight_counts_metadata():
    w = torch.randn(64, 256)
    assert lowbit.quantize_weight(w, "int4", group_size=128).bits_per_weight == pytest.approx(4 + 32 / 128)
    assert lowbit.quantize_weight(w, "int4", group_size=128, symmetric=True).bits_per_weight == pytest.approx(4 + 16 / 128)
    assert lowbit.quantize_weight(w, "nf4").bits_per_weight == pytest.approx(4 + 16 / 64)
    assert lowbit.quantize_weight(w, "ternary").bits_per_weight == pytest.approx(2 + 32 / w.numel())
    lut3 = lowbit.quantize_weight(w, "lut3")
    assert lut3.bits_per_weight == pytest.approx(3 + 8 * 16 / 256)  # exactly 3 bits per code


def test_quantize_does_not_mutate_input():
    w = torch.randn(16, 64)
    w0 = w.clone()
    for s in ALL_SCHEMES:
        lowbit.quantize_weight(w, s, **_opts(s))
    assert torch.equal(w, w0)


def test_to_moves_every_tensor():
    qw = lowbit.quantize_weight(torch.randn(16, 64), "sq3")
    moved = qw.to("cpu")
    assert moved is not qw and set(moved.tensors) == set(qw.tensors)
    assert all(t.device.type == "cpu" for t in moved.tensors.values())


@pytest.mark.parametrize("scheme,bound", [("int4", 0.12), ("int8", 0.008), ("int2", 0.5)])
@pytest.mark.parametrize("std", [1e-5, 1e-4, 1e-3], ids=["std1e-5", "std1e-4", "std1e-3"])
def test_tiny_weights_keep_their_precision(scheme, bound, std):
    """Scales below fp16's normal range are stored in fp32 rather than clamped up (which lost std-1e-5
    weights entirely: relative error 0.996). The bounds are the same scheme's error on std-1 weights plus
    a margin: round-to-nearest error does not depend on the weights' scale."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    unit = lowbit.quantize_weight(w, scheme, group_size=64)
    qw = lowbit.quantize_weight(w * std, scheme, group_size=64)
    err = float((lowbit.dequantize(qw, torch.float64) - w.double() * std).norm() / (w.double() * std).norm())
    unit_err = float((lowbit.dequantize(unit, torch.float64) - w.double()).norm() / w.double().norm())
    assert err <= bound and err <= 1.05 * unit_err + 1e-3, (err, unit_err)
    if std * 4 < 2 ** -14 * 2 ** lowbit.formats.code_bits(scheme):  # the groups' scales fall below fp16's range
        assert qw["scales"].dtype == torch.float32
