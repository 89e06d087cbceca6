"""Compile-gate cases and static-roofline launch plans of the sign family.

Cases: per kind (W1.58A8, W1.58A16, binary) the heuristic GEMV and GEMM configs at N = K = 8192
for fp16 (the fp16 mask path of A16/binary uses inline PTX: the gate builds it), a ragged corner,
bf16 and fp32 (decoded fields), the largest search-space tile, the split-K reduction, and the
quantizer for each dtype. Plans: every launch of one call, as :class:`~lowbit.kernels.base.LaunchPlan`.
"""
from __future__ import annotations

import torch
import triton

from ...formats import FLOAT_DTYPES, QuantizedWeight
from ..base import AotCase, KernelConfig, KernelPath, LaunchPlan, aligned_args, triton_dtype
from .configs import BINARY, KINDS, QUANT_MAX_BLOCK, REDUCE_BLOCK_N, SignKind, kind_heuristic, kind_of, kind_search_space

FAMILY_NAME = "sign"
_ALIGNED_INTS = ("N", "K", "NL", "stride_xm", "stride_ql", "stride_om", "stride_qm")


def _ptr(dtype: torch.dtype) -> str:
    return "*" + triton_dtype(dtype)


def _specialise(sig: dict, consts: dict, m: int | None) -> tuple:
    """What a JIT launch at `m` rows specialises: M = 1 becomes a constant; aligned pointers and ints."""
    if m == 1 and "M" in sig:
        sig["M"] = "constexpr"
        consts["M"] = 1
    for name in consts:
        sig[name] = "constexpr"
    return aligned_args({k: v for k, v in sig.items() if v != "constexpr"}, _ALIGNED_INTS)


def quantize_case(dtype: torch.dtype, block: int, one: bool) -> AotCase:
    """The quantizer for activations of `dtype` with a BLOCK_K of `block`, from registers in one read
    (`one`: K <= block) or in two sweeps."""
    sig = {"x_ptr": _ptr(dtype), "xq_ptr": "*i8", "scale_ptr": "*fp32", "xsum_ptr": "*i32", "K": "i32",
           "stride_xm": "i32", "stride_qm": "i32"}
    consts = {"BLOCK_K": block, "ONE_TILE": one}
    div = _specialise(sig, consts, None)
    cfg = KernelConfig(block_m=1, block_n=1, block_k=block, num_warps=8 if block >= 4096 else 4, num_stages=1)
    from .kernels import _sign_quant_kernel

    return AotCase(FAMILY_NAME, _sign_quant_kernel, sig, consts, cfg,
                   f"quant {triton_dtype(dtype)} k{block}{' 1tile' if one else ''}", divisible_by_16=div)


def _scale_dtypes(kind: SignKind) -> tuple[torch.dtype, torch.dtype]:
    """(kscale, nscale) dtypes the quantizers store: binary g, h in fp16; ternary gamma in fp32."""
    return (torch.float16, torch.float16) if kind.has_kscale else (torch.float32, torch.float32)


def sign_case(kind: SignKind, path: KernelPath, xdtype: torch.dtype, cfg: KernelConfig, *, per_n: bool = True,
              has_bias: bool = True, even: bool = True, m: int | None = None, split: int | None = None,
              label: str | None = None) -> AotCase:
    """One GEMV or GEMM specialisation. A8 GEMMs must hold integer tensor-core instructions."""
    from .kernels import _sign_gemm_kernel, _sign_gemv_kernel

    act = torch.int8 if kind.int8_act else xdtype
    kdt, ndt = _scale_dtypes(kind)
    sig = {"x_ptr": _ptr(act), "xscale_ptr": "*fp32", "xsum_ptr": "*i32", "qw_ptr": _ptr(kind.lane_dtype),
           "kscale_ptr": _ptr(kdt), "nscale_ptr": _ptr(ndt), "bias_ptr": _ptr(xdtype), "out_ptr": _ptr(xdtype)}
    rpl = kind.rows_per_lane
    consts = {"BITS": kind.bits, "LANE_BITS": kind.lane_bits, "INT8_ACT": kind.int8_act,
              "MASK": kind.masks(xdtype), "HAS_KSCALE": kind.has_kscale, "NSCALE_PER_N": per_n,
              "HAS_BIAS": has_bias}
    if path is KernelPath.GEMM:
        kernel = _sign_gemm_kernel
        sig.update({"M": "i32", "N": "i32", "K": "i32", "NL": "i32", "stride_xm": "i32", "stride_ql": "i32",
                    "stride_om": "i32"})
        consts.update({"BLOCK_M": cfg.block_m, "BLOCK_L": cfg.block_n // rpl, "BLOCK_K": cfg.block_k,
                       "GROUP_M": cfg.group_m, "EVEN": even, "USE_ASM": True})
    else:
        kernel = _sign_gemv_kernel
        sig["ws_ptr"] = "*i32" if kind.int8_act else "*fp32"
        sig.update({"M": "i32", "N": "i32", "K": "i32", "NL": "i32", "stride_xm": "i32", "stride_ql": "i32",
                    "stride_om": "i32"})
        consts.update({"BLOCK_M": cfg.block_m, "BLOCK_L": cfg.block_n // rpl,
                       "BLOCK_KS": cfg.block_k // cfg.num_warps, "SLICES": cfg.num_warps,
                       "SPLIT_K": cfg.split_k if split is None else split, "EVEN": even, "USE_ASM": True})
    div = _specialise(sig, consts, m)
    # fp32 activations use input_precision="ieee": FMA dots, no tensor cores
    tc = path is KernelPath.GEMM and (kind.int8_act or xdtype != torch.float32)
    return AotCase(FAMILY_NAME, kernel, sig, consts, cfg,
                   label or f"{kind.name} {path.value} {triton_dtype(xdtype)} {cfg.label()}",
                   expects_tensor_cores=tc, integer_mma=tc and kind.int8_act, divisible_by_16=div)


def reduce_case(kind: SignKind, xdtype: torch.dtype, split: int, m: int | None = None,
                per_n: bool = True, has_bias: bool = True) -> AotCase:
    """The split-K reduction + epilogue."""
    from .kernels import _sign_reduce_kernel

    _, ndt = _scale_dtypes(kind)
    sig = {"ws_ptr": "*i32" if kind.int8_act else "*fp32", "xscale_ptr": "*fp32", "xsum_ptr": "*i32",
           "nscale_ptr": _ptr(ndt), "bias_ptr": _ptr(xdtype), "out_ptr": _ptr(xdtype), "M": "i32", "N": "i32",
           "stride_om": "i32"}
    rbm = 16 if m is None else min(16, triton.next_power_of_2(m))
    consts = {"SPLIT_K": split, "RPL": kind.rows_per_lane, "INT8_ACT": kind.int8_act, "NSCALE_PER_N": per_n,
              "HAS_BIAS": has_bias, "BLOCK_M": rbm, "BLOCK_N": REDUCE_BLOCK_N}
    div = _specialise(sig, consts, m)
    cfg = KernelConfig(block_m=rbm, block_n=REDUCE_BLOCK_N, split_k=split, num_warps=4, num_stages=1)
    return AotCase(FAMILY_NAME, _sign_reduce_kernel, sig, consts, cfg,
                   f"{kind.name} reduce {triton_dtype(xdtype)} s{split}", divisible_by_16=div)


def aot_cases() -> list[AotCase]:
    """Per kind: heuristic GEMV (M = 1, 16) and GEMM (M = 64, 4096) configs at 8192 x 8192 in fp16, a
    ragged GEMV and GEMM, bf16 and fp32 configs, the largest GEMM tile and the split-K reduction; the
    quantizer for each dtype."""
    gemv, gemm = KernelPath.GEMV, KernelPath.GEMM
    f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
    cases = [quantize_case(dt, 4096, True) for dt in FLOAT_DTYPES]
    cases.append(quantize_case(f16, QUANT_MAX_BLOCK, False))
    for kind in KINDS:
        def h(p, m, dt=f16, kind=kind):
            return kind_heuristic(kind, p, m, 8192, 8192, dt)

        cases += [sign_case(kind, gemv, f16, h(gemv, 1), m=1), sign_case(kind, gemv, f16, h(gemv, 16)),
                  sign_case(kind, gemv, f16, h(gemv, 3), even=False, split=4),
                  sign_case(kind, gemv, bf16, h(gemv, 2, bf16), m=None), sign_case(kind, gemv, f32, h(gemv, 4, f32))]
        space = kind_search_space(kind, gemm, f16)
        big = max(space, key=lambda c: (c.block_m * c.block_n * c.block_k * c.num_stages, c.num_warps))
        cases += [sign_case(kind, gemm, f16, h(gemm, 64)), sign_case(kind, gemm, f16, h(gemm, 4096)),
                  sign_case(kind, gemm, f16, h(gemm, 100), even=False),
                  sign_case(kind, gemm, bf16, h(gemm, 4096, bf16)), sign_case(kind, gemm, f32, h(gemm, 64, f32))]
        cases.append(sign_case(kind, gemm, f16, big, label=f"{kind.name} gemm f16 largest {big.label()}"))
        cases.append(reduce_case(kind, f16, 8))
    return cases


# -- launch plans for the static roofline ------------------------------------------------------

def _nbytes(shape, dtype: torch.dtype) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n * torch.empty((), dtype=dtype).element_size()


def _weight_bytes(qw: QuantizedWeight) -> int:
    return sum(_nbytes(t.shape, t.dtype) for t in qw.tensors.values())


def launch_plans(qw: QuantizedWeight, m: int, path: KernelPath, dtype: torch.dtype,
                 config: KernelConfig) -> list[LaunchPlan]:
    """Every launch of one call on x [m, K] of `dtype` (no bias), as the static roofline models it.

    HBM bytes count each tensor once: the packed weight and its scales, x (or x_q), the output
    or split-K workspace, the quantizer's outputs; re-reads of x by several CTAs hit L2 and are not
    counted. A JIT launch specialises M = 1 as a constant, and the plans compile the same.
    """
    from .launch import gemv_split

    kind = kind_of(qw)
    n, k = qw.shape
    rpl = kind.rows_per_lane
    layout = qw.spec.layout
    nl = layout.lanes(n)
    out_bytes = _nbytes((m, n), dtype)
    plans = []
    if kind.int8_act:
        block = min(triton.next_power_of_2(k), QUANT_MAX_BLOCK)
        qcase = quantize_case(dtype, block, k <= block)
        trips = 1 if k <= block else 2 * triton.cdiv(k, block)
        plans.append(LaunchPlan("quantize x", qcase, (m,), 32 * qcase.config.num_warps, trips, 0,
                                _nbytes((m, k), dtype) + _nbytes((m, k), torch.int8) + 8 * m))
        x_bytes = _nbytes((m, k), torch.int8) + 8 * m
    else:
        x_bytes = _nbytes((m, k), dtype)
    block_l = config.block_n // rpl
    if path is KernelPath.GEMM:
        even = k % config.block_k == 0 and nl % block_l == 0
        case = sign_case(kind, path, dtype, config, per_n=qw.tensors[_nscale_name(kind)].numel() != 1,
                         has_bias=False, even=even, m=m)
        grid = (triton.cdiv(m, config.block_m) * triton.cdiv(nl, block_l),)
        plans.append(LaunchPlan("gemm", case, grid, 32 * config.num_warps, triton.cdiv(k, config.block_k),
                                block_l * rpl * config.block_k, _weight_bytes(qw) + x_bytes + out_bytes))
        return plans
    split = gemv_split(kind, config, k)
    even = k % (config.block_k * split) == 0 and nl % block_l == 0
    per_n = qw.tensors[_nscale_name(kind)].numel() != 1
    case = sign_case(kind, path, dtype, config, per_n=per_n, has_bias=False, even=even, m=m, split=split)
    grid = (triton.cdiv(nl, block_l), split, triton.cdiv(m, config.block_m))
    trips = triton.cdiv(triton.cdiv(k, split), config.block_k)
    ws_bytes = split * m * n * 4 if split > 1 else 0
    plans.append(LaunchPlan("gemv", case, grid, 32 * config.num_warps, trips, block_l * rpl * config.block_k,
                            _weight_bytes(qw) + x_bytes + (ws_bytes or out_bytes)))
    if split > 1:
        rcase = reduce_case(kind, dtype, split, m, per_n=per_n, has_bias=False)
        rgrid = (triton.cdiv(n, REDUCE_BLOCK_N), triton.cdiv(m, rcase.config.block_m))
        plans.append(LaunchPlan("reduce", rcase, rgrid, 32 * rcase.config.num_warps, split, 0,
                                ws_bytes + out_bytes + (8 * m if kind.int8_act else 0)))
    return plans


def _nscale_name(kind: SignKind) -> str:
    return "h" if kind is BINARY else "gamma"
