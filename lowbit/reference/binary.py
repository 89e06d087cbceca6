"""OneBit 1-bit weights: W ~ S * outer(h, g), S = sign(W) in {-1, +1}.

g [K] and h [N] come from the rank-1 SVID of |W| (power iteration, deterministic):
|W| ~ sigma * u v^T, h = u * sqrt(sigma), g = v * sqrt(sigma), stored in fp16.
Signs pack 1 bit each (bit 1 = +1, bit 0 = -1; sign(0) = +1). y = ((x * g) . S^T) * h.
"""
from __future__ import annotations

import torch

from .packing import pack_codes, unpack_codes

POWER_ITERS = 100


def rank1(a: torch.Tensor, iters: int = POWER_ITERS) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Leading singular triple (u, v, sigma) of a non-negative matrix by power iteration."""
    a = a.to(torch.float64)
    v = torch.ones(a.shape[1], dtype=torch.float64, device=a.device)
    v = v / v.norm()
    for _ in range(iters):
        u = a @ v
        un = u.norm()
        if un == 0:
            break
        u = u / un
        v_new = a.t() @ u
        v_new = v_new / v_new.norm()
        if torch.allclose(v_new, v, rtol=0, atol=1e-12):
            v = v_new
            break
        v = v_new
    u = a @ v
    sigma = float(u.norm())
    u = u / sigma if sigma > 0 else torch.zeros_like(u)
    return u, v, sigma


def quantize(w: torch.Tensor, spec) -> dict[str, torch.Tensor]:
    """Sign bits [Kw, N] plus fp16 g [K] and h [N] from the SVID of |W|."""
    wf = w.to(torch.float64)
    u, v, sigma = rank1(wf.abs())
    root = sigma ** 0.5
    h, g = (u * root).abs(), (v * root).abs()
    if float(h.max()) > 65504.0 or float(g.max()) > 65504.0:
        raise ValueError("weights are too large for fp16 magnitude vectors")
    return {"qweight": pack_codes((wf >= 0).to(torch.int64), 1),
            "g": g.to(torch.float16), "h": h.to(torch.float16)}


def signs(qw) -> torch.Tensor:
    """S in {-1, +1} as int64 [N, K]."""
    return unpack_codes(qw["qweight"], 1, qw.K) * 2 - 1


def dequantize(qw, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    h = qw["h"].to(torch.float64).unsqueeze(1)
    g = qw["g"].to(torch.float64).unsqueeze(0)
    return (signs(qw).to(torch.float64) * h * g).to(dtype)
