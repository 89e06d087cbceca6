"""Shared pieces of the importers: argument checks, bit-stream unpacking and group remapping.

Every importer reads the foreign tensors on the host (importing is offline), turns them into
integer codes [N, K] plus scales/zeros that reproduce the foreign dequantization exactly, and
packs the codes with :func:`lowbit.reference.pack_codes` (never by hand), so the result follows
lowbit's own layout whatever it is.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..formats import FLOAT_DTYPES, VALID_GROUP_SIZES, QuantizedWeight, Scheme, UniformSpec
from ..reference.packing import pack_codes

UNIFORM_BY_BITS = {1: Scheme.INT1, 2: Scheme.INT2, 3: Scheme.INT3, 4: Scheme.INT4, 8: Scheme.INT8}


class Refused(ValueError):
    """A foreign weight lowbit cannot store exactly; the message says why (bits, act-order, axis, ...)."""


def check_shape(shape) -> tuple[int, int]:
    if not isinstance(shape, Sequence) or len(shape) != 2 or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise TypeError(f"shape must be a pair of ints (N, K), got {shape!r}")
    n, k = shape
    if n <= 0 or k <= 0:
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    return n, k


def check_int(name: str, value, allowed: Sequence[int] | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if allowed is not None and value not in allowed:
        raise Refused(f"{name}={value} is not supported; lowbit imports {name} in {sorted(allowed)}")
    return value


def tensor(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def int_tensor(name: str, t, shape: tuple, dtypes=(torch.int32,)) -> torch.Tensor:
    t = tensor(name, t)
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(str(d) for d in dtypes)}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


def float_tensor(name: str, t, shape: tuple) -> torch.Tensor:
    t = tensor(name, t)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return t.contiguous()


def index_tensor(name: str, t, length: int | None) -> torch.Tensor:
    t = tensor(name, t)
    if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
        raise TypeError(f"{name} must be a 1-D int32 or int64 tensor, got {t.dtype} with shape {tuple(t.shape)}")
    if length is not None and t.numel() != length:
        raise ValueError(f"{name} has {t.numel()} entries, expected {length}")
    if t.numel() and (int(t.min()) < -2 ** 31 or int(t.max()) >= 2 ** 31):
        raise ValueError(f"{name} does not fit in int32")
    return t.to(torch.int32).contiguous()


def same_device(**tensors: torch.Tensor) -> torch.device:
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        raise ValueError(f"{', '.join(tensors)} must be on one device, got {sorted(map(str, devices))}")
    return devices.pop()


def stream_words(count: int, bits: int) -> int:
    """int32 words that hold `count` codes of `bits` bits as one continuous bit stream."""
    return -(-count * bits // 32)


def unpack_stream(words: torch.Tensor, bits: int, count: int, dim: int = 0) -> torch.Tensor:
    """Codes from int32 words that form one little-endian bit stream per line along `dim`.

    Code i of a line starts at bit ``i * bits`` of the stream (bit b of word w is stream bit
    ``32 * w + b``), so codes may straddle two words (3-bit GPTQ/SqueezeLLM, dense
    compressed-tensors). For bits in {1, 2, 4, 8} this is the plain "32 // bits codes per word,
    code j at bit j * bits" layout. Returns int64 codes with `count` entries along `dim`.
    """
    if words.dtype != torch.int32:
        raise TypeError(f"packed words must be int32, got {words.dtype}")
    w = words.movedim(dim, 0).to(torch.int64) & 0xFFFFFFFF  # [W, ...] unsigned
    need = stream_words(count, bits)
    if w.shape[0] < need:
        raise ValueError(f"{w.shape[0]} packed words along dim {dim} cannot hold {count} {bits}-bit codes")
    i = torch.arange(count, device=words.device) * bits
    lo_word, shift = i // 32, i % 32
    hi_word = (lo_word + 1).clamp(max=w.shape[0] - 1)
    view = (-1,) + (1,) * (w.dim() - 1)
    lo = w[lo_word] >> shift.view(view)
    hi = w[hi_word] << (32 - shift).view(view)  # bits that continue into the next word (masked off otherwise)
    codes = (lo | hi) & (2 ** bits - 1)
    return codes.movedim(0, dim)


def pick_group(foreign_group: int, k: int) -> int:
    """The lowbit group size that serves groups of `foreign_group` inputs exactly (-1: one group per row).

    A lowbit group must lie inside one foreign group, so it is the largest of 128/64/32 that
    divides both the foreign group size and K; a foreign group covering all of K is per channel.
    """
    if foreign_group >= k:
        return -1
    for g in (128, 64, 32):
        if foreign_group % g == 0 and k % g == 0:
            return g
    raise Refused(f"group size {foreign_group} with in_features K={k} cannot be served exactly: lowbit groups are "
                  f"{[g for g in VALID_GROUP_SIZES if g > 0]} inputs (or whole rows) and each must lie in one "
                  "foreign group")


def expand_groups(per_group: torch.Tensor, foreign_group: int, group: int, k: int) -> torch.Tensor:
    """[Gf, N] metadata of foreign groups -> [G, N] of lowbit groups (values repeated, never rounded)."""
    g = k if group == -1 else group
    starts = torch.arange(k // g, device=per_group.device) * g
    return per_group[starts // foreign_group].contiguous()


def uniform_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, bits: int,
                   foreign_group: int) -> QuantizedWeight:
    """A lowbit int-b QuantizedWeight with W = (q - z) * s from codes [N, K] and per-foreign-group [Gf, N] metadata.

    `zeros` None means the codes are already centred on lowbit's symmetric zero. Zeros that
    all equal lowbit's symmetric zero are dropped (the symmetric spec stores none). 5- to 7-bit
    codes are stored as int8 (same values, wider codes). Zeros are stored in the scales' dtype,
    which must hold them exactly (integers up to 256 do in fp16 and bf16; fractional zeros keep
    their own dtype).
    """
    n, k = codes.shape
    if bits in (5, 6, 7):
        bits = 8
    if bits not in UNIFORM_BY_BITS:
        raise Refused(f"{bits}-bit codes have no lowbit scheme (int1, int2, int3, int4, int8)")
    group = pick_group(foreign_group, k)
    spec_sym = UniformSpec(bits=bits, group_size=group, symmetric=True)
    s = expand_groups(scales, foreign_group, group, k)
    tensors = {"qweight": pack_codes(codes, bits), "scales": s}
    symmetric = zeros is None or bool((zeros == spec_sym.symmetric_zero).all())
    if not symmetric:
        z = expand_groups(zeros, foreign_group, group, k)
        if not z.dtype.is_floating_point:
            zf = z.to(s.dtype)
            if not torch.equal(zf.to(torch.float64), z.to(torch.float64)):
                zf = z.to(torch.float32)  # integers a 16-bit float cannot hold exactly
            z = zf
        tensors["zeros"] = z.contiguous()
    spec = UniformSpec(bits=bits, group_size=group, symmetric=symmetric)
    return QuantizedWeight(UNIFORM_BY_BITS[bits], spec, (n, k), tensors)


def check_trivial_g_idx(g_idx: torch.Tensor | None, k: int, group: int, what: str) -> None:
    """Accept a g_idx only when it is k // group for every input k (no activation reordering)."""
    if g_idx is None:
        return
    g_idx = index_tensor(what, g_idx, k).to(torch.int64)
    expect = torch.arange(k, device=g_idx.device) // group
    if not torch.equal(g_idx, expect):
        raise Refused(f"act-order: {what} is not k // group_size (inputs are reordered into groups, "
                      "desc_act / actorder); lowbit's groups are runs of consecutive inputs and serving a "
                      "reordered layer would need a permutation of the activations. Re-quantize without "
                      "act-order (or with static groups)")
