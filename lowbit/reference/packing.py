"""Bit packing of integer codes into int32 words, shared by every scheme.

Layout (chosen for the kernels): codes of an [N, K] weight are packed along K into
int32 words and stored transposed as ``[Kw, N]`` (N contiguous), so a tile of columns
is one coalesced load per word row. Word ``w`` of column ``n`` holds codes
``k = w*vpw + i`` for ``i < vpw`` at bit offset ``i*bits``. ``vpw`` is ``32 // bits``,
except 3-bit codes, which pack 10 per word (bits 30-31 unused) so that each code
decodes with one shift and one mask from a single load. Codes past K are zero.
"""
from __future__ import annotations

import torch

from ..formats import packed_words, values_per_word


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``q`` [N, K] in [0, 2**bits) into int32 words [Kw, N]."""
    if q.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(q.shape)}")
    if q.dtype.is_floating_point or q.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {q.dtype}")
    n, k = q.shape
    vpw = values_per_word(bits)
    kw = packed_words(k, bits)
    q64 = q.to(torch.int64)
    if q64.numel() and (int(q64.min()) < 0 or int(q64.max()) >= 2 ** bits):
        raise ValueError(f"codes out of range [0, {2 ** bits}) for {bits}-bit packing")
    padded = torch.zeros(n, kw * vpw, dtype=torch.int64, device=q.device)
    padded[:, :k] = q64
    shifts = torch.arange(vpw, device=q.device, dtype=torch.int64) * bits
    words = (padded.view(n, kw, vpw) << shifts).sum(dim=-1)  # < 2**32, fits int64
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)
    return words.to(torch.int32).t().contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 words [Kw, N] -> int64 codes [N, K]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"packed codes must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    vpw = values_per_word(bits)
    kw, n = packed.shape
    if kw != packed_words(k, bits):
        raise ValueError(f"{kw} packed words cannot hold K={k} {bits}-bit codes")
    words = packed.t().to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(vpw, device=packed.device, dtype=torch.int64) * bits
    codes = (words.unsqueeze(-1) >> shifts) & (2 ** bits - 1)
    return codes.reshape(n, kw * vpw)[:, :k]
