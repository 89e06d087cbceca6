"""No silent wrong answers in the sign family: NaN/Inf propagation on every path, per-call re-checks of
edited weight tensors and bias, the W1.58A8 K limit, and an exact emulation of the inline PTX that the
fp16 mask path runs on a GPU (the interpreter runs its pure-Triton twin).

The rule for non-finite activations (lowbit.reference.ternary): a W1.58A8 token that holds a NaN or an
infinity has scale NaN and x_q = 0, so its output row is NaN. W1.58A16 and binary multiply x as given:
the reference row is then NaN or +-inf in every column; the kernels' rows are non-finite in every column
too, with NaN in place of +-inf on the fp16 mask path (its offset correction computes inf - inf).
"""

import numpy as np
import pytest
import torch

import lowbit
from lowbit import reference as ref
from lowbit.formats import QuantizedWeight
from lowbit.kernels import KernelPath, sign
from lowbit.nn import QuantLinear

from helpers import INTERPRET, assert_close, nan_out

FAM = sign.FAMILY
N, K = 200, 384
GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM
SCHEMES = ["ternary", "ternary_a16", "binary"]
DTYPES = [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float32, id="fp32")]
TOL = {torch.float16: 1e-3, torch.bfloat16: 1.5e-2 if INTERPRET else 8e-3, torch.float32: 3e-5}


def _weight(scheme, per_channel=False):
    opts = {} if scheme == "binary" else {"per_channel": per_channel}
    return lowbit.quantize_weight(torch.randn(N, K), scheme, **opts)


def _bad_rows(m, dtype, device):
    """x [m, K] with a NaN in row 1, +inf in row 2 and -inf in row m - 1; the other rows are finite."""
    x = torch.randn(m, K)
    x[1, 5] = float("nan")
    x[2, 100] = float("inf")
    x[m - 1, K - 1] = float("-inf")
    return x.to(dtype).to(device)


# -- NaN and Inf -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path,m", [pytest.param(GEMV, 4, id="gemv"), pytest.param(GEMM, 33, id="gemm")])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_non_finite_rows_propagate(device, scheme, path, m, dtype):
    qw = _weight(scheme, per_channel=True).to(device)
    x = _bad_rows(m, dtype, device)
    bias = torch.randn(N).to(dtype).to(device)
    cfg = FAM.default_config(x, path, m, qw)
    out = FAM.launch(x, qw, bias, path, cfg, nan_out((m, N), dtype, device)).cpu().double()
    want = ref.linear(x, qw, bias, out_dtype=torch.float64).cpu()
    bad = torch.zeros(m, dtype=torch.bool)
    bad[[1, 2, m - 1]] = True
    assert bool(torch.isfinite(out[~bad]).all()), "a finite row came out non-finite"
    assert_close(f"{scheme} {path.value} finite rows", want[~bad], out[~bad], TOL[dtype])
    assert bool(torch.isnan(want[1]).all()) and bool(torch.isnan(out[1]).all()), "a NaN row must be all NaN"
    for r in (2, m - 1):
        assert not bool(torch.isfinite(want[r]).any())
        assert not bool(torch.isfinite(out[r]).any()), f"row {r} holds an infinity but came out finite"
    if scheme == "ternary":  # the per-token rule: NaN scale, the whole row NaN
        assert bool(torch.isnan(out[bad]).all())
    elif not sign.configs.kind_of(qw).masks(dtype):  # decoded fields: IEEE products, the reference's values
        assert torch.equal(torch.isnan(out), torch.isnan(want))
        assert torch.equal(out[torch.isinf(want)], want[torch.isinf(want)])


def test_quantizer_non_finite_rule(device):
    """NaN, +inf and -inf tokens: scale NaN, x_q = 0, like the reference; other tokens bit-exact."""
    x = _bad_rows(5, torch.float16, device)
    xq, scale = sign.quantize_activations(x)
    rq, rs = ref.ternary.quantize_activations(x)
    assert torch.equal(xq.cpu(), rq.cpu())
    assert torch.equal(torch.isnan(scale).cpu(), torch.isnan(rs).cpu())
    assert torch.isnan(scale[[1, 2, 4]]).all() and not torch.isnan(scale[[0, 3]]).any()
    assert torch.equal(scale[[0, 3]].cpu(), rs[[0, 3]].cpu())
    assert bool((xq[[1, 2, 4]] == 0).all())
    two_pass_q, two_pass_s = sign.quantize_activations(x, max_block=128)  # rows longer than the tile
    assert torch.equal(two_pass_q, xq) and torch.equal(torch.isnan(two_pass_s), torch.isnan(scale))


# -- re-checks at every call ------------------------------------------------------------------------

def _edited(qw, **tensors):
    """The same weight with some tensors replaced, bypassing construction (as an edit after it would)."""
    return QuantizedWeight.unchecked(qw.scheme, qw.spec, qw.shape, {**qw.tensors, **tensors})


def _strided_copy(t: torch.Tensor) -> torch.Tensor:
    """A non-contiguous tensor equal to t (every other element of a twice-as-long last dimension)."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


@pytest.mark.parametrize("scheme", SCHEMES)
def test_shorter_or_retyped_tensors_raise(device, scheme):
    qw = _weight(scheme, per_channel=True).to(device)
    x = torch.randn(3, K, device=device)
    with pytest.raises(ValueError, match=r"tensor 'qweight' has shape"):
        lowbit.linear(x, _edited(qw, qweight=qw["qweight"][:-1]))
    with pytest.raises(ValueError, match=r"tensor 'qweight' has shape"):
        lowbit.linear(x, _edited(qw, qweight=qw["qweight"][:, :-4]))
    with pytest.raises(TypeError, match=r"tensor 'qweight' has dtype"):
        lowbit.linear(x, _edited(qw, qweight=qw["qweight"].to(torch.int64)))
    scale = "h" if scheme == "binary" else "gamma"
    with pytest.raises(ValueError, match=rf"tensor '{scale}' has shape"):
        lowbit.linear(x, _edited(qw, **{scale: qw[scale][:-1]}))
    if scheme == "binary":
        with pytest.raises(ValueError, match=r"tensor 'g' has shape"):
            lowbit.linear(x, _edited(qw, g=qw["g"][:-1]))
    edited = _edited(qw)
    del edited.tensors[scale]
    with pytest.raises(ValueError, match="missing tensors"):
        lowbit.linear(x, edited)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_strided_tensors_and_bias_give_the_same_output(device, scheme):
    """Non-contiguous weight tensors and bias are copied to contiguous ones: the output is bit-identical."""
    qw = _weight(scheme, per_channel=True).to(device)
    x = torch.randn(3, K, device=device)
    bias = torch.randn(N, device=device)
    want = lowbit.linear(x, qw, bias)
    strided = {name: _strided_copy(t) for name, t in qw.tensors.items()}
    assert torch.equal(lowbit.linear(x, _edited(qw, **strided), bias), want)
    assert torch.equal(lowbit.linear(x, qw, _strided_copy(bias)), want)
    for path in (GEMV, GEMM):  # the explicit-config entry point as well
        cfg = FAM.default_config(x, path, 3, qw)
        a = FAM.launch(x, _edited(qw, **strided), _strided_copy(bias), path, cfg, nan_out((3, N), x.dtype, device))
        b = FAM.launch(x, qw, bias, path, cfg, nan_out((3, N), x.dtype, device))
        assert torch.equal(a, b)


@pytest.mark.parametrize("scheme", ["ternary", "ternary_a16"])
def test_code_three_edited_in(device, scheme):
    """Codes are checked where it is cheap (construction, validate, state-dict loads); the forward cannot read
    values without a host sync. An invalid code edited in afterwards changes numbers, never addresses:
    the kernels stay in bounds and the output stays finite."""
    qw = _weight(scheme).to(device)
    bad = qw["qweight"].clone()
    bad[0, :] = -1  # every field 0b11: code 3 in the low fields
    edited = _edited(qw, qweight=bad)
    with pytest.raises(ValueError, match="not a ternary value"):
        edited.validate()
    y = lowbit.linear(torch.randn(2, K, device=device), edited)
    assert bool(torch.isfinite(y).all())


def test_quant_linear_rechecks_edited_buffers(device):
    lin = QuantLinear(_weight("ternary").to(device))
    x = torch.randn(2, K, device=device)
    lin.qweight = lin.qweight[:-1]
    with pytest.raises(ValueError, match=r"tensor 'qweight' has shape"):
        lin(x)


def test_a8_k_limit():
    """int32 accumulation of W1.58A8 lanes stays exact below K = 2^17; larger K is refused, not wrapped."""
    qw = lowbit.quantize_weight(torch.randn(4, 2 ** 17), "ternary")
    with pytest.raises(ValueError, match="W1.58A8 kernels take K < 131072"):
        lowbit.linear(torch.randn(1, 2 ** 17), qw)


# -- the inline PTX of the fp16 mask path, emulated bit for bit -----------------------------------------

def _emulate(asm: str, *args: np.ndarray) -> np.ndarray:
    """Run the few PTX statements the mask path uses (and/or/shr on .b32 and lop3.b32, immediates or $n
    operands, scratch registers) on uint32 arrays."""
    regs = {f"${i + 1}": a.astype(np.uint32) for i, a in enumerate(args)}
    body = asm.strip().removeprefix("{").removesuffix("}")
    for stmt in filter(None, (s.strip() for s in body.split(";"))):
        if stmt.startswith(".reg"):
            continue
        op, rest = stmt.split(None, 1)
        dst, *srcs = [t.strip() for t in rest.split(",")]

        def val(v):
            return regs[v] if v in regs else np.uint32(int(v, 0))

        if op == "lop3.b32":
            a, b, c, lut = val(srcs[0]), val(srcs[1]), val(srcs[2]), int(srcs[3], 0)
            out = np.zeros_like(a)
            for bit in range(8):  # LUT bit i is f(a, b, c) for the i-th combination of (a, b, c) = (0xF0, 0xCC, 0xAA)
                if lut >> bit & 1:
                    sel_a = a if bit & 4 else ~a
                    sel_b = b if bit & 2 else ~b
                    sel_c = c if bit & 1 else ~c
                    out |= sel_a & sel_b & sel_c
            regs[dst] = out.astype(np.uint32)
            continue
        assert op in ("and.b32", "or.b32", "shr.b32") and len(srcs) == 2, f"unexpected PTX statement {stmt!r}"
        x, y = val(srcs[0]), val(srcs[1])
        regs[dst] = {"and.b32": lambda: x & y, "or.b32": lambda: x | y, "shr.b32": lambda: x >> y}[op]()
        regs[dst] = regs[dst].astype(np.uint32)
    return regs["$0"]


def _pairs():
    """Every 16-bit lane value, in the low and in the high half of a 32-bit register, next to random partners."""
    rng = np.random.default_rng(0)
    v = np.arange(65536, dtype=np.uint32)
    partner = rng.integers(0, 65536, size=65536, dtype=np.uint32)
    return v, partner, v | (partner << 16), partner | (v << 16)


def _halves(word):
    return word & 0xFFFF, word >> 16


def test_asm_and16_equals_the_twin():
    """``and.b32`` on a packed pair with the mask in both halves = the twin's 16-bit AND on each lane."""
    v, partner, lo_word, hi_word = _pairs()
    for mask in [3 << 2 * f for f in range(5)] + [0x000C, 0x0030, 0xC000] + [1 << f for f in range(10)]:
        m = np.full_like(v, mask | (mask << 16))
        lo, hi = _halves(_emulate(sign.configs.ASM_AND16.value, lo_word, m))
        assert np.array_equal(lo, v & mask) and np.array_equal(hi, partner & mask), hex(mask)
        lo, hi = _halves(_emulate(sign.configs.ASM_AND16.value, hi_word, m))
        assert np.array_equal(hi, v & mask) and np.array_equal(lo, partner & mask), hex(mask)


@pytest.mark.parametrize("mask,magic", [pytest.param(0x0003, 0x4300, id="bf16-low"),
                                        pytest.param(0x0030, 0x4300, id="bf16-field2"),
                                        pytest.param(0x0040, 0x4300, id="bf16-bit6"),
                                        pytest.param(0x8000, 0x3C00, id="fp16-sign"),
                                        pytest.param(0x8000, 0x3F80, id="bf16-sign")])
def test_asm_and_or16_equals_the_twin(mask, magic):
    """``lop3.b32`` with LUT 0xEA is (a & b) | c: the twin's (lane & mask) | magic on each lane."""
    v, partner, lo_word, _ = _pairs()
    m = np.full_like(v, mask | (mask << 16))
    g = np.full_like(v, magic | (magic << 16))
    lo, hi = _halves(_emulate(sign.configs.ASM_AND_OR16.value, lo_word, m, g))
    assert np.array_equal(lo, (v & mask) | magic) and np.array_equal(hi, (partner & mask) | magic)


@pytest.mark.parametrize("asm,shift,masks", [
    pytest.param("ASM_SHR8", 8, (0x000C, 0x0030, 0x0040), id="shr8"),
    pytest.param("ASM_SHR10", 10, (0x01, 0x02, 0x04, 0x08, 0x10), id="shr10"),
    pytest.param("ASM_SHR6", 6, (0x03, 0x0C, 0x30), id="shr6"),
    pytest.param("ASM_SHR7", 7, tuple(1 << b for b in range(7)), id="shr7"),
    pytest.param("ASM_SHR12", 12, (0x03,), id="shr12")])
def test_asm_shifts_equal_the_twin_under_the_masks_that_follow(asm, shift, masks):
    """A 32-bit shift moves high-lane bits into the top of the low lane; every mask the kernels apply after
    it (kernels._mask_operand) keeps only bits below 16 - shift, where it equals the twin's per-lane shift."""
    v, partner, lo_word, hi_word = _pairs()
    for word, mine, other, half in ((lo_word, v, partner, 0), (hi_word, v, partner, 1)):
        shifted = _halves(_emulate(getattr(sign.configs, asm).value, word))
        for mask in masks:
            assert mask < 1 << (16 - shift)
            assert np.array_equal(shifted[half] & mask, (mine >> shift) & mask)
            assert np.array_equal(shifted[1 - half] & mask, (other >> shift) & mask)
