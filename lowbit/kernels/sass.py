"""Static instruction counts from SASS: parse ``cuobjdump -sass``, classify, find the main loop.

Used by the static roofline (``lowbit.perf.static_model``): with no GPU at hand, the cost of a
kernel is read from its compiled main loop. :func:`analyze` is the entry point::

    report = analyze(sass_text)                     # the main loop, picked by the rule below
    report.instructions_per_weight(threads_per_cta=128, weights_per_iteration=128 * 128)

Format handled: what ``cuobjdump -sass`` (the copy inside the triton wheel) prints for sm_80 and
sm_90 cubins, e.g. ``/*0080*/  @P0 LDG.E.128 R4, desc[UR4][R2.64] ;`` followed by encoding
comments, grouped under ``Function : <name>`` headers.

Classification (:data:`CLASSES`, one table keyed by mnemonic) with these decisions:

- global loads: LDG (width from ``.U8/.S8/.U16/.S16/.64/.128``, else 32 bits), LDGSTS (cp.async,
  same widths), generic LD, and TMA bulk loads (UTMALDG/UBLKCP: width unknown, flagged);
- barrier: BAR, the sm_90 mbarrier ops (SYNCS), WARPGROUP.ARRIVE / WARPGROUP.DEPBAR (they fence
  and wait for the asynchronous warpgroup MMA; the MMA work itself is HGMMA/IGMMA), the cp.async
  waits (LDGDEPBAR, DEPBAR), MEMBAR, FENCE, ERRBAR, CGAERRBAR;
- conversions (I2F, I2FP, F2I, F2F, F2FP, I2I, FRND) are their own class, CONVERT, because they
  are a large part of dequantization and several run at a fraction of the issue rate;
- MUFU (reciprocal, exp, ...) is SFU; FP64 math is FP64; spills (LDL/STL) are LOCAL;
- moves and predicate logic (MOV, CS2R, SEL, PLOP3, P2R, R2P) count as INTEGER; uniform-datapath
  ops (``U*``, R2UR, S2UR) as UNIFORM; S2R, LDC, SHFL, VOTE, CCTL... as OTHER;
- ptxas also uses ``HFMA2.MMA Rd, -RZ, RZ, imm`` to materialise constants: it stays FP16X2;
- an instruction predicated on ``!PT`` never executes (ptxas padding): it is NOP, like NOP itself.

Every class costs one issue slot per warp instruction in the static model; the classes are for
reading where a loop's slots go.

Loops are backward branches (a BRA whose target lies before it). Branches to one target form one
loop (from the target to the last of them); partially overlapping loops are merged into their
union; containment gives nesting. The *main loop* is, among the outermost loops, the one with
the most global-load bytes per iteration (a tie goes to more MMA instructions, then more
instructions, then the earlier loop); callers can name another loop by its first offset. An inner
loop's body counts once per trip; trip counts are not in the SASS, so callers pass `inner_trips`,
and without it each inner loop counts once and the report's ``lower_bound`` flag is set.
Instruction counts are of the static body: code skipped by forward branches inside the loop is
counted as if it ran (``forward_branches`` says how many such branches there are).
"""
from __future__ import annotations

import enum
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["InstrClass", "MmaKind", "Instruction", "SassFunction", "Loop", "MmaShape", "LoopReport", "CLASSES",
           "parse_sass", "classify", "access_bits", "mma_shape", "find_loops", "select_main_loop", "analyze",
           "cuobjdump_path", "sass_of_cubin"]


class InstrClass(str, enum.Enum):
    """What an instruction does, for reading where a loop's issue slots go."""

    GLOBAL_LOAD = "global_load"
    GLOBAL_STORE = "global_store"
    GLOBAL_ATOMIC = "global_atomic"
    LOCAL = "local"  # LDL/STL: register spills
    SHARED_LOAD = "shared_load"
    SHARED_STORE = "shared_store"
    BARRIER = "barrier"
    FP32 = "fp32"
    FP16X2 = "fp16x2"
    FP64 = "fp64"
    CONVERT = "convert"
    SFU = "sfu"
    INTEGER = "integer"
    UNIFORM = "uniform"
    MMA = "mma"
    CONTROL = "control"
    NOP = "nop"
    OTHER = "other"


class MmaKind(str, enum.Enum):
    """Tensor-core input type, which selects the peak rate of the static model."""

    FP16 = "fp16"  # fp16 and bf16 inputs (same peak)
    TF32 = "tf32"
    INT8 = "int8"  # int8 (and int4) inputs, integer accumulation
    FP8 = "fp8"
    FP64 = "fp64"
    OTHER = "other"


_C = InstrClass
# The classification table: SASS mnemonic (opcode without modifiers) -> class. Mnemonics not
# listed fall back to UNIFORM when they start with "U" (uniform datapath), else OTHER.
CLASSES: dict[str, InstrClass] = {
    # global memory
    "LDG": _C.GLOBAL_LOAD, "LDGSTS": _C.GLOBAL_LOAD, "LD": _C.GLOBAL_LOAD,
    "UTMALDG": _C.GLOBAL_LOAD, "UBLKCP": _C.GLOBAL_LOAD,
    "STG": _C.GLOBAL_STORE, "ST": _C.GLOBAL_STORE, "UTMASTG": _C.GLOBAL_STORE,
    "ATOMG": _C.GLOBAL_ATOMIC, "RED": _C.GLOBAL_ATOMIC, "ATOM": _C.GLOBAL_ATOMIC, "REDG": _C.GLOBAL_ATOMIC,
    "UTMAREDG": _C.GLOBAL_ATOMIC,
    "LDL": _C.LOCAL, "STL": _C.LOCAL,
    # shared memory
    "LDS": _C.SHARED_LOAD, "LDSM": _C.SHARED_LOAD, "ATOMS": _C.SHARED_STORE,
    "STS": _C.SHARED_STORE, "STSM": _C.SHARED_STORE,
    # synchronisation and waits
    "BAR": _C.BARRIER, "SYNCS": _C.BARRIER, "WARPGROUP": _C.BARRIER, "DEPBAR": _C.BARRIER,
    "LDGDEPBAR": _C.BARRIER, "MEMBAR": _C.BARRIER, "FENCE": _C.BARRIER, "ERRBAR": _C.BARRIER,
    "CGAERRBAR": _C.BARRIER, "UCGABAR_ARV": _C.BARRIER, "UCGABAR_WAIT": _C.BARRIER, "ARRIVES": _C.BARRIER,
    # fp32
    "FFMA": _C.FP32, "FADD": _C.FP32, "FMUL": _C.FP32, "FMNMX": _C.FP32, "FSETP": _C.FP32, "FSET": _C.FP32,
    "FSEL": _C.FP32, "FCHK": _C.FP32, "FSWZADD": _C.FP32, "FFMA32I": _C.FP32, "FADD32I": _C.FP32,
    "FMUL32I": _C.FP32,
    # packed fp16x2 / bf16x2
    "HFMA2": _C.FP16X2, "HADD2": _C.FP16X2, "HMUL2": _C.FP16X2, "HMNMX2": _C.FP16X2, "HSETP2": _C.FP16X2,
    "HSET2": _C.FP16X2, "HFMA2_32I": _C.FP16X2, "HADD2_32I": _C.FP16X2, "HMUL2_32I": _C.FP16X2,
    # fp64
    "DFMA": _C.FP64, "DADD": _C.FP64, "DMUL": _C.FP64, "DSETP": _C.FP64, "DMNMX": _C.FP64,
    # conversions
    "I2F": _C.CONVERT, "I2FP": _C.CONVERT, "F2I": _C.CONVERT, "F2IP": _C.CONVERT, "F2F": _C.CONVERT,
    "F2FP": _C.CONVERT, "I2I": _C.CONVERT, "I2IP": _C.CONVERT, "FRND": _C.CONVERT,
    # special functions
    "MUFU": _C.SFU,
    # integer, logic, moves, predicates
    "IADD3": _C.INTEGER, "IADD": _C.INTEGER, "IADD32I": _C.INTEGER, "IMAD": _C.INTEGER, "IMAD32I": _C.INTEGER,
    "IMUL": _C.INTEGER, "IMUL32I": _C.INTEGER, "IMNMX": _C.INTEGER, "IABS": _C.INTEGER, "ISETP": _C.INTEGER,
    "LOP3": _C.INTEGER, "LOP": _C.INTEGER, "LOP32I": _C.INTEGER, "SHF": _C.INTEGER, "SHL": _C.INTEGER,
    "SHR": _C.INTEGER, "PRMT": _C.INTEGER, "LEA": _C.INTEGER, "SEL": _C.INTEGER, "SGXT": _C.INTEGER,
    "BMSK": _C.INTEGER, "BREV": _C.INTEGER, "FLO": _C.INTEGER, "POPC": _C.INTEGER, "IDP": _C.INTEGER,
    "IDP4A": _C.INTEGER, "VIADD": _C.INTEGER, "VIMNMX": _C.INTEGER, "VIADDMNMX": _C.INTEGER,
    "VIMNMX3": _C.INTEGER, "IMNMX3": _C.INTEGER, "IADD3X": _C.INTEGER,
    "MOV": _C.INTEGER, "MOV32I": _C.INTEGER, "CS2R": _C.INTEGER, "PLOP3": _C.INTEGER, "PSETP": _C.INTEGER,
    "P2R": _C.INTEGER, "R2P": _C.INTEGER,
    # uniform datapath (explicit entries; other U* mnemonics fall back to UNIFORM)
    "R2UR": _C.UNIFORM, "S2UR": _C.UNIFORM, "ULDC": _C.UNIFORM, "UMOV": _C.UNIFORM, "UIADD3": _C.UNIFORM,
    "UIMAD": _C.UNIFORM, "ULOP3": _C.UNIFORM, "USHF": _C.UNIFORM, "UISETP": _C.UNIFORM, "ULEA": _C.UNIFORM,
    "USEL": _C.UNIFORM, "USGXT": _C.UNIFORM, "UPRMT": _C.UNIFORM, "UP2UR": _C.UNIFORM, "UPLOP3": _C.UNIFORM,
    "UFLO": _C.UNIFORM, "UPOPC": _C.UNIFORM, "UBMSK": _C.UNIFORM, "UBREV": _C.UNIFORM,
    # tensor cores
    "HMMA": _C.MMA, "IMMA": _C.MMA, "BMMA": _C.MMA, "DMMA": _C.MMA, "HGMMA": _C.MMA, "IGMMA": _C.MMA,
    "QGMMA": _C.MMA, "BGMMA": _C.MMA,
    # control flow
    "BRA": _C.CONTROL, "BRX": _C.CONTROL, "JMP": _C.CONTROL, "JMX": _C.CONTROL, "CALL": _C.CONTROL,
    "RET": _C.CONTROL, "EXIT": _C.CONTROL, "BSSY": _C.CONTROL, "BSYNC": _C.CONTROL, "BREAK": _C.CONTROL,
    "WARPSYNC": _C.CONTROL, "YIELD": _C.CONTROL, "BPT": _C.CONTROL, "KILL": _C.CONTROL, "ACQBULK": _C.CONTROL,
    "NOP": _C.NOP,
    # the rest, listed so that it is a decision rather than a fallback
    "S2R": _C.OTHER, "LDC": _C.OTHER, "SHFL": _C.OTHER, "VOTE": _C.OTHER, "VOTEU": _C.OTHER, "MATCH": _C.OTHER,
    "CCTL": _C.OTHER, "REDUX": _C.OTHER, "CREDUX": _C.OTHER, "B2R": _C.OTHER, "R2B": _C.OTHER,
}

_LOADS = {_C.GLOBAL_LOAD, _C.GLOBAL_STORE, _C.GLOBAL_ATOMIC, _C.SHARED_LOAD, _C.SHARED_STORE, _C.LOCAL}


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: byte offset, guard predicate ("" when none), opcode and operands."""

    offset: int
    opcode: str  # with modifiers, e.g. "LDG.E.128"
    operands: tuple[str, ...] = ()
    predicate: str = ""  # e.g. "P0", "!P2", "!PT", "UP1"

    @property
    def mnemonic(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    @property
    def iclass(self) -> InstrClass:
        return classify(self)

    def branch_target(self) -> int | None:
        """Target offset of a direct BRA (None for other instructions or indirect branches)."""
        if self.mnemonic != "BRA" or not self.operands:
            return None
        last = self.operands[-1].strip()
        return int(last, 16) if re.fullmatch(r"0x[0-9a-fA-F]+", last) else None


@dataclass(frozen=True)
class SassFunction:
    """The instructions of one kernel (or device function) in a dump, in address order."""

    name: str
    instructions: tuple[Instruction, ...]

    def between(self, first: int, last: int) -> list[Instruction]:
        return [i for i in self.instructions if first <= i.offset <= last]


_FUNC_RE = re.compile(r"^\s*Function\s*:\s*(\S+)")
_INSTR_RE = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s*(.*?)\s*;")
_PRED_RE = re.compile(r"^@(!?U?P(?:T|\d+))\s+")


def _split_operands(text: str) -> tuple[str, ...]:
    """Split on commas outside brackets."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return tuple(out)


def parse_instruction(offset: int, body: str) -> Instruction:
    """Parse the text between the offset comment and ';' (e.g. "@!P0 LDG.E.128 R4, [R2.64]")."""
    body = body.strip().strip("{}").strip()
    pred = ""
    m = _PRED_RE.match(body)
    if m:
        pred = m.group(1)
        body = body[m.end():]
    parts = body.split(None, 1)
    if not parts:
        raise ValueError(f"empty SASS instruction at offset {offset:#x}")
    return Instruction(offset, parts[0], _split_operands(parts[1]) if len(parts) > 1 else (), pred)


def parse_sass(text: str) -> list[SassFunction]:
    """The functions of a ``cuobjdump -sass`` dump. Instructions before any ``Function :`` header
    (e.g. a pasted snippet) form a function named ""."""
    if not isinstance(text, str):
        raise TypeError(f"SASS text must be a str, got {type(text).__name__}")
    funcs: list[tuple[str, list]] = []
    name, cur = "", []
    for line in text.splitlines():
        fm = _FUNC_RE.match(line)
        if fm:
            if cur or name:
                funcs.append((name, cur))
            name, cur = fm.group(1), []
            continue
        im = _INSTR_RE.match(line)
        if im:
            cur.append(parse_instruction(int(im.group(1), 16), im.group(2)))
    if cur or name:
        funcs.append((name, cur))
    out = []
    for fname, instrs in funcs:
        offs = [i.offset for i in instrs]
        if offs != sorted(offs) or len(set(offs)) != len(offs):
            raise ValueError(f"SASS of {fname or '<snippet>'}: instruction offsets are not strictly increasing")
        out.append(SassFunction(fname, tuple(instrs)))
    return out


def classify(instr: Instruction) -> InstrClass:
    """The instruction's class: NOP when predicated on !PT (never runs), else by :data:`CLASSES`."""
    if instr.predicate == "!PT":
        return InstrClass.NOP
    cls = CLASSES.get(instr.mnemonic)
    if cls is not None:
        return cls
    return InstrClass.UNIFORM if instr.mnemonic.startswith("U") else InstrClass.OTHER


_WIDTH_MODS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "32": 32, "64": 64, "128": 128}


def access_bits(instr: Instruction) -> int | None:
    """Bits one thread moves with a memory instruction: from ``.U8/.S16/.64/.128`` (32 when
    unmarked); LDSM/STSM: 32 bits per 8x8 matrix (``.2``: 64, ``.4``: 128). None for non-memory
    instructions and for TMA bulk copies (their size is in a descriptor, not the opcode)."""
    cls = CLASSES.get(instr.mnemonic)
    if cls not in _LOADS or instr.mnemonic in ("UTMALDG", "UBLKCP", "UTMASTG", "UTMAREDG"):
        return None
    if instr.predicate == "!PT":  # never executes
        return 0
    mods = instr.modifiers
    if instr.mnemonic in ("LDSM", "STSM"):
        count = 1
        for i, m in enumerate(mods):
            if m in ("M88", "MT88") and i + 1 < len(mods) and mods[i + 1].isdigit():
                count = int(mods[i + 1])
        return 32 * count
    for m in mods:
        if m in _WIDTH_MODS:
            return _WIDTH_MODS[m]
    return 32


@dataclass(frozen=True)
class MmaShape:
    """One tensor-core instruction shape: M x N x K per issuing unit (a warp, or a warpgroup of 4)."""

    m: int
    n: int
    k: int
    kind: MmaKind
    warpgroup: bool  # HGMMA/IGMMA/QGMMA: the shape is the work of 4 warps together

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of one instruction for its whole unit."""
        return 2 * self.m * self.n * self.k

    @property
    def flops_per_thread(self) -> float:
        return self.flops / (128 if self.warpgroup else 32)

    def label(self) -> str:
        return f"{'wg' if self.warpgroup else 'warp'}:{self.m}x{self.n}x{self.k}:{self.kind.value}"


# warp-level MMA shape codes as ptxas prints them (m, n, k)
_WARP_SHAPES = {"16816": (16, 8, 16), "16832": (16, 8, 32), "1688": (16, 8, 8), "1684": (16, 8, 4),
                "8816": (8, 8, 16), "8832": (8, 8, 32), "884": (8, 8, 4), "16864": (16, 8, 64),
                "88128": (8, 8, 128), "168128": (16, 8, 128), "168256": (16, 8, 256)}
_WG_SHAPE_RE = re.compile(r"^(\d+)x(\d+)x(\d+)$")


def _mma_kind(instr: Instruction) -> MmaKind:
    mods = set(instr.modifiers)
    mn = instr.mnemonic
    if mn in ("IMMA", "IGMMA", "BMMA", "BGMMA"):
        return MmaKind.INT8
    if mn == "DMMA":
        return MmaKind.FP64
    if mn == "QGMMA" or mods & {"E4M3", "E5M2"}:
        return MmaKind.FP8
    if "TF32" in mods:
        return MmaKind.TF32
    if mn in ("HMMA", "HGMMA"):
        return MmaKind.FP16
    return MmaKind.OTHER


def mma_shape(instr: Instruction) -> MmaShape | None:
    """Shape and kind of an MMA instruction (None when not MMA or when the shape is not recognised)."""
    if classify(instr) is not InstrClass.MMA:
        return None
    mods = instr.modifiers
    if not mods:
        return None
    warpgroup = instr.mnemonic.endswith("GMMA")
    if warpgroup:
        m = _WG_SHAPE_RE.match(mods[0])
        if not m:
            return None
        dims = tuple(int(v) for v in m.groups())
    else:
        dims = _WARP_SHAPES.get(mods[0])
        if dims is None:
            return None
    return MmaShape(dims[0], dims[1], dims[2], _mma_kind(instr), warpgroup)


# -- loops -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loop:
    """A loop's offset range [first, last] (first = branch target, last = the backward branch)."""

    first: int
    last: int
    depth: int = 0  # 0: outermost
    parent: int | None = None  # first offset of the enclosing loop

    def contains(self, offset: int) -> bool:
        return self.first <= offset <= self.last

    def encloses(self, other: Loop) -> bool:
        return (self.first, self.last) != (other.first, other.last) and \
            self.first <= other.first and other.last <= self.last


def find_loops(func: SassFunction) -> list[Loop]:
    """Loops of a function from its backward branches, with nesting depth and parent, sorted by
    first offset (outer before inner at the same offset)."""
    spans: dict[int, int] = {}
    for ins in func.instructions:
        tgt = ins.branch_target()
        if tgt is not None and tgt < ins.offset:  # a branch to itself is ptxas's end-of-code trap
            spans[tgt] = max(spans.get(tgt, ins.offset), ins.offset)
    ranges = sorted(spans.items())
    merged = True
    while merged:  # partial overlaps (not nested) merge into their union
        merged = False
        for i in range(len(ranges)):
            for j in range(i + 1, len(ranges)):
                (a0, a1), (b0, b1) = ranges[i], ranges[j]
                if a0 < b0 <= a1 < b1:
                    ranges[i] = (a0, b1)
                    del ranges[j]
                    merged = True
                    break
            if merged:
                break
    ranges = sorted(set(ranges), key=lambda r: (r[0], -r[1]))
    loops: list[Loop] = []
    for first, last in ranges:
        outer = [lp for lp in loops if lp.first <= first and last <= lp.last]
        parent = max(outer, key=lambda lp: lp.depth) if outer else None
        loops.append(Loop(first, last, 0 if parent is None else parent.depth + 1,
                          None if parent is None else parent.first))
    return loops


# -- per-loop report ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopReport:
    """Per-iteration counts of one loop (inner loops weighted by their trip counts).

    Byte and FLOP figures are per thread per iteration; multiply by threads per CTA for a CTA.
    Global bytes are what the load instructions request, not DRAM traffic: loads that every
    thread repeats (a broadcast activation) or that hit in L1/L2 count in full.
    """

    kernel: str
    first: int
    last: int
    depth: int
    static_instructions: int  # instructions in [first, last], inner loops once
    instructions: float  # per iteration, inner loops x their trips
    counts: Mapping[InstrClass, float]  # per iteration, by class
    global_load_widths: Mapping[int, float]  # bits -> loads per iteration (TMA excluded)
    global_load_bytes: float  # per thread per iteration
    global_store_bytes: float
    shared_load_bytes: float
    shared_store_bytes: float
    unknown_width_loads: float  # TMA bulk loads: their bytes are not in global_load_bytes
    mma: Mapping[str, float]  # MmaShape.label() -> instructions per iteration
    mma_flops_per_thread: float
    mma_kind: MmaKind | None
    unknown_mma: float  # MMA instructions whose shape was not recognised (no FLOPs counted)
    inner_loops: tuple[Loop, ...]
    inner_trips: Mapping[int, float]  # inner loop first offset -> trips used
    lower_bound: bool  # an inner loop was counted once for want of a trip count
    forward_branches: int  # conditional forward branches inside: counts include skipped code
    outside_instructions: int  # instructions of the function outside this loop (NOPs excluded)
    loops: tuple[Loop, ...] = field(default=(), repr=False)  # every loop of the function

    def instructions_per_weight(self, threads_per_cta: int, weights_per_iteration: float) -> float:
        """Thread-instructions per weight element: instructions per iteration x threads / weights
        one iteration of the CTA consumes."""
        _check_positive(threads_per_cta=threads_per_cta, weights_per_iteration=weights_per_iteration)
        return self.instructions * threads_per_cta / weights_per_iteration

    def load_bytes_per_weight(self, threads_per_cta: int, weights_per_iteration: float) -> float:
        """Global bytes the loop's load instructions request per weight element (all operands)."""
        _check_positive(threads_per_cta=threads_per_cta, weights_per_iteration=weights_per_iteration)
        return self.global_load_bytes * threads_per_cta / weights_per_iteration

    def mma_flops_per_iteration(self, threads_per_cta: int) -> float:
        """Tensor-core FLOPs of one iteration of a whole CTA."""
        _check_positive(threads_per_cta=threads_per_cta)
        return self.mma_flops_per_thread * threads_per_cta

    def to_dict(self) -> dict:
        """Plain JSON-ready values (class names as strings)."""
        return {
            "kernel": self.kernel, "first": self.first, "last": self.last, "depth": self.depth,
            "static_instructions": self.static_instructions, "instructions": self.instructions,
            "counts": {c.value: v for c, v in self.counts.items()},
            "global_load_widths": {str(b): v for b, v in self.global_load_widths.items()},
            "global_load_bytes": self.global_load_bytes, "global_store_bytes": self.global_store_bytes,
            "shared_load_bytes": self.shared_load_bytes, "shared_store_bytes": self.shared_store_bytes,
            "unknown_width_loads": self.unknown_width_loads, "mma": dict(self.mma),
            "mma_flops_per_thread": self.mma_flops_per_thread,
            "mma_kind": None if self.mma_kind is None else self.mma_kind.value, "unknown_mma": self.unknown_mma,
            "inner_loops": [[lp.first, lp.last] for lp in self.inner_loops],
            "inner_trips": {str(k): v for k, v in self.inner_trips.items()}, "lower_bound": self.lower_bound,
            "forward_branches": self.forward_branches, "outside_instructions": self.outside_instructions,
        }


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


def _trips_for(inner: Sequence[Loop], inner_trips) -> tuple[dict[int, float], bool]:
    """Trip count per inner loop and whether any was assumed to be 1."""
    if inner_trips is None:
        return {lp.first: 1.0 for lp in inner}, bool(inner)
    if isinstance(inner_trips, Mapping):
        known = {lp.first for lp in inner}
        extra = [o for o in inner_trips if o not in known]
        if extra:
            raise ValueError(f"inner_trips names offsets {[hex(o) if isinstance(o, int) else o for o in extra]} "
                             f"that start no inner loop; inner loops start at {sorted(hex(o) for o in known)}")
        for k, v in inner_trips.items():
            _check_trips(v, f"inner_trips[{k:#x}]")
        return {lp.first: float(inner_trips.get(lp.first, 1)) for lp in inner}, \
            any(lp.first not in inner_trips for lp in inner)
    _check_trips(inner_trips, "inner_trips")
    return {lp.first: float(inner_trips) for lp in inner}, False


def _check_trips(v, name: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
        raise ValueError(f"{name} must be a non-negative number of trips, got {v!r}")


def loop_report(func: SassFunction, loop: Loop, loops: Sequence[Loop] | None = None,
                inner_trips: float | Mapping[int, float] | None = None) -> LoopReport:
    """Counts of one loop of `func` (see :func:`analyze` for `inner_trips`)."""
    loops = list(find_loops(func) if loops is None else loops)
    inner = [lp for lp in loops if loop.encloses(lp)]
    trips, lower = _trips_for(inner, inner_trips)
    counts: dict[InstrClass, float] = {}
    widths: dict[int, float] = {}
    mma: dict[str, float] = {}
    kinds: dict[MmaKind, float] = {}
    gl = gs = sl = ss = unknown_w = unknown_mma = flops = total = 0.0
    static = forward = 0
    body = func.between(loop.first, loop.last)
    for ins in body:
        static += 1
        w = 1.0
        for lp in inner:
            if lp.contains(ins.offset):
                w *= trips[lp.first]
        cls = classify(ins)
        counts[cls] = counts.get(cls, 0.0) + w
        total += w
        tgt = ins.branch_target()
        if tgt is not None and tgt > ins.offset and ins.predicate:
            forward += 1
        if cls in _LOADS:
            bits = access_bits(ins)
            if bits is None:
                unknown_w += w if cls is InstrClass.GLOBAL_LOAD else 0.0
                continue
            nbytes = w * bits / 8
            if cls is InstrClass.GLOBAL_LOAD:
                widths[bits] = widths.get(bits, 0.0) + w
                gl += nbytes
            elif cls in (InstrClass.GLOBAL_STORE, InstrClass.GLOBAL_ATOMIC):
                gs += nbytes
            elif cls is InstrClass.SHARED_LOAD:
                sl += nbytes
            elif cls is InstrClass.SHARED_STORE:
                ss += nbytes
        elif cls is InstrClass.MMA:
            shape = mma_shape(ins)
            if shape is None:
                unknown_mma += w
                continue
            mma[shape.label()] = mma.get(shape.label(), 0.0) + w
            kinds[shape.kind] = kinds.get(shape.kind, 0.0) + w * shape.flops_per_thread
            flops += w * shape.flops_per_thread
    outside = sum(1 for ins in func.instructions
                  if not loop.contains(ins.offset) and classify(ins) is not InstrClass.NOP
                  and ins.branch_target() != ins.offset)
    return LoopReport(
        kernel=func.name, first=loop.first, last=loop.last, depth=loop.depth, static_instructions=static,
        instructions=total, counts=dict(sorted(counts.items(), key=lambda kv: list(InstrClass).index(kv[0]))),
        global_load_widths=dict(sorted(widths.items())), global_load_bytes=gl, global_store_bytes=gs,
        shared_load_bytes=sl, shared_store_bytes=ss, unknown_width_loads=unknown_w, mma=mma,
        mma_flops_per_thread=flops, mma_kind=max(kinds, key=kinds.get) if kinds else None,
        unknown_mma=unknown_mma, inner_loops=tuple(inner), inner_trips=trips, lower_bound=lower,
        forward_branches=forward, outside_instructions=outside, loops=tuple(loops))


def select_main_loop(func: SassFunction, loops: Sequence[Loop] | None = None) -> Loop:
    """The outermost loop with the most global-load bytes per iteration (inner loops once);
    ties: more MMA instructions, then more instructions, then the earlier loop."""
    loops = list(find_loops(func) if loops is None else loops)
    top = [lp for lp in loops if lp.depth == 0]
    if not top:
        raise ValueError(f"no loop (backward branch) in the SASS of {func.name or '<snippet>'}")

    def key(lp: Loop):
        r = loop_report(func, lp, loops)
        return (r.global_load_bytes, sum(r.mma.values()) + r.unknown_mma, r.instructions, -lp.first)

    return max(top, key=key)


def _pick_function(funcs: Sequence[SassFunction], kernel_name: str | None) -> SassFunction:
    if not funcs:
        raise ValueError("no SASS function found in the text (expected `cuobjdump -sass` output)")
    if kernel_name is None:
        if len(funcs) != 1:
            raise ValueError(f"the SASS holds {len(funcs)} functions; pass kernel_name= one of "
                             f"{[f.name for f in funcs]}")
        return funcs[0]
    for f in funcs:
        if f.name == kernel_name:
            return f
    raise ValueError(f"no function {kernel_name!r} in the SASS; it holds {[f.name for f in funcs]}")


def analyze(sass_text: str, kernel_name: str | None = None, loop: int | None = None,
            inner_trips: float | Mapping[int, float] | None = None) -> LoopReport:
    """Counts of a kernel's main loop (or of the loop starting at offset `loop`).

    `kernel_name` picks the function when the dump holds several. `inner_trips` gives the trip
    count of inner loops: one number for all, or {first offset: trips}; inner loops without one
    count once and set ``lower_bound``.
    """
    func = _pick_function(parse_sass(sass_text), kernel_name)
    loops = find_loops(func)
    if loop is None:
        chosen = select_main_loop(func, loops)
    else:
        if isinstance(loop, bool) or not isinstance(loop, int):
            raise TypeError(f"loop must be the int first offset of a loop, got {type(loop).__name__}")
        match = [lp for lp in loops if lp.first == loop]
        if not match:
            raise ValueError(f"no loop starts at offset {loop:#x} in {func.name or '<snippet>'}; loops: "
                             f"{[(hex(lp.first), hex(lp.last)) for lp in loops]}")
        chosen = match[0]
    return loop_report(func, chosen, loops, inner_trips)


# -- getting SASS --------------------------------------------------------------------------------
def cuobjdump_path() -> str:
    """The cuobjdump shipped inside the triton wheel (imports triton lazily)."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found in the triton wheel at {path}")
    return str(path)


def sass_of_cubin(cubin: bytes) -> str:
    """``cuobjdump -sass`` text of a cubin (e.g. ``triton.compile(...).asm["cubin"]``)."""
    if not isinstance(cubin, (bytes, bytearray)) or not cubin:
        raise TypeError("cubin must be non-empty bytes")
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "k.cubin")
        with open(f, "wb") as fh:
            fh.write(cubin)
        return subprocess.run([cuobjdump_path(), "-sass", f], capture_output=True, text=True, check=True).stdout
