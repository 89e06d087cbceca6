"""BitNet b1.58 ternary weights and per-token int8 activations.

Weights: gamma = mean|W| (per tensor, or per output row), T = clip(round(W / gamma), -1, 1),
packed across rows (:func:`pack`) with gamma in fp32.
Activations (W1.58A8): per token, scale = 127 / max(absmax(x), 1e-5) in fp32,
x_q = clip(round_half_even(x * scale), -128, 127); y = (x_q . T^T) * gamma / scale.
A token holding a NaN or an infinity has no meaningful absmax: its scale is NaN and its x_q is 0,
so its whole output row is NaN (the kernels follow the same rule).
"""
from __future__ import annotations

import torch

from ..formats import LaneLayout, TernarySpec
from .packing import pack_lanes, unpack_codes, unpack_lanes

EPS = 1e-5


# -- packing -------------------------------------------------------------------------------------
#
# Layout (formats.LaneLayout): at each k, rows_per_lane consecutive output rows share one lane:
# W1.58A8 ("ternary") 4 rows per 8-bit lane, W1.58A16 ("ternary_a16") 8 rows per 16-bit lane.
# Every field below a lane's top one holds t + 1 (0, 1, 2); the top field holds t itself in
# two's complement (0b11 = -1, 0b00 = 0, 0b01 = 1). 2.0 bits per weight plus gamma and the
# padding of N to whole lanes and of K to 16 lanes.
#
# Why: the raw lanes are tensor-core operands. For W1.58A8 the byte itself is an int8 operand,
# b = c0 + 4 c1 + 16 c2 + 64 t3, and so are b & 0x03, b & 0x0C and b & 0x30 (c_f = t_f + 1): four
# int8 dots with x_q give every row after exact shifts, and the + 1 of the low fields is removed
# by subtracting sum(x_q) once per row. For W1.58A16 a 16-bit lane masked to one field is an
# fp16 subnormal c * 2^(2f - 24) (the low fields) or +-2.0 (the top field, in the sign and top
# exponent bits), so one AND per two weights makes an fp16 operand; the scale and the + 1 are
# undone after the K loop. Padding is t = 0.

def _fill(layout: LaneLayout) -> list[int]:
    """Field codes of a zero weight: t + 1 = 1 in the low fields, 0 in the top one."""
    return [1] * (layout.rows_per_lane - 1) + [0]


def pack(codes: torch.Tensor, spec: TernarySpec) -> torch.Tensor:
    """Pack codes t + 1 in {0, 1, 2} of an [N, K] weight into the lane layout of `spec`: int32 [lanes, words]."""
    if codes.dim() != 2:
        raise ValueError(f"ternary codes must be 2-D [N, K], got shape {tuple(codes.shape)}")
    c = codes.to(torch.int64)
    if c.numel() and (int(c.min()) < 0 or int(c.max()) > 2):
        raise ValueError("ternary codes must be t + 1 in {0, 1, 2}")
    layout = spec.layout
    rpl = layout.rows_per_lane
    top = (torch.arange(c.shape[0], device=c.device) % rpl == rpl - 1).unsqueeze(1)
    fields = torch.where(top, (c - 1) & 3, c)
    return pack_lanes(fields, layout, fill=_fill(layout))


def unpack(qweight: torch.Tensor, spec: TernarySpec, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack`: the codes t + 1 as int64 [N, K] (3 marks a field that is no ternary value)."""
    n, k = shape
    layout = spec.layout
    fields = unpack_lanes(qweight, layout, n, k)
    rpl = layout.rows_per_lane
    top = (torch.arange(n, device=fields.device) % rpl == rpl - 1).unsqueeze(1)
    t_top = torch.where(fields >= 2, fields - 4, fields)  # two's complement; 0b10 -> -2
    return torch.where(top, torch.where(t_top == -2, 3, t_top + 1), fields)


def convert_legacy(tensors: dict[str, torch.Tensor], spec: TernarySpec, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Tensors of a ternary layer saved by format version 1 -> the lane layout of this version.

    Version 1 stored ``qweight`` int32 [ceil(K / 16), N] with the codes t + 1 packed 16 per word
    along K (lowbit.reference.packing.pack_codes, 2 bits). gamma is unchanged. Raises ValueError
    for a qweight of the wrong shape or holding code 3.
    """
    n, k = shape
    q = tensors.get("qweight")
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int32 or tuple(q.shape) != (-(-k // 16), n):
        raise ValueError(f"a version-1 ternary qweight must be int32 [{-(-k // 16)}, {n}], got "
                         f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}")
    codes = unpack_codes(q, 2, k)
    if bool((codes == 3).any()):
        raise ValueError("the version-1 ternary qweight holds code 3, which is not a ternary value")
    return {**tensors, "qweight": pack(codes, spec)}


# -- the scheme ----------------------------------------------------------------------------------

def quantize(w: torch.Tensor, spec: TernarySpec) -> dict[str, torch.Tensor]:
    """Absmean ternary quantizer; returns packed codes and fp32 gamma ([1] or [N])."""
    wf = w.float()
    gamma = wf.abs().mean(dim=1) if spec.per_channel else wf.abs().mean().reshape(1)
    gamma = gamma.clamp(min=EPS)
    denom = gamma.unsqueeze(1) if spec.per_channel else gamma
    t = torch.round(wf / denom).clamp(-1, 1)
    return {"qweight": pack((t + 1).to(torch.int64), spec), "gamma": gamma.float().contiguous()}


def ternary_values(qw) -> torch.Tensor:
    """T in {-1, 0, 1} as int64 [N, K]; raises if a field holds no ternary value."""
    codes = unpack(qw["qweight"], qw.spec, qw.shape)
    if bool((codes == 3).any()):
        raise ValueError("qweight holds code 3, which is not a ternary value (codes must be t + 1 in {0, 1, 2})")
    return codes - 1


def dequantize(qw, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = qw["gamma"].to(torch.float64)
    g = g.unsqueeze(1) if qw.spec.per_channel else g
    return (ternary_values(qw).to(torch.float64) * g).to(dtype)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token absmax int8 quantization: returns (x_q int8 [..., K], scale fp32 [...]).

    A token with a NaN or an infinity gets scale NaN and x_q = 0 (its output row is NaN).
    """
    xf = x.float()
    finite = torch.isfinite(xf).all(dim=-1)
    amax = xf.abs().amax(dim=-1).clamp(min=EPS)
    scale = torch.full_like(amax, 127.0) / amax
    scale = torch.where(finite, scale, torch.full_like(scale, float("nan")))
    xq = torch.round(xf * scale.unsqueeze(-1)).clamp(-128, 127)
    xq = torch.where(finite.unsqueeze(-1), xq, torch.zeros_like(xq)).to(torch.int8)
    return xq, scale


def linear_quantized(xq: torch.Tensor, scale: torch.Tensor, qw, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W1.58A8 on activations already quantized with a given per-token scale: (x_q . T^T) * gamma / scale.

    The oracle of lowbit.kernels.sign.linear_quantized (tensor parallelism quantizes with the scale of
    the whole row, gathered across ranks, and multiplies each rank's K slice).
    """
    t = ternary_values(qw)
    acc = xq.to(torch.int64) @ t.t()
    g = qw["gamma"].to(torch.float64)
    return (acc.to(torch.float64) * g / scale.to(torch.float64).unsqueeze(-1)).to(out_dtype)


def linear_a8(x: torch.Tensor, qw, bias=None, out_dtype=None) -> torch.Tensor:
    """W1.58A8 oracle: exact integer dot in int64, rescale and bias in float64."""
    xq, scale = quantize_activations(x)
    t = ternary_values(qw)
    acc = xq.to(torch.int64) @ t.t()
    g = qw["gamma"].to(torch.float64)
    y = acc.to(torch.float64) * g / scale.to(torch.float64).unsqueeze(-1)
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype or x.dtype)

