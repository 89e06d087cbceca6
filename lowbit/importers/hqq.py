"""HQQ (``HQQLinear``) -> lowbit int1/int2/int3/int4/int8 with HQQ's float zero points.

HQQ quantizes an [N, K] weight W viewed as a matrix R: with ``axis=1`` R = W.reshape(-1,
group_size) (one group per row of R: ``group_size`` consecutive inputs of one output), with
``axis=0`` R = W.reshape(group_size, -1) (a group is a column of R), and without
``channel_wise`` R = W and one scale/zero covers the tensor. Codes are packed along R's first
dimension (``packing``): ``8bit_u8`` as is, ``4bit_u8`` two slices per byte (the first half of
the rows in the high nibble), ``2bit_u8`` four slices (shifts 6, 4, 2, 0), ``1bit_u8`` eight
slices (shifts 7..0), ``3bit_32`` ten slices per int32 (shifts 27, 24, ..., 0; rows padded to a
multiple of 10). ``scale`` and ``zero`` are float, one per group: W = (R - zero) * scale.

lowbit stores the same codes, scales and (fractional) zeros, so its dequantized weight is the
exact (q - zero) * scale of HQQ's stored tensors. HQQ's own dequantizer computes it in its
compute dtype (fp16/bf16) in two steps, rounding q - zero before the multiply, so the two agree
to that rounding (a few ulp of the compute dtype), not bit for bit.

Served: ``axis=1`` with group_size a multiple of 32 dividing K (or K itself), and per-tensor
(not channel-wise) layers. Refused with the reason: ``axis=0`` (groups run along the outputs),
groups straddling rows, meta-quantized or offloaded scale/zero (``quant_scale``,
``quant_zero``, ``zero_scale``).
"""
from __future__ import annotations

import enum

import torch

from ..formats import FLOAT_DTYPES, QuantizedWeight
from .common import Refused, check_int, check_shape, tensor, uniform_weight


class HQQPacking(str, enum.Enum):
    """HQQ's bit packings (``meta["packing"]``) and the code width each holds."""

    U8_8BIT = "8bit_u8"
    U8_4BIT = "4bit_u8"
    I32_3BIT = "3bit_32"
    U8_2BIT = "2bit_u8"
    U8_1BIT = "1bit_u8"

    @property
    def bits(self) -> int:
        return {"8bit_u8": 8, "4bit_u8": 4, "3bit_32": 3, "2bit_u8": 2, "1bit_u8": 1}[self.value]

    @property
    def storage(self) -> torch.dtype:
        return torch.int32 if self is HQQPacking.I32_3BIT else torch.uint8

    @classmethod
    def for_nbits(cls, nbits: float) -> "HQQPacking":
        table = {8: cls.U8_8BIT, 6: cls.U8_8BIT, 5: cls.U8_8BIT, 4: cls.U8_4BIT, 3: cls.I32_3BIT,
                 2: cls.U8_2BIT, 1.58: cls.U8_2BIT, 1: cls.U8_1BIT}
        if nbits not in table:
            raise Refused(f"HQQ nbits={nbits} is not one of HQQ's widths {sorted(table)}")
        return table[nbits]


def unpack_hqq(w_q: torch.Tensor, packing: HQQPacking, rows: int) -> torch.Tensor:
    """HQQ-packed codes -> int64 R [rows, cols] (the slices of the first dimension, see the module docstring)."""
    if w_q.dtype != packing.storage:
        raise TypeError(f"W_q for packing {packing.value} must be {packing.storage}, got {w_q.dtype}")
    w = w_q.to(torch.int64) & (0xFFFFFFFF if packing.storage == torch.int32 else 0xFF)
    if packing is HQQPacking.I32_3BIT:
        shifts, mask = [27 - 3 * i for i in range(10)], 7
    else:
        per = 8 // packing.bits
        shifts, mask = [8 - packing.bits * (i + 1) for i in range(per)], 2 ** packing.bits - 1
    r = torch.cat([(w >> s) & mask for s in shifts], dim=0)
    if packing is HQQPacking.I32_3BIT:
        if r.shape[0] < rows or r.shape[0] - rows >= 10:
            raise ValueError(f"3bit_32 W_q with {w_q.shape[0]} rows cannot hold {rows} rows")
        return r[:rows]
    if r.shape[0] != rows:
        raise ValueError(f"W_q with {w_q.shape[0]} rows in {packing.value} holds {r.shape[0]} rows, expected {rows}")
    return r


def from_hqq(W_q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, nbits: float, group_size: int | None,
             shape, axis: int = 1, packing: HQQPacking | str | None = "auto", channel_wise: bool = True,
             view_as_float: bool = False) -> QuantizedWeight:
    """A lowbit QuantizedWeight with HQQ's codes, scales and zeros (see the module docstring).

    `shape` is HQQ's ``meta["shape"]`` (N, K). `packing` "auto" takes HQQ's packing for `nbits`;
    None means W_q holds unpacked codes (HQQ's ``bitpack=False``). Raises :class:`Refused` (a
    ValueError) for layouts lowbit cannot serve exactly.
    """
    n, k = check_shape(tuple(int(d) for d in shape))
    W_q, scale, zero = tensor("W_q", W_q), tensor("scale", scale), tensor("zero", zero)
    if isinstance(packing, str) and packing == "auto":
        packing = HQQPacking.for_nbits(nbits)
    elif packing is not None:
        try:
            packing = HQQPacking(packing)
        except ValueError:
            raise Refused(f"unknown HQQ packing {packing!r}") from None
    if axis not in (0, 1):
        raise ValueError(f"HQQ axis must be 0 or 1, got {axis!r}")
    if not channel_wise:
        rows = n
        if scale.numel() != 1 or zero.numel() != 1:
            raise ValueError("a non channel-wise HQQ layer has one scale and one zero")
    else:
        gs = k if group_size is None else check_int("group_size", group_size)
        if axis == 0:
            raise Refused("HQQ axis=0: groups run along the output dimension (W.reshape(group_size, -1)); lowbit's "
                          "groups run along the inputs, so only axis=1 layers are imported")
        if gs <= 0 or k % gs:
            raise Refused(f"HQQ group_size={gs} does not divide in_features K={k}: groups straddle rows")
        rows = n * k // gs
        for name, t in (("scale", scale), ("zero", zero)):
            if t.numel() != rows:
                raise ValueError(f"HQQ {name} has {t.numel()} values, expected {rows} (one per group)")
    for name, t in (("scale", scale), ("zero", zero)):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"HQQ {name} must be float16, bfloat16 or float32, got {t.dtype}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"HQQ {name} contains NaN or Inf")
    if packing is None:
        if not bool((W_q == W_q.round()).all()) or bool((W_q < 0).any()) or bool((W_q > 255).any()):
            raise ValueError("unpacked HQQ W_q must hold integer codes in [0, 255]")
        r = W_q.to(torch.int64).reshape(rows, -1)
        bits = max(1, int(r.max()).bit_length()) if r.numel() else 1
    else:
        if view_as_float or W_q.dtype.is_floating_point:
            W_q = W_q.contiguous().view(packing.storage)
        r = unpack_hqq(W_q, packing, rows)
        bits = packing.bits
    if r.numel() != n * k:
        raise ValueError(f"HQQ W_q holds {r.numel()} codes, expected {n * k} for shape {(n, k)}")
    limit = 2 ** nbits - 1 if isinstance(nbits, int) else round(2 ** nbits - 1)
    if bool((r > limit).any()):
        raise ValueError(f"HQQ codes exceed {limit}, the largest {nbits}-bit code")
    codes = r.reshape(n, k)
    if channel_wise:
        s = scale.reshape(n, k // gs).t()
        z = zero.reshape(n, k // gs).t()
        foreign_group = gs
    else:
        s = scale.reshape(1, 1).expand(1, n)
        z = zero.reshape(1, 1).expand(1, n)
        foreign_group = k
    return uniform_weight(codes.contiguous(), s.contiguous(), z.contiguous(), bits, foreign_group)


def _decode(v, kind):
    """One value of HQQ's safetensors-encoded state dict (tensors stand for ints, floats, bools, strings)."""
    if not isinstance(v, torch.Tensor):
        return v
    if kind is str:
        return "".join(chr(int(c)) for c in v.tolist())
    if kind is bool:
        return bool(v.item())
    if kind is int:
        return int(v.item())
    if kind is float:
        return float(v.item())
    return v


def from_hqq_state(state: dict) -> QuantizedWeight:
    """A lowbit QuantizedWeight from one HQQLinear's state dict (``HQQLinear.state_dict()`` keys, no prefix).

    Reads the encoded metadata HQQ writes to safetensors (nbits, group_size, shape, axis,
    packing, view_as_float, channel_wise, quant_scale, quant_zero).
    """
    for key in ("zero_q", "scale_q", "zero_scale", "meta_zero", "meta_scale"):
        if key in state:
            raise Refused(f"HQQ '{key}': quantized or offloaded scale/zero (quant_scale/quant_zero/offload_meta) "
                          "are not imported; re-quantize without them")
    if _decode(state.get("quant_scale", False), bool) or _decode(state.get("quant_zero", False), bool):
        raise Refused("HQQ quant_scale/quant_zero: meta-quantized scale/zero are not imported")
    missing = [k for k in ("W_q", "scale", "zero", "nbits", "shape") if k not in state]
    if missing:
        raise ValueError(f"HQQ layer state lacks {missing}")
    nb = state["nbits"]
    nbits = _decode(nb, float if isinstance(nb, torch.Tensor) and nb.dtype.is_floating_point else int)
    if isinstance(nbits, float) and nbits.is_integer():
        nbits = int(nbits)
    if isinstance(nbits, float) and abs(nbits - 1.58) < 1e-6:
        nbits = 1.58
    packing = _decode(state.get("packing"), str) if "packing" in state else None
    shape = state["shape"].tolist() if isinstance(state["shape"], torch.Tensor) else list(state["shape"])
    group_size = _decode(state["group_size"], int) if state.get("group_size") is not None else None
    return from_hqq(state["W_q"], state["scale"], state["zero"], nbits=nbits, group_size=group_size, shape=shape,
                    axis=_decode(state.get("axis", 1), int), packing=packing or None,
                    channel_wise=_decode(state.get("channel_wise", True), bool),
                    view_as_float=_decode(state.get("view_as_float", False), bool))


__all__ = ["from_hqq", "from_hqq_state", "unpack_hqq", "HQQPacking"]
