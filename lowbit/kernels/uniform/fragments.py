"""@triton.jit building blocks of the uniform kernels: the magic-number pair decode and the
tensor-core step of the GEMV.

Pair decode. A *block* is a run of packed words along K (lowbit/reference/packing.py): words of
32 // bits codes, or 32 codes in 3 words for int3. Its codes come out two at a time: one 32-bit
logic op ``(word >> SH) & MASK | MAGIC`` leaves a code field in each 16-bit half next to the
exponent bits of MAGIC, so each half *is* the fp16 (or bf16) number ``base + code``, exactly
(``base = 2^(mantissa bits - field position)``). Pair ``J`` of a block holds codes
(:func:`pair_lo`, :func:`pair_hi`): for 1/2/4/8 bits codes i and i + 16 / bits of one word,
for 3 bits codes 2J and 2J + 1 (the layout puts a pair's fields side by side in the two halves;
codes 30/31 are gathered from the three words' top bits). ``SH`` is shared by the pairs of one
shift window, so a word costs (fields / 2) ops plus one shift per window beyond the first. A
window holds a power-of-two number of fields, so every window uses the same field positions and
a block has few distinct bases.

Tensor-core step. ``mma.sync.m16n8k16`` with fp32 accumulation, one instance per element of
the fragment tensors: every fragment tensor has shape ``[L, NW, 8, 4]`` = (register repeat,
warp, lane // 4, lane % 4), the layout the GEMV's loads give them: each load is
``[NW * 32, contiguous values]`` (lane 32w + 4g + c), whose layout Triton 3.6 and 3.9 agree on, and
:func:`rows_of` / :func:`pick8` only reshape, permute, split and join it (a test reads the
operands' layouts from the TTGIR under the installed Triton). On the GPU (``USE_ASM``) the step is
inline PTX; under the interpreter :func:`_mma_twin` computes the same product from the same
fragments with tensor ops (the PTX fragment rules: A[g + 8h, 2c + 8s + e] = half e of
a_{h+2s}; B[2c + 8s + e, g] = b_{s,e}; D[g + 8h, 2c + e] = d_{2h+e}, for lane = 4g + c).
"""
import triton
import triton.language as tl

MMA_F16 = tl.constexpr(
    "{ .reg .b32 bb0, bb1; mov.b32 bb0, {$12, $13}; mov.b32 bb1, {$14, $15}; "
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {$0, $1, $2, $3}, {$4, $5, $6, $7}, {bb0, bb1}, "
    "{$8, $9, $10, $11}; }")
MMA_BF16 = tl.constexpr(
    "{ .reg .b32 bb0, bb1; mov.b32 bb0, {$12, $13}; mov.b32 bb1, {$14, $15}; "
    "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, {$4, $5, $6, $7}, {bb0, bb1}, "
    "{$8, $9, $10, $11}; }")
MMA_CONSTRAINTS = tl.constexpr("=f,=f,=f,=f,r,r,r,r,f,f,f,f,h,h,h,h")


@triton.constexpr_function
def _value(v):
    """A plain Python value from a (possibly nested) Triton constexpr."""
    while hasattr(v, "value"):
        v = v.value
    return v


@triton.constexpr_function
def _field(j, bits, bf16):
    """(word of the block, right shift, field bit after the shift) of pair j (see the module docstring)."""
    j, bits, bf16 = int(_value(j)), int(_value(bits)), bool(_value(bf16))
    mant = 7 if bf16 else 10
    if bits == 3:
        if j == 15:
            return 0, 0, 0
        fps = mant // 3  # 3-bit fields per shift window
        f = j % 5
        return j // 5, (f // fps) * fps * 3, (f % fps) * 3
    pw = 16 // bits  # pairs per word
    fps = mant // bits  # fields per shift window, rounded down to a power of two: every window
    if fps == 0:        # then uses the same field positions, so a block has few distinct bases
        raise ValueError(f"{bits}-bit fields do not fit a {'bf16' if bf16 else 'fp16'} mantissa")
    fps = 1 << (fps.bit_length() - 1)
    jj = j % pw
    return j // pw, (jj // fps) * fps * bits, (jj % fps) * bits


@triton.constexpr_function
def magic(b, bf16):
    """Both halves of the fp16/bf16 number whose mantissa ulp is bit b: 2^(mantissa bits - b)."""
    b, bf16 = int(_value(b)), bool(_value(bf16))
    h = ((134 - b) << 7) if bf16 else ((25 - b) << 10)
    return h * 65537


@triton.constexpr_function
def pair_word(j, bits, bf16):
    return _field(j, bits, bf16)[0]


@triton.constexpr_function
def pair_shift(j, bits, bf16):
    return _field(j, bits, bf16)[1]


@triton.constexpr_function
def pair_mask(j, bits, bf16):
    b = _field(j, bits, bf16)[2]
    return ((2 ** int(_value(bits)) - 1) << b) * 65537


@triton.constexpr_function
def pair_base(j, bits, bf16):
    """The magic word (both halves = base) that pair j's decode ORs in."""
    return magic(_field(j, bits, bf16)[2], bf16)


@triton.constexpr_function
def step_pair(j, bits, bf16, steps):
    """The pair an MMA step j (of `steps`) decodes: pairs sorted by magic base, so consecutive steps
    reuse the constant A operand of the sums MMA (ones; the bases) without rebuilding it."""
    j, bits, bf16, steps = int(_value(j)), int(_value(bits)), bool(_value(bf16)), int(_value(steps))
    order = sorted(range(steps), key=lambda p: (_field(p, bits, bf16)[2], p))
    return order[j]


@triton.constexpr_function
def base_value(j, bits, bf16):
    """The number pair j's magic base stands for: 2^(mantissa bits - field bit)."""
    b = _field(j, bits, bf16)[2]
    return float(2 ** ((7 if _value(bf16) else 10) - b))


@triton.constexpr_function
def step_ratio(i, bits, bf16, steps):
    """base_value of step i's pair over that of step i + 1 (1.0 after the last step)."""
    i, steps = int(_value(i)), int(_value(steps))
    if i + 1 >= steps:
        return 1.0
    return base_value(step_pair(i, bits, bf16, steps), bits, bf16) / base_value(
        step_pair(i + 1, bits, bf16, steps), bits, bf16)


@triton.constexpr_function
def pair_lo(j, bits):
    """Offset of pair j's low-half code from its block's first code."""
    j, bits = int(_value(j)), int(_value(bits))
    if bits == 3:
        return 2 * j
    pw = 16 // bits
    return (j // pw) * (32 // bits) + j % pw


@triton.constexpr_function
def pair_hi(j, bits):
    """Offset of pair j's high-half code from its block's first code."""
    j, bits = int(_value(j)), int(_value(bits))
    if bits == 3:
        return 2 * j + 1
    return pair_lo(j, bits) + 16 // bits


@triton.jit
def runtime_zero():
    """0, computed from the launch (grid z = 1) so that no compiler can fold it: constants offset by
    it stay in loop-invariant registers instead of being rematerialised before every use."""
    return tl.num_programs(2) - 1


@triton.jit
def decode_pair(w0, w1, w2, w3, J: tl.constexpr, BITS: tl.constexpr, BF16: tl.constexpr, zero):
    """Pair J of a block as packed (base + lo, base + hi) fp16/bf16 bits in one int32 (see the module
    docstring). w0..w3: the block's words (1-4 of them, see block_words; the rest are ignored).

    `zero` (:func:`runtime_zero`) keeps the magic word in a register: a 3-input logic op takes one
    immediate (the mask), and with both constant the compiler rematerialises one before every op.
    """
    MAGIC = pair_base(J, BITS, BF16) + zero
    if BITS == 3 and J == 15:  # codes 30 and 31: bit j sits in bits 15 and 31 of word j
        t = ((w0 >> 15) & 0x00010001) | ((w1 >> 14) & 0x00020002) | ((w2 >> 13) & 0x00040004)
        return t | MAGIC
    WI: tl.constexpr = pair_word(J, BITS, BF16)
    SH: tl.constexpr = pair_shift(J, BITS, BF16)
    if WI == 0:
        w = w0
    elif WI == 1:
        w = w1
    elif WI == 2:
        w = w2
    else:
        w = w3
    if SH != 0:
        w = w >> SH
    return (w & pair_mask(J, BITS, BF16)) | MAGIC


@triton.jit
def halves(v, BF16: tl.constexpr):
    """The two fp16/bf16 numbers packed in int32 v, as fp32 (lo, hi)."""
    dt: tl.constexpr = tl.bfloat16 if BF16 else tl.float16
    lo = (v & 0xFFFF).to(tl.int16).to(dt, bitcast=True).to(tl.float32)
    hi = ((v >> 16) & 0xFFFF).to(tl.int16).to(dt, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def pick8(x, E: tl.constexpr):
    """x[:, E] of x [NW * 32, 8] (lane 32w + 4g + c) as [NW, 8, 4] (register selection by three splits)."""
    t = tl.reshape(x, [x.shape[0] // 32, 8, 4, 2, 2, 2])
    a, b = tl.split(t)
    t = b if E % 2 else a
    a, b = tl.split(t)
    t = b if (E // 2) % 2 else a
    a, b = tl.split(t)
    return b if (E // 4) % 2 else a


@triton.jit
def pick(x0, x1, x2, x3, E: tl.constexpr):
    """Element E of a block's activations held as four [..., 8] chunks (E // 8 picks the chunk)."""
    if E // 8 == 0:
        return pick8(x0, E % 8)
    elif E // 8 == 1:
        return pick8(x1, E % 8)
    elif E // 8 == 2:
        return pick8(x2, E % 8)
    else:
        return pick8(x3, E % 8)


@triton.jit
def rows_of(v, R: tl.constexpr):
    """Split a lane's row quads v [NW * 32, 4, R/2] (lane 32w + 4g + c; rows 4*r2 + 2*rb_lo + h) into the two
    fragment tensors [R, NW, 8, 4] of MMA rows g (h = 0) and g + 8 (h = 1)."""
    NW: tl.constexpr = v.shape[0] // 32
    t = tl.reshape(v, [NW, 8, 4, 2, 2, R // 2])
    t = tl.permute(t, [5, 3, 0, 1, 2, 4])
    t = tl.reshape(t, [R, NW, 8, 4, 2])
    return tl.split(t)


@triton.jit
def _mma_twin(a0, a1, a2, a3, x0, x1, x2, x3, c0, c1, c2, c3, BF16: tl.constexpr):
    """The m16n8k16 product of fragment tensors computed with tensor ops (interpreter twin)."""
    L: tl.constexpr = c0.shape[0]
    NW: tl.constexpr = c0.shape[1]
    lo0, hi0 = halves(a0, BF16)
    lo1, hi1 = halves(a1, BF16)
    lo2, hi2 = halves(a2, BF16)
    lo3, hi3 = halves(a3, BF16)
    # A [L, NW, g, c, h, s, e] -> [L, NW, i = 8h + g, k = 8s + 2c + e]
    a = tl.join(tl.join(tl.join(lo0, hi0), tl.join(lo1, hi1)), tl.join(tl.join(lo2, hi2), tl.join(lo3, hi3)))
    a = tl.permute(a, [0, 1, 5, 2, 6, 3, 4])  # joins appended (e, h, s)
    a = tl.reshape(a, [L, NW, 16, 16])
    # B [L, NW, g = j, c, s, e] -> [L, NW, j, k = 8s + 2c + e]
    b = tl.join(tl.join(tl.broadcast_to(x0.to(tl.float32), c0.shape), tl.broadcast_to(x1.to(tl.float32), c0.shape)),
                tl.join(tl.broadcast_to(x2.to(tl.float32), c0.shape), tl.broadcast_to(x3.to(tl.float32), c0.shape)))
    b = tl.permute(b, [0, 1, 2, 5, 3, 4])  # joins appended (e, s)
    b = tl.reshape(b, [L, NW, 8, 16])
    d = tl.sum(a[:, :, :, None, :] * b[:, :, None, :, :], axis=4)  # [L, NW, i, j]
    # D [L, NW, h, g, c, e] -> fragments d_{2h+e} at lane (g, c)
    d = tl.reshape(d, [L, NW, 2, 8, 4, 2])
    d = tl.permute(d, [0, 1, 3, 4, 5, 2])  # [L, NW, g, c, e, h]
    dh0, dh1 = tl.split(d)
    d0, d1 = tl.split(dh0)
    d2, d3 = tl.split(dh1)
    return d0 + c0, d1 + c1, d2 + c2, d3 + c3


@triton.jit
def mma16816(a0, a1, a2, a3, x0, x1, x2, x3, c0, c1, c2, c3, BF16: tl.constexpr, USE_ASM: tl.constexpr):
    """D = A.B + C per fragment element: a* int32 (two fp16/bf16 each), x0/x1 and x2/x3 the halves of
    B registers b0 and b1, c* fp32 [L, NW, 8, 4]; returns d0..d3. Inline PTX when USE_ASM, else the twin."""
    if USE_ASM:
        x0 = tl.broadcast_to(x0, c0.shape)
        x1 = tl.broadcast_to(x1, c0.shape)
        x2 = tl.broadcast_to(x2, c0.shape)
        x3 = tl.broadcast_to(x3, c0.shape)
        if BF16:
            return tl.inline_asm_elementwise(MMA_BF16, MMA_CONSTRAINTS, [a0, a1, a2, a3, c0, c1, c2, c3, x0, x1, x2, x3],
                                             dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True,
                                             pack=1)
        return tl.inline_asm_elementwise(MMA_F16, MMA_CONSTRAINTS, [a0, a1, a2, a3, c0, c1, c2, c3, x0, x1, x2, x3],
                                         dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)
    return _mma_twin(a0, a1, a2, a3, x0, x1, x2, x3, c0, c1, c2, c3, BF16)
