"""Triton kernels, one module per family; :func:`linear` dispatches a QuantizedWeight to its family.

Modules import triton, so this package is imported lazily by :func:`lowbit.linear`.
"""
from __future__ import annotations

import importlib
import sys

import torch

from .._checks import check_linear_args
from ..formats import QuantizedWeight, Scheme
from ._common import KernelConfig, KernelFamily, KernelPath

# family module name -> schemes it serves (import happens on first use)
_FAMILY_MODULES = ("uniform", "lut", "ternary", "binary")


def families() -> list[KernelFamily]:
    """Every kernel family that is implemented, in a fixed order."""
    out = []
    for mod_name in _FAMILY_MODULES:
        # sys.modules first: torch.compile (dynamo) can trace a dict lookup but not importlib,
        # so a forward traced after the families were imported once stays one graph.
        mod = sys.modules.get(f"{__name__}.{mod_name}")
        if mod is None:
            try:
                mod = importlib.import_module(f"{__name__}.{mod_name}")
            except ModuleNotFoundError as e:
                if e.name == f"{__name__}.{mod_name}":
                    continue
                raise
        out.append(mod.FAMILY)
    return out


def family_for(scheme: Scheme | str) -> KernelFamily:
    """The family whose kernels serve `scheme`."""
    scheme = Scheme.parse(scheme)
    for fam in families():
        if fam.serves(scheme):
            return fam
    raise ValueError(f"no Triton kernel serves scheme {scheme.value!r} yet")


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
           path: KernelPath | str | None = None) -> torch.Tensor:
    """y = x . W^T + b on the Triton kernels; `path` forces "gemv" or "gemm"."""
    check_linear_args(x, qw, bias)
    return family_for(qw.scheme).forward(x, qw, bias, KernelPath.parse(path))


__all__ = ["linear", "families", "family_for", "KernelConfig", "KernelFamily", "KernelPath"]
