"""Triton kernels for sign codes: BitNet ternary (W1.58A8, W1.58A16) and OneBit binary.

Weights are packed across rows (formats.LaneLayout, lowbit.reference.ternary / binary): at each
k, RPL = LANE_BITS // BITS consecutive output rows share one lane (8-bit lanes of 4 ternary
rows for W1.58A8, 16-bit lanes of 8 ternary or 16 binary rows otherwise). The kernels treat the
weight as the *A* operand of the tensor-core dot, out^T[rows, m] = W[rows, k] . x^T[k, m], one
dot per field f (rows n = lane * RPL + f), with each field's operand cut out of the raw lanes:

* W1.58A8 (INT8_ACT): the byte b = c0 + 4 c1 + 16 c2 + 64 t3 (c = t + 1) is itself an int8
  operand, and so are b & 0x03, b & 0x0C, b & 0x30: three ANDs per 4-byte register and four int8
  dots give every row after exact shifts (D3 = (dot(b) - dot(b&3) - dot(b&12) - dot(b&48)) / 64);
  the + 1 of the low fields is removed with sum(x_q), which the quantizer writes.
* fp16 and bf16 activations (MASK, W1.58A16 and binary): a 16-bit lane ANDed with one field's bits
  is an fp16 subnormal c * 2^(p - 24) (field at bit p < 10), or for the top field +-2.0 (ternary,
  two's complement in the sign and top exponent bits) or +-1.0 with the exponent of 1.0 OR-ed in
  (binary). One AND per 32-bit register (two weights) makes the operand; fields above bit 9 are
  first shifted down once per register. The scale 2^(24 - p) and the offset (c = t + 1, or
  b = (s + 1) / 2) are undone after the K loop with sum(x), accumulated by a dot with ones.
  Tensor cores take fp16 subnormals as they are, and every factor is a power of two, so the
  result is what an fp16 x fp16 -> fp32 dot of the decoded weights gives. bf16 subnormal products
  would fall below fp32's range, so bf16 operands OR in the exponent of 128 (value 128 + c * 2^p,
  one `lop3` per pair, fields at bits < 6 after shifts by 6 and 12, or 7 and 8); removing
  128 sum(x) cancels at most 7 bits of the fp32 accumulator, far below bf16's own rounding.
* fp32 activations (neither flag): each field is decoded to its integer value; exact FMA dots
  (input_precision="ieee").

On a GPU the masks and shifts are inline PTX (`and.b32`, `lop3.b32`, `shr.b32` on packed pairs:
Triton would otherwise process each 16-bit value on its own); under the interpreter (USE_ASM=False)
the same operations run as plain Triton on each 16-bit value, with identical results (the shift's
bits that cross halves are always masked away), and bf16 dots widen to fp32 (the interpreter's bf16
dots are wrong). The asm strings live in configs.py.

Kernels:

* ``_sign_quant_kernel``: per-token absmax int8 quantization (BitNet b1.58) plus sum(x_q).
* ``_sign_gemv_kernel``: small M. Each CTA covers BLOCK_L lanes over its K range; its warps
  take SLICES interleaved K slices of BLOCK_KS (rank-3 dots over [SLICES, lanes, k], so the
  tensor cores run mma.sync tiles whose A operand is 16 lanes) and are summed once after the
  loop. Optional split-K over CTAs writes pre-scale partials to a workspace.
* ``_sign_gemm_kernel``: large M, grouped tile order, rank-2 dots (warpgroup MMA on sm_90 with
  the masked weight as a register operand).
* ``_sign_reduce_kernel``: sums split-K partials in a fixed order and runs the epilogue.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..jit import grouped_tile, sum_splits
from .configs import ASM_AND16, ASM_AND_OR16, ASM_SHR6, ASM_SHR7, ASM_SHR8, ASM_SHR10, ASM_SHR12


# -- the activation quantizer (W1.58A8) ------------------------------------------------------------

@triton.jit
def _round_half_even(v):
    """torch.round semantics (ties to even) for |v| < 2^22: adding and removing 1.5 * 2^23 leaves no
    fraction bits, so the fp32 add rounds v to the nearest integer, ties to even (two FADDs)."""
    magic = 12582912.0
    return (v + magic) - magic


@triton.jit
def _quantize_tile(v, scale, finite):
    """clip(rne(v * scale), -128, 127) as fp32, 0 for a token that holds a NaN or an infinity.

    |v| <= absmax and scale = RN(127 / absmax), so |v * scale| <= 127 (1 + 2^-23) and the rounding
    trick is exact; the clip only guards that bound.
    """
    q = _round_half_even(v * scale)
    q = tl.minimum(tl.maximum(q, -128.0), 127.0)
    return tl.where(finite, q, 0.0)


@triton.jit
def _sign_quant_kernel(x_ptr, xq_ptr, scale_ptr, xsum_ptr, K, stride_xm, stride_qm,
                       BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr):
    """One program per row: scale = 127 / max(absmax, 1e-5) (IEEE division), x_q = clip(rne(x * scale)),
    sum(x_q) in int32. A row holding a NaN or an infinity gets scale NaN, x_q = 0 and sum 0.

    Finiteness is read from sum(x * 0) (NaN exactly when some x is NaN or infinite), because a
    GPU max reduction drops NaN operands.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = xq_ptr + row * stride_qm
    rk = tl.arange(0, BLOCK_K)
    if ONE_TILE:
        v = tl.load(x_row + rk, mask=rk < K, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(v), axis=0)
        poison = tl.sum(v * 0.0, axis=0)
    else:
        run = tl.zeros((BLOCK_K,), dtype=tl.float32)
        bad = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            v = tl.load(x_row + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
            run = tl.maximum(run, tl.abs(v))
            bad += v * 0.0
        amax = tl.max(run, axis=0)
        poison = tl.sum(bad, axis=0)
    finite = poison == 0.0
    # `/` lowers to an approximate division on NVIDIA GPUs; div_rn is IEEE round-to-nearest,
    # which is what torch computes for 127.0 / amax in the reference.
    scale = tl.where(finite, tl.math.div_rn(127.0, tl.maximum(amax, 1e-5)), float("nan"))
    if ONE_TILE:
        q = _quantize_tile(v, scale, finite)
        tl.store(q_row + rk, q.to(tl.int8), mask=rk < K)
        total = tl.sum(q, axis=0)  # |sum| <= 128 K: exact in fp32 for K < 2^17
    else:
        acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            v = tl.load(x_row + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
            q = _quantize_tile(v, scale, finite)
            tl.store(q_row + k0 + rk, q.to(tl.int8), mask=k0 + rk < K)
            acc += q
        total = tl.sum(acc, axis=0)
    tl.store(scale_ptr + row, scale)
    tl.store(xsum_ptr + row, total.to(tl.int32))


# -- weight operands of one field ----------------------------------------------------------------

@triton.jit
def _and_or16(lanes, MASK: tl.constexpr, MAGIC: tl.constexpr, BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """The bf16 (BF16) or fp16 whose bits are (lanes & MASK) | MAGIC, for 16-bit lanes: one `and.b32`
    (MAGIC = 0) or one `lop3.b32` per packed pair on the GPU."""
    SMASK: tl.constexpr = MASK - (MASK >> 15) * 65536  # the same 16 bits as a signed int16
    m = tl.full(lanes.shape, SMASK, tl.int16)
    g = tl.full(lanes.shape, MAGIC, tl.int16)
    if USE_ASM:
        if BF16:
            if MAGIC == 0:
                return tl.inline_asm_elementwise(ASM_AND16, "=r,r,r", [lanes, m], dtype=tl.bfloat16, is_pure=True,
                                                 pack=2)
            else:
                return tl.inline_asm_elementwise(ASM_AND_OR16, "=r,r,r,r", [lanes, m, g], dtype=tl.bfloat16,
                                                 is_pure=True, pack=2)
        else:
            if MAGIC == 0:
                return tl.inline_asm_elementwise(ASM_AND16, "=r,r,r", [lanes, m], dtype=tl.float16, is_pure=True,
                                                 pack=2)
            else:
                return tl.inline_asm_elementwise(ASM_AND_OR16, "=r,r,r,r", [lanes, m, g], dtype=tl.float16,
                                                 is_pure=True, pack=2)
    else:
        v = lanes & m
        if MAGIC != 0:
            v = v | g
        if BF16:
            return v.to(tl.bfloat16, bitcast=True)
        else:
            return v.to(tl.float16, bitcast=True)


@triton.jit
def _shift_down(lanes, SHIFT: tl.constexpr, USE_ASM: tl.constexpr):
    """Each 16-bit lane shifted right by SHIFT (6, 7, 8, 10 or 12). The GPU shifts packed pairs as one
    32-bit word, which fills the top SHIFT bits of the low lane from the high lane: callers mask them off."""
    if USE_ASM:
        if SHIFT == 6:
            return tl.inline_asm_elementwise(ASM_SHR6, "=r,r", [lanes], dtype=tl.int16, is_pure=True, pack=2)
        elif SHIFT == 7:
            return tl.inline_asm_elementwise(ASM_SHR7, "=r,r", [lanes], dtype=tl.int16, is_pure=True, pack=2)
        elif SHIFT == 8:
            return tl.inline_asm_elementwise(ASM_SHR8, "=r,r", [lanes], dtype=tl.int16, is_pure=True, pack=2)
        elif SHIFT == 10:
            return tl.inline_asm_elementwise(ASM_SHR10, "=r,r", [lanes], dtype=tl.int16, is_pure=True, pack=2)
        else:
            return tl.inline_asm_elementwise(ASM_SHR12, "=r,r", [lanes], dtype=tl.int16, is_pure=True, pack=2)
    else:
        return (lanes.to(tl.uint16, bitcast=True) >> SHIFT).to(tl.int16, bitcast=True)


@triton.jit
def _shifted_lanes(lanes, BITS: tl.constexpr, BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """The two shifted copies of the lanes the mask operands read (see _mask_operand)."""
    if BF16:
        if BITS == 2:
            return _shift_down(lanes, 6, USE_ASM), _shift_down(lanes, 12, USE_ASM)
        else:
            return _shift_down(lanes, 7, USE_ASM), _shift_down(lanes, 8, USE_ASM)
    else:
        sa = _shift_down(lanes, 8 if BITS == 2 else 10, USE_ASM)
        return sa, sa


@triton.jit
def _mask_operand(lanes, sa, sb, F: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """The 16-bit operand of field F: its bits ANDed out of the lanes or a shifted copy (sa, sb), at bit P
    (_field_pos). fp16: the value is c * 2^(P - 24), a subnormal. bf16 (whose subnormals products would
    underflow fp32): the exponent of 128.0 is OR-ed in, value 128 + c * 2^P. Top fields: the sign bit
    makes +-2 t (ternary, with the top exponent bit) or, with 1.0 OR-ed in, -s (binary)."""
    MAGIC: tl.constexpr = 0x4300 if BF16 else 0
    if BITS == 2:
        if F == 7:
            return _and_or16(lanes, 0xC000, 0, BF16, USE_ASM)
        elif BF16:
            if F < 3:
                return _and_or16(lanes, 3 << (2 * F), MAGIC, BF16, USE_ASM)
            elif F < 6:
                return _and_or16(sa, 3 << (2 * F - 6), MAGIC, BF16, USE_ASM)
            else:
                return _and_or16(sb, 3, MAGIC, BF16, USE_ASM)
        elif F < 5:
            return _and_or16(lanes, 3 << (2 * F), MAGIC, BF16, USE_ASM)
        else:
            return _and_or16(sa, 3 << (2 * F - 8), MAGIC, BF16, USE_ASM)
    else:
        if F == 15:
            return _and_or16(lanes, 0x8000, 0x3F80 if BF16 else 0x3C00, BF16, USE_ASM)
        elif BF16:
            if F < 7:
                return _and_or16(lanes, 1 << F, MAGIC, BF16, USE_ASM)
            elif F < 14:
                return _and_or16(sa, 1 << (F - 7), MAGIC, BF16, USE_ASM)
            else:
                return _and_or16(sb, 1 << 6, MAGIC, BF16, USE_ASM)
        elif F < 10:
            return _and_or16(lanes, 1 << F, MAGIC, BF16, USE_ASM)
        else:
            return _and_or16(sa, 1 << (F - 10), MAGIC, BF16, USE_ASM)


@triton.jit
def _field_dot(lanes, sa, sb, xt, acc, F: tl.constexpr, BITS: tl.constexpr, INT8_ACT: tl.constexpr,
               MASK: tl.constexpr, USE_ASM: tl.constexpr):
    """acc + (operand of field F) . xt, for rank-2 or rank-3 (batched) tiles.

    Under the interpreter (USE_ASM=False), whose bf16 dots are wrong, bf16 operands are widened to fp32
    first: exact, like the tensor cores' products.
    """
    if INT8_ACT:
        if F == 3:
            return tl.dot(lanes, xt, acc, out_dtype=tl.int32)
        else:
            return tl.dot(lanes & (3 << (2 * F)), xt, acc, out_dtype=tl.int32)
    elif MASK:
        w = _mask_operand(lanes, sa, sb, F, BITS, xt.dtype == tl.bfloat16, USE_ASM)
        if xt.dtype == tl.bfloat16 and not USE_ASM:
            return tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
        return tl.dot(w, xt, acc)
    else:  # fp32 activations: the field's integer value, exact FMA dots
        RPL: tl.constexpr = 16 // BITS
        u = lanes.to(tl.int32) & 0xFFFF
        c = (u >> (F * BITS)) & ((1 << BITS) - 1)
        if BITS == 1:
            w = c * 2 - 1
        elif F == RPL - 1:
            w = (c ^ 2) - 2
        else:
            w = c - 1
        return tl.dot(w.to(tl.float32), xt, acc, input_precision="ieee")


@triton.jit
def _ones_dot(ones, xt, acc, USE_ASM: tl.constexpr):
    """acc + ones . xt: every row gets sum(x) per column (fp32 under the interpreter for bf16, as in _field_dot)."""
    if xt.dtype == tl.bfloat16 and not USE_ASM:
        return tl.dot(ones.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(ones, xt, acc)


@triton.jit
def _low_field_dot(acc, sx, P: tl.constexpr, BF16: tl.constexpr):
    """sum(x * c) of a low field whose operand held c at bit P: acc * 2^(24 - P) (fp16 subnormals) or
    (acc - 128 sum(x)) * 2^-P (bf16, 128 + c 2^P)."""
    if BF16:
        return (acc - 128.0 * sx) * (2.0 ** (-P))
    else:
        return acc * (2.0 ** (24 - P))


@triton.jit
def _field_value(acc, sx, F: tl.constexpr, BITS: tl.constexpr, LANE_BITS: tl.constexpr, MASK: tl.constexpr,
                 BF16: tl.constexpr):
    """Undo field F's operand encoding (_mask_operand): the plain dot of its rows (before gamma / h, bias).

    MASK: the low fields' dot with c (ternary t + 1, binary b), from the field's bit position P in its
    operand (_low_field_dot); then t = c - 1 subtracts sum(x) and s = 2 b - 1 gives 2 dot - sum(x). The
    top field's operand is 2 t (ternary) or -s (binary). INT8_ACT keeps the low fields' raw dots
    (their shifts need the full-byte dot: _a8_values).
    """
    if MASK:
        if BITS == 2:
            if F == 7:
                return acc * 0.5
            if BF16:
                if F < 3:
                    return _low_field_dot(acc, sx, 2 * F, BF16) - sx
                elif F < 6:
                    return _low_field_dot(acc, sx, 2 * F - 6, BF16) - sx
                else:
                    return _low_field_dot(acc, sx, 0, BF16) - sx
            elif F < 5:
                return _low_field_dot(acc, sx, 2 * F, BF16) - sx
            else:
                return _low_field_dot(acc, sx, 2 * F - 8, BF16) - sx
        else:
            if F == 15:
                return -acc
            if BF16:
                if F < 7:
                    return 2.0 * _low_field_dot(acc, sx, F, BF16) - sx
                elif F < 14:
                    return 2.0 * _low_field_dot(acc, sx, F - 7, BF16) - sx
                else:
                    return 2.0 * _low_field_dot(acc, sx, 6, BF16) - sx
            elif F < 10:
                return 2.0 * _low_field_dot(acc, sx, F, BF16) - sx
            else:
                return 2.0 * _low_field_dot(acc, sx, F - 10, BF16) - sx
    else:
        return acc


# -- epilogue ---------------------------------------------------------------------------------------

@triton.jit
def _epilogue(pre, rm2, rn2, M, N, xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
              RPL: tl.constexpr, INT8_ACT: tl.constexpr, NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    """out[m, n] = pre (- sum(x_q) on the low fields, A8) * nscale[n] (/ xscale[m], A8) (+ bias[n]).

    `rm2` and `rn2` are index tensors that broadcast to pre's shape (either orientation), so a
    field tile [lanes, BM] is stored without a transpose.
    """
    m_ok = rm2 < M
    n_ok = rn2 < N
    if INT8_ACT:
        off = ((rn2 % RPL) != (RPL - 1)).to(tl.int32)
        pre = pre - tl.load(xsum_ptr + rm2, mask=m_ok, other=0) * off
    y = pre.to(tl.float32)
    if NSCALE_PER_N:
        y = y * tl.load(nscale_ptr + rn2, mask=n_ok, other=0.0).to(tl.float32)
    else:
        y = y * tl.load(nscale_ptr).to(tl.float32)
    if INT8_ACT:
        y = tl.math.div_rn(y, tl.zeros_like(y) + tl.load(xscale_ptr + rm2, mask=m_ok, other=1.0))
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn2, mask=n_ok, other=0.0).to(tl.float32)
    ptrs = out_ptr + rm2.to(tl.int64) * stride_om + rn2
    tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=m_ok & n_ok)


@triton.jit
def _finish_field(val, rl, rm, F: tl.constexpr, M, N, pid_k, xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr,
                  out_ptr, ws_ptr, stride_om, RPL: tl.constexpr, INT8_ACT: tl.constexpr,
                  NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Field F's rows of one tile, val [lanes, BM]: the epilogue, or a partial into ws [SPLIT_K, M, N]."""
    rn2 = (rl * RPL + F)[:, None]
    rm2 = rm[None, :]
    if SPLIT_K == 1:
        _epilogue(val, rm2, rn2, M, N, xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
                  RPL, INT8_ACT, NSCALE_PER_N, HAS_BIAS)
    else:
        ptrs = ws_ptr + pid_k.to(tl.int64) * M * N + rm2.to(tl.int64) * N + rn2
        tl.store(ptrs, val, mask=(rm2 < M) & (rn2 < N))


@triton.jit
def _a8_values(full, a0, a1, a2):
    """The four rows' integer dots of W1.58A8 lanes from the full-byte dot and the three masked ones:
    D0 = a0, D1 = a1 / 4, D2 = a2 / 16 (exact shifts), D3 = (full - a0 - a1 - a2) / 64."""
    return a0, a1 >> 2, a2 >> 4, (full - a0 - a1 - a2) >> 6


@triton.jit
def _finish_all(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, sx, rl, rm, M, N, pid_k,
                xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om,
                BITS: tl.constexpr, LANE_BITS: tl.constexpr, INT8_ACT: tl.constexpr, MASK: tl.constexpr,
                BF16: tl.constexpr, NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Every field's rows of one tile (a_f [lanes, BM]; `sx`: sum(x) per column for the fp16 masks,
    broadcastable to [lanes, BM])."""
    RPL: tl.constexpr = LANE_BITS // BITS
    if INT8_ACT:
        a0, a1, a2, a3 = _a8_values(a3, a0, a1, a2)  # a3 holds the full-byte dot
    _finish_field(_field_value(a0, sx, 0, BITS, LANE_BITS, MASK, BF16), rl, rm, 0, M, N, pid_k, xscale_ptr, xsum_ptr,
                  nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N, HAS_BIAS, SPLIT_K)
    _finish_field(_field_value(a1, sx, 1, BITS, LANE_BITS, MASK, BF16), rl, rm, 1, M, N, pid_k, xscale_ptr, xsum_ptr,
                  nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N, HAS_BIAS, SPLIT_K)
    _finish_field(_field_value(a2, sx, 2, BITS, LANE_BITS, MASK, BF16), rl, rm, 2, M, N, pid_k, xscale_ptr, xsum_ptr,
                  nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N, HAS_BIAS, SPLIT_K)
    _finish_field(_field_value(a3, sx, 3, BITS, LANE_BITS, MASK, BF16), rl, rm, 3, M, N, pid_k, xscale_ptr, xsum_ptr,
                  nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N, HAS_BIAS, SPLIT_K)
    if RPL > 4:
        _finish_field(_field_value(a4, sx, 4, BITS, LANE_BITS, MASK, BF16), rl, rm, 4, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a5, sx, 5, BITS, LANE_BITS, MASK, BF16), rl, rm, 5, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a6, sx, 6, BITS, LANE_BITS, MASK, BF16), rl, rm, 6, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a7, sx, 7, BITS, LANE_BITS, MASK, BF16), rl, rm, 7, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
    if RPL > 8:
        _finish_field(_field_value(a8, sx, 8, BITS, LANE_BITS, MASK, BF16), rl, rm, 8, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a9, sx, 9, BITS, LANE_BITS, MASK, BF16), rl, rm, 9, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a10, sx, 10, BITS, LANE_BITS, MASK, BF16), rl, rm, 10, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a11, sx, 11, BITS, LANE_BITS, MASK, BF16), rl, rm, 11, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a12, sx, 12, BITS, LANE_BITS, MASK, BF16), rl, rm, 12, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a13, sx, 13, BITS, LANE_BITS, MASK, BF16), rl, rm, 13, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a14, sx, 14, BITS, LANE_BITS, MASK, BF16), rl, rm, 14, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)
        _finish_field(_field_value(a15, sx, 15, BITS, LANE_BITS, MASK, BF16), rl, rm, 15, M, N, pid_k, xscale_ptr,
                      xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr, stride_om, RPL, INT8_ACT, NSCALE_PER_N,
                      HAS_BIAS, SPLIT_K)


@triton.jit
def _all_fields(lanes, xt, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
                BITS: tl.constexpr, LANE_BITS: tl.constexpr, INT8_ACT: tl.constexpr, MASK: tl.constexpr,
                USE_ASM: tl.constexpr):
    """One K step of every field's dot (W1.58A8: a3 takes the full-byte dot)."""
    RPL: tl.constexpr = LANE_BITS // BITS
    sa = lanes
    sb = lanes
    if MASK:
        sa, sb = _shifted_lanes(lanes, BITS, xt.dtype == tl.bfloat16, USE_ASM)
    a0 = _field_dot(lanes, sa, sb, xt, a0, 0, BITS, INT8_ACT, MASK, USE_ASM)
    a1 = _field_dot(lanes, sa, sb, xt, a1, 1, BITS, INT8_ACT, MASK, USE_ASM)
    a2 = _field_dot(lanes, sa, sb, xt, a2, 2, BITS, INT8_ACT, MASK, USE_ASM)
    a3 = _field_dot(lanes, sa, sb, xt, a3, 3, BITS, INT8_ACT, MASK, USE_ASM)
    if RPL > 4:
        a4 = _field_dot(lanes, sa, sb, xt, a4, 4, BITS, INT8_ACT, MASK, USE_ASM)
        a5 = _field_dot(lanes, sa, sb, xt, a5, 5, BITS, INT8_ACT, MASK, USE_ASM)
        a6 = _field_dot(lanes, sa, sb, xt, a6, 6, BITS, INT8_ACT, MASK, USE_ASM)
        a7 = _field_dot(lanes, sa, sb, xt, a7, 7, BITS, INT8_ACT, MASK, USE_ASM)
    if RPL > 8:
        a8 = _field_dot(lanes, sa, sb, xt, a8, 8, BITS, INT8_ACT, MASK, USE_ASM)
        a9 = _field_dot(lanes, sa, sb, xt, a9, 9, BITS, INT8_ACT, MASK, USE_ASM)
        a10 = _field_dot(lanes, sa, sb, xt, a10, 10, BITS, INT8_ACT, MASK, USE_ASM)
        a11 = _field_dot(lanes, sa, sb, xt, a11, 11, BITS, INT8_ACT, MASK, USE_ASM)
        a12 = _field_dot(lanes, sa, sb, xt, a12, 12, BITS, INT8_ACT, MASK, USE_ASM)
        a13 = _field_dot(lanes, sa, sb, xt, a13, 13, BITS, INT8_ACT, MASK, USE_ASM)
        a14 = _field_dot(lanes, sa, sb, xt, a14, 14, BITS, INT8_ACT, MASK, USE_ASM)
        a15 = _field_dot(lanes, sa, sb, xt, a15, 15, BITS, INT8_ACT, MASK, USE_ASM)
    return a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15


@triton.jit
def _scaled_x(xt, kscale_ptr, rk, k_ok, HAS_KSCALE: tl.constexpr):
    """x (or, for binary, x * g[k] rounded to x's dtype) as the B operand."""
    if HAS_KSCALE:
        g = tl.load(kscale_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
        return (xt.to(tl.float32) * g).to(xt.dtype)
    else:
        return xt


@triton.jit
def _sum_slices(a, S: tl.constexpr):
    """Sum of a [S, lanes, BM] accumulator over its K slices (S = 1, 2, 4 or 8), in a fixed order.

    Pairwise splits of a permuted view rather than tl.sum: Triton lowers a reduction over the warp
    axis of an MMA accumulator through several shared-memory rounds and shuffles per field, which
    cost more than the 16-field epilogue of a short split-K CTA can afford (perf/NOTES.md).
    """
    if S == 1:
        return tl.reshape(a, (a.shape[1], a.shape[2]))
    t = tl.permute(a, (1, 2, 0))
    if S == 4:
        t = tl.reshape(t, (t.shape[0], t.shape[1], 2, 2))
    elif S == 8:
        t = tl.reshape(t, (t.shape[0], t.shape[1], 2, 2, 2))
    p, q = tl.split(t)
    t = p + q
    if S >= 4:
        p, q = tl.split(t)
        t = p + q
    if S == 8:
        p, q = tl.split(t)
        t = p + q
    return t


# -- the kernels --------------------------------------------------------------------------------

@triton.jit
def _sign_gemv_kernel(x_ptr, xscale_ptr, xsum_ptr, qw_ptr, kscale_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr,
                      M, N, K, NL, stride_xm, stride_ql, stride_om,
                      BITS: tl.constexpr, LANE_BITS: tl.constexpr, INT8_ACT: tl.constexpr, MASK: tl.constexpr,
                      HAS_KSCALE: tl.constexpr, NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_KS: tl.constexpr, SLICES: tl.constexpr,
                      SPLIT_K: tl.constexpr, EVEN: tl.constexpr, USE_ASM: tl.constexpr):
    """Small M: grid (lane tiles, SPLIT_K, M tiles). `qw_ptr` points at the lanes (int8 or int16),
    `stride_ql` is a lane row's length in lanes. EVEN: every K step and lane tile is full (no masks).
    """
    pid_l = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    STEP: tl.constexpr = SLICES * BLOCK_KS
    rl = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rs = tl.arange(0, SLICES)
    rk = tl.arange(0, BLOCK_KS)
    k_span = tl.cdiv(tl.cdiv(K, SPLIT_K), STEP) * STEP
    k_lo = pid_k * k_span
    k_hi = tl.minimum(k_lo + k_span, K)
    kw = rs[:, None, None] * BLOCK_KS + rk[None, None, :]  # [S, 1, BKS]: k offsets of the weight tile
    kx = rs[:, None, None] * BLOCK_KS + rk[None, :, None]  # [S, BKS, 1]: k offsets of x^T
    lane_ptrs = qw_ptr + rl[None, :, None].to(tl.int64) * stride_ql + kw
    x_ptrs = x_ptr + rm[None, None, :].to(tl.int64) * stride_xm + kx
    l_ok = rl[None, :, None] < NL
    m_ok = rm[None, None, :] < M
    if INT8_ACT:
        acc = tl.zeros((SLICES, BLOCK_L, BLOCK_M), dtype=tl.int32)
    else:
        acc = tl.zeros((SLICES, BLOCK_L, BLOCK_M), dtype=tl.float32)
    a0 = acc
    a1 = acc
    a2 = acc
    a3 = acc
    a4 = acc
    a5 = acc
    a6 = acc
    a7 = acc
    a8 = acc
    a9 = acc
    a10 = acc
    a11 = acc
    a12 = acc
    a13 = acc
    a14 = acc
    a15 = acc
    sacc = tl.zeros((SLICES, BLOCK_L, BLOCK_M), dtype=tl.float32)  # every lane row: sum(x) of its slice
    for k0 in range(k_lo, k_hi, STEP):
        if EVEN:
            lanes = tl.load(lane_ptrs + k0)
            xt = tl.load(x_ptrs + k0, mask=m_ok, other=0)
            k_ok = kx >= 0
        else:
            lanes = tl.load(lane_ptrs + k0, mask=l_ok & (k0 + kw < K), other=0)
            k_ok = k0 + kx < K
            xt = tl.load(x_ptrs + k0, mask=m_ok & k_ok, other=0)
        xt = _scaled_x(xt, kscale_ptr, k0 + kx, k_ok, HAS_KSCALE)
        if MASK:
            sacc = _ones_dot(tl.full((SLICES, BLOCK_L, BLOCK_KS), 1.0, xt.dtype), xt, sacc, USE_ASM)
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 = _all_fields(
            lanes, xt, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
            BITS, LANE_BITS, INT8_ACT, MASK, USE_ASM)
    S: tl.constexpr = SLICES
    sx = _sum_slices(sacc, S)
    _finish_all(_sum_slices(a0, S), _sum_slices(a1, S), _sum_slices(a2, S), _sum_slices(a3, S),
                _sum_slices(a4, S), _sum_slices(a5, S), _sum_slices(a6, S), _sum_slices(a7, S),
                _sum_slices(a8, S), _sum_slices(a9, S), _sum_slices(a10, S), _sum_slices(a11, S),
                _sum_slices(a12, S), _sum_slices(a13, S), _sum_slices(a14, S), _sum_slices(a15, S), sx, rl, rm, M, N, pid_k, xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr,
                stride_om, BITS, LANE_BITS, INT8_ACT, MASK, x_ptr.dtype.element_ty == tl.bfloat16, NSCALE_PER_N,
                HAS_BIAS, SPLIT_K)


@triton.jit
def _sign_gemm_kernel(x_ptr, xscale_ptr, xsum_ptr, qw_ptr, kscale_ptr, nscale_ptr, bias_ptr, out_ptr,
                      M, N, K, NL, stride_xm, stride_ql, stride_om,
                      BITS: tl.constexpr, LANE_BITS: tl.constexpr, INT8_ACT: tl.constexpr, MASK: tl.constexpr,
                      HAS_KSCALE: tl.constexpr, NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      EVEN: tl.constexpr, USE_ASM: tl.constexpr):
    """Large M: one [BLOCK_L lanes, BLOCK_M] tile of out^T per program, grouped tile order."""
    pid_m, pid_l = grouped_tile(tl.program_id(0), M, NL, BLOCK_M, BLOCK_L, GROUP_M)
    rl = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    lane_ptrs = qw_ptr + rl[:, None].to(tl.int64) * stride_ql + rk[None, :]
    x_ptrs = x_ptr + rm[None, :].to(tl.int64) * stride_xm + rk[:, None]
    l_ok = rl[:, None] < NL
    m_ok = rm[None, :] < M
    if INT8_ACT:
        acc = tl.zeros((BLOCK_L, BLOCK_M), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_L, BLOCK_M), dtype=tl.float32)
    a0 = acc
    a1 = acc
    a2 = acc
    a3 = acc
    a4 = acc
    a5 = acc
    a6 = acc
    a7 = acc
    a8 = acc
    a9 = acc
    a10 = acc
    a11 = acc
    a12 = acc
    a13 = acc
    a14 = acc
    a15 = acc
    sacc = tl.zeros((16, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN:
            lanes = tl.load(lane_ptrs + k0)
            xt = tl.load(x_ptrs + k0, mask=m_ok, other=0)
            k_ok = rk[:, None] >= 0
        else:
            k_ok = k0 + rk[:, None] < K
            lanes = tl.load(lane_ptrs + k0, mask=l_ok & (k0 + rk[None, :] < K), other=0)
            xt = tl.load(x_ptrs + k0, mask=m_ok & k_ok, other=0)
        xt = _scaled_x(xt, kscale_ptr, k0 + rk[:, None], k_ok, HAS_KSCALE)
        if MASK:
            sacc = _ones_dot(tl.full((16, BLOCK_K), 1.0, xt.dtype), xt, sacc, USE_ASM)
        a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15 = _all_fields(
            lanes, xt, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
            BITS, LANE_BITS, INT8_ACT, MASK, USE_ASM)
    sx = tl.sum(sacc, axis=0) * (1.0 / 16)
    _finish_all(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, sx[None, :], rl, rm, M, N, 0,
                xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, out_ptr, stride_om,
                BITS, LANE_BITS, INT8_ACT, MASK, x_ptr.dtype.element_ty == tl.bfloat16, NSCALE_PER_N, HAS_BIAS, 1)


@triton.jit
def _sign_reduce_kernel(ws_ptr, xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, M, N, stride_om,
                        SPLIT_K: tl.constexpr, RPL: tl.constexpr, INT8_ACT: tl.constexpr,
                        NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """Sum the SPLIT_K partials of one [BLOCK_M, BLOCK_N] tile in split order, then the epilogue."""
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT8_ACT:
        acc = sum_splits(ws_ptr, rm, rn, M, N, SPLIT_K, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32))
    else:
        acc = sum_splits(ws_ptr, rm, rn, M, N, SPLIT_K, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
    _epilogue(acc, rm[:, None], rn[None, :], M, N, xscale_ptr, xsum_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
              RPL, INT8_ACT, NSCALE_PER_N, HAS_BIAS)
