"""Argument checks shared by the quantizer, the reference and the kernels.

Every check raises TypeError (wrong kind or dtype) or ValueError (wrong value or shape) with a
message that names the argument, so bad input never reaches a kernel.
"""
from __future__ import annotations

import torch

from .formats import FLOAT_DTYPES as ACTIVATION_DTYPES
from .formats import QuantizedWeight


def check_weight(w) -> None:
    """A float [N, K] weight, non-empty and finite."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(w).__name__}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"weight must be floating point (fp16/bf16/fp32/fp64), got integer/bool dtype {w.dtype}")
    if w.dim() != 2:
        raise ValueError(f"weight must be 2-D [N, K] (out_features, in_features), got rank {w.dim()} shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"weight is empty, shape {tuple(w.shape)}")
    if w.device.type == "meta":
        raise ValueError("weight is on the meta device (it has no values to quantize); load or materialise the "
                         "model's weights first, e.g. from_pretrained without device_map='meta' or .to_empty() + a "
                         "state dict")
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight contains NaN or Inf")


def check_linear_args(x, qw, bias, allow_fp64: bool = False) -> None:
    """x [..., K] float on qw's device, bias [N] or None: the F.linear contract for a QuantizedWeight.

    The weight's layout is re-checked too (QuantizedWeight.check_layout: cheap, no value reads), because
    its tensors dict can be edited after construction. Zero rows (M = 0) are allowed, as in F.linear.
    """
    if not isinstance(qw, QuantizedWeight):
        raise TypeError(f"weight must be a lowbit.QuantizedWeight, got {type(qw).__name__}")
    qw.check_layout()
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    allowed = ACTIVATION_DTYPES + ((torch.float64,) if allow_fp64 else ())
    if x.dtype not in allowed:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension [..., K]")
    if x.shape[-1] != qw.K:
        raise ValueError(f"x.shape[-1]={x.shape[-1]} does not match the weight's K={qw.K}")
    if x.device != qw.device:
        raise ValueError(f"x is on {x.device} but the weight is on {qw.device}; move one with .to()")
    if bias is not None:
        check_bias(bias, qw.N, x.device, "x")
        if bias.dtype not in allowed:
            raise TypeError(f"bias must be float16, bfloat16 or float32, got {bias.dtype}")


def check_bias(bias, n: int, device: torch.device, other: str) -> None:
    """bias is a tensor of shape [n] on `device` (where `other`, e.g. "x" or "the weight", lives)."""
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (n,):
        raise ValueError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    if bias.device != device:
        raise ValueError(f"bias is on {bias.device} but {other} is on {device}")
