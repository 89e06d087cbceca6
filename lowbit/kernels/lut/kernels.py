"""Triton kernels for lookup-table weights: W[n, k] = TABLE[n, q[k, n]] (* SCALE[k // GROUP, n]).

One pair of kernels serves lut3/lut4/sq3/sq4 (a per-row table, ``tab_stride_n = 2^b``, no
scale) and nf4 (one shared 16-entry table, ``tab_stride_n = 0``, times the block absmax).
Codes come in the shared packing (lowbit/reference/packing.py): int32 words ``[Kw, N]``. 4-bit:
word ``w`` of column ``n`` holds ``k = w*VPW + i`` at bit ``i*BITS`` (VPW = 8). 3-bit: blocks of
32 codes in 3 words; the kernels treat a block as one "word" of VPW = 32 codes and read each
code with :func:`_code3`.

- :func:`_lut_gemv_kernel` (small M, memory-bound): a K tile is ``BLOCK_K`` *slots*, ``SLOTS``
  per word (VPW rounded up to a power of two), so each word is loaded once per column and
  3-bit words decode with one shift and one mask; padding slots are masked out. FMA in fp32,
  no tensor cores; split-K partial sums go to an fp32 buffer with atomics.
- :func:`_lut_gemm_kernel` (large M): tensor-core tiles; the dequantized [BLOCK_K, BLOCK_N]
  tile is built in registers in the K loop and fed to ``tl.dot`` in the activation dtype
  (fp32 activations use exact ``input_precision="ieee"`` dots).

The table gather ``TABLE[n, q]`` is a global load that hits L1 (a row block's tables are
BLOCK_N * 2^b values). Bias is added in the epilogue by split 0 only; the output pointer's
element type (the activation dtype, or fp32 for the sparse/split-K accumulator) sets the cast.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..jit import add_bias, grouped_tile, store_tile


@triton.jit
def _code3(qw_ptr, k, offs_n, mask, N):
    """3-bit codes [len(k), BLOCK_N] of inputs k in the 32-codes-in-3-words layout (three word loads)."""
    blk = k // 32
    r = k % 32
    shift = 3 * ((r // 2) % 5) + 16 * (r % 2)
    base = qw_ptr + (3 * blk)[:, None] * N + offs_n[None, :]
    w0 = tl.load(base, mask=mask, other=0)
    w1 = tl.load(base + N, mask=mask, other=0)
    w2 = tl.load(base + 2 * N, mask=mask, other=0)
    j = (r // 10)[:, None]  # word of the field (pair r // 2, five pairs per word)
    field = (tl.where(j == 0, w0, tl.where(j == 1, w1, w2)) >> shift[:, None]) & 7
    top = tl.where(r == 30, 15, 31)[:, None]  # codes 30 and 31: bit j in the top bit of word j's half
    spread = ((w0 >> top) & 1) | (((w1 >> top) & 1) << 1) | (((w2 >> top) & 1) << 2)
    return tl.where((r < 30)[:, None], field, spread)


@triton.jit
def _decode_tile(qw_ptr, tab_ptr, scale_ptr, widx, shift, k, k0, kmask, offs_n, nmask, N,
                 tab_stride_n, BITS: tl.constexpr, GROUP: tl.constexpr, HAS_SCALE: tl.constexpr,
                 SCALE_ROW: tl.constexpr):
    """The fp32 weight tile [len(widx), BLOCK_N] for codes in words `widx` at bit offsets `shift`.

    With SCALE_ROW the whole K span of the tile (starting at k0) lies in one scale group, so
    the scale is one [BLOCK_N] vector load instead of a gather per element.
    """
    mask = kmask[:, None] & nmask[None, :]
    if BITS == 3:
        q = _code3(qw_ptr, k, offs_n, mask, N)
    else:
        words = tl.load(qw_ptr + widx[:, None] * N + offs_n[None, :], mask=mask, other=0)
        q = (words >> shift[:, None]) & ((1 << BITS) - 1)
    val = tl.load(tab_ptr + offs_n[None, :] * tab_stride_n + q, mask=mask, other=0.0).to(tl.float32)
    if HAS_SCALE:
        if SCALE_ROW:  # always the case for GROUP == 0 (per channel: one group)
            g0 = k0 * 0
            if GROUP != 0:
                g0 = k0 // GROUP
            s = tl.load(scale_ptr + g0 * N + offs_n, mask=nmask, other=0.0)
            val = val * s.to(tl.float32)[None, :]
        else:
            g = k // GROUP
            s = tl.load(scale_ptr + g[:, None] * N + offs_n[None, :], mask=mask, other=0.0)
            val = val * s.to(tl.float32)
    return tl.where(mask, val, 0.0)


@triton.jit
def _lut_gemv_kernel(x_ptr, qw_ptr, tab_ptr, scale_ptr, bias_ptr, out_ptr,
                    M, N, K, KW, stride_xm, stride_om, stride_on, tab_stride_n, words_per_split,
                    BITS: tl.constexpr, VPW: tl.constexpr, SLOTS: tl.constexpr, GROUP: tl.constexpr,
                    HAS_SCALE: tl.constexpr, SCALE_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Split-K GEMV: program (n block, K split, m block) accumulates x[m, k] * W[n, k] in fp32."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m < M
    nmask = offs_n < N
    slot = tl.arange(0, BLOCK_K)
    w_local = slot // SLOTS
    lane = slot % SLOTS
    live_lane = lane < VPW
    shift = tl.where(live_lane, lane, 0) * BITS
    w_begin = pid_s * words_per_split
    w_end = tl.minimum(w_begin + words_per_split, KW)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for w0 in range(w_begin, w_end, BLOCK_K // SLOTS):
        widx = w0 + w_local
        k = widx * VPW + lane
        kmask = live_lane & (widx < w_end) & (k < K)
        w = _decode_tile(qw_ptr, tab_ptr, scale_ptr, widx, shift, k, w0 * VPW, kmask, offs_n, nmask, N,
                         tab_stride_n, BITS, GROUP, HAS_SCALE, SCALE_ROW)
        xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :],
                     mask=mmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(xv[:, :, None] * w[None, :, :], axis=1)
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)
        acc += tl.where(pid_s == 0, b, 0.0)[None, :]  # once, by split 0
    optr = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    omask = mmask[:, None] & nmask[None, :]
    if ATOMIC:
        tl.atomic_add(optr, acc, mask=omask)
    else:
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _add_tile_outliers(w, tile_ptr, kl_ptr, nl_ptr, sv_ptr, t, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       CHUNK: tl.constexpr, IEEE_DOT: tl.constexpr):
    """w [BLOCK_K, BLOCK_N] += the outliers of tile t, scattered by a one-hot product A @ B.

    A[k, j] = val_j where k_j == k, B[j, n] = 1 where n_j == n; each (k, n) holds at most one
    outlier, so the fp16 tensor-core product is exact (fp32 activations use an ieee dot).
    """
    start = tl.load(tile_ptr + t)
    end = tl.load(tile_ptr + t + 1)
    rk = tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    for j0 in range(start, end, CHUNK):
        j = j0 + tl.arange(0, CHUNK)
        live = j < end
        kl = tl.load(kl_ptr + j, mask=live, other=-1)
        nl = tl.load(nl_ptr + j, mask=live, other=-1)
        v = tl.load(sv_ptr + j, mask=live, other=0.0)
        if IEEE_DOT:
            a = tl.where(rk[:, None] == kl[None, :], v.to(tl.float32)[None, :], 0.0)
            b = tl.where(nl[:, None] == rn[None, :], 1.0, 0.0)
            w += tl.dot(a, b, input_precision="ieee")
        else:
            a = tl.where(rk[:, None] == kl[None, :], v.to(tl.float16)[None, :], 0.0).to(tl.float16)
            b = tl.where(nl[:, None] == rn[None, :], 1.0, 0.0).to(tl.float16)
            w += tl.dot(a, b)
    return w


@triton.jit
def _lut_gemm_kernel(x_ptr, qw_ptr, tab_ptr, scale_ptr, bias_ptr, out_ptr,
                    tile_ptr, kl_ptr, nl_ptr, sv_ptr,
                    M, N, K, stride_xm, stride_om, stride_on, tab_stride_n,
                    BITS: tl.constexpr, VPW: tl.constexpr, GROUP: tl.constexpr,
                    HAS_SCALE: tl.constexpr, SCALE_ROW: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE_DOT: tl.constexpr,
                    HAS_SPARSE: tl.constexpr, SPARSE_CHUNK: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_M: tl.constexpr):
    """Tensor-core GEMM with the LUT dequantization in the K loop (grouped tile order).

    With HAS_SPARSE, the sq outliers of each [BLOCK_K, BLOCK_N] weight tile (a per-tile COO
    list from launch.tile_outliers) are added to the dequantized tile before the dot.
    """
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    num_n = tl.cdiv(N, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = offs_m < M
    nmask = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K
        xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :],
                     mask=mmask[:, None] & kmask[None, :], other=0.0)
        w = _decode_tile(qw_ptr, tab_ptr, scale_ptr, k // VPW, (k % VPW) * BITS, k, k0, kmask, offs_n,
                         nmask, N, tab_stride_n, BITS, GROUP, HAS_SCALE, SCALE_ROW)
        if HAS_SPARSE:
            w = _add_tile_outliers(w, tile_ptr, kl_ptr, nl_ptr, sv_ptr, (k0 // BLOCK_K) * num_n + pid_n,
                                   BLOCK_K, BLOCK_N, SPARSE_CHUNK, IEEE_DOT)
        if IEEE_DOT:
            acc += tl.dot(xv.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(xv, w.to(xv.dtype))
    if HAS_BIAS:
        acc = add_bias(acc, bias_ptr, offs_n, N)
    store_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, stride_on)


@triton.jit
def _lut_outlier_kernel(x_ptr, row_ptr_ptr, col_ptr, val_ptr, acc_ptr,
                       M, N, K, NNZ, stride_xm, stride_am, search_steps,
                       BLOCK_NNZ: tl.constexpr, BLOCK_M: tl.constexpr):
    """acc[m, row(j)] += x[m, col[j]] * val[j] for one chunk of nonzeros and one block of rows."""
    pid = tl.program_id(0)
    pid_m = tl.program_id(1)
    j = pid * BLOCK_NNZ + tl.arange(0, BLOCK_NNZ)
    live = j < NNZ
    col = tl.load(col_ptr + j, mask=live, other=0)
    val = tl.load(val_ptr + j, mask=live, other=0.0).to(tl.float32)
    live = live & (col >= 0) & (col < K)
    # largest r in [0, N) with row_ptr[r] <= j: invariant lo < hi, answer in [lo, hi)
    lo = tl.zeros((BLOCK_NNZ,), dtype=tl.int32)
    hi = tl.zeros((BLOCK_NNZ,), dtype=tl.int32) + N
    for _ in range(search_steps):
        active = hi - lo > 1
        mid = (lo + hi) // 2
        rp = tl.load(row_ptr_ptr + mid, mask=active, other=0)
        right = rp <= j
        lo = tl.where(active & right, mid, lo)
        hi = tl.where(active & (~right), mid, hi)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (offs_m < M)[:, None] & live[None, :]
    xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + col[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(acc_ptr + offs_m[:, None] * stride_am + lo[None, :], xv * val[None, :], mask=mask)
