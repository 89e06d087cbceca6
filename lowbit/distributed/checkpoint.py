"""Save and load tensor-parallel models: one file per rank, or one unsharded file split at load.

:func:`save_sharded` writes, into a folder, ``rank{r}-of-{w}.safetensors`` per rank (the ordinary
:func:`lowbit.save_quantized` format, holding that rank's shards) and a ``tp_manifest.json``
(written by rank 0) naming each parallel layer's style, full [N, K] shape and gather_output.
:func:`load_sharded` reads either such a folder (same world size) or a single unsharded
:func:`lowbit.save_quantized` file, which every rank loads whole and then shards with
:func:`parallelize_`, so one unsharded file serves any world size the plan allows.
"""
from __future__ import annotations

import json
import os
import tempfile

import torch.distributed as dist
from torch import nn

from ..formats import QuantizedWeight, Scheme, make_spec
from ..nn import serialization as ser
from ..nn.linear import Backend
from . import collectives
from .modules import ColumnParallelQuantLinear, RowParallelQuantLinear, _ParallelMixin
from .plan import parallelize_

MANIFEST = "tp_manifest.json"
MANIFEST_FORMAT = "lowbit.tensor_parallel"
MANIFEST_VERSION = 1


def rank_file(rank: int, world: int) -> str:
    """File name of rank `rank`'s shard in a folder written by save_sharded."""
    return f"rank{rank:05d}-of-{world:05d}.safetensors"


def _parallel_layers(model: nn.Module) -> dict[str, _ParallelMixin]:
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, _ParallelMixin)}


def _layer_record(m: _ParallelMixin) -> dict:
    if isinstance(m, ColumnParallelQuantLinear):
        return {"style": "colwise", "full_shape": list(m.full_shape), "gather_output": m.gather_output}
    return {"style": "rowwise", "full_shape": list(m.full_shape)}


def save_sharded(model: nn.Module, folder: str | os.PathLike, group=None) -> None:
    """Every rank of `group` writes its shards into `folder`; rank 0 also writes the manifest.

    Call on every rank (it ends with a barrier, so the folder is complete when any rank returns).
    """
    group, rank, world = collectives.resolve_group(group)
    layers = _parallel_layers(model)
    if not layers:
        raise ValueError("the model has no tensor-parallel layers; call lowbit.distributed.parallelize_ first "
                         "(or save the unsharded model with lowbit.save_quantized)")
    off = {f: (m.rank, m.world) for f, m in layers.items() if (m.rank, m.world) != (rank, world)}
    if off:
        raise ValueError(f"layers {sorted(off)[:5]} were parallelized over another group than rank {rank} of {world}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    ser.save_quantized(model, os.path.join(folder, rank_file(rank, world)))
    if rank == 0:
        manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "world": world,
                    "files": [rank_file(r, world) for r in range(world)],
                    "layers": {f: _layer_record(m) for f, m in sorted(layers.items())}}
        fd, tmp = tempfile.mkstemp(prefix=".lowbit-", suffix=".json.tmp", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(folder, MANIFEST))
    if world > 1:
        dist.barrier(group=group)


def _read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no {MANIFEST}: not a folder written by lowbit.distributed.save_sharded")
    try:
        with open(path) as f:
            man = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not readable JSON: {e}") from None
    if not isinstance(man, dict) or man.get("format") != MANIFEST_FORMAT or man.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path} is not a lowbit tensor-parallel manifest of version {MANIFEST_VERSION}")
    return man


def _build_parallel(fqn: str, rec: dict, lay: dict, model: nn.Module, tensors: dict, group, rank: int,
                    world: int, backend: Backend, path: str) -> nn.Module:
    """The parallel layer `fqn` from its file record `rec` and manifest record `lay`, checked against the model."""
    try:
        scheme = Scheme.parse(rec["scheme"])
        spec = make_spec(scheme, **rec["options"])
        shape = tuple(int(d) for d in rec["shape"])
        names, has_bias = list(rec["tensors"]), bool(rec["bias"])
        style, full = lay["style"], tuple(int(d) for d in lay["full_shape"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: layer {fqn!r} has a bad record: {type(e).__name__}: {e}") from None
    try:
        current = model.get_submodule(fqn)
    except AttributeError:
        raise ValueError(f"{path}: the file has a layer {fqn!r} that the model does not have") from None
    if not isinstance(current, nn.Linear) and not hasattr(current, "quantized_weight"):
        raise ValueError(f"layer {fqn!r} is a {type(current).__name__} in the model; the file has a linear layer there")
    cur_shape = ((current.out_features, current.in_features) if not isinstance(current, _ParallelMixin)
                 else current.full_shape)
    if tuple(cur_shape) != full:
        raise ValueError(f"layer {fqn!r}: the model's layer is [N, K] = {list(cur_shape)} but the file's is {list(full)}")
    if (current.bias is not None) != has_bias:
        raise ValueError(f"layer {fqn!r}: bias={has_bias} in the file but bias={current.bias is not None} in the model")
    device = next(iter(current.buffers() if not isinstance(current, nn.Linear) else current.parameters())).device
    missing = [n for n in names + (["bias"] if has_bias else []) if f"{fqn}.{n}" not in tensors]
    if missing:
        raise ValueError(f"{path}: layer {fqn!r} lacks tensors {missing}")
    try:
        qw = QuantizedWeight(scheme, spec, shape, {n: tensors[f"{fqn}.{n}"].to(device) for n in names})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: layer {fqn!r}: the stored tensors are not a valid {scheme.value} weight: {e}") from None
    bias = tensors[f"{fqn}.bias"].to(device) if has_bias else None
    common = dict(group=group, rank=rank, world=world, full_shape=full, backend=backend)
    if style == "colwise":
        return ColumnParallelQuantLinear(qw, bias, gather_output=bool(lay.get("gather_output", True)), **common)
    if style == "rowwise":
        return RowParallelQuantLinear(qw, bias, **common)
    raise ValueError(f"{path}: layer {fqn!r} has unknown style {style!r}")


def _load_folder(model: nn.Module, folder: str, group, rank: int, world: int, backend: Backend) -> nn.Module:
    man = _read_manifest(folder)
    if man.get("world") != world:
        raise ValueError(f"{folder} holds shards for {man.get('world')} ranks, but this group has {world}; "
                         "load an unsharded file (lowbit.save_quantized of the model before parallelize_) to "
                         "change the world size")
    stored = ser.read_file(os.path.join(folder, rank_file(rank, world)))
    parallel = man["layers"]
    lacking = sorted(set(parallel) - set(stored.layers))
    if lacking:
        raise ValueError(f"{stored.path} lacks the parallel layers {lacking[:5]} that {MANIFEST} lists")

    new: dict[str, nn.Module] = {}
    for fqn, rec in sorted(stored.layers.items(), key=lambda kv: "shared_with" in kv[1]):
        if fqn in parallel:
            new[fqn] = _build_parallel(fqn, rec, parallel[fqn], model, stored.tensors, group, rank, world, backend,
                                       stored.path)
        elif rec.get("shared_with") in new:
            new[fqn] = new[rec["shared_with"]]
        else:
            new[fqn] = ser.build_layer(stored, fqn, model, backend)
    return ser.install(model, stored, new)


def load_sharded(model: nn.Module, path: str | os.PathLike, group=None, *, plan=None,
                 backend: Backend | str = Backend.TRITON) -> nn.Module:
    """Load `path` into `model` as this rank's tensor-parallel part; call on every rank of `group`.

    - a folder from :func:`save_sharded`: each rank reads its own file (the world size must match);
    - a single file from :func:`lowbit.save_quantized` (unsharded): every rank loads it whole, then
      :func:`parallelize_` keeps its shards (``plan`` defaults to the Megatron plan), so the file
      loads into any world size the plan allows.

    `model` is the float (or already quantized, unsharded) model of the same architecture. With an
    unsharded file, a world size the plan does not allow raises ValueError on every rank after the
    file is loaded, leaving the model quantized but not parallel.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_sharded needs an nn.Module, got {type(model).__name__}")
    backend = Backend.parse(backend)
    group, rank, world = collectives.resolve_group(group)
    path = os.fspath(path)
    if os.path.isdir(path):
        if plan is not None:
            raise ValueError(f"{path} is a sharded folder whose manifest fixes the plan; do not pass plan=")
        return _load_folder(model, path, group, rank, world, backend)
    ser.load_quantized(model, path, backend=backend)
    return parallelize_(model, plan, group)
