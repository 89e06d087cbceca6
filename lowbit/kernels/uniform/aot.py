"""Ahead-of-time compile cases of the uniform family, and the launch plans of the static roofline.

Split-K is a runtime argument (one binary serves every split), so each distinct tile is compiled
once. Cases: the tensor-core GEMV for every bit width at every BLOCK_M (fp16; bf16 for a rotation
of them), the CUDA-core GEMV (fp32, bf16 int8), every GEMM tile of the fp16/bf16 space with the
bit width, symmetry and dtype rotating, the fp32 GEMM tiles and the split-K reduction.
"""
from __future__ import annotations

import dataclasses

import torch

from ...formats import UniformSpec
from ..base import AotCase, KernelConfig, KernelPath, LaunchPlan, dtype_tag, triton_dtype
from . import configs as cfgs
from .kernels import _uniform_gemm_kernel, _uniform_gemv_fma_kernel, _uniform_gemv_kernel, _uniform_reduce_kernel

_PTRS = ("x_ptr", "qw_ptr", "s_ptr", "z_ptr", "b_ptr", "out_ptr", "ws_ptr")
_GEMV_INTS = ("M", "N", "K", "stride_xm", "stride_om", "steps_per_split", "split_k")
_INTS = ("M", "N", "K", "stride_xm", "stride_om", "tiles_per_split", "split_k")
# what a JIT launch on LLM shapes specialises as multiples of 16 (aligned pointers, N, K, strides, group)
DIVISIBLE_BY_16 = _PTRS + ("N", "K", "stride_xm", "stride_om")


def kernel_for(path: KernelPath, bits: int, dtype: torch.dtype):
    """The kernel a launch of `path` runs for `bits`-bit weights and `dtype` activations."""
    if path is KernelPath.GEMM:
        return _uniform_gemm_kernel
    return _uniform_gemv_kernel if cfgs.mma_gemv(bits, dtype) else _uniform_gemv_fma_kernel


def make_case(path: KernelPath, cfg: KernelConfig, dtype: torch.dtype, spec: UniformSpec,
              use_asm: bool = True, bias: bool = True, even: bool = True, even_n: bool = True) -> AotCase:
    """One compile specialisation: kernel, Triton signature and constexprs for (path, config, dtype, spec),
    as the launch wrapper passes them (GPU build: inline PTX on)."""
    kernel = kernel_for(path, spec.bits, dtype)
    act = "*" + triton_dtype(dtype)
    sig = {"x_ptr": act, "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "b_ptr": act, "out_ptr": act,
           "ws_ptr": "*fp32"}
    ints = _GEMV_INTS if kernel is _uniform_gemv_kernel else _INTS
    sig.update({a: "i32" for a in ints})
    tiles_per_group = cfgs.per_group(spec, cfg)
    const = dict(BITS=spec.bits, VGG=tiles_per_group, TPG=tiles_per_group, HAS_ZEROS=not spec.symmetric,
                 SYM_ZERO=spec.symmetric_zero, HAS_BIAS=bias,
                 BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    if kernel is _uniform_gemv_kernel:
        const.update(BF16=dtype == torch.bfloat16, NW=cfg.num_warps, EVEN=even, EVEN_N=even_n, USE_ASM=use_asm)
    elif kernel is _uniform_gemm_kernel:
        const.update(PAIRS=cfgs.pair_fields_fit(spec.bits, dtype), IEEE=dtype == torch.float32, GROUP_M=cfg.group_m)
    const = {name: const[name] for name in kernel.arg_names if name in const}
    sig.update({name: "constexpr" for name in const})
    label = (f"{path.value}:{cfg.block_m}x{cfg.block_n}x{cfg.block_k}w{cfg.num_warps}s{cfg.num_stages}"
             f"/{dtype_tag(dtype)}/i{spec.bits}{'s' if spec.symmetric else 'a'}g{spec.group_size}")
    return AotCase(family="uniform", kernel=kernel, signature=sig, constexprs=const, config=cfg, label=label,
                   expects_tensor_cores=kernel is not _uniform_gemv_fma_kernel and dtype != torch.float32,
                   divisible_by_16=tuple(n for n in DIVISIBLE_BY_16 if n in sig))


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


def aot_cases() -> list[AotCase]:
    """The tensor-core GEMV cases, the CUDA-core GEMV (fp32 and bf16 int8), every GEMM tile of the
    fp16/bf16 space (rotating variants, bf16 int8 included), the fp32 GEMM tiles and the reduction."""
    cases = [make_case(KernelPath.GEMV, cfg, dtype, spec) for cfg, dtype, spec in _gemv_case_configs()]
    for i, (bm, bn, bk) in enumerate(cfgs.FMA_TILES):
        cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1, num_warps=cfgs.FMA_WARPS,
                           num_stages=2)
        dtype, bits = (torch.bfloat16, 8) if i == 0 else (torch.float32, (3, 4, 1, 2)[i % 4])
        cases.append(make_case(KernelPath.GEMV, cfg, dtype, _fit_spec(KernelPath.GEMV, cfg, dtype, bits, i % 2 == 1, 64)))
    seen = set()
    i = 0
    for cfg in cfgs.declared_space(KernelPath.GEMM):
        if _tile_key(cfg) in seen:
            continue
        seen.add(_tile_key(cfg))
        dtype, bits, sym, gs = GEMM_VARIANTS[i % len(GEMM_VARIANTS)]
        i += 1
        cases.append(make_case(KernelPath.GEMM, cfg, dtype, _fit_spec(KernelPath.GEMM, cfg, dtype, bits, sym, gs)))
    seen = set()
    for cfg in cfgs.declared_space(KernelPath.GEMM, torch.float32):
        if _tile_key(cfg) not in seen:
            spec = UniformSpec(3, 32, False) if len(seen) % 2 == 0 else UniformSpec(8, 128, True)
            seen.add(_tile_key(cfg))
            cases.append(make_case(KernelPath.GEMM, cfg, torch.float32, spec))
    cases += [reduce_case(torch.float16), reduce_case(torch.bfloat16)]
    return cases


# -- launch plans (static roofline) ---------------------------------------------------------
def specialise(case: AotCase, ints: dict) -> AotCase:
    """`case` as a JIT launch with integer arguments `ints` specialises it: an int equal to 1 becomes a
    constexpr, one divisible by 16 gets tt.divisibility 16; pointers are taken as 16-byte aligned."""
    sig = dict(case.signature)
    const = dict(case.constexprs)
    div = [n for n, t in sig.items() if t.startswith("*")]
    for name, v in ints.items():
        if sig.get(name) != "i32":
            raise ValueError(f"{name} is not an i32 argument of {case.label}")
        if v == 1:
            sig[name] = "constexpr"
            const[name] = 1
        elif v % 16 == 0:
            div.append(name)
    return dataclasses.replace(case, signature=sig, constexprs=const, divisible_by_16=tuple(div))


def launch_plans(qw, m: int, path: KernelPath, dtype: torch.dtype, config: KernelConfig) -> list[LaunchPlan]:
    """Every launch of one call without bias (main kernel, then the split-K reduction when split > 1),
    with the AotCase a JIT launch on these (aligned) shapes compiles."""
    from .launch import REDUCE_BLOCK_M, REDUCE_BLOCK_N

    spec: UniformSpec = qw.spec
    n, k = qw.N, qw.K
    per_split, split = cfgs.split_plan(path, n, k, spec.bits, config, m, dtype)
    even = path is not KernelPath.GEMV or not cfgs.mma_gemv(spec.bits, dtype) or (
        cfgs.gemv_geometry(spec.bits, config).even(k, per_split))
    case = make_case(path, config, dtype, spec, bias=False, even=even, even_n=n % config.block_n == 0)
    xb = torch.empty((), dtype=dtype).element_size()
    if case.kernel is _uniform_gemv_kernel:
        ints = dict(M=m, N=n, K=k, stride_xm=k, stride_om=n, steps_per_split=per_split, split_k=split)
        geo = cfgs.gemv_geometry(spec.bits, config)
        trips = -(-per_split // config.num_warps)  # super-steps per warp
        per_trip = config.block_n * geo.superstep_codes * config.num_warps
        inner = geo.inner_trips
    else:
        ints = dict(M=m, N=n, K=k, stride_xm=k, stride_om=n, tiles_per_split=per_split, split_k=split)
        trips = per_split
        per_trip = config.block_n * config.block_k
        inner = None
    case = specialise(case, ints)
    meta = sum(t.numel() * t.element_size() for name, t in qw.tensors.items() if name != "qweight")
    weight_bytes = qw.tensors["qweight"].numel() * 4 + meta
    tiles = -(-m // config.block_m) * -(-n // config.block_n)
    ws = split * m * n * 4 if split > 1 else 0
    out_bytes = ws if split > 1 else m * n * xb
    plans = [LaunchPlan(label=path.value, case=case, grid=(tiles, split), threads_per_cta=32 * config.num_warps,
                        loop_trips=trips, weights_per_iteration=per_trip,
                        hbm_bytes=weight_bytes + m * k * xb + out_bytes,
                        inner_trips=inner)]
    if split > 1:
        rc = reduce_case(dtype)
        rc = dataclasses.replace(rc, constexprs=dict(rc.constexprs, HAS_BIAS=False))
        rcase = specialise(rc, dict(M=m, N=n, split_k=split, stride_om=n))
        grid = (-(-n // REDUCE_BLOCK_N), -(-m // REDUCE_BLOCK_M))
        plans.append(LaunchPlan(label="reduce", case=rcase, grid=grid, threads_per_cta=32 * rcase.config.num_warps,
                                loop_trips=split, weights_per_iteration=0, hbm_bytes=ws + m * n * xb))
    return plans
