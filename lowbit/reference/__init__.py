"""Plain-PyTorch oracle for every scheme: quantizers, pack/unpack, dequantize and linear.

The kernels in :mod:`lowbit.kernels` are tested against these functions; names match
(``reference.linear`` <-> ``kernels.linear``).
"""
from __future__ import annotations

import torch

from .._checks import check_linear_args, check_weight
from ..formats import (ActivationQuant, BinarySpec, LUTSpec, NF4Spec, QuantizedWeight, Scheme, TernarySpec,
                       UniformSpec, LOWRANK_TENSORS, check_rank, code_bits, make_spec, spec_type)
from . import binary, lowrank, lut, nf4, ternary, uniform
from .packing import pack_codes, unpack_codes

__all__ = ["quantize_weight", "with_lowrank", "dequantize", "linear", "pack_codes", "unpack_codes", "weight_codes",
           "pack_weight_codes", "binary", "lowrank", "lut", "nf4", "ternary", "uniform"]

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
    """Quantize a float [N, K] weight with `scheme`.

    Options: those of the scheme (group_size, symmetric, outlier_fraction, per_channel; sensitivity and
    iters for lut*/sq*), and for every scheme ``lowrank=r`` (default 0): add the rank-r low-rank
    correction A B of the quantization error (see :mod:`lowbit.reference.lowrank`), with an optional
    ``act_scale`` [K] (positive per-input-channel activation magnitudes) for its activation-aware form.
    """
    scheme = Scheme.parse(scheme)
    spec = make_spec(scheme, **options)  # rejects unknown options first
    check_weight(w)
    w = w.detach()
    n, k = w.shape
    rank = check_rank(options.get("lowrank", 0), n, k)
    act_scale = options.get("act_scale")
    if act_scale is not None:
        if rank == 0:
            raise ValueError("act_scale only shapes the low-rank correction; pass lowrank=r > 0 with it")
        act_scale = lowrank.check_act_scale(act_scale, k, w.device)
    if hasattr(spec, "effective_group") and k % spec.effective_group(k):
        raise ValueError(f"K={k} (in_features) is not divisible by group_size={spec.group_size}")
    extra = {name: options[name] for name in type(spec).QUANTIZER_OPTIONS if name in options}
    tensors = _module(scheme).quantize(w, spec, **extra)
    qw = QuantizedWeight(scheme, spec, (n, k), tensors)
    return _add_lowrank(qw, w, rank, act_scale) if rank else qw


def with_lowrank(qw: QuantizedWeight, w: torch.Tensor, rank: int, act_scale: torch.Tensor | None = None
                 ) -> QuantizedWeight:
    """A copy of `qw` whose low-rank term (replacing any it had) corrects its error against the float weight `w`.

    Same factors as ``quantize_weight(w, scheme, lowrank=rank, act_scale=...)`` when `qw` came from
    quantizing `w`; also works for weights quantized elsewhere (e.g. imported GPTQ codes) given the
    float weight they came from. ``rank=0`` returns `qw` without a term.
    """
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"with_lowrank needs a lowbit.QuantizedWeight, got {type(qw).__name__}")
    qw.check_layout()
    check_weight(w)
    if tuple(w.shape) != qw.shape:
        raise ValueError(f"w has shape {tuple(w.shape)} but the quantized weight is {list(qw.shape)}")
    rank = check_rank(rank, *qw.shape)
    if act_scale is not None:
        if rank == 0:
            raise ValueError("act_scale only shapes the low-rank correction; pass rank > 0 with it")
        act_scale = lowrank.check_act_scale(act_scale, qw.K, qw.device)
    base = QuantizedWeight(qw.scheme, qw.spec, qw.shape,
                           {k: v for k, v in qw.tensors.items() if k not in LOWRANK_TENSORS})
    return _add_lowrank(base, w.detach().to(qw.device), rank, act_scale) if rank else base


def _add_lowrank(qw: QuantizedWeight, w: torch.Tensor, rank: int, act_scale: torch.Tensor | None) -> QuantizedWeight:
    """qw (no term) plus the rank-`rank` factors of w - W_hat (act_scale already checked)."""
    error = w.to(torch.float64) - _module(qw.scheme).dequantize(qw, torch.float64)
    return QuantizedWeight(qw.scheme, qw.spec, qw.shape, {**qw.tensors, **lowrank.factors(error, rank, act_scale)})


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] weight the stored tensors represent: W_hat from the codes and metadata, plus A B when the
    weight carries a low-rank correction (summed in float64, then cast to `dtype`)."""
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"dequantize needs a lowbit.QuantizedWeight, got {type(qw).__name__}")
    qw.check_layout()
    if not qw.lowrank:
        return _module(qw.scheme).dequantize(qw, dtype)
    return (_module(qw.scheme).dequantize(qw, torch.float64) + lowrank.product(qw)).to(dtype)


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x . W^T + b computed in float64 from the stored format (BitNet's A8 formula for ternary).

    With a low-rank correction: y = x . W_hat^T + (x . B^T) . A^T + b, the second term from x as given
    (float64; for ternary W1.58A8 too: the correction never sees the int8 activations).
    Also accepts float64 x (the oracle's own precision). Returns x's dtype unless `out_dtype` is given (tests pass float64 to keep the oracle unrounded).
    """
    check_linear_args(x, qw, bias, allow_fp64=True)
    out_dtype = out_dtype or x.dtype
    if isinstance(qw.spec, TernarySpec) and qw.spec.activation is ActivationQuant.INT8_PER_TOKEN:
        y = ternary.linear_a8(x, qw, bias, torch.float64)
    else:
        w = _module(qw.scheme).dequantize(qw, torch.float64)
        y = x.to(torch.float64) @ w.t()
        if bias is not None:
            y = y + bias.to(torch.float64)
    if qw.lowrank:
        y = y + lowrank.apply(x, qw)
    return y.to(out_dtype)
