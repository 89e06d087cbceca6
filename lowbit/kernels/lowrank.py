"""The low-rank correction y += (x B^T) A^T as a separate, generic pair of launches (not fused).

A weight with a low-rank term (``QuantizedWeight.lowrank`` = r > 0) is W_hat + A B, A [N, r],
B [r, K]. Until a family fuses the term into its own kernels (``KernelFamily.fuses_lowrank``),
:func:`lowbit.kernels.linear` runs the family's kernels for x W_hat^T and then this module:

1. ``_lowrank_project_kernel``: t = x B^T, split over K (grid [M tiles, splits]) into an fp32
   workspace [splits, M, R];
2. ``_lowrank_expand_kernel``: per [M, N] tile, t = the fixed-order sum of the splits, and
   out = y + t A^T (in fp32, cast once to y's dtype).

This costs two extra launches, a second read of x and a read and write of y: in the static model
(perf/lowrank_roofline.py) +2.2 us at M = 1 and +46 us at M = 4096 for r = 32, N = K = 8192 on an
H200: small against the main calls before the rewrites (1.03-1.12x), but 1.26x the int4 g128 GEMV's
8.3 us today (1.33-1.45x for int3, int2 and ternary), which the fused design would avoid. perf/NOTES.md, "low-rank term", has the
design of the fused version. The compile gate covers r <= 64 (r = 128 pads the tiles to 128 and
is not gated).
Dots: the projection runs fp16 tensor-core dots when x and B are fp16 (exact products, fp32
accumulation), otherwise fp32 operands as three tf32 passes (``input_precision="tf32x3"``, about
fp32's accuracy, on tensor cores). The expansion scales each row of t by its largest |value| and
dots in fp16 for fp16/bf16 outputs (t has no fp16-safe range unscaled), and runs tf32x3 for fp32
outputs. (An exact "ieee" FMA dot there spills once y is fp32: 4 KiB a thread at 64x64 tiles, in
the compile gate.) The Triton interpreter computes every dot exactly, after the same roundings of
its operands. No host synchronisation, no atomics, deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..formats import QuantizedWeight
from .base import DEFAULT_SMS, AotCase, KernelConfig, LaunchPlan, dtype_tag, on_interpreter, triton_dtype
from .jit import lowrank_apply, store_tile

__all__ = ["LowrankConfig", "add_lowrank", "lowrank_add", "heuristic", "aot_cases", "launch_plans",
           "workspace_numel"]

MIN_DOT = 16  # tl.dot needs every tile dimension >= 16


@dataclass(frozen=True)
class LowrankConfig:
    """Tiles of the two launches: projection [block_m, block_k] over `split` K ranges, expansion [block_m, block_n]."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split: int = 1
    num_warps: int = 4

    def to_list(self) -> list[int]:
        return [self.block_m, self.block_n, self.block_k, self.split, self.num_warps]

    @classmethod
    def from_list(cls, v) -> "LowrankConfig":
        return cls(*[int(i) for i in v])


def block_r(rank: int) -> int:
    """The rank padded to a power of two, at least 16 (tl.dot)."""
    return max(MIN_DOT, triton.next_power_of_2(rank))


def heuristic(m: int, n: int, k: int, rank: int, on_cpu_interpreter: bool = False,
              dtype: torch.dtype = torch.float16) -> LowrankConfig:
    """Tiles for an [m, K] x of `dtype` and rank r: enough K splits to fill about two waves at small M.

    Chosen with the compile gate (no spills on sm_80/sm_90 up to r = 64) and the static model
    (perf/lowrank_roofline.py): at M = 4096 fp16, 64x128 expansion tiles come within 10 % of the
    bytes floor where 32x64 ones issue twice as many instructions; fp32 operands (tf32x3 dots)
    need the smaller tiles.
    """
    if on_cpu_interpreter:  # few, large programs: the interpreter pays per program and per K step
        return LowrankConfig(block_m=min(64, max(MIN_DOT, triton.next_power_of_2(m))),
                             block_n=min(256, max(MIN_DOT, triton.next_power_of_2(n))),
                             block_k=min(256, max(MIN_DOT, triton.next_power_of_2(k))), split=1)
    if m <= MIN_DOT:
        bm, bn, bk, warps = MIN_DOT, 128, 128, 4
    elif dtype == torch.float16:
        bm, bn, bk, warps = 64, 128, 64, 8
    else:
        bm, bn, bk, warps = 32, 64, 64, 4
    m_tiles = triton.cdiv(m, bm)
    split = max(1, min(triton.cdiv(k, bk), (2 * DEFAULT_SMS) // m_tiles))
    return LowrankConfig(block_m=bm, block_n=bn, block_k=bk, split=split, num_warps=warps)


@triton.jit
def _lowrank_project_kernel(x_ptr, b_ptr, ws_ptr, M, K, R, stride_xm, k_per_split,
                            F16_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_K: tl.constexpr):
    """ws[s, rm, :R] = x[rm, k-range s] . B[:, k-range s]^T for program (m tile, split s)."""
    pid_m = tl.program_id(0)
    s = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rr = tl.arange(0, BLOCK_R)
    rk = tl.arange(0, BLOCK_K)
    k0 = s * k_per_split
    k_end = tl.minimum(k0 + k_per_split, K)
    x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
    b_rows = b_ptr + rr.to(tl.int64)[None, :] * K
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for kk in range(k0, k_end, BLOCK_K):
        ks = kk + rk
        kmask = ks < k_end
        xt = tl.load(x_rows + ks[None, :], mask=(rm < M)[:, None] & kmask[None, :], other=0.0)
        bt = tl.load(b_rows + ks[:, None], mask=kmask[:, None] & (rr < R)[None, :], other=0.0)  # B^T tile [BK, BR]
        if F16_DOT:
            acc = tl.dot(xt, bt, acc)
        else:
            acc = tl.dot(xt.to(tl.float32), bt.to(tl.float32), acc, input_precision="tf32x3")
    store_tile(ws_ptr + s.to(tl.int64) * M * R, acc, rm, rr, M, R, R, 1)


@triton.jit
def _lowrank_expand_kernel(ws_ptr, a_ptr, y_ptr, out_ptr, M, N, R, split, stride_ym, stride_om,
                           F16_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           BLOCK_R: tl.constexpr):
    """out[rm, rn] = y[rm, rn] + (sum_s ws[s, rm, :]) . A[rn, :]^T in fp32 (out may be y itself)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    y = tl.load(y_ptr + rm.to(tl.int64)[:, None] * stride_ym + rn[None, :], mask=mask, other=0.0)
    acc = lowrank_apply(y.to(tl.float32), ws_ptr, a_ptr, rm, rn, M, N, R, split, BLOCK_R, True, F16_DOT)
    store_tile(out_ptr, acc, rm, rn, M, N, stride_om, 1)


def expand_f16(out_dtype: torch.dtype, factor_dtype: torch.dtype) -> bool:
    """Whether the expansion dots in fp16 (row-scaled t): fp16/bf16 outputs with fp16 factors. fp32 outputs,
    and fp32 factors (stored only for weights too small for fp16), keep tf32x3."""
    return out_dtype != torch.float32 and factor_dtype == torch.float16


def workspace_numel(m: int, rank: int, config: LowrankConfig) -> int:
    """fp32 elements of the t workspace one call allocates: split * M * r."""
    return config.split * m * rank


def _run(x2d: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, out: torch.Tensor,
         cfg: LowrankConfig) -> torch.Tensor:
    """Launch both kernels: out = y + (x2d B^T) A^T (out may be y). Arguments already checked."""
    m, k = x2d.shape
    n, r = a.shape
    br = block_r(r)
    per_split = triton.cdiv(triton.cdiv(k, cfg.split), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, per_split)  # no empty split
    ws = torch.empty((split, m, r), dtype=torch.float32, device=x2d.device)
    f16 = x2d.dtype == torch.float16 and b.dtype == torch.float16
    _lowrank_project_kernel[(triton.cdiv(m, cfg.block_m), split)](
        x2d, b, ws, m, k, r, x2d.stride(0), per_split, F16_DOT=f16, BLOCK_M=cfg.block_m, BLOCK_R=br,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps)
    _lowrank_expand_kernel[(triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n))](
        ws, a, y, out, m, n, r, split, y.stride(0), out.stride(0), F16_DOT=expand_f16(y.dtype, a.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_R=br, num_warps=cfg.num_warps)
    return out


@torch.library.custom_op("lowbit::lowrank_add", mutates_args=())
def lowrank_add(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, config: list[int]) -> torch.Tensor:
    """y + (x B^T) A^T for x [M, K], A [N, r], B [r, K], y [M, N] in x's dtype (checked by the caller)."""
    return _run(x, a, b, y, torch.empty_like(y), LowrankConfig.from_list(config))


@lowrank_add.register_fake
def _lowrank_add_fake(x, a, b, y, config):
    return torch.empty_like(y)


def config_for(x2d: torch.Tensor, qw: QuantizedWeight) -> LowrankConfig:
    """The launch tiles for this call (the heuristic; large tiles under the CPU interpreter)."""
    return heuristic(x2d.shape[0], qw.N, qw.K, qw.lowrank, on_interpreter(x2d), x2d.dtype)


def add_lowrank(x2d: torch.Tensor, qw: QuantizedWeight, y: torch.Tensor, *, inplace: bool = False,
                config: LowrankConfig | None = None) -> torch.Tensor:
    """y + (x2d B^T) A^T for a weight with a low-rank term; y [M, N] is x W_hat^T (+ bias) from a family.

    ``inplace=True`` writes into y (for explicit-output launches); otherwise the custom op returns a
    new tensor (torch.compile traces it). Arguments were checked by the caller (check_linear_args).
    """
    a, b = qw["lowrank_a"].contiguous(), qw["lowrank_b"].contiguous()
    cfg = config or config_for(x2d, qw)
    if inplace:
        return _run(x2d, a, b, y, y, cfg)
    return lowrank_add(x2d, a, b, y, cfg.to_list())


# -- the compile gate and the static roofline --------------------------------------------------------
def aligned_args(signature: dict, ints) -> tuple:
    """The arguments a launch on aligned shapes (dims multiples of 16) specialises: pointers and `ints`."""
    return tuple(n for n, t in signature.items() if t.startswith("*") or n in ints)


# what a JIT launch on aligned shapes (N, K multiples of 16) specialises, besides the pointers
PROJECT_ALIGNED_INTS = ("K", "stride_xm", "k_per_split")  # k_per_split is a multiple of BLOCK_K
EXPAND_ALIGNED_INTS = ("N", "stride_ym", "stride_om")
AOT_RANKS = (16, 32, 64)


def _project_case(dtype: torch.dtype, fdtype: torch.dtype, rank: int, cfg: LowrankConfig) -> AotCase:
    sig = {"x_ptr": "*" + triton_dtype(dtype), "b_ptr": "*" + triton_dtype(fdtype), "ws_ptr": "*fp32",
           "M": "i32", "K": "i32", "R": "i32", "stride_xm": "i32", "k_per_split": "i32"}
    const = dict(F16_DOT=dtype == torch.float16 and fdtype == torch.float16, BLOCK_M=cfg.block_m,
                 BLOCK_R=block_r(rank), BLOCK_K=cfg.block_k)
    sig.update({c: "constexpr" for c in const})
    kcfg = KernelConfig(block_m=cfg.block_m, block_n=block_r(rank), block_k=cfg.block_k, split_k=cfg.split,
                        group_m=1, num_warps=cfg.num_warps, num_stages=1)
    return AotCase(family="lowrank", kernel=_lowrank_project_kernel, signature=sig, constexprs=const, config=kcfg,
                   label=f"project:{cfg.block_m}x{block_r(rank)}x{cfg.block_k}w{cfg.num_warps}/{dtype_tag(dtype)}"
                         f"/{dtype_tag(fdtype)}r{rank}",
                   expects_tensor_cores=True,  # fp16 dots, or tf32x3 (three tf32 MMA passes)
                   divisible_by_16=aligned_args(sig, PROJECT_ALIGNED_INTS))


def _expand_case(dtype: torch.dtype, fdtype: torch.dtype, rank: int, cfg: LowrankConfig) -> AotCase:
    act = "*" + triton_dtype(dtype)
    sig = {"ws_ptr": "*fp32", "a_ptr": "*" + triton_dtype(fdtype), "y_ptr": act, "out_ptr": act, "M": "i32",
           "N": "i32", "R": "i32", "split": "i32", "stride_ym": "i32", "stride_om": "i32"}
    const = dict(F16_DOT=expand_f16(dtype, fdtype), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                 BLOCK_R=block_r(rank))
    sig.update({c: "constexpr" for c in const})
    kcfg = KernelConfig(block_m=cfg.block_m, block_n=cfg.block_n, block_k=block_r(rank), split_k=1, group_m=1,
                        num_warps=cfg.num_warps, num_stages=1)
    return AotCase(family="lowrank", kernel=_lowrank_expand_kernel, signature=sig, constexprs=const, config=kcfg,
                   label=f"expand:{cfg.block_m}x{cfg.block_n}x{block_r(rank)}w{cfg.num_warps}/{dtype_tag(dtype)}"
                         f"/{dtype_tag(fdtype)}r{rank}",
                   expects_tensor_cores=True, divisible_by_16=aligned_args(sig, EXPAND_ALIGNED_INTS))


def aot_cases() -> list[AotCase]:
    """What the heuristic launches at M = 1 and M = 4096 for fp16/bf16/fp32 x and ranks 16/32/64 with fp16
    factors, plus fp32 factors once."""
    cases = []
    for m in (1, 4096):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            cfg = heuristic(m, 8192, 8192, 32, dtype=dtype)
            for rank in AOT_RANKS:
                cases += [_project_case(dtype, torch.float16, rank, cfg), _expand_case(dtype, torch.float16, rank, cfg)]
    cfg = heuristic(1, 8192, 8192, 32, dtype=torch.float32)
    cases += [_project_case(torch.float32, torch.float32, 32, cfg), _expand_case(torch.float32, torch.float32, 32, cfg)]
    return cases


def launch_plans(qw: QuantizedWeight, m: int, dtype: torch.dtype, config: LowrankConfig | None = None
                 ) -> list[LaunchPlan]:
    """The two launches the unfused correction adds to one call (for the static roofline); [] without one."""
    r = qw.lowrank
    if not r:
        return []
    n, k = qw.shape
    cfg = config or heuristic(m, n, k, r, dtype=dtype)
    fdtype = qw["lowrank_a"].dtype
    fsize, xsize = torch.empty(0, dtype=fdtype).element_size(), torch.empty(0, dtype=dtype).element_size()
    per_split = triton.cdiv(triton.cdiv(k, cfg.split), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, per_split)
    m_tiles = triton.cdiv(m, cfg.block_m)
    ws_bytes = 4 * split * m * r
    project = LaunchPlan("lowrank x.B^T", _project_case(dtype, fdtype, r, cfg), (m_tiles, split),
                         32 * cfg.num_warps, triton.cdiv(per_split, cfg.block_k), cfg.block_k * r,
                         m * k * xsize + r * k * fsize + ws_bytes)
    expand = LaunchPlan("lowrank y += t.A^T", _expand_case(dtype, fdtype, r, cfg),
                        (m_tiles, triton.cdiv(n, cfg.block_n)),
                        32 * cfg.num_warps, 1, 0, ws_bytes + n * r * fsize + 2 * m * n * xsize)
    return [project, expand]
