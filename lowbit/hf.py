"""Hugging Face transformers integration: ``LowbitConfig`` and a quantizer registered with transformers.

Importing this module registers the ``"lowbit"`` quantization method with transformers' public
hooks (``register_quantization_config`` / ``register_quantizer``). Then::

    import lowbit.hf
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=lowbit.hf.LowbitConfig("int4", group_size=128))
    model.save_pretrained(out)                      # safetensors + config.json with the lowbit config
    model = AutoModelForCausalLM.from_pretrained(out)   # loads the packed tensors, no re-quantization

- Quantizing while loading: each selected layer's float weight is quantized as soon as it is
  read from the checkpoint (transformers >= 5 conversion ops), so the float model is never whole
  in memory; any selected layer still in float after loading (e.g. an older transformers) is
  quantized by :func:`lowbit.quantize_` then. Layer selection follows quantize_: exactly
  nn.Linear and GPT-2 Conv1D, ``skip`` patterns (default ``["lm_head"]``) and an output
  embedding tied to the input embedding are kept in float.
- Saving: the config written to config.json carries ``layers``, a manifest {layer: scheme,
  options, [N, K], tensor dtypes and shapes}. Loading a checkpoint with a manifest builds every
  QuantLinear on the meta device before the weights load, so the stored tensors load into them
  unchanged (dtypes kept); the values are validated after loading.

Importing ``lowbit`` never imports this module (nor transformers).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Iterable

import torch
from torch import nn

try:
    from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
    from transformers.quantizers import auto as _hf_auto  # the mappings register_* write to
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("lowbit.hf needs the 'transformers' package: pip install transformers") from e

from .formats import QuantizedWeight, Scheme, make_spec
from .nn.linear import Backend, QuantLinear, is_conv1d, is_float_linear, linear_shape
from .nn.manifest import CONFIG_FORMAT_VERSION, DTYPES, QUANT_METHOD, check_manifest, layer_manifest
from .nn.swap import group_conflict, quantize_, set_submodule, skip_matches

_OPTION_TYPES = {"group_size": int, "symmetric": bool, "per_channel": bool, "outlier_fraction": float, "iters": int,
                 "lowrank": int}

__all__ = ["LowbitConfig", "LowbitHfQuantizer", "layer_manifest", "QUANT_METHOD"]


class LowbitConfig(QuantizationConfigMixin):
    """transformers ``quantization_config`` for lowbit: a scheme, its options and the layers to keep in float.

    ``LowbitConfig("int4", group_size=128)`` quantizes every nn.Linear / Conv1D except ``skip``
    (names as in :func:`lowbit.quantize_`; default ``["lm_head"]``). Options are those of
    :func:`lowbit.quantize_weight` (``group_size``, ``symmetric``, ``per_channel``,
    ``outlier_fraction``, ``iters``, ``lowrank``: the plain-SVD low-rank correction; the
    activation-aware one needs calibration data, so it goes through :func:`lowbit.quantize_`).
    ``skip_incompatible=True`` keeps layers whose in_features the group size does not divide in
    float instead of raising. ``backend`` ("triton" or
    "reference") is given to every QuantLinear. ``layers`` is the per-layer manifest that
    save_pretrained writes; users do not pass it.
    """

    def __init__(self, scheme: str = "int4", *, skip: Iterable[str] | None = ("lm_head",),
                 skip_incompatible: bool = False, backend: str = "triton", layers: dict | None = None,
                 options: dict | None = None, format_version: int = CONFIG_FORMAT_VERSION,
                 quant_method: str = QUANT_METHOD, **scheme_options: Any):
        if quant_method != QUANT_METHOD:
            raise ValueError(f"LowbitConfig has quant_method {QUANT_METHOD!r}, got {quant_method!r}")
        if format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(f"lowbit quantization config format_version {format_version!r} is not supported "
                             f"(this lowbit reads version {CONFIG_FORMAT_VERSION})")
        self.quant_method = QUANT_METHOD
        self.format_version = CONFIG_FORMAT_VERSION
        self.scheme = Scheme.parse(scheme).value
        merged = dict(options or {})
        clash = sorted(set(merged) & set(scheme_options))
        if clash:
            raise ValueError(f"option(s) {clash} given both in options= and as keywords")
        merged.update(scheme_options)
        if "act_scale" in merged:
            raise TypeError("LowbitConfig cannot hold act_scale (calibration data, not a JSON option): quantize with "
                            "lowbit.quantize_(model, scheme, lowrank=r, act_scale=lowbit.nn.activation_scales(...)) "
                            "instead; LowbitConfig(lowrank=r) gives the plain-SVD correction")
        for name, value in merged.items():
            want = _OPTION_TYPES.get(name)
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                merged[name] = value = float(value)
            if want is not None and (type(value) is not want):
                raise TypeError(f"LowbitConfig option {name}={value!r} must be a {want.__name__} "
                                "(the config is stored as JSON in config.json)")
        make_spec(self.scheme, **merged)  # rejects unknown or invalid options now, not at load time
        self.options = merged
        if isinstance(skip, str):
            skip = [skip]
        self.skip = [str(s) for s in (skip or ())]
        if not isinstance(skip_incompatible, bool):
            raise TypeError(f"skip_incompatible must be a bool, got {type(skip_incompatible).__name__}")
        self.skip_incompatible = skip_incompatible
        self.backend = Backend.parse(backend).value
        self.layers = None if layers is None else check_manifest(layers)


def _meta_layer(fqn: str, rec: dict, module: nn.Module, backend: Backend) -> QuantLinear:
    """An empty QuantLinear on the meta device with the manifest's tensor shapes and dtypes."""
    if not is_float_linear(module):
        raise ValueError(f"lowbit checkpoint: layer {fqn!r} is quantized in the checkpoint but is a "
                         f"{type(module).__name__} in the model (expected nn.Linear or Conv1D)")
    shape = tuple(int(d) for d in rec["shape"])
    if linear_shape(module) != shape:
        raise ValueError(f"lowbit checkpoint: layer {fqn!r} has [N, K] = {list(shape)} in the checkpoint but "
                         f"{list(linear_shape(module))} in the model")
    tensors = {name: torch.empty(tuple(s), dtype=DTYPES[d], device="meta") for name, (d, s) in rec["tensors"].items()}
    scheme = Scheme.parse(rec["scheme"])
    try:
        qw = QuantizedWeight(scheme, make_spec(scheme, **rec["options"]), shape, tensors)
    except (ValueError, TypeError) as e:
        raise ValueError(f"lowbit checkpoint: layer {fqn!r}: manifest does not describe a valid "
                         f"{scheme.value} weight: {e}") from None
    bias = module.bias
    layer = QuantLinear(qw, None, backend=backend)
    if bias is not None:
        layer.bias = bias if bias.device.type == "meta" else nn.Parameter(bias.detach().to("meta"), requires_grad=False)
    return layer


def _swap_in(model: nn.Module, fqn: str, layer: QuantLinear) -> None:
    """Put `layer` at `fqn` and keep transformers' post-load weight init away from it.

    transformers initializes every module not flagged ``_is_hf_initialized`` after loading, and
    some models' init of a container reaches into its children (GPT-2 rescales
    ``attn.c_proj.weight``), which a QuantLinear does not have. A parent that holds no tensors of
    its own has nothing else to initialize, so it is flagged too; its other children are
    initialized on their own.
    """
    set_submodule(model, fqn, layer)
    layer._is_hf_initialized = True
    parent_name = fqn.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if parent is not model and not any(True for _ in parent.parameters(recurse=False)) \
            and not any(True for _ in parent.buffers(recurse=False)):
        parent._is_hf_initialized = True


def _checkpoint_keys(files) -> set[str] | None:
    """Tensor names in the checkpoint's safetensors files (None when they cannot be listed)."""
    if not files:
        return None
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    keys: set[str] = set()
    for f in files:
        if not str(f).endswith(".safetensors") or not os.path.isfile(f):
            return None
        with safe_open(f, framework="pt") as h:
            keys.update(h.keys())
    return keys


class LowbitHfQuantizer(HfQuantizer):
    """transformers quantizer for :class:`LowbitConfig` (see the module docstring for the loading rules)."""

    requires_calibration = False

    def __init__(self, quantization_config: LowbitConfig, **kwargs):
        if not isinstance(quantization_config, LowbitConfig):
            raise TypeError(f"the lowbit quantizer needs a LowbitConfig, got {type(quantization_config).__name__}")
        # A private copy: the manifest filled in after quantizing must not leak into the user's object.
        super().__init__(copy.deepcopy(quantization_config), **kwargs)
        self._targets: set[str] = set()

    # -- environment -----------------------------------------------------------------------
    def validate_environment(self, *args, **kwargs):
        if self.pre_quantized and not self.quantization_config.layers:
            raise ValueError("this checkpoint's lowbit quantization config has no 'layers' manifest; it was not "
                             "written by save_pretrained of a lowbit-quantized model or by python -m lowbit import")

    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    # -- before loading: pick or build the layers --------------------------------------------
    def _skip_names(self, model) -> list[str]:
        skip = list(self.quantization_config.skip)
        get_out = getattr(model, "get_output_embeddings", None)
        out = get_out() if callable(get_out) else None
        cfg = getattr(model, "config", None)
        text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
        if out is not None and getattr(text_cfg, "tie_word_embeddings", False):
            skip += [name for name, m in model.named_modules() if m is out]
        return skip

    def _select(self, model) -> set[str]:
        """The layers quantize_ would swap, with the same errors for group-size conflicts."""
        cfg = self.quantization_config
        spec = make_spec(cfg.scheme, **cfg.options)
        skip = self._skip_names(model)
        chosen = set()
        for fqn, mod in model.named_modules():
            if not fqn or not is_float_linear(mod) or any(skip_matches(fqn, s) for s in skip):
                continue
            k = linear_shape(mod)[1]
            gs = group_conflict(spec, k)
            if gs is not None:
                if cfg.skip_incompatible:
                    continue
                raise ValueError(f"layer {fqn!r} has in_features={k}, which is not divisible by group_size={gs}; "
                                 "choose another group_size, add the layer to skip, or pass "
                                 "skip_incompatible=True")
            chosen.add(fqn)
        return chosen

    def _process_model_before_weight_loading(self, model, **kwargs):
        cfg = self.quantization_config
        if not self.pre_quantized:
            self._targets = self._select(model)
            return model
        backend = Backend.parse(cfg.backend)
        keys = _checkpoint_keys(kwargs.get("checkpoint_files"))
        built = {}
        for fqn, rec in cfg.layers.items():
            try:
                module = model.get_submodule(fqn)
            except AttributeError:
                raise ValueError(f"lowbit checkpoint: quantized layer {fqn!r} does not exist in the model "
                                 "(a different architecture?)") from None
            if keys is not None:
                missing = [n for n in rec["tensors"] if f"{fqn}.{n}" not in keys]
                if missing:
                    raise ValueError(f"lowbit checkpoint: layer {fqn!r} lacks tensors {missing} in the safetensors files")
            built[fqn] = _meta_layer(fqn, rec, module, backend)
        for fqn, layer in built.items():
            _swap_in(model, fqn, layer)
        return model

    # -- while loading: quantize each selected weight as it arrives (transformers >= 5) ------
    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized or not _has_conversion_ops():
            return False
        fqn, _, leaf = param_name.rpartition(".")
        return leaf == "weight" and fqn in self._targets

    def get_quantize_ops(self):
        return _quantize_op_class()(self)

    def quantize_layer(self, model, fqn: str, value: torch.Tensor) -> None:
        """Replace layer `fqn` (float, meta or loaded) by a QuantLinear built from the checkpoint weight `value`."""
        from .reference import quantize_weight

        cfg = self.quantization_config
        module = model.get_submodule(fqn)
        w = value.t() if is_conv1d(module) else value  # Conv1D stores [in, out]
        try:
            qw = quantize_weight(w.contiguous(), cfg.scheme, **cfg.options)
        except (ValueError, TypeError) as e:
            raise type(e)(f"layer {fqn!r}: {e}") from e
        layer = QuantLinear(qw, None, backend=cfg.backend)
        if module.bias is not None:
            layer.bias = module.bias  # loaded already or still meta (then loading fills it)
        _swap_in(model, fqn, layer)

    # -- after loading -----------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model, **kwargs):
        cfg = self.quantization_config
        if not self.pre_quantized:
            left = sorted(f for f in self._targets if is_float_linear(model.get_submodule(f)))
            if left:  # not quantized during loading (older transformers, or a weight the checkpoint lacked)
                quantize_(model, cfg.scheme, filter_fn=lambda m, n: n in set(left), skip=(),
                          backend=cfg.backend, **cfg.options)
            cfg.layers = layer_manifest(model)
        for fqn, m in model.named_modules():
            if not isinstance(m, QuantLinear):
                continue
            meta = [n for n in m.tensor_names if getattr(m, n).device.type == "meta"]
            if meta or (m.bias is not None and m.bias.device.type == "meta"):
                raise ValueError(f"layer {fqn!r}: tensors {meta or ['bias']} were not loaded from the checkpoint")
            try:
                m.quantized_weight()
            except (ValueError, TypeError) as e:
                raise ValueError(f"layer {fqn!r}: the loaded tensors are not a valid {m.scheme.value} weight: {e}") from None
        return model


def _has_conversion_ops() -> bool:
    try:
        import transformers.core_model_loading as cml
    except ImportError:
        return False
    return hasattr(cml, "ConversionOps") and hasattr(HfQuantizer, "get_quantize_ops")


_QUANTIZE_OP = None


def _quantize_op_class():
    """A transformers ConversionOps that quantizes one layer's weight as it is loaded (built lazily)."""
    global _QUANTIZE_OP
    if _QUANTIZE_OP is None:
        from transformers.core_model_loading import ConversionOps

        class LowbitQuantizeOp(ConversionOps):
            """Quantize the loaded float weight of one layer and swap in its QuantLinear; nothing is left to set."""

            def __init__(self, quantizer: LowbitHfQuantizer):
                self.quantizer = quantizer

            def convert(self, input_dict, full_layer_name=None, model=None, missing_keys=None, **kwargs):
                for key, value in input_dict.items():
                    value = value[0] if isinstance(value, list) else value
                    fqn = key.rpartition(".")[0]
                    self.quantizer.quantize_layer(model, fqn, value)
                    if missing_keys is not None:
                        missing_keys.discard(key)
                return {}

        _QUANTIZE_OP = LowbitQuantizeOp
    return _QUANTIZE_OP


def _register() -> None:
    """Register the config and quantizer under "lowbit" (again after a reload of this module)."""
    configs, quantizers = _hf_auto.AUTO_QUANTIZATION_CONFIG_MAPPING, _hf_auto.AUTO_QUANTIZER_MAPPING
    for mapping in (configs, quantizers):
        old = mapping.get(QUANT_METHOD)
        if old is not None and old.__module__ != __name__:
            raise RuntimeError(f"transformers already has a quantization method named {QUANT_METHOD!r} "
                               f"({old.__module__}.{old.__qualname__})")
        mapping.pop(QUANT_METHOD, None)
    register_quantization_config(QUANT_METHOD)(LowbitConfig)
    register_quantizer(QUANT_METHOD)(LowbitHfQuantizer)


_register()
