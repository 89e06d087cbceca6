"""lowbit: Triton kernels for language-model linear layers with 1- to 4-bit weights.

Importing lowbit touches neither CUDA nor Triton; kernels load on first use.
"""
from __future__ import annotations

from . import reference
from .formats import QuantizedWeight, Scheme
from .reference import dequantize, quantize_weight

__version__ = "0.1.0"

__all__ = ["QuantizedWeight", "Scheme", "quantize_weight", "dequantize", "linear", "reference",
           "QuantLinear", "quantize_", "save_quantized", "load_quantized", "__version__"]


def linear(x, qw, bias=None, *, path=None):
    """y = x . W^T + b with the Triton kernels (same contract as F.linear).

    `path` forces "gemv" (small-M) or "gemm" (large-M); by default the M bucket decides.
    """
    from .dispatch import linear as _linear

    return _linear(x, qw, bias, path=path)


_NN_NAMES = ("QuantLinear", "quantize_", "save_quantized", "load_quantized")


def __getattr__(name):
    if name in _NN_NAMES:
        from . import nn

        return getattr(nn, name)
    if name == "distributed":  # torch.distributed machinery, imported on first use
        import importlib

        return importlib.import_module(f"{__name__}.distributed")
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
