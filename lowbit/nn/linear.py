"""QuantLinear: an nn.Linear replacement that stores a QuantizedWeight and runs the Triton kernels.

One module serves every scheme. The packed tensors are registered as buffers named after the
QuantizedWeight's tensors (``qweight``, ``scales``, ``zeros``, ``absmax``, ``lut``, ...), so
``.to()``, ``state_dict()`` and ``load_state_dict()`` work as for any module; the scheme, spec
and shape are plain Python attributes.
"""
from __future__ import annotations

import enum

import torch
from torch import nn

from .._checks import check_bias
from ..formats import QuantizedWeight, Scheme


class Backend(str, enum.Enum):
    """Which implementation QuantLinear.forward calls."""

    TRITON = "triton"  # lowbit.linear: the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)
    REFERENCE = "reference"  # lowbit.reference.linear: the float64 PyTorch oracle (slow, any device)

    @classmethod
    def parse(cls, value: "Backend | str") -> "Backend":
        if isinstance(value, Backend):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown backend {value!r}; expected 'triton' or 'reference'") from None


# Where transformers defines GPT-2's Conv1D (y = x @ W + b with W stored [in, out]); matched by name so
# that lowbit never imports transformers.
_CONV1D_HOMES = frozenset({"transformers.pytorch_utils", "transformers.modeling_utils"})


def is_conv1d(module: nn.Module) -> bool:
    """True for exactly transformers' ``Conv1D`` (GPT-2 style), recognised without importing transformers."""
    t = type(module)
    return t.__name__ == "Conv1D" and t.__module__ in _CONV1D_HOMES


def is_float_linear(module: nn.Module) -> bool:
    """A float layer quantize_ can swap: exactly ``nn.Linear`` (not a subclass) or transformers' ``Conv1D``."""
    return type(module) is nn.Linear or is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The [N, K] = [out, in] weight of an nn.Linear, or the transposed [in, out] weight of a Conv1D (a view)."""
    if type(module) is nn.Linear:
        return module.weight
    if is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"expected an nn.Linear or transformers Conv1D, got {type(module).__name__}")


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an nn.Linear or Conv1D."""
    n, k = linear_weight(module).shape
    return int(n), int(k)


def _load_families() -> None:
    """Import the kernel families now: a forward traced by torch.compile must find them loaded."""
    from .. import kernels

    kernels.families()


class QuantLinear(nn.Module):
    """y = x . W^T + b with W stored in a low-bit scheme; a drop-in replacement for nn.Linear.

    Build one with :meth:`from_linear` (quantizes an nn.Linear) or from an existing
    QuantizedWeight. ``backend="triton"`` (default) runs :func:`lowbit.linear`;
    ``backend="reference"`` runs :func:`lowbit.reference.linear` for debugging or for a CPU
    without the Triton interpreter.

    Dtype casts of the module (``.half()``, ``.to(torch.bfloat16)``) apply to the bias only:
    the quantized tensors keep their stored dtypes, and only their device moves.
    """

    def __init__(self, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
                 backend: Backend | str = Backend.TRITON):
        super().__init__()
        if not isinstance(qw, QuantizedWeight):
            raise TypeError(f"QuantLinear needs a lowbit.QuantizedWeight, got {type(qw).__name__}")
        qw.validate()
        self.scheme: Scheme = qw.scheme
        self.spec = qw.spec
        self.out_features, self.in_features = qw.shape
        self.backend = backend
        self.tensor_names: tuple[str, ...] = tuple(qw.tensors)
        for name, t in qw.tensors.items():
            self.register_buffer(name, t)
        if bias is not None:
            check_bias(bias, self.out_features, qw.device, "the weight")
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_linear(cls, linear: nn.Module, scheme: Scheme | str, *,
                    backend: Backend | str = Backend.TRITON, **options) -> "QuantLinear":
        """Quantize `linear`'s weight with `scheme` and options (group_size, symmetric, lowrank, act_scale, ...);
        keeps its bias.

        `linear` is an nn.Linear or a transformers ``Conv1D`` (GPT-2), whose [in, out] weight is
        transposed first: both become y = x . W^T + b with W [out, in].
        """
        from ..reference import quantize_weight

        if not (isinstance(linear, nn.Linear) or is_conv1d(linear)):
            raise TypeError(f"from_linear needs an nn.Linear or transformers Conv1D, got {type(linear).__name__}")
        qw = quantize_weight(linear_weight(linear).contiguous(), scheme, **options)
        return cls(qw, linear.bias, backend=backend)

    @property
    def backend(self) -> Backend:
        return self._backend

    @backend.setter
    def backend(self, value: Backend | str) -> None:
        self._backend = Backend.parse(value)
        if self._backend is Backend.TRITON:
            _load_families()

    # -- the weight ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def quantized_weight(self) -> QuantizedWeight:
        """The stored weight as a validated QuantizedWeight sharing this module's buffers."""
        return QuantizedWeight(self.scheme, self.spec, self.shape,
                               {name: getattr(self, name) for name in self.tensor_names})

    @property
    def lowrank(self) -> int:
        """Rank r of the weight's low-rank correction (0 without one)."""
        return int(self.lowrank_a.shape[1]) if "lowrank_a" in self.tensor_names else 0

    @property
    def bits_per_weight(self) -> float:
        nbytes = sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.tensor_names)
        return 8.0 * nbytes / (self.out_features * self.in_features)

    def options(self) -> dict:
        """The scheme's options as keyword arguments (what quantize_weight was given)."""
        return self.spec.options()

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # validated at construction and on state-dict loads; no value checks here (no host sync)
        qw = QuantizedWeight.unchecked(self.scheme, self.spec, self.shape,
                                       {name: getattr(self, name) for name in self.tensor_names})
        if self.backend is Backend.REFERENCE:
            from .. import reference

            return reference.linear(x, qw, self.bias)
        from .. import linear

        return linear(x, qw, self.bias)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options().items())
        opts += f", lowrank={self.lowrank}" if self.lowrank else ""
        return (f"scheme={self.scheme.value}, in_features={self.in_features}, out_features={self.out_features}"
                f"{opts}, bits_per_weight={self.bits_per_weight:.3f}, bias={self.bias is not None}, "
                f"backend={self.backend.value}")

    # -- device moves and state dicts ------------------------------------------------------
    def _apply(self, fn, recurse=True):
        """Move the quantized buffers with the module but never change their dtypes."""
        saved = {name: self._buffers.pop(name) for name in self.tensor_names}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, t in saved.items():
                target = fn(torch.empty(0, dtype=t.dtype, device=t.device)).device
                self._buffers[name] = t if t.device == target else t.to(target)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Shapes must match exactly (same scheme, options and [N, K]); then check the values too.
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if any(prefix + n in state_dict for n in self.tensor_names):
            try:
                self.quantized_weight()
            except (ValueError, TypeError) as e:
                error_msgs.append(f"{prefix.rstrip('.') or 'QuantLinear'}: loaded tensors are not a valid "
                                  f"{self.scheme.value} weight: {e}")
