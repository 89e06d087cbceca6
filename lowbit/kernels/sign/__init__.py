"""Sign-code kernels: BitNet b1.58 ternary (W1.58A8, W1.58A16) and OneBit binary; the package's import surface."""
from . import configs
from .launch import FAMILY, SignFamily, launch, linear_quantized, quantize_activations, sign_linear

__all__ = ["FAMILY", "SignFamily", "launch", "sign_linear", "quantize_activations", "linear_quantized", "configs"]
