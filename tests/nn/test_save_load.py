"""save_quantized / load_quantized: safetensors round trips and every kind of bad file.

Round trips must give identical outputs (torch.equal): the file stores the exact packed bytes,
and the loaded model runs the same kernels on them. Most cases use a tiny Llama built from a
config (tied embeddings exercise the alias table); one uses a nested toy model.
"""
import json
import os
import struct
import sys

import pytest
import torch
from torch import nn

import lowbit
from lowbit import QuantLinear
from lowbit.nn import serialization as S


def tiny_llama(seed, device, tie=True):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture
def ids(device):
    return torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(3)).to(device)


@pytest.fixture
def saved(tmp_path, device):
    """An int4 Llama (reference backend: these tests are about files, not kernels) and its file."""
    m = lowbit.quantize_(tiny_llama(0, device), "int4", group_size=32, backend="reference")
    path = tmp_path / "llama-int4.safetensors"
    lowbit.save_quantized(m, path)
    return m, path


# -- helpers that damage a file the way a user or a disk might ----------------------------------
def read_header(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_header(path, header, data):
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(body)) + body + data)


def edit_metadata(path, edit, redigest):
    """Apply edit(meta) to the file's string metadata; redigest=True also recomputes the digest
    (as a buggy writer would), so the checks behind the digest are reached."""
    header, data = read_header(path)
    meta = header["__metadata__"]
    edit(meta)
    if redigest:
        meta["digest"] = S.metadata_digest(meta)
    write_header(path, header, data)


def edit_layer(path, fqn, **changes):
    def edit(meta):
        layers = json.loads(meta["layers"])
        layers[fqn].update(changes)
        meta["layers"] = json.dumps(layers, sort_keys=True)

    edit_metadata(path, edit, redigest=True)


def quant_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))


# -- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme,opts", [("int4", {"group_size": 32}), ("sq3", {"iters": 5}),
                                         ("ternary", {"per_channel": True}), ("binary", {})])
def test_round_trip_identical_outputs(scheme, opts, tmp_path, device, ids):
    a = lowbit.quantize_(tiny_llama(0, device), scheme, **opts)
    path = tmp_path / f"{scheme}.safetensors"
    lowbit.save_quantized(a, path)
    b = lowbit.load_quantized(tiny_llama(1, device), path)  # other random weights everywhere
    assert quant_names(b) == quant_names(a) and len(quant_names(b)) == 14
    for name in quant_names(a):
        qa, qb = a.get_submodule(name), b.get_submodule(name)
        assert qb.scheme is qa.scheme and qb.options() == qa.options() and qb.backend.value == "triton"
        assert qb.qweight.device.type == torch.device(device).type
    assert b.lm_head.weight is b.model.embed_tokens.weight  # the tie survives (stored once, aliased)
    assert torch.equal(logits(b, ids), logits(a, ids))


def test_round_trip_nested_toy_and_untied(tmp_path, device):
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stack = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.ModuleList([nn.Linear(96, 64, bias=False)]))
            self.norm = nn.LayerNorm(64)

        def forward(self, x):
            return self.norm(self.stack[2][0](self.stack[1](self.stack[0](x))))

    torch.manual_seed(0)
    a = Toy().to(device)
    lowbit.quantize_(a, "nf4", group_size=32, filter_fn=lambda m, n: n == "stack.0")
    lowbit.quantize_(a, "lut4", iters=5)  # mixed schemes in one file
    path = tmp_path / "toy.safetensors"
    lowbit.save_quantized(a, path)
    torch.manual_seed(1)
    b = lowbit.load_quantized(Toy().to(device), path, backend="reference")
    assert b.stack[0].scheme.value == "nf4" and b.stack[2][0].scheme.value == "lut4"
    assert b.stack[0].backend.value == "reference"
    assert torch.equal(b.norm.weight, a.norm.weight)
    x = torch.randn(3, 64, device=device)
    for m in (a.stack[0], a.stack[2][0]):
        m.backend = "reference"
    assert torch.equal(b(x), a(x))


def test_file_metadata(saved):
    m, path = saved
    header, _ = read_header(path)
    meta = header["__metadata__"]
    assert meta["format"] == "lowbit.quantized" and meta["format_version"] == "2"
    layers = json.loads(meta["layers"])
    q = layers["model.layers.0.self_attn.k_proj"]
    assert q == {"scheme": "int4", "options": {"group_size": 32, "symmetric": False}, "shape": [32, 64],
                 "bias": False, "tensors": ["qweight", "scales", "zeros"]}
    tensors = json.loads(meta["tensors"])
    assert tensors["model.layers.0.self_attn.k_proj.qweight"]["sha256"] == S.tensor_sha256(
        m.model.layers[0].self_attn.k_proj.qweight)
    assert json.loads(meta["aliases"]) == {"lm_head.weight": "model.embed_tokens.weight"}
    assert b"pickle" not in open(path, "rb").read()[:8 + len(json.dumps(header))]


def test_load_into_already_quantized_model(saved, device, ids):
    m, path = saved
    same = lowbit.quantize_(tiny_llama(5, device), "int4", group_size=32)
    assert torch.equal(logits(lowbit.load_quantized(same, path, backend="reference"), ids), logits(m, ids))
    other = lowbit.quantize_(tiny_llama(5, device), "nf4", group_size=32)
    with pytest.raises(ValueError, match="already quantized as nf4.*file has int4"):
        lowbit.load_quantized(other, path)


# -- bad files -------------------------------------------------------------------------------------
def assert_untouched(model):
    assert quant_names(model) == []


def test_tampered_tensor_bytes(saved, device):
    _, path = saved
    header, data = read_header(path)
    start, _ = header["model.layers.1.mlp.down_proj.qweight"]["data_offsets"]
    data = bytearray(data)
    data[start] ^= 0x01
    write_header(path, header, bytes(data))
    fresh = tiny_llama(1, device)
    with pytest.raises(ValueError, match=r"'model\.layers\.1\.mlp\.down_proj\.qweight' fails its sha256 check"):
        lowbit.load_quantized(fresh, path)
    assert_untouched(fresh)


def test_edited_metadata_fails_the_digest(saved, device):
    _, path = saved
    edit_metadata(path, lambda meta: meta.update(layers=meta["layers"].replace('"int4"', '"int3"')), redigest=False)
    with pytest.raises(ValueError, match="metadata digest mismatch"):
        lowbit.load_quantized(tiny_llama(1, device), path)


@pytest.mark.parametrize("changes,match", [
    ({"scheme": "int3"}, r"k_proj'.*not form a valid int3 \[32, 64\] weight.*'qweight' has shape"),
    ({"scheme": "nf4", "options": {"group_size": 32}},
     r"k_proj'.*not form a valid nf4.*unexpected tensors \['scales', 'zeros'\]"),
    ({"scheme": "int5"}, r"k_proj' has a bad metadata record.*unknown scheme 'int5'"),
    ({"options": {"group_size": 64, "symmetric": False}}, r"k_proj'.*not form a valid int4.*'scales' has shape"),
    ({"options": {"group_size": 32, "symmetric": True}}, r"k_proj'.*unexpected tensors \['zeros'\]"),
    ({"options": {"groupsize": 32}}, r"k_proj' has a bad metadata record.*unknown option"),
    ({"shape": [48, 64]}, r"k_proj': the file has shape \[N, K\] = \[48, 64\] but the model's nn.Linear has "
                          r"out_features=32, in_features=64"),
    ({"bias": True}, r"k_proj': bias=True in the file but bias=False in the model"),
])
def test_metadata_that_no_longer_matches_the_tensors(saved, device, changes, match):
    """With the digest recomputed (a buggy writer), the per-layer checks still catch the mismatch."""
    _, path = saved
    edit_layer(path, "model.layers.0.self_attn.k_proj", **changes)
    fresh = tiny_llama(1, device)
    with pytest.raises(ValueError, match=match):
        lowbit.load_quantized(fresh, path)
    assert_untouched(fresh)


def test_tensor_list_mismatch(saved, device):
    _, path = saved

    def drop(meta):
        t = json.loads(meta["tensors"])
        t.pop("model.norm.weight")
        meta["tensors"] = json.dumps(t, sort_keys=True)

    edit_metadata(path, drop, redigest=True)
    with pytest.raises(ValueError, match="do not match the metadata's tensor list"):
        lowbit.load_quantized(tiny_llama(1, device), path)


@pytest.mark.parametrize("cut", [1, 1000, 10**9])
def test_truncated_file(saved, device, cut):
    _, path = saved
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:max(len(raw) - cut, 4)])
    fresh = tiny_llama(1, device)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        lowbit.load_quantized(fresh, path)
    assert_untouched(fresh)


def test_other_format_version(saved, device):
    _, path = saved
    edit_metadata(path, lambda meta: meta.update(format_version="99"), redigest=True)
    with pytest.raises(ValueError, match="format version '99'.*reads versions 1, 2"):
        lowbit.load_quantized(tiny_llama(1, device), path)


def _redeclare(path, key, dtype):
    """Re-declare one stored tensor's dtype in the safetensors header (same bytes), fixing up the lowbit
    tensor record and the digest as a deliberate editor or a buggy converter would."""
    header, data = read_header(path)
    header[key]["dtype"] = dtype
    meta = header["__metadata__"]
    records = json.loads(meta["tensors"])
    records[key]["dtype"] = {"BF16": "bfloat16", "F16": "float16"}[dtype]
    meta["tensors"] = json.dumps(records, sort_keys=True)
    meta["digest"] = S.metadata_digest(meta)
    write_header(path, header, data)


def test_a_tensor_redeclared_with_another_dtype_is_caught(saved, device):
    """fp16 scales re-declared as bf16 (same bytes, other values) with the digest recomputed: the per-tensor
    sha256 binds dtype and shape, so the load fails instead of running silently wrong weights."""
    _, path = saved
    _redeclare(path, "model.layers.0.self_attn.k_proj.scales", "BF16")
    fresh = tiny_llama(1, device)
    with pytest.raises(ValueError, match="k_proj.scales' fails its sha256 check"):
        lowbit.load_quantized(fresh, path)
    assert_untouched(fresh)


def test_version_1_files_still_load(saved, device, ids):
    """A version-1 file (sha256 over the bytes only) loads and gives the same outputs."""
    m, path = saved

    def to_v1(meta):
        records = json.loads(meta["tensors"])
        tensors = S.read_file(path).tensors  # the file is still the valid version-2 one here
        for key, rec in records.items():
            rec["sha256"] = S.tensor_sha256(tensors[key], version=1)
        meta["tensors"] = json.dumps(records, sort_keys=True)
        meta["format_version"] = "1"

    edit_metadata(path, to_v1, redigest=True)
    fresh = lowbit.load_quantized(tiny_llama(1, device), path, backend="reference")
    assert torch.equal(logits(fresh, ids), logits(m, ids))


def _pack_v1(codes):
    """3-bit codes [N, K] in the format-version-1 layout: 10 per int32 word at bit 3i, [ceil(K/10), N]."""
    n, k = codes.shape
    words = torch.zeros(n, -(-k // 10), dtype=torch.int64)
    for i in range(k):
        words[:, i // 10] |= codes[:, i].to(torch.int64) << (3 * (i % 10))
    return words.to(torch.int32).t().contiguous()


def test_version1_three_bit_file_is_converted(tmp_path, device, ids):
    """A version-1 file (3-bit codes 10 per word) loads into the exact 3-bit layout, same outputs."""
    from safetensors.torch import save_file

    a = lowbit.quantize_(tiny_llama(0, device), "int3", group_size=32, backend="reference",
                         filter_fn=lambda m, n: "mlp" in n)
    lowbit.quantize_(a, "lut3", iters=3, backend="reference")  # the other layers: 3-bit LUT codes
    assert {a.get_submodule(n).scheme.value for n in quant_names(a)} == {"int3", "lut3"}
    path = tmp_path / "v2.safetensors"
    lowbit.save_quantized(a, path)
    header, _ = read_header(path)
    meta = header["__metadata__"]
    layers = json.loads(meta["layers"])
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        stored = {key: f.get_tensor(key) for key in f.keys()}
    for fqn in layers:  # rewrite every 3-bit code tensor in the old layout
        key = f"{fqn}.qweight"
        if key in stored:
            k = layers[fqn]["shape"][1]
            stored[key] = _pack_v1(lowbit.reference.unpack_codes(stored[key], 3, k))
    old_meta = dict(meta, format_version="1")
    old_meta["tensors"] = json.dumps({key: {"sha256": S.tensor_sha256(t, version=1),
                                            "dtype": str(t.dtype).removeprefix("torch."),
                                            "shape": list(t.shape)} for key, t in stored.items()}, sort_keys=True)
    old_meta["digest"] = S.metadata_digest(old_meta)
    v1 = tmp_path / "v1.safetensors"
    save_file(stored, str(v1), metadata=old_meta)
    b = lowbit.load_quantized(tiny_llama(1, device), v1, backend="reference")
    for name in quant_names(a):
        assert torch.equal(b.get_submodule(name).qweight, a.get_submodule(name).qweight), name
    assert torch.equal(logits(b, ids), logits(a, ids))
    # the same file read as version 2 is refused: its code tensors have the wrong shape
    bad_meta = dict(old_meta, format_version="2")
    bad_meta["tensors"] = json.dumps({key: {"sha256": S.tensor_sha256(t, version=2),
                                            "dtype": str(t.dtype).removeprefix("torch."),
                                            "shape": list(t.shape)} for key, t in stored.items()}, sort_keys=True)
    bad_meta["digest"] = S.metadata_digest(bad_meta)
    save_file(stored, str(v1), metadata=bad_meta)
    with pytest.raises(ValueError, match="qweight"):
        lowbit.load_quantized(tiny_llama(1, device), v1, backend="reference")


def test_not_a_lowbit_file(tmp_path, device):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a lowbit quantized file"):
        lowbit.load_quantized(tiny_llama(1, device), path)
    with pytest.raises(FileNotFoundError):
        lowbit.load_quantized(tiny_llama(1, device), tmp_path / "missing.safetensors")


def test_wrong_architecture(saved, device):
    _, path = saved
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2,
                                         tie_word_embeddings=True)).to(device)
    with pytest.raises(ValueError, match=r"down_proj': the file has shape \[N, K\] = \[64, 128\].*in_features=192"):
        lowbit.load_quantized(wider, path)
    assert_untouched(wider)
    deeper = tiny_llama(1, device)
    deeper.model.layers.append(type(deeper.model.layers[0])(deeper.config, 2).to(device))
    with pytest.raises(ValueError, match=r"does not match the model's architecture: tensors missing from the file "
                                         r"\['model\.layers\.2\."):
        lowbit.load_quantized(deeper, path)
    assert_untouched(deeper)
    untied = tiny_llama(1, device, tie=False)
    lowbit.load_quantized(untied, path)  # the alias fills both copies
    assert torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)
    with pytest.raises(ValueError, match=r"quantized layer 'model\.layers\.0\..*' that the model does not have"):
        lowbit.load_quantized(nn.Sequential(nn.Linear(64, 64)), path)


def test_save_needs_quantized_layers(tmp_path):
    with pytest.raises(ValueError, match="no QuantLinear layers"):
        lowbit.save_quantized(nn.Sequential(nn.Linear(4, 4)), tmp_path / "x.safetensors")
    assert not os.listdir(tmp_path)


def test_missing_safetensors_hint(saved, monkeypatch, device):
    m, path = saved
    for name in [n for n in sys.modules if n == "safetensors" or n.startswith("safetensors.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import now fails as if not installed
    with pytest.raises(ImportError, match=r"need the 'safetensors' package: pip install safetensors") as e:
        lowbit.save_quantized(m, path)
    assert "\n" not in str(e.value)
    with pytest.raises(ImportError, match="pip install safetensors"):
        lowbit.load_quantized(tiny_llama(1, device), path)


def _write_version_1(path, model):
    """A version-1 file of `model` as the version-1 writer made it: ternary/binary codes packed along K with
    pack_codes (16 or 32 per int32), sha256 over the bytes only."""
    from safetensors.torch import save_file

    from lowbit.reference import pack_codes, weight_codes

    layers, stored = {}, {}
    for fqn, m in model.named_modules():
        if isinstance(m, QuantLinear):
            layers[fqn] = {"scheme": m.scheme.value, "options": m.options(), "shape": list(m.shape),
                           "bias": m.bias is not None, "tensors": list(m.tensor_names)}
    for key, t in model.state_dict().items():
        stored[key] = t.detach().cpu().contiguous()
    for fqn, rec in layers.items():
        m = model.get_submodule(fqn)
        bits = {"ternary": 2, "binary": 1}[rec["scheme"]]
        stored[f"{fqn}.qweight"] = pack_codes(weight_codes(m.quantized_weight()), bits)
    meta = {"format": "lowbit.quantized", "format_version": "1", "layers": json.dumps(layers, sort_keys=True),
            "tensors": json.dumps({k: {"sha256": S.tensor_sha256(t, version=1),
                                       "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                                   for k, t in stored.items()}, sort_keys=True),
            "aliases": json.dumps({}), "lowbit_version": "0.1.0"}
    meta["digest"] = S.metadata_digest(meta)
    save_file(stored, str(path), metadata=meta)


@pytest.mark.parametrize("scheme", ["ternary", "binary"])
def test_version_1_sign_layouts_are_converted_on_load(scheme, tmp_path, device, ids):
    """Version-1 ternary/binary files stored codes along K; loading converts them to today's lane layout."""
    a = lowbit.quantize_(tiny_llama(0, device, tie=False), scheme, backend="reference")
    path = tmp_path / "v1.safetensors"
    _write_version_1(path, a)
    b = lowbit.load_quantized(tiny_llama(1, device, tie=False), path, backend="reference")
    for name in quant_names(a):
        assert torch.equal(b.get_submodule(name).qweight, a.get_submodule(name).qweight), name
    assert torch.equal(logits(b, ids), logits(a, ids))
