"""The low-rank correction (LQER) in the quantizer, the container and the reference: W ~= W_hat + A B."""
import pytest
import torch

import lowbit
from lowbit import reference as ref
from lowbit.formats import QuantizedWeight, Scheme

N, K = 40, 96
# one option set per scheme, small enough for a fast k-means
OPTIONS = {s: {} for s in Scheme}
OPTIONS.update({Scheme.INT1: {"group_size": 32}, Scheme.INT2: {"group_size": 32}, Scheme.INT3: {"group_size": 32},
                Scheme.INT4: {"group_size": 32}, Scheme.INT8: {"group_size": 32}, Scheme.NF4: {"group_size": 32},
                Scheme.LUT3: {"iters": 2}, Scheme.LUT4: {"iters": 2}, Scheme.SQ3: {"iters": 2},
                Scheme.SQ4: {"iters": 2}})
SCHEMES = [pytest.param(s, id=s.value) for s in Scheme]


def _w(n=N, k=K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g)


def _best_rank_r(e: torch.Tensor, r: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(e.double(), full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_factors_are_the_truncated_svd_of_the_error(scheme):
    w = _w()
    base = lowbit.quantize_weight(w, scheme, **OPTIONS[scheme])
    qw = lowbit.quantize_weight(w, scheme, lowrank=8, **OPTIONS[scheme])
    assert qw.lowrank == 8 and base.lowrank == 0
    assert qw["lowrank_a"].shape == (N, 8) and qw["lowrank_b"].shape == (8, K)
    assert qw["lowrank_a"].dtype == qw["lowrank_b"].dtype == torch.float16
    for name, t in base.tensors.items():  # the scheme's own tensors do not change
        assert torch.equal(qw[name], t), name
    w_hat = ref.dequantize(base, torch.float64)
    want = _best_rank_r(w.double() - w_hat, 8)
    got = ref.lowrank.product(qw)
    assert float((got - want).norm() / want.norm()) < 2e-3  # fp16 storage of the factors
    # dequantize is W_hat + A B, and the correction lowers the error
    assert torch.allclose(ref.dequantize(qw, torch.float64), w_hat + got, rtol=0, atol=1e-12)
    err0 = float((w_hat - w.double()).norm())
    err1 = float((ref.dequantize(qw, torch.float64) - w.double()).norm())
    assert err1 < err0


def test_bits_per_weight_counts_the_factors():
    w = _w()
    base = lowbit.quantize_weight(w, "int4", group_size=32)
    qw = lowbit.quantize_weight(w, "int4", group_size=32, lowrank=5)
    assert qw.bits_per_weight == pytest.approx(base.bits_per_weight + 16 * 5 * (N + K) / (N * K))
    assert "lowrank=5" in repr(qw)


def test_activation_aware_factors_minimise_the_weighted_error():
    """With act_scale s, A B is the best rank-r approximation of E in the diag(s)-weighted norm."""
    w = _w()
    s = torch.rand(K, generator=torch.Generator().manual_seed(1)) * 10 + 0.05
    base = lowbit.quantize_weight(w, "int3", group_size=32)
    plain = lowbit.quantize_weight(w, "int3", group_size=32, lowrank=6)
    aware = lowbit.quantize_weight(w, "int3", group_size=32, lowrank=6, act_scale=s)
    e = w.double() - ref.dequantize(base, torch.float64)
    s64 = s.double()
    want = _best_rank_r(e * s64, 6) / s64
    got = ref.lowrank.product(aware)
    assert float(((got - want) * s64).norm() / (want * s64).norm()) < 2e-3

    def weighted(qw):
        return float(((w.double() - ref.dequantize(qw, torch.float64)) * s64).norm())

    assert weighted(aware) < weighted(plain)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # any float dtype is accepted
        q = lowbit.quantize_weight(w, "int3", group_size=32, lowrank=6, act_scale=s.to(dtype))
        assert q.lowrank == 6


def test_reference_linear_adds_x_bt_at():
    w = _w()
    for scheme in ("int3", "ternary", "lut3"):
        qw = lowbit.quantize_weight(w, scheme, lowrank=4, **OPTIONS[Scheme(scheme)])
        base = QuantizedWeight(qw.scheme, qw.spec, qw.shape,
                               {k: v for k, v in qw.tensors.items() if not k.startswith("lowrank_")})
        x = torch.randn(3, 5, K, dtype=torch.float64)
        bias = torch.randn(N)
        a, b = qw["lowrank_a"].double(), qw["lowrank_b"].double()
        want = ref.linear(x, base, bias, out_dtype=torch.float64) + (x @ b.t()) @ a.t()
        got = ref.linear(x, qw, bias, out_dtype=torch.float64)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), scheme
        assert float((got - ref.linear(x, base, bias, out_dtype=torch.float64)).abs().max()) > 1e-3


def test_tiny_weights_keep_fp32_factors():
    """fp16 would flush the factors of 1e-10-scale weights into subnormals: they are stored in fp32 then."""
    for scale, dtype, tol in ((1e-10, torch.float32, 1e-6), (1e-6, torch.float16, 1e-3), (1.0, torch.float16, 1e-3)):
        w = _w() * scale
        qw = lowbit.quantize_weight(w, "int2", group_size=32, lowrank=4)
        assert qw["lowrank_a"].dtype == qw["lowrank_b"].dtype == dtype, scale
        base = lowbit.quantize_weight(w, "int2", group_size=32)
        want = _best_rank_r(w.double() - ref.dequantize(base, torch.float64), 4)
        assert float((ref.lowrank.product(qw) - want).norm() / want.norm()) < tol, scale


def test_empty_weight_with_lowrank():
    qw = QuantizedWeight.empty("int4", (64, 256), lowrank=16)
    assert qw.lowrank == 16 and qw["lowrank_a"].shape == (64, 16) and qw["lowrank_b"].shape == (16, 256)
    assert qw["lowrank_a"].device.type == "meta"
    assert QuantizedWeight.empty("int4", (64, 256)).lowrank == 0


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank,exc,match", [
    pytest.param(-1, ValueError, "lowrank must be >= 0", id="negative"),
    pytest.param(N, ValueError, r"below min\(N, K\) = 40", id="equal-min"),
    pytest.param(K + 5, ValueError, r"below min\(N, K\)", id="above-min"),
    pytest.param(4.0, TypeError, "lowrank must be an int", id="float"),
    pytest.param("8", TypeError, "lowrank must be an int", id="str"),
    pytest.param(True, TypeError, "lowrank must be an int", id="bool"),
])
def test_bad_rank(rank, exc, match):
    with pytest.raises(exc, match=match):
        lowbit.quantize_weight(_w(), "int4", group_size=32, lowrank=rank)


@pytest.mark.parametrize("scale,exc,match", [
    pytest.param(torch.rand(K - 1) + 0.1, ValueError, r"shape \[K\] = \[96\]", id="short"),
    pytest.param(torch.rand(1, K) + 0.1, ValueError, r"shape \[K\] = \[96\]", id="2-D"),
    pytest.param(torch.ones(K, dtype=torch.int32), TypeError, "floating point", id="int"),
    pytest.param(torch.ones(K, dtype=torch.bool), TypeError, "floating point", id="bool"),
    pytest.param(-(torch.rand(K) + 0.1), ValueError, "must be positive", id="negative"),
    pytest.param(torch.zeros(K), ValueError, "must be positive", id="zero"),
    pytest.param(torch.full((K,), float("nan")), ValueError, "NaN or Inf", id="nan"),
    pytest.param(torch.full((K,), float("inf")), ValueError, "NaN or Inf", id="inf"),
    pytest.param([1.0] * K, TypeError, "act_scale must be a torch.Tensor", id="list"),
    pytest.param(torch.empty(K, device="meta"), ValueError, "meta device", id="meta"),
])
def test_bad_act_scale(scale, exc, match):
    with pytest.raises(exc, match=match):
        lowbit.quantize_weight(_w(), "int4", group_size=32, lowrank=4, act_scale=scale)


def test_one_bad_channel_is_named():
    s = torch.rand(K) + 0.1
    s[7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lowbit.quantize_weight(_w(), "nf4", group_size=32, lowrank=4, act_scale=s)
    s[7] = -1.0
    with pytest.raises(ValueError, match="positive"):
        lowbit.quantize_weight(_w(), "nf4", group_size=32, lowrank=4, act_scale=s)


def test_act_scale_without_rank():
    with pytest.raises(ValueError, match="pass lowrank=r > 0"):
        lowbit.quantize_weight(_w(), "int4", group_size=32, act_scale=torch.ones(K))


@pytest.mark.parametrize("edit,exc,match", [
    pytest.param(lambda t: t.pop("lowrank_b"), ValueError, r"missing tensors \['lowrank_b'\]", id="only-a"),
    pytest.param(lambda t: t.pop("lowrank_a"), ValueError, r"missing tensors \['lowrank_a'\]", id="only-b"),
    pytest.param(lambda t: t.update(lowrank_b=t["lowrank_b"][:3]), ValueError, "'lowrank_b' has shape",
                 id="rank-mismatch"),
    pytest.param(lambda t: t.update(lowrank_a=t["lowrank_a"][:-1]), ValueError, "'lowrank_a' has shape",
                 id="short-a"),
    pytest.param(lambda t: t.update(lowrank_b=t["lowrank_b"][:, :-1]), ValueError, "'lowrank_b' has shape",
                 id="short-b"),
    pytest.param(lambda t: t.update(lowrank_a=t["lowrank_a"].float()), TypeError, "differ in dtype",
                 id="mixed-dtypes"),
    pytest.param(lambda t: t.update(lowrank_a=t["lowrank_a"].double(), lowrank_b=t["lowrank_b"].double()),
                 TypeError, "'lowrank_a' has dtype", id="fp64"),
    pytest.param(lambda t: t.update(lowrank_a=t["lowrank_a"][:, :0], lowrank_b=t["lowrank_b"][:0]), ValueError,
                 "rank 0", id="rank-0"),
    pytest.param(lambda t: t.update(lowrank_a=t["lowrank_a"].flatten()), ValueError, "must be 2-D", id="1-D"),
])
def test_edited_factors_give_a_clear_error(edit, exc, match):
    qw = lowbit.quantize_weight(_w(), "int4", group_size=32, lowrank=4)
    edit(qw.tensors)
    with pytest.raises(exc, match=match):
        lowbit.dequantize(qw)
    with pytest.raises(exc, match=match):
        ref.linear(torch.randn(2, K), qw)
    with pytest.raises(exc, match=match):
        QuantizedWeight(qw.scheme, qw.spec, qw.shape, qw.tensors)


def test_with_lowrank_matches_quantize_weight_and_replaces_a_term():
    w = _w()
    s = torch.rand(K) + 0.5
    base = lowbit.quantize_weight(w, "nf4", group_size=32)
    direct = lowbit.quantize_weight(w, "nf4", group_size=32, lowrank=5, act_scale=s)
    added = ref.with_lowrank(base, w, 5, act_scale=s)
    assert set(added.tensors) == set(direct.tensors)
    for name, t in direct.tensors.items():
        assert torch.equal(added[name], t), name
    again = ref.with_lowrank(added, w, 3)  # replaces the rank-5 term
    assert again.lowrank == 3 and torch.equal(again["lowrank_a"], lowbit.quantize_weight(
        w, "nf4", group_size=32, lowrank=3)["lowrank_a"])
    assert ref.with_lowrank(added, w, 0).lowrank == 0
    assert added.lowrank == 5  # the input is not modified
    with pytest.raises(ValueError, match="w has shape"):
        ref.with_lowrank(base, w[:, :64], 4)
    with pytest.raises(ValueError, match="below min"):
        ref.with_lowrank(base, w, N)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        ref.with_lowrank(w, w, 4)
    with pytest.raises(ValueError, match="pass rank > 0"):
        ref.with_lowrank(base, w, 0, act_scale=s)
