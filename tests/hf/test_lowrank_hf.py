"""LowbitConfig(lowrank=r): quantized while loading with the term, saved with save_pretrained and reloaded exactly."""
import json

import pytest
import torch

import lowbit
from lowbit import QuantLinear

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")
hf = pytest.importorskip("lowbit.hf")


def test_lowrank_through_from_pretrained_and_save_pretrained(tmp_path, device):
    t = transformers
    cfg = t.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    float_model = t.LlamaForCausalLM(cfg).eval()
    src = tmp_path / "float"
    float_model.save_pretrained(src)
    q = t.AutoModelForCausalLM.from_pretrained(src, quantization_config=hf.LowbitConfig("int3", group_size=32,
                                                                                         lowrank=4)).eval()
    want = lowbit.quantize_(float_model, "int3", group_size=32, lowrank=4)
    layers = {n: m for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    assert layers and all(m.lowrank == 4 for m in layers.values())
    for name, m in layers.items():
        for tn in m.tensor_names:
            assert torch.equal(getattr(m, tn), getattr(want.get_submodule(name), tn)), (name, tn)
    out = tmp_path / "quantized"
    q.save_pretrained(out)
    manifest = json.loads((out / "config.json").read_text())["quantization_config"]["layers"]
    assert all({"lowrank_a", "lowrank_b"} <= set(rec["tensors"]) for rec in manifest.values())
    r = t.AutoModelForCausalLM.from_pretrained(out).eval()
    for name, m in layers.items():
        rm = r.get_submodule(name)
        assert rm.lowrank == 4 and torch.equal(rm.lowrank_a, m.lowrank_a) and torch.equal(rm.lowrank_b, m.lowrank_b)
    ids = torch.randint(2, 96, (1, 6), device=device)
    with torch.no_grad():
        assert torch.equal(q.to(device)(ids).logits, r.to(device)(ids).logits)
