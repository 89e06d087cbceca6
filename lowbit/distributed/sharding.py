"""shard(): the part of a QuantizedWeight that one tensor-parallel rank holds, exactly.

A weight W [N, K] splits along one of its two dimensions:

- ``dim=0`` (output rows, column-parallel): rank r keeps rows ``[r*N/world, (r+1)*N/world)``
  with everything that belongs to those rows: their codes, their columns of the group
  scales/zeros/absmax, their LUT rows, their CSR outlier rows (row pointers re-based to 0),
  their per-channel ternary gamma and their entries of the binary h.
- ``dim=1`` (input columns, row-parallel): rank r keeps columns ``[r*K/world, (r+1)*K/world)``:
  their codes, the groups that cover them (the split must fall on a group boundary), the
  outliers in those columns (column indices re-based) and their entries of the binary g;
  per-row and per-tensor metadata (LUTs, per-channel scales, gamma, h) is kept whole.
- A low-rank term W_hat + A B splits with it: A's rows for ``dim=0``, B's columns for ``dim=1``
  (the other factor whole), so the row-parallel partial sums add up to x B^T A^T.

Packed words are never cut: the codes of the slice are unpacked with
:func:`lowbit.reference.unpack_codes` and packed again with :func:`lowbit.reference.pack_codes`
(schemes with their own packing, the sign codes, through :func:`lowbit.reference.weight_codes` and
:func:`lowbit.reference.pack_weight_codes`),
so a shard is a whole-word packing of its own codes for any packing layout (3-bit included)
and is exact by construction: ``dequantize(shard(qw, d, r, w))`` equals the matching slice of
``dequantize(qw)`` bit for bit (with a low-rank term, up to float64 rounding of the product A B). A column split copies whole word columns instead when a probe
through those same two functions shows that the layout packs each output row on its own.
"""
from __future__ import annotations

import enum
import functools
import math

import torch

from ..formats import NF4Spec, QuantizedWeight, UniformSpec
from ..reference import pack_codes, pack_weight_codes, unpack_codes, weight_codes

_N_CHUNK = 4096  # output rows unpacked at a time by a column (K) split, to bound host memory
_MAX_LISTED = 16  # world sizes named in an error message


class ShardDim(enum.IntEnum):
    """Which dimension of W [N, K] a tensor-parallel split cuts."""

    OUTPUT = 0  # rows N: column-parallel (each rank computes a slice of y)
    INPUT = 1  # columns K: row-parallel (each rank computes a partial sum of y)

    @classmethod
    def parse(cls, value: "ShardDim | int") -> "ShardDim":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"dim must be 0 (output rows) or 1 (input columns), got {value!r}")
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"dim must be 0 (output rows, column-parallel) or 1 (input columns, "
                             f"row-parallel), got {value}") from None


def _check_world(rank: object, world: object) -> tuple[int, int]:
    for name, v in (("rank", rank), ("world", world)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    return rank, world


def split_unit(qw, dim: ShardDim | int) -> int:
    """The granularity a split along `dim` must respect: the group size for a K split of a grouped weight.

    `qw` is a QuantizedWeight or anything with its `spec` (a QuantLinear).
    """
    dim = ShardDim.parse(dim)
    if dim is ShardDim.INPUT and isinstance(qw.spec, (UniformSpec, NF4Spec)) and qw.spec.group_size != -1:
        return qw.spec.group_size
    return 1


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def valid_world_sizes(length: int, unit: int = 1) -> list[int]:
    """World sizes w that cut `length` into w equal parts, each a whole number of `unit`s."""
    if length % unit:
        return []
    return _divisors(length // unit)


def describe_sizes(sizes: list[int]) -> str:
    """A short human list of world sizes for error messages."""
    if not sizes:
        return "none"
    head = ", ".join(map(str, sizes[:_MAX_LISTED]))
    return head + (f", ... ({len(sizes)} in all)" if len(sizes) > _MAX_LISTED else "")


def check_shardable(qw: QuantizedWeight, dim: ShardDim | int, world: int, what: str = "weight") -> None:
    """Raise ValueError, naming the world sizes that work, when `qw` cannot split `world` ways along `dim`."""
    dim = ShardDim.parse(dim)
    _check_world(0, world)
    length = qw.shape[dim]
    unit = split_unit(qw, dim)
    if length % (world * unit) == 0:
        return
    name = "N (out_features)" if dim is ShardDim.OUTPUT else "K (in_features)"
    why = f"{name}={length} is not divisible by world={world}"
    if unit > 1 and length % world == 0:
        why = (f"K/world = {length // world} is not a multiple of group_size={unit}, so the split would cut "
               "a quantization group")
    raise ValueError(f"cannot shard {what} ({qw.scheme.value}, [N, K] = {list(qw.shape)}) along dim {int(dim)} "
                     f"into {world} parts: {why}; world sizes that work: "
                     f"{describe_sizes(valid_world_sizes(length, unit))}")


def shard_range(length: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s equal part of `length` (length must be divisible by world)."""
    part = length // world
    return rank * part, (rank + 1) * part


@functools.lru_cache(maxsize=None)
def columns_pack_independently(bits: int) -> bool:
    """True when the packing stores each output row's codes in its own word column.

    Probed through pack_codes/unpack_codes on random codes at lengths around word boundaries:
    packing a subset of rows must give exactly the same words as selecting those word columns
    of the full packing, and unpacking the selected columns must give back the rows' codes.
    """
    gen = torch.Generator().manual_seed(1234)
    rows = torch.tensor([4, 0, 2])
    for k in (1, 7, 31, 32, 33, 64, 95, 129, 300):
        codes = torch.randint(0, 2 ** bits, (6, k), generator=gen)
        packed = pack_codes(codes, bits)
        if packed.dim() != 2 or packed.shape[-1] != codes.shape[0]:
            return False
        cols = packed[:, rows]
        if not torch.equal(cols, pack_codes(codes[rows], bits)):
            return False
        if not torch.equal(unpack_codes(cols.contiguous(), bits, k), codes[rows]):
            return False
    return True


def _own(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy that does not keep the full tensor's storage alive."""
    return t.clone(memory_format=torch.contiguous_format)


def _codes_rows(qw: QuantizedWeight, n0: int, n1: int) -> torch.Tensor:
    packed = qw["qweight"]
    if columns_pack_independently(qw.bits):
        return _own(packed[:, n0:n1])
    return pack_codes(unpack_codes(packed, qw.bits, qw.K)[n0:n1], qw.bits)


def _codes_cols(qw: QuantizedWeight, k0: int, k1: int) -> torch.Tensor:
    packed = qw["qweight"]
    if not columns_pack_independently(qw.bits):
        return pack_codes(unpack_codes(packed, qw.bits, qw.K)[:, k0:k1], qw.bits)
    parts = [pack_codes(unpack_codes(packed[:, a:a + _N_CHUNK].contiguous(), qw.bits, qw.K)[:, k0:k1], qw.bits)
             for a in range(0, qw.N, _N_CHUNK)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1).contiguous()


def _csr_rows(qw: QuantizedWeight, n0: int, n1: int) -> dict[str, torch.Tensor]:
    rp = qw["row_ptr"]
    p0, p1 = int(rp[n0]), int(rp[n1])
    return {"row_ptr": _own(rp[n0:n1 + 1] - rp[n0]), "col_idx": _own(qw["col_idx"][p0:p1]),
            "values": _own(qw["values"][p0:p1])}


def _csr_cols(qw: QuantizedWeight, k0: int, k1: int) -> dict[str, torch.Tensor]:
    rp, ci = qw["row_ptr"].to(torch.int64), qw["col_idx"]
    keep = (ci >= k0) & (ci < k1)
    rows = torch.repeat_interleave(torch.arange(qw.N, device=ci.device), rp[1:] - rp[:-1])
    counts = torch.bincount(rows[keep], minlength=qw.N)
    row_ptr = torch.zeros(qw.N + 1, dtype=torch.int64, device=ci.device)
    row_ptr[1:] = torch.cumsum(counts, 0)
    return {"row_ptr": row_ptr.to(torch.int32), "col_idx": (ci[keep] - k0).to(torch.int32).contiguous(),
            "values": _own(qw["values"][keep])}


def shard(qw: QuantizedWeight, dim: ShardDim | int, rank: int, world: int) -> QuantizedWeight:
    """Rank `rank`'s exact part of `qw` when split `world` ways along `dim` (0: output rows, 1: input columns).

    Raises ValueError naming the world sizes that work when the split would be uneven or would
    cut a quantization group, and TypeError for a non-QuantizedWeight.
    """
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"shard needs a lowbit.QuantizedWeight, got {type(qw).__name__}")
    dim = ShardDim.parse(dim)
    rank, world = _check_world(rank, world)
    check_shardable(qw, dim, world)
    if world == 1:
        return QuantizedWeight(qw.scheme, qw.spec, qw.shape, {k: _own(v) for k, v in qw.tensors.items()})
    n, k = qw.shape
    a, b = shard_range(qw.shape[dim], rank, world)
    rules = qw.tensor_rules()  # the low-rank factors too: A [N, r] splits by rows, B [r, K] by columns
    out: dict[str, torch.Tensor] = {}
    if "row_ptr" in rules:
        out.update(_csr_rows(qw, a, b) if dim is ShardDim.OUTPUT else _csr_cols(qw, a, b))
    group = qw.spec.effective_group(k) if isinstance(qw.spec, (UniformSpec, NF4Spec)) else None
    for name, rule in rules.items():
        if name in out:
            continue
        t = qw[name]
        if rule.shape == ("Kw", "N"):
            out[name] = _codes_rows(qw, a, b) if dim is ShardDim.OUTPUT else _codes_cols(qw, a, b)
            continue
        if name == "qweight":  # a scheme-specific packing (sign codes: lanes across rows)
            codes = weight_codes(qw)
            codes = codes[a:b] if dim is ShardDim.OUTPUT else codes[:, a:b]
            out[name] = pack_weight_codes(qw.scheme, qw.spec, codes)
            continue
        index = []
        for axis in rule.shape:
            if axis == "N" and dim is ShardDim.OUTPUT:
                index.append(slice(a, b))
            elif axis == "K" and dim is ShardDim.INPUT:
                index.append(slice(a, b))
            elif axis == "G" and dim is ShardDim.INPUT:
                # per channel (group = K): one group spans the whole row and stays valid for any slice
                index.append(slice(None) if group == k else slice(a // group, b // group))
            elif axis in ("N", "K", "G", "L", "r") or isinstance(axis, int):
                index.append(slice(None))
            else:
                raise NotImplementedError(f"shard does not know how to split {qw.scheme.value} tensor {name!r} "
                                          f"with shape {rule.shape}")
        out[name] = _own(t[tuple(index)])
    shape = (b - a, k) if dim is ShardDim.OUTPUT else (n, b - a)
    return QuantizedWeight(qw.scheme, qw.spec, shape, out)
