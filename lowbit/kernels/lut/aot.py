"""Compile-gate cases and static-roofline launch plans of the lookup-table family.

Gate cases are heuristic configs of every kernel x dtype, each recorded from a real call of the
launch wrapper (lowbit.kernels.plans) on an aligned 4096 x 4096 weight, so the gate compiles the
specialisation a JIT launch makes (divisibility-by-16 attributes, an M of 1 as a constant).
"""
from __future__ import annotations

import dataclasses

import torch

from ...formats import FLOAT_DTYPES, QuantizedWeight
from ..base import AotCase, KernelCall, KernelPath, triton_dtype
from ..plans import LoopFacts, gate_case, plan_launches, torch_op_plan
from . import configs as cfgs
from .kernels import _lut_gemm_kernel, _lut_gemv_kernel, _lut_outlier_kernel

GATE_N = GATE_K = 4096
_AOT_SCHEMES = (("lut3", False), ("lut4", False), ("nf4", False), ("sq3", True))
# launch.tile_outliers (sq GEMM path) runs about 25 torch ops over the nnz outliers (arange,
# searchsorted, clamps, compares, integer division, where, a stable sort, gathers, casts); summing
# the bytes each reads and writes gives about 400 bytes per outlier (a radix sort's passes included)
TILE_OUTLIER_OPS = 25
TILE_OUTLIER_BYTES_PER_NNZ = 400


def _call(scheme: str, m: int, path: KernelPath, dtype: torch.dtype, cfg) -> KernelCall:
    return KernelCall(scheme, GATE_N, GATE_K, m, path, dtype, cfg, bias=True)


def aot_cases() -> list[AotCase]:
    return list(_cases())


def _cases():
    """lut3, lut4 and nf4 (g64) x GEMV/GEMM heuristic configs x fp16/bf16/fp32; sq3's GEMM with fused
    tile outliers (fp16, fp32); the GEMV-path outlier pass (fp16, fp32)."""
    gemv, gemm = KernelPath.GEMV, KernelPath.GEMM
    for scheme, sq in _AOT_SCHEMES:
        qw = QuantizedWeight.empty(scheme, (GATE_N, GATE_K))
        for dt in FLOAT_DTYPES:
            x_dt = triton_dtype(dt)
            # M = 1 without split-K (direct store), M = 1 and M = 8 with the heuristic's split-K (fp32
            # atomics, then a cast copy); other dtypes at M = 1
            ms = [(1, 1)] + ([(1, None), (8, None)] if dt is torch.float16 else [])
            for m, split in ms if not sq else ():  # sq's GEMV is lut's GEMV plus the pass below
                cfg = cfgs.heuristic(gemv, m, qw, dt)
                if split is not None:
                    cfg = dataclasses.replace(cfg, split_k=split)
                yield gate_case(_call(scheme, m, gemv, dt, cfg), _lut_gemv_kernel,
                                f"gemv {scheme} {x_dt} m{m} {cfg.label()}")
            ms = [33] if dt is torch.float32 else [16, 4096]
            if sq and dt is torch.bfloat16:
                ms = []
            for m in ms:
                cfg = cfgs.heuristic(gemm, m, qw, dt)
                # fp32 activations use exact ieee dots, which run on FMA units, not tensor cores
                yield gate_case(_call(scheme, m, gemm, dt, cfg), _lut_gemm_kernel,
                                f"gemm {scheme} {x_dt} m{m} {cfg.label()}", expects_tensor_cores=dt is not torch.float32)
    for dt in (torch.float16, torch.float32):
        qw = QuantizedWeight.empty("sq3", (GATE_N, GATE_K))
        cfg = cfgs.heuristic(gemv, 1, qw, dt)
        yield gate_case(_call("sq3", 1, gemv, dt, cfg), _lut_outlier_kernel, f"csr outliers {triton_dtype(dt)}")


# -- static roofline --------------------------------------------------------------------------------
def _facts(launch, rec) -> LoopFacts:
    """Main-loop trips and weights per trip of each lut kernel (see kernels.py)."""
    a = launch.args
    if launch.name == "_lut_outlier_kernel":
        return LoopFacts("outliers", trips=a["search_steps"])
    unused = (() if a["HAS_SCALE"] else ("scale_ptr",)) + (() if a["HAS_BIAS"] else ("bias_ptr",))
    if launch.name == "_lut_gemv_kernel":
        words = a["BLOCK_K"] // a["SLOTS"]  # words per K step
        steps = -(-a["KW"] // words)
        return LoopFacts("gemv", trips=steps / launch.grid[1], weights_per_iteration=a["BLOCK_N"] * words * a["VPW"],
                         main=True, unused=unused)
    bk, bn = a["BLOCK_K"], a["BLOCK_N"]
    inner = None
    if a["HAS_SPARSE"]:  # one-hot chunks of a tile's outliers, inside the K loop
        tiles = -(-a["N"] // bn) * -(-a["K"] // bk)
        inner = -(-a["sv_ptr"].numel() // (tiles * a["SPARSE_CHUNK"]))
    else:
        unused += ("tile_ptr", "kl_ptr", "nl_ptr", "sv_ptr")
    return LoopFacts("gemm", trips=-(-a["K"] // bk), weights_per_iteration=bn * bk, inner_trips=inner, main=True,
                     unused=unused)


def _torch_ops(rec) -> list:
    """The wrapper's torch launches: zeroing the fp32 split-K accumulator, the cast copy into the
    output, and the per-tile regrouping of sq outliers on the GEMM path."""
    out = []
    for ln in rec.launches:
        target = ln.args.get("out_ptr")
        if ln.name == "_lut_gemv_kernel" and ln.args["ATOMIC"]:
            out.append(torch_op_plan("zero fp32 accumulator", target.numel() * 4))
        if ln.name == "_lut_gemm_kernel" and ln.args["HAS_SPARSE"]:
            nnz = ln.args["sv_ptr"].numel()
            out.append(torch_op_plan("regroup outliers by tile (torch ops)", TILE_OUTLIER_BYTES_PER_NNZ * nnz,
                                     launches=TILE_OUTLIER_OPS))
        if ln.name in ("_lut_gemv_kernel", "_lut_gemm_kernel") and target is not rec.out:
            out.append(torch_op_plan("cast copy fp32 -> output",
                                     target.numel() * target.element_size() + rec.out.numel() * rec.out.element_size()))
    return out


def launch_plans(family, qw, m, path, dtype, config):
    """GEMV (+ zeroing, + outlier pass, + cast copy) or GEMM (+ sq outlier regrouping)."""
    return plan_launches(family, qw, m, path, dtype, config, _facts, _torch_ops)
