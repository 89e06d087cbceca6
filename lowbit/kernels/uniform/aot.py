"""Compile-gate cases and static-roofline launch plans of the uniform family.

Gate cases: every distinct tile config (BLOCK_M/N/K, warps, stages) of both declared spaces, each
recorded from a real call of the launch wrapper (lowbit.kernels.plans), so the gate compiles the
specialisation a JIT launch makes (constants for ints equal to 1, divisibility-by-16 attributes).
Activation dtype and weight variant rotate across the configs so that fp16 and bf16, symmetric and
asymmetric, every bit width and the 3-bit two-group decode are all compiled; tiles alternate
between a split-K call (partials + reduction) and a direct store; two more cases cover fp32
activations, and the reduction is compiled for fp16 and bf16 outputs.
"""
from __future__ import annotations

import torch

from ...formats import UniformSpec
from ..base import AotCase, KernelCall, KernelConfig, KernelPath, dtype_tag
from ..plans import LoopFacts, gate_case, plan_launches
from . import configs as cfgs
from .kernels import _uniform_gemm_kernel, _uniform_gemv_kernel, _uniform_reduce_kernel

# (activation dtype, bits, symmetric, group_size) visited round-robin over the configs
VARIANTS = (
    (torch.float16, 4, False, 128), (torch.bfloat16, 4, True, 128), (torch.float16, 3, False, 32),
    (torch.bfloat16, 2, False, 64), (torch.float16, 8, True, -1), (torch.bfloat16, 1, False, 128),
    (torch.float16, 3, True, 128), (torch.bfloat16, 4, False, 32), (torch.float16, 2, True, 32),
    (torch.bfloat16, 3, False, 64),
)
GATE_N = GATE_K = 4096  # an aligned LLM-like weight for the gate's calls


def _fit_spec(path: KernelPath, cfg: KernelConfig, bits: int, symmetric: bool, gs: int) -> UniformSpec:
    """The variant's spec, with the group size raised to the smallest one the config can serve."""
    for g in (gs, 32, 64, 128, -1):
        spec = UniformSpec(bits=bits, group_size=g, symmetric=symmetric)
        if (g == gs or g == -1 or g > gs) and cfgs.spec_problem(path, cfg, spec) is None:
            return spec
    raise ValueError(f"no group size lets {cfg.label()} serve int{bits}")


def gate_call(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype, spec: UniformSpec) -> KernelCall:
    """The call a gate case stands for: GEMV at M = BLOCK_M (M = 1 is the decode case), GEMM at an
    aligned M (16 for the smallest tiles, 4096 for the rest); with a bias so the epilogue compiles."""
    m = cfg.block_m if path is KernelPath.GEMV else (16 if cfg.block_m <= 16 else 4096)
    return KernelCall(f"int{spec.bits}", GATE_N, GATE_K, m, path, dtype, cfg,
                      options=(("group_size", spec.group_size), ("symmetric", spec.symmetric)), bias=True)


def make_case(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype, spec: UniformSpec) -> AotCase:
    """The GEMV or GEMM case of (path, config, dtype, spec), as its gate call launches it."""
    call = gate_call(path, cfg, dtype, spec)
    _, split = cfgs.split_plan(call.n, call.k, spec.bits, cfg, call.m)
    label = (f"{path.value}:{cfg.block_m}x{cfg.block_n}x{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}"
             f"k{split}m{call.m}/{dtype_tag(dtype)}/i{spec.bits}{'s' if spec.symmetric else 'a'}g{spec.group_size}")
    kernel = _uniform_gemv_kernel if path is KernelPath.GEMV else _uniform_gemm_kernel
    return gate_case(call, kernel, label, expects_tensor_cores=path is KernelPath.GEMM and dtype != torch.float32)


def _tile_key(cfg: KernelConfig):
    return (cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages)


def _tiles(path: KernelPath, dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
    """One config per distinct tile of the declared space; every other tile takes its largest split-K."""
    by_tile: dict = {}
    for cfg in cfgs.declared_space(path, dtype):
        by_tile.setdefault(_tile_key(cfg), []).append(cfg)
    out = []
    for i, group in enumerate(by_tile.values()):
        out.append(max(group, key=lambda c: c.split_k) if i % 2 == 0 else min(group, key=lambda c: c.split_k))
    return out


def aot_cases() -> list[AotCase]:
    """Every distinct tile config of the GEMV and GEMM spaces (rotating variants), the fp32 GEMM space,
    one fp32 GEMV and the split-K reduction for fp16 and bf16 outputs."""
    cases = []
    i = 0
    for path in (KernelPath.GEMV, KernelPath.GEMM):
        for cfg in _tiles(path):
            dtype, bits, sym, gs = VARIANTS[i % len(VARIANTS)]
            i += 1
            cases.append(make_case(path, cfg, dtype, _fit_spec(path, cfg, bits, sym, gs)))
    fp32_gemv = KernelConfig(block_m=2, block_n=128, block_k=64, split_k=4, group_m=1, num_warps=4, num_stages=2)
    cases.append(make_case(KernelPath.GEMV, fp32_gemv, torch.float32, UniformSpec(4, 64, False)))
    for j, cfg in enumerate(_tiles(KernelPath.GEMM, torch.float32)):
        spec = UniformSpec(3, 32, False) if j % 2 == 0 else UniformSpec(8, 128, True)
        cases.append(make_case(KernelPath.GEMM, cfg, torch.float32, spec))
    split = KernelConfig(block_m=1, block_n=128, block_k=128, split_k=8, group_m=1, num_warps=4, num_stages=2)
    for dtype, m in ((torch.float16, 1), (torch.bfloat16, 3)):
        spec = UniformSpec(4, 128, False)
        call = gate_call(KernelPath.GEMV, split, dtype, spec)
        call = KernelCall(call.scheme, call.n, call.k, m, call.path, dtype, call.config, call.options, call.bias)
        cases.append(gate_case(call, _uniform_reduce_kernel, f"reduce/{dtype_tag(dtype)}/m{m}"))
    return cases


# -- static roofline --------------------------------------------------------------------------------
def _facts(launch, rec) -> LoopFacts:
    """Main-loop trips and weights per trip of each uniform kernel (see kernels.py)."""
    a = launch.args
    if launch.name == "_uniform_reduce_kernel":
        return LoopFacts("reduce", trips=a["split_k"], unused=() if a["HAS_BIAS"] else ("b_ptr",))
    words = a["BLOCK_K"] // a["VP"]  # words per K tile
    k_tiles = -(-a["KW_TOTAL"] // words)
    label = "gemv" if launch.name == "_uniform_gemv_kernel" else "gemm"
    unused = () if a["HAS_ZEROS"] else ("z_ptr",)
    if a["split_k"] == 1:
        unused += ("ws_ptr",) + (() if a["HAS_BIAS"] else ("b_ptr",))
    else:  # partials go to the workspace; the reduction adds the bias and writes out
        unused += ("out_ptr", "b_ptr")
    return LoopFacts(label, trips=k_tiles / a["split_k"], weights_per_iteration=a["BLOCK_N"] * words * a["VPW"],
                     main=True, unused=unused)


def launch_plans(family, qw, m, path, dtype, config):
    """GEMV or GEMM, plus the split-K reduction when the call splits K."""
    return plan_launches(family, qw, m, path, dtype, config, _facts)
