"""The kernel families and :func:`linear`, the one import surface of lowbit.kernels for the rest of lowbit.

Each family is a package (uniform/, lut/, sign/) exporting ``FAMILY``, ``launch`` and its
``<family>_linear`` custom op. Family packages import triton, so they load on first use:
importing this package costs only torch.
"""
from __future__ import annotations

import importlib
import math
import sys
from typing import Callable

import torch

from .._checks import check_linear_args
from ..formats import QuantizedWeight, Scheme
from .base import (AotCase, KernelConfig, KernelFamily, KernelPath, LaunchPlan, check_runtime, flatten_rows,
                   interpreting, launch_guard, on_interpreter, operands)

_FAMILY_PACKAGES = ("uniform", "lut", "sign")

# (family, x, path, m, qw) -> KernelConfig; lowbit.dispatch passes one that consults the autotune cache
ConfigChooser = Callable[[KernelFamily, torch.Tensor, KernelPath, int, QuantizedWeight], KernelConfig]


def families() -> list[KernelFamily]:
    """Every kernel family, in a fixed order."""
    out = []
    for pkg in _FAMILY_PACKAGES:
        # sys.modules first: torch.compile (dynamo) can trace a dict lookup but not importlib,
        # so a forward traced after the families were imported once stays one graph.
        mod = sys.modules.get(f"{__name__}.{pkg}")
        if mod is None:
            mod = importlib.import_module(f"{__name__}.{pkg}")
        out.append(mod.FAMILY)
    return out


def family_for(scheme: Scheme | str) -> KernelFamily:
    """The family whose kernels serve `scheme`."""
    scheme = Scheme.parse(scheme)
    for fam in families():
        if fam.serves(scheme):
            return fam
    raise ValueError(f"no Triton kernel serves scheme {scheme.value!r}")


def _default_chooser(fam: KernelFamily, x: torch.Tensor, path: KernelPath, m: int, qw: QuantizedWeight):
    return fam.default_config(x, path, m, qw)


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
           path: KernelPath | str | None = None, choose_config: ConfigChooser | None = None) -> torch.Tensor:
    """y = x . W^T + b on the Triton kernels (same contract as F.linear); the twin of reference.linear.

    Arguments are checked once here. `path` forces "gemv" or "gemm"; `choose_config` picks the
    launch config (default: the family's heuristic; lowbit.linear passes the autotuned one). A weight
    with a low-rank term (qw.lowrank > 0) gets (x B^T) A^T added by lowbit.kernels.lowrank after the
    family's kernels, unless the family fuses it (none does yet: this costs two extra launches).
    """
    check_linear_args(x, qw, bias)
    check_runtime(x)
    fam = family_for(qw.scheme)
    path = KernelPath.parse(path)
    m = math.prod(x.shape[:-1])
    if m == 0:  # no rows: F.linear returns an empty [..., N] output
        return x.new_empty((*x.shape[:-1], qw.N))
    x2d = flatten_rows(x)
    path = path or fam.choose_path(m, qw, x.dtype)
    cfg = (choose_config or _default_chooser)(fam, x, path, m, qw)
    with launch_guard(x):
        y = fam.forward(x2d, qw, None if bias is None else bias.contiguous(), path, cfg)
        if qw.lowrank and not fam.fuses_lowrank:  # the unfused low-rank term: two generic launches after
            y = _lowrank_module().add_lowrank(x2d, qw, y)
    return y.reshape(*x.shape[:-1], qw.N)


def _lowrank_module():
    """lowbit.kernels.lowrank (imports triton), loaded on first use; sys.modules first, as in families()."""
    mod = sys.modules.get(f"{__name__}.lowrank")
    return mod if mod is not None else importlib.import_module(f"{__name__}.lowrank")


__all__ = ["linear", "families", "family_for", "KernelConfig", "KernelFamily", "KernelPath", "AotCase", "LaunchPlan",
           "ConfigChooser", "interpreting", "launch_guard", "on_interpreter", "operands"]
