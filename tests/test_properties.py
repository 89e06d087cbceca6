"""Property tests over every scheme and both kernel paths (hypothesis).

Each example draws a scheme, a path, an activation dtype, ragged shapes allowed by the scheme, a group
size, strides (transposed or sliced x, a sliced bias), magnitudes (tiny, unit, large, all zeros) and
possibly one NaN or Inf in x, or a bad argument. Exactly one of two things may happen:

(a) lowbit.linear matches lowbit.reference.linear: non-finite exactly where the reference is
    non-finite (NaN where it is NaN; the same infinity where it has one, except that schemes whose
    kernels sum in split form may turn that infinity into NaN, see SPLIT_SUMS), and elsewhere a relative error (max-abs over max-abs of the reference) within the
    dtype's bound: fp16 4e-3 (output rounding 2^-11 plus fp16 dequantisation in the GEMMs, the largest
    family bound being 3e-3), bf16 3e-2, fp32 3e-4 (fp32 sums in another order);
(b) both raise ValueError or TypeError (the same decision).

Profiles: "ci" (the default: a fixed seed, few examples, bounded cost on 2 cores) and "dev" (many more
examples, for a local run: HYPOTHESIS_PROFILE=dev pytest tests/test_properties.py). Every failure hypothesis
finds is kept as a plain regression test next to the kernel it concerns (the uniform GEMV's inf rule:
tests/kernels/uniform/test_uniform_kernels.py::test_gemv_non_finite_x_gives_a_non_finite_row_only).
"""
import os

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import lowbit
from helpers import INTERPRET
from lowbit.formats import Scheme

settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=1500, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICE = "cpu" if INTERPRET else "cuda"
# bf16 tl.dot is wrong under the interpreter (GPU only there)
DTYPES = [torch.float16, torch.float32] if INTERPRET else [torch.float16, torch.bfloat16, torch.float32]
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 3e-4}
GROUPED = {Scheme.INT1, Scheme.INT2, Scheme.INT3, Scheme.INT4, Scheme.INT8, Scheme.NF4}
# Kernels that add two partial sums where the reference multiplies by one merged weight: SqueezeLLM's
# dense and sparse parts, and the sign masks' sum(x) correction (binary and ternary_a16 at fp16/bf16).
# An infinite activation meets both halves, inf - inf gives NaN, so a row the reference makes +-inf may
# come out NaN. Still non-finite, never a finite wrong number; the README states it.
SPLIT_SUMS = {Scheme.SQ3, Scheme.SQ4, Scheme.BINARY, Scheme.TERNARY_A16}
# The uniform tensor-core GEMV (M <= 16, fp16/bf16 x, not bf16 int8) sums q * x and removes the zero point
# with z * sum(x) after the loop: with x = +-inf, a code q = 0 gives 0 * inf = NaN and the zero term
# inf - inf, where the reference's (q - z) * s * inf is +-inf (found by the dev profile: int2 g32, N = 1,
# K = 32, one inf in x; tests/kernels/uniform keeps that case as a plain regression test).
UNIFORM_GEMV_SPLIT = {Scheme.INT1, Scheme.INT2, Scheme.INT3, Scheme.INT4, Scheme.INT8}


def _split_sums(p) -> bool:
    """Whether this problem's kernel may turn a reference infinity into NaN (see SPLIT_SUMS)."""
    if p["scheme"] in SPLIT_SUMS:
        return True
    return (p["scheme"] in UNIFORM_GEMV_SPLIT and p["path"] == "gemv" and p["dtype"] != torch.float32
            and not (p["scheme"] is Scheme.INT8 and p["dtype"] == torch.bfloat16))
MAGNITUDE = {"tiny": 1e-4, "unit": 1.0, "large": 30.0, "zeros": 0.0}


@st.composite
def problems(draw):
    scheme = draw(st.sampled_from(list(Scheme)))
    opts = {}
    if scheme in GROUPED:
        gs = draw(st.sampled_from([32, 64, 128, -1]))
        opts["group_size"] = gs
        k = draw(st.integers(1, 3)) * (64 if gs == -1 else gs)
        if gs == -1:
            k = draw(st.integers(8, 200))
        if scheme is not Scheme.NF4 and draw(st.booleans()):
            opts["symmetric"] = True
    else:
        k = draw(st.integers(8, 200))
    if scheme.value.startswith(("lut", "sq")):
        opts["iters"] = 2
    if scheme in (Scheme.TERNARY, Scheme.TERNARY_A16) and draw(st.booleans()):
        opts["per_channel"] = True
    return dict(scheme=scheme, opts=opts, n=draw(st.integers(1, 70)), k=k, m=draw(st.integers(1, 40)),
                path=draw(st.sampled_from(["gemv", "gemm"])), dtype=draw(st.sampled_from(DTYPES)),
                w_mag=draw(st.sampled_from(["tiny", "unit", "large"])),
                x_mag=draw(st.sampled_from(list(MAGNITUDE))),
                layout=draw(st.sampled_from(["contiguous", "transposed", "sliced"])),
                bias=draw(st.sampled_from(["none", "contiguous", "sliced"])),
                poison=draw(st.sampled_from(["none", "none", "nan", "inf", "-inf"])), poison_row=draw(st.integers(0, 39)),
                bad=draw(st.sampled_from(["none"] * 6 + ["k", "int-x", "bias-shape", "bias-int", "device"])),
                seed=draw(st.integers(0, 2 ** 16)))


def _x(p, gen):
    m, k, dtype = p["m"], p["k"], p["dtype"]
    x = torch.randn(m, k, generator=gen) * MAGNITUDE[p["x_mag"]]
    if p["poison"] != "none":
        x[p["poison_row"] % m, k // 2] = float(p["poison"])
    x = x.to(dtype)
    if p["layout"] == "transposed":
        x = x.t().contiguous().t()  # K not unit stride
    elif p["layout"] == "sliced":
        x = torch.cat([x, x], dim=1)[:, ::2] if k > 1 else x  # strided view of the same values
    return x.to(DEVICE)


def _bias(p, gen):
    if p["bias"] == "none":
        return None
    b = torch.randn(p["n"] * 2, generator=gen).to(p["dtype"])
    return (b[: p["n"]] if p["bias"] == "contiguous" else b[::2]).to(DEVICE)


def _compare(name, want, got, tol, split_sums=False):
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype)
    w, g = want.double().cpu(), got.double().cpu()
    assert torch.equal(torch.isfinite(g), torch.isfinite(w)), f"{name}: non-finite where the reference is not"
    nan = torch.isnan(w)
    assert bool(torch.isnan(g[nan]).all()), f"{name}: the reference has NaN, the kernels a number"
    inf = torch.isinf(w)
    same = g[inf] == w[inf]
    if split_sums:
        same |= torch.isnan(g[inf])
    assert bool(same.all()), f"{name}: infinities differ"
    fin = ~(nan | inf)
    if fin.any():
        scale = w[fin].abs().max()
        err = float((g[fin] - w[fin]).abs().max() / scale) if scale > 0 else float(g[fin].abs().max())
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def check_problem(p):
    gen = torch.Generator().manual_seed(p["seed"])
    w = torch.randn(p["n"], p["k"], generator=gen) * {"tiny": 1e-4, "unit": 1.0, "large": 30.0}[p["w_mag"]]
    qw = lowbit.quantize_weight(w, p["scheme"], **p["opts"]).to(DEVICE)
    x, bias = _x(p, gen), _bias(p, gen)
    if p["bad"] == "k":
        x = torch.randn(p["m"], p["k"] + 1, device=DEVICE).to(p["dtype"])
    elif p["bad"] == "int-x":
        x = x.to(torch.int32)
    elif p["bad"] == "bias-shape":
        bias = torch.randn(p["n"] + 1, device=DEVICE)
    elif p["bad"] == "bias-int":
        bias = torch.zeros(p["n"], dtype=torch.int32, device=DEVICE)
    elif p["bad"] == "device":
        x = torch.empty(x.shape, dtype=x.dtype, device="meta")
    name = (f"{p['scheme'].value} {p['opts']} N={p['n']} K={p['k']} M={p['m']} {p['path']} {p['dtype']} "
            f"x:{p['x_mag']}/{p['layout']}/{p['poison']} w:{p['w_mag']} bias:{p['bias']} bad:{p['bad']}")
    ref_err = got_err = None
    try:
        want = lowbit.reference.linear(x, qw, bias)
    except (ValueError, TypeError) as e:
        ref_err = e
    try:
        got = lowbit.linear(x, qw, bias, path=p["path"])
    except (ValueError, TypeError) as e:
        got_err = e
    assert (ref_err is None) == (got_err is None), f"{name}: reference raised {ref_err!r}, kernels {got_err!r}"
    if ref_err is None:
        _compare(name, want, got, TOL[p["dtype"]], split_sums=_split_sums(p))


@given(problems())
def test_kernels_agree_with_the_reference_or_both_refuse(p):
    try:
        check_problem(p)
    except ValueError as e:
        # weights too large for fp16 metadata are refused by the quantizer, before any kernel runs
        assume("too large for fp16" not in str(e))
        raise
