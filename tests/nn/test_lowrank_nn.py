"""The low-rank term through QuantLinear, quantize_, activation_scales, save/load, torch.compile, sharding and
the transformers config."""
import pytest
import torch
from torch import nn

import lowbit
from helpers import assert_close
from lowbit import QuantLinear
from lowbit.nn import activation_scales
from lowbit.nn.calibrate import DEAD_CHANNEL_FLOOR


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(64, 96)
        self.down = nn.Linear(96, 48, bias=False)

    def forward(self, x):
        return self.down(torch.relu(self.up(x)))


def toy(seed=0, device="cpu"):
    torch.manual_seed(seed)
    return Toy().to(device).eval()


def test_quant_linear_carries_the_term(device):
    lin = nn.Linear(64, 40).to(device)
    q = QuantLinear.from_linear(lin, "int3", group_size=32, lowrank=8)
    assert q.lowrank == 8 and {"lowrank_a", "lowrank_b"} <= set(q.tensor_names)
    assert "lowrank=8" in repr(q)
    assert q.bits_per_weight == pytest.approx(q.quantized_weight().bits_per_weight)
    assert QuantLinear.from_linear(lin, "int3", group_size=32).lowrank == 0
    x = torch.randn(3, 64, device=device)
    ref = lowbit.reference.linear(x, q.quantized_weight(), q.bias, out_dtype=torch.float64)
    assert_close("QuantLinear", ref, q(x), 2e-4)
    q.backend = "reference"
    assert_close("QuantLinear reference backend", ref, q(x), 1e-6)


def test_activation_scales_is_mean_abs_input():
    m = toy()
    xs = [torch.randn(2, 5, 64), torch.randn(3, 64)]
    scales = activation_scales(m, lambda: [m(x) for x in xs])
    assert sorted(scales) == ["down", "up"]
    flat = torch.cat([x.reshape(-1, 64) for x in xs])
    assert torch.allclose(scales["up"], flat.abs().mean(0), rtol=1e-6)
    with torch.no_grad():
        hidden = torch.relu(m.up(flat))
    want = hidden.abs().mean(0)
    want = want.clamp(min=DEAD_CHANNEL_FLOOR * float(want.max()))
    assert torch.allclose(scales["down"], want, rtol=1e-5) and bool((scales["down"] > 0).all())
    assert not m.up._forward_pre_hooks and not m.down._forward_pre_hooks  # hooks removed
    only = activation_scales(m, lambda: m(xs[1]), filter_fn=lambda mod, name: name == "up")
    assert sorted(only) == ["up"]


def test_activation_scales_removes_hooks_on_error():
    m = toy()

    def boom():
        m(torch.randn(2, 64))
        raise RuntimeError("calibration failed")

    with pytest.raises(RuntimeError, match="calibration failed"):
        activation_scales(m, boom)
    assert not m.up._forward_pre_hooks
    with pytest.raises(TypeError, match="run must be a callable"):
        activation_scales(m, [torch.randn(2, 64)])


def test_quantize_with_act_scale_dict_and_callable(device):
    m = toy(device=device)
    x = torch.randn(16, 64, device=device)
    scales = activation_scales(m, lambda: m(x))
    a = lowbit.quantize_(toy(device=device), "int2", group_size=32, lowrank=4, act_scale=scales)
    b = lowbit.quantize_(toy(device=device), "int2", group_size=32, lowrank=4,
                         act_scale=lambda mod, name: scales.get(name))
    plain = lowbit.quantize_(toy(device=device), "int2", group_size=32, lowrank=4)
    for name in ("up", "down"):
        qa, qb, qp = a.get_submodule(name), b.get_submodule(name), plain.get_submodule(name)
        assert qa.lowrank == 4
        assert torch.equal(qa.lowrank_a, qb.lowrank_a) and torch.equal(qa.lowrank_b, qb.lowrank_b)
        assert not torch.equal(qa.lowrank_b, qp.lowrank_b)  # the activation-aware factors differ
        assert torch.equal(qa.qweight, qp.qweight)  # the codes do not
    # a partial dict: the other layer gets the plain SVD
    c = lowbit.quantize_(toy(device=device), "int2", group_size=32, lowrank=4, act_scale={"up": scales["up"]})
    assert torch.equal(c.down.lowrank_b, plain.down.lowrank_b)
    assert not torch.equal(c.up.lowrank_b, plain.up.lowrank_b)
    # entries of layers that are skipped are ignored (activation_scales covers every float layer)
    d = lowbit.quantize_(toy(device=device), "int2", group_size=32, lowrank=4, act_scale=scales, skip=("down",))
    assert type(d.down) is nn.Linear and torch.equal(d.up.lowrank_b, a.up.lowrank_b)


@pytest.mark.parametrize("kwargs,exc,match", [
    pytest.param({"lowrank": 4, "act_scale": torch.ones(64)}, TypeError, "dict .* or a callable", id="bare-tensor"),
    pytest.param({"act_scale": {"up": torch.ones(64)}}, ValueError, "pass lowrank=r > 0", id="no-rank"),
    pytest.param({"lowrank": 4, "act_scale": {"nope": torch.ones(64)}}, ValueError,
                 r"the model does not have: \['nope'\]", id="unknown-layer"),
    pytest.param({"lowrank": 4, "act_scale": {"up": torch.ones(63)}}, ValueError, "layer 'up': act_scale must have",
                 id="wrong-length"),
    pytest.param({"lowrank": 4, "act_scale": lambda m, n: -torch.ones(m.in_features)}, ValueError,
                 "layer '(up|down)': act_scale must be positive", id="negative-callable"),
    pytest.param({"lowrank": 48}, ValueError, r"layer 'down': lowrank=48 must be below min\(N, K\) = 48",
                 id="rank-too-big"),
    pytest.param({"lowrank": -2}, ValueError, "lowrank must be >= 0", id="negative-rank"),
    pytest.param({"lowrank": 2.5}, TypeError, "lowrank must be an int", id="float-rank"),
])
def test_quantize_bad_lowrank_input_leaves_the_model_unchanged(kwargs, exc, match):
    m = toy()
    with pytest.raises(exc, match=match):
        lowbit.quantize_(m, "int4", group_size=32, **kwargs)
    assert type(m.up) is nn.Linear and type(m.down) is nn.Linear


def test_save_load_round_trip_keeps_the_factors(tmp_path, device):
    a = lowbit.quantize_(toy(device=device), "lut3", iters=2, lowrank=6)
    path = tmp_path / "lowrank.safetensors"
    lowbit.save_quantized(a, path)
    from lowbit.nn import serialization as S

    stored = S.read_file(path)
    assert "lowrank_a" in stored.layers["up"]["tensors"] and "up.lowrank_b" in stored.tensors
    assert stored.layers["up"]["options"] == a.up.options()  # the rank lives in the tensors, not the options
    b = lowbit.load_quantized(toy(seed=1, device=device), path)
    for name in ("up", "down"):
        qa, qb = a.get_submodule(name), b.get_submodule(name)
        assert qb.lowrank == 6
        for t in qa.tensor_names:
            assert torch.equal(getattr(qa, t), getattr(qb, t)), (name, t)
    x = torch.randn(3, 64, device=device)
    assert torch.equal(a(x), b(x))
    # loading into a model quantized without the term replaces its layers with the file's
    c = lowbit.load_quantized(lowbit.quantize_(toy(seed=2, device=device), "lut3", iters=2), path)
    assert c.up.lowrank == 6 and torch.equal(c(x), a(x))


def test_fake_tensor_trace_has_the_correction_op(device):
    """make_fx over fake tensors: the correction is one custom op after the family's, with a fake implementation."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    m = lowbit.quantize_(toy(device=device), "nf4", group_size=32, lowrank=4).to(torch.float16)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        x = mode.from_tensor(torch.randn(2, 3, 64, device=device, dtype=torch.float16))
        gm = make_fx(lambda t: m(t))(x)
    ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert sum("lowbit.lowrank_add" in op for op in ops) == 2, ops
    assert sum("lowbit.lut_linear" in op for op in ops) == 2, ops
    out = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    meta = out[0].meta["val"] if isinstance(out, (list, tuple)) else out.meta["val"]
    assert tuple(meta.shape) == (2, 3, 48) and meta.dtype == torch.float16


@pytest.mark.parametrize("dim", [0, 1])
def test_shards_split_the_factors(dim):
    from lowbit.distributed import shard

    torch.manual_seed(0)
    qw = lowbit.quantize_weight(torch.randn(64, 128), "int4", group_size=32, lowrank=8)
    full = lowbit.dequantize(qw, torch.float64)
    parts = [shard(qw, dim, r, 2) for r in range(2)]
    for r, p in enumerate(parts):
        assert p.lowrank == 8
        sl = full[32 * r:32 * (r + 1)] if dim == 0 else full[:, 64 * r:64 * (r + 1)]
        assert torch.allclose(lowbit.dequantize(p, torch.float64), sl, rtol=0, atol=1e-12)
    x = torch.randn(3, 128, dtype=torch.float64)
    want = lowbit.reference.linear(x, qw, out_dtype=torch.float64)
    if dim == 0:
        got = torch.cat([lowbit.reference.linear(x, p, out_dtype=torch.float64) for p in parts], dim=1)
    else:
        got = sum(lowbit.reference.linear(x[:, 64 * r:64 * (r + 1)], p, out_dtype=torch.float64)
                  for r, p in enumerate(parts))
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


def test_hf_config_takes_the_rank_not_act_scale():
    pytest.importorskip("transformers")
    hf = pytest.importorskip("lowbit.hf")
    cfg = hf.LowbitConfig("int3", group_size=32, lowrank=16)
    assert cfg.options == {"group_size": 32, "lowrank": 16}
    with pytest.raises(TypeError, match="lowrank=16.0 must be a int"):
        hf.LowbitConfig("int3", lowrank=16.0)
    with pytest.raises(TypeError, match="cannot hold act_scale"):
        hf.LowbitConfig("int3", lowrank=16, act_scale=torch.ones(64))


def test_compile_fullgraph_with_the_term(device):
    """torch.compile(fullgraph=True): the family's op and the correction's op trace without a graph break."""
    torch._dynamo.reset()
    try:
        m = lowbit.quantize_(toy(device=device), "int4", group_size=32, lowrank=4)
        x = torch.randn(5, 64, device=device)
        with torch.no_grad():
            y = m(x)
            yc = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
        assert torch.equal(yc, y)
    finally:
        torch._dynamo.reset()
