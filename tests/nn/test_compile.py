"""torch.compile(fullgraph=True) over quantized models.

fullgraph=True turns any graph break into an error, so these tests also show that the forward
has no host synchronisation (.item(), .cpu(), data-dependent Python branches) between the
layers: each QuantLinear becomes one call of its family's custom op, traced through the op's
fake implementation. On CPU the compiled graph's custom ops run the Triton kernels in the
interpreter; on a GPU the eager forward additionally runs under CUDA's sync debug mode.

Compiled and eager outputs run the same kernels on the same inputs, so QuantLinear outputs
agree exactly; with inductor the float layers around them (LayerNorm, GELU) are fused and
may round differently, hence a 1e-5 relative bound there (fp32 rounding of a few ops).
"""
import contextlib

import pytest
import torch
from torch import nn

import lowbit

from helpers import assert_close

FAMILY_SCHEMES = {"int4": {"group_size": 32}, "nf4": {"group_size": 32}, "lut3": {"iters": 3},
                  "sq4": {"iters": 3}, "ternary": {}, "ternary_a16": {}, "binary": {}}


def mlp(device, scheme, **opts):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 64)).to(device).eval()
    return lowbit.quantize_(m, scheme, **opts)


@contextlib.contextmanager
def no_host_sync(device):
    """On CUDA, make any host synchronisation an error; on CPU, fullgraph tracing is the check."""
    if torch.device(device).type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("scheme", list(FAMILY_SCHEMES))
def test_fullgraph_every_family(scheme, device):
    """aot_eager: dynamo + fake-tensor tracing + AOT autograd, without C++ code generation."""
    m = mlp(device, scheme, **FAMILY_SCHEMES[scheme])
    x = torch.randn(5, 128, device=device)
    with torch.no_grad(), no_host_sync(device):
        y = m(x)
        yc = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    assert torch.equal(yc, y)


def test_fullgraph_inductor(device):
    m = mlp(device, "int4", group_size=32)
    x = torch.randn(3, 128, device=device)
    with torch.no_grad():
        y = m(x)
        yc = torch.compile(m, fullgraph=True)(x)
    assert yc.dtype == y.dtype and yc.shape == y.shape
    assert_close("inductor vs eager", y, yc, 1e-5)


def test_dynamic_batch_does_not_recompile_within_a_bucket(device):
    """Kernel path and config are chosen per M bucket (powers of two), so dynamo guards on the
    bucket: one graph serves every M in it (33..64 here) and a new bucket compiles once more."""
    m = mlp(device, "ternary")
    c = torch.compile(m, fullgraph=True, dynamic=True, backend="aot_eager")
    with torch.no_grad():
        c(torch.randn(40, 128, device=device))
        torch.compiler.set_stance("fail_on_recompile")
        try:
            for rows in (33, 50, 64):
                x = torch.randn(rows, 128, device=device)
                assert torch.equal(c(x), m(x))
        finally:
            torch.compiler.set_stance("default")


def test_fake_tensor_trace_shapes(device):
    """make_fx over fake tensors: the custom ops' fake implementations give the right shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    m = mlp(device, "lut3", iters=3)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(2, 4, 128, device=device, dtype=torch.float16))
        gm = make_fx(lambda t: m.to(torch.float16)(t))(x)
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert any("lowbit" in str(op) for op in ops), ops
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    meta = out[0].meta["val"] if isinstance(out, (list, tuple)) else out.meta["val"]
    assert tuple(meta.shape) == (2, 4, 64) and meta.dtype == torch.float16


def test_llama_fullgraph(device):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    m = lowbit.quantize_(LlamaForCausalLM(cfg).to(device).eval(), "nf4", group_size=64)
    ids = torch.randint(0, 128, (1, 6), device=device)
    with torch.no_grad(), no_host_sync(device):
        y = m(ids, use_cache=False).logits
        yc = torch.compile(m, fullgraph=True, backend="aot_eager")(ids, use_cache=False).logits
    assert_close("compiled Llama vs eager", y, yc, 1e-5)
