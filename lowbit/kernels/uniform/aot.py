"""Compile-gate cases and static-roofline launch plans of the uniform family.

Both come from real calls of the launch wrapper recorded on meta tensors (lowbit.kernels.plans): the
gate compiles the specialisation a JIT launch makes (an M of 1 as a constant, divisibility-by-16
attributes, the inline-PTX GEMV of a GPU). Split-K is a runtime argument (one binary serves every
split). The gate covers the tensor-core GEMV for every bit width at every BLOCK_M (fp16; bf16 for a
rotation of them), the CUDA-core GEMV (fp32, bf16 int8), every GEMM tile of the fp16/bf16 space with
the bit width, symmetry and dtype rotating, the fp32 GEMM tiles and the split-K reduction.
"""
from __future__ import annotations

import torch

from ...formats import UniformSpec
from ..base import AotCase, KernelCall, KernelConfig, KernelPath, dtype_tag
from ..plans import LoopFacts, plan_launches, record_call, to_case
from . import configs as cfgs

GATE_N = GATE_K = 4096


def _gemv_case_configs():
    """(config, dtype, spec) of the tensor-core GEMV cases: each bit width at BLOCK_M 1, 2, 4 and 8 with the
    heuristic's tile, fp16; a rotation of them in bf16 (not int8) and with other warps/tiles."""
    out = []
    i = 0
    for bits, gs in ((4, 128), (3, 128), (2, 128), (1, 128), (8, 128), (4, 64), (4, 32)):
        for bm in cfgs.GEMV_BLOCK_M:
            spec = UniformSpec(bits, gs if bm < 8 or bits in (2, 4, 8) else -1, i % 3 == 1)
            dtype = torch.bfloat16 if (i % 4 == 3 and bits != 8) else torch.float16
            bn = 128 if bits in (1, 2) and dtype == torch.float16 else 64
            for bk in (128, 64, 32):
                cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1,
                                   num_warps=(8, 4, 2)[i % 3], num_stages=1)
                if cfgs.spec_problem(KernelPath.GEMV, cfg, spec, dtype) is None:
                    out.append((cfg, dtype, spec))
                    i += 1
                    break
            if gs in (64, 32):  # smaller groups: BLOCK_M = 1 only
                break
    return out


def _tile_key(cfg: KernelConfig):
    return (cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages)


# (activation dtype, bits, symmetric, group_size) visited round-robin over the GEMM tiles
GEMM_VARIANTS = (
    (torch.float16, 4, False, 128), (torch.bfloat16, 4, True, 128), (torch.float16, 3, False, 32),
    (torch.bfloat16, 2, False, 64), (torch.float16, 8, True, -1), (torch.bfloat16, 1, False, 128),
    (torch.float16, 3, True, 128), (torch.bfloat16, 4, False, 32), (torch.float16, 2, True, 32),
    (torch.bfloat16, 3, False, 64), (torch.float16, 1, True, -1), (torch.bfloat16, 8, False, 64),
)


def _fit_spec(path: KernelPath, cfg: KernelConfig, dtype, bits: int, symmetric: bool, gs: int) -> UniformSpec:
    """The variant's spec, with the group size raised to the smallest one the config can serve."""
    for g in (gs, 32, 64, 128, -1):
        spec = UniformSpec(bits=bits, group_size=g, symmetric=symmetric)
        if (g == gs or g == -1 or g > gs) and cfgs.spec_problem(path, cfg, spec, dtype) is None:
            return spec
    raise ValueError(f"no group size lets {cfg.label()} serve int{bits}")


def _call(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype, spec: UniformSpec, m: int | None = None,
          shape=(GATE_N, GATE_K)) -> KernelCall:
    """A call that runs `cfg` (split-K as given) on a weight of `spec` with BLOCK_M rows of x (or `m`)."""
    return KernelCall(f"int{spec.bits}", shape[0], shape[1], m or cfg.block_m, path, dtype, cfg,
                      options=(("group_size", spec.group_size), ("symmetric", spec.symmetric)), bias=True)


def _gate_calls() -> list[KernelCall]:
    calls = [_call(KernelPath.GEMV, cfg, dtype, spec) for cfg, dtype, spec in _gemv_case_configs()]
    for i, (bm, bn, bk) in enumerate(cfgs.FMA_TILES):
        cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1, num_warps=cfgs.FMA_WARPS,
                           num_stages=2)
        dtype, bits = (torch.bfloat16, 8) if i == 0 else (torch.float32, (3, 4, 1, 2)[i % 4])
        calls.append(_call(KernelPath.GEMV, cfg, dtype, _fit_spec(KernelPath.GEMV, cfg, dtype, bits, i % 2 == 1, 64)))
    seen = set()
    i = 0
    for cfg in cfgs.declared_space(KernelPath.GEMM):
        if _tile_key(cfg) in seen:
            continue
        seen.add(_tile_key(cfg))
        cfg = KernelConfig(**{**cfg.to_dict(), "split_k": 1})
        for _ in GEMM_VARIANTS:  # the next variant in the rotation that can run this tile
            dtype, bits, sym, gs = GEMM_VARIANTS[i % len(GEMM_VARIANTS)]
            i += 1
            try:
                spec = _fit_spec(KernelPath.GEMM, cfg, dtype, bits, sym, gs)
            except ValueError:
                continue
            calls.append(_call(KernelPath.GEMM, cfg, dtype, spec))
            break
    seen = set()
    for cfg in cfgs.declared_space(KernelPath.GEMM, torch.float32):
        if _tile_key(cfg) not in seen:
            spec = UniformSpec(3, 32, False) if len(seen) % 2 == 0 else UniformSpec(8, 128, True)
            seen.add(_tile_key(cfg))
            calls.append(_call(KernelPath.GEMM, KernelConfig(**{**cfg.to_dict(), "split_k": 1}), torch.float32, spec))
    # the split-K reduction, into fp16 and bf16 outputs
    for dtype in (torch.float16, torch.bfloat16):
        spec = UniformSpec(4, 128, False)
        cfg = KernelConfig(block_m=16, block_n=64, block_k=128, split_k=4, group_m=8, num_warps=4, num_stages=3)
        if cfgs.spec_problem(KernelPath.GEMM, cfg, spec, dtype) is None:
            calls.append(_call(KernelPath.GEMM, cfg, dtype, spec, m=16))
    return calls


def aot_cases() -> list[AotCase]:
    """The distinct launches of the gate's calls (see the module docstring)."""
    seen, out = set(), []
    for call in _gate_calls():
        spec = dict(call.options)
        for ln in record_call(call).launches:
            tc = ln.name in ("_uniform_gemv_kernel", "_uniform_gemm_kernel") and call.dtype != torch.float32
            c = call.config
            label = (f"{ln.name.removeprefix('_uniform_').removesuffix('_kernel')}:{c.block_m}x{c.block_n}x{c.block_k}"
                     f"w{c.num_warps}s{c.num_stages}/{dtype_tag(call.dtype)}/{call.scheme.replace('int', 'i')}"
                     f"{'s' if spec['symmetric'] else 'a'}g{spec['group_size']}/m{call.m}")
            case = to_case(ln, "uniform", label, c, expects_tensor_cores=tc, call=call)
            key = (case.kernel, tuple(sorted(case.signature.items())), tuple(sorted(case.constexprs.items())),
                   case.divisible_by_16, case.config.num_warps, case.config.num_stages, case.options)
            if key not in seen:
                seen.add(key)
                out.append(case)
    return out


# -- static roofline --------------------------------------------------------------------------------
def _facts(launch, rec) -> LoopFacts:
    """Main-loop trips and weights per trip of each uniform kernel (see kernels.py)."""
    a, name = launch.args, launch.name
    unused = (() if a.get("HAS_BIAS", True) else ("b_ptr",))
    if name == "_uniform_reduce_kernel":
        return LoopFacts("reduce", trips=a["split_k"], unused=unused)
    unused += () if a["HAS_ZEROS"] else ("z_ptr",)
    unused += ("out_ptr",) if a["split_k"] > 1 else ("ws_ptr",)
    if name == "_uniform_gemv_kernel":  # super-steps per warp, each BLOCK_N x superstep_codes x NW weights
        cfg = KernelConfig(block_m=a["BLOCK_M"], block_n=a["BLOCK_N"], block_k=a["BLOCK_K"], num_warps=a["NW"])
        geo = cfgs.gemv_geometry(a["BITS"], cfg)
        return LoopFacts("gemv", trips=-(-a["steps_per_split"] // a["NW"]),
                         weights_per_iteration=a["BLOCK_N"] * geo.superstep_codes * a["NW"],
                         inner_trips=geo.inner_trips, main=True, unused=unused)
    label = "gemv" if name == "_uniform_gemv_fma_kernel" else "gemm"
    return LoopFacts(label, trips=a["tiles_per_split"], weights_per_iteration=a["BLOCK_N"] * a["BLOCK_K"], main=True,
                     unused=unused)


def launch_plans(family, qw, m, path, dtype, config):
    """The main kernel (tensor-core or CUDA-core GEMV, or the GEMM), then the split-K reduction when split."""
    return plan_launches(family, qw, m, path, dtype, config, _facts)
