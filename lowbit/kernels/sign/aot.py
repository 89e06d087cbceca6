"""Compile-gate cases of the sign family: quantizer x dtype, heuristic configs of each kind and path,
the largest search-space tiles and the split-K reduction."""
from __future__ import annotations

import torch

from ...formats import FLOAT_DTYPES
from ..base import AotCase, KernelConfig, KernelPath, aligned_args, triton_dtype
from .configs import BINARY, QUANT_MAX_BLOCK, TERNARY_A8, TERNARY_A16, SignKind, kind_heuristic
from .kernels import _sign_gemm_kernel, _sign_gemv_kernel, _sign_quant_kernel, _sign_reduce_kernel

FAMILY_NAME = "sign"


def _ptr(dtype: torch.dtype) -> str:
    return "*" + triton_dtype(dtype)


_ALIGNED_INTS = ("N", "K", "Kw", "stride_xm", "stride_qm", "stride_om")


def _aligned(sig: dict) -> tuple:
    return aligned_args(sig, _ALIGNED_INTS)


def quantize_case(dtype: torch.dtype, block: int) -> AotCase:
    """The quantizer for activations of `dtype` with a BLOCK_K of `block` (one tile when K fits)."""
    sig = {"x_ptr": _ptr(dtype), "xq_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32", "stride_xm": "i32",
           "stride_qm": "i32", "BLOCK_K": "constexpr", "ONE_TILE": "constexpr"}
    one = block < QUANT_MAX_BLOCK
    cfg = KernelConfig(block_m=1, block_n=1, block_k=block, num_warps=8 if block >= 4096 else 4, num_stages=1)
    return AotCase(FAMILY_NAME, _sign_quant_kernel, sig, {"BLOCK_K": block, "ONE_TILE": one}, cfg,
                   f"quant {triton_dtype(dtype)} k{block}{' 1tile' if one else ''}", divisible_by_16=_aligned(sig))


def sign_case(kind: SignKind, path: KernelPath, xdtype: torch.dtype, cfg: KernelConfig,
              scale_dtype: torch.dtype, per_n: bool = True, has_bias: bool = True) -> AotCase:
    """One GEMV or GEMM specialisation; A8 GEMM cases require integer tensor-core instructions."""
    act = torch.int8 if kind.int8_act else xdtype
    sig = {"x_ptr": _ptr(act), "xscale_ptr": "*fp32", "qw_ptr": "*i32", "kscale_ptr": _ptr(scale_dtype),
           "nscale_ptr": _ptr(scale_dtype), "bias_ptr": _ptr(xdtype), "out_ptr": _ptr(xdtype)}
    consts = {"BITS": kind.bits, "INT8_ACT": kind.int8_act, "HAS_KSCALE": kind.has_kscale,
              "NSCALE_PER_N": per_n, "HAS_BIAS": has_bias, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}
    if path is KernelPath.GEMM:
        kernel = _sign_gemm_kernel
        sig.update({"M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32"})
        consts.update({"BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m})
    else:
        kernel = _sign_gemv_kernel
        sig.update({"ws_ptr": "*i32" if kind.int8_act else "*fp32", "M": "i32", "N": "i32", "K": "i32",
                    "Kw": "i32", "stride_xm": "i32", "stride_om": "i32"})
        consts.update({"BLOCK_KW": cfg.block_k // kind.vpw, "SPLIT_K": cfg.split_k})
    for name in consts:
        sig[name] = "constexpr"
    # fp32 activations use input_precision="ieee": FMA dots, no tensor cores
    tc = path is KernelPath.GEMM and (kind.int8_act or xdtype != torch.float32)
    return AotCase(FAMILY_NAME, kernel, sig, consts, cfg,
                   f"{kind.name} {path.value} {triton_dtype(xdtype)} {cfg.label()}", expects_tensor_cores=tc, integer_mma=tc and kind.int8_act, divisible_by_16=_aligned(sig))


def reduce_case(kind: SignKind, xdtype: torch.dtype, split: int, scale_dtype: torch.dtype) -> AotCase:
    """The split-K reduction + epilogue."""
    sig = {"ws_ptr": "*i32" if kind.int8_act else "*fp32", "xscale_ptr": "*fp32", "nscale_ptr": _ptr(scale_dtype),
           "bias_ptr": _ptr(xdtype), "out_ptr": _ptr(xdtype), "M": "i32", "N": "i32", "stride_om": "i32"}
    from .launch import REDUCE_BLOCK_N

    consts = {"SPLIT_K": split, "INT8_ACT": kind.int8_act, "NSCALE_PER_N": True, "HAS_BIAS": True,
              "BLOCK_M": 16, "BLOCK_N": REDUCE_BLOCK_N}
    for name in consts:
        sig[name] = "constexpr"
    cfg = KernelConfig(block_m=16, block_n=REDUCE_BLOCK_N, split_k=split, num_warps=4, num_stages=1)
    return AotCase(FAMILY_NAME, _sign_reduce_kernel, sig, consts, cfg,
                   f"{kind.name} reduce {triton_dtype(xdtype)} s{split}",
                   divisible_by_16=_aligned(sig))


def _with_split(cfg: KernelConfig, split: int | None) -> KernelConfig:
    if split is None:
        return cfg
    return KernelConfig(**{**cfg.to_dict(), "split_k": split})


def aot_cases() -> list[AotCase]:
    """Per kind (W1.58A8, W1.58A16, binary): GEMV/GEMM heuristic configs at 8192 x 8192 for each dtype, a
    corner tile, the largest GEMM tile and the split-K reduction; the quantizer for each dtype."""
    gemv, gemm = KernelPath.GEMV, KernelPath.GEMM
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    cases = [quantize_case(dt, 4096) for dt in FLOAT_DTYPES]
    cases.append(quantize_case(f16, QUANT_MAX_BLOCK))
    for kind in (TERNARY_A8, TERNARY_A16, BINARY):
        scale_dt = f16 if kind.has_kscale else f32  # binary's g, h are fp16; ternary's gamma fp32

        def h(p, m, dt=f16, split=None, kind=kind):
            return _with_split(kind_heuristic(kind, p, m, 8192, 8192, dt), split)

        def sc(p, cfg, dt=f16, kind=kind, scale_dt=scale_dt):
            return sign_case(kind, p, dt, cfg, scale_dt)

        corner = KernelConfig(block_m=8, block_n=64, block_k=8 * kind.vpw, split_k=4, group_m=1)
        cases += [sc(gemv, h(gemv, 1, split=1)), sc(gemv, h(gemv, 1)), sc(gemv, h(gemv, 8)), sc(gemv, corner),
                  sc(gemv, h(gemv, 2, bf16), bf16), sc(gemv, h(gemv, 4, f32), f32)]
        big = KernelConfig(block_m=128, block_n=128, block_k=128 if kind.int8_act else 64, group_m=8,
                           num_warps=8, num_stages=4)
        cases += [sc(gemm, h(gemm, 16)), sc(gemm, h(gemm, 64)), sc(gemm, h(gemm, 4096)), sc(gemm, big),
                  sc(gemm, h(gemm, 4096, bf16), bf16), sc(gemm, h(gemm, 64, f32), f32)]
        cases.append(reduce_case(kind, f16, 8, scale_dt))
    return cases
