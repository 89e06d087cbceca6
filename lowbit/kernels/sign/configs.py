"""Sign-code kinds (ternary A8/A16, binary), their config rules, heuristics and search spaces, and the
inline-PTX strings of the fp16 mask path.

Config fields, for both paths: ``block_n`` = output rows per tile (a multiple of the rows one lane
holds, at least 16 lanes: the rows of one tensor-core A tile), ``block_m`` = activation rows.
GEMV: ``block_k`` = K per loop step of a CTA, cut into ``num_warps`` slices of ``block_k //
num_warps`` (one warp each); ``split_k`` CTAs share a K range. GEMM: ``block_k`` = K per step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...formats import ActivationQuant, QuantizedWeight, Scheme
from ..base import DEFAULT_SMS, KernelConfig, KernelPath, common_config_problem, sm_count

MAX_SPLIT_K = 16
QUANT_MAX_BLOCK = 8192  # rows up to this K are quantized from registers in one read
MIN_LANES = 16  # weight rows of one tensor-core A tile, in lanes
REDUCE_BLOCK_N = 128  # columns per program of the split-K reduction
MAX_A8_K = 2 ** 17  # int32 accumulation of 128 * |byte| <= 128 * 106 per k stays exact below this K

# Inline PTX of the fp16 mask path (kernels._and16, _shift_down, _sign16), each on a 32-bit register
# holding two 16-bit lanes. tests/kernels/sign emulates these exact strings bit for bit against the
# interpreter twins.
ASM_AND16 = tl.constexpr("and.b32 $0, $1, $2;")
ASM_AND_OR16 = tl.constexpr("lop3.b32 $0, $1, $2, $3, 0xEA;")  # (a & b) | c
ASM_SHR6 = tl.constexpr("shr.b32 $0, $1, 6;")
ASM_SHR7 = tl.constexpr("shr.b32 $0, $1, 7;")
ASM_SHR8 = tl.constexpr("shr.b32 $0, $1, 8;")
ASM_SHR10 = tl.constexpr("shr.b32 $0, $1, 10;")
ASM_SHR12 = tl.constexpr("shr.b32 $0, $1, 12;")


@dataclass(frozen=True)
class SignKind:
    """What a sign-code kernel multiplies: field and lane widths, int8 activations (A8), a per-K scale (binary g)."""

    name: str
    bits: int
    lane_bits: int
    int8_act: bool
    has_kscale: bool

    @property
    def rows_per_lane(self) -> int:
        return self.lane_bits // self.bits

    @property
    def lane_dtype(self) -> torch.dtype:
        return torch.int8 if self.lane_bits == 8 else torch.int16

    def masks(self, dtype: torch.dtype) -> bool:
        """fp16 and bf16 activations of a 16-bit-lane kind run the mask path (fp32 decodes each field)."""
        return not self.int8_act and dtype in (torch.float16, torch.bfloat16)

    def min_block_k(self, dtype: torch.dtype) -> int:
        """The smallest K of one dot: 32 for int8 operands, 16 otherwise (Triton 3.6 asks 16 of fp32 dots too)."""
        return 32 if self.int8_act else 16


TERNARY_A8 = SignKind("a8", bits=2, lane_bits=8, int8_act=True, has_kscale=False)
TERNARY_A16 = SignKind("a16", bits=2, lane_bits=16, int8_act=False, has_kscale=False)
BINARY = SignKind("binary", bits=1, lane_bits=16, int8_act=False, has_kscale=True)
KINDS = (TERNARY_A8, TERNARY_A16, BINARY)


def kind_of(qw: QuantizedWeight) -> SignKind:
    """The kind of kernel a sign-code weight runs: W1.58A8, W1.58A16 or binary."""
    if qw.scheme is Scheme.BINARY:
        return BINARY
    return TERNARY_A8 if qw.spec.activation is ActivationQuant.INT8_PER_TOKEN else TERNARY_A16


def kind_config_problem(kind: SignKind, path: KernelPath, cfg: KernelConfig,
                        dtype: torch.dtype = torch.float16) -> str | None:
    """Why a config cannot run (None when it can): shared rules, whole lanes and 16-lane tiles, slice widths."""
    problem = common_config_problem(path, cfg)
    if problem:
        return problem
    rpl = kind.rows_per_lane
    if cfg.block_n % rpl or cfg.block_n // rpl < MIN_LANES:
        return (f"block_n={cfg.block_n} must be a multiple of {rpl} rows (one lane) covering at least "
                f"{MIN_LANES} lanes ({MIN_LANES * rpl} rows)")
    if cfg.num_warps & (cfg.num_warps - 1):
        return f"num_warps={cfg.num_warps} is not a power of two"
    if path is KernelPath.GEMV:
        if cfg.num_warps > 8:
            return f"GEMV CTAs take at most 8 warps (one K slice each), got num_warps={cfg.num_warps}"
        if cfg.split_k > MAX_SPLIT_K:
            return f"split_k must be <= {MAX_SPLIT_K}, got {cfg.split_k}"
        if cfg.block_m > 64:
            return f"GEMV tiles take block_m <= 64, got {cfg.block_m}"
        ks = cfg.block_k // cfg.num_warps
        if cfg.block_k % cfg.num_warps or ks < kind.min_block_k(dtype):
            return (f"block_k={cfg.block_k} must give each of the {cfg.num_warps} warps a K slice of at least "
                    f"{kind.min_block_k(dtype)}")
    elif cfg.block_k < kind.min_block_k(dtype):
        return f"block_k={cfg.block_k} is below the {kind.min_block_k(dtype)} of one tensor-core step"
    return None


def _gemv_split(kind: SignKind, m: int, bm: int, n: int, k: int, block_n: int, block_k: int, sms: int) -> int:
    """Split K over CTAs until the grid fills about 3/4 of the SMs (each split keeps >= one K step)."""
    tiles = triton.cdiv(n, block_n) * triton.cdiv(m, bm)
    split = 1
    while tiles * split * 4 < sms * 3 and split * 2 <= MAX_SPLIT_K and k >= split * 2 * block_k:
        split *= 2
    return split


def kind_heuristic(kind: SignKind, path: KernelPath, m: int, n: int, k: int,
                   dtype: torch.dtype = torch.float16, sms: int = DEFAULT_SMS) -> KernelConfig:
    """Tile sizes from M (and the grid size for split-K) without timing anything.

    Chosen from the sm_90 SASS of candidates at N = K = 8192 (perf/NOTES.md, "ternary and binary"):
    GEMV: 16 lanes per CTA and 4 warps, each on a K slice of 256 lanes (512 for W1.58A8 at M = 1; 128
    for binary; 64 for the 16-bit lanes at M > 8, where more spills; 16 for fp32, whose FMA dots hold
    their operands in registers, with at most 2 rows per tile).
    GEMM: the largest tiles whose accumulators (one per field) fit the registers without spilling.
    """
    rpl = kind.rows_per_lane
    if path is KernelPath.GEMV:
        fp32 = dtype == torch.float32 and not kind.int8_act
        bm = min(triton.next_power_of_2(max(m, 1)), 2 if fp32 else 16)
        block_n = MIN_LANES * rpl
        if kind.int8_act:
            ks = 512 if m == 1 else 256
        elif kind.masks(dtype):
            ks = 64 if bm > 8 else (256 if kind.bits == 2 else 128)
        else:  # fp32: FMA dots hold their operands in registers
            ks = 16
        block_k = 4 * ks
        split = _gemv_split(kind, m, bm, n, k, block_n, block_k, sms)
        stages = 2 if (fp32 or kind.masks(dtype) and bm > 8) else 3
        return KernelConfig(block_m=bm, block_n=block_n, block_k=block_k, split_k=split, group_m=1,
                            num_warps=4, num_stages=stages)
    if kind.int8_act:
        if m <= 64:
            return KernelConfig(block_m=32, block_n=64 * rpl, block_k=128, group_m=8, num_warps=4, num_stages=3)
        return KernelConfig(block_m=128, block_n=64 * rpl, block_k=64, group_m=8, num_warps=8, num_stages=4)
    if dtype == torch.float32:
        return KernelConfig(block_m=32, block_n=MIN_LANES * rpl, block_k=16, group_m=8, num_warps=4, num_stages=2)
    # fp16 and bf16 masks: one fp32 accumulator [64 lanes, block_m] per field
    bm = 32 if kind.bits == 2 else 16
    return KernelConfig(block_m=bm, block_n=64 * rpl, block_k=64, group_m=8, num_warps=4, num_stages=3)


# GEMM tiles per operand kind, (block_m, lanes, block_k, num_warps): the accumulators (one per field)
# bound them; each was checked to compile without spills for sm_80 and sm_90 with Triton 3.6 and 3.9
# (the compile gate builds the largest of each).
_GEMM_TILES = {
    "int8": ((32, 64, 128, 4), (64, 32, 128, 4), (128, 32, 128, 8), (128, 64, 64, 8)),
    "mask_ternary": ((16, 64, 64, 4), (32, 64, 64, 4), (32, 32, 64, 4), (64, 32, 64, 8)),
    "mask_binary": ((16, 64, 64, 4), (16, 32, 64, 4), (32, 16, 64, 4)),
    "decode": ((32, 16, 32, 4), (16, 16, 32, 4), (32, 16, 16, 4)),
}


def _tile_kind(kind: SignKind, dtype: torch.dtype) -> str:
    if kind.int8_act:
        return "int8"
    if kind.masks(dtype):
        return "mask_ternary" if kind.bits == 2 else "mask_binary"
    return "decode"


def kind_search_space(kind: SignKind, path: KernelPath, dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
    """Candidate configs for the tuner (every one passes kind_config_problem)."""
    rpl = kind.rows_per_lane
    out = []
    if path is KernelPath.GEMV:
        for bm in (1, 2, 4, 8, 16):
            for lanes in (16, 32):
                for ks in (64, 128, 256):
                    for split in (1, 2, 4, 8):
                        cfg = KernelConfig(block_m=bm, block_n=lanes * rpl, block_k=4 * ks, split_k=split,
                                           group_m=1, num_warps=4, num_stages=3)
                        if kind_config_problem(kind, path, cfg, dtype) is None:
                            out.append(cfg)
        return out
    for bm, lanes, bk, warps in _GEMM_TILES[_tile_kind(kind, dtype)]:
        for stages in (2, 3):
            cfg = KernelConfig(block_m=bm, block_n=lanes * rpl, block_k=bk, group_m=8, num_warps=warps,
                               num_stages=stages)
            if kind_config_problem(kind, path, cfg, dtype) is None:
                out.append(cfg)
    return out


# -- the family-level API (lowbit.kernels.base.KernelFamily delegates here) ----------------------

def search_space(path: KernelPath, qw: QuantizedWeight | None, dtype: torch.dtype) -> list[KernelConfig]:
    """The space of `qw`'s kind, or the union over every kind without a weight."""
    kinds = [kind_of(qw)] if qw is not None else list(KINDS)
    return list(dict.fromkeys(c for kd in kinds for c in kind_search_space(kd, path, dtype)))


def heuristic(path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
    return kind_heuristic(kind_of(qw), path, m, qw.N, qw.K, dtype, sm_count())


def config_problem(path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight, dtype: torch.dtype) -> str | None:
    return kind_config_problem(kind_of(qw), path, cfg, dtype)
