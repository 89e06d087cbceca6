"""Convert a whole quantized Hugging Face checkpoint directory (safetensors + config.json) to lowbit.

``convert_checkpoint(src, dst, "gptq")`` finds every quantized layer of the source format in
the safetensors files, converts each with its importer, keeps every other tensor as it is
(embeddings, norms, biases, layers the source left in float) and writes ``dst`` in the Hugging
Face layout lowbit loads (``model.safetensors`` + ``config.json`` whose quantization_config is
lowbit's, with the per-layer manifest; other files such as the tokenizer are copied). Load it
with ``import lowbit.hf`` and ``AutoModelForCausalLM.from_pretrained(dst)``.

Every layer is reported as mapped (source -> lowbit scheme) or refused (with the reason). If any
layer is refused nothing is written (:class:`ConversionRefused` carries the report). Output is
written to a temporary directory next to ``dst`` and renamed into place, so ``dst`` is never
left half written. Needs ``safetensors``; never imports transformers.
"""
from __future__ import annotations

import enum
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..formats import QuantizedWeight
from ..nn.manifest import manifest_entry, quantization_config
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


@dataclass
class LayerResult:
    """One quantized layer of the source: what it was, and what it became or why it was refused."""

    name: str
    source: str
    target: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def line(self) -> str:
        return f"{'mapped' if self.ok else 'REFUSED'} {self.name}: {self.source} -> " + \
            (self.target if self.ok else self.reason)


@dataclass
class ConversionReport:
    """Per-layer results plus the tensors kept as they were."""

    source_format: SourceFormat
    layers: list[LayerResult] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def refused(self) -> list[LayerResult]:
        return [r for r in self.layers if not r.ok]

    def lines(self) -> list[str]:
        out = [r.line() for r in self.layers]
        out.append(f"{len(self.layers) - len(self.refused)} layer(s) mapped, {len(self.refused)} refused, "
                   f"{len(self.kept)} other tensor(s) kept as they are")
        return out


class ConversionRefused(ValueError):
    """Some layers cannot be stored exactly; ``report`` says which and why. Nothing was written."""

    def __init__(self, report: ConversionReport):
        self.report = report
        bad = report.refused
        super().__init__(f"{len(bad)} of {len(report.layers)} layer(s) refused, nothing written; first: "
                         f"{bad[0].name}: {bad[0].reason}")


def describe(qw: QuantizedWeight) -> str:
    opts = " ".join(f"{k}={v}" for k, v in qw.options().items())
    return f"{qw.scheme.value} {opts}".strip()


# -- reading the source --------------------------------------------------------------------------
def _safetensors_files(src: str) -> list[str]:
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(src, n) for n in names]
    files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    if not files:
        raise ValueError(f"{src} has no .safetensors files (lowbit imports safetensors checkpoints only)")
    return [os.path.join(src, f) for f in files]


def _load(src: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ImportError("python -m lowbit import needs the 'safetensors' package: pip install safetensors") from None
    tensors: dict[str, torch.Tensor] = {}
    for f in _safetensors_files(src):
        part = load_file(f)
        clash = sorted(set(part) & set(tensors))
        if clash:
            raise ValueError(f"tensor {clash[0]!r} appears in several safetensors files of {src}")
        tensors.update(part)
    return tensors


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _quant_config(src: str, config: dict, fmt: SourceFormat) -> dict:
    """The source's quantization config (config.json, or AutoGPTQ/AutoAWQ's side files)."""
    qc = config.get("quantization_config")
    if qc is None:
        for side in ("quantize_config.json", "quant_config.json"):
            if os.path.isfile(os.path.join(src, side)):
                qc = _read_json(os.path.join(src, side))
                break
    if qc is None:
        if fmt in (SourceFormat.HQQ, SourceFormat.BITNET):
            return {}
        raise ValueError(f"{src}: config.json has no quantization_config (and there is no quantize_config.json)")
    method = str(qc.get("quant_method", fmt.value)).lower().replace("_", "-")
    if method != fmt.value:
        raise ValueError(f"{src} is a {method!r} checkpoint, not {fmt.value!r} (choose --from {method})")
    return qc


# -- one adapter per format ---------------------------------------------------------------------
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


_ADAPTERS = {SourceFormat.GPTQ: _gptq_layers, SourceFormat.AWQ: _awq_layers,
             SourceFormat.COMPRESSED_TENSORS: _ct_layers, SourceFormat.HQQ: _hqq_layers,
             SourceFormat.BITNET: _bitnet_layers}

_SKIP_FILES = ("config.json", "quantize_config.json", "quant_config.json", "model.safetensors.index.json")


# -- the conversion ------------------------------------------------------------------------------
def convert_tensors(tensors: dict[str, torch.Tensor], qc: dict, fmt: SourceFormat | str
                    ) -> tuple[dict[str, torch.Tensor], dict, ConversionReport]:
    """Convert a loaded state dict: (lowbit tensors, manifest, report). Raises ConversionRefused."""
    fmt = SourceFormat.parse(fmt)
    report = ConversionReport(fmt)
    layers = _ADAPTERS[fmt](tensors, qc)
    if not layers:
        raise ValueError(f"no {fmt.value} quantized layer found in the checkpoint")
    consumed: set[str] = set()
    out: dict[str, torch.Tensor] = {}
    manifest: dict = {}
    for prefix, (keys, src, convert) in sorted(layers.items()):
        consumed.update(keys)
        try:
            qw = convert()
        except (ValueError, TypeError) as e:  # Refused is a ValueError: the reason alone says it
            reason = str(e) if isinstance(e, Refused) else f"{type(e).__name__}: {e}"
            report.layers.append(LayerResult(prefix, src, reason=reason))
            continue
        report.layers.append(LayerResult(prefix, src, target=describe(qw)))
        manifest[prefix] = manifest_entry(qw)
        for name, t in qw.tensors.items():
            out[f"{prefix}.{name}"] = t.contiguous()
    report.kept = [key for key in tensors if key not in consumed]
    if report.refused:
        raise ConversionRefused(report)
    for key in report.kept:
        if key in out:
            raise ValueError(f"tensor {key!r} of the checkpoint collides with a converted layer's tensor")
        out[key] = tensors[key]
    return out, manifest, report


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, fmt: SourceFormat | str) -> ConversionReport:
    """Convert the checkpoint directory `src` (format `fmt`) into a lowbit checkpoint directory `dst`.

    `dst` must not exist. Returns the report; raises :class:`ConversionRefused` (nothing
    written) when a layer cannot be stored exactly, ValueError for a malformed source.
    """
    fmt = SourceFormat.parse(fmt)
    src, dst = os.fspath(src), os.fspath(dst)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"no such checkpoint directory: {src}")
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} exists; choose a new destination (lowbit never overwrites a checkpoint)")
    config_path = os.path.join(src, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{src} has no config.json")
    config = _read_json(config_path)
    qc = _quant_config(src, config, fmt)
    tensors = _load(src)
    out, manifest, report = convert_tensors(tensors, qc, fmt)

    schemes = Counter((r["scheme"], json.dumps(r["options"], sort_keys=True)) for r in manifest.values())
    (scheme, options), _ = schemes.most_common(1)[0]
    config = dict(config)
    config["quantization_config"] = quantization_config(scheme, json.loads(options), manifest, skip=())

    from safetensors.torch import save_file

    parent = os.path.dirname(os.path.abspath(dst))
    tmp = tempfile.mkdtemp(prefix=".lowbit-import-", dir=parent)
    try:
        save_file(out, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        for name in sorted(os.listdir(src)):
            path = os.path.join(src, name)
            if (os.path.isfile(path) and name not in _SKIP_FILES
                    and not name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))):
                shutil.copy2(path, os.path.join(tmp, name))
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


__all__ = ["convert_checkpoint", "convert_tensors", "SourceFormat", "ConversionReport", "ConversionRefused",
           "LayerResult"]
