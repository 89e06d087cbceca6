"""bitsandbytes NF4 -> lowbit nf4.

``packed`` is uint8 holding two codes per byte over the *flattened row-major* weight, the
even-indexed element in the high nibble (bitsandbytes packs ``q[0::2] << 4 | q[1::2]``), and
``absmax`` has one value per ``blocksize`` consecutive flattened elements. lowbit stores one
absmax per row-group, so the block structure is mapped to the largest group (per channel, 128,
64 or 32) that never crosses a bnb block; values are repeated, never rounded, so the import is
exact.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..formats import NF4Spec, QuantizedWeight, Scheme
from ..reference.packing import pack_codes
from .common import check_shape as _shape
from .common import float_tensor as _float_tensor
from .common import tensor as _tensor


def _nf4_group(k: int, blocksize: int) -> int:
    """The widest lowbit group (per channel, 128, 64, 32) that no bnb block boundary cuts."""
    if blocksize % k == 0:
        return -1  # each row lies inside one bnb block
    for g in (128, 64, 32):
        if k % g == 0 and blocksize % g == 0:
            return g
    raise ValueError(f"bitsandbytes blocksize={blocksize} with in_features K={k} gives blocks that do not align "
                     "with rows in groups of 32, 64, 128 or whole rows; lowbit cannot store it exactly")


def from_bnb_nf4(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: Sequence[int]) -> QuantizedWeight:
    """An nf4 QuantizedWeight from bitsandbytes' packed NF4 bytes and float absmax (one per block).

    For bitsandbytes' compressed statistics (nested absmax), dequantize absmax first and pass the
    float values. A non-uint8 ``quant_storage`` tensor is reinterpreted as its bytes.
    """
    n, k = _shape(shape)
    packed = _tensor("packed", packed)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise TypeError(f"blocksize must be an int, got {type(blocksize).__name__}")
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if packed.dtype == torch.bool or packed.dtype.is_complex:
        raise TypeError(f"packed must hold bytes (uint8, or bitsandbytes' quant_storage dtype), got {packed.dtype}")
    if packed.dtype != torch.uint8:
        packed = packed.contiguous().view(torch.uint8)
    total = n * k
    if packed.numel() != (total + 1) // 2:
        raise ValueError(f"packed has {packed.numel()} bytes, expected {(total + 1) // 2} for shape {(n, k)}")
    blocks = -(-total // blocksize)
    absmax = _float_tensor("absmax", _tensor("absmax", absmax).reshape(-1), (blocks,))
    if absmax.device != packed.device:
        raise ValueError(f"absmax is on {absmax.device} but packed is on {packed.device}")
    flat = packed.reshape(-1).to(torch.int64)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:total].reshape(n, k)
    group = _nf4_group(k, blocksize)
    g = k if group == -1 else group
    starts = torch.arange(n, device=packed.device)[None, :] * k + torch.arange(k // g, device=packed.device)[:, None] * g
    absmax_gn = absmax[starts // blocksize].contiguous()  # [G, N]
    return QuantizedWeight(Scheme.NF4, NF4Spec(group_size=group), (n, k),
                           {"qweight": pack_codes(codes, 4), "absmax": absmax_gn})


__all__ = ["from_bnb_nf4"]
