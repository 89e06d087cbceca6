"""Search spaces, validity rules and heuristics for the uniform kernels.

The spaces are declared as small lists (tiles x warps x stages x split-K) and pruned per weight:
a K tile must fit inside one group for power-of-two code widths (BLOCK_K <= group size; both are
powers of two, so it also divides it) or span at most two groups for 3-bit words (10 codes per
word, so tiles and groups do not align). Configs whose estimated shared memory exceeds the
smallest target's budget are dropped.
"""
from __future__ import annotations

import dataclasses

import torch

from ...formats import QuantizedWeight, UniformSpec, packed_words, values_per_word
from ..base import SHARED_BUDGET, KernelConfig, KernelPath, common_config_problem, sm_count

# GEMV tiles (BLOCK_M, BLOCK_N, BLOCK_K), 4 warps. Threads and warps lie along N only
# (BLOCK_N >= 32 * num_warps), so the K reduction stays inside each thread, and each thread keeps
# the whole BLOCK_M x BLOCK_K x tile in registers: the list keeps BLOCK_M * BLOCK_K * (BLOCK_N / 128)
# small enough that no width spills on sm_80/sm_90 (checked with the compile gate).
GEMV_TILES = (
    (1, 128, 32), (1, 128, 64), (1, 128, 128), (1, 256, 32), (1, 256, 64),
    (2, 128, 32), (2, 128, 64), (2, 256, 32),
    (4, 128, 32), (4, 256, 32),
    (8, 128, 32),
)
GEMV_WARPS = 4
GEMV_SPLIT_K = (1, 2, 4, 8, 16)
GEMV_STAGES = 2

# GEMM tiles (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); BLOCK_K = 32 variants serve
# group_size 32. Larger tiles (128x256x64, 256x128x64) spill on one target and are left out.
GEMM_TILES = (
    (16, 64, 32, 4, 4), (16, 128, 32, 4, 4), (16, 128, 64, 4, 4), (16, 256, 64, 4, 3),
    (32, 64, 64, 4, 4), (32, 128, 32, 4, 4), (32, 128, 64, 4, 4),
    (64, 64, 64, 4, 3), (64, 128, 32, 4, 4), (64, 128, 64, 4, 3), (64, 256, 64, 8, 3),
    (128, 128, 32, 8, 4), (128, 128, 64, 8, 3), (128, 256, 32, 8, 3), (256, 128, 32, 8, 3),
)
# fp32 x: exact FMA dots (input_precision="ieee") keep whole operand fragments in registers, so
# only small tiles compile without spilling.
FP32_GEMM_TILES = ((16, 64, 32, 4, 4), (32, 64, 32, 4, 4))
GEMM_SPLIT_K = {16: (1, 2, 4, 8), 32: (1, 2, 4, 8), 64: (1, 2)}
GROUP_M = 8


def lanes_per_word(bits: int) -> int:
    """Code lanes one word occupies in a tile: values per word rounded up to a power of two."""
    vpw = values_per_word(bits)
    return 1 << (vpw - 1).bit_length()


def tile_codes(bits: int, block_k: int) -> int:
    """How many codes (inputs k) one K tile of `block_k` lanes covers."""
    return (block_k // lanes_per_word(bits)) * values_per_word(bits)


def two_groups(spec: UniformSpec) -> bool:
    """Whether a tile may straddle two groups (3-bit words with grouped metadata)."""
    return spec.bits == 3 and spec.group_size != -1


def config_problem(path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight, dtype: torch.dtype) -> str | None:
    """Why `cfg` cannot run `qw` on `path` (None when it can): the K-tile rules of its spec."""
    return spec_problem(path, cfg, qw.spec)


def spec_problem(path: KernelPath, cfg: KernelConfig, spec: UniformSpec) -> str | None:
    """Why `cfg` cannot run weights of `spec` on `path`: a K tile inside one group (3-bit: at most two)."""
    problem = common_config_problem(path, cfg)
    if problem:
        return problem
    vp = lanes_per_word(spec.bits)
    if cfg.block_k < vp:
        return f"block_k={cfg.block_k} is smaller than one {spec.bits}-bit word ({vp} lanes)"
    if spec.group_size != -1:
        if spec.bits == 3:
            if tile_codes(3, cfg.block_k) > spec.group_size:
                return (f"block_k={cfg.block_k} covers {tile_codes(3, cfg.block_k)} 3-bit codes, more than "
                        f"group_size={spec.group_size}")
        elif cfg.block_k > spec.group_size:
            return f"block_k={cfg.block_k} > group_size={spec.group_size}"
    return None


def shared_bytes(path: KernelPath, cfg: KernelConfig, bits: int, x_bytes: int = 2) -> int:
    """Rough shared-memory use: pipelined x and word tiles plus the dequantized dot operand during
    the K loop, or the fp32 accumulator's layout change in the epilogue, whichever is larger."""
    words = (cfg.block_k // lanes_per_word(bits)) * cfg.block_n * 4
    if path is KernelPath.GEMV:
        return cfg.num_stages * (words + cfg.block_m * cfg.block_k * x_bytes)
    stage = cfg.block_m * cfg.block_k * x_bytes + words
    loop = cfg.num_stages * stage + cfg.block_k * cfg.block_n * x_bytes
    return max(loop, cfg.block_m * cfg.block_n * 4)


def declared_space(path: KernelPath, dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
    """The full declared space of `path` for activations of `dtype`, before pruning for a weight."""
    out = []
    if path is KernelPath.GEMV:
        for (bm, bn, bk) in GEMV_TILES:
            for sk in GEMV_SPLIT_K:
                out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, group_m=1,
                                        num_warps=GEMV_WARPS, num_stages=GEMV_STAGES))
    else:
        for (bm, bn, bk, nw, st) in (FP32_GEMM_TILES if dtype == torch.float32 else GEMM_TILES):
            for sk in GEMM_SPLIT_K.get(bm, (1,)):
                out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, group_m=GROUP_M,
                                        num_warps=nw, num_stages=st))
    return out


def search_space(path: KernelPath, qw: QuantizedWeight | None = None,
                 dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
    """Declared space pruned by the weight's group size / bit width and by shared memory for `dtype`."""
    x_bytes = torch.empty((), dtype=dtype).element_size()
    out = []
    for cfg in declared_space(path, dtype):
        if qw is not None:
            if spec_problem(path, cfg, qw.spec) is not None:
                continue
            if cfg.split_k > 1 and cfg.split_k > num_k_tiles(qw.K, qw.bits, cfg):
                continue
        bits = qw.bits if qw is not None else 4
        if shared_bytes(path, cfg, bits, x_bytes) > SHARED_BUDGET:
            continue
        out.append(cfg)
    return out


def num_k_tiles(k: int, bits: int, cfg: KernelConfig) -> int:
    """K tiles of `cfg` over K inputs of `bits`-bit codes."""
    kw = packed_words(k, bits)
    per_tile = cfg.block_k // lanes_per_word(bits)
    return -(-kw // per_tile)


def in_space(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype) -> bool:
    """Whether cfg's tile (ignoring split-K) is one the declared space of `dtype` holds."""
    key = lambda c: (c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages)  # noqa: E731
    return key(cfg) in {key(c) for c in declared_space(path, dtype)}


def split_plan(n: int, k: int, bits: int, cfg: KernelConfig, m: int) -> tuple[int, int]:
    """(tiles per split, effective split count): no split is left empty, and the fp32 workspace
    split * M * N stays below 2**31 elements (int32 offsets in the reduction)."""
    tiles = num_k_tiles(k, bits, cfg)
    split = max(1, min(cfg.split_k, tiles))
    while split > 1 and split * m * n >= 2 ** 31:
        split //= 2
    per = -(-tiles // split)
    return per, -(-tiles // per)


def _largest_block_k(spec: UniformSpec, choices) -> int:
    ok = [bk for bk in choices if spec_problem(KernelPath.GEMV, KernelConfig(block_m=1, block_k=bk), spec) is None]
    return max(ok)


def _pick_split(programs: int, tiles: int, options, sms: int) -> int:
    """Smallest split from `options` that gives about two waves of programs, keeping >= 2 tiles each."""
    best = 1
    for sk in sorted(options):
        if sk > 1 and tiles // sk < 2:
            break
        best = sk
        if programs * sk >= 2 * sms:
            break
    return best


def heuristic(path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype = torch.float16) -> KernelConfig:
    """A config from the declared space for `dtype` chosen by shape rules (no timing)."""
    spec: UniformSpec = qw.spec
    sms = sm_count()
    if path is KernelPath.GEMV:
        bm = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8
        bn = 128  # more column blocks: less split-K needed to fill the GPU
        bk = _largest_block_k(spec, [bk for (b, n_, bk) in GEMV_TILES if b == bm and n_ == bn])
        cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1, num_warps=GEMV_WARPS,
                           num_stages=GEMV_STAGES)
        programs = -(-qw.N // bn) * -(-m // bm)
        return dataclasses.replace(cfg, split_k=_pick_split(programs, num_k_tiles(qw.K, qw.bits, cfg), GEMV_SPLIT_K, sms))
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    bn = 128
    want_k = 64
    if dtype == torch.float32:
        bm, bn = (16 if m <= 16 else 32), 64
    tiles = FP32_GEMM_TILES if dtype == torch.float32 else GEMM_TILES
    cands = [t for t in tiles if t[0] == bm and t[1] == bn
             and spec_problem(path, KernelConfig(block_m=t[0], block_n=t[1], block_k=t[2]), spec) is None]
    cands.sort(key=lambda t: (abs(t[2] - want_k), -t[2]))
    bm, bn, bk, nw, st = cands[0]
    cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=GROUP_M, num_warps=nw, num_stages=st)
    programs = -(-qw.N // bn) * -(-m // bm)
    split = _pick_split(programs, num_k_tiles(qw.K, qw.bits, cfg), GEMM_SPLIT_K.get(bm, (1,)), sms)
    return dataclasses.replace(cfg, split_k=split)
