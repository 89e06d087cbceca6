"""quantize_: swap a model's nn.Linear (and GPT-2 Conv1D) layers for QuantLinear in place.

Rules (documented in :func:`quantize_`): only modules whose type is exactly ``nn.Linear``, or
transformers' ``Conv1D``, are candidates; existing QuantLinear layers are never re-quantized (a
second call is a no-op for them, so several calls can give different parts of a model different
schemes); every layer is checked and quantized before any is swapped, so an error leaves the
model untouched.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from ..formats import NF4Spec, Scheme, UniformSpec, make_spec
from .linear import Backend, QuantLinear, is_float_linear, linear_shape

FilterFn = Callable[[nn.Module, str], bool]
# act_scale of quantize_: {layer name: [K] tensor}, or (module, fqn) -> [K] tensor or None
ActScale = dict[str, torch.Tensor] | Callable[[nn.Module, str], "torch.Tensor | None"]


def skip_matches(fqn: str, pattern: str) -> bool:
    """A skip entry names a layer by its full name, its last components, or a parent module."""
    return fqn == pattern or fqn.endswith("." + pattern) or fqn.startswith(pattern + ".")


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / Conv1D / QuantLinear by qualified name, shared modules listed at each of their names."""
    out = {}
    for fqn, mod in model.named_modules(remove_duplicate=False):
        if fqn and (is_float_linear(mod) or isinstance(mod, QuantLinear)):
            out[fqn] = mod
    return out


def swap_modules(model: nn.Module, new: dict[str, nn.Module]) -> None:
    """Put every module of `new` ({dotted name: module}) into `model`, all or nothing.

    If any assignment fails (a parent whose __setattr__ refuses, a name that no longer exists),
    the ones already made are undone in reverse order before the error propagates, so the model
    is never left half swapped.
    """
    done: list[tuple[str, nn.Module]] = []
    try:
        for fqn, module in new.items():
            old = model.get_submodule(fqn)
            set_submodule(model, fqn, module)
            done.append((fqn, old))
    except BaseException:
        for fqn, old in reversed(done):
            set_submodule(model, fqn, old)
        raise


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at dotted name `fqn` (works inside nn.Sequential/ModuleList too)."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def group_conflict(spec, in_features: int) -> int | None:
    """The group size that does not divide `in_features`, or None when the layer fits the spec."""
    if isinstance(spec, (UniformSpec, NF4Spec)) and spec.group_size != -1 and in_features % spec.group_size:
        return spec.group_size
    return None


def quantize_(model: nn.Module, scheme: Scheme | str, *, filter_fn: FilterFn | None = None,
              skip: Iterable[str] = ("lm_head",), skip_incompatible: bool = False,
              backend: Backend | str = Backend.TRITON,
              sensitivity: dict[str, torch.Tensor] | None = None, act_scale: ActScale | None = None,
              **options) -> nn.Module:
    """Replace the model's nn.Linear layers with QuantLinear(scheme, **options) in place; returns `model`.

    - Candidates are modules whose type is exactly ``nn.Linear`` (subclasses such as
      MultiheadAttention's out_proj, whose ``.weight`` is read directly, are left alone) and
      transformers' GPT-2 ``Conv1D`` (weight stored [in, out]; recognised by class name and
      module, so lowbit does not import transformers).
    - ``skip``: names of layers to keep in float; an entry matches a layer's full name, its
      trailing components (``"lm_head"`` matches ``"model.lm_head"``) or a parent module
      (``"encoder.layer.0"``). The default keeps ``lm_head`` (often tied to the embeddings).
    - ``filter_fn(module, fqn) -> bool``: quantize only the layers for which it returns True.
    - Layers that are already QuantLinear are left exactly as they are: calling quantize_
      twice is a no-op for them (a warning says so when a call swaps nothing), and calls with
      different filters can mix schemes in one model.
    - A layer whose ``in_features`` is not divisible by ``group_size`` raises ValueError naming
      it, unless ``skip_incompatible=True``, which keeps such layers in float (with a warning).
    - ``sensitivity``: optional {fqn: [N, K] tensor} for the lut*/sq* k-means.
    - ``lowrank=r`` (any scheme) adds the rank-r low-rank correction of each layer's quantization
      error. ``act_scale`` makes it activation-aware: a dict {fqn: [K] positive tensor} (layers
      it does not name get the plain SVD, entries of layers not being quantized are ignored, names
      the model lacks raise; :func:`lowbit.nn.activation_scales` measures one from calibration
      inputs) or a callable ``(module, fqn) -> [K] tensor or None``.
    - Options (``group_size``, ``symmetric``, ``outlier_fraction``, ``per_channel``, ``iters``,
      ``lowrank``) are those of :func:`lowbit.quantize_weight`. ``backend`` is passed to every QuantLinear.

    - A layer shared under several names (tied weights) is quantized once, as one QuantLinear at
      every name, when all its names are selected; when only some are (e.g. one name is the skipped
      ``lm_head``), it stays in float everywhere and a warning names its paths, so a tie never breaks.

    All checks and quantization happen before the first swap, and the swap itself is all or
    nothing: on any error the model is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_ needs an nn.Module, got {type(model).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, fqn) -> bool, got {type(filter_fn).__name__}")
    if isinstance(skip, str):
        skip = (skip,)
    skip = tuple(skip or ())
    scheme = Scheme.parse(scheme)
    backend = Backend.parse(backend)
    spec = make_spec(scheme, **options)  # rejects unknown options before any work
    if sensitivity is not None and not isinstance(sensitivity, dict):
        raise TypeError("sensitivity must be a dict {layer name: [N, K] tensor} for quantize_ "
                        "(use QuantLinear.from_linear for a single layer)")
    if act_scale is not None:
        if not (isinstance(act_scale, dict) or callable(act_scale)):
            raise TypeError("act_scale must be a dict {layer name: [K] tensor} or a callable (module, fqn) -> [K] "
                            f"tensor for quantize_, got {type(act_scale).__name__} (use QuantLinear.from_linear "
                            "for a single layer)")
        if not options.get("lowrank"):
            raise ValueError("act_scale only shapes the low-rank correction; pass lowrank=r > 0 with it")

    layers = linear_layers(model)
    already = [fqn for fqn, m in layers.items() if isinstance(m, QuantLinear)]
    chosen: list[str] = []
    incompatible: list[str] = []
    for fqn, mod in layers.items():
        if isinstance(mod, QuantLinear) or any(skip_matches(fqn, s) for s in skip):
            continue
        if filter_fn is not None and not filter_fn(mod, fqn):
            continue
        in_features = linear_shape(mod)[1]
        gs = group_conflict(spec, in_features)
        if gs is not None:
            if not skip_incompatible:
                raise ValueError(f"layer {fqn!r} has in_features={in_features}, which is not divisible by "
                                 f"group_size={gs}; choose another group_size (or -1), skip the layer, "
                                 "or pass skip_incompatible=True to keep such layers in float")
            incompatible.append(fqn)
            continue
        chosen.append(fqn)
    chosen, split_ties = _keep_ties(layers, chosen)
    if sensitivity is not None:
        unknown = sorted(set(sensitivity) - set(chosen))
        if unknown:
            raise ValueError(f"sensitivity names layers that are not being quantized: {unknown}")
    if isinstance(act_scale, dict):  # entries of skipped or filtered layers are ignored, unknown names are not
        unknown = sorted(set(act_scale) - set(layers))
        if unknown:
            raise ValueError(f"act_scale names layers the model does not have: {unknown}")

    # Quantize everything first (a module shared under several names is quantized once).
    new_by_id: dict[int, QuantLinear] = {}
    for fqn in chosen:
        mod = layers[fqn]
        if id(mod) in new_by_id:
            continue
        opts = dict(options)
        if sensitivity is not None and fqn in sensitivity:
            opts["sensitivity"] = sensitivity[fqn]
        scale = _act_scale_of(act_scale, mod, fqn)
        if scale is not None:
            opts["act_scale"] = scale
        try:
            new_by_id[id(mod)] = QuantLinear.from_linear(mod, scheme, backend=backend, **opts)
        except (ValueError, TypeError) as e:
            raise type(e)(f"layer {fqn!r}: {e}") from e
    swap_modules(model, {fqn: new_by_id[id(layers[fqn])] for fqn in chosen})

    for names in split_ties:
        warnings.warn(f"quantize_: kept the layer shared as {names} in float: only some of its names were "
                      "selected (skip, filter_fn or group size), and quantizing one name would break the tie",
                      stacklevel=2)
    if incompatible:
        warnings.warn(f"quantize_: kept {len(incompatible)} layer(s) in float because in_features is not "
                      f"divisible by group_size: {incompatible}", stacklevel=2)
    if not chosen and already:
        warnings.warn(f"quantize_ swapped no layers: {len(already)} layer(s) are already QuantLinear and are "
                      "left unchanged", stacklevel=2)
    return model


def _act_scale_of(act_scale: ActScale | None, module: nn.Module, fqn: str) -> torch.Tensor | None:
    """The act_scale of one layer from quantize_'s dict or callable (None: plain SVD)."""
    if act_scale is None:
        return None
    if isinstance(act_scale, dict):
        return act_scale.get(fqn)
    return act_scale(module, fqn)


def _keep_ties(layers: dict[str, nn.Module], chosen: list[str]) -> tuple[list[str], list[list[str]]]:
    """Drop from `chosen` the names of shared modules not chosen under every name; returns (kept, dropped ties)."""
    names_of: dict[int, list[str]] = {}
    for fqn, mod in layers.items():
        names_of.setdefault(id(mod), []).append(fqn)
    picked = set(chosen)
    split = [names for names in names_of.values()
             if len(names) > 1 and any(n in picked for n in names) and not all(n in picked for n in names)]
    dropped = {n for names in split for n in names}
    return [f for f in chosen if f not in dropped], split
