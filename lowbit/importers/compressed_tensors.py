"""compressed-tensors ``pack-quantized`` (as written by llm-compressor) -> lowbit int<b>.

Layout of one layer with N outputs, K inputs and b-bit integer weights:
- ``weight_packed`` int32 [N, ceil(K*b/32)]: per output row, the codes u = q + 2^(b-1) (q the
  signed quantized value in [-2^(b-1), 2^(b-1))) form one little-endian bit stream along K.
  For b in {1, 2, 4, 8} every release packs 32/b codes per word, code j at bit j*b. For other b
  the releases differ: older ones put floor(32/b) codes per word, current ones (checked with
  0.20.1) pack densely, so codes straddle words; the two give different widths for K >= 32,
  and the width decides (a width both could have written is refused).
- ``weight_scale`` [N, G] (group), [N, 1] (channel) or [1] / [1, 1] (tensor).
- ``weight_zero_point`` (asymmetric only): int32 [ceil(N*b/32), G] packed along N the same way
  (offset 2^(b-1)), or, in files from older releases, int8 [N, G] unpacked.
- ``weight_shape`` [2]: (N, K). ``weight_g_idx`` [K] (activation ordering): refused unless
  trivial.

W = (q - zp) * scale = (u - (zp + 2^(b-1))) * scale, so lowbit keeps the codes u and stores
z = zp + 2^(b-1) (symmetric: z = 2^(b-1), lowbit's symmetric zero). compressed-tensors
dequantizes as (q - zp) in the scale's dtype (exact: small integers) times the scale, one
rounding, so lowbit's exact product rounded to the scale's dtype is the same value.
"""
from __future__ import annotations

import enum

import torch

from ..formats import QuantizedWeight
from .common import (Refused, check_int, check_trivial_g_idx, float_tensor, same_device, stream_words, tensor,
                     uniform_weight, unpack_stream)


class CTStrategy(str, enum.Enum):
    """The weight quantization strategies lowbit imports (``QuantizationArgs.strategy``)."""

    GROUP = "group"
    CHANNEL = "channel"
    TENSOR = "tensor"

    @classmethod
    def parse(cls, value: "CTStrategy | str") -> "CTStrategy":
        if isinstance(value, CTStrategy):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise Refused(f"compressed-tensors weight strategy {value!r} is not imported by lowbit "
                          f"(supported: {[s.value for s in cls]})") from None


class _Packing(enum.Enum):
    DENSE = "dense"  # one bit stream per line (every release for 1/2/4/8 bits, current ones for all)
    LEGACY = "legacy"  # floor(32 / bits) codes per word (older releases, bits not dividing 32)


def _packing(words: torch.Tensor, bits: int, count: int, dim: int, what: str) -> _Packing:
    """Which packing wrote `words` (count codes per line along dim), told apart by the number of words."""
    if bits in (1, 2, 4, 8):
        return _Packing.DENSE  # both packings are the same for these widths
    have, dense, legacy = words.shape[dim], stream_words(count, bits), -(-count // (32 // bits))
    if have == dense == legacy:
        raise Refused(f"{what}: {have} words fit both compressed-tensors packings of {count} {bits}-bit codes; "
                      "cannot tell which one wrote it")
    if have == dense:
        return _Packing.DENSE
    if have == legacy:
        return _Packing.LEGACY
    raise ValueError(f"{what} has {have} words along dim {dim}, expected {dense} for {count} {bits}-bit codes "
                     f"(or {legacy} in the older packing)")


def _unpack(words: torch.Tensor, bits: int, count: int, dim: int, packing: _Packing, what: str) -> torch.Tensor:
    """Codes along `dim` in the given packing (int64)."""
    if packing is _Packing.DENSE:
        if words.shape[dim] != stream_words(count, bits):
            raise ValueError(f"{what} has {words.shape[dim]} words along dim {dim}, expected "
                             f"{stream_words(count, bits)} for {count} {bits}-bit codes")
        return unpack_stream(words, bits, count, dim)
    per_word = 32 // bits
    if words.shape[dim] != -(-count // per_word):
        raise ValueError(f"{what} has {words.shape[dim]} words along dim {dim}, expected {-(-count // per_word)} "
                         f"for {count} {bits}-bit codes in the older packing")
    w = words.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF
    i = torch.arange(count, device=words.device)
    view = (-1,) + (1,) * (w.dim() - 1)
    codes = (w[i // per_word] >> ((i % per_word) * bits).view(view)) & (2 ** bits - 1)
    return codes.movedim(0, dim)


def from_compressed_tensors(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                            weight_zero_point: torch.Tensor | None = None, weight_shape=None,
                            weight_g_idx: torch.Tensor | None = None, *, num_bits: int,
                            strategy: CTStrategy | str, group_size: int | None = None) -> QuantizedWeight:
    """A lowbit QuantizedWeight that dequantizes exactly like compressed-tensors' pack-quantized layer.

    `weight_shape` is the stored [2] tensor or an (N, K) pair; without it K is taken from the
    packed width (exact for b in {1, 2, 4, 8} when K*b is a multiple of 32). Symmetric layers
    have no `weight_zero_point`. Raises :class:`Refused` (a ValueError) for what lowbit cannot
    store exactly (other strategies, bits, group sizes, activation ordering).
    """
    bits = check_int("num_bits", num_bits, range(1, 9))
    strategy = CTStrategy.parse(strategy)
    packed = tensor("weight_packed", weight_packed)
    scale = tensor("weight_scale", weight_scale)
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise TypeError(f"weight_packed must be a 2-D int32 tensor, got {packed.dtype} {tuple(packed.shape)}")
    n = packed.shape[0]
    if weight_shape is None:
        k = packed.shape[1] * 32 // bits
    else:
        ws = weight_shape.tolist() if isinstance(weight_shape, torch.Tensor) else list(weight_shape)
        if len(ws) != 2 or int(ws[0]) != n:
            raise ValueError(f"weight_shape {ws} does not match weight_packed with {n} rows")
        k = int(ws[1])
    if strategy is CTStrategy.GROUP:
        gs = check_int("group_size", group_size)
        if gs <= 0 or k % gs:
            raise Refused(f"group_size={group_size} does not divide in_features K={k}")
    else:
        gs = k
    groups = k // gs
    if strategy is CTStrategy.TENSOR:
        scale = float_tensor("weight_scale", scale.reshape(-1), (1,)).reshape(1, 1).expand(n, 1)
    else:
        scale = float_tensor("weight_scale", scale, (n, groups))
    same_device(weight_packed=packed, weight_scale=scale)
    check_trivial_g_idx(weight_g_idx, k, gs, "weight_g_idx")

    packing = _packing(packed, bits, k, 1, "weight_packed")
    codes = _unpack(packed, bits, k, 1, packing, "weight_packed")  # [N, K], u = q + 2^(b-1)
    offset = 2 ** (bits - 1)
    if weight_zero_point is None:
        zeros = torch.full((groups, n), offset, dtype=torch.int64, device=packed.device)
    else:
        zp = tensor("weight_zero_point", weight_zero_point)
        if strategy is CTStrategy.TENSOR:
            raise Refused("an asymmetric per-tensor zero point is not imported (no pack-quantized writer emits it)")
        if zp.dtype == torch.int32:
            zeros = _unpack(zp, bits, n, 0, packing, "weight_zero_point").t()  # [G, N], already offset
        elif zp.dtype == torch.int8 and tuple(zp.shape) == (n, groups):
            zeros = zp.to(torch.int64).t() + offset
        else:
            raise TypeError(f"weight_zero_point must be packed int32 or int8 [{n}, {groups}], got {zp.dtype} "
                            f"{tuple(zp.shape)}")
        if zeros.shape != (groups, n):
            raise ValueError(f"weight_zero_point unpacks to {tuple(zeros.shape)}, expected {(groups, n)}")
    return uniform_weight(codes.contiguous(), scale.t().contiguous(), zeros.contiguous(), bits, gs)


__all__ = ["from_compressed_tensors", "CTStrategy"]
