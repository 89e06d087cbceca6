"""The transformers quantizer: from_pretrained(quantization_config=LowbitConfig(...)), save_pretrained, reload.

Tiny random models are saved offline with save_pretrained (no downloads). Checks:
- loading a float checkpoint with LowbitConfig quantizes every selected layer while the weights
  load (the conversion op runs once per layer), with tensors identical to quantize_ on the same
  float model;
- save_pretrained writes safetensors + config.json whose quantization_config has the manifest,
  and from_pretrained reloads it without quantizing anything, tensor for tensor equal;
- bad configs and damaged checkpoints raise errors that name the option or the layer.
"""
import json
import subprocess
import sys

import pytest
import torch

import lowbit
from lowbit import QuantLinear

from helpers import assert_close

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
hf = pytest.importorskip("lowbit.hf")

VOCAB = 96


def tiny(family):
    t = transformers
    if family == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                              bos_token_id=0, eos_token_id=1)).eval()
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if family == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(**common)).eval()
    return t.LlamaForCausalLM(t.LlamaConfig(**common)).eval()


FAMILIES = [pytest.param(f, id=f) for f in ("llama", "qwen2", "gpt2")]


@pytest.fixture
def float_dir(tmp_path, request):
    family = getattr(request, "param", "llama")
    model = tiny(family)
    path = tmp_path / f"{family}-float"
    model.save_pretrained(path)
    return model, path


def quant_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def load(path, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(path, **kw).eval()


def test_import_lowbit_does_not_import_transformers():
    code = ("import sys, lowbit, lowbit.nn, lowbit.importers, lowbit.importers.checkpoint, lowbit.cli.import_; "
            "bad = [m for m in ('transformers', 'triton', 'safetensors', 'hqq', 'compressed_tensors') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("float_dir", FAMILIES, indirect=True)
def test_from_pretrained_quantizes_while_loading(float_dir, monkeypatch, device):
    model, path = float_dir
    calls = []
    orig = hf.LowbitHfQuantizer.quantize_layer

    def spy(self, m, fqn, value):
        calls.append(fqn)
        return orig(self, m, fqn, value)

    monkeypatch.setattr(hf.LowbitHfQuantizer, "quantize_layer", spy)
    q = load(path, quantization_config=hf.LowbitConfig("int4", group_size=32))
    expect = lowbit.quantize_(model, "int4", group_size=32)
    got, want = quant_layers(q), quant_layers(expect)
    assert sorted(got) == sorted(want) and len(got) > 0
    assert sorted(calls) == sorted(want)  # each layer quantized once, while loading
    for name, m in want.items():
        for t in m.tensor_names:
            assert torch.equal(getattr(got[name], t), getattr(m, t)), (name, t)
        assert (got[name].bias is None) == (m.bias is None)
        if m.bias is not None:
            assert torch.equal(got[name].bias, m.bias)
    assert not isinstance(q.lm_head, QuantLinear)
    if q.config.tie_word_embeddings:
        assert q.lm_head.weight is q.get_input_embeddings().weight
    ids = torch.randint(2, VOCAB, (2, 7), device=device)
    with torch.no_grad():
        assert_close("from_pretrained vs quantize_", expect.to(device)(ids).logits, q.to(device)(ids).logits, 1e-5)


@pytest.mark.parametrize("float_dir", FAMILIES, indirect=True)
def test_save_pretrained_round_trip_is_exact(float_dir, tmp_path, monkeypatch, device):
    _, path = float_dir
    q = load(path, quantization_config=hf.LowbitConfig("int4", group_size=32))
    out = tmp_path / "quantized"
    q.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "lowbit" and cfg["scheme"] == "int4" and cfg["options"] == {"group_size": 32}
    assert sorted(cfg["layers"]) == sorted(quant_layers(q))
    assert any(p.suffix == ".safetensors" for p in out.iterdir())

    def no_quantizing(*a, **k):
        raise AssertionError("reloading a lowbit checkpoint must not quantize")

    monkeypatch.setattr(lowbit.reference, "quantize_weight", no_quantizing)
    monkeypatch.setattr(hf.LowbitHfQuantizer, "quantize_layer", no_quantizing)
    r = load(out)
    assert r.hf_quantizer.pre_quantized
    sq, sr = q.state_dict(), r.state_dict()
    assert set(sq) == set(sr)
    for k in sq:
        assert sq[k].dtype == sr[k].dtype and torch.equal(sq[k], sr[k]), k
    ids = torch.randint(2, VOCAB, (1, 6), device=device)
    with torch.no_grad():
        assert torch.equal(q.to(device)(ids).logits, r.to(device)(ids).logits)
    # and once more: the reloaded model saves the same checkpoint
    out2 = tmp_path / "again"
    r.save_pretrained(out2)
    assert json.loads((out2 / "config.json").read_text())["quantization_config"] == cfg


def test_reload_with_other_schemes_and_reference_backend(float_dir, tmp_path):
    _, path = float_dir
    cfg = hf.LowbitConfig("sq3", outlier_fraction=0.01, iters=2, backend="reference",
                          skip=["lm_head", "model.layers.1"])
    q = load(path, quantization_config=cfg)
    assert cfg.layers is None  # the user's object is not filled in
    layers = quant_layers(q)
    assert layers and all(m.scheme.value == "sq3" and m.backend.value == "reference" for m in layers.values())
    assert len(layers) == 7 and all(n.startswith("model.layers.0.") for n in layers)
    q.save_pretrained(tmp_path / "sq3")
    r = load(tmp_path / "sq3")
    for name, m in layers.items():
        other = dict(r.named_modules())[name]
        assert other.col_idx.numel() == m.col_idx.numel()
        for t in m.tensor_names:
            assert torch.equal(getattr(other, t), getattr(m, t))


def test_config_json_round_trip_and_validation():
    cfg = hf.LowbitConfig("int3", group_size=64, symmetric=True, skip="lm_head")
    d = cfg.to_dict()
    json.dumps(d)
    again = hf.LowbitConfig.from_dict(d)
    assert again.to_dict() == d
    with pytest.raises(ValueError, match="unknown option"):
        hf.LowbitConfig("int4", outlier_fraction=0.1)
    with pytest.raises(ValueError, match="group_size must be one of"):
        hf.LowbitConfig("int4", group_size=256)
    with pytest.raises(TypeError, match="group_size=32.0 must be a int"):
        hf.LowbitConfig("int4", group_size=32.0)
    with pytest.raises(ValueError, match="unknown scheme"):
        hf.LowbitConfig("int5")
    with pytest.raises(ValueError, match="unknown backend"):
        hf.LowbitConfig("int4", backend="cuda")
    with pytest.raises(ValueError, match="format_version"):
        hf.LowbitConfig.from_dict({**d, "format_version": 99})
    with pytest.raises(ValueError, match="layer 'x' has a bad manifest entry"):
        hf.LowbitConfig.from_dict({**d, "layers": {"x": {"scheme": "int3", "options": {}, "shape": [1, 2]}}})


def test_group_size_conflict_names_the_layer(float_dir):
    _, path = float_dir
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.0\.self_attn\.q_proj' has in_features=64"):
        load(path, quantization_config=hf.LowbitConfig("int4", group_size=128))
    q = load(path, quantization_config=hf.LowbitConfig("int4", group_size=128, skip_incompatible=True))
    assert sorted(quant_layers(q)) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]


@pytest.fixture
def saved_quantized(float_dir, tmp_path):
    _, path = float_dir
    out = tmp_path / "q"
    load(path, quantization_config=hf.LowbitConfig("ternary")).save_pretrained(out)
    return out


def _edit_config(path, fn):
    p = path / "config.json"
    cfg = json.loads(p.read_text())
    fn(cfg["quantization_config"])
    p.write_text(json.dumps(cfg))


def test_damaged_checkpoint_manifest_shape(saved_quantized):
    def bad_shape(qc):
        qc["layers"]["model.layers.0.self_attn.q_proj"]["shape"] = [64, 128]

    _edit_config(saved_quantized, bad_shape)
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.0\.self_attn\.q_proj' has \[N, K\] = \[64, 128\]"):
        load(saved_quantized)


def test_damaged_checkpoint_unknown_layer(saved_quantized):
    def extra(qc):
        qc["layers"]["model.layers.7.mlp.up_proj"] = qc["layers"]["model.layers.0.mlp.up_proj"]

    _edit_config(saved_quantized, extra)
    with pytest.raises(ValueError, match=r"'model\.layers\.7\.mlp\.up_proj' does not exist in the model"):
        load(saved_quantized)


def test_damaged_checkpoint_missing_tensor(saved_quantized):
    from safetensors.torch import load_file, save_file

    f = saved_quantized / "model.safetensors"
    sd = load_file(f)
    del sd["model.layers.1.mlp.up_proj.gamma"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.1\.mlp\.up_proj' lacks tensors \['gamma'\]"):
        load(saved_quantized)


def test_damaged_checkpoint_bad_codes(saved_quantized):
    from safetensors.torch import load_file, save_file

    f = saved_quantized / "model.safetensors"
    sd = load_file(f)
    sd["model.layers.0.mlp.gate_proj.qweight"][0, 0] = -1  # every 2-bit field = 3: not a ternary code
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.0\.mlp\.gate_proj'.*code 3"):
        load(saved_quantized)


def test_manifest_without_layers_is_refused(saved_quantized):
    _edit_config(saved_quantized, lambda qc: qc.pop("layers"))
    with pytest.raises(ValueError, match="no 'layers' manifest"):
        load(saved_quantized)
