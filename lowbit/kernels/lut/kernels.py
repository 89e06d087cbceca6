"""Triton kernels for lookup-table weights: W[n, k] = TABLE[n, q[k, n]] (* SCALE[k // GROUP, n]).

One set of kernels serves lut3/lut4/sq3/sq4 (a per-row table, ``tab_stride_n = 2^b``, no
scale) and nf4 (one shared 16-entry table, ``tab_stride_n = 0``, times the block absmax).

The packing interface. Only these helpers read packed words: :func:`_load_words` + :func:`_codes`
(the codes of K tile t as [BLOCK_K, BLOCK_N]), their transposed twins :func:`_load_words_t` +
:func:`_codes_t` ([BLOCK_N, BLOCK_K]), and :func:`_tile_k` (the input k of each tile row and whether
the row holds a code); on the host, ``configs.lanes`` / ``configs.tile_span`` / ``configs.num_k_tiles``
say how many rows, inputs and tiles that is. Everything else sees a K tile as BLOCK_K rows of codes,
so a new 3-bit packing (exact 3.0 bits per code) replaces these five helpers and those three
functions. The layout (lowbit/reference/packing.py): int32 words ``[Kw, N]`` in packed *units* along K:
a unit is one word holding ``k = w*VPW + i`` at bit ``i*BITS`` (4-bit: VPW = 8), or, for 3-bit codes,
a block of 3 words holding 32 codes (exactly 3.0 bits per code, UW = 3 words per unit). A tile is
KW = BLOCK_K / LANES units, LANES = codes per unit. Each word is loaded once and split into its
codes by broadcast shifts.

- :func:`_lut_gemv_kernel` (small M, CUDA cores, fp32 FMA). With split-K it writes fp32 partials
  to a workspace ``[split, M, N]``. (M <= 16 with fp16 x and 3- or 4-bit codes runs the tensor-core GEMV of
  mma_gemv.py instead; :func:`_lut_mma_twin_kernel` is its interpreter twin.)
- :func:`_lut_finish_kernel`: the split-K sum in split order (deterministic) + the sq outliers of
  whole rows (CSR: a program's rows and each row's nonzeros in stored order, no search, no atomics)
  + bias + cast.
- :func:`_lut_gemm_kernel` (larger M): tensor-core tiles; the weight tile is decoded as
  [BLOCK_N, BLOCK_K] (whole words per thread along K, so it reaches shared memory in vector stores)
  and fed to ``tl.dot`` transposed; x tiles are pipelined (cp.async) by num_stages. sq outliers are
  added by the finish kernel.
- :func:`_lut_dequant_kernel` + :func:`_lut_scatter_kernel` + :func:`_lut_dense_gemm_kernel`: the
  large-M route of nf4, 3-bit and sq weights (decode once into an x-dtype buffer, add the outliers
  by row, dense GEMM).

The table gather ``TABLE[n, q]`` is a global load that hits L1. Offsets that scale with M, K or
N (activation and output rows, word rows, the split workspace, the decoded buffer) are 64-bit.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..jit import add_bias, grouped_tile, store_tile, sum_splits


# -- the packing interface: the codes of one K tile and the input k of each of its rows ----------
@triton.jit
def _load_words(w_ptrs, t, t_end, KW_TOTAL, N, KW: tl.constexpr, UW: tl.constexpr):
    """The int32 words of K tile `t` as a triple of [KW, BLOCK_N] tiles (zeros when t >= t_end or past the
    last unit). A tile is KW packed units; a unit is one word (UW = 1: the triple repeats it) or, for
    3-bit codes, a block of UW = 3 words (word j of each block in the j-th tile).

    `w_ptrs` = qw_ptr + r * UW * N + n for the tile's unit rows r < KW; the tile's base word row
    t * KW * UW is added in 64 bits, so Kw * N may pass 2^31.
    """
    wi = t * KW + tl.arange(0, KW)
    ok = (wi < KW_TOTAL) & (wi < t_end * KW)  # vector compares only (the interpreter mistypes scalar ones)
    mask = tl.broadcast_to(ok[:, None], w_ptrs.shape)
    base = w_ptrs + tl.cast(t * KW * UW, tl.int64) * N
    w0 = tl.load(base, mask=mask, other=0)
    if UW == 1:
        return w0, w0, w0
    else:
        return w0, tl.load(base + N, mask=mask, other=0), tl.load(base + 2 * N, mask=mask, other=0)


@triton.jit
def _load_words_t(w_ptrs, t, t_end, KW_TOTAL, N, KW: tl.constexpr, UW: tl.constexpr):
    """As _load_words, transposed: [BLOCK_N, KW] tiles (w_ptrs = qw_ptr + r * UW * N + n laid out [BLOCK_N, KW])."""
    wi = t * KW + tl.arange(0, KW)
    ok = (wi < KW_TOTAL) & (wi < t_end * KW)
    mask = tl.broadcast_to(ok[None, :], w_ptrs.shape)
    base = w_ptrs + tl.cast(t * KW * UW, tl.int64) * N
    w0 = tl.load(base, mask=mask, other=0)
    if UW == 1:
        return w0, w0, w0
    else:
        return w0, tl.load(base + N, mask=mask, other=0), tl.load(base + 2 * N, mask=mask, other=0)


@triton.jit
def _three_bit_codes(w0, w1, w2):
    """The 32 codes of 3-bit blocks, [..., 32, ...] between the block axis (0) and the column axis (-1), from
    the block's three words (lowbit.reference.packing: pair J = r // 2 of codes 0..29 in word J // 5 at bit
    3 (J % 5) + 16 (r % 2); codes 30 and 31 spread over bit 15 / 31 of the three words)."""
    r = tl.arange(0, 32)
    shift = (3 * ((r // 2) % 5) + 16 * (r % 2))[None, :, None]
    j = (r // 10)[None, :, None]
    a, b, c = w0[:, None, :], w1[:, None, :], w2[:, None, :]
    field = tl.where(j == 0, a >> shift, tl.where(j == 1, b >> shift, c >> shift)) & 7
    top = tl.where(r == 30, 15, 31)[None, :, None]
    spread = ((a >> top) & 1) | (((b >> top) & 1) << 1) | (((c >> top) & 1) << 2)
    return tl.where((r < 30)[None, :, None], field, spread)


@triton.jit
def _codes_t(w0, w1, w2, BITS: tl.constexpr, VPW: tl.constexpr, LANES: tl.constexpr, BLOCK_K: tl.constexpr,
             BLOCK_N: tl.constexpr):
    """As _codes, transposed: [BLOCK_N, KW] units -> [BLOCK_N, BLOCK_K] codes (column = unit * LANES + lane)."""
    if BITS == 3:
        q = tl.permute(_three_bit_codes(tl.trans(w0), tl.trans(w1), tl.trans(w2)), (2, 0, 1))
    else:
        lane = tl.arange(0, LANES)
        shift = tl.where(lane < VPW, lane * BITS, 0)
        q = (w0[:, :, None] >> shift[None, None, :]) & ((1 << BITS) - 1)
    return tl.reshape(q, [BLOCK_N, BLOCK_K])


@triton.jit
def _codes(w0, w1, w2, BITS: tl.constexpr, VPW: tl.constexpr, LANES: tl.constexpr, BLOCK_K: tl.constexpr,
           BLOCK_N: tl.constexpr):
    """Split [KW, BLOCK_N] units into their codes, [BLOCK_K, BLOCK_N] (row = unit * LANES + lane)."""
    if BITS == 3:
        q = _three_bit_codes(w0, w1, w2)
    else:
        lane = tl.arange(0, LANES)
        shift = tl.where(lane < VPW, lane * BITS, 0)
        q = (w0[:, None, :] >> shift[None, :, None]) & ((1 << BITS) - 1)
    return tl.reshape(q, [BLOCK_K, BLOCK_N])


@triton.jit
def _tile_k(t, VPW: tl.constexpr, LANES: tl.constexpr, BLOCK_K: tl.constexpr):
    """Input index k of every row of K tile `t`, [BLOCK_K], and whether the row holds a code."""
    KW: tl.constexpr = BLOCK_K // LANES
    r = tl.arange(0, BLOCK_K)
    if LANES == VPW:
        kk = t * BLOCK_K + r
        lane_ok = r >= 0
    else:
        kk = t * (KW * VPW) + (r // LANES) * VPW + (r % LANES)
        lane_ok = (r % LANES) < VPW
    return kk, lane_ok


# -- shared pieces ---------------------------------------------------------------------------------
@triton.jit
def _tile_scale(scale_ptr, t, offs_nc, N, SPAN: tl.constexpr, GROUP: tl.constexpr):
    """fp32 [BLOCK_N] scale of the group holding K tile `t` (tiles never straddle groups; GROUP = 0:
    one group per row)."""
    if GROUP == 0:
        return tl.load(scale_ptr + offs_nc).to(tl.float32)
    else:
        g = (t * SPAN) // GROUP
        return tl.load(scale_ptr + tl.cast(g, tl.int64) * N + offs_nc).to(tl.float32)


@triton.jit
def _lut_gemv_kernel(x_ptr, qw_ptr, tab_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr,
                     M, N, K, KW_TOTAL, stride_xm, stride_om, tab_stride_n, tiles_per_split, to_ws,
                     BITS: tl.constexpr, VPW: tl.constexpr, LANES: tl.constexpr, GROUP: tl.constexpr,
                     HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Split-K GEMV: program (n block, K split, m block) accumulates x[m, k] * W[n, k] in fp32.

    `to_ws` (split-K or sq outliers): fp32 partials go to ws[split, M, N] for _lut_finish_kernel;
    otherwise bias + cast straight into out.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    offs_nc = tl.minimum(offs_n, N - 1)  # clamped: tail columns read valid memory and are not stored
    KW: tl.constexpr = BLOCK_K // LANES
    SPAN: tl.constexpr = KW * VPW
    UW: tl.constexpr = 3 if BITS == 3 else 1
    w_ptrs = qw_ptr + (tl.arange(0, KW) * UW)[:, None] * N + offs_nc[None, :]
    tab_rows = tab_ptr + offs_nc * tab_stride_n
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(KW_TOTAL, KW))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    w0, w1, w2 = _load_words(w_ptrs, t_begin, t_end, KW_TOTAL, N, KW, UW)
    for t in range(t_begin, t_end):
        # prefetch the next tile's words so two tiles of weight loads are in flight per program
        n0, n1, n2 = _load_words(w_ptrs, t + 1, t_end, KW_TOTAL, N, KW, UW)
        q = _codes(w0, w1, w2, BITS, VPW, LANES, BLOCK_K, BLOCK_N)
        w0, w1, w2 = n0, n1, n2
        w = tl.load(tab_rows[None, :] + q).to(tl.float32)
        kk, lane_ok = _tile_k(t, VPW, LANES, BLOCK_K)
        xt = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & ((kk < K) & lane_ok)[None, :],
                     other=0.0).to(tl.float32)
        part = tl.sum(xt[:, :, None] * w[None, :, :], axis=1)
        if HAS_SCALE:
            part = part * _tile_scale(scale_ptr, t, offs_nc, N, SPAN, GROUP)[None, :]
        acc += part
    if to_ws:
        store_tile(ws_ptr + pid_s.to(tl.int64) * M * N, acc, offs_m, offs_n, M, N, N, 1)
    else:
        if HAS_BIAS:
            acc = add_bias(acc, bias_ptr, offs_n, N)
        store_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, 1)


@triton.jit
def _add_outliers(acc, x_ptr, row_ptr_ptr, col_ptr, val_ptr, rm, rn, M, N, K, NNZ, stride_xm):
    """acc [rm, rn] + x[rm] . S[rn]^T for the sq outliers S held as CSR: row n's nonzeros row_ptr[n] ..
    row_ptr[n+1] in stored order, all rows of the tile in step (deterministic, no search, no atomics).
    Indices outside [0, NNZ) and columns outside [0, K) are masked: a corrupted CSR gives wrong numbers,
    never an out-of-bounds read."""
    n_mask = rn < N
    m_mask = rm < M
    start = tl.load(row_ptr_ptr + rn, mask=n_mask, other=0)
    count = tl.where(n_mask, tl.load(row_ptr_ptr + rn + 1, mask=n_mask, other=0) - start, 0)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    for j in range(0, tl.max(count, axis=0)):
        idx = start + j
        live = (j < count) & (idx >= 0) & (idx < NNZ)
        col = tl.load(col_ptr + idx, mask=live, other=0)
        val = tl.load(val_ptr + idx, mask=live, other=0.0).to(tl.float32)
        live = live & (col >= 0) & (col < K)
        xv = tl.load(x_rows + col[None, :], mask=m_mask[:, None] & live[None, :], other=0.0).to(tl.float32)
        acc += xv * val[None, :]
    return acc


@triton.jit
def _lut_finish_kernel(ws_ptr, x_ptr, row_ptr_ptr, col_ptr, val_ptr, bias_ptr, out_ptr,
                       M, N, K, NNZ, split_k, stride_xm, stride_om,
                       HAS_SPARSE: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out = sum_s ws[s] (split order) + x . S^T (sq outliers) + bias, cast; grid (N tiles, M tiles).

    The outliers of the program's rows are read as CSR: row n's nonzeros row_ptr[n] .. row_ptr[n+1]
    in stored order, all rows of the tile in step, so the sum is deterministic and needs no search
    or atomics. Indices outside [0, NNZ) and columns outside [0, K) are masked: a corrupted CSR
    gives wrong numbers, never an out-of-bounds read.
    """
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    acc = sum_splits(ws_ptr, rm, rn, M, N, split_k, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
    if HAS_SPARSE:
        acc = _add_outliers(acc, x_ptr, row_ptr_ptr, col_ptr, val_ptr, rm, rn, M, N, K, NNZ, stride_xm)
    if HAS_BIAS:
        acc = add_bias(acc, bias_ptr, rn, N)
    store_tile(out_ptr, acc, rm, rn, M, N, stride_om, 1)


@triton.jit
def _lut_gemm_kernel(x_ptr, qw_ptr, tab_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr,
                     M, N, K, KW_TOTAL, stride_xm, stride_om, tab_stride_n, tiles_per_split, to_ws,
                     BITS: tl.constexpr, VPW: tl.constexpr, LANES: tl.constexpr, GROUP: tl.constexpr,
                     HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE_DOT: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    """Tensor-core GEMM with the LUT decode in the K loop (grouped tile order).

    The weight tile is decoded as [BLOCK_N, BLOCK_K] (each thread holds whole words' codes along K,
    so the tile reaches shared memory in vector stores) and fed to tl.dot transposed. It is built
    straight in fp16 from an fp16 table, or in fp32 (NF4: table x absmax, one rounding at the cast,
    the same value as fp32 math then a cast), then cast to x's dtype. Grid (tiles, split); with
    `to_ws` the fp32 partials go to ws[split, M, N] for _lut_finish_kernel.
    """
    pid_s = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    offs_nc = tl.minimum(offs_n, N - 1)
    KW: tl.constexpr = BLOCK_K // LANES
    SPAN: tl.constexpr = KW * VPW
    UW: tl.constexpr = 3 if BITS == 3 else 1
    w_ptrs = qw_ptr + (tl.arange(0, KW) * UW)[None, :] * N + offs_nc[:, None]
    tab_rows = tab_ptr + offs_nc[:, None] * tab_stride_n
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(KW_TOTAL, KW))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(t_begin, t_end):
        w0, w1, w2 = _load_words_t(w_ptrs, t, t_end, KW_TOTAL, N, KW, UW)
        q = _codes_t(w0, w1, w2, BITS, VPW, LANES, BLOCK_K, BLOCK_N)
        kk, lane_ok = _tile_k(t, VPW, LANES, BLOCK_K)
        a = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & ((kk < K) & lane_ok)[None, :], other=0.0)
        if HAS_SCALE:
            wt = tl.load(tab_rows + q).to(tl.float32) * _tile_scale(scale_ptr, t, offs_nc, N, SPAN, GROUP)[:, None]
        else:
            wt = tl.load(tab_rows + q)
        if IEEE_DOT:
            acc = tl.dot(a, tl.trans(wt.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(wt.to(a.dtype)), acc)
    if to_ws:
        store_tile(ws_ptr + pid_s.to(tl.int64) * M * N, acc, offs_m, offs_n, M, N, N, 1)
    else:
        if HAS_BIAS:
            acc = add_bias(acc, bias_ptr, offs_n, N)
        store_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, 1)


# -- large M, when the fused decode costs more than it saves: decode once, then an fp16 GEMM -------
@triton.jit
def _lut_dequant_kernel(qw_ptr, tab_ptr, scale_ptr, w_ptr, N, K, KW_TOTAL, tab_stride_n, tiles_per_prog,
                        BITS: tl.constexpr, VPW: tl.constexpr, LANES: tl.constexpr, GROUP: tl.constexpr,
                        HAS_SCALE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """w[n, k] = the decoded weight (dense part; NF4 times absmax, rounded once), in w's dtype, [N, K]
    row-major; grid (N tiles, K-tile groups of `tiles_per_prog`)."""
    pid_n = tl.program_id(0)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_nc = tl.minimum(offs_n, N - 1)
    KW: tl.constexpr = BLOCK_K // LANES
    SPAN: tl.constexpr = KW * VPW
    UW: tl.constexpr = 3 if BITS == 3 else 1
    w_ptrs = qw_ptr + (tl.arange(0, KW) * UW)[None, :] * N + offs_nc[:, None]
    tab_rows = tab_ptr + offs_nc[:, None] * tab_stride_n
    out_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K
    t_begin = tl.program_id(1) * tiles_per_prog
    t_end = tl.minimum(t_begin + tiles_per_prog, tl.cdiv(KW_TOTAL, KW))
    for t in range(t_begin, t_end):
        w0, w1, w2 = _load_words_t(w_ptrs, t, t_end, KW_TOTAL, N, KW, UW)
        q = _codes_t(w0, w1, w2, BITS, VPW, LANES, BLOCK_K, BLOCK_N)
        if HAS_SCALE:
            val = tl.load(tab_rows + q).to(tl.float32) * _tile_scale(scale_ptr, t, offs_nc, N, SPAN, GROUP)[:, None]
        else:
            val = tl.load(tab_rows + q)
        kk, lane_ok = _tile_k(t, VPW, LANES, BLOCK_K)
        tl.store(out_rows + kk[None, :], val.to(w_ptr.dtype.element_ty),
                 mask=n_mask[:, None] & ((kk < K) & lane_ok)[None, :])


@triton.jit
def _lut_scatter_kernel(row_ptr_ptr, col_ptr, val_ptr, w_ptr, N, K, NNZ, BLOCK_N: tl.constexpr):
    """w[n, col_j] += val_j for the sq outliers j of the program's rows (CSR, stored order; a repeated
    position adds twice, as in the reference). Indices are masked to [0, NNZ) and columns to [0, K)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rn < N
    start = tl.load(row_ptr_ptr + rn, mask=n_mask, other=0)
    count = tl.where(n_mask, tl.load(row_ptr_ptr + rn + 1, mask=n_mask, other=0) - start, 0)
    rows = w_ptr + rn.to(tl.int64) * K
    for j in range(0, tl.max(count, axis=0)):
        idx = start + j
        live = (j < count) & (idx >= 0) & (idx < NNZ)
        col = tl.load(col_ptr + idx, mask=live, other=0)
        val = tl.load(val_ptr + idx, mask=live, other=0.0).to(tl.float32)
        live = live & (col >= 0) & (col < K)
        cur = tl.load(rows + col, mask=live, other=0.0).to(tl.float32)
        tl.store(rows + col, (cur + val).to(w_ptr.dtype.element_ty), mask=live)


@triton.jit
def _lut_dense_gemm_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, ws_ptr, M, N, K, stride_xm, stride_om,
                           tiles_per_split, to_ws, HAS_BIAS: tl.constexpr, IEEE_DOT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr):
    """y = x . w^T for a dense w [N, K] in x's dtype (from _lut_dequant_kernel), tensor cores,
    grouped tile order, grid (tiles, split); the epilogue is the fused kernels'."""
    pid_s = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * K
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(K, BLOCK_K))
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(t_begin, t_end):
        kk = t * BLOCK_K + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & (kk < K)[None, :], other=0.0)
        wt = tl.load(w_rows + kk[None, :], mask=n_mask[:, None] & (kk < K)[None, :], other=0.0)
        if IEEE_DOT:
            acc = tl.dot(a, tl.trans(wt), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, tl.trans(wt), acc)
    if to_ws:
        store_tile(ws_ptr + pid_s.to(tl.int64) * M * N, acc, offs_m, offs_n, M, N, N, 1)
    else:
        if HAS_BIAS:
            acc = add_bias(acc, bias_ptr, offs_n, N)
        store_tile(out_ptr, acc, offs_m, offs_n, M, N, stride_om, 1)


# -- the interpreter twin of the tensor-core M = 1 GEMV (lowbit/kernels/lut/mma_gemv.py) ---------------
@triton.jit
def _twin_pair_dot(tab2, addr, x_rows, x_ok, k):
    """The twin's lookup of one pair per slot [W, 64] at byte address `addr` of its table, times x[m, k],
    x[m, k + 1] (k [W]: each stream's two inputs; x_rows [BM] row pointers, x_ok rows < M) in fp32: [BM, W, 64]."""
    pair = tl.load(tab2 + addr // 4)
    w_lo = (pair & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    w_hi = ((pair >> 16) & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    ok = x_ok[:, None] & (k >= 0)[None, :]
    x_lo = tl.load(x_rows[:, None] + k[None, :], mask=ok, other=0.0).to(tl.float32)
    x_hi = tl.load(x_rows[:, None] + (k + 1)[None, :], mask=ok, other=0.0).to(tl.float32)
    return w_lo[None, :, :] * x_lo[:, :, None] + w_hi[None, :, :] * x_hi[:, :, None]


@triton.jit
def _twin_row_outliers(rn, slot, x_ptr, row_ptr_ptr, col_ptr, val_ptr, K, NNZ, S: tl.constexpr):
    """mma_gemv._row_outliers in plain Triton: nonzero j of row rn goes to slot j % S, each slot sums in
    stored order, then the slots are summed; indices and columns out of range are masked."""
    start = tl.load(row_ptr_ptr + rn)
    count = tl.load(row_ptr_ptr + rn + 1) - start
    acc = tl.zeros([rn.shape[0], S], dtype=tl.float32)
    for j in range(0, tl.max(count, axis=0), S):
        jj = j + slot[None, :]
        idx = start[:, None] + jj
        live = (jj < count[:, None]) & (idx >= 0) & (idx < NNZ)
        col = tl.load(col_ptr + idx, mask=live, other=0)
        val = tl.load(val_ptr + idx, mask=live, other=0.0).to(tl.float32)
        live = live & (col >= 0) & (col < K)
        acc += tl.load(x_ptr + col, mask=live, other=0.0).to(tl.float32) * val
    return tl.sum(acc, axis=1)


@triton.jit
def _lut_mma_twin_kernel(x_ptr, qw_ptr, tab_ptr, scale_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                         tab2_ptr, M, N, units_per_stream, tab_stride_n, K, NNZ, stride_xm, stride_om,
                         BITS: tl.constexpr, WARPS: tl.constexpr, UNROLL: tl.constexpr, GROUP: tl.constexpr,
                         HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, TO_WS: tl.constexpr,
                         HAS_SPARSE: tl.constexpr, MP: tl.constexpr):
    """The Gluon kernel's computation with its table layout and index arithmetic, in plain Triton.

    Same grid, slots, streams, x rows (2 * MP per CTA) and outputs. The pair table goes to a global
    scratch tab2[CTA, 256 * 64] instead of shared memory and is read at the PRMT address
    (byte << 8 | r * 4) / 4, or for 3-bit codes at the address the 3-bit lookup PTX computes,
    ((c & mask) * mult mod 2^32) >> 17 + r * 4; the mma's exact fp16 products summed in fp32 become
    fp32 FMAs; NF4 group sums are scaled at the same points. HAS_SPARSE (M = 1, one split): the sq
    outliers of the CTA's rows join before the bias, as in the finish kernel.
    """
    CB: tl.constexpr = 8 if BITS == 3 else 16
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    n0 = pid_n * 64
    tab2 = tab2_ptr + ((pid_m * tl.num_programs(0) + pid_n) * tl.num_programs(1) + pid_s).to(tl.int64) * (256 * 64)
    # pair table T2[p, r] = bits(T[r, p % CB]) | bits(T[r, p // CB]) << 16 (CB = 16, or 8 for 3-bit codes)
    p = tl.arange(0, CB * CB)
    r = tl.arange(0, 64)
    rows = tab_ptr + (n0 + r)[None, :] * tab_stride_n
    lo = tl.load(rows + (p % CB)[:, None]).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    hi = tl.load(rows + (p // CB)[:, None]).to(tl.int16, bitcast=True).to(tl.int32)
    tl.store(tab2 + p[:, None] * 64 + r[None, :], lo | (hi << 16))
    tl.debug_barrier()
    # slots [W, 64 rows]: warp w reads stream pid_s * WARPS + w
    w = tl.arange(0, WARPS)
    stream = pid_s * WARPS + w
    rowoff = r * 4
    BM: tl.constexpr = 2 * MP
    xm = pid_m * BM + tl.arange(0, BM)
    x_ok = xm < M
    x_rows = x_ptr + xm.to(tl.int64) * stride_xm
    acc = tl.zeros([BM, WARPS, 64], dtype=tl.float32)
    part = tl.zeros([BM, WARPS, 64], dtype=tl.float32)
    for u0 in range(0, units_per_stream, UNROLL):
        for uu in tl.static_range(UNROLL):
            unit = stream * units_per_stream + u0 + uu
            if BITS == 3:
                wrow = qw_ptr + (unit * 3)[:, None] * N + n0 + r[None, :]
                wa = tl.load(wrow)
                wb = tl.load(wrow + N)
                wc = tl.load(wrow + 2 * N)
                top = ((wa >> 15) & 0x10001) | ((wb >> 14) & 0x20002) | ((wc >> 13) & 0x40004)
                for j in tl.static_range(16):
                    if j == 15:
                        src = top
                    elif j < 5:
                        src = wa
                    elif j < 10:
                        src = wb
                    else:
                        src = wc
                    S: tl.constexpr = 3 * (j % 5) if j < 15 else 0
                    prod = (src & (0x70007 << S)).to(tl.uint32, bitcast=True) * ((1 << (12 - S)) + (1 << (25 - S)))
                    addr = (prod >> 17).to(tl.int32, bitcast=True) + rowoff[None, :]
                    part += _twin_pair_dot(tab2, addr, x_rows, x_ok, unit * 32 + 2 * j)
            else:
                words = tl.load(qw_ptr + unit[:, None] * N + n0 + r[None, :])
                for byte in tl.static_range(4):
                    addr = ((words >> (8 * byte)) & 0xFF) << 8 | rowoff[None, :]  # = prmt(word, rowoff, 0x55j4)
                    part += _twin_pair_dot(tab2, addr, x_rows, x_ok, unit * 8 + 2 * byte)
        if HAS_SCALE and GROUP != 0:
            if (u0 + UNROLL) % (GROUP // 8) == 0:
                g_idx = (stream * units_per_stream + u0) * 8 // GROUP
                sc = tl.load(scale_ptr + (g_idx * N)[:, None] + n0 + r[None, :]).to(tl.float32)
                acc += part * sc[None, :, :]
                part = tl.zeros([BM, WARPS, 64], dtype=tl.float32)
    if HAS_SCALE:
        if GROUP == 0:
            acc = part * tl.load(scale_ptr + n0 + r).to(tl.float32)[None, None, :]
    else:
        acc = part
    y = tl.sum(acc, axis=1)  # [BM, 64]
    ok = x_ok[:, None] & (r < 64)[None, :]
    if TO_WS:
        tl.store(out_ptr + (pid_s * M + xm).to(tl.int64)[:, None] * N + n0 + r[None, :], y, mask=ok)
    else:
        if HAS_SPARSE:  # M = 1: the sq outliers of the CTA's rows (one split: it owns them whole), as the Gluon kernel
            y = y + _twin_row_outliers(n0 + r, tl.arange(0, WARPS // 2), x_ptr, row_ptr_ptr, col_ptr, val_ptr, K, NNZ,
                                       WARPS // 2)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + n0 + r).to(tl.float32)[None, :]
        tl.store(out_ptr + xm.to(tl.int64)[:, None] * stride_om + n0 + r[None, :], y.to(out_ptr.dtype.element_ty),
                 mask=ok)
