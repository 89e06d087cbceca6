"""The collectives the parallel layers call: functional (out-of-place) all-reduce and all-gather.

Why ``torch.distributed._functional_collectives``: these are the collectives torch.compile
traces into the graph (as ``_c10d_functional`` ops) without a graph break, and DTensor uses them
internally. torch 2.11-2.13 has no public functional API: the public in-place ``dist.all_reduce``
mutates its argument (dynamo rewrites it, but eager code then has to own a buffer), and
``torch.distributed.nn.functional.all_reduce`` raises under torch.compile and is deprecated in
torch 2.13 with a message that points to ``torch.distributed._functional_collectives``. So this
file is the one place lowbit imports that private module; if torch renames it, only this file
changes. In eager mode the functional ops return an ``AsyncCollectiveTensor``; we wait on it at
once so that the next kernel receives a plain tensor.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives as funcol

_gather_single = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


def resolve_group(group=None):
    """(process group, rank, world) for a ProcessGroup, a 1-D DeviceMesh or None (the default group)."""
    from torch.distributed.device_mesh import DeviceMesh

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group "
                           "(or init_device_mesh) on every rank first")
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(f"a DeviceMesh for tensor parallelism must be 1-D (slice it, e.g. mesh['tp']), "
                             f"got {group.ndim}-D")
        group = group.get_group()
    elif group is None:
        group = dist.group.WORLD
    elif not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed ProcessGroup, a 1-D DeviceMesh or None, "
                        f"got {type(group).__name__}")
    return group, dist.get_rank(group), dist.get_world_size(group)


def _ready(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, funcol.AsyncCollectiveTensor):
        return t.wait()
    return t


def all_reduce(t: torch.Tensor, op: str, group) -> torch.Tensor:
    """Element-wise reduction ("sum" or "max") of `t` over the group; `t` is not modified."""
    return _ready(funcol.all_reduce(t, op, group))


def all_gather_last(t: torch.Tensor, group, world: int) -> torch.Tensor:
    """Concatenate every rank's `t` [..., n] along the last dimension, in rank order: [..., world * n]."""
    lead, n = t.shape[:-1], t.shape[-1]
    flat = t.reshape(-1, n).contiguous()
    g = _ready(_gather_single(flat, 0, group))  # [world * M, n], rank-major
    g = g.view(world, flat.shape[0], n).permute(1, 0, 2).reshape(*lead, world * n)
    return g
