"""Triton kernels of the uniform family (int1/int2/int3/int4/int8, W = (q - z) * s).

All read the shared packing (lowbit/reference/packing.py): codes along K in int32 words stored
[Kw, N], N contiguous, 32 // bits codes per word, or 32 codes in 3 words for int3; scales and
zeros [G, N]. The kernels walk it in blocks of whole words (see configs.block_of/gemv_block).

- :func:`_uniform_gemv_kernel` (M <= 16, fp16/bf16 x): tensor cores at M = 1. The weight is the
  A operand of ``mma.m16n8k16``, decoded straight from the loaded words into A fragments (two
  codes per 32-bit logic op, fragments.py), so nothing goes through shared memory and there is no
  barrier in the loop. x is the B operand; the 8 columns of an MMA hold (rows of x) x (slots):
  pair position p of the MMA's K belongs to slot p % GP and column j to slot j % GP (GP = 8 / rows),
  and B is zero where they differ, so one accumulator column collects one virtual group of BLOCK_K
  codes and the scale/zero epilogue runs once per GP groups (16 rows of x: two MMAs per step share
  the decode). A second MMA with constant A rows (ones; the magic bases) gives the same columns'
  sums of x and of base * x, which remove the magic offset and the zero point there:
  y += s * (D - C - z * S). The warps of a CTA split K; the only cross-lane and cross-warp
  reduction is after the loop.
- :func:`_uniform_gemm_kernel` (M > 16): the weight tile is decoded in the K loop (pairs, then
  (f - base - z) * s in the activation type; fp32 x: element-wise, fp32) and fed to ``tl.dot``.
- :func:`_uniform_gemv_fma_kernel` (small M where the MMA decode does not apply: fp32 x, bf16
  int8): fp32 CUDA-core math, codes read element-wise.
- :func:`_uniform_reduce_kernel`: fixed-order split-K sum.
"""
import triton
import triton.language as tl

from ..jit import add_bias, grouped_tile, store_tile, sum_splits
from .fragments import (base_value, decode_pair, mma16816, pair_base, pair_hi, pair_lo, pick, rows_of, runtime_zero,
                        step_pair, step_ratio)


# -- shared helpers ----------------------------------------------------------------------------------
@triton.jit
def unpack_tile(qw_ptr, k, offs_n, mask, N, BITS: tl.constexpr):
    """int32 codes [len(k), BLOCK_N] of inputs k (element-wise word reads; 3 bits: three words)."""
    if BITS == 3:
        blk = k // 32
        r = k % 32
        shift = 3 * ((r // 2) % 5) + 16 * (r % 2)
        base = qw_ptr + (3 * blk).to(tl.int64)[:, None] * N + offs_n[None, :]
        w0 = tl.load(base, mask=mask, other=0)
        w1 = tl.load(base + N, mask=mask, other=0)
        w2 = tl.load(base + 2 * N, mask=mask, other=0)
        j = (r // 10)[:, None]  # word of the field (pair r // 2, five pairs per word)
        field = (tl.where(j == 0, w0, tl.where(j == 1, w1, w2)) >> shift[:, None]) & 7
        top = tl.where(r == 30, 15, 31)[:, None]
        spread = ((w0 >> top) & 1) | (((w1 >> top) & 1) << 1) | (((w2 >> top) & 1) << 2)
        return tl.where((r < 30)[:, None], field, spread)
    VPW: tl.constexpr = 32 // BITS
    words = tl.load(qw_ptr + (k // VPW).to(tl.int64)[:, None] * N + offs_n[None, :], mask=mask, other=0)
    return (words >> ((k % VPW) * BITS)[:, None]) & ((1 << BITS) - 1)


@triton.jit
def _group_meta(s_ptr, z_ptr, t, TPG: tl.constexpr, N, offs_n, n_mask, HAS_ZEROS: tl.constexpr,
                SYM_ZERO: tl.constexpr):
    """Scale and zero, fp32 [BLOCK_N], of the group of K tile t (TPG tiles per group; 0: per channel)."""
    if TPG == 0:
        g = t * 0
    else:
        g = t // TPG
    s = tl.load(s_ptr + g.to(tl.int64) * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = tl.load(z_ptr + g.to(tl.int64) * N + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    else:
        z = tl.zeros_like(s) + SYM_ZERO
    return s, z


@triton.jit
def _store_result(acc, offs_m, offs_n, M, N, b_ptr, out_ptr, ws_ptr, pid_s, stride_om, split_k,
                  HAS_BIAS: tl.constexpr):
    """Epilogue: fp32 partials to the workspace [split_k, M, N] when split, else bias + cast into out."""
    if split_k > 1:
        store_tile(ws_ptr + pid_s.to(tl.int64) * M * N, acc, offs_m, offs_n, M, N, N, 1)
    else:
        if HAS_BIAS:
            acc = add_bias(acc, b_ptr, offs_n, N)
        store_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, 1)


# -- small M on tensor cores ---------------------------------------------------------------------------
@triton.jit
def _ld(p, n_ok, k_ok, EVEN_N: tl.constexpr, EVEN: tl.constexpr):
    """Weight words at p (read once: evict first), masked by the row and K bounds not known to hold."""
    if EVEN_N:
        if EVEN:
            return tl.load(p, eviction_policy="evict_first")
        return tl.load(p, mask=k_ok, eviction_policy="evict_first")
    if EVEN:
        return tl.load(p, mask=n_ok, eviction_policy="evict_first")
    return tl.load(p, mask=n_ok & k_ok, eviction_policy="evict_first")


@triton.jit
def _ldx(p, match, ok, k, K, EVEN: tl.constexpr, ALL_MATCH: tl.constexpr):
    """The B operand's activations at p: zero for lanes whose column is another slot (match false),
    and, unless EVEN (every super-step full and inside K), where ok fails or k >= K. (An evict-last
    hint here cost instructions in the compiled M = 16 loop, so x takes the default policy.)"""
    if EVEN:
        if ALL_MATCH:
            return tl.load(p)
        return tl.load(p, mask=match, other=0.0)
    return tl.load(p, mask=match & ok & (k < K), other=0.0)


@triton.jit
def _quads(p, n, N, k_ok, R2: tl.constexpr, EVEN_N: tl.constexpr, EVEN: tl.constexpr):
    """A lane's R2 row quads, [NW * 32, 4] each at p + 4 * r2 (rows n + 4 * r2), as [NW * 32, 4, R2]: one
    load per quad, joined after the load (a load with the quad dim would have two non-contiguous dims)."""
    q0 = _ld(p, n < N, k_ok, EVEN_N, EVEN)
    if R2 == 1:
        t = q0[:, :, None]
    elif R2 == 2:
        t = tl.join(q0, _ld(p + 4, n + 4 < N, k_ok, EVEN_N, EVEN))
    else:
        q1 = _ld(p + 4, n + 4 < N, k_ok, EVEN_N, EVEN)
        q2 = _ld(p + 8, n + 8 < N, k_ok, EVEN_N, EVEN)
        q3 = _ld(p + 12, n + 12 < N, k_ok, EVEN_N, EVEN)
        t = tl.join(tl.join(q0, q2), tl.join(q1, q3))  # [..., 4, r2 bit 1, r2 bit 0]
        t = tl.reshape(t, [q0.shape[0], 4, 4])
    return t


@triton.jit
def _words(p, N, n, k_ok, WB: tl.constexpr, R2: tl.constexpr, EVEN_N: tl.constexpr, EVEN: tl.constexpr):
    """The WB words of a block at p, p + N, ... as row quads (_quads; unused ones repeat the first)."""
    w0 = _quads(p, n, N, k_ok, R2, EVEN_N, EVEN)
    w1 = w0
    w2 = w0
    w3 = w0
    if WB >= 2:
        w1 = _quads(p + N, n, N, k_ok, R2, EVEN_N, EVEN)
    if WB >= 3:
        w2 = _quads(p + 2 * N, n, N, k_ok, R2, EVEN_N, EVEN)
    if WB >= 4:
        w3 = _quads(p + 3 * N, n, N, k_ok, R2, EVEN_N, EVEN)
    return w0, w1, w2, w3


@triton.jit
def _acts(p, match, ok, k, K, XC: tl.constexpr, EVEN: tl.constexpr, ALL_MATCH: tl.constexpr):
    """A block's activations as XC chunks of 8 (unused ones repeat the first)."""
    x0 = _ldx(p, match, ok, k, K, EVEN, ALL_MATCH)
    x1 = x0
    x2 = x0
    x3 = x0
    if XC >= 2:
        x1 = _ldx(p + 8, match, ok, k + 8, K, EVEN, ALL_MATCH)
    if XC >= 4:
        x2 = _ldx(p + 16, match, ok, k + 16, K, EVEN, ALL_MATCH)
        x3 = _ldx(p + 24, match, ok, k + 24, K, EVEN, ALL_MATCH)
    return x0, x1, x2, x3


@triton.jit
def _gemv_step(wa0, wa1, wa2, wa3, wb0, wb1, wb2, wb3, xa0, xa1, xa2, xa3, xb0, xb1, xb2, xb3,
               d0, d1, d2, d3, e0, e1, e2, e3, one2, z0, I: tl.constexpr, SPI: tl.constexpr, HALF: tl.constexpr,
               HORNER: tl.constexpr, R: tl.constexpr, NW: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr,
               USE_ASM: tl.constexpr):
    """MMA step I of an iteration: decode pair J of side 0's block (J + HALF of side 1's), multiply by
    the activation pairs, and accumulate the same columns' sums of x (e0, e1) and of base * x (e2, e3).

    HORNER (two streams, so both sides' pairs have the same base; steps in order of decreasing
    base): e2, e3 accumulate x with an all-ones A (one constant operand for every step) and are
    scaled by the base ratio when the base changes, so after the iteration's last step they hold
    sum(base * x) / smallest base. Otherwise the A operand carries each step's bases.
    """
    J: tl.constexpr = step_pair(I, BITS, BF16, SPI)
    J1: tl.constexpr = J + HALF
    a0, a1 = rows_of(decode_pair(wa0, wa1, wa2, wa3, J, BITS, BF16, z0), R)
    a2, a3 = rows_of(decode_pair(wb0, wb1, wb2, wb3, J1, BITS, BF16, z0), R)
    b00 = pick(xa0, xa1, xa2, xa3, pair_lo(J, BITS))[None]
    b01 = pick(xa0, xa1, xa2, xa3, pair_hi(J, BITS))[None]
    b10 = pick(xb0, xb1, xb2, xb3, pair_lo(J1, BITS))[None]
    b11 = pick(xb0, xb1, xb2, xb3, pair_hi(J1, BITS))[None]
    d0, d1, d2, d3 = mma16816(a0, a1, a2, a3, b00, b01, b10, b11, d0, d1, d2, d3, BF16, USE_ASM)
    if HORNER:
        e0, e1, e2, e3 = mma16816(one2, one2, one2, one2, b00, b01, b10, b11, e0, e1, e2, e3, BF16, USE_ASM)
        RATIO: tl.constexpr = step_ratio(I, BITS, BF16, SPI)
        if RATIO != 1.0:
            e2 = e2 * RATIO
            e3 = e3 * RATIO
    else:
        base0 = tl.full([1, NW, 8, 4], pair_base(J, BITS, BF16), tl.int32) + z0
        base1 = tl.full([1, NW, 8, 4], pair_base(J1, BITS, BF16), tl.int32) + z0
        e0, e1, e2, e3 = mma16816(one2, base0, one2, base1, b00, b01, b10, b11, e0, e1, e2, e3, BF16, USE_ASM)
    return d0, d1, d2, d3, e0, e1, e2, e3


@triton.jit
def _uniform_gemv_kernel(
        x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
        M, N, K, stride_xm, stride_om, steps_per_split, split_k,
        BITS: tl.constexpr, VGG: tl.constexpr, BF16: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        NW: tl.constexpr, EVEN: tl.constexpr, EVEN_N: tl.constexpr, USE_ASM: tl.constexpr):
    """Small-M y = x W^T: grid (M-blocks x N-blocks, split_k); see the module docstring.

    Thread (warp w, lane 4g + c) owns weight rows n0 + 2R*g + [0, 2R) (R = BLOCK_N / 16 MMA row
    blocks; row 2*rb + h is MMA row g + 8h of block rb) and, per iteration, one block per row of
    each of its streams: side 0 feeds pair position c, side 1 position c + 4. With GP = 8 slots
    (BLOCK_M = 1) the two sides are separate streams (slots c and c + 4); otherwise both sides
    take the two halves of one block of slot c % GP, lanes c // GP splitting the slot's blocks.
    Warp w runs super-steps (GP virtual groups of BLOCK_K codes) w, w + NW, ... of its split.

    EVEN: every split holds a multiple of NW super-steps and K is a multiple of the super-step, so
    no read needs a K bound and pointers just advance. Otherwise a warp past its split re-reads its
    last super-step with zero activations (and zero scales). EVEN_N (N a multiple of BLOCK_N): no
    row bound on the weight reads either.
    """
    R: tl.constexpr = BLOCK_N // 16
    R2: tl.constexpr = R // 2
    NH: tl.constexpr = 2 if BLOCK_M == 16 else 1  # 16 rows of x: two MMAs of 8 columns per step
    BMH: tl.constexpr = BLOCK_M // NH
    GP: tl.constexpr = 8 // BMH
    NS: tl.constexpr = 2 if GP == 8 else 1  # independent streams per thread
    if BITS == 3:
        BLK: tl.constexpr = 32
        WB: tl.constexpr = 3
    elif BITS == 8:
        BLK: tl.constexpr = 8
        WB: tl.constexpr = 2
    elif BITS == 4:
        BLK: tl.constexpr = 16
        WB: tl.constexpr = 2
    else:
        BLK: tl.constexpr = 32 // BITS
        WB: tl.constexpr = 1
    P: tl.constexpr = BLK // 2  # pairs per block
    SPI: tl.constexpr = P if NS == 2 else P // 2  # MMA steps per iteration
    LPS: tl.constexpr = 1 if NS == 2 else 4 // GP  # streams per slot
    INNER: tl.constexpr = BLOCK_K // (BLK * LPS)  # iterations per super-step
    XC: tl.constexpr = BLK // 8  # 8-value activation chunks per block
    SSK: tl.constexpr = BLOCK_K * GP  # codes per super-step
    HALF: tl.constexpr = 0 if NS == 2 else P // 2
    BMIN: tl.constexpr = base_value(step_pair(SPI - 1, BITS, BF16, SPI), BITS, BF16)  # smallest base
    # Horner sums of base * x (see _gemv_step): fewer instructions than rebuilding the sums MMA's
    # operand per base in the compiled 2-bit loop; for the other widths the SASS is shorter without
    HORNER: tl.constexpr = NS == 2 and BITS == 2
    ROW_STEP: tl.constexpr = WB * LPS  # word rows a stream advances per iteration
    # with EVEN, the scale rows advance by GSTEP groups per super-step hop when that is a whole number
    GSTEP: tl.constexpr = (NW * GP) // VGG if VGG > 0 else 0
    INC: tl.constexpr = EVEN and (VGG == 0 or (NW * GP) % VGG == 0)
    ALL: tl.constexpr = GP == 1  # every lane's B column takes every pair

    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    m0 = (pid % num_m) * BLOCK_M
    n0 = (pid // num_m) * BLOCK_N
    n_ss = tl.cdiv(K, SSK)
    ss_begin = pid_s * steps_per_split
    ss_end = tl.minimum(ss_begin + steps_per_split, n_ss)

    # Every load is [NW * 32 (lane: warp w, g, c), contiguous values]: one non-contiguous dim, so the
    # layout Triton gives it (lanes and warps on that dim) does not depend on how it orders equally
    # contiguous dims (3.6 and 3.9 differ there), and the fragments built from it keep it.
    ln = tl.arange(0, NW * 32)[:, None]
    qw_ = ln // 32
    qc = ln % 4
    # weight quads [NW * 32, 4 (rows)], row quad r2 at n_q + 4 * r2: 128-bit loads along N
    n_q = n0 + (ln // 4 % 8) * (2 * R) + tl.arange(0, 4)[None, :]
    # activations [NW * 32, 8]: column g of B is row m0 + g // GP of x, slot g % GP
    xw = qw_
    xg = ln // 4 % 8
    xc = qc
    xe = tl.arange(0, 8)[None, :]
    x_rows = x_ptr + tl.minimum(m0 + xg // GP, M - 1).to(tl.int64) * stride_xm  # rows past M: dropped
    x_rows_h = x_ptr + tl.minimum(m0 + 8 + xg, M - 1).to(tl.int64) * stride_xm  # second half (NH = 2)
    if NS == 2:
        slot_q0 = qc
        slot_q1 = qc + 4
        slot_x0 = xc
        slot_x1 = xc + 4
        lane_q = qc * 0
        lane_x = xc * 0
    else:
        slot_q0 = qc % GP
        slot_q1 = slot_q0
        slot_x0 = xc % GP
        slot_x1 = slot_x0
        lane_q = qc // GP
        lane_x = xc // GP
    x_ok0 = xg % GP == slot_x0
    x_ok1 = xg % GP == slot_x1

    z0 = runtime_zero()
    zero = tl.zeros([R, NW, 8, 4], dtype=tl.float32)
    zx = tl.zeros([1, NW, 8, 4], dtype=tl.float32)
    one2 = tl.full([1, NW, 8, 4], 0x3F803F80 if BF16 else 0x3C003C00, tl.int32) + z0  # (1.0, 1.0)
    y0 = zero
    y1 = zero
    y2 = zero
    y3 = zero
    y4 = zero
    y5 = zero
    y6 = zero
    y7 = zero
    # first blocks of the streams at this warp's first super-step
    ss_q = ss_begin + qw_
    ss_x = ss_begin + xw
    if not EVEN:
        ss_q = tl.minimum(ss_q, ss_end - 1)
        ss_x = tl.minimum(ss_x, ss_end - 1)
    kb_q0 = (ss_q * GP + slot_q0) * BLOCK_K + lane_q * BLK
    kb_x0 = (ss_x * GP + slot_x0) * BLOCK_K + lane_x * BLK + xe
    pb_q0 = qw_ptr + (kb_q0 // BLK * WB).to(tl.int64) * N + n_q
    kb_q1 = (ss_q * GP + slot_q1) * BLOCK_K
    kb_x1 = (ss_x * GP + slot_x1) * BLOCK_K + xe
    pb_q1 = qw_ptr + (kb_q1 // BLK * WB).to(tl.int64) * N + n_q
    # scale/zero rows (group offsets * N) of the two columns (2c, 2c + 1) at this warp's first super-step
    vg0 = (ss_begin + qw_) * GP + (2 * qc) % GP
    vg1 = (ss_begin + qw_) * GP + (2 * qc + 1) % GP
    if VGG == 0:
        go0 = (vg0 * 0).to(tl.int64)
        go1 = (vg1 * 0).to(tl.int64)
    else:
        go0 = (vg0 // VGG).to(tl.int64) * N
        go1 = (vg1 // VGG).to(tl.int64) * N
    for o in range(ss_begin, ss_end, NW):
        ok_x = o + xw < ss_end
        if not EVEN:  # re-derive the (clamped) starts: warps past the split re-read its last super-step
            ss_q = tl.minimum(o + qw_, ss_end - 1)
            ss_x = tl.minimum(o + xw, ss_end - 1)
            kb_q0 = (ss_q * GP + slot_q0) * BLOCK_K + lane_q * BLK
            kb_x0 = (ss_x * GP + slot_x0) * BLOCK_K + lane_x * BLK + xe
            pb_q0 = qw_ptr + (kb_q0 // BLK * WB).to(tl.int64) * N + n_q
            kb_q1 = (ss_q * GP + slot_q1) * BLOCK_K
            kb_x1 = (ss_x * GP + slot_x1) * BLOCK_K + xe
            pb_q1 = qw_ptr + (kb_q1 // BLK * WB).to(tl.int64) * N + n_q
        p_q0 = pb_q0
        p_q1 = pb_q1
        p_x0 = x_rows + kb_x0
        p_x1 = x_rows + kb_x1
        p_xh = x_rows_h + kb_x0
        k_q0 = kb_q0
        k_q1 = kb_q1
        k_x0 = kb_x0
        k_x1 = kb_x1
        d0 = zero
        d1 = zero
        d2 = zero
        d3 = zero
        e0 = zx
        e1 = zx
        e2 = zx
        e3 = zx
        c0 = zx
        c1 = zx
        d4 = zero
        d5 = zero
        d6 = zero
        d7 = zero
        e4 = zx
        e5 = zx
        e6 = zx
        e7 = zx
        for t in range(0, INNER):
            wa0, wa1, wa2, wa3 = _words(p_q0, N, n_q, k_q0 < K, WB, R2, EVEN_N, EVEN)
            xa0, xa1, xa2, xa3 = _acts(p_x0, x_ok0, ok_x, k_x0, K, XC, EVEN, ALL)
            p_q0 += ROW_STEP * N
            p_x0 += BLK * LPS
            if NH == 2:
                xh0, xh1, xh2, xh3 = _acts(p_xh, x_ok0, ok_x, k_x0, K, XC, EVEN, ALL)
                p_xh += BLK * LPS
            if not EVEN:
                k_q0 += BLK * LPS
                k_x0 += BLK * LPS
            if NS == 2:
                wb0, wb1, wb2, wb3 = _words(p_q1, N, n_q, k_q1 < K, WB, R2, EVEN_N, EVEN)
                xb0, xb1, xb2, xb3 = _acts(p_x1, x_ok1, ok_x, k_x1, K, XC, EVEN, ALL)
                p_q1 += ROW_STEP * N
                p_x1 += BLK
                if not EVEN:
                    k_q1 += BLK
                    k_x1 += BLK
            else:
                wb0 = wa0
                wb1 = wa1
                wb2 = wa2
                wb3 = wa3
                xb0 = xa0
                xb1 = xa1
                xb2 = xa2
                xb3 = xa3
            for i in tl.static_range(SPI):
                d0, d1, d2, d3, e0, e1, e2, e3 = _gemv_step(
                    wa0, wa1, wa2, wa3, wb0, wb1, wb2, wb3, xa0, xa1, xa2, xa3, xb0, xb1, xb2, xb3,
                    d0, d1, d2, d3, e0, e1, e2, e3, one2, z0, i, SPI, HALF, HORNER, R, NW, BITS, BF16, USE_ASM)
                if NH == 2:  # the same A fragments (the decode is shared) against x rows 8..15
                    d4, d5, d6, d7, e4, e5, e6, e7 = _gemv_step(
                        wa0, wa1, wa2, wa3, wb0, wb1, wb2, wb3, xh0, xh1, xh2, xh3, xh0, xh1, xh2, xh3,
                        d4, d5, d6, d7, e4, e5, e6, e7, one2, z0, i, SPI, HALF, False, R, NW, BITS, BF16, USE_ASM)
            if HORNER:  # Horner partial of this iteration (see _gemv_step), in units of the smallest base
                c0 += BMIN * e2
                c1 += BMIN * e3
                e2 = zx
                e3 = zx
        # epilogue of the super-step: column 2c + e is slot (2c + e) % GP
        if not INC:
            vg0 = (o + qw_) * GP + (2 * qc) % GP  # virtual groups of columns 2c, 2c + 1; VGG per group
            vg1 = (o + qw_) * GP + (2 * qc + 1) % GP
            if VGG == 0:
                go0 = (vg0 * 0).to(tl.int64)
                go1 = (vg1 * 0).to(tl.int64)
            else:
                go0 = (vg0 // VGG).to(tl.int64) * N
                go1 = (vg1 // VGG).to(tl.int64) * N
        if EVEN:  # (not read: no scale load needs a K bound)
            ok0 = qw_ < NW
            ok1 = ok0
        else:
            ok0 = (o + qw_ < ss_end) & (vg0 * BLOCK_K < K)
            ok1 = (o + qw_ < ss_end) & (vg1 * BLOCK_K < K)
        s00, s01 = rows_of(_quads(s_ptr + (go0 + n_q), n_q, N, ok0, R2, EVEN and EVEN_N, EVEN).to(tl.float32), R)
        s10, s11 = rows_of(_quads(s_ptr + (go1 + n_q), n_q, N, ok1, R2, EVEN and EVEN_N, EVEN).to(tl.float32), R)
        if HORNER:  # sums of base * x: the Horner accumulators
            e2 = c0
            e3 = c1
        if HAS_ZEROS:
            z00, z01 = rows_of(_quads(z_ptr + (go0 + n_q), n_q, N, ok0, R2, EVEN and EVEN_N, EVEN).to(tl.float32), R)
            z10, z11 = rows_of(_quads(z_ptr + (go1 + n_q), n_q, N, ok1, R2, EVEN and EVEN_N, EVEN).to(tl.float32), R)
            y0 += s00 * (d0 - e2 - z00 * e0)
            y2 += s01 * (d2 - e2 - z01 * e0)
            y1 += s10 * (d1 - e3 - z10 * e1)
            y3 += s11 * (d3 - e3 - z11 * e1)
            if NH == 2:
                y4 += s00 * (d4 - e6 - z00 * e4)
                y6 += s01 * (d6 - e6 - z01 * e4)
                y5 += s10 * (d5 - e7 - z10 * e5)
                y7 += s11 * (d7 - e7 - z11 * e5)
        else:  # a constant zero point: the column's correction is row-independent
            u0 = e2 + SYM_ZERO * e0
            u1 = e3 + SYM_ZERO * e1
            y0 += s00 * (d0 - u0)
            y2 += s01 * (d2 - u0)
            y1 += s10 * (d1 - u1)
            y3 += s11 * (d3 - u1)
            if NH == 2:
                u4 = e6 + SYM_ZERO * e4
                u5 = e7 + SYM_ZERO * e5
                y4 += s00 * (d4 - u4)
                y6 += s01 * (d6 - u4)
                y5 += s10 * (d5 - u5)
                y7 += s11 * (d7 - u5)
        if EVEN:
            pb_q0 += (NW * SSK // BLK * WB) * N
            pb_q1 += (NW * SSK // BLK * WB) * N
            kb_x0 += NW * SSK
            kb_x1 += NW * SSK
        if INC:
            if VGG != 0:
                go0 += GSTEP * N
                go1 += GSTEP * N
    # one reduction after the loop: warps, then the (c, e) columns of each output row
    yh0 = tl.sum(tl.join(y0, y1), axis=1)  # [R, 8, 4, 2]: column 2c + e of MMA row g
    yh1 = tl.sum(tl.join(y2, y3), axis=1)
    yh0 = tl.sum(tl.reshape(yh0, [R, 8, BMH, GP]), axis=3)
    yh1 = tl.sum(tl.reshape(yh1, [R, 8, BMH, GP]), axis=3)
    if NH == 2:  # x rows 8..15 (GP = 1: no slot sum)
        yh0 = tl.join(yh0, tl.reshape(tl.sum(tl.join(y4, y5), axis=1), [R, 8, BMH]))
        yh1 = tl.join(yh1, tl.reshape(tl.sum(tl.join(y6, y7), axis=1), [R, 8, BMH]))
        yh0 = tl.reshape(tl.permute(yh0, [0, 1, 3, 2]), [R, 8, BLOCK_M])
        yh1 = tl.reshape(tl.permute(yh1, [0, 1, 3, 2]), [R, 8, BLOCK_M])
    y = tl.join(yh0, yh1)  # [R, 8 (g), BLOCK_M, 2 (h)]
    rb = tl.arange(0, R)[:, None, None, None]
    gg = tl.arange(0, 8)[None, :, None, None]
    mm = m0 + tl.arange(0, BLOCK_M)[None, None, :, None]
    hh = tl.arange(0, 2)[None, None, None, :]
    if BITS == 3 and NS == 1 and NH == 1:
        # int3 at 2-8 rows of x: n0 re-derived, not held through the loop (Triton 3.6's ptxas spilled it at
        # M = 8); + z0 keeps the compilers from reusing the first division's values, which would be held instead
        n0 = (tl.program_id(0) + z0) // (num_m + z0) * BLOCK_N
    n_out = n0 + gg * (2 * R) + rb * 2 + hh
    ok = (n_out < N) & (mm < M)
    if split_k > 1:
        tl.store(ws_ptr + pid_s.to(tl.int64) * M * N + mm.to(tl.int64) * N + n_out, y, mask=ok)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + n_out, mask=n_out < N, other=0.0).to(tl.float32)
        tl.store(out_ptr + mm.to(tl.int64) * stride_om + n_out, y.to(out_ptr.dtype.element_ty), mask=ok)


# -- small M on CUDA cores (fp32 x, bf16 int8) -------------------------------------------------------
@triton.jit
def _uniform_gemv_fma_kernel(
        x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
        M, N, K, stride_xm, stride_om, tiles_per_split, split_k,
        BITS: tl.constexpr, TPG: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Small-M y = x W^T in fp32 on CUDA cores: grid (M-blocks x N-blocks, split_k); a K tile lies in
    one group, so the scale leaves the inner product: sum x*(q-z)*s = s * sum x*(q-z)."""
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    rk = tl.arange(0, BLOCK_K)
    for t in range(t_begin, t_end):
        kk = t * BLOCK_K + rk
        k_ok = kk < K
        q = unpack_tile(qw_ptr, kk, offs_n, k_ok[:, None] & n_mask[None, :], N, BITS)
        f = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # exact int -> fp32
        xt = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        s, z = _group_meta(s_ptr, z_ptr, t, TPG, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
        xq = tl.sum(xt[:, :, None] * (f - z[None, :])[None, :, :], axis=1)
        acc += xq * s[None, :]
    _store_result(acc, offs_m, offs_n, M, N, b_ptr, out_ptr, ws_ptr, pid_s, stride_om, split_k, HAS_BIAS)


# -- large M on tensor cores -------------------------------------------------------------------------
@triton.jit
def _pairs4(w0, w1, w2, J0: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr, zero):
    """Pairs J0 .. J0 + 3 as int32 [..., 2, 2] (pair-index bits 0, 1)."""
    return tl.join(tl.join(decode_pair(w0, w1, w2, w0, J0, BITS, BF16, zero),
                           decode_pair(w0, w1, w2, w0, J0 + 1, BITS, BF16, zero)),
                   tl.join(decode_pair(w0, w1, w2, w0, J0 + 2, BITS, BF16, zero),
                           decode_pair(w0, w1, w2, w0, J0 + 3, BITS, BF16, zero)))


@triton.jit
def _pair_tile(w0, w1, w2, P: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr, zero):
    """All P pairs of the blocks as int32 [NBLK, BLOCK_N, 2, ..., 2] (log2(P) pair-index bits, low bit first)."""
    t = _pairs4(w0, w1, w2, 0, BITS, BF16, zero)
    if P >= 8:
        t = tl.join(t, _pairs4(w0, w1, w2, 4, BITS, BF16, zero))
    if P == 16:
        t = tl.join(t, tl.join(_pairs4(w0, w1, w2, 8, BITS, BF16, zero), _pairs4(w0, w1, w2, 12, BITS, BF16, zero)))
    return t


@triton.jit
def _uniform_gemm_kernel(
        x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
        M, N, K, stride_xm, stride_om, tiles_per_split, split_k,
        BITS: tl.constexpr, TPG: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
        HAS_BIAS: tl.constexpr, PAIRS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """Large-M y = x W^T on tensor cores with the weight tile dequantized inside the K loop.

    PAIRS (fp16/bf16 x, fields that fit the mantissa): the tile is decoded two codes per op
    (fragments.decode_pair), arranged in code order and dequantized in the activation type as
    (f - (base + z)) * s: exact integers, then one rounding. Otherwise (fp32 x, bf16 int8): codes element-wise, fp32 math, then the dot in
    x's type (fp32: exact input_precision="ieee"). A K tile lies in one group. Grid (tiles, split_k)
    in GROUP_M-row bands so consecutive programs share weight columns and x rows in L2.
    """
    pid_s = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if BITS == 3:
        BLK: tl.constexpr = 32
        WB: tl.constexpr = 3
    elif BITS == 8:
        BLK: tl.constexpr = 8
        WB: tl.constexpr = 2
    else:
        BLK: tl.constexpr = 32 // BITS
        WB: tl.constexpr = 1
    P: tl.constexpr = BLK // 2
    NBLK: tl.constexpr = BLOCK_K // BLK
    BF16: tl.constexpr = x_ptr.dtype.element_ty == tl.bfloat16
    kperm = tl.arange(0, BLOCK_K)
    rblk = tl.arange(0, NBLK)
    z0 = runtime_zero()
    if PAIRS:
        wz = tl.zeros([1, BLOCK_N], dtype=tl.int32)
        base_words = _pair_tile(wz, wz, wz, P, BITS, BF16, 0)  # the magic bases alone: [1, BN, pair bits]
    for t in range(t_begin, t_end):
        kk = t * BLOCK_K + kperm
        k_ok = kk < K
        a = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & k_ok[None, :], other=0.0)
        s, z = _group_meta(s_ptr, z_ptr, t, TPG, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
        if PAIRS:
            dt: tl.constexpr = tl.bfloat16 if BF16 else tl.float16
            row = (t * NBLK + rblk).to(tl.int64) * WB
            wmask = ((t * NBLK + rblk) * BLK < K)[:, None] & n_mask[None, :]
            wp = qw_ptr + row[:, None] * N + offs_n[None, :]
            w0 = tl.load(wp, mask=wmask, other=0)
            w1 = w0
            w2 = w0
            if WB >= 2:
                w1 = tl.load(wp + N, mask=wmask, other=0)
            if WB == 3:
                w2 = tl.load(wp + 2 * N, mask=wmask, other=0)
            v = _pair_tile(w0, w1, w2, P, BITS, BF16, z0)  # [NBLK, BN, 2 x log2(P)], pair bit 0 first
            lo = (v & 0xFFFF).to(tl.int16).to(dt, bitcast=True)
            hi = ((v >> 16) & 0xFFFF).to(tl.int16).to(dt, bitcast=True)
            f = tl.reshape(tl.join(lo, hi), [NBLK, BLOCK_N, BLK])  # in-block index: (pair bits low first, half)
            # base + z per pair position and column (fields at different bits have different bases)
            bl = (base_words & 0xFFFF).to(tl.int16).to(dt, bitcast=True)
            if HAS_ZEROS or SYM_ZERO != 0.5:  # integer zeros: base + z is exact, one subtraction
                cz = tl.reshape(tl.join(bl, bl), [1, BLOCK_N, BLK]) + z.to(dt)[None, :, None]
                fz = f - cz
            else:  # int1 symmetric (z = 0.5): base + 0.5 rounds in fp16/bf16 once base >= 1024, so f - base first
                fz = (f - tl.reshape(tl.join(bl, bl), [1, BLOCK_N, BLK])) - z.to(dt)[None, :, None]
            w = _to_code_order(fz * s.to(dt)[None, :, None], BITS, NBLK, BLOCK_N, BLOCK_K)
        else:
            q = unpack_tile(qw_ptr, kk, offs_n, k_ok[:, None] & n_mask[None, :], N, BITS)
            fq = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            w = (fq - z[None, :]) * s[None, :]
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w.to(a.dtype), acc)
    _store_result(acc, offs_m, offs_n, M, N, b_ptr, out_ptr, ws_ptr, pid_s, stride_om, split_k, HAS_BIAS)


@triton.jit
def _to_code_order(w, BITS: tl.constexpr, NBLK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The dequantized pairs w [NBLK, BN, BLK] (in-block index: pair bits low first, then half) as the
    weight tile [BLOCK_K, BLOCK_N] in code order."""
    BLK: tl.constexpr = BLOCK_K // NBLK
    if BITS == 3:
        # in-block index ((J0 J1 J2 J3), half) -> code 2 * J + half
        t = tl.reshape(w, [NBLK, BLOCK_N, 2, 2, 2, 2, 2])
        t = tl.permute(t, [0, 1, 5, 4, 3, 2, 6])
    elif BITS == 8:
        # pairs J = 2 * word + jj, codes 4 * word + 2 * half + jj
        t = tl.reshape(w, [NBLK, BLOCK_N, 2, 2, 2])  # (jj, word, half)
        t = tl.permute(t, [0, 1, 3, 4, 2])
    elif BITS == 4:
        t = tl.reshape(w, [NBLK, BLOCK_N, 2, 2, 2])  # (J0, J1, half): code 4 * half + J
        t = tl.permute(t, [0, 1, 4, 3, 2])
    elif BITS == 2:
        t = tl.reshape(w, [NBLK, BLOCK_N, 2, 2, 2, 2])  # (J0, J1, J2, half): code 8 * half + J
        t = tl.permute(t, [0, 1, 5, 4, 3, 2])
    else:
        t = tl.reshape(w, [NBLK, BLOCK_N, 2, 2, 2, 2, 2])  # (J0..J3, half): code 16 * half + J
        t = tl.permute(t, [0, 1, 6, 5, 4, 3, 2])
    t = tl.reshape(t, [NBLK, BLOCK_N, BLK])
    t = tl.permute(t, [0, 2, 1])
    return tl.reshape(t, [BLOCK_K, BLOCK_N])


@triton.jit
def _uniform_reduce_kernel(ws_ptr, b_ptr, out_ptr, M, N, split_k, stride_om,
                           HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = sum_s ws[s] (+ bias) over the split-K workspace [split_k, M, N], summed in a fixed order
    so results are deterministic; grid (N tiles, M tiles)."""
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = sum_splits(ws_ptr, rm, rn, M, N, split_k, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
    if HAS_BIAS:
        acc = add_bias(acc, b_ptr, rn, N)
    store_tile(out_ptr, acc, rm, rn, M, N, stride_om, 1)
