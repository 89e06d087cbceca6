"""Exact emulation of what the tensor-core M = 1 GEMV (lowbit/kernels/lut/mma_gemv.py) runs on the GPU.

The interpreter cannot run inline PTX or Gluon, so this checks, with integer-valued data where every
operation is exact:
- the lookup PTX: ``prmt.b32`` (emulated from the PTX ISA byte-permute definition) with the kernel's
  selectors gives the table address the pure-Triton twin uses, ``(byte j of word) << 8 | r * 4``;
- the fragment bookkeeping: every lane fills its m16n8k16 A and B fragments (PTX ISA fragment layouts
  for .f16) from its own two rows and its stream's x only, the block-diagonal B keeps the slots apart,
  and the epilogue's D -> row map gives x . W^T exactly.
That Triton lays the Gluon tensors out as these PTX fragments is checked on the compiled TTGIR in
test_lut_aot.py.
"""
import re

import numpy as np

from lowbit.kernels.lut import mma_gemv


def prmt(a: int, b: int, c: int) -> int:
    """PTX ``prmt.b32 d, a, b, c`` (default mode): byte i of d is byte (c >> 4i) & 7 of {b, a}, or the
    sign of that byte replicated when bit 3 of the selector nibble is set."""
    src = [(a >> 8 * i) & 0xFF for i in range(4)] + [(b >> 8 * i) & 0xFF for i in range(4)]
    d = 0
    for i in range(4):
        sel = (c >> 4 * i) & 0xF
        v = src[sel & 7]
        if sel & 8:
            v = 0xFF if v & 0x80 else 0
        d |= v << (8 * i)
    return d


def test_lookup_asm_operands():
    """The asm computes prmt(word = $1, rowoff = $3, selector = $5), adds global_smem, loads 32 bits."""
    asm = mma_gemv.LOOKUP_ASM.value
    assert re.search(r"prmt\.b32 a, \$1, \$3, \$5;", asm)
    assert "mov.u32 b, global_smem; add.u32 a, a, b; ld.shared.b32 $0, [a];" in asm


def test_prmt_selector_gives_the_pair_table_address():
    rng = np.random.default_rng(0)
    words = [int(w) for w in rng.integers(0, 2 ** 32, size=200, dtype=np.uint64)] + [0, 2 ** 32 - 1, 0x80808080]
    base, per_byte = mma_gemv.SEL_BASE.value, mma_gemv.SEL_PER_BYTE.value
    for word in words:
        for r in range(mma_gemv.ROWS):
            for j in range(4):
                got = prmt(word, r * 4, base + per_byte * j)
                assert got == (((word >> 8 * j) & 0xFF) << 8) | (r * 4)
                assert got // 4 == ((word >> 8 * j) & 0xFF) * mma_gemv.ROWS + r  # T2[p, r], row-major [256, 64]


def _mma_m16n8k16(a_frag, b_frag):
    """D = A @ B from per-lane fragments laid out as the PTX ISA defines for m16n8k16 .f16 (exact in fp64)."""
    a = np.full((16, 16), np.nan)
    b = np.full((16, 8), np.nan)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for idx, (row, col) in enumerate([(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1),
                                          (g, 2 * t + 8), (g, 2 * t + 9), (g + 8, 2 * t + 8), (g + 8, 2 * t + 9)]):
            assert np.isnan(a[row, col])
            a[row, col] = a_frag[lane][idx]
        for idx, (row, col) in enumerate([(2 * t, g), (2 * t + 1, g), (2 * t + 8, g), (2 * t + 9, g)]):
            assert np.isnan(b[row, col])
            b[row, col] = b_frag[lane][idx]
    assert not np.isnan(a).any() and not np.isnan(b).any()
    return a @ b


def _rows_of(d):
    """The epilogue's D -> row map: D[hi * 8 + g, t] is row 8g + 2t + hi; D's columns 4..7 must stay 0."""
    assert np.all(d[:, 4:] == 0)
    y = np.zeros(mma_gemv.ROWS)
    for hi in range(2):
        for g in range(8):
            for t in range(4):
                y[8 * g + 2 * t + hi] += d[hi * 8 + g, t]
    return y


def test_block_diagonal_fragments_compute_each_row():
    """One warp, one word per row (two mma steps), integer tables and x: D maps back to x . W^T exactly."""
    rng = np.random.default_rng(1)
    rows = mma_gemv.ROWS
    table = rng.integers(-8, 9, size=(rows, 16)).astype(np.float64)  # LUT[r, q]
    words = rng.integers(0, 2 ** 32, size=rows, dtype=np.uint64).astype(np.int64)  # one word per row
    x = rng.integers(-4, 5, size=8).astype(np.float64)  # the stream's 8 inputs

    def pair(r, byte):  # what the LDS returns: T2[p, r] halves (lo = code 2*byte, hi = code 2*byte + 1)
        p = (int(words[r]) >> 8 * byte) & 0xFF
        return table[r, p & 15], table[r, p >> 4]

    d = np.zeros((16, 8))
    for h in range(2):  # the two mma steps of a word: bytes 2h + e2
        a_frag, b_frag = [], []
        for lane in range(32):
            g, t = lane // 4, lane % 4
            # A[hi * 8 + g, e2 * 8 + 2t + e] = half e of the pair of row 8g + 2t + hi at byte 2h + e2
            frag = []
            for hi, e2 in ((0, 0), (1, 0), (0, 1), (1, 1)):  # PTX order: a0a1, a2a3, a4a5, a6a7
                frag += list(pair(8 * g + 2 * t + hi, 2 * h + e2))
            a_frag.append(frag)
            # B[e2 * 8 + 2t + e, j = g] = x[4h + 2 e2 + e] on the diagonal g == t, else 0
            b_frag.append([x[4 * h + 2 * e2 + e] if g == t else 0.0 for e2 in (0, 1) for e in (0, 1)])
        d += _mma_m16n8k16(a_frag, b_frag)
    y = _rows_of(d)
    codes = np.array([[(int(words[r]) >> 4 * i) & 15 for i in range(8)] for r in range(rows)])
    w = np.take_along_axis(table, codes, axis=1)  # W[r, k] for the word's 8 inputs
    np.testing.assert_array_equal(y, w @ x)


def _a_fragment(g, t, pair_of):
    """Lane (g, t)'s A fragment in PTX order (a0a1, a2a3, a4a5, a6a7): the two halves of pair_of(row, e2) for
    rows 8g + 2t + hi, hi = 0, 1, at step slots e2 = 0, 1."""
    frag = []
    for hi, e2 in ((0, 0), (1, 0), (0, 1), (1, 1)):
        frag += list(pair_of(8 * g + 2 * t + hi, e2))
    return frag


def test_row_pair_fragments_compute_two_rows_of_x():
    """M > 1: lanes g == t carry x row 2p, lanes g == t + 4 row 2p + 1 (the others zeros), so D columns t and
    t + 4 are the same weight row against the two x rows (mma_gemv._x_rows / _store_pair); exact integers."""
    rng = np.random.default_rng(2)
    rows = mma_gemv.ROWS
    table = rng.integers(-8, 9, size=(rows, 16)).astype(np.float64)
    words = rng.integers(0, 2 ** 32, size=rows, dtype=np.uint64).astype(np.int64)
    x = rng.integers(-4, 5, size=(2, 8)).astype(np.float64)  # x rows 2p, 2p + 1: the stream's 8 inputs

    def pair(r, byte):
        p = (int(words[r]) >> 8 * byte) & 0xFF
        return table[r, p & 15], table[r, p >> 4]

    d = np.zeros((16, 8))
    for h in range(2):
        a_frag, b_frag = [], []
        for lane in range(32):
            g, t = lane // 4, lane % 4
            a_frag.append(_a_fragment(g, t, lambda r, e2: pair(r, 2 * h + e2)))
            row = 0 if g == t else 1 if g == t + 4 else None
            b_frag.append([x[row, 4 * h + 2 * e2 + e] if row is not None else 0.0 for e2 in (0, 1) for e in (0, 1)])
        d += _mma_m16n8k16(a_frag, b_frag)
    # _store_pair: D [hi * 8 + g, jr * 4 + t] -> y[jr, 8g + 2t + hi]
    y = np.zeros((2, rows))
    for hi in range(2):
        for g in range(8):
            for jr in range(2):
                for t in range(4):
                    y[jr, 8 * g + 2 * t + hi] += d[hi * 8 + g, jr * 4 + t]
    codes = np.array([[(int(words[r]) >> 4 * i) & 15 for i in range(8)] for r in range(rows)])
    w = np.take_along_axis(table, codes, axis=1)
    np.testing.assert_array_equal(y, x @ w.T)


# -- 3-bit codes (lut3/sq3): the lookup PTX on the exact 3-bit layout --------------------------------------
def lookup3(c: int, mask: int, mult: int, rowoff: int) -> int:
    """LOOKUP3_ASM: and.b32, mul.lo.u32 (mod 2^32), shr.u32 17, add rowoff (the global_smem base is 0)."""
    return ((((c & mask) * mult) & 0xFFFFFFFF) >> mma_gemv.PAIR3_SHIFT) + rowoff


def test_lookup3_asm_operands():
    asm = mma_gemv.LOOKUP3_ASM.value
    assert re.search(r"and\.b32 a, \$1, \$3; mul\.lo\.u32 a, a, \$5; shr\.u32 a, a, 17; add\.u32 a, a, \$7;", asm)
    assert "mov.u32 b, global_smem; add.u32 a, a, b; ld.shared.b32 $0, [a];" in asm


def test_lookup3_gives_the_pair_table_address_of_every_pair():
    """Pack random 3-bit codes with the reference packer; every pair j of every unit, through the PTX arithmetic
    on its source word (or the gathered top bits of pair 15), addresses T2[lo | hi << 3, r]."""
    import torch

    from lowbit.reference.packing import pack_codes

    rng = np.random.default_rng(2)
    codes = torch.from_numpy(rng.integers(0, 8, size=(64, 32 * 40)))
    codes[0], codes[1] = 7, 0  # all-ones and all-zero fields
    words = pack_codes(codes, 3).numpy().astype(np.int64) & 0xFFFFFFFF  # [3 * units, 64 rows]
    for r in range(64):
        for u in range(words.shape[0] // 3):
            wa, wb, wc = (int(words[3 * u + j, r]) for j in range(3))
            top = ((wa >> 15) & 0x10001) | ((wb >> 14) & 0x20002) | ((wc >> 13) & 0x40004)
            for j in range(16):
                src, mask, mult = mma_gemv.pair3_field(j)
                c = (wa, wb, wc, top)[src]
                lo, hi = int(codes[r, 32 * u + 2 * j]), int(codes[r, 32 * u + 2 * j + 1])
                assert lookup3(c, mask, mult, 4 * r) == ((lo | hi << 3) << 8) | (4 * r), (r, u, j)


def test_both_3bit_kernels_use_pair3_field_constants():
    """The Gluon kernel and its twin spell the per-pair constants of pair3_field; a drift in either shows here."""
    import inspect

    from lowbit.kernels.lut import kernels

    for fn in (mma_gemv._pair3_operands, kernels._lut_mma_twin_kernel):
        src = inspect.getsource(fn.fn)
        assert re.search(r"3 \* \(\(?J0?( \+ 1\))? % 5\) if J0?( \+ 1)? < 15 else 0", src) or \
            "3 * (j % 5) if j < 15 else 0" in src, src[:200]
        assert "0x70007 <<" in src and "(1 << (12 - S" in src and "(1 << (25 - S" in src
    for j in range(16):
        s = 3 * (j % 5) if j < 15 else 0
        assert mma_gemv.pair3_field(j)[1:] == (0x70007 << s, (1 << (12 - s)) + (1 << (25 - s)))


def test_block_diagonal_fragments_compute_each_row_3bit():
    """One warp, one 3-bit unit (32 codes) per row: four virtual words of two mma steps each, pair J = 4v +
    2h + e2 holding codes 2J, 2J + 1; D maps back to x . W^T exactly."""
    rng = np.random.default_rng(3)
    rows = mma_gemv.ROWS
    table = rng.integers(-8, 9, size=(rows, 8)).astype(np.float64)
    codes = rng.integers(0, 8, size=(rows, 32))
    x = rng.integers(-4, 5, size=32).astype(np.float64)
    d = np.zeros((16, 8))
    for v in range(4):
        for h in range(2):
            a_frag, b_frag = [], []
            for lane in range(32):
                g, t = lane // 4, lane % 4
                frag = []
                for hi, e2 in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    jpair = 4 * v + 2 * h + e2
                    r = 8 * g + 2 * t + hi
                    frag += [table[r, codes[r, 2 * jpair]], table[r, codes[r, 2 * jpair + 1]]]
                a_frag.append(frag)
                b_frag.append([x[8 * v + 4 * h + 2 * e2 + e] if g == t else 0.0 for e2 in (0, 1) for e in (0, 1)])
            d += _mma_m16n8k16(a_frag, b_frag)
    y = _rows_of(d)
    np.testing.assert_array_equal(y, np.take_along_axis(table, codes, axis=1) @ x)
