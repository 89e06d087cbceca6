"""quantize_ on tiny random-init causal LMs of several families (Llama, Mistral, Qwen2, Phi, GPT-2).

Models are built offline from transformers configs (hidden 64, 1-2 blocks, no downloads).
Checks:
- the layers that quantize_ swapped are exactly the float linear layers of the model (nn.Linear,
  and GPT-2's Conv1D whose weight is stored [in, out]), lm_head and tied embeddings kept;
- the quantized model equals the float model with every swapped weight replaced by its
  dequantized value (this is what pins the Conv1D transpose: square layers would hide it);
- logits under the Triton kernels (interpreter on CPU) match backend="reference";
- generate() runs a few greedy tokens under the kernels and gives the reference's tokens.

Bounds: every layer in fp32 is within ~1e-5 relative of the float64 oracle (see tests/test_nn.py);
a two-block model stays far below TOL_MODEL = 1e-3 (observed ~1e-6).
"""
import pytest
import torch

import lowbit
from lowbit import QuantLinear
from lowbit.nn.linear import is_conv1d, linear_weight

from helpers import assert_close

transformers = pytest.importorskip("transformers")

TOL_MODEL = 1e-3
VOCAB = 96


def tiny(family: str):
    """A tiny random causal LM of `family` (eval mode, fp32)."""
    t = transformers
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=64)
    if family == "llama":
        cfg, cls = t.LlamaConfig(num_key_value_heads=2, **common), t.LlamaForCausalLM
    elif family == "mistral":
        cfg, cls = t.MistralConfig(num_key_value_heads=2, sliding_window=None, **common), t.MistralForCausalLM
    elif family == "qwen2":
        cfg, cls = t.Qwen2Config(num_key_value_heads=2, **common), t.Qwen2ForCausalLM
    elif family == "phi":
        cfg, cls = t.PhiConfig(partial_rotary_factor=0.5, **common), t.PhiForCausalLM
    elif family == "gpt2":
        cfg = t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                           bos_token_id=0, eos_token_id=1)
        cls = t.GPT2LMHeadModel
    else:
        raise AssertionError(family)
    cfg.pad_token_id = 0
    return cls(cfg).eval()


FAMILIES = [pytest.param(f, id=f) for f in ("llama", "mistral", "qwen2", "phi", "gpt2")]


def float_layers(model):
    return {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear or is_conv1d(m)}


def set_backend(model, backend):
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.backend = backend


def dequantized_float_model(model, quantized):
    """A copy of the float `model` whose swapped layers carry the dequantized weights of `quantized`."""
    import copy

    ref = copy.deepcopy(model)
    qmods = dict(quantized.named_modules())
    with torch.no_grad():
        for name, mod in float_layers(ref).items():
            q = qmods[name]
            if isinstance(q, QuantLinear):
                w = lowbit.dequantize(q.quantized_weight(), torch.float32)  # [N, K]
                linear_weight(mod).copy_(w)  # a view: Conv1D's weight gets w^T
    return ref


@pytest.mark.parametrize("family", FAMILIES)
def test_quantize_causal_lm_matches_dequantized_and_reference(family, device):
    import copy

    model = tiny(family)
    before = float_layers(model)
    qmodel = lowbit.quantize_(copy.deepcopy(model), "int4", group_size=32)
    swapped = {n for n, m in qmodel.named_modules() if isinstance(m, QuantLinear)}
    assert swapped == {n for n in before if n != "lm_head"}
    if family == "gpt2":
        assert sum(is_conv1d(m) for m in before.values()) == 4 * 2  # c_attn, c_proj, c_fc, mlp.c_proj per block
    assert not isinstance(qmodel.lm_head, QuantLinear)

    ids = torch.randint(2, VOCAB, (2, 9), device=device)
    with torch.no_grad():
        ref_model = dequantized_float_model(model, qmodel).to(device)
        qmodel = qmodel.to(device)
        y_kernel = qmodel(ids).logits
        set_backend(qmodel, "reference")
        y_ref = qmodel(ids).logits
        y_deq = ref_model(ids).logits
    assert_close(f"{family} triton vs reference", y_ref, y_kernel, TOL_MODEL)
    assert_close(f"{family} quantized vs float model with dequantized weights", y_deq, y_ref, TOL_MODEL)


@pytest.mark.parametrize("family", [pytest.param("llama", id="llama"), pytest.param("gpt2", id="gpt2")])
def test_generate_under_kernels(family, device):
    model = lowbit.quantize_(tiny(family), "int4", group_size=32).to(device)
    prompt = torch.randint(2, VOCAB, (1, 5), device=device)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        out_kernel = model.generate(prompt, **kw)
        set_backend(model, "reference")
        out_ref = model.generate(prompt, **kw)
    assert out_kernel.shape == (1, 9)
    assert torch.equal(out_kernel, out_ref)


def test_gpt2_tied_embeddings_stay_tied():
    model = tiny("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    lowbit.quantize_(model, "int4", group_size=32)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("scheme,opts", [
    pytest.param("int3", {"group_size": 32}, id="int3"),
    pytest.param("nf4", {"group_size": 64}, id="nf4"),
    pytest.param("ternary", {}, id="ternary"),
])
def test_conv1d_layer_schemes(scheme, opts, device):
    """One Conv1D (rectangular 64 -> 192, as GPT-2's c_attn) per scheme: the QuantLinear is the transposed weight."""
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(192, 64)
    with torch.no_grad():
        conv.bias.normal_()
    q = QuantLinear.from_linear(conv, scheme, **opts)
    assert q.shape == (192, 64)
    expect = lowbit.quantize_weight(conv.weight.t().contiguous(), scheme, **opts)
    for name, t in expect.tensors.items():
        assert torch.equal(getattr(q, name), t), name
    q = q.to(device)
    x = torch.randn(3, 64, device=device)
    ref = lowbit.reference.linear(x.cpu(), expect, conv.bias.detach(), out_dtype=torch.float64)
    assert_close(scheme, ref, q(x), 1e-4)


def test_conv1d_group_size_conflict_names_layer():
    """in_features of a Conv1D is its weight's first dim: 64 for c_attn, 256 for mlp.c_proj."""
    model = tiny("gpt2")
    with pytest.raises(ValueError, match=r"'transformer\.h\.0\.attn\.c_attn' has in_features=64"):
        lowbit.quantize_(model, "int4", group_size=128)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # unchanged on error
    with pytest.warns(UserWarning, match="kept 6 layer"):
        lowbit.quantize_(model, "int4", group_size=128, skip_incompatible=True)
    swapped = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    assert swapped == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]


def test_gpt2_save_load_round_trip(tmp_path, device):
    pytest.importorskip("safetensors")
    model = lowbit.quantize_(tiny("gpt2"), "int4", group_size=32)
    path = tmp_path / "gpt2.safetensors"
    lowbit.save_quantized(model, path)
    fresh = tiny("gpt2")
    lowbit.load_quantized(fresh, path)
    a, b = dict(model.named_modules()), dict(fresh.named_modules())
    for name, m in a.items():
        if isinstance(m, QuantLinear):
            assert isinstance(b[name], QuantLinear)
            for t in m.tensor_names:
                assert torch.equal(getattr(m, t), getattr(b[name], t))
    ids = torch.randint(2, VOCAB, (1, 6), device=device)
    with torch.no_grad():
        assert torch.equal(model.to(device)(ids).logits, fresh.to(device)(ids).logits)
