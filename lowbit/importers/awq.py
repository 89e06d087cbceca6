"""AutoAWQ GEMM layout (``version: gemm``) -> lowbit int4.

Layout of one layer with N outputs, K inputs and G = K / group_size groups (4-bit only):
- ``qweight`` int32 [K, N/8]: packed along the *outputs*. Word j of input row k holds the codes
  of outputs 8j..8j+7 in the interleaved order ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``: the
  nibble at bits 4i..4i+3 is output 8j + AWQ_ORDER[i].
- ``qzeros`` int32 [G, N/8]: the zero points, packed and interleaved the same way.
- ``scales`` [G, N] (fp16).

W[n, k] = (q[k, n] - z[k // group_size, n]) * scales[k // group_size, n]; AWQ stores the zero
itself (no offset). AutoAWQ's own dequantizer computes (q - z) * s in fp16; the exact integer
difference times an fp16 scale rounds once, so lowbit's exact product rounded to fp16 is the
same value bit for bit.
"""
from __future__ import annotations

import torch

from ..formats import QuantizedWeight
from .common import Refused, check_int, float_tensor, int_tensor, same_device, tensor, uniform_weight

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def unpack_awq(words: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] AWQ-packed words -> int64 codes [R, 8*C] in natural output order."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(8, device=words.device) * 4
    nibbles = (w.unsqueeze(-1) >> shifts) & 0xF  # [R, C, 8]: nibble i
    order = torch.tensor(AWQ_ORDER, device=words.device)
    out = torch.empty_like(nibbles)
    out[..., order] = nibbles  # nibble i belongs to output AWQ_ORDER[i] of the word's 8
    return out.reshape(words.shape[0], -1)


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *, group_size: int,
             bits: int = 4) -> QuantizedWeight:
    """An int4 QuantizedWeight that dequantizes exactly like an AutoAWQ GEMM layer.

    Raises :class:`Refused` (a ValueError) for other bit widths and group sizes lowbit cannot
    map (32/64/128 multiples or whole rows).
    """
    check_int("bits", bits, (4,))
    check_int("group_size", group_size)
    qweight, qzeros, scales = tensor("qweight", qweight), tensor("qzeros", qzeros), tensor("scales", scales)
    if qweight.dim() != 2:
        raise ValueError(f"qweight must be 2-D [K, N/8], got shape {tuple(qweight.shape)}")
    k, n = qweight.shape[0], qweight.shape[1] * 8
    gs = k if group_size == -1 else group_size
    if gs <= 0 or k % gs:
        raise Refused(f"AWQ group_size={group_size} does not divide in_features K={k}")
    groups = k // gs
    int_tensor("qweight", qweight, (k, n // 8))
    int_tensor("qzeros", qzeros, (groups, n // 8))
    scales = float_tensor("scales", scales, (groups, n))
    same_device(qweight=qweight, qzeros=qzeros, scales=scales)
    codes = unpack_awq(qweight).t()  # [N, K]
    zeros = unpack_awq(qzeros)  # [G, N]
    return uniform_weight(codes.contiguous(), scales, zeros, 4, gs)


__all__ = ["from_awq", "unpack_awq", "AWQ_ORDER"]
