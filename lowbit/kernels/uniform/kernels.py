"""Triton kernels of the uniform family (int1/int2/int3/int4/int8, W = (q - z) * s).

Three kernels: a CUDA-core split-K GEMV for small M, a tensor-core GEMM that dequantizes the
weight tile inside its K loop, and the fixed-order reduction that sums split-K partials.
All read the shared packing (lowbit/reference/packing.py): codes along K in int32 words
stored [Kw, N], N contiguous; scales/zeros [G, N].

A K tile is BLOCK_K "code lanes" = KW words x VP lanes, VP = values per word rounded up to a
power of two (16 for 3-bit words, which hold 10 codes; lanes 10..15 are masked off). A tile
is loaded once as a [KW, BLOCK_N] block of words (coalesced along N) and split into codes
by a broadcast shift, so every word is read from memory once. The launch wrapper guarantees
that a tile lies inside one group (power-of-two widths: BLOCK_K <= group and divides it) or,
for 3-bit words, inside at most two groups (10*KW <= group); TWO_GROUPS selects the second.
"""
import triton
import triton.language as tl

from ..jit import add_bias, grouped_tile, store_tile, sum_splits


@triton.jit
def _load_words(qw_ptr, t, t_end, offs_n, n_mask, N, KW_TOTAL, VP: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [KW, BLOCK_N] int32 words of K tile `t` (zeros when t >= t_end or past the last word)."""
    KW: tl.constexpr = BLOCK_K // VP
    wi = t * KW + tl.arange(0, KW)
    ok = (wi < KW_TOTAL) & (wi < t_end * KW)
    return tl.load(qw_ptr + wi[:, None] * N + offs_n[None, :], mask=ok[:, None] & n_mask[None, :], other=0)


@triton.jit
def _codes_f32(words, BITS: tl.constexpr, VPW: tl.constexpr, VP: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """Split [KW, BLOCK_N] words into their codes as exact fp32, [BLOCK_K, BLOCK_N] (row = word*VP + lane)."""
    lane = tl.arange(0, VP)
    shift = tl.where(lane < VPW, lane * BITS, 0)  # padding lanes of 3-bit words: any valid shift
    q = (words[:, None, :] >> shift[None, :, None]) & ((1 << BITS) - 1)
    # 2^23 + q as a float bit pattern, minus 2^23: exact int->fp32 without the slow I2F unit
    f = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    return tl.reshape(f, [BLOCK_K, BLOCK_N])


@triton.jit
def _codes_f16(words, BITS: tl.constexpr, VPW: tl.constexpr, VP: tl.constexpr, BLOCK_K: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """As _codes_f32 but in fp16 (codes < 1024 are exact): 0x6400 | q is the fp16 1024 + q."""
    lane = tl.arange(0, VP)
    shift = tl.where(lane < VPW, lane * BITS, 0)
    q = (words[:, None, :] >> shift[None, :, None]) & ((1 << BITS) - 1)
    f = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - 1024.0
    return tl.reshape(f, [BLOCK_K, BLOCK_N])


@triton.jit
def _tile_k(t, VPW: tl.constexpr, VP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Input index k of every code lane of tile `t`, [BLOCK_K], and whether the lane holds a code."""
    KW: tl.constexpr = BLOCK_K // VP
    r = tl.arange(0, BLOCK_K)
    if VP == VPW:
        kk = t * (KW * VPW) + r
        lane_ok = r >= 0
    else:
        kk = t * (KW * VPW) + (r // VP) * VPW + (r % VP)
        lane_ok = (r % VP) < VPW
    return kk, lane_ok


@triton.jit
def _group_meta(s_ptr, z_ptr, g, G, N, offs_n, n_mask, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr):
    """Scale and zero of group `g` for the columns offs_n, fp32 [BLOCK_N] (0 past the last group)."""
    ok = n_mask & ((offs_n * 0 + g) < G)  # vector form: g may be a Python int in the interpreter
    s = tl.load(s_ptr + g * N + offs_n, mask=ok, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = tl.load(z_ptr + g * N + offs_n, mask=ok, other=0.0).to(tl.float32)
    else:
        z = tl.zeros_like(s) + SYM_ZERO
    return s, z


@triton.jit
def _dequant_two_groups(f, kk, g, group_size, s_ptr, z_ptr, G, N, offs_n, n_mask,
                        HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr):
    """(q - z) * s for a tile that may cross from group g into group g + 1 (3-bit words)."""
    s0, z0 = _group_meta(s_ptr, z_ptr, g, G, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
    s1, z1 = _group_meta(s_ptr, z_ptr, g + 1, G, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
    hi = (kk >= (g + 1) * group_size)[:, None]
    z = tl.where(hi, z1[None, :], z0[None, :]).to(f.dtype)
    return (f - z) * tl.where(hi, s1[None, :], s0[None, :]).to(f.dtype)


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


@triton.jit
def _uniform_gemv_kernel(
        x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
        M, N, K, KW_TOTAL, G, group_size, stride_xm, stride_om, tiles_per_split, split_k,
        BITS: tl.constexpr, VPW: tl.constexpr, VP: tl.constexpr, HAS_ZEROS: tl.constexpr,
        SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, TWO_GROUPS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Small-M y = x W^T on CUDA cores: grid (M-blocks x N-blocks, split_k), fp32 math throughout.

    M-blocks vary fastest so programs that share a weight tile run together (L2 reuse). Within a
    group the scale leaves the inner loop: sum x*(q-z)*s = s * sum x*(q-z). (Folding z out too,
    s*(sum x*q - z*sum x), would not save work: each thread holds whole K columns, so it would
    have to sum its replicated x tile itself.)
    """
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    KW: tl.constexpr = BLOCK_K // VP
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(KW_TOTAL, KW))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    words = _load_words(qw_ptr, t_begin, t_end, offs_n, n_mask, N, KW_TOTAL, VP, BLOCK_K)
    for t in range(t_begin, t_end):
        # prefetch the next tile's words so two tiles of weight loads are in flight per program
        nxt = _load_words(qw_ptr, t + 1, t_end, offs_n, n_mask, N, KW_TOTAL, VP, BLOCK_K)
        f = _codes_f32(words, BITS, VPW, VP, BLOCK_K, BLOCK_N)
        words = nxt
        kk, lane_ok = _tile_k(t, VPW, VP, BLOCK_K)
        xt = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & ((kk < K) & lane_ok)[None, :],
                     other=0.0).to(tl.float32)
        g = (t * (KW * VPW)) // group_size
        if TWO_GROUPS:
            w = _dequant_two_groups(f, kk, g, group_size, s_ptr, z_ptr, G, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
            acc += tl.sum(xt[:, :, None] * w[None, :, :], axis=1)
        else:
            s, z = _group_meta(s_ptr, z_ptr, g, G, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
            xq = tl.sum(xt[:, :, None] * (f - z[None, :])[None, :, :], axis=1)
            acc += xq * s[None, :]
    _store_result(acc, offs_m, offs_n, M, N, b_ptr, out_ptr, ws_ptr, pid_s, stride_om, split_k, HAS_BIAS)


@triton.jit
def _uniform_gemm_kernel(
        x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, out_ptr, ws_ptr,
        M, N, K, KW_TOTAL, G, group_size, stride_xm, stride_om, tiles_per_split, split_k,
        BITS: tl.constexpr, VPW: tl.constexpr, VP: tl.constexpr, HAS_ZEROS: tl.constexpr,
        SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, TWO_GROUPS: tl.constexpr, IEEE: tl.constexpr,
        DQ_F16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    """Large-M y = x W^T on tensor cores: the weight tile is dequantized inside the K loop and fed
    to tl.dot. DQ_F16 (fp16 x): dequantized in fp16, (q - z) exact and one rounding of (q - z) * s,
    the same value as fp32 math then a cast. Otherwise fp32 math, then a cast to bf16, or kept
    fp32 for an exact input_precision="ieee" dot (fp32 x).

    Grid (tiles, split_k); tiles are visited in GROUP_M-row bands so consecutive programs reuse
    the same weight columns and x rows from L2.
    """
    pid_s = tl.program_id(1)
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    KW: tl.constexpr = BLOCK_K // VP
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, tl.cdiv(KW_TOTAL, KW))
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t_begin, t_end):
        words = _load_words(qw_ptr, t, t_end, offs_n, n_mask, N, KW_TOTAL, VP, BLOCK_K)
        if DQ_F16:
            f = _codes_f16(words, BITS, VPW, VP, BLOCK_K, BLOCK_N)
        else:
            f = _codes_f32(words, BITS, VPW, VP, BLOCK_K, BLOCK_N)
        kk, lane_ok = _tile_k(t, VPW, VP, BLOCK_K)
        a = tl.load(x_rows + kk[None, :], mask=m_mask[:, None] & ((kk < K) & lane_ok)[None, :], other=0.0)
        g = (t * (KW * VPW)) // group_size
        if TWO_GROUPS:
            w = _dequant_two_groups(f, kk, g, group_size, s_ptr, z_ptr, G, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
        else:
            s, z = _group_meta(s_ptr, z_ptr, g, G, N, offs_n, n_mask, HAS_ZEROS, SYM_ZERO)
            w = (f - z.to(f.dtype)[None, :]) * s.to(f.dtype)[None, :]
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w.to(a.dtype), acc)
    _store_result(acc, offs_m, offs_n, M, N, b_ptr, out_ptr, ws_ptr, pid_s, stride_om, split_k, HAS_BIAS)


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
