"""Search spaces, validity rules and heuristics of the lookup-table kernels (lut3/lut4/sq3/sq4/nf4).

Register counts behind the tile limits come from the compile gate (no spills on sm_80/sm_90).
"""
from __future__ import annotations

import torch
import triton

from ...formats import NF4Spec, QuantizedWeight, code_block
from ..base import SHARED_BUDGET, TARGET_PROGRAMS, KernelConfig, KernelPath, common_config_problem

SPARSE_CHUNK = 32  # outliers scattered into a GEMM tile per one-hot dot
INTERP_SPARSE_CHUNK = 256  # under the CPU interpreter: each chunk is a step with fixed overhead


def unit_codes(bits: int) -> int:
    """Codes per GEMV "word": one int32 word for 4 bits (8), one 3-word block for 3 bits (32)."""
    return code_block(bits)[0]


def units(k: int, bits: int) -> int:
    """GEMV "words" along K: int32 words for 4 bits, 32-code blocks for 3 bits."""
    return -(-k // unit_codes(bits))


def slots(bits: int) -> int:
    """Lanes per GEMV "word" in the tile: codes per word rounded up to a power of two."""
    return triton.next_power_of_2(unit_codes(bits))


def scale_group(qw: QuantizedWeight) -> int:
    """The kernels' GROUP constant: the NF4 block along K, 0 for per channel or for LUT schemes."""
    if isinstance(qw.spec, NF4Spec) and qw.spec.group_size != -1:
        return qw.spec.group_size
    return 0


def scale_row(group: int, span: int) -> bool:
    """Whether every K tile of `span` codes (tiles start at multiples of span) sits in one scale group."""
    return group == 0 or group % span == 0


def config_problem(path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight, dtype: torch.dtype) -> str | None:
    """Why `cfg` cannot run on `path` (None when it can): the shared power-of-two and tl.dot rules."""
    return common_config_problem(path, cfg)


def gemv_heuristic(m: int, n: int, k: int, bits: int, group: int) -> KernelConfig:
    """BLOCK_M covers M (<= 8); BLOCK_M * BLOCK_K = 128 slots keeps the 3-D product at <= 64
    values per thread; NF4 tiles stay inside one absmax group (one vector load per tile);
    split-K until the grid has ~2 programs per SM, keeping >= 8 K steps per split."""
    sl = slots(bits)
    bm = min(triton.next_power_of_2(max(m, 1)), 8)
    bn = 64 if n >= 64 * 32 else 32
    bk = max(sl, (64 if bits == 3 else 128) // bm)  # 3-bit codes read three words each: half the slots
    if group:
        bk = max(sl, min(bk, group))
    steps = triton.cdiv(units(k, bits), bk // sl)
    blocks = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    split = 1
    while split < 16 and blocks * split < TARGET_PROGRAMS and steps >= 16 * split:
        split *= 2
    return KernelConfig(bm, bn, bk, split, 1, 4, 2)


def gemm_heuristic(m: int, dtype: torch.dtype, bits: int = 4) -> KernelConfig:
    """Tensor-core tiles growing with M; fp32 (ieee FMA dots) uses small tiles to avoid spills; 3-bit
    codes (three word reads each) take 32-deep tiles at small M."""
    if dtype == torch.float32:
        return KernelConfig(16, 64, 16, 1, 8, 4, 2) if m <= 16 else KernelConfig(32, 32, 16, 1, 8, 4, 2)
    if m <= 32:
        return KernelConfig(16 if m <= 16 else 32, 64, 32 if bits == 3 else 64, 1, 8, 4, 3)
    return KernelConfig(64 if m <= 64 else 128, 128, 32, 1, 8, 8, 3)


def heuristic(path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
    if path is KernelPath.GEMV:
        return gemv_heuristic(m, qw.N, qw.K, qw.bits, scale_group(qw))
    return gemm_heuristic(m, dtype, qw.bits)


def search_space(path: KernelPath, qw: QuantizedWeight | None, dtype: torch.dtype) -> list[KernelConfig]:
    """GEMV: per-thread tile of 16..128 values, split-K 1..8; GEMM: tensor-core tiles within the shared
    budget and 128 accumulator/operand values per thread; fp32 GEMM: small ieee-dot tiles only."""
    out = []
    if path is KernelPath.GEMM and dtype == torch.float32:  # ieee FMA dots: larger tiles spill
        return [KernelConfig(bm, bn, bk, 1, 8, 4, 2) for bm in (16, 32) for bn in (32, 64) for bk in (16, 32)]
    if path is KernelPath.GEMV:
        min_k = slots(qw.bits) if qw is not None else 16
        for bm in (1, 2, 4, 8):
            for bn in (32, 64, 128):
                for bk in (32, 64, 128, 256):
                    for warps in (4, 8):
                        per_thread = bm * bk * bn // (32 * warps)
                        if bk < min_k or not 16 <= per_thread <= 128:
                            continue
                        for split in (1, 2, 4, 8):
                            out.append(KernelConfig(bm, bn, bk, split, 1, warps, 2))
        return out
    for bm in (16, 32, 64, 128):
        for bn in (32, 64, 128, 256):
            for bk in (32, 64, 128):
                for warps in (4, 8):
                    for stages in (2, 3, 4):
                        smem = stages * (bm * bk + bk * bn) * 2
                        if smem > SHARED_BUDGET or bm * bn // (32 * warps) > 128 or bk * bn // (32 * warps) > 128:
                            continue
                        out.append(KernelConfig(bm, bn, bk, 1, 8, warps, stages))
    return out
