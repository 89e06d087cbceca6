"""Bit packing of integer codes into int32 words, shared by every scheme.

Codes of an [N, K] weight are packed along K into int32 words stored transposed as ``[Kw, N]``
(N contiguous), so a tile of columns is one coalesced load per word row. Packing works in
blocks along K (:func:`lowbit.formats.code_block`); codes past K are zero.

- 1, 2, 4 and 8 bits: one word per block of ``32 // bits`` codes; word ``w`` of column ``n``
  holds code ``k = w * vpw + i`` at bit ``i * bits``.
- 3 bits: 32 codes in 3 words, exactly 3.0 bits per code. Code ``r = k - 32b`` of block ``b``
  belongs to pair ``J = r // 2`` and half ``h = r % 2``. For J < 15, word ``3b + J // 5`` holds
  it as a 3-bit field at bit ``3 * (J % 5) + 16 * h``: five fields in each half-word, the two
  codes of a pair side by side in the two halves. Pair 15 (codes 30 and 31) is spread over the
  free top bit of each half: bit ``j`` of code 30 is bit 15 of word ``3b + j``, bit ``j`` of
  code 31 is bit 31. A block never straddles a group (groups are multiples of 32 codes) and
  every bit carries a code. The kernels decode a pair per 32-bit logic op (each half-word field
  sits where an fp16 magic number absorbs it) and a pair is two adjacent inputs k, k + 1.

Format version 1 files packed 3-bit codes 10 per word (bits 30-31 unused); :func:`unpack_codes_v1`
reads that layout so old files can be converted on load.
"""
from __future__ import annotations

import torch

from ..formats import code_block, packed_words


def _check_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    if q.dim() != 2:
        raise ValueError(f"codes must be 2-D [N, K], got shape {tuple(q.shape)}")
    if q.dtype.is_floating_point or q.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {q.dtype}")
    code_block(bits)  # rejects unknown widths
    q64 = q.to(torch.int64)
    if q64.numel() and (int(q64.min()) < 0 or int(q64.max()) >= 2 ** bits):
        raise ValueError(f"codes out of range [0, {2 ** bits}) for {bits}-bit packing")
    return q64


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) -> int32 with the same bits, transposed to [Kw, N]."""
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)
    return words.to(torch.int32).t().contiguous()


def _three_bit_fields():
    """(word j, bit position) of each of the 30 field codes r = 0..29 of a 3-bit block."""
    r = torch.arange(30)
    pair = r // 2
    return pair // 5, 3 * (pair % 5) + 16 * (r % 2)


def pack_codes(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes ``q`` [N, K] in [0, 2**bits) into int32 words [Kw, N]."""
    q64 = _check_codes(q, bits)
    n, k = q.shape
    codes, words = code_block(bits)
    blocks = -(-k // codes)
    padded = torch.zeros(n, blocks * codes, dtype=torch.int64, device=q.device)
    padded[:, :k] = q64
    padded = padded.view(n, blocks, codes)
    if bits != 3:
        shifts = torch.arange(codes, device=q.device, dtype=torch.int64) * bits
        return _to_int32((padded << shifts).sum(dim=-1))  # < 2**32, fits int64
    out = torch.zeros(n, blocks, 3, dtype=torch.int64, device=q.device)
    word, pos = (t.to(q.device) for t in _three_bit_fields())
    fields = padded[..., :30] << pos  # [n, blocks, 30]
    for j in range(3):
        out[..., j] = fields[..., word == j].sum(dim=-1)
        out[..., j] += ((padded[..., 30] >> j) & 1) << 15
        out[..., j] += ((padded[..., 31] >> j) & 1) << 31
    return _to_int32(out.view(n, blocks * 3))


def unpack_codes(packed: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 words [Kw, N] -> int64 codes [N, K]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"packed codes must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    codes, words = code_block(bits)
    kw, n = packed.shape
    if kw != packed_words(k, bits):
        raise ValueError(f"{kw} packed words cannot hold K={k} {bits}-bit codes")
    w = packed.t().to(torch.int64) & 0xFFFFFFFF  # [n, kw]
    if bits != 3:
        shifts = torch.arange(codes, device=packed.device, dtype=torch.int64) * bits
        return ((w.unsqueeze(-1) >> shifts) & (2 ** bits - 1)).reshape(n, kw * codes)[:, :k]
    w = w.view(n, kw // 3, 3)
    word, pos = (t.to(packed.device) for t in _three_bit_fields())
    out = torch.empty(n, kw // 3, 32, dtype=torch.int64, device=packed.device)
    out[..., :30] = (w[..., word] >> pos) & 7
    j = torch.arange(3, device=packed.device)
    out[..., 30] = (((w >> 15) & 1) << j).sum(dim=-1)
    out[..., 31] = (((w >> 31) & 1) << j).sum(dim=-1)
    return out.reshape(n, -1)[:, :k]


def unpack_codes_v1(packed: torch.Tensor, k: int) -> torch.Tensor:
    """3-bit codes [N, K] from the format-version-1 layout: 10 codes per word at bit 3i, [ceil(K/10), N]."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"packed codes must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    kw, n = packed.shape
    if kw != -(-k // 10):
        raise ValueError(f"{kw} version-1 3-bit words cannot hold K={k} codes (expected {-(-k // 10)})")
    w = packed.t().to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(10, device=packed.device, dtype=torch.int64) * 3
    return ((w.unsqueeze(-1) >> shifts) & 7).reshape(n, kw * 10)[:, :k]


def convert_v1_codes(tensors: dict[str, torch.Tensor], bits: int, k: int) -> dict[str, torch.Tensor]:
    """A layer's tensors from a format-version-1 file with its ``qweight`` in today's packing: only 3-bit
    codes changed layout (10 per word then); every other width and tensor is returned unchanged."""
    if bits != 3:
        return tensors
    return {**tensors, "qweight": pack_codes(unpack_codes_v1(tensors["qweight"], k), 3)}


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
