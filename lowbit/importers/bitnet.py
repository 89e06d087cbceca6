"""BitNet b1.58 checkpoints (Microsoft's HF releases, transformers' ``bitnet`` method) -> lowbit ternary.

Layout of one layer with N outputs and K inputs:
- ``weight`` uint8 [N/4, K]: four ternary rows per stored row. Output n = i * (N/4) + r is in
  bits 2i..2i+1 of ``weight[r, k]``, holding t + 1 with t in {-1, 0, 1} (a field of 3 is not
  ternary).
- ``weight_scale`` [1] (the model dtype, bf16 in the releases): one value per tensor.

What the scale means depends on the layer class in the checkpoint's quantization_config:
``linear_class: bitlinear`` (the default, and bitnet-b1.58-2B-4T) computes
y = (x_q . T^T) / (s_x * weight_scale), i.e. W = T / weight_scale; ``autobitlinear`` (offline)
computes y = (x . T^T) * weight_scale, i.e. W = T * weight_scale, and may store T unpacked as
a float [N, K] tensor. Activations are quantized per token to int8 with scale 127 / absmax,
which is lowbit's ``ternary`` scheme (W1.58A8).

lowbit keeps T exactly and stores gamma in fp32: weight_scale itself for autobitlinear (exact),
1 / weight_scale rounded to fp32 for bitlinear (relative error <= 2^-24, far below the bf16
resolution of weight_scale itself; exact when weight_scale is a power of two).
"""
from __future__ import annotations

import enum

import torch

from ..formats import QuantizedWeight, Scheme, TernarySpec
from ..reference import pack_weight_codes
from .common import Refused, tensor

VALUES_PER_BYTE = 4


class BitNetLinear(str, enum.Enum):
    """transformers' BitNet layer classes, which read ``weight_scale`` differently."""

    BITLINEAR = "bitlinear"  # W = T / weight_scale
    AUTOBITLINEAR = "autobitlinear"  # W = T * weight_scale

    @classmethod
    def parse(cls, value: "BitNetLinear | str") -> "BitNetLinear":
        if isinstance(value, BitNetLinear):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise Refused(f"unknown BitNet linear_class {value!r}; expected 'bitlinear' or 'autobitlinear'") from None


def unpack_bitnet(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N/4, K] -> ternary int64 [N, K] (raises Refused on a field of 3)."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed BitNet weight must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    p = packed.to(torch.int64)
    fields = torch.cat([(p >> (2 * i)) & 3 for i in range(VALUES_PER_BYTE)], dim=0)  # row i*R + r
    if bool((fields == 3).any()):
        raise Refused("the packed BitNet weight holds the 2-bit value 3, which is not t + 1 for a ternary t")
    return fields - 1


def from_bitnet(weight: torch.Tensor, weight_scale: torch.Tensor, *,
                linear_class: BitNetLinear | str = BitNetLinear.BITLINEAR,
                out_features: int | None = None) -> QuantizedWeight:
    """A ``ternary`` (W1.58A8, per-tensor gamma) QuantizedWeight from a BitNet layer's tensors.

    `weight` is the packed uint8 [N/4, K] tensor or (autobitlinear) an unpacked float [N, K]
    tensor of ternary values; `out_features`, when given, is checked against N.
    """
    linear_class = BitNetLinear.parse(linear_class)
    weight, weight_scale = tensor("weight", weight), tensor("weight_scale", weight_scale)
    if weight.dtype == torch.uint8:
        t = unpack_bitnet(weight)
    elif weight.dtype.is_floating_point and weight.dim() == 2:
        if linear_class is BitNetLinear.BITLINEAR:
            raise Refused("a bitlinear layer with a float weight is not a packed offline checkpoint "
                          "(quantization_mode 'online'?); quantize it with lowbit.quantize_(model, 'ternary')")
        t = weight.to(torch.float64)
        if not bool(((t == -1) | (t == 0) | (t == 1)).all()):
            raise Refused("the unpacked BitNet weight holds values other than -1, 0 and 1 (online quantization?)")
        t = t.to(torch.int64)
    else:
        raise TypeError(f"BitNet weight must be packed uint8 or a 2-D float tensor, got {weight.dtype}")
    n, k = t.shape
    if out_features is not None and out_features != n:
        raise ValueError(f"the BitNet weight unpacks to {n} outputs but out_features={out_features}")
    if not weight_scale.dtype.is_floating_point or weight_scale.numel() != 1:
        raise Refused(f"BitNet weight_scale must be one float per tensor, got {weight_scale.dtype} "
                      f"{tuple(weight_scale.shape)}")
    ws = float(weight_scale.reshape(()).to(torch.float64))
    if not (ws > 0 and ws < float("inf")):
        raise ValueError(f"BitNet weight_scale must be positive and finite, got {ws}")
    gamma = 1.0 / ws if linear_class is BitNetLinear.BITLINEAR else ws
    if not gamma < 3.4e38:
        raise ValueError(f"1 / weight_scale = {gamma} does not fit in fp32")
    g = torch.tensor([gamma], dtype=torch.float64, device=weight.device).to(torch.float32)
    return QuantizedWeight(Scheme.TERNARY, TernarySpec(), (n, k), {"qweight": pack_weight_codes(Scheme.TERNARY, TernarySpec(), t + 1),
                                                                  "gamma": g})


__all__ = ["from_bitnet", "unpack_bitnet", "BitNetLinear"]
