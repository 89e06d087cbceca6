"""Compile-gate cases and static-roofline launch plans of the sign family (ternary A8/A16, binary).

Both come from real calls of the launch wrapper recorded on meta tensors (lowbit.kernels.plans): the
gate compiles the specialisation a JIT launch makes (an M of 1 as a constant, divisibility-by-16
attributes, the inline-PTX mask path of a GPU). This module only says which calls the gate covers and,
per kernel, the main-loop facts the static roofline needs.
"""
from __future__ import annotations

import dataclasses

import torch
import triton

from ...formats import QuantizedWeight
from ..base import AotCase, KernelCall, KernelPath, dtype_tag
from ..plans import LoopFacts, plan_launches, record_call, to_case
from .configs import KINDS, kind_heuristic, kind_search_space

_SCHEME = {"a8": "ternary", "a16": "ternary_a16", "binary": "binary"}
N = K = 8192
RAGGED = (8000, 8000)  # neither dim a multiple of the tiles: the masked (EVEN = False) kernels
LONG_K = 16384  # rows longer than the quantizer's register tile: its two-sweep path


def _calls(kind):
    """(label, KernelCall) per specialisation the gate builds for one kind."""
    gemv, gemm = KernelPath.GEMV, KernelPath.GEMM
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    scheme = _SCHEME[kind.name]

    def call(path, m, dtype=f16, shape=(N, K), cfg=None, split=None):
        cfg = cfg or kind_heuristic(kind, path, m, shape[0], shape[1], dtype)
        if split is not None:
            cfg = dataclasses.replace(cfg, split_k=split)
        return KernelCall(scheme, shape[0], shape[1], m, path, dtype, cfg, bias=True)

    out = [call(gemv, 1), call(gemv, 16), call(gemv, 3, shape=RAGGED, split=4), call(gemv, 2, bf16),
           call(gemv, 4, f32), call(gemm, 64), call(gemm, 4096), call(gemm, 100, shape=RAGGED),
           call(gemm, 4096, bf16), call(gemm, 64, f32)]
    space = kind_search_space(kind, gemm, f16)
    big = max(space, key=lambda c: (c.block_m * c.block_n * c.block_k * c.num_stages, c.num_warps))
    out.append(call(gemm, 4096, cfg=big))
    if kind.int8_act:
        out += [call(gemv, 1, f32, shape=(N, LONG_K)), call(gemv, 1, bf16)]
    return out


def aot_cases() -> list[AotCase]:
    """Per kind, the distinct launches of: heuristic GEMV (M = 1, 16) and GEMM (M = 64, 4096) calls at
    8192 x 8192 in fp16, a ragged GEMV and GEMM, bf16 and fp32 calls, the largest GEMM tile of the
    search space; for W1.58A8 also the quantizer's two-sweep path. Split-K reductions come with the calls."""
    seen, out = set(), []
    for kind in KINDS:
        for c in _calls(kind):
            for ln in record_call(c).launches:
                tc = ln.name in ("_sign_gemv_kernel", "_sign_gemm_kernel") and (kind.int8_act or c.dtype != torch.float32)
                case = to_case(ln, "sign", f"{kind.name} {ln.name.removeprefix('_sign_').removesuffix('_kernel')} "
                               f"{dtype_tag(c.dtype)} m{c.m} n{c.n} k{c.k} {c.config.label()}", c.config,
                               expects_tensor_cores=tc, integer_mma=tc and kind.int8_act, call=c)
                key = (case.kernel, tuple(sorted(case.signature.items())), tuple(sorted(case.constexprs.items())),
                       case.divisible_by_16, case.config.num_warps, case.config.num_stages, case.options)
                if key not in seen:
                    seen.add(key)
                    out.append(case)
    return out


# -- static roofline --------------------------------------------------------------------------------
def _facts(launch, rec) -> LoopFacts:
    """Main-loop trips and weights per trip of each sign kernel (see kernels.py)."""
    a, name = launch.args, launch.name
    if name == "_sign_quant_kernel":  # one read from registers, or an absmax sweep then a quantize sweep
        return LoopFacts("quantize x", trips=1 if a["ONE_TILE"] else 2 * triton.cdiv(a["K"], a["BLOCK_K"]))
    unused = (() if a["INT8_ACT"] else ("xscale_ptr", "xsum_ptr")) + (() if a["HAS_BIAS"] else ("bias_ptr",))
    if name == "_sign_reduce_kernel":
        return LoopFacts("reduce", trips=a["SPLIT_K"], unused=unused)
    unused += () if a["HAS_KSCALE"] else ("kscale_ptr",)
    rows = a["BLOCK_L"] * (a["LANE_BITS"] // a["BITS"])  # output rows per program
    if name == "_sign_gemv_kernel":
        bk = a["BLOCK_KS"] * a["SLICES"]
        split = a["SPLIT_K"]
        # split: partials go to the workspace and the reduction runs the epilogue into out
        unused += ("out_ptr", "xscale_ptr", "nscale_ptr", "bias_ptr") if split > 1 else ("ws_ptr",)
        return LoopFacts("gemv", trips=triton.cdiv(triton.cdiv(a["K"], split), bk), weights_per_iteration=rows * bk,
                         main=True, unused=tuple(dict.fromkeys(unused)))
    return LoopFacts("gemm", trips=triton.cdiv(a["K"], a["BLOCK_K"]), weights_per_iteration=rows * a["BLOCK_K"],
                     main=True, unused=unused)


def launch_plans(family, qw: QuantizedWeight, m, path, dtype, config):
    """(W1.58A8: the activation quantizer, then) GEMV (+ split-K reduction) or GEMM."""
    return plan_launches(family, qw, m, path, dtype, config, _facts)
