"""lowbit.linear: pick the family and its config (tuned entry or heuristic), then launch.

This module sits above both lowbit.kernels and lowbit.autotune, so neither imports the other's
way up: kernels take configs as arguments, and autotune (which times kernels) depends on
kernels, never the reverse.
"""
from __future__ import annotations

import torch

from . import autotune
from .formats import QuantizedWeight, dim_bucket
from .kernels import KernelConfig, KernelFamily, KernelPath, on_interpreter
from .kernels import linear as _kernels_linear


def choose_config(fam: KernelFamily, x: torch.Tensor, path: KernelPath, m: int, qw: QuantizedWeight) -> KernelConfig:
    """The tuned config for this key when the cache has a valid one, else the family's default.

    CPU tensors under the interpreter never consult the cache. A cached config the family cannot
    run (a hand-edited file, a config from another lowbit version) is ignored with one warning.
    """
    if not on_interpreter(x):
        cfg = autotune.lookup(fam.name, qw, path, dim_bucket(m), x.dtype)
        if cfg is not None:
            problem = fam.tuned_config_problem(path, cfg, qw, x.dtype)
            if problem is None:
                return cfg
            autotune.warn_invalid(fam.name, qw, path, dim_bucket(m), x.dtype, cfg, problem)
    return fam.default_config(x, path, m, qw)


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None, *,
           path: KernelPath | str | None = None) -> torch.Tensor:
    """y = x . W^T + b with the Triton kernels and the autotuned (or heuristic) config."""
    return _kernels_linear(x, qw, bias, path=path, choose_config=choose_config)
