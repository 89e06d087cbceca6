"""BitNet b1.58 ternary weights and per-token int8 activations.

Weights: gamma = mean|W| (per tensor, or per output row), T = clip(round(W / gamma), -1, 1),
stored as 2-bit codes t + 1 in the shared packing with gamma in fp32.
Activations (W1.58A8): per token, scale = 127 / max(absmax(x), 1e-5) in fp32,
x_q = clip(round_half_even(x * scale), -128, 127); y = (x_q . T^T) * gamma / scale.
"""
from __future__ import annotations

import torch

from ..formats import TernarySpec
from .packing import pack_codes, unpack_codes

EPS = 1e-5


def quantize(w: torch.Tensor, spec: TernarySpec) -> dict[str, torch.Tensor]:
    """Absmean ternary quantizer; returns 2-bit codes [Kw, N] and fp32 gamma ([1] or [N])."""
    wf = w.float()
    gamma = wf.abs().mean(dim=1) if spec.per_channel else wf.abs().mean().reshape(1)
    gamma = gamma.clamp(min=EPS)
    denom = gamma.unsqueeze(1) if spec.per_channel else gamma
    t = torch.round(wf / denom).clamp(-1, 1)
    return {"qweight": pack_codes((t + 1).to(torch.int64), 2), "gamma": gamma.float().contiguous()}


def ternary_values(qw) -> torch.Tensor:
    """T in {-1, 0, 1} as int64 [N, K]; raises if a code is 3 (not a ternary weight)."""
    codes = unpack_codes(qw["qweight"], 2, qw.K)
    if bool((codes == 3).any()):
        raise ValueError("qweight holds code 3, which is not a ternary value (codes must be t + 1 in {0, 1, 2})")
    return codes - 1


def dequantize(qw, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = qw["gamma"].to(torch.float64)
    g = g.unsqueeze(1) if qw.spec.per_channel else g
    return (ternary_values(qw).to(torch.float64) * g).to(dtype)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization: returns (x_q int8 [..., K], scale fp32 [...])."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1).clamp(min=EPS)
    scale = torch.full_like(amax, 127.0) / amax
    xq = torch.round(xf * scale.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    return xq, scale


def linear_a8(x: torch.Tensor, qw, bias=None, out_dtype=None) -> torch.Tensor:
    """W1.58A8 oracle: exact integer dot in int64, rescale and bias in float64."""
    xq, scale = quantize_activations(x)
    t = ternary_values(qw)
    acc = xq.to(torch.int64) @ t.t()
    g = qw["gamma"].to(torch.float64)
    y = acc.to(torch.float64) * g / scale.to(torch.float64).unsqueeze(-1)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype or x.dtype)
