"""parallelize_: turn a quantized model's QuantLinear layers into tensor-parallel ones, by a plan.

A plan maps layer-name patterns to a :class:`Style` (or the strings ``"colwise"`` /
``"rowwise"``, as in Hugging Face's ``base_model_tp_plan``, or a :class:`LayerPlan`). A pattern
matches a layer when it equals the layer's full name or its trailing components, with ``*``
wildcards (``"*.q_proj"`` and ``"layers.*.self_attn.q_proj"`` both match
``"model.layers.0.self_attn.q_proj"``).

Column-parallel outputs stay sharded when the layer's parent module also holds a row-parallel
layer of the plan (q/k/v feed o_proj through per-head attention; gate/up feed down_proj),
and are all-gathered otherwise; :class:`LayerPlan` can force either.

Everything is checked on every rank before any collective or any change to the model, so a
world size that does not fit raises the same ValueError on every rank and none of them waits
in a collective for the others.
"""
from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass
from typing import Mapping

from torch import nn

from ..nn.linear import QuantLinear
from ..nn.swap import swap_modules
from . import collectives
from .modules import ColumnParallelQuantLinear, RowParallelQuantLinear, _ParallelMixin
from .sharding import ShardDim, describe_sizes, split_unit, valid_world_sizes


class Style(str, enum.Enum):
    """How one linear layer is split: by output features (column) or input features (row)."""

    COLUMN = "colwise"
    ROW = "rowwise"

    @classmethod
    def parse(cls, value: "Style | str") -> "Style":
        if isinstance(value, Style):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown parallel style {value!r}; lowbit supports 'colwise' and 'rowwise'") from None


@dataclass(frozen=True)
class LayerPlan:
    """The style of one layer; ``gather_output`` (column only): None = decide from the plan."""

    style: Style
    gather_output: bool | None = None

    def __post_init__(self):
        object.__setattr__(self, "style", Style.parse(self.style))
        if self.gather_output is not None and self.style is Style.ROW:
            raise ValueError("gather_output applies to column-parallel layers only")


PlanEntry = "Style | str | LayerPlan"

MEGATRON_PLAN: dict[str, Style] = {
    "*.q_proj": Style.COLUMN, "*.k_proj": Style.COLUMN, "*.v_proj": Style.COLUMN, "*.o_proj": Style.ROW,
    "*.gate_proj": Style.COLUMN, "*.up_proj": Style.COLUMN, "*.down_proj": Style.ROW,
}


def megatron_plan() -> dict[str, Style]:
    """Attention q/k/v and MLP gate/up column-parallel, o_proj and down_proj row-parallel (Llama names)."""
    return dict(MEGATRON_PLAN)


def plan_from_hf(model: nn.Module) -> dict[str, Style]:
    """The plan a Hugging Face model declares in ``config.base_model_tp_plan`` (colwise/rowwise entries only)."""
    cfg = getattr(model, "config", None)
    tp = getattr(cfg, "base_model_tp_plan", None)
    if not tp:
        raise ValueError(f"{type(model).__name__} has no config.base_model_tp_plan; pass a plan, e.g. "
                         "lowbit.distributed.megatron_plan()")
    plan = {}
    for pattern, style in tp.items():
        try:
            plan[pattern] = Style.parse(style)
        except ValueError:
            raise ValueError(f"base_model_tp_plan entry {pattern!r}: {style!r} is not supported by lowbit "
                             "(only 'colwise' and 'rowwise')") from None
    return plan


def _matches(fqn: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(fqn, pattern) or fnmatch.fnmatchcase(fqn, "*." + pattern)


def _as_layer_plan(entry) -> LayerPlan:
    if isinstance(entry, LayerPlan):
        return entry
    if isinstance(entry, (Style, str)):
        return LayerPlan(Style.parse(entry))
    raise TypeError(f"a plan entry must be a Style, 'colwise'/'rowwise' or a LayerPlan, got {type(entry).__name__}")


def resolve_plan(model: nn.Module, plan: Mapping[str, object]) -> dict[str, LayerPlan]:
    """{layer name: LayerPlan with gather_output decided} for every layer the plan names."""
    if not isinstance(plan, Mapping) or not plan:
        raise TypeError("plan must be a non-empty mapping {layer-name pattern: 'colwise' | 'rowwise' | LayerPlan}")
    entries = {p: _as_layer_plan(e) for p, e in plan.items()}
    chosen: dict[str, LayerPlan] = {}
    used = set()
    names: dict[int, list[str]] = {}
    for fqn, mod in model.named_modules(remove_duplicate=False):
        names.setdefault(id(mod), []).append(fqn)
    for fqn, mod in model.named_modules(remove_duplicate=False):
        hits = [p for p in entries if fqn and _matches(fqn, p)]
        if not hits:
            continue
        styles = {entries[p] for p in hits}
        if len(styles) > 1:
            raise ValueError(f"layer {fqn!r} matches plan entries with different styles: {hits}")
        used.update(hits)
        if isinstance(mod, _ParallelMixin):
            raise ValueError(f"layer {fqn!r} is already tensor-parallel")
        if not isinstance(mod, QuantLinear):
            hint = (" (call lowbit.quantize_(model, scheme) first)" if isinstance(mod, nn.Linear) else "")
            raise TypeError(f"plan entry {hits[0]!r} matches {fqn!r}, a {type(mod).__name__}; lowbit parallelizes "
                            f"QuantLinear layers only{hint}")
        if len(names[id(mod)]) > 1:
            raise ValueError(f"layer {fqn!r} is the same module as {[n for n in names[id(mod)] if n != fqn]}; "
                             "tensor parallelism needs distinct layers (untie them first)")
        chosen[fqn] = styles.pop()
    unused = sorted(set(entries) - used)
    if unused:
        raise ValueError(f"plan entries {unused} match no layer of the model")
    parents_with_row = {f.rpartition(".")[0] for f, lp in chosen.items() if lp.style is Style.ROW}
    out = {}
    for fqn, lp in chosen.items():
        if lp.style is Style.COLUMN and lp.gather_output is None:
            lp = LayerPlan(Style.COLUMN, gather_output=fqn.rpartition(".")[0] not in parents_with_row)
        out[fqn] = lp
    return out


def _head_dim(model: nn.Module, fqn: str) -> int:
    """The attention head size a column-parallel split of this layer must keep whole (1 if none)."""
    parent_name = fqn.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    hd = getattr(parent, "head_dim", None)
    return hd if isinstance(hd, int) and hd > 0 else 1


def _constraint(model: nn.Module, fqn: str, lp: LayerPlan) -> tuple[str, int, int, str]:
    """(dimension name, its length, the unit a part must be a multiple of, what the unit is) for one layer.

    A row split must keep quantization groups whole; a column split whose output stays sharded
    into attention must keep heads whole (the parent's ``head_dim``, as in Hugging Face models).
    """
    layer = model.get_submodule(fqn)
    if lp.style is Style.ROW:
        unit = split_unit(layer, ShardDim.INPUT)
        return "K", layer.in_features, unit, f"whole groups of {unit}" if unit > 1 else "equal parts"
    unit = 1 if lp.gather_output else _head_dim(model, fqn)
    return "N", layer.out_features, unit, f"whole attention heads of {unit}" if unit > 1 else "equal parts"


def fits_all(model: nn.Module, layers: dict[str, LayerPlan]) -> list[int]:
    """World sizes for which every layer of the resolved plan splits evenly on its boundaries."""
    fits = None
    for fqn, lp in layers.items():
        _, length, unit, _ = _constraint(model, fqn, lp)
        ok = set(valid_world_sizes(length, unit))
        fits = ok if fits is None else fits & ok
    return sorted(fits or ())


def check_plan(model: nn.Module, layers: dict[str, LayerPlan], world: int) -> None:
    """Raise ValueError, naming the world sizes that work for the whole plan, if `world` does not fit."""
    for fqn, lp in layers.items():
        name, length, unit, what = _constraint(model, fqn, lp)
        if length % (world * unit):
            raise ValueError(f"tensor parallelism over {world} ranks does not fit layer {fqn!r} ({lp.style.value}: "
                             f"{name}={length} must split into {what}); world sizes that work for every layer "
                             f"of this plan: {describe_sizes(fits_all(model, layers))}")


def parallelize_(model: nn.Module, plan: Mapping[str, object] | None = None, group=None) -> nn.Module:
    """Replace the plan's QuantLinear layers of `model` with this rank's tensor-parallel layers; returns `model`.

    Call it on every rank of `group` (a ProcessGroup, a 1-D DeviceMesh, or None for the default
    group) with the same full quantized model (same seed or the same loaded file). ``plan``
    defaults to :func:`megatron_plan`. Every rank checks every layer before anything changes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"parallelize_ needs an nn.Module, got {type(model).__name__}")
    group, rank, world = collectives.resolve_group(group)
    layers = resolve_plan(model, megatron_plan() if plan is None else plan)
    check_plan(model, layers, world)
    new: dict[str, nn.Module] = {}
    for fqn, lp in layers.items():
        layer = model.get_submodule(fqn)
        if lp.style is Style.COLUMN:
            new[fqn] = ColumnParallelQuantLinear.from_quant_linear(layer, group, gather_output=lp.gather_output)
        else:
            new[fqn] = RowParallelQuantLinear.from_quant_linear(layer, group)
    swap_modules(model, new)
    return model
