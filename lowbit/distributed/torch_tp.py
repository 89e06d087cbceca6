"""ParallelStyles that let torch's ``parallelize_module`` (DeviceMesh plans) shard QuantLinear layers.

torch's own ``ColwiseParallel`` / ``RowwiseParallel`` accept only nn.Linear and nn.Embedding (they
raise NotImplementedError for QuantLinear) and would shard a ``weight`` parameter as a DTensor,
which QuantLinear does not have: its packed codes are stored [K/words, N] with group metadata
and CSR outliers, so a DTensor Shard placement does not describe them. These two styles put
lowbit's exact shards in a torch plan instead, next to torch's styles for float layers::

    from torch.distributed.tensor.parallel import parallelize_module, ColwiseParallel
    parallelize_module(model, mesh["tp"], {"model.layers.*.self_attn.q_proj": QuantColwiseParallel(),
                                           "model.layers.*.self_attn.o_proj": QuantRowwiseParallel(),
                                           "lm_head": ColwiseParallel(output_layouts=Replicate())})

As with torch's ``ColwiseParallel``, a column-parallel output stays sharded on its last dimension
unless ``gather_output=True``. ``parallelize_module`` discards what a style returns for a
sub-module, so the style turns the QuantLinear into its parallel layer in place (the object
keeps its identity, hooks included).
"""
from __future__ import annotations

from torch import nn
from torch.distributed.tensor.parallel import ParallelStyle

from .modules import ColumnParallelQuantLinear, RowParallelQuantLinear


def _become(module: nn.Module, new: nn.Module) -> None:
    """Make `module` the layer `new` in place, keeping the hooks registered on `module`."""
    state = {k: v for k, v in vars(new).items() if "hook" not in k}
    for k in [k for k in vars(module) if "hook" not in k]:
        del module.__dict__[k]
    module.__dict__.update(state)
    module.__class__ = type(new)


class QuantColwiseParallel(ParallelStyle):
    """Column-parallel QuantLinear for ``parallelize_module``; output sharded unless ``gather_output``."""

    def __init__(self, *, gather_output: bool = False):
        super().__init__()
        self.gather_output = gather_output

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        _become(module, ColumnParallelQuantLinear.from_quant_linear(module, device_mesh,
                                                                    gather_output=self.gather_output))
        return module


class QuantRowwiseParallel(ParallelStyle):
    """Row-parallel QuantLinear for ``parallelize_module``: sharded (or full) input, all-reduced output."""

    def _apply(self, module: nn.Module, device_mesh) -> nn.Module:
        _become(module, RowParallelQuantLinear.from_quant_linear(module, device_mesh))
        return module
