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

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..formats import QuantizedWeight
from ..nn.manifest import manifest_entry, quantization_config
from .common import Refused
from .sources import LAYER_FINDERS, SourceFormat


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


_SKIP_FILES = ("config.json", "quantize_config.json", "quant_config.json", "model.safetensors.index.json")


# -- the conversion ------------------------------------------------------------------------------
def convert_tensors(tensors: dict[str, torch.Tensor], qc: dict, fmt: SourceFormat | str
                    ) -> tuple[dict[str, torch.Tensor], dict, ConversionReport]:
    """Convert a loaded state dict: (lowbit tensors, manifest, report). Raises ConversionRefused."""
    fmt = SourceFormat.parse(fmt)
    report = ConversionReport(fmt)
    layers = LAYER_FINDERS[fmt](tensors, qc)
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
