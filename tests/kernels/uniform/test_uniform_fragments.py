"""The building blocks of the tensor-core GEMV, checked exactly (interpreter).

- The pure-Triton twin of the inline-PTX ``mma.sync.m16n8k16`` (what the interpreter runs) against
  an emulation written from the PTX ISA's fragment tables, on integer-valued inputs where every
  product and sum is exact: the twin and the PTX agree on which lane holds which element.
- The magic-number pair decode (plain Triton bit operations, the same code on GPU and CPU) against
  the reference packing: every pair of every block decodes to exactly base + code in both halves.

test_uniform_aot.py checks, on the compiled GPU kernel, that the fragment tensors the inline PTX
receives have the lane layout assumed here (read from the TTGIR).
"""
import pytest
import torch
import triton
import triton.language as tl

from lowbit.kernels.uniform import configs as C
from lowbit.kernels.uniform.fragments import (decode_pair, mma16816, pair_base, pair_hi, pair_lo, runtime_zero,
                                              step_pair)
from lowbit.reference import pack_codes

from helpers import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="exercises the interpreter twin of the PTX step")


def ptx_mma_m16n8k16(a, b, c):
    """D = A.B + C from per-lane fragments, following the PTX ISA tables for mma.m16n8k16 (.f16/.bf16
    inputs, .f32 accumulators). a [32, 4, 2] (register, half), b [32, 2, 2], c [32, 4] -> d [32, 4].

    groupID = lane >> 2, tig = lane % 4. A: a0 (row g, k 2t..2t+1), a1 (row g+8, same k), a2 (row g,
    k 2t+8..2t+9), a3 (row g+8, k 2t+8..). B: b0 (k 2t..2t+1, col g), b1 (k 2t+8..2t+9, col g).
    C/D: c0, c1 (row g, cols 2t, 2t+1), c2, c3 (row g+8, cols 2t, 2t+1).
    """
    A = torch.zeros(16, 16, dtype=torch.float64)
    B = torch.zeros(16, 8, dtype=torch.float64)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        for e in range(2):
            A[g, 2 * t + e] = a[lane, 0, e]
            A[g + 8, 2 * t + e] = a[lane, 1, e]
            A[g, 2 * t + 8 + e] = a[lane, 2, e]
            A[g + 8, 2 * t + 8 + e] = a[lane, 3, e]
            B[2 * t + e, g] = b[lane, 0, e]
            B[2 * t + 8 + e, g] = b[lane, 1, e]
    D = A @ B
    d = torch.empty(32, 4, dtype=torch.float64)
    for lane in range(32):
        g, t = lane >> 2, lane % 4
        d[lane] = torch.stack([D[g, 2 * t], D[g, 2 * t + 1], D[g + 8, 2 * t], D[g + 8, 2 * t + 1]])
    return d + c


@triton.jit
def _twin_kernel(a_ptr, x_ptr, c_ptr, d_ptr, L: tl.constexpr, NW: tl.constexpr, BF16: tl.constexpr):
    """Fragments [4 regs, L, NW, 8, 4] in memory -> mma16816 twin -> d [4, L, NW, 8, 4]."""
    i = (tl.arange(0, L)[:, None, None, None] * NW * 32 + tl.arange(0, NW)[None, :, None, None] * 32
         + tl.arange(0, 8)[None, None, :, None] * 4 + tl.arange(0, 4)[None, None, None, :])
    S: tl.constexpr = L * NW * 32
    xi = tl.arange(0, NW)[None, :, None, None] * 32 + tl.arange(0, 8)[None, None, :, None] * 4 + \
        tl.arange(0, 4)[None, None, None, :]
    XS: tl.constexpr = NW * 32
    d0, d1, d2, d3 = mma16816(tl.load(a_ptr + i), tl.load(a_ptr + S + i), tl.load(a_ptr + 2 * S + i),
                              tl.load(a_ptr + 3 * S + i), tl.load(x_ptr + xi), tl.load(x_ptr + XS + xi),
                              tl.load(x_ptr + 2 * XS + xi), tl.load(x_ptr + 3 * XS + xi),
                              tl.load(c_ptr + i), tl.load(c_ptr + S + i), tl.load(c_ptr + 2 * S + i),
                              tl.load(c_ptr + 3 * S + i), BF16, False)
    tl.store(d_ptr + i, d0)
    tl.store(d_ptr + S + i, d1)
    tl.store(d_ptr + 2 * S + i, d2)
    tl.store(d_ptr + 3 * S + i, d3)


def _pack_halves(lo: torch.Tensor, hi: torch.Tensor, dtype) -> torch.Tensor:
    """int32 words holding (lo, hi) as two 16-bit floats of `dtype`."""
    lo16 = lo.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    hi16 = hi.to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    return (lo16 | (hi16 << 16)).to(torch.int32)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="f16"), pytest.param(torch.bfloat16, id="bf16")])
def test_twin_matches_ptx_fragment_rules(dtype):
    """Integer-valued fragments (|A| <= 1024 + 255, |B| <= 64: every product and sum is exact in fp32)."""
    gen = torch.Generator().manual_seed(1)
    L, NW = 2, 2
    a_vals = torch.randint(-300, 300, (4, L, NW, 8, 4, 2), generator=gen).double()
    a_vals[0] += 1024  # magic-number-sized values, as the decode produces
    x_vals = torch.randint(-64, 64, (4, NW, 8, 4), generator=gen).double()  # b00, b01, b10, b11
    c_vals = torch.randint(-1000, 1000, (4, L, NW, 8, 4), generator=gen).double()
    if dtype == torch.bfloat16:  # 8 significant bits: keep every value exact
        a_vals = torch.randint(-128, 128, (4, L, NW, 8, 4, 2), generator=gen).double()
    a = _pack_halves(a_vals[..., 0], a_vals[..., 1], dtype)
    d = torch.full((4, L, NW, 8, 4), float("nan"), dtype=torch.float32)
    _twin_kernel[(1,)](a.contiguous(), x_vals.to(dtype).contiguous(), c_vals.float().contiguous(), d, L=L, NW=NW,
                       BF16=dtype == torch.bfloat16)
    for li in range(L):
        for w in range(NW):
            frag_a = a_vals[:, li, w].permute(1, 2, 0, 3).reshape(32, 4, 2)  # lane = 4g + c
            frag_b = x_vals[:, w].permute(1, 2, 0).reshape(32, 2, 2)  # (b0: x0, x1), (b1: x2, x3)
            frag_c = c_vals[:, li, w].permute(1, 2, 0).reshape(32, 4)
            want = ptx_mma_m16n8k16(frag_a, frag_b, frag_c)
            got = d[:, li, w].permute(1, 2, 0).reshape(32, 4).double()
            assert torch.equal(got, want), (li, w)


@triton.jit
def _decode_kernel(qw_ptr, out_ptr, BITS: tl.constexpr, BF16: tl.constexpr, WB: tl.constexpr, P: tl.constexpr,
                   COLS: tl.constexpr):
    """Every pair of one block per column: out[j, n] = decode_pair(block words of column n, j)."""
    n = tl.arange(0, COLS)
    w0 = tl.load(qw_ptr + n)
    w1 = w0
    w2 = w0
    w3 = w0
    if WB >= 2:
        w1 = tl.load(qw_ptr + COLS + n)
    if WB >= 3:
        w2 = tl.load(qw_ptr + 2 * COLS + n)
    if WB >= 4:
        w3 = tl.load(qw_ptr + 3 * COLS + n)
    for j in tl.static_range(P):
        tl.store(out_ptr + j * COLS + n, decode_pair(w0, w1, w2, w3, j, BITS, BF16, runtime_zero()))


@pytest.mark.parametrize("bits,dtype", [
    pytest.param(b, d, id=f"int{b}-{'bf16' if d == torch.bfloat16 else 'f16'}")
    for b in (1, 2, 3, 4, 8) for d in (torch.float16, torch.bfloat16) if not (b == 8 and d == torch.bfloat16)])
def test_pair_decode_is_base_plus_code(bits, dtype):
    """Both halves of pair j are exactly base_j + the codes pair_lo(j) and pair_hi(j) of the block,
    for every code value (all-ones columns included), with the blocks the GEMV walks (int4: 2 words)."""
    codes, words, pairs = C.gemv_block(bits)
    cols = 64
    gen = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2 ** bits, (cols, codes), generator=gen)
    q[0] = 2 ** bits - 1  # the sign bit of every word set
    q[1] = 0
    packed = pack_codes(q, bits)
    assert packed.shape == (words, cols)
    out = torch.empty(pairs, cols, dtype=torch.int32)
    _decode_kernel[(1,)](packed.contiguous(), out, BITS=bits, BF16=dtype == torch.bfloat16, WB=words, P=pairs,
                         COLS=cols)
    bf16 = dtype == torch.bfloat16
    for j in range(pairs):
        base = pair_base(j, bits, bf16) & 0xFFFF
        assert base == (pair_base(j, bits, bf16) >> 16) & 0xFFFF  # the same base in both halves
        base_val = float(torch.tensor([base], dtype=torch.int16).view(dtype))
        lo = (out[j] & 0xFFFF).to(torch.int16).view(dtype).double()
        hi = ((out[j] >> 16) & 0xFFFF).to(torch.int16).view(dtype).double()
        assert torch.equal(lo, base_val + q[:, pair_lo(j, bits)].double()), (j, "lo")
        assert torch.equal(hi, base_val + q[:, pair_hi(j, bits)].double()), (j, "hi")
    # the pairs cover every code of the block exactly once
    covered = sorted([pair_lo(j, bits) for j in range(pairs)] + [pair_hi(j, bits) for j in range(pairs)])
    assert covered == list(range(codes))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_step_order_is_a_permutation(bits):
    """The MMA steps of an iteration visit every pair of the block once (sorted by magic base)."""
    for steps in (C.gemv_block(bits)[2], C.gemv_block(bits)[2] // 2):
        order = [step_pair(i, bits, False, steps) for i in range(steps)]
        assert sorted(order) == list(range(steps))
        bases = [pair_base(j, bits, False) for j in order]
        assert bases == sorted(bases, key=lambda b: -b) or bases == sorted(bases)  # grouped by base
