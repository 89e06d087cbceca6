"""NF4 (QLoRA): W = NF4[q] * absmax, one absmax per block of `group_size` inputs of a row.

The 16 values are bitsandbytes' NormalFloat4 table. absmax is stored in fp16 [G, N]; codes
use the shared 4-bit packing.
"""
from __future__ import annotations

import torch

from ..formats import NF4Spec
from .packing import pack_codes, unpack_codes

NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_table(device=None) -> torch.Tensor:
    """The NF4 code book as fp32 [16]."""
    return torch.tensor(NF4_VALUES, dtype=torch.float32, device=device)


def quantize(w: torch.Tensor, spec: NF4Spec) -> dict[str, torch.Tensor]:
    """Quantize a float [N, K] weight to NF4 codes [Kw, N] plus fp16 absmax [G, N]."""
    n, k = w.shape
    g = spec.effective_group(k)
    wg = w.float().reshape(n, k // g, g)
    amax = wg.abs().amax(dim=-1)
    if bool((amax > 65504.0).any()):
        raise ValueError("weights are too large for fp16 absmax values (|w| > 65504 in a block)")
    a16 = amax.to(torch.float16)
    a16 = torch.where(a16 == 0, torch.ones_like(a16), a16)
    normed = wg / a16.float().unsqueeze(-1)
    table = nf4_table(w.device)
    mids = (table[1:] + table[:-1]) / 2
    q = torch.bucketize(normed.clamp(-1, 1), mids)
    return {"qweight": pack_codes(q.reshape(n, k), 4), "absmax": a16.t().contiguous()}


def dequantize(qw, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n, k = qw.shape
    g = qw.spec.effective_group(k)
    q = unpack_codes(qw["qweight"], 4, k)
    vals = nf4_table(q.device).to(torch.float64)[q].reshape(n, k // g, g)
    return (vals * qw["absmax"].t().to(torch.float64).unsqueeze(-1)).reshape(n, k).to(dtype)
