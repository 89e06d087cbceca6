"""GPTQ (AutoGPTQ / GPTQModel) -> lowbit int2/int3/int4/int8.

Layout of one layer with N outputs, K inputs, b bits and G = ceil(K / group_size) groups:
- ``qweight`` int32 [K*b/32, N]: per output column n, the codes q[n, 0..K) form one little-endian
  bit stream along K (code k at stream bit k*b). For b in {2, 4, 8} that is 32/b codes per word;
  3-bit packs 32 codes into 3 words and codes 10 and 21 straddle words.
- ``qzeros`` int32 [G, N*b/32]: the zero points, the same bit stream along N for each group.
- ``scales`` [G, N] (fp16): one scale per group and output.
- ``g_idx`` int32 [K] (optional): the group of each input.

W[n, k] = scales[g, n] * (q[n, k] - z[g, n]) with g = g_idx[k]. The stored zero field is the
zero itself in GPTQModel's v2 format (``checkpoint_format: gptq_v2``); in the original format
(``gptq``, AutoGPTQ, every GPTQ checkpoint on the Hub) the packer stored zero - 1, and every
dequantizer adds the 1 back: z = field + 1. A field of 2^b - 1 in that format means the zero
was 0, which the packer writes as -1 into a whole word; kernels disagree on it (0 or 2^b), so
it is refused as ambiguous.

Act-order (``desc_act``) checkpoints whose g_idx is not k // group_size are refused: their
groups are not runs of consecutive inputs. Zeros are integers, stored in the scales' dtype.
"""
from __future__ import annotations

import enum
import math

import torch

from ..formats import QuantizedWeight
from .common import (Refused, check_int, check_trivial_g_idx, float_tensor, int_tensor, same_device, stream_words,
                     tensor, uniform_weight, unpack_stream)

GPTQ_BITS = (2, 3, 4, 8)


class GPTQZeros(str, enum.Enum):
    """How a GPTQ checkpoint stores zero points (its ``checkpoint_format``)."""

    V1 = "gptq"  # AutoGPTQ and the Hub: stored field = zero - 1
    V2 = "gptq_v2"  # GPTQModel's internal format: stored field = zero

    @classmethod
    def parse(cls, value: "GPTQZeros | str") -> "GPTQZeros":
        if isinstance(value, GPTQZeros):
            return value
        try:
            return cls(str(value))
        except ValueError:
            raise ValueError(f"unknown GPTQ checkpoint_format {value!r}; expected 'gptq' or 'gptq_v2'") from None


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None = None, *,
              bits: int, group_size: int, in_features: int | None = None,
              zeros_format: GPTQZeros | str = GPTQZeros.V1) -> QuantizedWeight:
    """An int<bits> QuantizedWeight that dequantizes exactly like the GPTQ layer.

    `group_size` is the checkpoint's (-1: one group per row). `in_features` defaults to
    len(g_idx), else to qweight.shape[0] * 32 / bits. Raises :class:`Refused` (a ValueError)
    for what lowbit cannot store exactly: other bit widths, act-order, group sizes that do not
    map onto 32/64/128 or whole rows, an ambiguous v1 zero.
    """
    bits = check_int("bits", bits, GPTQ_BITS)
    check_int("group_size", group_size)
    zeros_format = GPTQZeros.parse(zeros_format)
    qweight, qzeros, scales = tensor("qweight", qweight), tensor("qzeros", qzeros), tensor("scales", scales)
    if qweight.dim() != 2:
        raise ValueError(f"qweight must be 2-D [K*bits/32, N], got shape {tuple(qweight.shape)}")
    n = qweight.shape[1]
    if in_features is None:
        in_features = g_idx.numel() if isinstance(g_idx, torch.Tensor) else qweight.shape[0] * 32 // bits
    k = check_int("in_features", in_features)
    if k <= 0:
        raise ValueError(f"in_features must be positive, got {k}")
    if k * bits % 32 or n * bits % 32:
        raise Refused(f"GPTQ packs whole int32 words: K={k} and N={n} must be multiples of "
                      f"{32 // math.gcd(32, bits)} for {bits}-bit")
    gs = k if group_size == -1 else group_size
    if gs <= 0:
        raise ValueError(f"group_size must be positive or -1, got {group_size}")
    groups = -(-k // gs)
    int_tensor("qweight", qweight, (stream_words(k, bits), n))
    int_tensor("qzeros", qzeros, (groups, stream_words(n, bits)))
    scales = float_tensor("scales", scales, (groups, n))
    same_device(qweight=qweight, qzeros=qzeros, scales=scales)
    check_trivial_g_idx(g_idx, k, gs, "g_idx")
    if k % gs:
        raise Refused(f"K={k} is not a multiple of group_size={gs}: the last GPTQ group is partial")

    codes = unpack_stream(qweight, bits, k, dim=0).t()  # [N, K]
    fields = unpack_stream(qzeros, bits, n, dim=1)  # [G, N]
    if zeros_format is GPTQZeros.V1:
        if bool((fields == 2 ** bits - 1).any()):
            raise Refused(f"a v1 (checkpoint_format 'gptq') zero field holds {2 ** bits - 1}, i.e. a zero point of 0 "
                          "stored as -1: GPTQ kernels disagree on its value (0 or 2^bits), so lowbit refuses it")
        zeros = fields + 1
    else:
        zeros = fields
    return uniform_weight(codes, scales, zeros, bits, gs)


__all__ = ["from_gptq", "GPTQZeros", "GPTQ_BITS"]
