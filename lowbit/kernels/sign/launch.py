"""Sign-code family: BitNet b1.58 ternary (W1.58A8 "ternary", W1.58A16 "ternary_a16") and OneBit "binary".

Launch wrapper, the ``lowbit::sign_linear`` custom op and the family descriptor. The weights are
packed across rows (formats.LaneLayout); kernels.py explains how each lane becomes a tensor-core
operand. OneBit binary (y = ((x * g) . S^T) * h) multiplies x * g, rounded to x's dtype as OneBit's
own fp16 inference does, with the signs; h is applied in the epilogue.

W1.58A8 runs in two launches. First, :func:`quantize_activations` does a per-token absmax int8
quantization in one read of x (rows longer than 8192 are swept twice, the second time from L2):
it writes x_q int8 [M, K], scale fp32 [M] and sum(x_q) int32 [M], with scale = 127 / max(absmax,
1e-5) as an IEEE division and round-half-even. A token that holds a NaN or an infinity gets scale
NaN and x_q = 0, so its output row is NaN (the rule of lowbit.reference.ternary). Second, a GEMV
(small M) or GEMM of int8 tensor-core dots; its epilogue is y = (acc - sum(x_q)) * gamma / scale
(+ bias) in x's dtype, the sum only for the fields that store t + 1. K is limited to 2^17 - 1
(int32 accumulators stay exact).

Why a separate quantization pass, counted in bytes. A fused one would need every CTA to read the
whole row for its absmax before quantizing its own K range, and would quantize each element once
per column tile instead of once:
- M = 4096, N = K = 8192: the GEMM re-reads each row strip N / 256 = 32 times. With the pass,
  those re-reads are int8 (32 x 32 MiB, mostly from L2) and the pass moves 64 MiB + 32 MiB of HBM.
  A prologue fused into the GEMM would sweep the fp16 strip twice per column tile (absmax, then
  the dot): 2 x 32 x 64 MiB, four times the traffic, and round every element 32 times. The GEMM
  is compute-bound (550 int8 GOP, about 280 us at 1980 TOP/s) while the pass's HBM traffic takes
  about 20 us at 4.8 TB/s.
- M <= 16 (the GEMV): against a fused kernel (which reads x once too), the pass adds the x_q round
  trip, 2 M K bytes, to a call of N K / 4 + 2 M K + 2 M N bytes. At the benchmark shapes that is
  under 10 % for every shape with N >= 1536 at every M <= 16 (3.1 % at M = 16, N = 4096), and for
  every shape at M <= 4; it reaches 10.8 % at M = 16 for N = 1024 (K = 4096) and 20-24 % at M = 16
  for the demo model's N = 384, where the two launches cost more than the bytes anyway. x_q is
  written and read back within microseconds, so most of the round trip is served from L2. What
  remains is the price of one more launch (about 1 us, counted by the static model); a fused
  quantizer would instead make every CTA read the whole row for its absmax and quantize it again.

W1.58A16 and binary skip activation quantization: y = (x . T^T) * gamma, or ((x * g) . S^T) * h.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from ..._checks import ACTIVATION_DTYPES
from ...formats import Scheme, TERNARY_SCHEMES
from ..base import KernelConfig, KernelFamily, KernelPath, check_runtime, flatten_rows, on_interpreter, operands
from . import configs as cfgs
from .configs import KINDS, MAX_A8_K, QUANT_MAX_BLOCK, REDUCE_BLOCK_N, TERNARY_A8, SignKind, kind_of
from .kernels import _sign_gemm_kernel, _sign_gemv_kernel, _sign_quant_kernel, _sign_reduce_kernel

KIND_BY_NAME = {k.name: k for k in KINDS}

__all__ = ["FAMILY", "SignFamily", "launch", "sign_linear", "quantize_activations", "linear_quantized"]


def quantize_rows(x2d: torch.Tensor, max_block: int = QUANT_MAX_BLOCK
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the per-token quantizer on x2d [M, K] (unit stride along K): x_q int8 [M, K], scale fp32 [M],
    sum(x_q) int32 [M]. Rows up to `max_block` long are quantized from registers in one read."""
    m, k = x2d.shape
    xq = torch.empty((m, k), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    xsum = torch.empty((m,), dtype=torch.int32, device=x2d.device)
    block = min(triton.next_power_of_2(k), max_block)
    _sign_quant_kernel[(m,)](x2d, xq, scale, xsum, k, x2d.stride(0), xq.stride(0),
                             BLOCK_K=block, ONE_TILE=k <= block, num_warps=8 if block >= 4096 else 4)
    return xq, scale, xsum


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
    xq, scale, _ = quantize_rows(flatten_rows(x), max_block)
    return xq.reshape(x.shape), scale.reshape(x.shape[:-1])


def gemv_split(kind: SignKind, cfg: KernelConfig, k: int) -> int:
    """The split-K a GEMV launch uses: the config's, but never more splits than K steps."""
    return max(1, min(cfg.split_k, triton.cdiv(k, cfg.block_k)))


def _run(kind: SignKind, path: KernelPath, cfg: KernelConfig, x2d: torch.Tensor, xscale: torch.Tensor | None,
         xsum: torch.Tensor | None, qweight: torch.Tensor, kscale: torch.Tensor | None, nscale: torch.Tensor,
         bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out[M, N] = the lanes of qweight applied to x2d (x_q for A8) with the epilogue scales; returns out."""
    m, k = x2d.shape
    n = out.shape[1]
    lanes = qweight.view(kind.lane_dtype)  # [lane rows, padded K]
    nl, lane_stride = lanes.shape
    rpl = kind.rows_per_lane
    block_l = cfg.block_n // rpl
    dummy = nscale
    common = dict(BITS=kind.bits, LANE_BITS=kind.lane_bits, INT8_ACT=kind.int8_act,
                  MASK=kind.masks(x2d.dtype), HAS_KSCALE=kind.has_kscale,
                  NSCALE_PER_N=nscale.numel() != 1, HAS_BIAS=bias is not None, USE_ASM=not on_interpreter(x2d))
    xs = xscale if xscale is not None else dummy
    xsm = xsum if xsum is not None else dummy
    ks = kscale if kscale is not None else dummy
    bs = bias if bias is not None else dummy
    if path is KernelPath.GEMM:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(nl, block_l),)
        even = k % cfg.block_k == 0 and nl % block_l == 0
        _sign_gemm_kernel[grid](x2d, xs, xsm, lanes, ks, nscale, bs, out, m, n, k, nl, x2d.stride(0), lane_stride,
                                out.stride(0), BLOCK_M=cfg.block_m, BLOCK_L=block_l, BLOCK_K=cfg.block_k,
                                GROUP_M=cfg.group_m, EVEN=even, num_warps=cfg.num_warps,
                                num_stages=cfg.num_stages, **common)
        return out
    split = gemv_split(kind, cfg, k)
    even = k % (cfg.block_k * split) == 0 and nl % block_l == 0
    ws = out
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.int32 if kind.int8_act else torch.float32, device=out.device)
    grid = (triton.cdiv(nl, block_l), split, triton.cdiv(m, cfg.block_m))
    _sign_gemv_kernel[grid](x2d, xs, xsm, lanes, ks, nscale, bs, out, ws, m, n, k, nl, x2d.stride(0), lane_stride,
                            out.stride(0), BLOCK_M=cfg.block_m, BLOCK_L=block_l,
                            BLOCK_KS=cfg.block_k // cfg.num_warps, SLICES=cfg.num_warps, SPLIT_K=split, EVEN=even,
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    if split > 1:
        rbm = min(16, triton.next_power_of_2(m))
        _sign_reduce_kernel[(triton.cdiv(n, REDUCE_BLOCK_N), triton.cdiv(m, rbm))](
            ws, xs, xsm, nscale, bs, out, m, n, out.stride(0), SPLIT_K=split, RPL=rpl, INT8_ACT=kind.int8_act,
            NSCALE_PER_N=common["NSCALE_PER_N"], HAS_BIAS=bias is not None, BLOCK_M=rbm, BLOCK_N=REDUCE_BLOCK_N,
            num_warps=4)
    return out


def linear_quantized(xq: torch.Tensor, scale: torch.Tensor, qw, out_dtype: torch.dtype = torch.float32
                     ) -> torch.Tensor:
    """W1.58A8 on activations already quantized with a given per-token scale: y [M, N] = (x_q . T^T) * gamma / scale.

    For tensor parallelism, where the scale is that of the whole row across ranks and each rank
    multiplies its K slice. `xq` int8 [M, K], `scale` fp32 [M], `qw` a ``ternary`` (W1.58A8) weight;
    the twin of lowbit.reference.ternary.linear_quantized. Runs the family's default config.
    """
    from ...formats import ActivationQuant

    if not isinstance(xq, torch.Tensor) or xq.dtype != torch.int8 or xq.dim() != 2 or xq.numel() == 0:
        raise TypeError(f"xq must be a non-empty 2-D int8 tensor, got {getattr(xq, 'dtype', type(xq).__name__)}")
    FAMILY.check_served(qw)
    if qw.scheme is Scheme.BINARY or qw.spec.activation is not ActivationQuant.INT8_PER_TOKEN:
        raise ValueError(f"linear_quantized multiplies W1.58A8 ('ternary') weights, not {qw.scheme.value!r}")
    m, k = xq.shape
    if k != qw.K:
        raise ValueError(f"xq.shape[-1]={k} does not match the weight's K={qw.K}")
    if not isinstance(scale, torch.Tensor) or scale.dtype != torch.float32 or tuple(scale.shape) != (m,):
        raise ValueError(f"scale must be fp32 of shape ({m},), got {getattr(scale, 'dtype', None)} "
                         f"{tuple(getattr(scale, 'shape', ()))}")
    if xq.device != qw.device or scale.device != qw.device:
        raise ValueError(f"xq, scale and the weight must share a device, got {xq.device}, {scale.device}, {qw.device}")
    check_runtime(xq)
    _check_k(TERNARY_A8, k)
    path = FAMILY.choose_path(m)
    cfg = FAMILY.default_config(xq, path, m, qw)
    qweight, _, gamma = _tensors(qw)
    return sign_linear_quantized(xq.contiguous(), scale.contiguous(), qweight, gamma, qw.N, out_dtype, path.value,
                                 cfg.to_list())


@torch.library.custom_op("lowbit::sign_linear_quantized", mutates_args=())
def sign_linear_quantized(xq: torch.Tensor, scale: torch.Tensor, qweight: torch.Tensor, gamma: torch.Tensor, n: int,
                          out_dtype: torch.dtype, path: str, config: list[int]) -> torch.Tensor:
    """y [M, n] = (x_q . T^T) * gamma / scale for W1.58A8 lanes and given int8 activations (linear_quantized)."""
    out = torch.empty((xq.shape[0], n), dtype=out_dtype, device=xq.device)
    xsum = xq.sum(dim=1, dtype=torch.int32)
    return _run(TERNARY_A8, KernelPath(path), KernelConfig.from_list(config), xq, scale, xsum, qweight, None, gamma,
                None, out)


@sign_linear_quantized.register_fake
def _sign_linear_quantized_fake(xq, scale, qweight, gamma, n, out_dtype, path, config):
    return xq.new_empty((xq.shape[0], n), dtype=out_dtype)


def _tensors(qw) -> tuple:
    """(qweight, kscale, nscale): binary's g and h, or ternary's gamma (no per-K scale); layout re-checked."""
    t = operands(qw)
    if qw.scheme is Scheme.BINARY:
        return t["qweight"], t["g"], t["h"]
    return t["qweight"], None, t["gamma"]


def _check_k(kind: SignKind, k: int) -> None:
    if kind.int8_act and k >= MAX_A8_K:
        raise ValueError(f"W1.58A8 kernels take K < {MAX_A8_K} (int32 accumulators stay exact), got K={k}")


def _forward(kind: SignKind, x2d, qweight, kscale, nscale, bias, path: KernelPath, cfg: KernelConfig, out):
    """One call: per-token int8 quantization of x2d first for A8, then the GEMV or GEMM launch."""
    if kind.int8_act:
        xq, scale, xsum = quantize_rows(x2d)
        return _run(kind, path, cfg, xq, scale, xsum, qweight, kscale, nscale, bias, out)
    return _run(kind, path, cfg, x2d, None, None, qweight, kscale, nscale, bias, out)


def launch(x2d: torch.Tensor, qw, bias: Optional[torch.Tensor], path, config: KernelConfig,
           out: torch.Tensor) -> torch.Tensor:
    """Run one explicit config: out[M, N] = x2d[M, K] . W^T (+ bias), every argument checked; returns out."""
    return FAMILY.launch(x2d, qw, bias, path, config, out)


@torch.library.custom_op("lowbit::sign_linear", mutates_args=())
def sign_linear(x: torch.Tensor, qweight: torch.Tensor, kscale: Optional[torch.Tensor], nscale: torch.Tensor,
                bias: Optional[torch.Tensor], n: int, kind: str, path: str, config: list[int]) -> torch.Tensor:
    """y [M, n] for sign codes: kind "a8" (ternary, int8 activations), "a16" (ternary) or "binary"."""
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)
    return _forward(KIND_BY_NAME[kind], x, qweight, kscale, nscale, bias, KernelPath(path),
                    KernelConfig.from_list(config), out)


@sign_linear.register_fake
def _sign_linear_fake(x, qweight, kscale, nscale, bias, n, kind, path, config):
    return x.new_empty((x.shape[0], n))


class SignFamily(KernelFamily):
    """Sign-like codes with scales outside the dot: ternary (t in {-1, 0, 1}, fp32 gamma) and binary (g, h)."""

    name = "sign"
    schemes = frozenset(TERNARY_SCHEMES | {Scheme.BINARY})
    gemv_max_m = 16
    configs = cfgs

    def forward(self, x2d, qw, bias, path, config):
        kind = kind_of(qw)
        _check_k(kind, qw.K)
        return sign_linear(x2d, *_tensors(qw), bias, qw.N, kind.name, path.value, config.to_list())

    def run(self, x2d, qw, bias, path, config, out):
        kind = kind_of(qw)
        _check_k(kind, qw.K)
        return _forward(kind, x2d, *_tensors(qw), bias, path, config, out)

    def aot_cases(self):
        from .aot import aot_cases

        return aot_cases()

    def launch_plans(self, qw, m, path, dtype, config):
        from .aot import launch_plans

        return launch_plans(self, qw, m, path, dtype, config)

    def interpreter_config(self, path, m, qw, dtype):
        """The base interpreter tiles, widened to whole 16-lane tiles and at least one K slice per warp."""
        cfg = super().interpreter_config(path, m, qw, dtype)
        kind = kind_of(qw)
        block_n = max(cfg.block_n, cfgs.MIN_LANES * kind.rows_per_lane)
        block_k = max(cfg.block_k, cfg.num_warps * kind.min_block_k(dtype) if path is KernelPath.GEMV
                      else kind.min_block_k(dtype))
        return KernelConfig(**{**cfg.to_dict(), "block_n": block_n, "block_k": block_k})


FAMILY = SignFamily()
