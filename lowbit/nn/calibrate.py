"""activation_scales: per-input-channel activation magnitudes of a model's linear layers, from calibration runs.

The result is what ``quantize_(model, scheme, lowrank=r, act_scale=...)`` takes for the
activation-aware low-rank correction: {layer name: [K] float32 tensor}, the mean of |x| over
every row (token) each layer saw while ``run`` executed.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .linear import is_float_linear, linear_shape
from .swap import FilterFn, linear_layers

# A channel that never saw a nonzero input gets this fraction of its layer's largest magnitude, so the
# scale stays positive (quantize_weight requires it) and the channel's error weighs almost nothing.
DEAD_CHANNEL_FLOOR = 1e-6


def activation_scales(model: nn.Module, run: Callable[[], object], *,
                      filter_fn: FilterFn | None = None) -> dict[str, torch.Tensor]:
    """Call ``run()`` (which feeds calibration data through `model`) and return {fqn: mean |x| per input channel}.

    Covers every float ``nn.Linear`` / GPT-2 ``Conv1D`` that quantize_ could swap (``filter_fn(module,
    fqn)`` narrows them); a module shared under several names gets the same tensor at each. Entries
    are float32 [K] on the layer's device, floored at DEAD_CHANNEL_FLOOR x their maximum (all ones for
    a layer whose inputs were all zero). Layers ``run`` never reached are left out. Hooks are removed
    afterwards, even when ``run`` raises.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"activation_scales needs an nn.Module, got {type(model).__name__}")
    if not callable(run):
        raise TypeError(f"run must be a callable that runs calibration inputs through the model, got "
                        f"{type(run).__name__}")
    if filter_fn is not None and not callable(filter_fn):
        raise TypeError(f"filter_fn must be callable(module, fqn) -> bool, got {type(filter_fn).__name__}")
    names: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for fqn, mod in linear_layers(model).items():
        if is_float_linear(mod) and (filter_fn is None or filter_fn(mod, fqn)):
            names.setdefault(id(mod), []).append(fqn)
            modules[id(mod)] = mod
    sums: dict[int, torch.Tensor] = {}
    rows: dict[int, int] = {}

    def hook(module, args):
        x = args[0].detach()
        k = linear_shape(module)[1]
        flat = x.reshape(-1, k).abs().to(torch.float64)
        key = id(module)
        sums[key] = sums.get(key, 0) + flat.sum(dim=0)
        rows[key] = rows.get(key, 0) + flat.shape[0]

    handles = [m.register_forward_pre_hook(hook) for m in modules.values()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    out = {}
    for key, total in sums.items():
        mean = (total / max(rows[key], 1)).to(torch.float32)
        top = float(mean.max())
        mean = torch.ones_like(mean) if top <= 0 else mean.clamp(min=DEAD_CHANNEL_FLOOR * top)
        for fqn in names[key]:
            out[fqn] = mean
    return out
