"""Plain-PyTorch oracle for every scheme: quantizers, pack/unpack, dequantize and linear.

The kernels in :mod:`lowbit.kernels` are tested against these functions; names match
(``reference.linear`` <-> ``kernels.linear``).
"""
from __future__ import annotations

import torch

from .._checks import check_linear_args, check_weight
from ..formats import (ActivationQuant, BinarySpec, LUTSpec, NF4Spec, QuantizedWeight, Scheme, TernarySpec,
                       UniformSpec, code_bits, make_spec, spec_type)
from . import binary, lut, nf4, ternary, uniform
from .packing import pack_codes, unpack_codes

__all__ = ["quantize_weight", "dequantize", "linear", "pack_codes", "unpack_codes", "weight_codes",
           "pack_weight_codes", "binary", "lut", "nf4", "ternary", "uniform"]

# The reference module of each spec class: its quantize(w, spec, **quantizer options) and dequantize(qw, dtype).
MODULES = {UniformSpec: uniform, NF4Spec: nf4, LUTSpec: lut, TernarySpec: ternary, BinarySpec: binary}


def _module(scheme: Scheme):
    return MODULES[spec_type(scheme)]


def weight_codes(qw: QuantizedWeight) -> torch.Tensor:
    """The integer codes [N, K] a weight's ``qweight`` stores, whatever its packing (int64).

    Schemes whose reference module packs its own layout (``pack``/``unpack``: ternary t + 1, binary
    sign bits) unpack through it; the others through :func:`unpack_codes`.
    """
    unpack = getattr(_module(qw.scheme), "unpack", None)
    if unpack is not None:
        return unpack(qw["qweight"], qw.spec, qw.shape)
    return unpack_codes(qw["qweight"], qw.bits, qw.K)


def pack_weight_codes(scheme: Scheme | str, spec, codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`weight_codes`: codes [N, K] -> the ``qweight`` of `scheme` with `spec`."""
    scheme = Scheme.parse(scheme)
    pack = getattr(_module(scheme), "pack", None)
    if pack is not None:
        return pack(codes, spec)
    return pack_codes(codes, code_bits(scheme))


def quantize_weight(w: torch.Tensor, scheme: Scheme | str, **options) -> QuantizedWeight:
    """Quantize a float [N, K] weight with `scheme`; options: group_size, symmetric, outlier_fraction, sensitivity."""
    scheme = Scheme.parse(scheme)
    spec = make_spec(scheme, **options)  # rejects unknown options first
    check_weight(w)
    w = w.detach()
    n, k = w.shape
    if hasattr(spec, "effective_group") and k % spec.effective_group(k):
        raise ValueError(f"K={k} (in_features) is not divisible by group_size={spec.group_size}")
    extra = {name: options[name] for name in type(spec).QUANTIZER_OPTIONS if name in options}
    tensors = _module(scheme).quantize(w, spec, **extra)
    return QuantizedWeight(scheme, spec, (n, k), tensors)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] weight the stored codes and metadata represent."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"dequantize needs a lowbit.QuantizedWeight, got {type(qw).__name__}")
    return _module(qw.scheme).dequantize(qw, dtype)


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x . W^T + b computed in float64 from the stored format (BitNet's A8 formula for ternary).

    Also accepts float64 x (the oracle's own precision). Returns x's dtype unless `out_dtype` is given (tests pass float64 to keep the oracle unrounded).
    """
    check_linear_args(x, qw, bias, allow_fp64=True)
    out_dtype = out_dtype or x.dtype
    if isinstance(qw.spec, TernarySpec) and qw.spec.activation is ActivationQuant.INT8_PER_TOKEN:
        return ternary.linear_a8(x, qw, bias, out_dtype)
    w = dequantize(qw, torch.float64)
    y = x.to(torch.float64) @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float64)
    return y.to(out_dtype)
