"""Column- and row-parallel QuantLinear: each rank runs the ordinary kernels on its shard.

- :class:`ColumnParallelQuantLinear` holds rows [r*N/w, (r+1)*N/w) of W and its bias slice and
  computes that slice of y. With ``gather_output=True`` an all-gather along the last dimension
  returns the full y on every rank; with ``gather_output=False`` y stays sharded, which is what a
  following row-parallel layer (and the per-head attention between them) wants.
- :class:`RowParallelQuantLinear` holds columns [r*K/w, (r+1)*K/w) of W and computes a partial
  sum of y from its slice of x; an all-reduce (sum) adds the partial sums and the full bias is
  added once afterwards. It takes either the local slice of x (the sharded output of a
  column-parallel layer) or the full x, which it slices itself.

Both subclass :class:`lowbit.QuantLinear`, so their buffers are the local shard and
``state_dict()`` / :func:`lowbit.save_quantized` see the shard. The collectives are functional
(see :mod:`lowbit.distributed.collectives`), so ``torch.compile(fullgraph=True)`` traces them.

Ternary W1.58A8 (scheme ``ternary``) row-parallel: BitNet quantizes each token with the absmax
of its *whole* row of x, but a rank sees only K/w of it. The layer therefore all-reduces the
per-token absmax (a MAX over M floats), quantizes its slice with that global scale exactly as
the single-process kernel would, and runs the integer dot product on the float-activation
(A16) kernel with the int8 values held exactly in fp32; then it applies gamma / scale and
all-reduces. Each rank's integer partial sum is exact, so the result matches one process up to
float rounding of the partial sums (the price: fp32 activations instead of int8 in that one GEMM).
"""
from __future__ import annotations

import copy

import torch

from ..formats import ActivationQuant, QuantizedWeight, TernarySpec
from ..nn.linear import Backend, QuantLinear
from . import collectives
from .sharding import ShardDim, check_shardable, shard, shard_range

_A8_EPS = 1e-5  # lowbit.reference.ternary.EPS: floor of a token's absmax
_A8_EXACT_K = 2 ** 24 // 127  # fp32 sums of int8 x ternary stay exact below this many terms


class _ParallelMixin:
    """What both parallel layers share: their group, place in it and the full weight's shape."""

    def _setup(self, group, rank: int, world: int, full_shape: tuple[int, int]) -> None:
        self.group = group
        self.rank = rank
        self.world = world
        self.full_shape = tuple(int(d) for d in full_shape)

    def _local_linear(self, x: torch.Tensor, bias, scheme=None, spec=None) -> torch.Tensor:
        qw = QuantizedWeight.unchecked(scheme or self.scheme, spec or self.spec, self.shape,
                                       {name: getattr(self, name) for name in self.tensor_names})
        if self.backend is Backend.REFERENCE:
            from .. import reference

            return reference.linear(x, qw, bias)
        from .. import linear

        return linear(x, qw, bias)

    def __deepcopy__(self, memo):
        """Copy the layer but share its process group (a group cannot be copied or pickled)."""
        memo[id(self.group)] = self.group
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def _parallel_repr(self) -> str:
        return f", tp_rank={self.rank}, tp_world={self.world}, full_shape={list(self.full_shape)}"


def _layer_weight(layer: QuantLinear) -> QuantizedWeight:
    if not isinstance(layer, QuantLinear):
        raise TypeError(f"expected a lowbit.QuantLinear, got {type(layer).__name__}")
    if isinstance(layer, _ParallelMixin):
        raise ValueError("the layer is already tensor-parallel")
    return layer.quantized_weight()


class ColumnParallelQuantLinear(_ParallelMixin, QuantLinear):
    """A QuantLinear whose output features are split over the ranks of `group` (Megatron column-parallel)."""

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None = None, *, group, rank: int, world: int,
                 full_shape: tuple[int, int], gather_output: bool = True, backend: Backend | str = Backend.TRITON):
        super().__init__(qw, bias, backend=backend)
        n, k = full_shape
        if qw.shape != (n // world, k) or n % world:
            raise ValueError(f"a column-parallel shard of a [{n}, {k}] weight over {world} ranks must be "
                             f"[{n // world}, {k}], got {list(qw.shape)}")
        self._setup(group, rank, world, full_shape)
        self.gather_output = bool(gather_output)

    @classmethod
    def from_quant_linear(cls, layer: QuantLinear, group=None, *, gather_output: bool = True
                          ) -> "ColumnParallelQuantLinear":
        """This rank's column-parallel part of `layer` (the full layer, as on one device)."""
        qw = _layer_weight(layer)
        group, rank, world = collectives.resolve_group(group)
        check_shardable(qw, ShardDim.OUTPUT, world)
        a, b = shard_range(qw.N, rank, world)
        bias = None if layer.bias is None else layer.bias.detach()[a:b].clone()
        return cls(shard(qw, ShardDim.OUTPUT, rank, world), bias, group=group, rank=rank, world=world,
                   full_shape=qw.shape, gather_output=gather_output, backend=layer.backend)

    @classmethod
    def from_linear(cls, linear, scheme, *, group=None, gather_output: bool = True,
                    backend: Backend | str = Backend.TRITON, **options) -> "ColumnParallelQuantLinear":
        """Quantize an nn.Linear (identically on every rank) and keep this rank's part."""
        return cls.from_quant_linear(QuantLinear.from_linear(linear, scheme, backend=backend, **options),
                                     group, gather_output=gather_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._local_linear(x, self.bias)
        if self.gather_output and self.world > 1:
            y = collectives.all_gather_last(y, self.group, self.world)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + self._parallel_repr() + f", gather_output={self.gather_output}"


class RowParallelQuantLinear(_ParallelMixin, QuantLinear):
    """A QuantLinear whose input features are split over the ranks of `group` (Megatron row-parallel).

    ``bias`` is the full [N] bias: it is added once, after the all-reduce.
    """

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None = None, *, group, rank: int, world: int,
                 full_shape: tuple[int, int], backend: Backend | str = Backend.TRITON):
        super().__init__(qw, bias, backend=backend)
        n, k = full_shape
        if qw.shape != (n, k // world) or k % world:
            raise ValueError(f"a row-parallel shard of a [{n}, {k}] weight over {world} ranks must be "
                             f"[{n}, {k // world}], got {list(qw.shape)}")
        self._setup(group, rank, world, full_shape)
        self.k_start, self.k_stop = shard_range(k, rank, world)
        a8 = isinstance(qw.spec, TernarySpec) and qw.spec.activation is ActivationQuant.INT8_PER_TOKEN
        self.global_act_scale = a8 and world > 1
        if self.global_act_scale and qw.K >= _A8_EXACT_K:
            raise ValueError(f"row-parallel ternary (W1.58A8) needs K/world < {_A8_EXACT_K} for exact fp32 "
                             f"integer sums, got {qw.K}; use more ranks")

    @classmethod
    def from_quant_linear(cls, layer: QuantLinear, group=None) -> "RowParallelQuantLinear":
        """This rank's row-parallel part of `layer` (the full layer, as on one device)."""
        qw = _layer_weight(layer)
        group, rank, world = collectives.resolve_group(group)
        check_shardable(qw, ShardDim.INPUT, world)
        bias = None if layer.bias is None else layer.bias.detach().clone()
        return cls(shard(qw, ShardDim.INPUT, rank, world), bias, group=group, rank=rank, world=world,
                   full_shape=qw.shape, backend=layer.backend)

    @classmethod
    def from_linear(cls, linear, scheme, *, group=None, backend: Backend | str = Backend.TRITON,
                    **options) -> "RowParallelQuantLinear":
        """Quantize an nn.Linear (identically on every rank) and keep this rank's part."""
        return cls.from_quant_linear(QuantLinear.from_linear(linear, scheme, backend=backend, **options), group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.full_shape[1] and self.in_features != self.full_shape[1]:
            x = x[..., self.k_start:self.k_stop]  # the full input: keep this rank's slice
        elif x.shape[-1] != self.in_features:
            raise ValueError(f"x.shape[-1]={x.shape[-1]} is neither this rank's K slice ({self.in_features}) "
                             f"nor the full K ({self.full_shape[1]})")
        y = self._partial_a8(x) if self.global_act_scale else self._local_linear(x, None)
        if self.world > 1:
            y = collectives.all_reduce(y, "sum", self.group)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def _partial_a8(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's term of BitNet's y = (x_q . T^T) * gamma / scale, with the scale of the whole row."""
        amax = collectives.all_reduce(x.detach().abs().amax(dim=-1).float(), "max", self.group)
        scale = torch.full_like(amax, 127.0) / amax.clamp(min=_A8_EPS)
        xq = torch.round(x.float() * scale.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
        qw = QuantizedWeight.unchecked(self.scheme, self.spec, self.shape,
                                       {name: getattr(self, name) for name in self.tensor_names})
        xq2, scale2 = xq.reshape(-1, xq.shape[-1]), scale.reshape(-1)
        if self.backend is Backend.REFERENCE:
            from ..reference.ternary import linear_quantized
        else:
            from ..kernels.sign import linear_quantized
        y = linear_quantized(xq2, scale2, qw, x.dtype)  # (x_q . T^T) * gamma / scale
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + self._parallel_repr()
