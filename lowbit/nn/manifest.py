"""The per-layer manifest lowbit writes into a Hugging Face ``config.json`` (no transformers needed).

A lowbit checkpoint in the Hugging Face layout is ``model.safetensors`` (the model's state dict:
the packed tensors of every QuantLinear under its layer name, float tensors of the rest) plus a
``config.json`` whose ``quantization_config`` is :func:`quantization_config`'s dict. Its
``layers`` entry lists every quantized layer: scheme, options, [N, K] and the dtype and shape of
each stored tensor, so a loader can build the layers before reading any tensor. Written by
``save_pretrained`` of a model quantized through :mod:`lowbit.hf` and by ``python -m lowbit
import``; read by :mod:`lowbit.hf`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..formats import QuantizedWeight, Scheme, make_spec
from .linear import QuantLinear

QUANT_METHOD = "lowbit"
CONFIG_FORMAT_VERSION = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "int32": torch.int32}


def manifest_entry(qw: QuantizedWeight) -> dict:
    """The manifest record of one quantized weight."""
    return {"scheme": qw.scheme.value, "options": qw.options(), "shape": list(qw.shape),
            "tensors": {name: [str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in qw.tensors.items()}}


def layer_manifest(model: nn.Module) -> dict:
    """{layer name: manifest record} for every QuantLinear of `model`."""
    return {fqn: manifest_entry(m.quantized_weight()) for fqn, m in model.named_modules() if isinstance(m, QuantLinear)}


def check_manifest(layers: Any) -> dict:
    """Validate the structure of a manifest read from config.json (ValueError naming the bad entry)."""
    if not isinstance(layers, dict):
        raise ValueError(f"lowbit config 'layers' must be a JSON object, got {type(layers).__name__}")
    for fqn, rec in layers.items():
        try:
            make_spec(Scheme.parse(rec["scheme"]), **rec["options"])
            n, k = (int(d) for d in rec["shape"])
            for name, (dtype, shape) in rec["tensors"].items():
                if dtype not in DTYPES or not all(isinstance(d, int) for d in shape):
                    raise ValueError(f"tensor {name!r}: bad dtype/shape {dtype!r} {shape!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"lowbit config: layer {fqn!r} has a bad manifest entry: {type(e).__name__}: {e}") from None
    return layers


def quantization_config(scheme: str, options: dict, layers: dict, *, skip=("lm_head",), skip_incompatible=False,
                        backend: str = "triton") -> dict:
    """The ``quantization_config`` dict of config.json (what ``lowbit.hf.LowbitConfig.to_dict()`` gives)."""
    return {"quant_method": QUANT_METHOD, "format_version": CONFIG_FORMAT_VERSION, "scheme": Scheme.parse(scheme).value,
            "options": dict(options), "skip": list(skip), "skip_incompatible": bool(skip_incompatible),
            "backend": backend, "layers": check_manifest(layers)}
