"""Tensor-parallel layers and models on 2 and 4 gloo ranks (CPU, Triton interpreter).

Each test spawns its ranks once and runs every check of that world size inside them (process
start-up dominates the cost). Every rank builds the same seeded model, so the single-process
result is available on each rank as the oracle.

Error bounds, rel = max|y - y_ref| / max|y_ref| against the float64 oracle
(lowbit.reference.linear, or a float64 copy of the model with backend="reference"):
- column-parallel: each output element is computed by the same kernel from the same row of W
  as on one device, TOL_LAYER = 1e-4 as for one QuantLinear in fp32 (tests/nn/test_quant_linear.py);
- row-parallel: w partial sums of K/w products each, rounded to fp32 and added by the
  all-reduce: the same K products and about log2(w) more roundings, within TOL_LAYER;
- ternary W1.58A8 row-parallel: the all-reduced absmax gives every rank the single-process
  int8 activations, so the integer dot products are exact and only fp32 rounding remains
  (with a rank-local absmax the error was 3.5e-3 here, which TOL_LAYER rejects);
- a whole tiny Llama: TOL_MODEL = 1e-3 (fp32 layers in sequence, each within TOL_LAYER).
"""
import copy
import os

import pytest
import torch
from torch import nn

from helpers import assert_close
from ranks import run_ranks

TOL_LAYER = 1e-4
TOL_MODEL = 1e-3
TIMEOUT_S = 240

# One scheme per family (two for uniform and ternary), options sized for K = 64 / N = 48 splits.
LAYER_SCHEMES = {"int4": {"group_size": 32}, "int3": {"group_size": -1}, "nf4": {"group_size": 32},
                 "lut3": {"iters": 2}, "sq4": {"iters": 2, "outlier_fraction": 0.05},
                 "ternary": {}, "ternary_a16": {"per_channel": True}, "binary": {}}


def _reference_copy(model):
    """A float64 copy of a quantized model whose QuantLinear layers run the float64 oracle."""
    import lowbit

    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, lowbit.QuantLinear):
            m.backend = "reference"
    return ref.double()


# -- bodies run on every rank ------------------------------------------------------------------

def _layers_body(rank, world):
    import lowbit
    import lowbit.distributed as ld

    for scheme, opts in LAYER_SCHEMES.items():
        torch.manual_seed(0)
        up = lowbit.QuantLinear.from_linear(nn.Linear(64, 128), scheme, **opts)
        down = lowbit.QuantLinear.from_linear(nn.Linear(128, 48), scheme, **opts)
        for m in (3, 12):  # the GEMV and the GEMM path
            x = torch.randn(m, 64)
            ref_up = lowbit.reference.linear(x.double(), up.quantized_weight(), up.bias.double())
            col = ld.ColumnParallelQuantLinear.from_quant_linear(up, gather_output=True)
            assert col.out_features == 128 // world and col.full_shape == (128, 64)
            assert_close(f"{scheme} column-parallel M={m}", ref_up, col(x), TOL_LAYER)

            h = torch.relu(ref_up).float()
            ref_down = lowbit.reference.linear(h.double(), down.quantized_weight(), down.bias.double())
            row = ld.RowParallelQuantLinear.from_quant_linear(down)
            assert row.in_features == 128 // world
            assert_close(f"{scheme} row-parallel, full x, M={m}", ref_down, row(h), TOL_LAYER)
            k0, k1 = row.k_start, row.k_stop
            assert_close(f"{scheme} row-parallel, local x, M={m}", ref_down, row(h[:, k0:k1]), TOL_LAYER)

            # column (output left sharded) -> row: the Megatron MLP, no gather in between
            col_s = ld.ColumnParallelQuantLinear.from_quant_linear(up, gather_output=False)
            y = row(torch.relu(col_s(x)))
            ref = lowbit.reference.linear(torch.relu(ref_up), down.quantized_weight(), down.bias.double())
            assert_close(f"{scheme} column->row M={m}", ref, y, TOL_LAYER)

    # fp16 activations through a row-parallel A8 layer: one fp16 rounding of each partial sum
    torch.manual_seed(1)
    lin = lowbit.QuantLinear.from_linear(nn.Linear(64, 48), "ternary")
    x = torch.randn(5, 64).half()
    y = ld.RowParallelQuantLinear.from_quant_linear(lin)(x)
    assert y.dtype == torch.float16
    assert_close("ternary row-parallel fp16", lowbit.reference.linear(x, lin.quantized_weight(), lin.bias, out_dtype=torch.float64), y, 3e-3)

    # torch.compile traces the functional collectives (the A8 absmax MAX too): one graph, eager's result
    for scheme, opts in (("ternary", {}), ("int4", {"group_size": 32})):
        torch._dynamo.reset()
        torch.manual_seed(2)
        mlp = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
        lowbit.quantize_(mlp, scheme, **opts)
        ld.parallelize_(mlp, {"0": "colwise", "2": "rowwise"})
        assert isinstance(mlp[0], ld.ColumnParallelQuantLinear) and mlp[0].gather_output is False
        x = torch.randn(4, 64)
        with torch.no_grad():
            eager = mlp(x)
            compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")(x)
        assert torch.equal(eager, compiled), scheme

    # the same split through torch's parallelize_module and a DeviceMesh, with lowbit's styles
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    torch.manual_seed(2)
    mlp2 = lowbit.quantize_(nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64)), "int4", group_size=32)
    first = mlp2[0]
    hook_calls = []
    first.register_forward_hook(lambda mod, inp, out: hook_calls.append(out.shape))
    mesh = init_device_mesh("cpu", (world,))
    parallelize_module(mlp2, mesh, {"0": ld.QuantColwiseParallel(), "2": ld.QuantRowwiseParallel()})
    assert mlp2[0] is first and isinstance(first, ld.ColumnParallelQuantLinear) and not first.gather_output
    assert isinstance(mlp2[2], ld.RowParallelQuantLinear)
    with torch.no_grad():
        assert torch.equal(mlp2(x), eager)
    assert hook_calls == [torch.Size([4, 128 // world])]  # the hook on the original object survives


def _tiny_llama(hidden, heads, kv_heads, inter, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=32,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def _quantize_mixed(model, schemes):
    """Give each projection kind its own scheme: {name suffix: (scheme, options)}."""
    import lowbit

    for suffix, (scheme, opts) in schemes.items():
        lowbit.quantize_(model, scheme, filter_fn=lambda m, fqn, s=suffix: fqn.endswith(s), **opts)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _llama_body(rank, world, folder, config, schemes, plan_kind):
    import torch.distributed as dist

    import lowbit
    import lowbit.distributed as ld

    def fresh():
        return _tiny_llama(*config)

    model = _quantize_mixed(fresh(), schemes)
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    single = _logits(model, ids)
    oracle = _logits(_reference_copy(model), ids.clone())
    assert_close("single process vs float64", oracle, single, TOL_MODEL)
    full_file = os.path.join(folder, "full.safetensors")
    if rank == 0:
        lowbit.save_quantized(model, full_file)
    dist.barrier()

    plan = ld.plan_from_hf(model) if plan_kind == "hf" else ld.megatron_plan()
    ld.parallelize_(model, plan)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, ld.ColumnParallelQuantLinear) and not attn.q_proj.gather_output
    assert isinstance(attn.o_proj, ld.RowParallelQuantLinear)
    assert isinstance(model.model.layers[1].mlp.down_proj, ld.RowParallelQuantLinear)
    assert type(model.lm_head) is nn.Linear  # not in the plan: replicated, untouched
    parallel = _logits(model, ids)
    assert_close(f"{world}-rank parallel vs float64", oracle, parallel, TOL_MODEL)

    # per-rank files, loaded into fresh float models
    ld.save_sharded(model, os.path.join(folder, "tp"))
    assert os.path.isfile(os.path.join(folder, "tp", ld.checkpoint.rank_file(rank, world)))
    again = ld.load_sharded(fresh(), os.path.join(folder, "tp"))
    assert torch.equal(_logits(again, ids), parallel)

    # the unsharded file, sharded at load
    from_full = ld.load_sharded(fresh(), full_file, plan=plan)
    assert torch.equal(_logits(from_full, ids), parallel)
    dist.barrier()


def _pairs_body(rank, world, folder, config, schemes):
    """The unsharded file of _llama_body loads into 2-rank groups carved out of 4 ranks too."""
    import torch.distributed as dist

    import lowbit.distributed as ld

    model = _quantize_mixed(_tiny_llama(*config), schemes)
    ids = torch.randint(0, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    oracle = _logits(_reference_copy(model), ids)
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates every group
    m = ld.load_sharded(_tiny_llama(*config), os.path.join(folder, "full.safetensors"), pairs[rank // 2])
    assert m.model.layers[0].mlp.up_proj.world == 2 and m.model.layers[0].mlp.up_proj.rank == rank % 2
    assert_close("unsharded file loaded on 2 of 4 ranks", oracle, _logits(m, ids), TOL_MODEL)


def _bad_world_body(rank, world, folder, config):
    """A model that fits 1 or 2 ranks, parallelized over `world` ranks: every rank must raise."""
    import torch.distributed as dist

    import lowbit
    import lowbit.distributed as ld

    model = lowbit.quantize_(_tiny_llama(*config), "int4", group_size=32)
    try:
        ld.parallelize_(model)
    except ValueError as e:
        with open(os.path.join(folder, f"raised-{rank}.txt"), "w") as f:
            f.write(str(e))
    assert not any(isinstance(m, ld.ColumnParallelQuantLinear) for m in model.modules())  # model unchanged
    dist.barrier()  # every rank got here: none is stuck in a collective


def _four_rank_body(rank, world, folder, config, schemes, small):
    _llama_body(rank, world, folder, config, schemes, "hf")
    _pairs_body(rank, world, folder, config, schemes)
    _bad_world_body(rank, world, folder, small)


# -- the tests ---------------------------------------------------------------------------------

SMALL = (64, 4, 2, 128)  # hidden, heads, kv heads, intermediate: head_dim 16, fits 1 and 2 ranks
WIDE = (128, 8, 4, 256)  # fits 1, 2 and 4 ranks (kv heads 4, row K/4 = 32 and 64)


def test_layers_every_family_two_ranks():
    run_ranks(_layers_body, 2, timeout=TIMEOUT_S)


def test_llama_two_ranks(tmp_path):
    schemes = {"q_proj": ("int4", {"group_size": 32}), "k_proj": ("int4", {"group_size": 32}),
               "v_proj": ("int3", {"group_size": -1}), "o_proj": ("sq4", {"iters": 2}),
               "gate_proj": ("nf4", {"group_size": 32}), "up_proj": ("nf4", {"group_size": 32}),
               "down_proj": ("ternary", {})}
    run_ranks(_llama_body, 2, timeout=TIMEOUT_S, folder=str(tmp_path), config=SMALL, schemes=schemes,
              plan_kind="megatron")


def test_llama_four_ranks_any_world_and_bad_world(tmp_path):
    """4 ranks: the HF plan on a mixed-scheme Llama, per-rank files, one unsharded file loaded on
    4 ranks and on two 2-rank groups, and a model that fits only 1 or 2 ranks raising on all 4."""
    schemes = {"q_proj": ("lut3", {"iters": 2}), "k_proj": ("lut3", {"iters": 2}), "v_proj": ("lut3", {"iters": 2}),
               "o_proj": ("binary", {}), "gate_proj": ("ternary_a16", {}), "up_proj": ("ternary_a16", {}),
               "down_proj": ("int2", {"group_size": 32})}
    run_ranks(_four_rank_body, 4, timeout=TIMEOUT_S, folder=str(tmp_path), config=WIDE, schemes=schemes, small=SMALL)
    msgs = [(tmp_path / f"raised-{r}.txt").read_text() for r in range(4)]
    assert len(set(msgs)) == 1
    assert "tensor parallelism over 4 ranks does not fit layer" in msgs[0]
    assert msgs[0].endswith("world sizes that work for every layer of this plan: 1, 2")


# -- one process (a world of 1): the checks that need no peers ---------------------------------

@pytest.fixture
def world_of_one(tmp_path):
    """A gloo group with this process as its only rank (torch.distributed must be initialized)."""
    import torch.distributed as dist

    from ranks import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _mlp(scheme="int4", **opts):
    import lowbit

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
    return lowbit.quantize_(m, scheme, **(opts or {"group_size": 32}))


def test_import_lowbit_does_not_import_distributed():
    import subprocess
    import sys

    code = ("import sys, lowbit; assert 'lowbit.distributed' not in sys.modules; "
            "assert 'torch.distributed.tensor.parallel' not in sys.modules; "
            "assert callable(lowbit.distributed.shard); assert 'transformers' not in sys.modules; print('ok')")
    import lowbit

    root = os.path.dirname(os.path.dirname(os.path.abspath(lowbit.__file__)))  # this checkout's lowbit
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_needs_an_initialized_process_group():
    import lowbit.distributed as ld

    with pytest.raises(RuntimeError, match="init_process_group"):
        ld.parallelize_(_mlp(), {"0": "colwise"})


def test_world_of_one_matches_and_round_trips(world_of_one, tmp_path):
    import lowbit.distributed as ld

    m = _mlp()
    x = torch.randn(3, 64)
    with torch.no_grad():
        y = m(x)
        ld.parallelize_(m, {"0": "colwise", "2": "rowwise"})
        assert torch.equal(m(x), y)
        ld.save_sharded(m, tmp_path / "tp")
        fresh = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 64))
        assert torch.equal(ld.load_sharded(fresh, tmp_path / "tp")(x), y)
    assert isinstance(fresh[0], ld.ColumnParallelQuantLinear) and isinstance(fresh[2], ld.RowParallelQuantLinear)
    twin = copy.deepcopy(fresh)  # the process group is shared, the buffers are copied
    assert twin[0].group is fresh[0].group and twin[0].qweight.data_ptr() != fresh[0].qweight.data_ptr()
    with torch.no_grad():
        assert torch.equal(twin(x), y)
    assert "tp_world=1" in repr(fresh[0]) and "full_shape=[128, 64]" in repr(fresh[0])


@pytest.mark.parametrize("plan,exc,msg", [
    pytest.param({"0": "colwise", "9": "rowwise"}, ValueError, r"plan entries \['9'\] match no layer", id="unmatched"),
    pytest.param({"0": "colwise_rep"}, ValueError, "unknown parallel style 'colwise_rep'", id="unknown-style"),
    pytest.param({"0": "colwise", "*": "rowwise"}, ValueError, "different styles", id="conflict"),
    pytest.param({}, TypeError, "non-empty mapping", id="empty"),
    pytest.param({"0": 3}, TypeError, "a plan entry must be", id="bad-entry"),
    pytest.param({"1": "colwise"}, TypeError, "matches '1', a SiLU", id="not-linear"),
])
def test_bad_plans(world_of_one, plan, exc, msg):
    import lowbit.distributed as ld

    m = _mlp()
    with pytest.raises(exc, match=msg):
        ld.parallelize_(m, plan)
    assert not any(isinstance(x, ld.ColumnParallelQuantLinear) for x in m.modules())


def test_float_layer_in_plan_says_quantize_first(world_of_one):
    import lowbit.distributed as ld

    with pytest.raises(TypeError, match=r"quantize_\(model, scheme\) first"):
        ld.parallelize_(nn.Sequential(nn.Linear(8, 8)), {"0": "colwise"})


def test_parallelizing_twice_is_refused(world_of_one):
    import lowbit.distributed as ld

    m = ld.parallelize_(_mlp(), {"0": "colwise"})
    with pytest.raises(ValueError, match="already tensor-parallel"):
        ld.parallelize_(m, {"0": "colwise"})


def test_shared_layers_are_refused(world_of_one):
    import lowbit
    import lowbit.distributed as ld

    lin = lowbit.QuantLinear.from_linear(nn.Linear(64, 64), "int4", group_size=32)
    m = nn.Sequential(lin, nn.SiLU(), lin)
    with pytest.raises(ValueError, match=r"'0' is the same module as \['2'\]"):
        ld.parallelize_(m, {"0": "colwise"})
    assert m[0] is lin and m[2] is lin


def test_layer_plan_rules():
    from lowbit.distributed import LayerPlan, Style

    assert LayerPlan("colwise", gather_output=True).style is Style.COLUMN
    with pytest.raises(ValueError, match="column-parallel layers only"):
        LayerPlan(Style.ROW, gather_output=True)


def test_plan_from_hf_needs_a_tp_plan():
    import lowbit.distributed as ld

    with pytest.raises(ValueError, match="no config.base_model_tp_plan"):
        ld.plan_from_hf(_mlp())


def test_bad_group_type(world_of_one):
    import lowbit.distributed as ld

    with pytest.raises(TypeError, match="ProcessGroup, a 1-D DeviceMesh or None"):
        ld.parallelize_(_mlp(), {"0": "colwise"}, group="tp")


def test_row_parallel_rejects_a_wrong_input_width(world_of_one):
    import lowbit.distributed as ld

    m = ld.parallelize_(_mlp(), {"2": "rowwise"})
    with pytest.raises(ValueError, match=r"x.shape\[-1\]=100 is neither"):
        m[2](torch.randn(2, 100))


def test_parallel_layers_check_the_shard_shape(world_of_one):
    import lowbit
    import lowbit.distributed as ld

    qw = _mlp()[0].quantized_weight()
    with pytest.raises(ValueError, match=r"must be \[64, 64\], got \[128, 64\]"):
        ld.ColumnParallelQuantLinear(qw, group=None, rank=0, world=2, full_shape=(128, 64))
    with pytest.raises(ValueError, match=r"must be \[128, 32\], got \[128, 64\]"):
        ld.RowParallelQuantLinear(qw, group=None, rank=0, world=2, full_shape=(128, 64))
    with pytest.raises(TypeError, match="expected a lowbit.QuantLinear"):
        ld.ColumnParallelQuantLinear.from_quant_linear(nn.Linear(4, 4))
    assert isinstance(lowbit.distributed.shard(qw, 0, 0, 1), lowbit.QuantizedWeight)


def test_sharded_folder_errors(world_of_one, tmp_path):
    import json

    import lowbit.distributed as ld

    with pytest.raises(ValueError, match="no tensor-parallel layers"):
        ld.save_sharded(_mlp(), tmp_path / "none")
    with pytest.raises(ValueError, match="not a folder written by lowbit.distributed.save_sharded"):
        ld.load_sharded(_mlp(), tmp_path)
    ld.save_sharded(ld.parallelize_(_mlp(), {"0": "colwise", "2": "rowwise"}), tmp_path / "tp")
    with pytest.raises(ValueError, match="do not pass plan="):
        ld.load_sharded(_mlp(), tmp_path / "tp", plan={"0": "colwise"})
    manifest = tmp_path / "tp" / "tp_manifest.json"
    man = json.loads(manifest.read_text())
    man["world"] = 2
    manifest.write_text(json.dumps(man))
    with pytest.raises(ValueError, match="holds shards for 2 ranks, but this group has 1"):
        ld.load_sharded(_mlp(), tmp_path / "tp")
    man["world"] = 1
    man["layers"]["0"]["full_shape"] = [64, 64]
    manifest.write_text(json.dumps(man))
    with pytest.raises(ValueError, match=r"the model's layer is \[N, K\] = \[128, 64\] but the file's is \[64, 64\]"):
        ld.load_sharded(_mlp(), tmp_path / "tp")
