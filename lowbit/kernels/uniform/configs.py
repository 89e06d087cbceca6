"""Search spaces, validity rules and heuristics for the uniform kernels.

Three kernels serve two paths (kernels.py): the GEMV path runs the tensor-core GEMV for fp16/bf16
activations (:func:`mma_gemv`) and the CUDA-core GEMV otherwise (fp32 x, bf16 int8); the GEMM
path runs the tensor-core GEMM for every dtype. A config's fields mean, per kernel:

- tensor-core GEMV: block_m = rows of x per program (1, 2, 4, 8, 16), block_n = weight rows per
  program (16 per MMA row block: 32, 64, 128), block_k = codes per virtual group (a slot's
  share of one super-step; divides the group size), num_warps = warps splitting K;
- CUDA-core GEMV and GEMM: the usual tile; a K tile lies in one group and holds whole packing
  blocks.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton

from ...formats import QuantizedWeight, UniformSpec, code_block
from ..base import SHARED_BUDGET, KernelConfig, KernelPath, common_config_problem, sm_count

GEMV_BLOCK_M = (1, 2, 4, 8, 16)
GEMV_BLOCK_N = (32, 64, 128)
GEMV_BLOCK_K = (32, 64, 128, 256)
GEMV_WARPS = (2, 4, 8)
GEMV_SPLIT_K = (1, 2, 4, 8, 16)
GEMV_REGS_WORDS = 32  # words in flight per thread per iteration / 2 (streams x words per block x row blocks)

# CUDA-core GEMV tiles (BLOCK_M, BLOCK_N, BLOCK_K), 4 warps, fp32 math.
FMA_TILES = ((1, 128, 32), (1, 128, 64), (2, 128, 32), (4, 128, 32), (8, 64, 32))
FMA_WARPS = 4

# GEMM tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_K = 32 variants serve group 32.
GEMM_TILES = (
    (16, 64, 32, 4, 4), (16, 128, 32, 4, 4), (16, 128, 64, 4, 4), (16, 256, 64, 4, 3),
    (32, 64, 64, 4, 4), (32, 128, 32, 4, 4), (32, 128, 64, 4, 4),
    (64, 64, 64, 4, 3), (64, 128, 32, 4, 4), (64, 128, 64, 4, 3), (64, 256, 64, 8, 3),
    (128, 128, 32, 8, 4), (128, 128, 64, 8, 3), (128, 256, 32, 8, 3), (256, 128, 32, 8, 3),
)
# fp32 x: exact FMA dots (input_precision="ieee") keep whole operand fragments in registers.
FP32_GEMM_TILES = ((16, 64, 32, 4, 4), (32, 64, 32, 4, 4))
GEMM_SPLIT_K = {16: (1, 2, 4, 8), 32: (1, 2, 4, 8), 64: (1, 2)}
GROUP_M = 8


def block_of(bits: int) -> tuple[int, int, int]:
    """(codes, words, pairs) of the block the GEMM walks: the packing block, two words for int8."""
    codes, words = code_block(bits)
    if bits == 8:
        codes, words = 8, 2
    return codes, words, codes // 2


def gemv_block(bits: int) -> tuple[int, int, int]:
    """(codes, words, pairs) of the block one GEMV stream takes per iteration: 16 or 32 codes (8 or 16
    MMA steps), so the loop's fixed costs spread over as many weights as registers allow."""
    codes, words = code_block(bits)
    if bits == 4:
        codes, words = 16, 2
    elif bits == 8:
        codes, words = 8, 2
    return codes, words, codes // 2


def pair_fields_fit(bits: int, dtype: torch.dtype) -> bool:
    """Whether `bits`-bit fields fit the mantissa of x's type, so the pair decode applies (bf16 int8 does not)."""
    if dtype == torch.float16:
        return True
    return dtype == torch.bfloat16 and bits != 8


# The tensor-core GEMV's inline-PTX MMA takes each fragment tensor [L, NW, 8, 4] element by element and
# assumes Triton lays it out as (register, warp, lane // 4, lane % 4). The fragments inherit their
# loads' layouts, and every load of the kernel has a single non-contiguous dim, whose layout does not
# depend on how Triton orders equally contiguous dims (3.6 and 3.9 differ there; with two such dims
# 3.6 put lanes on L). Checked from the TTGIR under 3.6 and 3.9 (tests/kernels/uniform/
# test_uniform_aot.py); 3.7 and 3.8 were not checked, older Tritons run the CUDA-core GEMV.
MMA_GEMV_MIN_TRITON = (3, 6)


@functools.lru_cache(maxsize=None)  # called on every GEMV dispatch: parse the version once
def triton_version() -> tuple[int, int]:
    """(major, minor) of the installed Triton."""
    major, minor = triton.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def mma_layout_ok() -> bool:
    """Whether the installed Triton lays the tensor-core GEMV's fragments out as its PTX assumes."""
    return triton_version() >= MMA_GEMV_MIN_TRITON


def mma_gemv(bits: int, dtype: torch.dtype) -> bool:
    """Whether the GEMV path runs the tensor-core GEMV (else the CUDA-core one): the pair decode fits x's
    type and the installed Triton lays the fragments out as the PTX assumes (MMA_GEMV_MIN_TRITON)."""
    return pair_fields_fit(bits, dtype) and mma_layout_ok()


@dataclass(frozen=True)
class GemvGeometry:
    """Derived sizes of the tensor-core GEMV for one (bits, config) (mirrors the kernel's constexprs)."""

    bits: int
    block_m: int
    block_n: int
    block_k: int
    warps: int

    @property
    def rows(self) -> int:  # MMA row blocks R
        return self.block_n // 16

    @property
    def halves(self) -> int:  # NH: MMAs of 8 columns per step (16 rows of x: two)
        return 2 if self.block_m == 16 else 1

    @property
    def slots(self) -> int:  # GP: virtual groups per super-step
        return 8 // (self.block_m // self.halves)

    @property
    def streams(self) -> int:  # NS: independent streams per thread
        return 2 if self.slots == 8 else 1

    @property
    def block(self) -> tuple[int, int, int]:
        return gemv_block(self.bits)

    @property
    def codes_per_iteration(self) -> int:  # per slot per inner iteration
        lanes = 1 if self.streams == 2 else 4 // self.slots
        return self.block[0] * lanes

    @property
    def inner_trips(self) -> int:
        return self.block_k // self.codes_per_iteration

    @property
    def superstep_codes(self) -> int:
        return self.block_k * self.slots

    @property
    def steps_per_iteration(self) -> int:
        p = self.block[2]
        return p if self.streams == 2 else p // 2

    def supersteps(self, k: int) -> int:
        return -(-k // self.superstep_codes)

    def even(self, k: int, per_split: int) -> bool:
        """Whether every split holds whole super-steps inside K, a multiple of the warps (the kernel's EVEN)."""
        steps = self.supersteps(k)
        return k % self.superstep_codes == 0 and per_split % self.warps == 0 and steps % per_split == 0

    def problem(self) -> str | None:
        if self.block_m not in GEMV_BLOCK_M:
            return f"block_m={self.block_m} is not one of {GEMV_BLOCK_M} (one or two MMAs of 8 columns)"
        if self.block_n not in GEMV_BLOCK_N:
            return f"block_n={self.block_n} is not one of {GEMV_BLOCK_N} (16 rows per MMA row block, 2 to 8 blocks)"
        if self.block_k < self.codes_per_iteration or self.block_k % self.codes_per_iteration:
            return (f"block_k={self.block_k} is not a multiple of the {self.codes_per_iteration} codes a slot "
                    f"takes per iteration at block_m={self.block_m}")
        if self.warps not in GEMV_WARPS:
            return f"num_warps={self.warps} is not one of {GEMV_WARPS}"
        words = self.streams * self.block[1] * self.rows * self.halves
        if words > GEMV_REGS_WORDS:
            return f"{words} words in flight per thread (more than {GEMV_REGS_WORDS}: registers would spill)"
        return None


def per_group(spec: UniformSpec, cfg: KernelConfig) -> int:
    """K tiles (virtual groups for the tensor-core GEMV) of cfg.block_k codes per group; 0 per channel."""
    return 0 if spec.group_size == -1 else spec.group_size // cfg.block_k


def gemv_geometry(bits: int, cfg: KernelConfig) -> GemvGeometry:
    return GemvGeometry(bits, cfg.block_m, cfg.block_n, cfg.block_k, cfg.num_warps)


def config_problem(path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight, dtype: torch.dtype) -> str | None:
    """Why `cfg` cannot run `qw` on `path` with `dtype` activations (None when it can)."""
    return spec_problem(path, cfg, qw.spec, dtype)


def spec_problem(path: KernelPath, cfg: KernelConfig, spec: UniformSpec,
                 dtype: torch.dtype = torch.float16) -> str | None:
    """Why `cfg` cannot run weights of `spec` on `path` for `dtype` activations."""
    problem = common_config_problem(path, cfg)
    if problem:
        return problem
    gs = spec.group_size
    if path is KernelPath.GEMV and mma_gemv(spec.bits, dtype):
        problem = gemv_geometry(spec.bits, cfg).problem()
        if problem:
            return problem
        if dtype == torch.bfloat16 and spec.bits <= 2 and cfg.block_n > 64:
            return (f"block_n={cfg.block_n} with bf16 x and {spec.bits}-bit codes (bf16 decodes need more shift "
                    "windows; 8 row blocks spill)")
        if dtype == torch.float16 and spec.bits == 4 and cfg.block_m == 16 and cfg.block_n > 64:
            return (f"block_n={cfg.block_n} at block_m=16 with fp16 x and 4-bit codes (spills 16 bytes under Triton "
                    "3.6 and 3.9: x row pointers reloaded every super-step)")
        if gs != -1 and gs % cfg.block_k:
            return f"block_k={cfg.block_k} does not divide group_size={gs} (a virtual group lies in one group)"
        return None
    blk = block_of(spec.bits)[0]
    if path is KernelPath.GEMM and spec.bits == 3 and cfg.block_m >= 256:
        return (f"block_m={cfg.block_m} with 3-bit codes: the three-word block decode of a 256-row tile spills on "
                "sm_80 (compile gate)")
    if cfg.block_k % blk:
        return f"block_k={cfg.block_k} does not hold whole {blk}-code blocks of {spec.bits}-bit codes"
    if gs != -1 and cfg.block_k > gs:
        return f"block_k={cfg.block_k} > group_size={gs}"
    return None


def shared_bytes(path: KernelPath, cfg: KernelConfig, bits: int, x_bytes: int = 2) -> int:
    """Rough shared-memory use of the GEMM: pipelined x tiles plus the dequantized dot operand, or the
    fp32 accumulator's layout change in the epilogue, whichever is larger (the GEMVs use almost none)."""
    if path is KernelPath.GEMV:
        return cfg.num_stages * cfg.block_m * cfg.block_k * x_bytes
    loop = cfg.num_stages * cfg.block_m * cfg.block_k * x_bytes + 2 * cfg.block_k * cfg.block_n * x_bytes
    return max(loop, cfg.block_m * cfg.block_n * 4)


def declared_space(path: KernelPath, dtype: torch.dtype = torch.float16, bits: int = 4) -> list[KernelConfig]:
    """The full declared space of `path` for activations of `dtype` (and `bits`, which picks the GEMV
    kernel), before pruning for a weight."""
    out = []
    if path is KernelPath.GEMV and mma_gemv(bits, dtype):
        for bm in GEMV_BLOCK_M:
            for bn in GEMV_BLOCK_N:
                for bk in GEMV_BLOCK_K:
                    for nw in GEMV_WARPS:
                        for sk in GEMV_SPLIT_K:
                            out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, group_m=1,
                                                    num_warps=nw, num_stages=1))
    elif path is KernelPath.GEMV:
        for (bm, bn, bk) in FMA_TILES:
            for sk in GEMV_SPLIT_K:
                out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, group_m=1,
                                        num_warps=FMA_WARPS, num_stages=2))
    else:
        for (bm, bn, bk, nw, st) in (FP32_GEMM_TILES if dtype == torch.float32 else GEMM_TILES):
            for sk in GEMM_SPLIT_K.get(bm, (1,)):
                out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, group_m=GROUP_M,
                                        num_warps=nw, num_stages=st))
    return out


def search_space(path: KernelPath, qw: QuantizedWeight | None = None,
                 dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
    """Declared space pruned by the weight's group size / bit width, split-K and shared memory."""
    x_bytes = torch.empty((), dtype=dtype).element_size()
    bits = qw.bits if qw is not None else 4
    out = []
    for cfg in declared_space(path, dtype, bits):
        if qw is not None:
            if spec_problem(path, cfg, qw.spec, dtype) is not None:
                continue
            if cfg.split_k > 1 and cfg.split_k > num_k_steps(path, qw.K, bits, cfg, dtype):
                continue
        if shared_bytes(path, cfg, bits, x_bytes) > SHARED_BUDGET:
            continue
        out.append(cfg)
    return out


def num_k_steps(path: KernelPath, k: int, bits: int, cfg: KernelConfig, dtype: torch.dtype = torch.float16) -> int:
    """Units that split-K divides: super-steps of the tensor-core GEMV, K tiles otherwise."""
    if path is KernelPath.GEMV and mma_gemv(bits, dtype):
        return gemv_geometry(bits, cfg).supersteps(k)
    return -(-k // cfg.block_k)


def in_space(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype, bits: int = 4) -> bool:
    """Whether cfg's tile (ignoring split-K) is one the declared space of `dtype` holds."""
    key = lambda c: (c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages)  # noqa: E731
    return key(cfg) in {key(c) for c in declared_space(path, dtype, bits)}


def split_plan(path: KernelPath, n: int, k: int, bits: int, cfg: KernelConfig, m: int,
               dtype: torch.dtype = torch.float16) -> tuple[int, int]:
    """(K steps per split, effective split count): no split is left empty, and the fp32 workspace
    split * M * N stays below 2**31 elements (int32 offsets in the reduction)."""
    steps = num_k_steps(path, k, bits, cfg, dtype)
    split = max(1, min(cfg.split_k, steps))
    while split > 1 and split * m * n >= 2 ** 31:
        split //= 2
    per = -(-steps // split)
    return per, -(-steps // per)


def _pick_split(programs: int, steps: int, options, sms: int, min_steps: int = 2) -> int:
    """Smallest split from `options` that gives at least `sms` programs, keeping >= min_steps each
    (split-K costs a second launch, so a grid that already fills `sms` is not split)."""
    best = 1
    for sk in sorted(options):
        if sk > 1 and steps // sk < min_steps:
            break
        best = sk
        if programs * sk >= sms:
            break
    return best


def gemv_heuristic(m: int, qw: QuantizedWeight, dtype: torch.dtype, sms: int) -> KernelConfig:
    """Tensor-core GEMV: x rows per program up to 16 (fewer where the group size needs it), 4 MMA row
    blocks (8 for 1/2-bit fp16 codes where the grid still fills the SMs), the largest
    virtual group up to 128 codes, 8 warps while every warp still gets a super-step, split-K only when
    the column blocks fill less than half a wave."""
    spec: UniformSpec = qw.spec
    want = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8 if m <= 8 else 16
    for bm in [b for b in reversed(GEMV_BLOCK_M) if b <= want]:  # the largest tile a group admits
        cfg = _gemv_tile(bm, m, qw, dtype, sms)
        if cfg is not None:
            return cfg
    raise ValueError(f"no tensor-core GEMV config serves int{spec.bits} g{spec.group_size} at M={m}")


def _gemv_tile(bm: int, m: int, qw: QuantizedWeight, dtype: torch.dtype, sms: int) -> KernelConfig | None:
    spec: UniformSpec = qw.spec
    # 8 row blocks (128 rows) for 1/2-bit codes, whose activations cost more per weight, when that
    # grid still gives every SM a program (the compile gate: no spill for fp16; bf16 int1 spills)
    wide = spec.bits in (1, 2) and dtype != torch.bfloat16 and -(-qw.N // 128) * -(-m // bm) >= sms
    bn = 128 if wide else 64
    best = None
    for bk in sorted(GEMV_BLOCK_K, reverse=True):
        for nw in (8, 4, 2):
            cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1, num_warps=nw, num_stages=1)
            if spec_problem(KernelPath.GEMV, cfg, spec, dtype) is None and bk <= 128:
                if best is None:
                    best = cfg
                if gemv_geometry(spec.bits, cfg).supersteps(qw.K) >= nw:
                    return _with_split(cfg, m, qw, dtype, sms)
    if best is None:
        return None
    return _with_split(best, m, qw, dtype, sms)


def _with_split(cfg: KernelConfig, m: int, qw: QuantizedWeight, dtype: torch.dtype, sms: int) -> KernelConfig:
    programs = -(-qw.N // cfg.block_n) * -(-m // cfg.block_m)
    steps = num_k_steps(KernelPath.GEMV, qw.K, qw.bits, cfg, dtype)
    split = _pick_split(programs, steps, GEMV_SPLIT_K, sms // 2, min_steps=cfg.num_warps)
    return dataclasses.replace(cfg, split_k=split)


def heuristic(path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype = torch.float16) -> KernelConfig:
    """A config from the declared space for `dtype` chosen by shape rules (no timing)."""
    spec: UniformSpec = qw.spec
    sms = sm_count()
    if path is KernelPath.GEMV:
        if mma_gemv(spec.bits, dtype):
            return gemv_heuristic(m, qw, dtype, sms)
        bm = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8
        ok = [t for t in FMA_TILES if t[0] == bm and spec_problem(
            path, KernelConfig(block_m=t[0], block_n=t[1], block_k=t[2]), spec, dtype) is None]
        bm, bn, bk = max(ok, key=lambda t: t[2])
        cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1, num_warps=FMA_WARPS,
                           num_stages=2)
        programs = -(-qw.N // bn) * -(-m // bm)
        split = _pick_split(programs, num_k_steps(path, qw.K, qw.bits, cfg, dtype), GEMV_SPLIT_K, 2 * sms)
        return dataclasses.replace(cfg, split_k=split)
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    bn = 128
    want_k = 64
    if dtype == torch.float32:
        bm, bn = (16 if m <= 16 else 32), 64
    tiles = FP32_GEMM_TILES if dtype == torch.float32 else GEMM_TILES
    cands = [t for t in tiles if t[0] == bm and t[1] == bn
             and spec_problem(path, KernelConfig(block_m=t[0], block_n=t[1], block_k=t[2]), spec, dtype) is None]
    cands.sort(key=lambda t: (abs(t[2] - want_k), -t[2]))
    bm, bn, bk, nw, st = cands[0]
    cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=GROUP_M, num_warps=nw, num_stages=st)
    programs = -(-qw.N // bn) * -(-m // bm)
    split = _pick_split(programs, num_k_steps(path, qw.K, qw.bits, cfg, dtype), GEMM_SPLIT_K.get(bm, (1,)), 2 * sms)
    return dataclasses.replace(cfg, split_k=split)
