"""Compile-gate cases and static-roofline launch plans of the sign family.

Gate cases: the quantizer per dtype, heuristic configs of each kind and path, a corner tile, the
largest GEMM tile and the split-K reduction, each recorded from a real call of the launch wrapper
(lowbit.kernels.plans) on an aligned 8192 x 8192 weight, so the gate compiles the specialisation a
JIT launch makes (divisibility-by-16 attributes, an M of 1 as a constant).
"""
from __future__ import annotations

import dataclasses

import torch

from ...formats import FLOAT_DTYPES
from ..base import AotCase, KernelCall, KernelConfig, KernelPath, triton_dtype
from ..plans import LoopFacts, gate_case, plan_launches
from .configs import BINARY, TERNARY_A8, TERNARY_A16, SignKind, kind_heuristic
from .kernels import _sign_gemm_kernel, _sign_gemv_kernel, _sign_quant_kernel, _sign_reduce_kernel

GATE_N = GATE_K = 8192
SCHEME_OF_KIND = {TERNARY_A8.name: "ternary", TERNARY_A16.name: "ternary_a16", BINARY.name: "binary"}


def _call(kind: SignKind, m: int, path: KernelPath, dtype: torch.dtype, cfg: KernelConfig,
          k: int = GATE_K) -> KernelCall:
    return KernelCall(SCHEME_OF_KIND[kind.name], GATE_N, k, m, path, dtype, cfg, bias=True)


def quantize_case(dtype: torch.dtype, k: int) -> AotCase:
    """The activation quantizer as a W1.58A8 decode call with K inputs launches it (one register tile
    up to K = QUANT_MAX_BLOCK, two sweeps above)."""
    cfg = kind_heuristic(TERNARY_A8, KernelPath.GEMV, 1, GATE_N, k, dtype)
    return gate_case(_call(TERNARY_A8, 1, KernelPath.GEMV, dtype, cfg, k), _sign_quant_kernel,
                     f"quant {triton_dtype(dtype)} k{k}")


def sign_case(kind: SignKind, path: KernelPath, xdtype: torch.dtype, cfg: KernelConfig, m: int) -> AotCase:
    """One GEMV or GEMM case; A8 GEMM cases require integer tensor-core instructions."""
    tc = path is KernelPath.GEMM and (kind.int8_act or xdtype != torch.float32)  # fp32: ieee FMA dots
    kernel = _sign_gemm_kernel if path is KernelPath.GEMM else _sign_gemv_kernel
    return gate_case(_call(kind, m, path, xdtype, cfg), kernel,
                     f"{kind.name} {path.value} {triton_dtype(xdtype)} m{m} {cfg.label()}",
                     expects_tensor_cores=tc, integer_mma=tc and kind.int8_act)


def reduce_case(kind: SignKind, xdtype: torch.dtype, split: int) -> AotCase:
    """The split-K reduction + epilogue after a decode GEMV split `split` ways."""
    cfg = dataclasses.replace(kind_heuristic(kind, KernelPath.GEMV, 1, GATE_N, GATE_K, xdtype), split_k=split)
    return gate_case(_call(kind, 1, KernelPath.GEMV, xdtype, cfg), _sign_reduce_kernel,
                     f"{kind.name} reduce {triton_dtype(xdtype)} s{split}")


def aot_cases() -> list[AotCase]:
    """Per kind (W1.58A8, W1.58A16, binary): GEMV/GEMM heuristic configs at 8192 x 8192 for each dtype, a
    corner tile, the largest GEMM tile and the split-K reduction; the quantizer for each dtype, and the
    two-sweep quantizer of long rows."""
    gemv, gemm = KernelPath.GEMV, KernelPath.GEMM
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    cases = [quantize_case(dt, GATE_K) for dt in FLOAT_DTYPES]
    cases.append(quantize_case(f16, 28672))
    for kind in (TERNARY_A8, TERNARY_A16, BINARY):

        def h(p, m, dt=f16, split=None, kind=kind):
            cfg = kind_heuristic(kind, p, m, GATE_N, GATE_K, dt)
            return cfg if split is None else dataclasses.replace(cfg, split_k=split)

        corner = KernelConfig(block_m=8, block_n=64, block_k=8 * kind.vpw, split_k=4, group_m=1)
        cases += [sign_case(kind, gemv, f16, h(gemv, 1, split=1), 1), sign_case(kind, gemv, f16, h(gemv, 1), 1),
                  sign_case(kind, gemv, f16, h(gemv, 8), 8), sign_case(kind, gemv, f16, corner, 8),
                  sign_case(kind, gemv, bf16, h(gemv, 2, bf16), 2), sign_case(kind, gemv, f32, h(gemv, 4, f32), 4)]
        big = KernelConfig(block_m=128, block_n=128, block_k=128 if kind.int8_act else 64, group_m=8,
                           num_warps=8, num_stages=4)
        cases += [sign_case(kind, gemm, f16, h(gemm, 16), 16), sign_case(kind, gemm, f16, h(gemm, 64), 64),
                  sign_case(kind, gemm, f16, h(gemm, 4096), 4096), sign_case(kind, gemm, f16, big, 4096),
                  sign_case(kind, gemm, bf16, h(gemm, 4096, bf16), 4096),
                  sign_case(kind, gemm, f32, h(gemm, 64, f32), 64)]
        cases.append(reduce_case(kind, f16, 8))
    return cases


# -- static roofline --------------------------------------------------------------------------------
def _gemv_trips(kw: int, split: int, bkw: int) -> float:
    """Average K-loop trips per program of the GEMV: each split covers kw_span words (kernels.py)."""
    span = _cdiv(_cdiv(kw, split), bkw) * bkw
    return sum(_cdiv(max(0, min(span, kw - s * span)), bkw) for s in range(split)) / split


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _facts(launch, rec) -> LoopFacts:
    """Main-loop trips and weights per trip of each sign kernel (see kernels.py)."""
    a = launch.args
    if launch.name == "_sign_quant_kernel":
        return LoopFacts("quantize x", trips=1 if a["ONE_TILE"] else _cdiv(a["K"], a["BLOCK_K"]))
    unused = (() if a["INT8_ACT"] else ("xscale_ptr",)) + (() if a["HAS_BIAS"] else ("bias_ptr",))
    if launch.name == "_sign_reduce_kernel":
        return LoopFacts("reduce", trips=a["SPLIT_K"], unused=unused)
    vpw = 32 // a["BITS"]
    unused += () if a["HAS_KSCALE"] else ("kscale_ptr",)
    if launch.name == "_sign_gemv_kernel":  # an inner runtime loop decodes the VPW codes of each word
        bkw = a["BLOCK_KW"]
        # split: partials go to the workspace; the reduction runs the epilogue (scales, bias) into out
        unused += ("out_ptr", "xscale_ptr", "nscale_ptr", "bias_ptr") if a["SPLIT_K"] > 1 else ("ws_ptr",)
        return LoopFacts("gemv", trips=_gemv_trips(a["Kw"], a["SPLIT_K"], bkw),
                         weights_per_iteration=bkw * vpw * a["BLOCK_N"], inner_trips=vpw, main=True, unused=unused)
    return LoopFacts("gemm", trips=_cdiv(a["K"], a["BLOCK_K"]), weights_per_iteration=a["BLOCK_K"] * a["BLOCK_N"],
                     main=True, unused=unused)


def launch_plans(family, qw, m, path, dtype, config):
    """(W1.58A8: the activation quantizer, then) GEMV (+ split-K reduction) or GEMM."""
    return plan_launches(family, qw, m, path, dtype, config, _facts)
