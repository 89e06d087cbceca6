"""Triton kernels for sign-like weight codes: BitNet ternary (2-bit codes t+1) and OneBit binary (1 bit).

Both schemes store a weight element as a small code whose value is an integer in {-1, 0, 1}
(ternary) or {-1, +1} (binary), with scales outside the dot: a per-output-column scale
(ternary gamma, binary h) and, for binary only, a per-input scale g[K] that is folded into
the weight tile (sign * g is exact in the weight's own float type). The same three kernels
serve ternary W1.58A8 (int8 activations, int32 accumulation), ternary W1.58A16 and binary:

* ``_sign_quant_kernel``: per-token absmax int8 activation quantization (BitNet b1.58).
* ``_sign_gemv_kernel``: small-M, memory-bound; every packed word is loaded once and decoded
  shift by shift; optional split-K writes partials to a workspace.
* ``_sign_gemm_kernel``: large-M tensor-core tiles; the word tile is expanded to a [BLOCK_K,
  BLOCK_N] operand in registers (int8 for A8, x's dtype otherwise) inside the K loop.
* ``_sign_reduce_kernel``: sums split-K partials in a fixed order and runs the epilogue.

Layout read (lowbit.reference.packing): qweight [Kw, N] int32, N contiguous; code of (k, n)
sits in word k // VPW at bit offset (k % VPW) * BITS, VPW = 32 // BITS.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..jit import add_bias, grouped_tile, store_tile, sum_splits


@triton.jit
def _round_half_even(v):
    """torch.round semantics (ties to even) from floor and a tie fix; exact for every fp32 input."""
    a = tl.abs(v)
    f = tl.floor(a)
    d = a - f  # exact: for a >= 1, f is within a factor 2 of a (Sterbenz); for a < 1, f = 0
    half = f * 0.5
    f_odd = (half - tl.floor(half)) != 0.0
    up = (d > 0.5) | ((d == 0.5) & f_odd)
    r = tl.where(up, f + 1.0, f)
    return tl.where(v < 0.0, -r, r)


@triton.jit
def _quantize_row_tile(x_row, q_row, rk, K, scale):
    mask = rk < K
    v = tl.load(x_row + rk, mask=mask, other=0.0).to(tl.float32)
    q = _round_half_even(v * scale)
    q = tl.minimum(tl.maximum(q, -128.0), 127.0)
    tl.store(q_row + rk, q.to(tl.int8), mask=mask)


@triton.jit
def _sign_quant_kernel(x_ptr, xq_ptr, scale_ptr, K, stride_xm, stride_qm,
                          BLOCK_K: tl.constexpr, ONE_TILE: tl.constexpr):
    """One program per row: scale = 127 / max(absmax, 1e-5) (IEEE division), x_q = clip(rne(x * scale))."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = xq_ptr + row * stride_qm
    rk = tl.arange(0, BLOCK_K)
    if ONE_TILE:
        v = tl.load(x_row + rk, mask=rk < K, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(v), axis=0)
    else:
        run = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            v = tl.load(x_row + k0 + rk, mask=k0 + rk < K, other=0.0).to(tl.float32)
            run = tl.maximum(run, tl.abs(v))
        amax = tl.max(run, axis=0)
    # `/` lowers to an approximate division on NVIDIA GPUs; div_rn is IEEE round-to-nearest,
    # which is what torch computes for 127.0 / amax in the reference.
    scale = tl.math.div_rn(127.0, tl.maximum(amax, 1e-5))
    if ONE_TILE:
        q = _round_half_even(v * scale)
        q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        tl.store(q_row + rk, q.to(tl.int8), mask=rk < K)
    else:
        for k0 in range(0, K, BLOCK_K):
            _quantize_row_tile(x_row, q_row, k0 + rk, K, scale)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _decode(words, shift, BITS: tl.constexpr):
    """Integer weight value of the code at `shift`: ternary t = code - 1, binary s = 2 * bit - 1."""
    code = (words >> shift) & ((1 << BITS) - 1)
    if BITS == 2:
        return code - 1
    else:
        return code * 2 - 1


@triton.jit
def _epilogue(acc, rm, rn, M, N, xscale_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
              INT8_ACT: tl.constexpr, NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y = acc * nscale[n] (/ xscale[m] for A8) (+ bias[n]), cast to out's dtype, masked store."""
    m_ok = rm < M
    n_ok = rn < N
    y = acc.to(tl.float32)
    if NSCALE_PER_N:
        s = tl.load(nscale_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        y = y * s[None, :]
    else:
        y = y * tl.load(nscale_ptr).to(tl.float32)
    if INT8_ACT:
        xs = tl.load(xscale_ptr + rm, mask=m_ok, other=1.0)
        y = tl.math.div_rn(y, tl.zeros_like(y) + xs[:, None])
    if HAS_BIAS:
        y = add_bias(y, bias_ptr, rn, N)
    store_tile(out_ptr, y, rm, rn, M, N, stride_om, 1)


@triton.jit
def _sign_gemv_kernel(x_ptr, xscale_ptr, qw_ptr, kscale_ptr, nscale_ptr, bias_ptr, out_ptr, ws_ptr,
                      M, N, K, Kw, stride_xm, stride_om,
                      BITS: tl.constexpr, INT8_ACT: tl.constexpr, HAS_KSCALE: tl.constexpr,
                      NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
                      SPLIT_K: tl.constexpr):
    """Small-M path: grid (N tiles, SPLIT_K, M tiles); each word is loaded once and decoded VPW times.

    Products accumulate in a [BLOCK_M, BLOCK_KW, BLOCK_N] register tile reduced once after the
    K loop (int32 for A8, fp32 otherwise). SPLIT_K > 1 stores partials to ws [SPLIT_K, M, N].
    """
    VPW: tl.constexpr = 32 // BITS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    kw_span = tl.cdiv(tl.cdiv(Kw, SPLIT_K), BLOCK_KW) * BLOCK_KW
    kw_lo = pid_k * kw_span
    kw_hi = tl.minimum(kw_lo + kw_span, Kw)
    if INT8_ACT:
        acc = tl.zeros((BLOCK_M, BLOCK_KW, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_KW, BLOCK_N), dtype=tl.float32)
    for kw0 in range(kw_lo, kw_hi, BLOCK_KW):
        rkw = kw0 + tl.arange(0, BLOCK_KW)
        kw_ok = rkw < kw_hi
        words = tl.load(qw_ptr + rkw[:, None] * N + rn[None, :], mask=kw_ok[:, None] & n_ok[None, :], other=0)
        for i in range(VPW):  # a runtime loop: unrolled, the x loads of all shifts are hoisted and spill
            rk = rkw * VPW + i
            k_ok = rk < K
            xi = tl.load(x_rows + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
            w = _decode(words, i * BITS, BITS)
            if INT8_ACT:
                acc += xi.to(tl.int32)[:, :, None] * w[None, :, :]
            else:
                wf = w.to(tl.float32)
                if HAS_KSCALE:
                    g = tl.load(kscale_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
                    wf = wf * g[:, None]
                acc += xi.to(tl.float32)[:, :, None] * wf[None, :, :]
    tot = tl.sum(acc, axis=1)
    if SPLIT_K == 1:
        _epilogue(tot, rm, rn, M, N, xscale_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
                  INT8_ACT, NSCALE_PER_N, HAS_BIAS)
    else:
        store_tile(ws_ptr + pid_k.to(tl.int64) * M * N, tot, rm, rn, M, N, N, 1)


@triton.jit
def _sign_reduce_kernel(ws_ptr, xscale_ptr, nscale_ptr, bias_ptr, out_ptr, M, N, stride_om,
                        SPLIT_K: tl.constexpr, INT8_ACT: tl.constexpr, NSCALE_PER_N: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Sum the SPLIT_K partials of one [BLOCK_M, BLOCK_N] tile in split order, then the epilogue."""
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT8_ACT:
        acc = sum_splits(ws_ptr, rm, rn, M, N, SPLIT_K, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32))
    else:
        acc = sum_splits(ws_ptr, rm, rn, M, N, SPLIT_K, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
    _epilogue(acc, rm, rn, M, N, xscale_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
              INT8_ACT, NSCALE_PER_N, HAS_BIAS)


@triton.jit
def _sign_gemm_kernel(x_ptr, xscale_ptr, qw_ptr, kscale_ptr, nscale_ptr, bias_ptr, out_ptr,
                      M, N, K, stride_xm, stride_om,
                      BITS: tl.constexpr, INT8_ACT: tl.constexpr, HAS_KSCALE: tl.constexpr,
                      NSCALE_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr):
    """Large-M path: grouped tile order, tensor-core tl.dot per K step on the decoded weight tile.

    A8: int8 x_q times int8 ternary tile, int32 accumulator. A16/binary: x's dtype (fp32 with
    input_precision="ieee"), fp32 accumulator. The packed words of a K step are loaded once as
    [BLOCK_K // VPW, BLOCK_N] and expanded by shifts into [BLOCK_K, BLOCK_N].
    """
    VPW: tl.constexpr = 32 // BITS
    BLOCK_KW: tl.constexpr = BLOCK_K // VPW
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    shifts = tl.arange(0, VPW) * BITS
    if INT8_ACT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        a = tl.load(x_rows + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0)
        rkw = k0 // VPW + tl.arange(0, BLOCK_KW)
        kw_ok = rkw * VPW < K
        words = tl.load(qw_ptr + rkw[:, None] * N + rn[None, :], mask=kw_ok[:, None] & n_ok[None, :], other=0)
        w = _decode(words[:, None, :], shifts[None, :, None], BITS)
        w = tl.reshape(w, (BLOCK_K, BLOCK_N))
        if INT8_ACT:
            acc = tl.dot(a, w.to(tl.int8), acc, out_dtype=tl.int32)
        else:
            if HAS_KSCALE:
                g = tl.load(kscale_ptr + rk, mask=k_ok, other=0.0).to(tl.float32)
                b = (w.to(tl.float32) * g[:, None]).to(x_ptr.dtype.element_ty)
            else:
                b = w.to(x_ptr.dtype.element_ty)
            if x_ptr.dtype.element_ty == tl.float32:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
    _epilogue(acc, rm, rn, M, N, xscale_ptr, nscale_ptr, bias_ptr, out_ptr, stride_om,
              INT8_ACT, NSCALE_PER_N, HAS_BIAS)
