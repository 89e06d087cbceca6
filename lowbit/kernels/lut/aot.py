"""Compile-gate cases and static-roofline launch plans of the lookup-table family.

Both come from real calls of the launch wrapper recorded on meta tensors (lowbit.kernels.plans), so
the gate compiles the specialisation a JIT launch makes (divisibility-by-16 attributes, an M of 1 as
a constant). This module only says which calls the gate covers and, per kernel, the main-loop facts
the static roofline needs (trips per program, weights per trip).
"""
from __future__ import annotations

import torch
import triton

from ...formats import QuantizedWeight
from ..base import AotCase, KernelCall, dtype_tag
from ..plans import LoopFacts, plan_launches, record_call, to_case
from . import configs as cfgs

# (scheme, quantizer options, activation dtype, batch sizes M) the gate compiles at GATE_SHAPE: every
# kernel x fp16/bf16/fp32 x LUT/NF4 x lut/sq x 3/4-bit, M = 1 (a constant) and larger
_F16, _BF16, _F32 = torch.float16, torch.bfloat16, torch.float32
GATE = (
    ("lut4", {}, _F16, (1, 8, 16, 4096)), ("lut3", {}, _F16, (1, 16, 4096)),
    ("nf4", {"group_size": 64}, _F16, (1, 8, 16, 4096)), ("nf4", {"group_size": -1}, _F16, (1, 4096)),
    ("sq3", {}, _F16, (1, 16, 4096)), ("sq4", {}, _F16, (1, 4096)),
    ("lut4", {}, _BF16, (1, 4096)), ("nf4", {"group_size": 64}, _BF16, (1, 4096)), ("sq4", {}, _BF16, (4096,)),
    ("lut4", {}, _F32, (1, 33)), ("nf4", {"group_size": 64}, _F32, (3, 33)), ("sq3", {}, _F32, (1, 33)),
)
GATE_SHAPE = (4096, 4096)
_TENSOR_CORE_KERNELS = ("_lut_gemm_kernel", "_lut_dense_gemm_kernel", "_lut_mma_gemv_kernel")


def aot_cases() -> list[AotCase]:
    """The distinct launches of the heuristic configs of GATE (the path dispatch picks for each M)."""
    from .launch import FAMILY

    seen, out = set(), []
    for scheme, opts, dtype, ms in GATE:
        qw = QuantizedWeight.empty(scheme, GATE_SHAPE, **opts)
        for m in ms:
            path = FAMILY.choose_path(m, qw, dtype)
            call = KernelCall(scheme, *GATE_SHAPE, m, path, dtype, FAMILY.heuristic(path, m, qw, dtype),
                              options=tuple(opts.items()), bias=True)
            for ln in record_call(call).launches:
                tc = ln.name in _TENSOR_CORE_KERNELS and dtype != torch.float32
                case = to_case(ln, "lut", f"{ln.name.removeprefix('_lut_').removesuffix('_kernel')} {scheme}"
                               f"{'g' + str(opts['group_size']) if 'group_size' in opts else ''} {dtype_tag(dtype)} "
                               f"m{m} {call.config.label()}", call.config, expects_tensor_cores=tc, call=call)
                key = (case.kernel, tuple(sorted(case.signature.items())), tuple(sorted(case.constexprs.items())),
                       case.divisible_by_16, case.config.num_warps, case.config.num_stages, case.options)
                if key not in seen:
                    seen.add(key)
                    out.append(case)
    return out


# -- static roofline --------------------------------------------------------------------------------
def _unused(a: dict, *names: str) -> tuple:
    return tuple(n for n in names if n in a)


def _facts(launch, rec) -> LoopFacts:
    """Main-loop trips and weights per trip of each lut kernel (see kernels.py and mma_gemv.py)."""
    a, name = launch.args, launch.name
    bias_unused = () if a.get("HAS_BIAS", True) else ("bias_ptr",)
    scale_unused = () if a.get("HAS_SCALE", True) else ("scale_ptr",)
    if name in ("_lut_mma_gemv_kernel", "_lut_mma_twin_kernel"):  # the twin: the same work on the interpreter
        unroll = a["UNROLL"]
        return LoopFacts("mma gemv", trips=a["units_per_stream"] / unroll,
                         weights_per_iteration=a["WARPS"] * cfgs.MMA_ROWS * unroll * cfgs.unit_codes(a["BITS"]),
                         main=True,
                         unused=bias_unused + scale_unused
                         + (() if a["HAS_SPARSE"] else ("row_ptr_ptr", "col_ptr", "val_ptr")))
    if name in ("_lut_gemv_kernel", "_lut_gemm_kernel"):
        ws_unused = ("out_ptr",) if a["to_ws"] else ("ws_ptr",)
        label = "gemv" if name == "_lut_gemv_kernel" else "gemm"
        return LoopFacts(label, trips=a["tiles_per_split"],
                         weights_per_iteration=a["BLOCK_N"] * cfgs.tile_span(a["BITS"], a["BLOCK_K"]), main=True,
                         unused=bias_unused + scale_unused + ws_unused)
    if name == "_lut_dense_gemm_kernel":
        ws_unused = ("out_ptr",) if a["to_ws"] else ("ws_ptr",)
        return LoopFacts("dense gemm", trips=a["tiles_per_split"], weights_per_iteration=a["BLOCK_N"] * a["BLOCK_K"],
                         main=True, unused=bias_unused + ws_unused)
    if name == "_lut_dequant_kernel":
        return LoopFacts("decode weight", trips=a["tiles_per_prog"],
                         weights_per_iteration=a["BLOCK_N"] * cfgs.tile_span(a["BITS"], a["BLOCK_K"]),
                         unused=scale_unused)
    if name == "_lut_scatter_kernel":
        # one nonzero of every row of the block per trip; trips = the densest row, estimated by the mean
        # row. It touches nnz elements of the decoded buffer (read and written, a 32-byte sector each),
        # not the whole buffer.
        nnz = a["NNZ"]
        return LoopFacts("scatter outliers", trips=max(1, triton.cdiv(nnz, a["N"])), weights_per_iteration=0,
                         unused=("w_ptr",), extra_bytes=nnz * 2 * 32)
    if name == "_lut_finish_kernel":
        if a["HAS_SPARSE"]:
            return LoopFacts("finish + outliers", trips=max(1, triton.cdiv(a["NNZ"], a["N"])), unused=bias_unused)
        return LoopFacts("split-K sum", trips=a["split_k"],
                         unused=bias_unused + ("x_ptr", "row_ptr_ptr", "col_ptr", "val_ptr"))
    raise ValueError(f"no loop facts for the lut kernel {name}")


def launch_plans(family, qw, m, path, dtype, config):
    """Every launch of one call: the M=1 tensor-core GEMV, the CUDA-core GEMV or fused GEMM, or the
    large-M decode-once route (decode, outlier scatter, dense GEMM); then the split-K/outlier finish."""
    return plan_launches(family, qw, m, path, dtype, config, _facts)
