"""save_quantized / load_quantized: a quantized model in one safetensors file (no pickle).

The file holds the model's whole state dict (packed tensors of every QuantLinear plus the
float tensors of the other modules; tied tensors are stored once). Its string metadata has:

- ``format`` = "lowbit.quantized" and ``format_version`` = "2" (version-1 files are read too and
  converted on load: they packed 3-bit codes 10 per word and ternary/binary codes along K, and
  hashed tensor bytes only);
- ``layers``: JSON {layer name: {scheme, options, shape [N, K], bias, tensors, shared_with}};
- ``tensors``: JSON {key: {sha256, dtype, shape}} for every stored tensor; the sha256 covers the
  tensor's dtype and shape as well as its bytes (version 1 hashed the bytes only);
- ``aliases``: JSON {key: stored key} for tensors that share storage (tied weights);
- ``digest``: sha256 of the other metadata entries.

Loading checks all of it, then checks every quantized tensor's name, dtype and shape against what
its scheme and [N, K] require (QuantizedWeight), and every other tensor's shape against the model,
builds every QuantLinear before swapping any, and swaps all or nothing: a bad file raises
ValueError and leaves the model unchanged.

What the checksums protect against: accidental damage (a truncated download, flipped bits, a header
that no longer matches its data, a tensor re-declared with another dtype or shape). What they do not:
a deliberate edit, since anyone can recompute every hash and the digest. The loader never executes
anything from a file (no pickle), but a crafted file can still hold wrong weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import torch
from torch import nn

from ..formats import QuantizedWeight, Scheme, make_spec
from .linear import Backend, QuantLinear, is_conv1d, linear_shape
from .swap import swap_modules

FORMAT_NAME = "lowbit.quantized"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # older files are read and converted
_HINT = "pip install safetensors (or: pip install 'lowbit[io]')"


def _safetensors():
    """Import safetensors, or raise ImportError with a one-line install hint."""
    try:
        import safetensors
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ImportError(f"lowbit.save_quantized/load_quantized need the 'safetensors' package: {_HINT}") from None
    return safetensors


def tensor_sha256(t: torch.Tensor, version: int = None) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes in row-major order (version 1: the bytes only).

    Binding dtype and shape into the hash catches a header that re-declares a tensor (e.g. fp16
    scales read as bf16: same bytes, other values) even when the metadata digest was recomputed.
    """
    h = hashlib.sha256()
    if (version or FORMAT_VERSION) >= 2:
        h.update(f"{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
    h.update(memoryview(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def metadata_digest(meta: dict[str, str]) -> str:
    """sha256 over every metadata entry except the digest itself (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {fqn: m for fqn, m in model.named_modules(remove_duplicate=False) if isinstance(m, QuantLinear)}


def save_quantized(model: nn.Module, path: str | os.PathLike) -> None:
    """Write `model` (with QuantLinear layers from quantize_) to a safetensors file at `path`."""
    st = _safetensors()
    layers = _quant_layers(model)
    if not layers:
        raise ValueError("the model has no QuantLinear layers; call lowbit.quantize_(model, scheme) first")
    layer_meta: dict[str, dict] = {}
    first_name: dict[int, str] = {}
    for fqn, m in layers.items():
        layer_meta[fqn] = {"scheme": m.scheme.value, "options": m.options(), "shape": list(m.shape),
                           "bias": m.bias is not None, "tensors": list(m.tensor_names)}
        if id(m) in first_name:
            layer_meta[fqn]["shared_with"] = first_name[id(m)]
        first_name.setdefault(id(m), fqn)

    stored: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for key, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"state entry {key!r} is a {type(t).__name__}, not a tensor; safetensors stores tensors only")
        ident = (t.device, t.dtype, t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() and ident in seen:
            aliases[key] = seen[ident]
            continue
        if t.numel():
            seen[ident] = key
        stored[key] = t.detach().to("cpu", copy=True).contiguous()
    meta = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "layers": json.dumps(layer_meta, sort_keys=True),
        "tensors": json.dumps({k: {"sha256": tensor_sha256(t), "dtype": str(t.dtype).removeprefix("torch."),
                                   "shape": list(t.shape)} for k, t in stored.items()}, sort_keys=True),
        "aliases": json.dumps(aliases, sort_keys=True),
    }
    from .. import __version__

    meta["lowbit_version"] = __version__
    meta["digest"] = metadata_digest(meta)

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".lowbit-", suffix=".safetensors.tmp", dir=folder)
    os.close(fd)
    try:
        st.torch.save_file(stored, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    st = _safetensors()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with st.safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            _check_header(meta, path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ValueError:
        raise
    except Exception as e:  # SafetensorError, OSError: a damaged or foreign file
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupted?): "
                         f"{type(e).__name__}: {e}") from None
    return meta, tensors


def _check_header(meta: dict[str, str], path: str) -> None:
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a lowbit quantized file (metadata 'format' is {meta.get('format')!r}, "
                         f"expected {FORMAT_NAME!r}); write one with lowbit.save_quantized")
    version = meta.get("format_version")
    if version not in {str(v) for v in READABLE_VERSIONS}:
        raise ValueError(f"{path} has lowbit format version {version!r}, but this lowbit reads versions "
                         f"{', '.join(map(str, READABLE_VERSIONS))} only (written by lowbit "
                         f"{meta.get('lowbit_version', '?')}); re-save it with the lowbit that wrote it "
                         "(load_quantized, then save_quantized) or quantize the model again")
    if meta.get("digest") != metadata_digest(meta):
        raise ValueError(f"{path}: metadata digest mismatch: the file's metadata was edited or corrupted")


def _json(meta: dict[str, str], key: str, path: str) -> dict:
    try:
        value = json.loads(meta[key])
    except (KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: metadata entry {key!r} is missing or not JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: metadata entry {key!r} must be a JSON object")
    return value


def _check_tensors(records: dict, tensors: dict[str, torch.Tensor], path: str, version: int) -> None:
    if set(records) != set(tensors):
        raise ValueError(f"{path}: the stored tensors {sorted(set(tensors) ^ set(records))[:5]} do not match "
                         "the metadata's tensor list (file edited?)")
    for key, t in tensors.items():
        rec = records[key]
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: bad metadata record for tensor {key!r}")
        if rec.get("dtype") != str(t.dtype).removeprefix("torch.") or rec.get("shape") != list(t.shape):
            raise ValueError(f"{path}: tensor {key!r} is {str(t.dtype)} {list(t.shape)} but the metadata says "
                             f"{rec.get('dtype')} {rec.get('shape')} (file edited?)")
        if rec.get("sha256") != tensor_sha256(t, version):
            raise ValueError(f"{path}: tensor {key!r} fails its sha256 check: the file is corrupted or was edited")


def _build_layer(fqn: str, rec: dict, model: nn.Module, tensors: dict[str, torch.Tensor],
                 backend: Backend, path: str) -> QuantLinear:
    """Check one layer record against the file and the model and build its QuantLinear."""
    try:
        scheme = Scheme.parse(rec["scheme"])
        spec = make_spec(scheme, **rec["options"])
        shape = tuple(int(d) for d in rec["shape"])
        names = list(rec["tensors"])
        has_bias = bool(rec["bias"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: layer {fqn!r} has a bad metadata record: {type(e).__name__}: {e}") from None
    try:
        current = model.get_submodule(fqn)
    except AttributeError:
        raise ValueError(f"{path}: the file has a quantized layer {fqn!r} that the model does not have "
                         "(a different architecture?)") from None
    if isinstance(current, QuantLinear):
        if current.scheme is not scheme or current.options() != spec.options() or current.shape != shape:
            raise ValueError(f"layer {fqn!r} is already quantized as {current.scheme.value} {current.options()} "
                             f"{current.shape}, but the file has {scheme.value} {rec['options']} {shape}")
        device = current.qweight.device
        model_bias = current.bias is not None
    elif isinstance(current, nn.Linear) or is_conv1d(current):
        n, k = linear_shape(current) if is_conv1d(current) else (current.out_features, current.in_features)
        if (n, k) != shape:
            raise ValueError(f"layer {fqn!r}: the file has shape [N, K] = {list(shape)} but the model's "
                             f"{'Conv1D' if is_conv1d(current) else 'nn.Linear'} has out_features={n}, in_features={k}")
        device = current.weight.device
        model_bias = current.bias is not None
    else:
        raise ValueError(f"layer {fqn!r} is a {type(current).__name__} in the model; the file has a quantized "
                         "linear layer there")
    if model_bias != has_bias:
        raise ValueError(f"layer {fqn!r}: bias={has_bias} in the file but bias={model_bias} in the model")
    missing = [n for n in names + (["bias"] if has_bias else []) if f"{fqn}.{n}" not in tensors]
    if missing:
        raise ValueError(f"{path}: layer {fqn!r} lacks tensors {missing}")
    try:
        qw = QuantizedWeight(scheme, spec, shape, {n: tensors[f"{fqn}.{n}"].to(device) for n in names})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: layer {fqn!r}: the stored tensors do not form a valid {scheme.value} "
                         f"{list(shape)} weight: {e}") from None
    bias = tensors[f"{fqn}.bias"].to(device) if has_bias else None
    return QuantLinear(qw, bias, backend=backend)


@dataclass
class StoredModel:
    """A verified file from save_quantized: its layer records and every tensor (aliases resolved)."""

    path: str
    layers: dict
    tensors: dict
    version: int  # the file's format version (older ones are converted as they are read)


def read_file(path: str | os.PathLike) -> StoredModel:
    """Read a save_quantized file and verify its header, digest, tensor records and checksums.

    Raises ValueError for a damaged, edited, foreign or other-version file. Used by load_quantized
    and by lowbit.distributed (per-rank files).
    """
    path = os.fspath(path)
    meta, stored = _read(path)
    layers = _json(meta, "layers", path)
    records = _json(meta, "tensors", path)
    aliases = _json(meta, "aliases", path)
    version = int(meta["format_version"])
    _check_tensors(records, stored, path, version)
    bad_alias = {k: v for k, v in aliases.items() if v not in stored or k in stored}
    if bad_alias:
        raise ValueError(f"{path}: bad tensor aliases {bad_alias}")
    tensors = dict(stored)
    tensors.update({k: stored[v] for k, v in aliases.items()})
    for fqn, rec in layers.items():
        if not isinstance(rec, dict):
            raise ValueError(f"{path}: layer {fqn!r} has a bad metadata record")
    if version < FORMAT_VERSION:
        _upgrade(path, layers, tensors, version)
    return StoredModel(path, layers, tensors, version)


def _upgrade(path: str, layers: dict, tensors: dict, version: int) -> None:
    """Convert the layers of an older file to this version's layouts, in place (the reference module of a
    scheme whose packing changed provides ``convert_legacy(tensors, spec, shape)``)."""
    from ..reference import MODULES

    for fqn, rec in layers.items():
        if "shared_with" in rec:
            continue
        try:
            scheme = Scheme.parse(rec["scheme"])
            spec = make_spec(scheme, **rec["options"])
            shape = tuple(int(d) for d in rec["shape"])
            names = list(rec["tensors"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: layer {fqn!r} has a bad metadata record: {type(e).__name__}: {e}") from None
        convert = getattr(MODULES[type(spec)], "convert_legacy", None)
        if convert is None:
            continue
        mine = {n: tensors[f"{fqn}.{n}"] for n in names if f"{fqn}.{n}" in tensors}
        try:
            new = convert(mine, spec, shape)
        except ValueError as e:
            raise ValueError(f"{path}: layer {fqn!r} cannot be converted from format version {version}: {e}") from None
        tensors.update({f"{fqn}.{n}": t for n, t in new.items()})


def build_layer(stored: StoredModel, fqn: str, model: nn.Module, backend: Backend) -> QuantLinear:
    """The QuantLinear of one layer record, checked against the file and the model's layer at `fqn`."""
    return _build_layer(fqn, stored.layers[fqn], model, stored.tensors, backend, stored.path)


def install(model: nn.Module, stored: StoredModel, new: dict[str, nn.Module]) -> nn.Module:
    """Swap the built layers `new` into `model` and load every other tensor of the file.

    Every check (the remaining tensors' names and shapes against the model's state dict) runs
    before the first change, so a mismatched file leaves the model unchanged.
    """
    path = stored.path

    def in_layer(key: str) -> bool:
        return key.rpartition(".")[0] in new

    expected = {k: v for k, v in model.state_dict().items() if not in_layer(k)}
    rest = {k: v for k, v in stored.tensors.items() if not in_layer(k)}
    if set(expected) != set(rest):
        lacking, extra = sorted(set(expected) - set(rest)), sorted(set(rest) - set(expected))
        raise ValueError(f"{path} does not match the model's architecture: tensors missing from the file "
                         f"{lacking[:5]}{'...' if len(lacking) > 5 else ''}, tensors the model does not have "
                         f"{extra[:5]}{'...' if len(extra) > 5 else ''}")
    for k, v in rest.items():
        if isinstance(expected[k], torch.Tensor) and tuple(expected[k].shape) != tuple(v.shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {list(v.shape)} but the model expects "
                             f"{list(expected[k].shape)}")
    before = {fqn: model.get_submodule(fqn) for fqn in new}
    swap_modules(model, new)
    try:
        model.load_state_dict(rest, strict=False)
    except BaseException:
        swap_modules(model, before)  # the state dict did not load: put the old layers back
        raise
    return model


def load_quantized(model: nn.Module, path: str | os.PathLike, *,
                   backend: Backend | str = Backend.TRITON) -> nn.Module:
    """Load a file from save_quantized into `model` (same architecture, float or already quantized).

    Swaps a QuantLinear (with `backend`) in at every layer the file lists and loads every other
    tensor of the state dict; returns the model. Raises ValueError for a damaged, edited,
    foreign or mismatched file; the model is unchanged when it does.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_quantized needs an nn.Module, got {type(model).__name__}")
    backend = Backend.parse(backend)
    stored = read_file(path)
    new: dict[str, QuantLinear] = {}
    for fqn, rec in sorted(stored.layers.items(), key=lambda kv: "shared_with" in kv[1]):
        owner = rec.get("shared_with")
        new[fqn] = new[owner] if owner in new else build_layer(stored, fqn, model, backend)
    return install(model, stored, new)
