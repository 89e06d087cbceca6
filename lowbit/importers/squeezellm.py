"""SqueezeLLM's ``QuantLinearLUT`` buffers -> lut3/lut4 (sq3/sq4 with outliers).

Codes of the [N, K] weight are packed along K into int32 ``qweight [K*bits/32, N]``: 4-bit
holds 8 codes per word (code ``k`` at bit ``4*(k % 8)`` of word ``k // 8``); 3-bit treats each
group of 3 words as one little-endian 96-bit stream holding 32 codes at bit ``3*j``, so codes
10 and 21 straddle word boundaries. ``lookup_table [N, 2^bits]`` is the per-row table and
optional ``rows/cols/vals`` are CSR outliers over output rows with W = LUT[n, q] + S
(SqueezeLLM already subtracts the table value at outlier positions). Tables and outliers keep
their dtype (fp16, bf16 or fp32).
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..formats import MAX_OUTLIER_FRACTION, LUTSpec, QuantizedWeight, Scheme
from ..reference.packing import pack_codes
from .common import check_shape as _shape
from .common import float_tensor as _float_tensor
from .common import index_tensor as _index_tensor
from .common import tensor as _tensor
from .common import unpack_stream


def _unpack_squeezellm(qweight: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Codes [N, K] from SqueezeLLM words [K*bits/32, N] (a little-endian bit stream per column)."""
    return unpack_stream(qweight, bits, k, dim=0).t()


def from_squeezellm(qweight: torch.Tensor, lookup_table: torch.Tensor, rows: torch.Tensor | None = None,
                    cols: torch.Tensor | None = None, vals: torch.Tensor | None = None, *,
                    shape: Sequence[int], bits: int | None = None) -> QuantizedWeight:
    """A lut3/lut4 (or, with CSR outliers, sq3/sq4) QuantizedWeight from SqueezeLLM buffers.

    shape is (N, K) = (out_features, in_features); bits defaults to log2 of the table width.
    The recorded outlier_fraction is the stored density nnz / (N*K), which must be in (0, 0.1].
    """
    n, k = _shape(shape)
    qweight = _tensor("qweight", qweight)
    lookup_table = _tensor("lookup_table", lookup_table)
    if bits is None:
        width = lookup_table.shape[-1] if lookup_table.dim() == 2 else -1
        bits = {8: 3, 16: 4}.get(width)
        if bits is None:
            raise ValueError(f"lookup_table must be [N, 8] (3-bit) or [N, 16] (4-bit), got {tuple(lookup_table.shape)}")
    if bits not in (3, 4):
        raise ValueError(f"SqueezeLLM packs 3- or 4-bit codes, got bits={bits!r}")
    if (k * bits) % 32:
        raise ValueError(f"in_features K={k} must be a multiple of {({3: 32, 4: 8})[bits]} for {bits}-bit "
                         "SqueezeLLM packing (whole int32 words along K)")
    if qweight.dtype != torch.int32:
        raise TypeError(f"qweight must be int32, got {qweight.dtype}")
    if tuple(qweight.shape) != (k * bits // 32, n):
        raise ValueError(f"qweight has shape {tuple(qweight.shape)}, expected {(k * bits // 32, n)} "
                         f"([K*{bits}/32, N] for shape (N, K) = {(n, k)})")
    lut = _float_tensor("lookup_table", lookup_table, (n, 2 ** bits))
    dev = qweight.device
    if lut.device != dev:
        raise ValueError(f"lookup_table is on {lut.device} but qweight is on {dev}")
    packed = pack_codes(_unpack_squeezellm(qweight, bits, k), bits)  # lowbit's own layout, whatever it is
    tensors = {"qweight": packed, "lut": lut}
    given = [x is not None for x in (rows, cols, vals)]
    if any(given) and not all(given):
        raise ValueError("rows, cols and vals must be given together (CSR outliers) or not at all")
    if not all(given) or _tensor("cols", cols).numel() == 0:
        return QuantizedWeight(Scheme.LUT3 if bits == 3 else Scheme.LUT4, LUTSpec(bits=bits), (n, k), tensors)
    nnz = cols.numel()
    row_ptr = _index_tensor("rows", rows, n + 1)
    col_idx = _index_tensor("cols", cols, nnz)
    values = _float_tensor("vals", vals, (nnz,))
    if {row_ptr.device, col_idx.device, values.device} != {dev}:
        raise ValueError(f"rows, cols and vals must be on qweight's device {dev}")
    rp = row_ptr.to("cpu", torch.int64)
    if int(rp[0]) != 0 or int(rp[-1]) != nnz:
        raise ValueError(f"rows (CSR row pointers) must start at 0 and end at nnz={nnz}, got {int(rp[0])}..{int(rp[-1])}")
    if bool((rp[1:] < rp[:-1]).any()):
        raise ValueError("rows (CSR row pointers) are not monotone non-decreasing")
    c = col_idx.to("cpu", torch.int64)
    if bool((c < 0).any()) or bool((c >= k).any()):
        raise ValueError(f"cols (CSR column indices) out of range [0, {k})")
    frac = nnz / (n * k)
    if frac > MAX_OUTLIER_FRACTION:
        raise ValueError(f"{nnz} outliers are {frac:.3%} of the weight; lowbit's sq formats allow at most "
                         f"{MAX_OUTLIER_FRACTION:.0%}")
    tensors.update(row_ptr=row_ptr, col_idx=col_idx, values=values)
    return QuantizedWeight(Scheme.SQ3 if bits == 3 else Scheme.SQ4, LUTSpec(bits=bits, outlier_fraction=frac),
                           (n, k), tensors)


__all__ = ["from_squeezellm"]
