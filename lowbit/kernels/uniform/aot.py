"""Ahead-of-time compile cases of the uniform family: every tile config of both declared spaces.

Split-K is a runtime argument (the same binary serves every split_k), so each distinct tile
config (BLOCK_M/N/K, warps, stages) is compiled once. Activation dtype and weight variant
rotate across the configs so that fp16 and bf16, symmetric and asymmetric, every bit width
and the 3-bit two-group decode are all compiled; two extra cases cover fp32 activations.
"""
from __future__ import annotations

import torch

from ...formats import UniformSpec, values_per_word
from ..base import AotCase, KernelConfig, KernelPath, dtype_tag, triton_dtype
from . import configs as cfgs
from .kernels import _uniform_gemm_kernel, _uniform_gemv_kernel, _uniform_reduce_kernel

# (activation dtype, bits, symmetric, group_size) visited round-robin over the configs
VARIANTS = (
    (torch.float16, 4, False, 128), (torch.bfloat16, 4, True, 128), (torch.float16, 3, False, 32),
    (torch.bfloat16, 2, False, 64), (torch.float16, 8, True, -1), (torch.bfloat16, 1, False, 128),
    (torch.float16, 3, True, 128), (torch.bfloat16, 4, False, 32), (torch.float16, 2, True, 32),
    (torch.bfloat16, 3, False, 64),
)
# what a JIT launch on LLM shapes specialises as multiples of 16 (aligned pointers, N, K, strides,
# group size); G and KW_TOTAL are left out (per-channel G = 1; 3-bit KW_TOTAL = ceil(K / 10))
DIVISIBLE_BY_16 = ("x_ptr", "qw_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "ws_ptr", "N", "K", "group_size",
                   "stride_xm", "stride_om")
_INT_ARGS = ("M", "N", "K", "KW_TOTAL", "G", "group_size", "stride_xm", "stride_om", "tiles_per_split", "split_k")


def _fit_spec(path: KernelPath, cfg: KernelConfig, bits: int, symmetric: bool, gs: int) -> UniformSpec:
    """The variant's spec, with the group size raised to the smallest one the config can serve."""
    for g in (gs, 32, 64, 128, -1):
        spec = UniformSpec(bits=bits, group_size=g, symmetric=symmetric)
        if (g == gs or g == -1 or g > gs) and cfgs.spec_problem(path, cfg, spec) is None:
            return spec
    raise ValueError(f"no group size lets {cfg.label()} serve int{bits}")


def make_case(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype, spec: UniformSpec) -> AotCase:
    """One compile specialisation: kernel, Triton signature and constexprs for (path, config, dtype, spec)."""
    act = "*" + triton_dtype(dtype)
    sig = {"x_ptr": act, "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "b_ptr": act, "out_ptr": act,
           "ws_ptr": "*fp32"}
    sig.update({a: "i32" for a in _INT_ARGS})
    const = dict(BITS=spec.bits, VPW=values_per_word(spec.bits), VP=cfgs.lanes_per_word(spec.bits),
                 HAS_ZEROS=not spec.symmetric, SYM_ZERO=spec.symmetric_zero, HAS_BIAS=True,
                 TWO_GROUPS=cfgs.two_groups(spec), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    kernel = _uniform_gemv_kernel
    if path is KernelPath.GEMM:
        kernel = _uniform_gemm_kernel
        const.update(IEEE=dtype == torch.float32, DQ_F16=dtype == torch.float16, GROUP_M=cfg.group_m)
    sig.update({name: "constexpr" for name in const})
    label = (f"{path.value}:{cfg.block_m}x{cfg.block_n}x{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}"
             f"/{dtype_tag(dtype)}/i{spec.bits}{'s' if spec.symmetric else 'a'}g{spec.group_size}")
    return AotCase(family="uniform", kernel=kernel, signature=sig, constexprs=const, config=cfg, label=label,
                   expects_tensor_cores=path is KernelPath.GEMM and dtype != torch.float32,
                   divisible_by_16=DIVISIBLE_BY_16)


def _tile_key(cfg: KernelConfig):
    return (cfg.block_m, cfg.block_n, cfg.block_k, cfg.group_m, cfg.num_warps, cfg.num_stages)


def reduce_case(dtype: torch.dtype) -> AotCase:
    """The split-K reduction into an output of `dtype`, at the launch wrapper's tile."""
    from .launch import REDUCE_BLOCK_M, REDUCE_BLOCK_N

    act = "*" + triton_dtype(dtype)
    sig = {"ws_ptr": "*fp32", "b_ptr": act, "out_ptr": act, "M": "i32", "N": "i32", "split_k": "i32",
           "stride_om": "i32", "HAS_BIAS": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr"}
    const = dict(HAS_BIAS=True, BLOCK_M=REDUCE_BLOCK_M, BLOCK_N=REDUCE_BLOCK_N)
    cfg = KernelConfig(block_m=REDUCE_BLOCK_M, block_n=REDUCE_BLOCK_N, num_warps=4, num_stages=1)
    return AotCase(family="uniform", kernel=_uniform_reduce_kernel, signature=sig, constexprs=const, config=cfg,
                   label=f"reduce/{dtype_tag(dtype)}",
                   divisible_by_16=("ws_ptr", "b_ptr", "out_ptr", "N", "stride_om"))


def aot_cases() -> list[AotCase]:
    """Every distinct tile config of the GEMV and GEMM spaces (rotating variants), the fp32 GEMM space,
    one fp32 GEMV and the split-K reduction."""
    cases = []
    i = 0
    for path in (KernelPath.GEMV, KernelPath.GEMM):
        seen = set()
        for cfg in cfgs.declared_space(path):
            if _tile_key(cfg) in seen:
                continue
            seen.add(_tile_key(cfg))
            dtype, bits, sym, gs = VARIANTS[i % len(VARIANTS)]
            i += 1
            cases.append(make_case(path, cfg, dtype, _fit_spec(path, cfg, bits, sym, gs)))
    fp32_gemv = KernelConfig(block_m=2, block_n=128, block_k=64, split_k=4, group_m=1, num_warps=4, num_stages=2)
    cases.append(make_case(KernelPath.GEMV, fp32_gemv, torch.float32, UniformSpec(4, 64, False)))
    seen = set()
    for cfg in cfgs.declared_space(KernelPath.GEMM, torch.float32):
        if _tile_key(cfg) not in seen:
            spec = UniformSpec(3, 32, False) if len(seen) % 2 == 0 else UniformSpec(8, 128, True)
            seen.add(_tile_key(cfg))
            cases.append(make_case(KernelPath.GEMM, cfg, torch.float32, spec))
    cases += [reduce_case(torch.float16), reduce_case(torch.bfloat16)]
    return cases
