"""Convert other libraries' packed weights into a validated :class:`~lowbit.formats.QuantizedWeight`.

- :func:`from_squeezellm`: SqueezeLLM's ``QuantLinearLUT`` buffers. Codes of the [N, K] weight
  are packed along K into int32 ``qweight [K*bits/32, N]``: 4-bit holds 8 codes per word (code
  ``k`` at bit ``4*(k % 8)`` of word ``k // 8``, which is exactly lowbit's 4-bit layout); 3-bit
  treats each group of 3 words as one little-endian 96-bit stream holding 32 codes at bit
  ``3*j``, so codes 10 and 21 straddle word boundaries. ``lookup_table [N, 2^bits]`` is the
  per-row table and optional ``rows/cols/vals`` are CSR outliers over output rows with
  W = LUT[n, q] + S (SqueezeLLM already subtracts the table value at outlier positions).
- :func:`from_bnb_nf4`: bitsandbytes NF4. ``packed`` is uint8 holding two codes per byte over
  the *flattened row-major* weight, the even-indexed element in the high nibble (bitsandbytes
  packs ``q[0::2] << 4 | q[1::2]``), and ``absmax`` has one value per ``blocksize`` consecutive
  flattened elements. lowbit stores one absmax per row-group, so the block structure is mapped
  to the largest group (per channel, 128, 64 or 32) that never crosses a bnb block; values are
  repeated, never rounded, so the import is exact.

Both read values on the host (importing is offline) and raise ValueError/TypeError on
malformed input; dtypes of tables, absmax and outliers are kept (fp16, bf16 or fp32).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .formats import FLOAT_DTYPES, LUTSpec, NF4Spec, QuantizedWeight, Scheme, MAX_OUTLIER_FRACTION
from .reference.packing import pack_codes


def _shape(shape) -> tuple[int, int]:
    if not isinstance(shape, Sequence) or len(shape) != 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"shape must be a pair of ints (N, K), got {shape!r}")
    n, k = shape
    if n <= 0 or k <= 0:
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    return n, k


def _tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _float_tensor(name: str, t, shape: tuple) -> torch.Tensor:
    t = _tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t.contiguous()


def _index_tensor(name: str, t, length: int | None) -> torch.Tensor:
    t = _tensor(name, t)
    if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
        raise TypeError(f"{name} must be a 1-D int32 or int64 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name} has {t.numel()} entries, expected {length}")
    if t.numel() and (int(t.min()) < -2 ** 31 or int(t.max()) >= 2 ** 31):
        raise ValueError(f"{name} does not fit in int32")
    return t.to(torch.int32).contiguous()


# -- SqueezeLLM --------------------------------------------------------------------------------
def _unpack_squeezellm(qweight: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """Codes [N, K] from SqueezeLLM words [K*bits/32, N] (a little-endian bit stream per column)."""
    words = qweight.to(torch.int64) & 0xFFFFFFFF  # [W, N], unsigned
    kk = torch.arange(k, device=qweight.device)
    offset = kk * bits  # bit position of code k in the column's stream
    lo_word, shift = offset // 32, offset % 32
    hi_word = (lo_word + 1).clamp(max=words.shape[0] - 1)
    lo = words[lo_word]  # [K, N]
    hi = words[hi_word] & 0xFF  # only the few bits that can spill over
    stream = lo | (hi << 32)
    return ((stream >> shift[:, None]) & (2 ** bits - 1)).t()


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
    if bits == 4:
        packed = qweight.contiguous().clone()  # same layout as lowbit's 4-bit packing
    else:
        packed = pack_codes(_unpack_squeezellm(qweight, bits, k), bits)
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


# -- bitsandbytes NF4 --------------------------------------------------------------------------
def _nf4_group(k: int, blocksize: int) -> int:
    """The widest lowbit group (per channel, 128, 64, 32) that no bnb block boundary cuts."""
    if blocksize % k == 0:
        return -1  # each row lies inside one bnb block
    for g in (128, 64, 32):
        if k % g == 0 and blocksize % g == 0:
            return g
    raise ValueError(f"bitsandbytes blocksize={blocksize} with in_features K={k} gives blocks that do not align "
                     "with rows in groups of 32, 64, 128 or whole rows; lowbit cannot store it exactly")


def from_bnb_nf4(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, shape: Sequence[int]) -> QuantizedWeight:
    """An nf4 QuantizedWeight from bitsandbytes' packed NF4 bytes and float absmax (one per block).

    For bitsandbytes' compressed statistics (nested absmax), dequantize absmax first and pass the
    float values. A non-uint8 ``quant_storage`` tensor is reinterpreted as its bytes.
    """
    n, k = _shape(shape)
    packed = _tensor("packed", packed)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int):
        raise TypeError(f"blocksize must be an int, got {type(blocksize).__name__}")
    if blocksize <= 0:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if packed.dtype == torch.bool or packed.dtype.is_complex:
        raise TypeError(f"packed must hold bytes (uint8, or bitsandbytes' quant_storage dtype), got {packed.dtype}")
    if packed.dtype != torch.uint8:
        packed = packed.contiguous().view(torch.uint8)
    total = n * k
    if packed.numel() != (total + 1) // 2:
        raise ValueError(f"packed has {packed.numel()} bytes, expected {(total + 1) // 2} for shape {(n, k)}")
    blocks = -(-total // blocksize)
    absmax = _float_tensor("absmax", _tensor("absmax", absmax).reshape(-1), (blocks,))
    if absmax.device != packed.device:
        raise ValueError(f"absmax is on {absmax.device} but packed is on {packed.device}")
    flat = packed.reshape(-1).to(torch.int64)
    codes = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:total].reshape(n, k)
    group = _nf4_group(k, blocksize)
    g = k if group == -1 else group
    starts = torch.arange(n, device=packed.device)[None, :] * k + torch.arange(k // g, device=packed.device)[:, None] * g
    absmax_gn = absmax[starts // blocksize].contiguous()  # [G, N]
    return QuantizedWeight(Scheme.NF4, NF4Spec(group_size=group), (n, k),
                           {"qweight": pack_codes(codes, 4), "absmax": absmax_gn})


__all__ = ["from_squeezellm", "from_bnb_nf4"]
