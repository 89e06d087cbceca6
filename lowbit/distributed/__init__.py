"""Tensor parallelism for quantized models on torch.distributed (imported on first use of lowbit.distributed).

- :func:`shard` splits a QuantizedWeight exactly along output rows (dim 0) or input columns (dim 1);
- :class:`ColumnParallelQuantLinear` / :class:`RowParallelQuantLinear` run the kernels on a shard
  and combine the ranks with functional all-gather / all-reduce;
- :func:`parallelize_` applies a Megatron-style plan to a quantized model;
- :func:`save_sharded` / :func:`load_sharded` write and read one file per rank, or shard one
  unsharded file at load;
- :class:`QuantColwiseParallel` / :class:`QuantRowwiseParallel` are the same layers as
  ParallelStyles for torch's ``parallelize_module`` (imported on first use).
"""
from .checkpoint import load_sharded, save_sharded
from .modules import ColumnParallelQuantLinear, RowParallelQuantLinear
from .plan import LayerPlan, Style, megatron_plan, parallelize_, plan_from_hf
from .sharding import ShardDim, check_shardable, shard, valid_world_sizes

__all__ = ["shard", "ShardDim", "check_shardable", "valid_world_sizes", "ColumnParallelQuantLinear",
           "RowParallelQuantLinear", "parallelize_", "megatron_plan", "plan_from_hf", "Style", "LayerPlan",
           "save_sharded", "load_sharded", "QuantColwiseParallel", "QuantRowwiseParallel"]

_TORCH_TP_NAMES = ("QuantColwiseParallel", "QuantRowwiseParallel")


def __getattr__(name):
    if name in _TORCH_TP_NAMES:  # torch.distributed.tensor.parallel is only imported when asked for
        from . import torch_tp

        return getattr(torch_tp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
