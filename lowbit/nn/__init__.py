"""nn.Linear replacements: QuantLinear, quantize_ (in-place swap), save/load in safetensors."""
from .calibrate import activation_scales
from .linear import Backend, QuantLinear
from .serialization import FORMAT_VERSION, load_quantized, save_quantized
from .swap import quantize_

__all__ = ["Backend", "QuantLinear", "quantize_", "save_quantized", "load_quantized", "FORMAT_VERSION",
           "activation_scales"]
