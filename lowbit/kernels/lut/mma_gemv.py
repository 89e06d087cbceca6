"""The small-M LUT GEMV on tensor cores (sm_80+, fp16 x, M <= 16, 4-bit codes or, below, 3-bit codes): pair
tables in shared memory, one PRMT + one LDS per two 4-bit weights, ``mma.sync`` m16n8k16 with a block-diagonal
x operand, fp32 accumulation.
Gluon + inline PTX; the pure-Triton twin ``kernels._lut_mma_twin_kernel`` shares the table layout and
every index below and runs under the interpreter, and the tests emulate the PTX exactly.

- A CTA owns 64 output rows n0 .. n0 + 63 and a K range split into WARPS equal *streams* of packed
  words, one per warp (grid axis 1 splits K further).
- Pair table: ``T2[p, r] = LUT[n0 + r, p & 15] | LUT[n0 + r, p >> 4] << 16`` (two fp16 bit patterns),
  int32 at shared byte offset ``(p * 64 + r) * 4``. A byte p of a word is two codes, so one load gives
  two weights, and the 32 lanes of a warp always read 32 distinct rows: distinct banks.
- Lane (g, t) = (lane // 4, lane % 4) owns rows r = 8g + 2t + hi, hi = 0, 1. The m16n8k16 A fragment
  of that lane is A rows (g, g + 8) x columns (2t, 2t + 1, 2t + 8, 2t + 9); here A[hi * 8 + g,
  e2 * 8 + 2t + e] = half e of the pair of row r at byte 2h + e2 of its current word, for the two mma
  steps h = 0, 1 of each word.
- x operand: B[e2 * 8 + 2t + e, j] = x[k + 4h + 2 e2 + e] when j == t, else 0, so D[hi * 8 + g, t]
  accumulates row r alone in fp32 (exact fp16 products). Lanes with g == t read their stream's 8 inputs
  with one 128-bit load per word, the others read 8 zeros from a zero buffer (``zero_off`` elements past
  x, at least as long as x's row) that advances with x.
- Rows of x: a CTA takes MP = max(1, block_m // 2) *pairs* of x rows (grid axis 2 covers M). Pair p puts
  x row 2p on the diagonal j == t and row 2p + 1 on j == t + 4 (lanes g == t + 4 load it), so D columns
  t and t + 4 are the same weight row against the two x rows: one decoded A operand serves two rows, and
  2 HMMA + one x load per word and pair are all that M adds. Rows past M read the zero buffer and are
  not stored. The sq outliers join here only at M = 1 (else in the finish kernel).
- Per lane and word: one 64-bit load (its two rows' words), 8 x (PRMT + LDS), and per pair of x rows one
  128-bit x load and 2 HMMA.

3-bit codes (BITS = 3, lut3/sq3) walk K in *units* of 32 codes held in 3 words (lowbit.reference.packing):
pair J < 15 (codes 2J, 2J + 1) is the field at bit s = 3 (J % 5) of each half of word J // 5, and pair 15
(codes 30, 31) is gathered from bits 15 and 31 of the three words into ``top`` (same shape, s = 0). The
pair table is ``T2[p, r]`` with p = lo | hi << 3 (64 pairs, 16 KiB); a lookup is ``((c & (0x70007 << s)) *
(2^(12 - s) + 2^(25 - s))) >> 17`` = p << 8 (the product puts lo at bit 25 and hi at bit 28, and leaves
bits 17..24 clear), plus the row offset. A unit is four "virtual words" of 8 codes for the mma steps and x
loads, exactly as above. Per lane and unit: three 64-bit loads, four 128-bit x loads, 32 x (AND, IMAD,
shift-add, LDS) plus the gather of pair 15, 8 HMMA.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

ROWS = 64  # output rows per CTA (the pair table is [256, ROWS] int32 = 64 KiB)

# one pair lookup: address = (byte `sel` of the word) << 8 | rowoff (rowoff = r * 4 < 256; PRMT selector
# 0x55j4 takes byte j of $1 into byte 1 and zeroes bytes 2-3), then a 32-bit shared load of the two fp16
# (the table is the kernel's only shared allocation, at offset 0 of global_smem; tests check the TTGIR).
# With pack = 2 every input comes twice ($1 $2 word, $3 $4 rowoff, $5 $6 selector); the pair is $0.
SEL_BASE = gl.constexpr(0x5504)  # PRMT selector of byte 0: result bytes (rowoff.b0, word.b0, 0, 0)
SEL_PER_BYTE = gl.constexpr(16)  # + 16 * j selects byte j of the word
LOOKUP_ASM = gl.constexpr("{ .reg .b32 a, b; prmt.b32 a, $1, $3, $5; mov.u32 b, global_smem; add.u32 a, a, b; "
                          "ld.shared.b32 $0, [a]; }")
# 3-bit pair lookup: $1 $2 the word (or the gathered top bits), $3 $4 the field mask 0x70007 << s, $5 $6 the
# multiplier 2^(12 - s) + 2^(25 - s), $7 $8 rowoff. (c & mask) * mult >> 17 = (lo | hi << 3) << 8.
LOOKUP3_ASM = gl.constexpr("{ .reg .b32 a, b; and.b32 a, $1, $3; mul.lo.u32 a, a, $5; shr.u32 a, a, 17; "
                           "add.u32 a, a, $7; mov.u32 b, global_smem; add.u32 a, a, b; ld.shared.b32 $0, [a]; }")
PAIR3_SHIFT = 17  # the right shift of the 3-bit lookup (bits 25..30 of the product hold lo | hi << 3)


def pair3_field(j: int) -> tuple[int, int, int]:
    """(source, mask, multiplier) of 3-bit pair j of a unit: source 0..2 = word j // 5, 3 = the gathered
    top bits of pair 15; the lookup PTX turns (c & mask) * multiplier >> 17 into the pair's table row << 8."""
    s = 3 * (j % 5) if j < 15 else 0
    return (j // 5 if j < 15 else 3), 0x70007 << s, (1 << (12 - s)) + (1 << (25 - s))


# a CTA-wide barrier: gl.barrier in triton >= 3.7, gl.thread_barrier before
_cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier


@gluon.jit(do_not_specialize=["zero_off"])  # a distance between two allocations: never a constant
def _lut_mma_gemv_kernel(x_ptr, qw_ptr, tab_ptr, scale_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                         zero_off, M, N, units_per_stream, tab_stride_n, K, NNZ, stride_xm, stride_om,
                         BITS: gl.constexpr, WARPS: gl.constexpr, UNROLL: gl.constexpr, GROUP: gl.constexpr,
                         HAS_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr, TO_WS: gl.constexpr,
                         HAS_SPARSE: gl.constexpr, MP: gl.constexpr):
    """y[m, n] = sum_k x[m, k] W[n, k] for 64 rows and 2 * MP rows of x per CTA; grid (N / 64, split,
    M blocks of 2 * MP). TO_WS: fp32 partials to out[split, M, N]; else bias + cast into out[M, N] (row
    stride stride_om). NF4 (HAS_SCALE): tab_stride_n = 0, the mma sums of each GROUP of inputs are scaled
    by absmax before they join the total (GROUP = 0: per row, at the end). A stream is
    `units_per_stream` packed units: 4-bit words (8 codes) or 3-bit blocks (32 codes, 3 words).
    HAS_SPARSE (M = 1, one split, so the CTA owns its rows whole): the sq outliers of its 64 rows, CSR
    row_ptr/col/val (NNZ nonzeros, columns < K), join y before the bias, as in the finish kernel."""
    UW: gl.constexpr = 3 if BITS == 3 else 1  # words per unit
    UC: gl.constexpr = 32 if BITS == 3 else 8  # codes per unit
    CB: gl.constexpr = 8 if BITS == 3 else 16  # codes per table row
    # layouts: slots [W, hi, g, e2, t, e] (lanes (g, t); registers e, hi, e2 = the mma A fragment),
    # x [W, t, q, g] (registers q = one word's 8 inputs: a 128-bit load), table build [p_hi, p_lo, r]
    SLOT6: gl.constexpr = gl.BlockedLayout([1, 2, 1, 2, 1, 2], [1, 1, 8, 1, 4, 1], [WARPS, 1, 1, 1, 1, 1],
                                           [5, 1, 3, 4, 2, 0])
    X4: gl.constexpr = gl.BlockedLayout([1, 1, 8, 1], [1, 4, 1, 8], [WARPS, 1, 1, 1], [2, 1, 3, 0])
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1, 1], instr_shape=[1, 16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(0, MMA, 2)
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    BUILD: gl.constexpr = gl.BlockedLayout([1, 1, 8], [2, 2, 8], [WARPS, 1, 1], [2, 1, 0])
    TABLE: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    pid_n = gl.program_id(0)
    pid_s = gl.program_id(1)
    pid_m = gl.program_id(2)
    n0 = pid_n * 64
    # -- pair table into shared memory ------------------------------------------------------
    ph = gl.arange(0, CB, layout=gl.SliceLayout(1, gl.SliceLayout(2, BUILD)))
    pl = gl.arange(0, CB, layout=gl.SliceLayout(0, gl.SliceLayout(2, BUILD)))
    rr = gl.arange(0, 64, layout=gl.SliceLayout(0, gl.SliceLayout(1, BUILD)))
    rows = tab_ptr + (n0 + rr)[None, None, :] * tab_stride_n
    lo = gl.load(rows + pl[None, :, None]).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    hi = gl.load(rows + ph[:, None, None]).to(gl.int16, bitcast=True).to(gl.int32)
    table = gl.allocate_shared_memory(gl.int32, [CB * CB, 64], TABLE)  # T2[p = hi * CB + lo, r]
    table.store(gl.reshape(lo | (hi << 16), [CB * CB, 64]))
    _cta_barrier()
    # -- slots: warp w = stream pid_s * WARPS + w, lane (g, t) rows r = 8g + 2t + hi --------------
    L4: gl.constexpr = gl.SliceLayout(3, gl.SliceLayout(5, SLOT6))  # [W, hi, g, t]
    w_i = gl.arange(0, WARPS, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, L4))))
    hi_i = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, L4))))
    g_i = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, L4))))
    t_i = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, L4))))
    r4 = 8 * g_i[None, None, :, None] + 2 * t_i[None, None, None, :] + hi_i[None, :, None, None]
    stream4 = pid_s * WARPS + w_i[:, None, None, None]
    word_ptrs = qw_ptr + (stream4 * units_per_stream * UW) * N + n0 + r4
    # per-element lookup operands [W, hi, g, e2, t, e]: row offset and the PRMT selector of byte 2h + e2
    one6 = gl.full([1, 1, 1, 2, 1, 2], 1, gl.int32, layout=SLOT6)
    e2_i = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(
        4, gl.SliceLayout(5, SLOT6))))))
    rowoff = (r4 * 4)[:, :, :, None, :, None] * one6
    e2_6 = e2_i[None, None, None, :, None, None] * one6
    sel_e2 = e2_6 * SEL_PER_BYTE
    # x [W, t, q, g]: lanes on the diagonal g == t read their stream's 8 inputs of x row 2p (pair p), lanes
    # with g == t + 4 those of row 2p + 1, the others (and rows past M) 8 zeros at x_ptr + zero_off (a zero
    # buffer at least as long as x's row, advanced in step with it)
    xw = gl.arange(0, WARPS, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, X4))))
    xt = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, X4))))
    xq = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, X4))))
    xg = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, X4))))
    xk = ((pid_s * WARPS + xw) * units_per_stream * UC).to(gl.int64)[:, None, None, None]
    diag0 = xg[None, None, None, :] == xt[None, :, None, None]
    diag1 = xg[None, None, None, :] == xt[None, :, None, None] + 4
    m0 = pid_m * (2 * MP)
    xo0 = x_ptr + _x_rows(xk, diag0, diag1, m0, M, stride_xm, zero_off)
    xo1 = xo0
    xo2 = xo0
    xo3 = xo0
    xo4 = xo0
    xo5 = xo0
    xo6 = xo0
    xo7 = xo0
    if MP > 1:
        xo1 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 2, M, stride_xm, zero_off)
    if MP > 2:
        xo2 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 4, M, stride_xm, zero_off)
        xo3 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 6, M, stride_xm, zero_off)
    if MP > 4:
        xo4 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 8, M, stride_xm, zero_off)
        xo5 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 10, M, stride_xm, zero_off)
        xo6 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 12, M, stride_xm, zero_off)
        xo7 = x_ptr + _x_rows(xk, diag0, diag1, m0 + 14, M, stride_xm, zero_off)
    xq4 = xq[None, None, :, None]
    # D[w, hi*8 + g, t] (D[.., t + 4]) of pair p is row 8g + 2t + hi of stream w against x row 2p (2p + 1)
    dw = gl.arange(0, WARPS, layout=gl.SliceLayout(1, gl.SliceLayout(2, MMA)))
    di = gl.arange(0, 16, layout=gl.SliceLayout(0, gl.SliceLayout(2, MMA)))
    dj = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, MMA)))
    # (columns 4..7 are the same rows as columns 0..3, so they read the same scales)
    d_row = 8 * (di % 8)[None, :, None] + 2 * (dj % 4)[None, None, :] + (di // 8)[None, :, None]
    zacc = gl.zeros([WARPS, 16, 8], gl.float32, layout=MMA)
    p0 = zacc
    p1 = zacc
    p2 = zacc
    p3 = zacc
    p4 = zacc
    p5 = zacc
    p6 = zacc
    p7 = zacc
    acc0 = zacc
    acc1 = zacc
    acc2 = zacc
    acc3 = zacc
    acc4 = zacc
    acc5 = zacc
    acc6 = zacc
    acc7 = zacc
    wstep = N * UNROLL * UW
    for u0 in range(0, units_per_stream, UNROLL):
        for uu in gl.static_range(UNROLL):
            if BITS == 3:
                wa = gl.load(word_ptrs + (3 * uu) * N)
                wb = gl.load(word_ptrs + (3 * uu + 1) * N)
                wc = gl.load(word_ptrs + (3 * uu + 2) * N)
                # pair 15: bit j of code 30 (31) is bit 15 (31) of word j -> lo at bits 0..2, hi at 16..18
                top = ((wa >> 15) & 0x10001) | ((wb >> 14) & 0x20002) | ((wc >> 13) & 0x40004)
                for v in gl.static_range(4):  # the unit's four virtual words of 8 codes
                    c6, mask6, mult6 = _pair3_operands(wa, wb, wc, top, 4 * v, e2_6, one6)
                    wv = gl.inline_asm_elementwise(LOOKUP3_ASM, "=r,r,r,r,r,r,r,r,r", [c6, mask6, mult6, rowoff],
                                                   dtype=gl.float16, is_pure=True, pack=2)
                    a_lo = gl.convert_layout(gl.reshape(wv, [WARPS, 16, 16]), A_OP, assert_trivial=True)
                    c6, mask6, mult6 = _pair3_operands(wa, wb, wc, top, 4 * v + 2, e2_6, one6)
                    wv = gl.inline_asm_elementwise(LOOKUP3_ASM, "=r,r,r,r,r,r,r,r,r", [c6, mask6, mult6, rowoff],
                                                   dtype=gl.float16, is_pure=True, pack=2)
                    a_hi = gl.convert_layout(gl.reshape(wv, [WARPS, 16, 16]), A_OP, assert_trivial=True)
                    kx = xq4 + (uu * UC + 8 * v)
                    p0, p1, p2, p3, p4, p5, p6, p7 = _word_mmas(
                        a_lo, a_hi, kx, xo0, xo1, xo2, xo3, xo4, xo5, xo6, xo7,
                        p0, p1, p2, p3, p4, p5, p6, p7, MP, WARPS)
            else:
                words = gl.load(word_ptrs + uu * N)
                words6 = words[:, :, :, None, :, None] * one6
                sel = sel_e2 + SEL_BASE
                wv = gl.inline_asm_elementwise(LOOKUP_ASM, "=r,r,r,r,r,r,r", [words6, rowoff, sel],
                                               dtype=gl.float16, is_pure=True, pack=2)
                a_lo = gl.convert_layout(gl.reshape(wv, [WARPS, 16, 16]), A_OP, assert_trivial=True)
                sel = sel_e2 + (SEL_BASE + 2 * SEL_PER_BYTE)
                wv = gl.inline_asm_elementwise(LOOKUP_ASM, "=r,r,r,r,r,r,r", [words6, rowoff, sel],
                                               dtype=gl.float16, is_pure=True, pack=2)
                a_hi = gl.convert_layout(gl.reshape(wv, [WARPS, 16, 16]), A_OP, assert_trivial=True)
                kx = xq4 + uu * UC
                p0, p1, p2, p3, p4, p5, p6, p7 = _word_mmas(
                    a_lo, a_hi, kx, xo0, xo1, xo2, xo3, xo4, xo5, xo6, xo7,
                    p0, p1, p2, p3, p4, p5, p6, p7, MP, WARPS)
        if HAS_SCALE and GROUP != 0:
            if (u0 + UNROLL) % (GROUP // 8) == 0:  # the last word of a group: scale its sums
                g_idx = ((pid_s * WARPS + dw) * units_per_stream + u0) * 8 // GROUP
                sc = gl.load(scale_ptr + (g_idx * N)[:, None, None] + n0 + d_row).to(gl.float32)
                acc0 += p0 * sc
                p0 = zacc
                if MP > 1:
                    acc1 += p1 * sc
                    p1 = zacc
                if MP > 2:
                    acc2 += p2 * sc
                    p2 = zacc
                    acc3 += p3 * sc
                    p3 = zacc
                if MP > 4:
                    acc4 += p4 * sc
                    p4 = zacc
                    acc5 += p5 * sc
                    p5 = zacc
                    acc6 += p6 * sc
                    p6 = zacc
                    acc7 += p7 * sc
                    p7 = zacc
        word_ptrs += wstep
        xo0 += UNROLL * UC
        if MP > 1:
            xo1 += UNROLL * UC
        if MP > 2:
            xo2 += UNROLL * UC
            xo3 += UNROLL * UC
        if MP > 4:
            xo4 += UNROLL * UC
            xo5 += UNROLL * UC
            xo6 += UNROLL * UC
            xo7 += UNROLL * UC
    if HAS_SCALE and GROUP == 0:  # one absmax per row: scale the sums at the end
        sc = gl.load(scale_ptr + n0 + d_row + (dw * 0)[:, None, None]).to(gl.float32)
        acc0 = p0 * sc
        acc1 = p1 * sc
        acc2 = p2 * sc
        acc3 = p3 * sc
        acc4 = p4 * sc
        acc5 = p5 * sc
        acc6 = p6 * sc
        acc7 = p7 * sc
    elif not HAS_SCALE:
        acc0 = p0
        acc1 = p1
        acc2 = p2
        acc3 = p3
        acc4 = p4
        acc5 = p5
        acc6 = p6
        acc7 = p7
    # -- epilogue: sum the streams of each row, per x row -------------------------------------------
    _store_pair(acc0, m0, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr, K, NNZ,
                WARPS, HAS_BIAS, TO_WS, HAS_SPARSE)
    if MP > 1:
        _store_pair(acc1, m0 + 2, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)
    if MP > 2:
        _store_pair(acc2, m0 + 4, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)
        _store_pair(acc3, m0 + 6, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)
    if MP > 4:
        _store_pair(acc4, m0 + 8, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)
        _store_pair(acc5, m0 + 10, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)
        _store_pair(acc6, m0 + 12, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)
        _store_pair(acc7, m0 + 14, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr,
                    K, NNZ, WARPS, HAS_BIAS, TO_WS, False)


@gluon.jit
def _x_rows(xk, diag0, diag1, r0, M, stride_xm, zero_off):
    """Element offsets from x_ptr of each lane's 8 inputs of pair (r0, r0 + 1) at a stream's first unit:
    x row r0 on the diagonal g == t, row r0 + 1 at g == t + 4, the zero buffer elsewhere and past M."""
    o = gl.where(diag0 & (r0 < M), r0.to(gl.int64) * stride_xm, zero_off)
    o = gl.where(diag1 & (r0 + 1 < M), (r0 + 1).to(gl.int64) * stride_xm, o)
    return gl.multiple_of(xk + o, [1, 1, 8, 1])


@gluon.jit
def _pair_mmas(a_lo, a_hi, ptrs, d, WARPS: gl.constexpr):
    """The two mma steps of one word for one pair of x rows: one 128-bit load of 8 inputs per lane."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1, 1], instr_shape=[1, 16, 8])
    B_OP: gl.constexpr = gl.DotOperandLayout(1, MMA, 2)
    b_lo, b_hi = _x_operands(ptrs, WARPS)
    d = mma_v2(a_lo, gl.convert_layout(gl.reshape(b_lo, [WARPS, 16, 8]), B_OP, assert_trivial=True), d)
    return mma_v2(a_hi, gl.convert_layout(gl.reshape(b_hi, [WARPS, 16, 8]), B_OP, assert_trivial=True), d)


@gluon.jit
def _word_mmas(a_lo, a_hi, kx, xo0, xo1, xo2, xo3, xo4, xo5, xo6, xo7, p0, p1, p2, p3, p4, p5, p6, p7,
               MP: gl.constexpr, WARPS: gl.constexpr):
    """One word's A operands (mma steps h = 0, 1) against the x rows of every pair (xo_p: pair p's x pointers
    at the trip's first unit, kx: the word's offsets from there)."""
    p0 = _pair_mmas(a_lo, a_hi, xo0 + kx, p0, WARPS)
    if MP > 1:
        p1 = _pair_mmas(a_lo, a_hi, xo1 + kx, p1, WARPS)
    if MP > 2:
        p2 = _pair_mmas(a_lo, a_hi, xo2 + kx, p2, WARPS)
        p3 = _pair_mmas(a_lo, a_hi, xo3 + kx, p3, WARPS)
    if MP > 4:
        p4 = _pair_mmas(a_lo, a_hi, xo4 + kx, p4, WARPS)
        p5 = _pair_mmas(a_lo, a_hi, xo5 + kx, p5, WARPS)
        p6 = _pair_mmas(a_lo, a_hi, xo6 + kx, p6, WARPS)
        p7 = _pair_mmas(a_lo, a_hi, xo7 + kx, p7, WARPS)
    return p0, p1, p2, p3, p4, p5, p6, p7


@gluon.jit
def _store_pair(acc, r0, pid_s, n0, M, N, stride_om, x_ptr, bias_ptr, out_ptr, row_ptr_ptr, col_ptr, val_ptr, K, NNZ,
                WARPS: gl.constexpr, HAS_BIAS: gl.constexpr, TO_WS: gl.constexpr, HAS_SPARSE: gl.constexpr):
    """Sum one pair's accumulator over the streams (warps) and store x rows r0, r0 + 1 (those < M) of the
    CTA's 64 rows: fp32 partials into the workspace [split, M, N], or + outliers + bias, cast, into out."""
    d = gl.reshape(acc, [WARPS, 2, 8, 2, 4])  # [w, hi, g, x row, t]
    y = gl.sum(d, axis=0)
    y = gl.reshape(gl.permute(y, [2, 1, 3, 0]), [2, 64])  # [x row, 8g + 2t + hi]
    L2: gl.constexpr = y.type.layout
    offs = gl.arange(0, 64, layout=gl.SliceLayout(0, L2))[None, :]
    rows = r0 + gl.arange(0, 2, layout=gl.SliceLayout(1, L2))[:, None]
    ok = (rows < M) & (offs < 64)
    if TO_WS:
        gl.store(out_ptr + (pid_s * M + rows).to(gl.int64) * N + n0 + offs, y, mask=ok)
    else:
        if HAS_SPARSE:  # M = 1: one row per lane of warps 0-1, WARPS // 2 slots of each row's outliers
            OUT2: gl.constexpr = gl.BlockedLayout([1, 1], [32, 1], [2, WARPS // 2], [0, 1])
            o_rows = gl.arange(0, 64, layout=gl.SliceLayout(1, OUT2))
            o_slot = gl.arange(0, WARPS // 2, layout=gl.SliceLayout(0, OUT2))
            extra = _row_outliers(n0 + o_rows, o_slot, x_ptr, row_ptr_ptr, col_ptr, val_ptr, K, NNZ, WARPS // 2)
            y = y + gl.convert_layout(extra, gl.SliceLayout(0, L2))[None, :]
        if HAS_BIAS:
            y += gl.load(bias_ptr + n0 + offs).to(gl.float32)
        gl.store(out_ptr + rows.to(gl.int64) * stride_om + n0 + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


@gluon.jit
def _row_outliers(rn, slot, x_ptr, row_ptr_ptr, col_ptr, val_ptr, K, NNZ, S: gl.constexpr):
    """x . S[rn]^T for the CSR outliers of rows rn (every rn < N): nonzero j of a row goes to slot j % S,
    each slot sums its share in stored order, then the slots are summed (the twin does the same).
    Indices outside [0, NNZ) and columns outside [0, K) are masked."""
    start = gl.load(row_ptr_ptr + rn)
    count = gl.load(row_ptr_ptr + rn + 1) - start
    acc = (rn[:, None] * 0 + slot[None, :] * 0).to(gl.float32)  # zeros [rows, S] in the rows x slots layout
    for j in range(0, gl.max(count, axis=0), S):
        jj = j + slot[None, :]
        idx = start[:, None] + jj
        live = (jj < count[:, None]) & (idx >= 0) & (idx < NNZ)
        col = gl.load(col_ptr + idx, mask=live, other=0)
        val = gl.load(val_ptr + idx, mask=live, other=0.0).to(gl.float32)
        live = live & (col >= 0) & (col < K)
        acc += gl.load(x_ptr + col, mask=live, other=0.0).to(gl.float32) * val
    return gl.sum(acc, axis=1)


@gluon.jit
def _x_operands(ptrs, WARPS: gl.constexpr):
    """One 128-bit load of 8 inputs per lane ([W, t, q, g]: zeros off the diagonal), split into the B
    operands of the two mma steps: [W, t, (h, e2, e), g] -> two [W, (e2, t, e), g] halves."""
    xv = gl.load(ptrs)
    xv = gl.permute(gl.reshape(xv, [WARPS, 4, 2, 2, 2, 8]), [0, 3, 1, 4, 5, 2])
    return gl.split(xv)


@gluon.jit
def _pair3_source(wa, wb, wc, top, J: gl.constexpr):
    """The register holding 3-bit pair J of a unit: word J // 5, or the gathered top bits for J = 15."""
    if J == 15:
        src = top
    elif J < 5:
        src = wa
    elif J < 10:
        src = wb
    else:
        src = wc
    return src


@gluon.jit
def _pair3_operands(wa, wb, wc, top, J0: gl.constexpr, e2_6, one6):
    """Per element [W, hi, g, e2, t, e] of one mma step: the source word, field mask and multiplier of
    pair J0 + e2 (pair3_field; the constants fold into the LOP3 and IMAD immediates)."""
    S0: gl.constexpr = 3 * (J0 % 5) if J0 < 15 else 0
    S1: gl.constexpr = 3 * ((J0 + 1) % 5) if J0 + 1 < 15 else 0
    c0 = _pair3_source(wa, wb, wc, top, J0)[:, :, :, None, :, None] * one6
    c1 = _pair3_source(wa, wb, wc, top, J0 + 1)[:, :, :, None, :, None] * one6
    c6 = gl.where(e2_6 == 0, c0, c1)
    mask6 = (0x70007 << S0) + ((0x70007 << S1) - (0x70007 << S0)) * e2_6
    mult6 = ((1 << (12 - S0)) + (1 << (25 - S0))) + (((1 << (12 - S1)) + (1 << (25 - S1)))
                                                      - ((1 << (12 - S0)) + (1 << (25 - S0)))) * e2_6
    return c6, mask6, mult6
