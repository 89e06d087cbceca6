"""Sign-code family: BitNet b1.58 ternary (W1.58A8 "ternary", W1.58A16 "ternary_a16") and OneBit "binary".

Launch wrapper, the ``lowbit::sign_linear`` custom op and the family descriptor. OneBit binary
(y = ((x * g) . S^T) * h, signs packed 32 per int32) runs the same kernels with BITS = 1: a bit
decodes to s = 2 * bit - 1, g[K] is folded into the weight tile (exact: only the sign changes)
and h[N] is applied in the epilogue.

W1.58A8 runs in two launches. First, :func:`quantize_activations` does a per-token absmax
int8 quantization in one read of x (rows longer than 8192 are swept twice, the second time
from L2): it writes x_q int8 [M, K] and scale fp32 [M], with
scale = 127 / max(absmax, 1e-5) as an IEEE division and round-half-even. Second, a GEMV
(small M) or an int8 x int8 -> int32 ``tl.dot`` GEMM unpacks the 2-bit codes (t + 1) to int8 in
the K loop. Its epilogue is y = acc * gamma / scale (+ bias), in x's dtype.

Why a separate quantization pass, counted in bytes (M = 4096, N = K = 8192, fp16 x, BLOCK_N = 128):
- The GEMM re-reads each row strip of activations once per column tile, N / BLOCK_N = 64 times.
  With a separate pass, those re-reads are int8: 64 x 32 MiB = 2 GiB of operand traffic,
  mostly served from L2. The pass itself moves 64 MiB (read x) + 32 MiB (write x_q) of HBM.
- A prologue fused into the GEMM needs each row's absmax before it can quantize the first K
  tile. Every program would sweep its fp16 strip twice: once for the absmax, once for the dot.
  That is 2 x 64 x 64 MiB = 8 GiB, four times the traffic. The absmax and the rounding would
  also run 64 times per element instead of once.
- Fusing would save only the x_q round trip of 64 MiB on HBM. At this shape the GEMM is
  compute-bound: 550 int8 GOP take about 280 us at 1980 TOPS, while all its HBM traffic takes
  about 65 us (about 45 us without the round trip), so the round trip is hidden.
- At decode (M = 1) the round trip costs 2 bytes per input (write x_q, read it back) against
  N / 4 = 2048 bytes of packed weights per input at N = 8192, about 0.1 %. What remains is the
  price of one more launch (a few us eagerly, about 1 us under CUDA-graph replay).

W1.58A16 skips activation quantization: y = (x . T^T) * gamma, with T decoded to x's dtype (exact).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from ..._checks import ACTIVATION_DTYPES
from ...formats import Scheme, TERNARY_SCHEMES
from ..base import KernelConfig, KernelFamily, KernelPath, check_runtime, flatten_rows, operands
from . import configs as cfgs
from .configs import BINARY, QUANT_MAX_BLOCK, TERNARY_A8, TERNARY_A16, SignKind, kind_of
from .kernels import _sign_gemm_kernel, _sign_gemv_kernel, _sign_quant_kernel, _sign_reduce_kernel

REDUCE_BLOCK_N = 128
KINDS = {k.name: k for k in (TERNARY_A8, TERNARY_A16, BINARY)}

__all__ = ["FAMILY", "SignFamily", "launch", "sign_linear", "quantize_activations"]


def quantize_rows(x2d: torch.Tensor, max_block: int = QUANT_MAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the per-token quantizer on x2d [M, K] (unit stride along K): x_q int8 [M, K], scale fp32 [M].

    Rows up to `max_block` long are quantized from registers in one read; longer rows are swept twice.
    """
    m, k = x2d.shape
    xq = torch.empty((m, k), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    block = min(triton.next_power_of_2(k), max_block)
    _sign_quant_kernel[(m,)](x2d, xq, scale, k, x2d.stride(0), xq.stride(0),
                             BLOCK_K=block, ONE_TILE=k <= block, num_warps=8 if block >= 4096 else 4)
    return xq, scale


def _run(kind: SignKind, path: KernelPath, cfg: KernelConfig, x2d: torch.Tensor, xscale: torch.Tensor | None,
         qweight: torch.Tensor, kscale: torch.Tensor | None, nscale: torch.Tensor, bias: torch.Tensor | None,
         out: torch.Tensor) -> torch.Tensor:
    """out[M, N] = decode(qweight) applied to x2d (x_q for A8) with the epilogue scales; returns out."""
    m, k = x2d.shape
    kw, n = qweight.shape
    per_n = nscale.numel() != 1
    dummy = nscale
    common = dict(BITS=kind.bits, INT8_ACT=kind.int8_act, HAS_KSCALE=kind.has_kscale,
                  NSCALE_PER_N=per_n, HAS_BIAS=bias is not None)
    xs = xscale if xscale is not None else dummy
    ks = kscale if kscale is not None else dummy
    bs = bias if bias is not None else dummy
    if path is KernelPath.GEMM:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
        _sign_gemm_kernel[grid](x2d, xs, qweight, ks, nscale, bs, out, m, n, k, x2d.stride(0), out.stride(0),
                                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                                GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                **common)
        return out
    split = max(1, min(cfg.split_k, triton.cdiv(kw, cfg.block_k // kind.vpw)))
    ws = out
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.int32 if kind.int8_act else torch.float32, device=out.device)
    grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
    _sign_gemv_kernel[grid](x2d, xs, qweight, ks, nscale, bs, out, ws, m, n, k, kw, x2d.stride(0), out.stride(0),
                            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_KW=cfg.block_k // kind.vpw,
                            SPLIT_K=split, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    if split > 1:
        rbm, rbn = min(16, triton.next_power_of_2(m)), REDUCE_BLOCK_N
        _sign_reduce_kernel[(triton.cdiv(n, rbn), triton.cdiv(m, rbm))](
            ws, xs, nscale, bs, out, m, n, out.stride(0), SPLIT_K=split, INT8_ACT=kind.int8_act,
            NSCALE_PER_N=per_n, HAS_BIAS=bias is not None, BLOCK_M=rbm, BLOCK_N=rbn, num_warps=4)
    return out


def quantize_activations(x: torch.Tensor, max_block: int = QUANT_MAX_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel twin of reference.ternary.quantize_activations: x [..., K] -> (x_q int8 [..., K], scale fp32 [...]).

    `max_block` (a power of two) bounds the register tile; longer rows take the two-sweep path.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty [..., K] tensor, got shape {tuple(x.shape)}")
    if max_block <= 0 or max_block & (max_block - 1):
        raise ValueError(f"max_block must be a positive power of two, got {max_block}")
    check_runtime(x)
    xq, scale = quantize_rows(flatten_rows(x), max_block)
    return xq.reshape(x.shape), scale.reshape(x.shape[:-1])


def _tensors(qw) -> tuple:
    """(qweight, kscale, nscale): binary's g and h, or ternary's gamma (no per-K scale)."""
    t = operands(qw)
    if qw.scheme is Scheme.BINARY:
        return t["qweight"], t["g"], t["h"]
    return t["qweight"], None, t["gamma"]


def _forward(kind: SignKind, x2d, qweight, kscale, nscale, bias, path: KernelPath, cfg: KernelConfig, out):
    """One call: per-token int8 quantization of x2d first for A8, then the GEMV or GEMM launch."""
    if kind.int8_act:
        xq, scale = quantize_rows(x2d)
        return _run(kind, path, cfg, xq, scale, qweight, kscale, nscale, bias, out)
    return _run(kind, path, cfg, x2d, None, qweight, kscale, nscale, bias, out)


def launch(x2d: torch.Tensor, qw, bias: Optional[torch.Tensor], path, config: KernelConfig,
           out: torch.Tensor) -> torch.Tensor:
    """Run one explicit config: out[M, N] = x2d[M, K] . W^T (+ bias), every argument checked; returns out."""
    return FAMILY.launch(x2d, qw, bias, path, config, out)


@torch.library.custom_op("lowbit::sign_linear", mutates_args=())
def sign_linear(x: torch.Tensor, qweight: torch.Tensor, kscale: Optional[torch.Tensor], nscale: torch.Tensor,
                bias: Optional[torch.Tensor], kind: str, path: str, config: list[int]) -> torch.Tensor:
    """y [M, N] for sign codes: kind "a8" (ternary, int8 activations), "a16" (ternary) or "binary"."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    return _forward(KINDS[kind], x, qweight, kscale, nscale, bias, KernelPath(path), KernelConfig.from_list(config),
                    out)


@sign_linear.register_fake
def _sign_linear_fake(x, qweight, kscale, nscale, bias, kind, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


class SignFamily(KernelFamily):
    """Sign-like codes with scales outside the dot: ternary (2-bit t + 1, fp32 gamma) and binary (1 bit, g, h)."""

    name = "sign"
    schemes = frozenset(TERNARY_SCHEMES | {Scheme.BINARY})
    gemv_max_m = 8
    configs = cfgs

    def forward(self, x2d, qw, bias, path, config):
        return sign_linear(x2d, *_tensors(qw), bias, kind_of(qw).name, path.value, config.to_list())

    def run(self, x2d, qw, bias, path, config, out):
        return _forward(kind_of(qw), x2d, *_tensors(qw), bias, path, config, out)

    def aot_cases(self):
        from .aot import aot_cases

        return aot_cases()

    def launch_plans(self, qw, m, path, dtype, config):
        from .aot import launch_plans

        return launch_plans(self, qw, m, path, dtype, config)


FAMILY = SignFamily()
