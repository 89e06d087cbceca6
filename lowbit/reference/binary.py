"""OneBit 1-bit weights: W ~ S * outer(h, g), S = sign(W) in {-1, +1}.

g [K] and h [N] come from the rank-1 SVID of |W| (power iteration, deterministic):
|W| ~ sigma * u v^T, h = u * sqrt(sigma), g = v * sqrt(sigma), stored in fp16, then rescaled by a
power of two (exactly) so that max g is in (1/2, 1]. Signs pack 1 bit each (bit 1 = +1, bit 0 = -1;
sign(0) = +1). y = ((x * g) . S^T) * h.
"""
from __future__ import annotations

import math

import torch

from ..formats import BinarySpec
from .packing import pack_lanes, unpack_codes, unpack_lanes

# -- packing -------------------------------------------------------------------------------------
#
# Layout (formats.LaneLayout): at each k, 16 consecutive output rows share one 16-bit lane, row
# 16 r + f in bit f. 1.0 bit per weight plus g, h and the padding of N to 16 rows and of K to 16.
#
# Why: a 16-bit lane masked to bit f < 10 is the fp16 subnormal b * 2^(f - 24), and the sign bit
# with 1.0 OR-ed in is -s directly, so one AND per two weights makes an fp16 tensor-core operand
# (bits 10-14 after one shift by 10); scales and the offset of s = 2 b - 1 are undone after the
# K loop. Padding is bit 0.


def pack(bits: torch.Tensor, spec: BinarySpec | None = None) -> torch.Tensor:
    """Pack sign bits (1 = +1, 0 = -1) of an [N, K] weight: int32 [ceil(N / 16), words(K)]."""
    return pack_lanes(bits, BinarySpec.layout)


def unpack(qweight: torch.Tensor, spec: BinarySpec | None, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack`: sign bits as int64 [N, K]."""
    return unpack_lanes(qweight, BinarySpec.layout, *shape)


def convert_legacy(tensors: dict[str, torch.Tensor], spec: BinarySpec, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Tensors of a binary layer saved by format version 1 -> the lane layout of this version.

    Version 1 stored ``qweight`` int32 [ceil(K / 32), N] with the sign bits packed 32 per word
    along K (lowbit.reference.packing.pack_codes, 1 bit). g and h are unchanged.
    """
    n, k = shape
    q = tensors.get("qweight")
    if not isinstance(q, torch.Tensor) or q.dtype != torch.int32 or tuple(q.shape) != (-(-k // 32), n):
        raise ValueError(f"a version-1 binary qweight must be int32 [{-(-k // 32)}, {n}], got "
                         f"{getattr(q, 'dtype', type(q).__name__)} {tuple(getattr(q, 'shape', ()))}")
    return {**tensors, "qweight": pack(unpack_codes(q, 1, k), spec)}


POWER_ITERS = 100


def rank1(a: torch.Tensor, iters: int = POWER_ITERS) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Leading singular triple (u, v, sigma) of a non-negative matrix by power iteration."""
    a = a.to(torch.float64)
    v = torch.ones(a.shape[1], dtype=torch.float64, device=a.device)
    v = v / v.norm()
    for _ in range(iters):
        u = a @ v
        un = u.norm()
        if un == 0:
            break
        u = u / un
        v_new = a.t() @ u
        v_new = v_new / v_new.norm()
        if torch.allclose(v_new, v, rtol=0, atol=1e-12):
            v = v_new
            break
        v = v_new
    u = a @ v
    sigma = float(u.norm())
    u = u / sigma if sigma > 0 else torch.zeros_like(u)
    return u, v, sigma


def quantize(w: torch.Tensor, spec) -> dict[str, torch.Tensor]:
    """Packed sign bits plus fp16 g [K] and h [N] from the SVID of |W|."""
    wf = w.to(torch.float64)
    u, v, sigma = rank1(wf.abs())
    root = sigma ** 0.5
    h, g = (u * root).abs(), (v * root).abs()
    # h g^T is unchanged by g * 2^-e, h * 2^e; with max g in (1/2, 1], |x * g| <= |x| never
    # overflows the fp16 operand the kernels form from it
    gmax = float(g.max())
    e = math.ceil(math.log2(gmax)) if gmax > 0 else 0
    g, h = g * 2.0 ** -e, h * 2.0 ** e
    if float(h.max()) > 65504.0 or float(g.max()) > 65504.0:
        raise ValueError("weights are too large for fp16 magnitude vectors")
    return {"qweight": pack((wf >= 0).to(torch.int64), spec), "g": g.to(torch.float16), "h": h.to(torch.float16)}


def signs(qw) -> torch.Tensor:
    """S in {-1, +1} as int64 [N, K]."""
    return unpack(qw["qweight"], qw.spec, qw.shape) * 2 - 1


def dequantize(qw, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    h = qw["h"].to(torch.float64).unsqueeze(1)
    g = qw["g"].to(torch.float64).unsqueeze(0)
    return (signs(qw).to(torch.float64) * h * g).to(dtype)
