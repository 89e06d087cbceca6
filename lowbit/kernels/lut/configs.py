"""Search spaces, validity rules and heuristics of the lookup-table kernels (lut3/lut4/sq3/sq4/nf4).

Register counts behind the tile limits come from the compile gate (no spills on sm_80/sm_90).
"""
from __future__ import annotations

import dataclasses

import torch
import triton

from ...formats import NF4Spec, QuantizedWeight, code_block, packed_words
from ..base import SHARED_BUDGET, TARGET_PROGRAMS, KernelConfig, KernelPath, common_config_problem, sm_count

FINISH_BLOCK_N = (128, 64, 32)  # the finish kernel's tile (split-K sum, outliers, bias, cast): BLOCK_N columns
FINISH_MAX_BLOCK_M = 8  # (finish_block_n) and up to this many rows (finish_block_m)
FINISH_WARPS = 4
FINISH_INTERPRETER_BLOCK = 256  # the finish tile under the CPU interpreter (rows of x and columns): few programs
# Large M: nf4, 3-bit and sq weights are decoded once into an x-dtype buffer [N, K] (outliers
# scattered in) and multiplied by a dense tensor-core GEMM; lut4 keeps the fused decode.
DECODE_ONCE_MIN_M = 1024
DEQUANT_BLOCK_N = 64
DEQUANT_BLOCK_K = 64
DEQUANT_TILES = 16  # K tiles per dequant program
SCATTER_BLOCK_N = 128
# M <= MMA_MAX_M, fp16 x, 3- or 4-bit codes: the tensor-core GEMV (mma_gemv.py) owns MMA_ROWS rows and
# block_m rows of x per CTA (pairs of x rows share each decoded weight); a GEMV config routes there when
# block_m in MMA_BLOCK_M, block_n == MMA_ROWS, block_k in MMA_BLOCK_K (the inputs one warp consumes per
# loop trip) and num_warps in MMA_WARPS (one K stream per warp)
MMA_ROWS = 64
MMA_MAX_M = 16
MMA_BLOCK_M = (1, 2, 4, 8, 16)
MMA_GROUPED_MAX_BLOCK_M = 8  # grouped NF4 holds two accumulators per pair: 8 pairs spill on sm_80
MMA_BLOCK_K = (32, 64)
MMA_WARPS = (4, 8)
GEMV_SPLITS = (1, 2, 4, 8, 16)
FULL_GRID = 0.9  # a grid with CTAs for this share of the SMs is not split further (a split costs a launch)
GEMM_SPLITS = (1, 2, 4, 8)


def finish_block_n(m: int, n: int) -> int:
    """Columns per finish program: the width that leaves the busiest SM the fewest columns
    (ceil(programs / SMs) x width; a 64-program grid on 132 SMs leaves half of them idle), the
    widest on a tie."""
    rows, sms = triton.cdiv(max(m, 1), finish_block_m(m)), sm_count()
    return min(FINISH_BLOCK_N, key=lambda bn: (triton.cdiv(triton.cdiv(n, bn) * rows, sms) * bn, -bn))


def finish_warps(block_m: int, block_n: int) -> int:
    """Warps of a finish program: one thread per output element, 1 to FINISH_WARPS warps."""
    return max(1, min(FINISH_WARPS, block_m * block_n // 32))


def finish_block_m(m: int) -> int:
    """Rows of x per finish program: M rounded up to a power of two, at most FINISH_MAX_BLOCK_M."""
    return min(triton.next_power_of_2(max(m, 1)), FINISH_MAX_BLOCK_M)


def unit_codes(bits: int) -> int:
    """Codes in one packed unit along K: a word (32 // bits codes) or, for 3 bits, a block of 32 codes in
    3 words (lowbit.reference.packing). The kernels walk K in units."""
    return code_block(bits)[0]


def units(k: int, bits: int) -> int:
    """Packed units along K that hold `k` codes."""
    return -(-k // unit_codes(bits))


def lanes(bits: int) -> int:
    """Rows per packed unit in a K tile: codes per unit rounded up to a power of two."""
    return triton.next_power_of_2(unit_codes(bits))


def tile_span(bits: int, block_k: int) -> int:
    """Inputs k one K tile of `block_k` rows covers."""
    return max(block_k // lanes(bits), 1) * unit_codes(bits)


def scale_group(qw: QuantizedWeight) -> int:
    """The kernels' GROUP constant: the NF4 block along K, 0 for per channel or for LUT schemes."""
    if isinstance(qw.spec, NF4Spec) and qw.spec.group_size != -1:
        return qw.spec.group_size
    return 0


def num_k_tiles(k: int, bits: int, block_k: int) -> int:
    """K tiles of `block_k` rows over K inputs of `bits`-bit codes."""
    return triton.cdiv(units(k, bits), max(block_k // lanes(bits), 1))


def decodes_once(path: KernelPath, m: int, bits: int, nf4: bool, sparse: bool) -> bool:
    """Whether a call decodes the weight once into a dense buffer and runs the dense GEMM: large-M GEMM
    calls of nf4 (its fp32 table-times-absmax decode costs twice lut4's in the fused loop), 3-bit
    (a 32-code unit spans 3 words, so the fused tile decodes field by field) and sq (outliers cannot be added to a
    fused tile cheaply, but scatter into the buffer at one store each)."""
    return path is KernelPath.GEMM and m >= DECODE_ONCE_MIN_M and (nf4 or sparse or bits == 3)


def dequant_block_k(bits: int, group: int) -> int:
    """K rows per dequant tile: DEQUANT_BLOCK_K, inside one NF4 group, at least one word."""
    bk = min(DEQUANT_BLOCK_K, group) if group else DEQUANT_BLOCK_K
    return max(bk, lanes(bits))


def split_plan(m: int, n: int, k: int, bits: int, cfg: KernelConfig, dense: bool = False) -> tuple[int, int]:
    """(tiles per split, splits): no split is left empty and the workspace split*M*N stays < 2^31.
    `dense`: K tiles of the dense GEMM (block_k inputs each) instead of packed words."""
    tiles = triton.cdiv(k, cfg.block_k) if dense else num_k_tiles(k, bits, cfg.block_k)
    split = max(1, min(cfg.split_k, tiles))
    while split > 1 and split * m * n >= 2 ** 31:
        split //= 2
    per = triton.cdiv(tiles, split)
    return per, triton.cdiv(tiles, per)


def mma_pairs(cfg: KernelConfig) -> int:
    """Pairs of x rows one tensor-core GEMV CTA takes (block_m 1 and 2: one pair)."""
    return max(1, cfg.block_m // 2)


def mma_gemv_plan(m: int, dtype: torch.dtype, bits: int, nf4: bool, group: int, n: int, k: int,
                  table_dtype: torch.dtype | None, cfg: KernelConfig) -> int | None:
    """Packed units per K stream when this GEMV call runs the tensor-core kernel (or its interpreter twin),
    else None: 1 <= M <= MMA_MAX_M, fp16 x, 4-bit codes with an fp16 table (or NF4) or 3-bit codes with an
    fp16 table, a config of the MMA shape, whole CTAs of MMA_ROWS rows, K a whole number of units (the
    kernel reads x for every code of a unit) split into split_k * num_warps equal streams of whole loop
    trips (and of whole NF4 groups), and word offsets below 2^31 (the kernel indexes words in 32 bits)."""
    if not 1 <= m <= MMA_MAX_M or dtype != torch.float16 or bits not in (3, 4) or (bits == 3 and nf4):
        return None
    if not nf4 and table_dtype != torch.float16:
        return None
    if cfg.block_m not in MMA_BLOCK_M or cfg.block_n != MMA_ROWS or cfg.block_k not in MMA_BLOCK_K \
            or cfg.num_warps not in MMA_WARPS:
        return None
    codes = unit_codes(bits)
    nu = units(k, bits)
    unroll = cfg.block_k // codes
    streams = cfg.split_k * cfg.num_warps
    if unroll < 1 or k != nu * codes or n % MMA_ROWS or nu % (streams * unroll) or packed_words(k, bits) * n >= 2 ** 31:
        return None
    if cfg.split_k * m * n >= 2 ** 31:  # the split workspace [split, M, N]
        return None
    if nf4 and group and cfg.block_m > MMA_GROUPED_MAX_BLOCK_M:
        return None
    ups = nu // streams
    if nf4 and group:
        gw = group // 8
        if gw % unroll or ups % gw:
            return None
    return ups


def mma_gemv_config(n: int, k: int, nf4: bool, group: int, bits: int = 4, m: int = 1) -> KernelConfig | None:
    """The tensor-core GEMV config for an [N, K] 4- or 3-bit weight at M <= MMA_MAX_M (None when no split
    fits): all M rows of x in one CTA (block_m = next power of two; at most 8 for grouped NF4, whose 16 rows
    take two CTAs), 8 warps, 64 inputs per warp and trip (32
    inside 32-wide NF4 groups), split-K until at most a tenth of the SMs lacks a CTA (each CTA holds a 64 KiB
    table, 16 KiB for 3-bit codes, and 8 warps of loads in flight; more splits rebuild more tables, and any
    split adds the fixed-order sum launch: 128 CTAs on 132 SMs stay unsplit)."""
    bk = 32 if nf4 and group == 32 else 64
    bm = min(triton.next_power_of_2(max(m, 1)), MMA_GROUPED_MAX_BLOCK_M if nf4 and group else MMA_MAX_M)
    for warps in (8, 4):
        best = None
        for split in GEMV_SPLITS:
            cfg = KernelConfig(bm, MMA_ROWS, bk, split, 1, warps, 1)
            if mma_gemv_plan(m, torch.float16, bits, nf4, group, n, k, None if nf4 else torch.float16, cfg) is None:
                continue
            best = cfg
            if triton.cdiv(n, MMA_ROWS) * split >= FULL_GRID * sm_count():
                break
        if best is not None:
            return best
    return None


def mma_route(m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig | None:
    """The tensor-core GEMV config of a call when it has one (see mma_gemv_plan), else None."""
    if not 1 <= m <= MMA_MAX_M or dtype != torch.float16 or qw.bits not in (3, 4):
        return None
    nf4 = isinstance(qw.spec, NF4Spec)
    if not nf4 and qw["lut"].dtype != torch.float16:
        return None
    return mma_gemv_config(qw.N, qw.K, nf4, scale_group(qw), qw.bits, m)


def config_problem(path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight, dtype: torch.dtype) -> str | None:
    """Why `cfg` cannot run `qw` on `path` (None when it can): the shared rules, a K tile of at least
    one word, NF4 tiles inside one absmax group."""
    problem = common_config_problem(path, cfg)
    if problem:
        return problem
    if cfg.block_k < lanes(qw.bits):
        return f"block_k={cfg.block_k} is smaller than one {qw.bits}-bit word ({lanes(qw.bits)} rows)"
    group = scale_group(qw)
    if group and tile_span(qw.bits, cfg.block_k) > group:  # (any M: the config does not know the route)
        return f"block_k={cfg.block_k} spans more than one absmax group of {group}"
    return None


def gemv_heuristic(m: int, n: int, k: int, bits: int, group: int,
                   dtype: torch.dtype = torch.float16) -> KernelConfig:
    """The CUDA-core GEMV: BLOCK_M covers M (<= 8); BLOCK_M * BLOCK_K <= 128 rows keeps the 3-D product
    at <= 64 values per thread; 3-bit units at M = 1 take 8 warps x 128 columns x 256 rows, the largest
    tile without spills (not for fp32 x, which spills there under Triton 3.6, even at 128 rows); NF4 tiles stay
    inside one absmax group; split-K until the grid has ~2 programs per SM, keeping >= 16 K tiles per
    split."""
    sl = lanes(bits)
    bm = min(triton.next_power_of_2(max(m, 1)), 8)
    bn = 64 if n >= 64 * 32 else 32
    bk = max(sl, (64 if bits == 3 else 128) // bm)
    warps = 4
    if bits == 3 and bm == 1 and n >= 128 * 32 and dtype != torch.float32:
        bn, bk, warps = 128, 256, 8
    if group:
        bk = max(sl, min(bk, group))
    steps = num_k_tiles(k, bits, bk)
    blocks = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    split = 1
    while split < GEMV_SPLITS[-1] and blocks * split < TARGET_PROGRAMS and steps >= 16 * split:
        split *= 2
    return KernelConfig(bm, bn, bk, split, 1, warps, 2)


def gemm_heuristic(m: int, n: int, k: int, bits: int, dtype: torch.dtype, group: int = 0,
                   dense: bool = False) -> KernelConfig:
    """Tensor-core tiles growing with M. The weight tile is decoded once per M tile, so large M takes
    BLOCK_M = 256 (half the decode work of 128 per multiply-add). Small grids split K (fixed-order
    reduce) up to ~2 waves. fp32 (ieee FMA dots) uses small tiles to avoid spills. BLOCK_K = 64
    (a whole outlier sub-tile band per K step for sq), or the NF4 group when smaller."""
    if dtype == torch.float32:
        cfg = KernelConfig(16, 64, 32, 1, 8, 4, 2) if m <= 16 else KernelConfig(32, 32, 32, 1, 8, 4, 2)
    elif m <= 32:
        cfg = KernelConfig(16 if m <= 16 else 32, 64, 64, 1, 8, 4, 3)
    elif m <= 128:
        cfg = KernelConfig(64 if m <= 64 else 128, 128, 32, 1, 8, 8, 3)
    elif dense:
        cfg = KernelConfig(128, 256, 32, 1, 8, 8, 3)
    else:
        cfg = KernelConfig(256, 128, 32, 1, 8, 8, 3)
    if group and group < cfg.block_k:
        cfg = dataclasses.replace(cfg, block_k=group)
    programs = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    tiles = triton.cdiv(k, cfg.block_k) if dense else num_k_tiles(k, bits, cfg.block_k)
    split = 1
    while split < GEMM_SPLITS[-1] and programs * split < TARGET_PROGRAMS and tiles >= 16 * split:
        split *= 2
    return dataclasses.replace(cfg, split_k=split)


def heuristic(path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
    if path is KernelPath.GEMV:
        cfg = mma_route(m, qw, dtype)
        return cfg if cfg is not None else gemv_heuristic(m, qw.N, qw.K, qw.bits, scale_group(qw), dtype)
    dense = decodes_once(path, m, qw.bits, isinstance(qw.spec, NF4Spec), getattr(qw.spec, "sparse", False))
    return gemm_heuristic(m, qw.N, qw.K, qw.bits, dtype, scale_group(qw), dense)


def search_space(path: KernelPath, qw: QuantizedWeight | None, dtype: torch.dtype) -> list[KernelConfig]:
    """GEMV: per-thread tile of 16..128 values, split-K 1..8, plus the tensor-core M = 1 configs; GEMM: tensor-core tiles within the shared
    budget and 128 accumulator/operand values per thread, split-K 1..4 for small M tiles; fp32 GEMM:
    small ieee-dot tiles only. Pruned by config_problem when `qw` is given."""
    out = []
    if path is KernelPath.GEMM and dtype == torch.float32:  # ieee FMA dots: larger tiles spill
        out = [KernelConfig(bm, bn, bk, 1, 8, 4, 2) for bm in (16, 32) for bn in (32, 64) for bk in (16, 32)]
    elif path is KernelPath.GEMV:
        for bm in (1, 2, 4, 8):
            for bn in (32, 64, 128):
                for bk in (32, 64, 128, 256):
                    for warps in (4, 8):
                        per_thread = bm * bk * bn // (32 * warps)
                        if not 16 <= per_thread <= 128:
                            continue
                        for split in (1, 2, 4, 8):
                            out.append(KernelConfig(bm, bn, bk, split, 1, warps, 2))
        # the tensor-core configs (used for fp16 x and 3- or 4-bit codes, see mma_gemv_plan)
        out += [KernelConfig(bm, MMA_ROWS, bk, split, 1, warps, 1) for bm in MMA_BLOCK_M for bk in MMA_BLOCK_K
                for warps in MMA_WARPS for split in (1, 2, 4, 8)]
    else:
        for bm in (16, 32, 64, 128):
            for bn in (32, 64, 128, 256):
                for bk in (32, 64, 128):
                    for warps in (4, 8):
                        for stages in (2, 3, 4):
                            smem = stages * (bm * bk + bk * bn) * 2
                            if smem > SHARED_BUDGET or bm * bn // (32 * warps) > 128 or bk * bn // (32 * warps) > 128:
                                continue
                            for split in ((1, 2, 4) if bm <= 32 else (1,)):
                                out.append(KernelConfig(bm, bn, bk, split, 8, warps, stages))
    if qw is not None:
        out = [c for c in out if config_problem(path, c, qw, dtype) is None]
    return out
