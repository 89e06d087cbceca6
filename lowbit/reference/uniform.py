"""Group-wise round-to-nearest quantizer for int1..int8: W = (q - z) * s.

Asymmetric: per group, the range [min(w, 0), max(w, 0)] maps onto [0, 2^b - 1] with an
integer zero z. Symmetric: z is the fixed grid midpoint (2^(b-1); 0.5 for 1 bit) and
s = absmax / (2^(b-1) - 1) (absmax for 1 bit), so every weight is within s/2 of the grid.
Scales and zeros are stored in fp16, [G, N]; codes use the shared packing.
"""
from __future__ import annotations

import torch

from ..formats import UniformSpec
from .packing import convert_v1_codes, pack_codes, unpack_codes

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -14  # smallest normal fp16
FP32_TINY = 2.0 ** -126  # smallest normal fp32: the scale of an all-zero group in fp32 storage


def _store_scale(s: torch.Tensor) -> torch.Tensor:
    """The stored scales: fp16 rounded upwards (so the grid still covers each group's range) when every
    nonzero group's scale is a normal fp16 number, else fp32 for the whole weight.

    fp16 cannot hold scales below 2^-14 without losing precision (subnormals) or clamping them up,
    which would lose small weights (std 1e-5 weights came back with a relative error of 0.99), so
    such weights keep exact fp32 scales and cost 16 more bits per group. All-zero groups have s = 0;
    they get the smallest normal scale of the storage type (their codes are then the zero point).
    """
    if bool((s > FP16_MAX / 2).any()):
        raise ValueError("weights are too large for fp16 scales (|w| beyond ~3e4 per step)")
    live = s > 0
    if bool((s[live] < FP16_TINY).any()):
        return s.clamp(min=FP32_TINY).to(torch.float32)
    s = s.clamp(min=FP16_TINY)
    s16 = s.to(torch.float16)
    low = s16.float() < s
    s16 = torch.where(low, torch.nextafter(s16, torch.full_like(s16, float("inf"))), s16)
    return s16


def quantize(w: torch.Tensor, spec: UniformSpec) -> dict[str, torch.Tensor]:
    """Quantize a float [N, K] weight; returns qweight [Kw, N], scales [G, N] (and zeros [G, N])."""
    n, k = w.shape
    g = spec.effective_group(k)
    wg = w.float().reshape(n, k // g, g)
    qmax = 2 ** spec.bits - 1
    if spec.symmetric:
        amax = wg.abs().amax(dim=-1)
        denom = 1.0 if spec.bits == 1 else float(2 ** (spec.bits - 1) - 1)
        s_st = _store_scale(amax / denom)
        z = torch.full_like(amax, spec.symmetric_zero)
    else:
        lo = wg.amin(dim=-1).clamp(max=0.0)
        hi = wg.amax(dim=-1).clamp(min=0.0)
        s_st = _store_scale((hi - lo) / qmax)
        z = torch.round(-lo / s_st.float()).clamp(0, qmax)
    s = s_st.float()
    q = torch.round(wg / s.unsqueeze(-1) + z.unsqueeze(-1)).clamp(0, qmax)
    if spec.symmetric and spec.bits == 1:
        q = (wg >= 0).float()  # 1-bit symmetric: sign, codes 0 -> -s/2, 1 -> +s/2
    out = {"qweight": pack_codes(q.reshape(n, k).to(torch.int64), spec.bits),
           "scales": s_st.t().contiguous()}
    if not spec.symmetric:
        out["zeros"] = z.to(torch.float16).t().contiguous()
    return out


def dequantize(qw, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, K] weight in `dtype` (computed in fp32 or wider)."""
    spec: UniformSpec = qw.spec
    n, k = qw.shape
    g = spec.effective_group(k)
    q = unpack_codes(qw["qweight"], spec.bits, k).to(torch.float64).reshape(n, k // g, g)
    s = qw["scales"].t().to(torch.float64).unsqueeze(-1)
    z = (torch.tensor(spec.symmetric_zero, dtype=torch.float64) if spec.symmetric
         else qw["zeros"].t().to(torch.float64).unsqueeze(-1))
    return ((q - z) * s).reshape(n, k).to(dtype)


def convert_legacy(tensors: dict[str, torch.Tensor], spec: UniformSpec, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Tensors of a layer saved by format version 1 -> this version's layout (3-bit codes are re-packed)."""
    return convert_v1_codes(tensors, spec.bits, shape[1])
