"""Per-format discovery of the quantized layers in a checkpoint's tensors (used by checkpoint.py).

``LAYER_FINDERS[fmt](tensors, quantization_config)`` returns {layer prefix: (tensor keys the
layer consumes, a description of the source layer, a converter)}. A converter returns the
layer's QuantizedWeight or raises :class:`~lowbit.importers.common.Refused` (or another
ValueError / TypeError) with the reason.
"""
from __future__ import annotations

import enum
import re
from typing import Callable

import torch

from ..formats import QuantizedWeight
from .awq import from_awq
from .bitnet import BitNetLinear, from_bitnet
from .common import Refused
from .compressed_tensors import from_compressed_tensors
from .gptq import GPTQZeros, from_gptq
from .hqq import from_hqq_state


class SourceFormat(str, enum.Enum):
    """Checkpoint formats ``python -m lowbit import --from`` reads."""

    GPTQ = "gptq"
    AWQ = "awq"
    COMPRESSED_TENSORS = "compressed-tensors"
    HQQ = "hqq"
    BITNET = "bitnet"

    @classmethod
    def parse(cls, value: "SourceFormat | str") -> "SourceFormat":
        if isinstance(value, SourceFormat):
            return value
        try:
            return cls(str(value).lower().replace("_", "-"))
        except ValueError:
            raise ValueError(f"unknown source format {value!r}; expected one of {[f.value for f in cls]}") from None


# Each returns {layer prefix: (tensor keys the layer consumes, source description, converter)}; a
# converter returns the QuantizedWeight or raises Refused / ValueError / TypeError.
Layer = tuple[list[str], str, Callable[[], QuantizedWeight]]


def _prefixes(tensors: dict, leaf: str) -> list[str]:
    return sorted(k[: -len(leaf) - 1] for k in tensors if k.endswith("." + leaf))


def _gptq_dynamic(qc: dict, name: str) -> dict | None:
    """GPTQModel's per-module overrides: {"+:regex" or "regex": {...}} override, {"-:regex": {}} keeps float."""
    out: dict = {}
    for pattern, override in (qc.get("dynamic") or {}).items():
        negative = pattern.startswith("-:")
        regex = pattern[2:] if pattern.startswith(("+:", "-:")) else pattern
        if re.match(regex, name):
            if negative:
                return None
            out.update(override or {})
    return out


def _gptq_layers(tensors: dict, qc: dict) -> dict[str, Layer]:
    fmt = str(qc.get("checkpoint_format", qc.get("format", "gptq"))).lower()
    layers: dict[str, Layer] = {}
    for p in _prefixes(tensors, "qweight"):
        keys = [f"{p}.{n}" for n in ("qweight", "qzeros", "scales", "g_idx") if f"{p}.{n}" in tensors]
        over = _gptq_dynamic(qc, p) or {}
        bits = int(over.get("bits", qc.get("bits", 4)))
        group = int(over.get("group_size", qc.get("group_size", 128)))

        def convert(p=p, bits=bits, group=group):
            if fmt not in (GPTQZeros.V1.value, GPTQZeros.V2.value):
                raise Refused(f"GPTQ checkpoint_format {fmt!r} (weights repacked for one kernel) is not imported; "
                              "only 'gptq' and 'gptq_v2'")
            for need in ("qzeros", "scales"):
                if f"{p}.{need}" not in tensors:
                    raise ValueError(f"missing tensor {p}.{need}")
            return from_gptq(tensors[f"{p}.qweight"], tensors[f"{p}.qzeros"], tensors[f"{p}.scales"],
                             tensors.get(f"{p}.g_idx"), bits=bits, group_size=group, zeros_format=fmt)

        layers[p] = (keys, f"gptq {bits}-bit group_size={group} checkpoint_format={fmt}", convert)
    return layers


def _awq_layers(tensors: dict, qc: dict) -> dict[str, Layer]:
    version = str(qc.get("version", "gemm")).lower()
    bits = int(qc.get("bits", qc.get("w_bit", 4)))
    group = int(qc.get("group_size", qc.get("q_group_size", 128)))
    layers: dict[str, Layer] = {}
    for p in _prefixes(tensors, "qweight"):
        keys = [f"{p}.{n}" for n in ("qweight", "qzeros", "scales") if f"{p}.{n}" in tensors]

        def convert(p=p):
            if version != "gemm":
                raise Refused(f"AWQ version {version!r} uses another layout; only the GEMM layout is imported")
            if not qc.get("zero_point", True):
                raise Refused("AWQ zero_point=False checkpoints are not imported")
            for need in ("qzeros", "scales"):
                if f"{p}.{need}" not in tensors:
                    raise ValueError(f"missing tensor {p}.{need}")
            return from_awq(tensors[f"{p}.qweight"], tensors[f"{p}.qzeros"], tensors[f"{p}.scales"],
                            group_size=group, bits=bits)

        layers[p] = (keys, f"awq {bits}-bit group_size={group} version={version}", convert)
    return layers


def _ct_scheme(qc: dict, name: str) -> dict | None:
    """The config group whose targets match layer `name` ("re:" regexes first, then class names)."""
    groups = qc.get("config_groups") or {}
    by_class = None
    for group in groups.values():
        for target in group.get("targets", []):
            if target.startswith("re:"):
                if re.match(target[3:], name):
                    return group
            elif by_class is None:
                by_class = group  # a class target ("Linear"): every quantized layer here is a linear layer
    return by_class


def _ct_layers(tensors: dict, qc: dict) -> dict[str, Layer]:
    top_format = qc.get("format")
    sparsity = qc.get("sparsity_config")
    layers: dict[str, Layer] = {}
    for p in _prefixes(tensors, "weight_packed"):
        keys = [f"{p}.{n}" for n in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape",
                                     "weight_g_idx") if f"{p}.{n}" in tensors]

        group = _ct_scheme(qc, p) or {}
        w = group.get("weights") or {}
        fmt = group.get("format") or top_format
        src = (f"compressed-tensors {fmt} {w.get('type')}{w.get('num_bits')} {w.get('strategy')} "
               f"group_size={w.get('group_size')} symmetric={w.get('symmetric')}")

        def convert(p=p, group=group, w=w, fmt=fmt):
            if not group:
                raise Refused("no config group of the checkpoint targets this layer")
            if fmt != "pack-quantized":
                raise Refused(f"compressed-tensors format {fmt!r}: only 'pack-quantized' is imported")
            if sparsity and (sparsity.get("format") not in (None, "dense")):
                raise Refused(f"compressed-tensors sparsity format {sparsity.get('format')!r} is not imported")
            if w.get("type", "int") != "int":
                raise Refused(f"weight type {w.get('type')!r}: only integer weights are imported")
            if group.get("input_activations"):
                raise Refused("activation quantization (input_activations) is not served by lowbit's kernels")
            if w.get("dynamic"):
                raise Refused("dynamic weight quantization is not a stored format")
            if f"{p}.weight_scale" not in tensors:
                raise ValueError(f"missing tensor {p}.weight_scale")
            return from_compressed_tensors(tensors[f"{p}.weight_packed"], tensors[f"{p}.weight_scale"],
                                           tensors.get(f"{p}.weight_zero_point"), tensors.get(f"{p}.weight_shape"),
                                           tensors.get(f"{p}.weight_g_idx"), num_bits=int(w.get("num_bits", 4)),
                                           strategy=w.get("strategy", "group"), group_size=w.get("group_size"))

        layers[p] = (keys, src, convert)
    return layers


_HQQ_KEYS = ("W_q", "nbits", "group_size", "shape", "scale", "zero", "axis", "packing", "unpack_view_dtype",
             "view_as_float", "quant_scale", "quant_zero", "compute_dtype", "channel_wise", "optimize", "round_zero",
             "offload_meta", "encoded_state_dict", "stores_quant_config", "zero_q", "scale_q", "zero_scale",
             "meta_zero", "meta_scale")


def _hqq_layers(tensors: dict, qc: dict) -> dict[str, Layer]:
    layers: dict[str, Layer] = {}
    for p in _prefixes(tensors, "W_q"):
        keys = [f"{p}.{n}" for n in _HQQ_KEYS if f"{p}.{n}" in tensors]

        state = {k[len(p) + 1:]: tensors[k] for k in keys}

        def value(name):
            v = state.get(name)
            return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v

        src = f"hqq nbits={value('nbits')} group_size={value('group_size')} axis={value('axis')}"
        layers[p] = (keys, src, lambda state=state: from_hqq_state(state))
    return layers


def _bitnet_layers(tensors: dict, qc: dict) -> dict[str, Layer]:
    linear_class = str(qc.get("linear_class", "bitlinear"))
    mode = str(qc.get("quantization_mode", "offline"))
    layers: dict[str, Layer] = {}
    for p in _prefixes(tensors, "weight_scale"):
        if f"{p}.weight" not in tensors:
            continue
        keys = [f"{p}.weight", f"{p}.weight_scale"]

        def convert(p=p):
            if mode != "offline":
                raise Refused(f"quantization_mode {mode!r}: the weights are stored in float; quantize the model "
                              "with lowbit.quantize_(model, 'ternary') instead")
            if qc.get("use_rms_norm"):
                raise Refused("use_rms_norm: the layer normalizes its input inside the linear layer, which "
                              "QuantLinear does not do")
            return from_bitnet(tensors[f"{p}.weight"], tensors[f"{p}.weight_scale"],
                               linear_class=BitNetLinear.parse(linear_class))

        layers[p] = (keys, f"bitnet {linear_class} {mode}", convert)
    return layers


LAYER_FINDERS = {SourceFormat.GPTQ: _gptq_layers, SourceFormat.AWQ: _awq_layers,
             SourceFormat.COMPRESSED_TENSORS: _ct_layers, SourceFormat.HQQ: _hqq_layers,
             SourceFormat.BITNET: _bitnet_layers}


__all__ = ["SourceFormat", "LAYER_FINDERS", "Layer"]
