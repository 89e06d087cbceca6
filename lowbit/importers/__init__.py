"""Convert other libraries' quantized weights into a validated :class:`~lowbit.formats.QuantizedWeight`.

One module per format; each function takes the foreign layer's tensors and returns a weight
whose :func:`lowbit.dequantize` equals the foreign library's own dequantization (exactly, or
where that library rounds in two steps, to its rounding; each module says which):

- :func:`from_gptq` (AutoGPTQ / GPTQModel, 2/3/4/8-bit, v1 and v2 zero conventions);
- :func:`from_awq` (AutoAWQ GEMM layout);
- :func:`from_compressed_tensors` (``pack-quantized``, group / channel / tensor, sym or asym);
- :func:`from_hqq`, :func:`from_hqq_state` (HQQLinear, axis=1);
- :func:`from_bitnet` (BitNet b1.58 packed ternary weights);
- :func:`from_squeezellm` (SqueezeLLM LUT + sparse outliers), :func:`from_bnb_nf4` (bitsandbytes NF4).

What lowbit cannot serve exactly raises :class:`Refused` (a ValueError) with the reason.
Whole checkpoint directories convert with :func:`lowbit.importers.checkpoint.convert_checkpoint`
(``python -m lowbit import``). Nothing here imports transformers or the peer libraries.
"""
from .awq import from_awq
from .bitnet import BitNetLinear, from_bitnet
from .bnb import from_bnb_nf4
from .common import Refused
from .compressed_tensors import CTStrategy, from_compressed_tensors
from .gptq import GPTQZeros, from_gptq
from .hqq import HQQPacking, from_hqq, from_hqq_state
from .squeezellm import from_squeezellm

__all__ = ["from_squeezellm", "from_bnb_nf4", "from_gptq", "from_awq", "from_compressed_tensors", "from_hqq",
           "from_hqq_state", "from_bitnet", "Refused", "GPTQZeros", "CTStrategy", "HQQPacking", "BitNetLinear"]
