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


def pack_lanes(fields: torch.Tensor, layout, fill=0) -> torch.Tensor:
    """Pack field codes [N, K] in [0, 2**field_bits) into lane words (formats.LaneLayout): int32 [lanes(N), words(K)].

    Row n goes to field ``n % rows_per_lane`` of lane row ``n // rows_per_lane``. Rows past N and
    columns past K get `fill`: one code for every field, or a sequence with one code per field
    (what a zero weight is in each field).
    """
    if fields.dim() != 2:
        raise ValueError(f"fields must be 2-D [N, K], got shape {tuple(fields.shape)}")
    n, k = fields.shape
    f64 = fields.to(torch.int64)
    if f64.numel() and (int(f64.min()) < 0 or int(f64.max()) >= 2 ** layout.field_bits):
        raise ValueError(f"field codes out of range [0, {2 ** layout.field_bits})")
    rpl = layout.rows_per_lane
    nl, kp = layout.lanes(n), layout.padded_k(k)
    fill = torch.as_tensor(fill, dtype=torch.int64, device=fields.device).reshape(-1)
    if fill.numel() not in (1, rpl):
        raise ValueError(f"fill must be one code or {rpl} codes (one per field), got {fill.numel()}")
    padded = fill.repeat(nl * rpl // fill.numel()).view(nl * rpl, 1).expand(nl * rpl, kp).clone()
    padded[:n, :k] = f64
    shifts = (torch.arange(rpl, device=fields.device, dtype=torch.int64) * layout.field_bits).view(1, rpl, 1)
    lanes = (padded.view(nl, rpl, kp) << shifts).sum(dim=1)  # [nl, kp], < 2**lane_bits
    if layout.lane_bits == 8:
        return lanes.to(torch.uint8).view(torch.int32).contiguous()
    lanes = torch.where(lanes >= 2 ** 15, lanes - 2 ** 16, lanes)
    return lanes.to(torch.int16).view(torch.int32).contiguous()


def unpack_lanes(packed: torch.Tensor, layout, n: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_lanes`: int32 [lanes(N), words(K)] -> int64 field codes [N, K]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"packed lanes must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    if tuple(packed.shape) != (layout.lanes(n), layout.words(k)):
        raise ValueError(f"packed lanes of shape {tuple(packed.shape)} cannot hold a [{n}, {k}] weight "
                         f"(expected {(layout.lanes(n), layout.words(k))})")
    p = packed.contiguous()
    lanes = p.view(torch.uint8) if layout.lane_bits == 8 else p.view(torch.int16)
    lanes = lanes.to(torch.int64) & (2 ** layout.lane_bits - 1)  # [nl, kp]
    rpl = layout.rows_per_lane
    shifts = (torch.arange(rpl, device=packed.device, dtype=torch.int64) * layout.field_bits).view(1, rpl, 1)
    fields = (lanes.unsqueeze(1) >> shifts) & (2 ** layout.field_bits - 1)  # [nl, rpl, kp]
    return fields.reshape(-1, lanes.shape[1])[:n, :k]
