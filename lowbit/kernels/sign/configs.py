"""Sign-code kinds (ternary A8/A16, binary), their config rules, heuristics and search spaces."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ...formats import ActivationQuant, QuantizedWeight, Scheme
from ..base import TARGET_PROGRAMS, KernelConfig, KernelPath, common_config_problem

MAX_SPLIT_K = 16
QUANT_MAX_BLOCK = 8192  # rows up to this K are quantized from registers in one read


@dataclass(frozen=True)
class SignKind:
    """What a sign-code kernel multiplies: code width, int8 activations (A8) and a per-K scale (binary g)."""

    name: str
    bits: int
    int8_act: bool
    has_kscale: bool

    @property
    def vpw(self) -> int:
        return 32 // self.bits


TERNARY_A8 = SignKind("a8", bits=2, int8_act=True, has_kscale=False)
TERNARY_A16 = SignKind("a16", bits=2, int8_act=False, has_kscale=False)
BINARY = SignKind("binary", bits=1, int8_act=False, has_kscale=True)


def kind_of(qw: QuantizedWeight) -> SignKind:
    """The kind of kernel a sign-code weight runs: W1.58A8, W1.58A16 or binary."""
    if qw.scheme is Scheme.BINARY:
        return BINARY
    return TERNARY_A8 if qw.spec.activation is ActivationQuant.INT8_PER_TOKEN else TERNARY_A16


def kind_config_problem(kind: SignKind, path: KernelPath, cfg: KernelConfig) -> str | None:
    """Why a config cannot run (None when it can): the shared rules, K steps that split a word, A8 dots."""
    problem = common_config_problem(path, cfg)
    if problem:
        return problem
    if cfg.block_k % kind.vpw:
        return f"block_k={cfg.block_k} must be a multiple of the {kind.vpw} codes in one word"
    if path is KernelPath.GEMM:
        if kind.int8_act and cfg.block_k < 32:
            return f"int8 GEMM tiles need block_k >= 32 (tl.dot), got {cfg.label()}"
    elif cfg.split_k > MAX_SPLIT_K:
        return f"split_k must be <= {MAX_SPLIT_K}, got {cfg.split_k}"
    return None


def kind_heuristic(kind: SignKind, path: KernelPath, m: int, n: int, k: int,
                   dtype: torch.dtype = torch.float16) -> KernelConfig:
    """Tile sizes from M (and the grid size for split-K) without timing anything.

    fp32 activations (float kinds) run FMA dots (input_precision="ieee") whose operands live in
    registers, so they get small tiles; the AOT gate shows larger ones spilling.
    """
    if path is KernelPath.GEMV:
        bm = min(triton.next_power_of_2(max(m, 1)), 8)
        bn = 128 if bm <= 2 else 64
        bkw = 8 if bm <= 2 else 4
        kw_steps = triton.cdiv(triton.cdiv(k, kind.vpw), bkw)
        tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
        split = 1
        while tiles * split < TARGET_PROGRAMS and split * 2 <= min(MAX_SPLIT_K, kw_steps):
            split *= 2
        return KernelConfig(block_m=bm, block_n=bn, block_k=bkw * kind.vpw, split_k=split, group_m=1,
                            num_warps=4, num_stages=2)
    if dtype == torch.float32 and not kind.int8_act:
        return KernelConfig(block_m=32, block_n=64, block_k=32, num_warps=4, num_stages=2)
    bk = 128 if kind.int8_act else 64
    if m <= 16:
        return KernelConfig(block_m=16, block_n=64, block_k=bk, num_warps=4, num_stages=3)
    if m <= 64:
        return KernelConfig(block_m=64, block_n=128, block_k=bk, num_warps=4, num_stages=3)
    return KernelConfig(block_m=128, block_n=128, block_k=bk, group_m=8, num_warps=8, num_stages=3)


def kind_search_space(kind: SignKind, path: KernelPath) -> list[KernelConfig]:
    """Candidate configs for the tuner (every one passes check_config)."""
    out = []
    if path is KernelPath.GEMV:
        for bm in (1, 2, 4, 8):
            for bn in (32, 64, 128):
                for bkw in (4, 8, 16):
                    if bm * bkw * bn > 4096:  # 3-D accumulator: at most 32 values per thread at 4 warps
                        continue
                    for split in (1, 2, 4, 8, 16):
                        out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bkw * kind.vpw, split_k=split,
                                                group_m=1, num_warps=4, num_stages=2))
        return out
    bks = (64, 128) if kind.int8_act else (32, 64)
    for bm, bn, warps in ((16, 64, 4), (32, 64, 4), (32, 128, 4), (64, 64, 4), (64, 128, 4), (128, 64, 4),
                          (128, 128, 8)):
        for bk in bks:
            bk = max(bk, kind.vpw)
            for stages in (2, 3, 4):
                out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, group_m=8, num_warps=warps,
                                        num_stages=stages))
    return list(dict.fromkeys(out))


# -- the family-level API (lowbit.kernels.base.KernelFamily delegates here) ----------------------

def search_space(path: KernelPath, qw: QuantizedWeight | None, dtype: torch.dtype) -> list[KernelConfig]:
    """The space of `qw`'s kind, or the union over every kind without a weight."""
    kinds = [kind_of(qw)] if qw is not None else [TERNARY_A8, TERNARY_A16, BINARY]
    return list(dict.fromkeys(c for k in kinds for c in kind_search_space(k, path)))


def heuristic(path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
    return kind_heuristic(kind_of(qw), path, m, qw.N, qw.K, dtype)


def config_problem(path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight, dtype: torch.dtype) -> str | None:
    return kind_config_problem(kind_of(qw), path, cfg)
