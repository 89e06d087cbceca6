"""lowbit.distributed.shard: exact splits of every scheme along output rows and input columns.

Single process, no collectives: a shard is exact when its dequantized weight equals the
matching slice of the full weight's bit for bit, and when the shards of all ranks put back
together hold every code and every metadata entry (CSR outliers included) exactly once.
"""
import pytest
import torch

import lowbit
from lowbit import Scheme
from lowbit.distributed import ShardDim, check_shardable, shard, valid_world_sizes
from lowbit.distributed import sharding as shard_mod
from lowbit.reference import weight_codes

# (scheme, options, N, K): K = 240 is a multiple of 10 (3-bit words) only at some world sizes,
# so 3-bit K splits cut through the middle of words and must re-pack.
CASES = [
    pytest.param("int1", {"group_size": 32}, 24, 256, id="int1-g32"),
    pytest.param("int2", {"group_size": 64, "symmetric": True}, 24, 256, id="int2-g64-sym"),
    pytest.param("int3", {"group_size": 32}, 24, 256, id="int3-g32"),
    pytest.param("int3", {"group_size": -1}, 24, 240, id="int3-perchannel"),
    pytest.param("int4", {"group_size": 32}, 24, 256, id="int4-g32"),
    pytest.param("int4", {"group_size": -1, "symmetric": True}, 24, 240, id="int4-perchannel-sym"),
    pytest.param("int8", {"group_size": 64}, 24, 256, id="int8-g64"),
    pytest.param("nf4", {"group_size": 32}, 24, 256, id="nf4-g32"),
    pytest.param("nf4", {"group_size": -1}, 24, 240, id="nf4-perchannel"),
    pytest.param("lut3", {"iters": 2}, 24, 240, id="lut3"),
    pytest.param("lut4", {"iters": 2}, 24, 240, id="lut4"),
    pytest.param("sq3", {"iters": 2, "outlier_fraction": 0.05}, 24, 240, id="sq3"),
    pytest.param("sq4", {"iters": 2, "outlier_fraction": 0.05}, 24, 240, id="sq4"),
    pytest.param("ternary", {}, 24, 240, id="ternary"),
    pytest.param("ternary", {"per_channel": True}, 24, 240, id="ternary-perchannel"),
    pytest.param("ternary_a16", {"per_channel": True}, 24, 240, id="ternary_a16-perchannel"),
    pytest.param("binary", {}, 24, 240, id="binary"),
]


def _qw(scheme, opts, n, k):
    torch.manual_seed(0)
    w = torch.randn(n, k)
    w[torch.rand(n, k) < 0.01] *= 8  # a few large weights: outliers for sq*
    return lowbit.quantize_weight(w, scheme, **opts)


def _worlds(qw, dim):
    return [w for w in (1, 2, 3, 4, 6, 8) if w in valid_world_sizes(qw.shape[dim], shard_mod.split_unit(qw, dim))]


@pytest.mark.parametrize("dim", [pytest.param(0, id="rows"), pytest.param(1, id="cols")])
@pytest.mark.parametrize("scheme,opts,n,k", CASES)
def test_shard_dequantizes_to_the_slice(scheme, opts, n, k, dim):
    qw = _qw(scheme, opts, n, k)
    full = lowbit.dequantize(qw, torch.float64)
    codes = weight_codes(qw)
    worlds = _worlds(qw, dim)
    assert 4 in worlds  # every case exercises a 4-way split
    for world in worlds:
        parts = [shard(qw, dim, r, world) for r in range(world)]
        step = qw.shape[dim] // world
        for r, p in enumerate(parts):
            sl = (slice(r * step, (r + 1) * step), slice(None)) if dim == 0 else (slice(None), slice(r * step, (r + 1) * step))
            assert p.shape == tuple(full[sl].shape)
            assert p.scheme is qw.scheme and p.spec == qw.spec
            assert torch.equal(lowbit.dequantize(p, torch.float64), full[sl]), f"world {world} rank {r}"
            assert torch.equal(weight_codes(p), codes[sl])
        if qw.spec.__class__.__name__ == "LUTSpec" and qw.spec.sparse:
            assert sum(p["col_idx"].numel() for p in parts) == qw["col_idx"].numel()
            assert torch.equal(torch.sort(torch.cat([p["values"] for p in parts]).float())[0],
                               torch.sort(qw["values"].float())[0])


@pytest.mark.parametrize("scheme,opts", [pytest.param("int3", {"group_size": 32}, id="int3"),
                                         pytest.param("sq3", {"iters": 2, "outlier_fraction": 0.05}, id="sq3"),
                                         pytest.param("binary", {}, id="binary")])
def test_generic_repack_path_gives_the_same_shards(monkeypatch, scheme, opts):
    """With the word-column fast path disabled, unpack/re-pack everything: identical tensors."""
    qw = _qw(scheme, opts, 24, 256)
    fast = {(d, r): shard(qw, d, r, 4) for d in (0, 1) for r in range(4)}
    monkeypatch.setattr(shard_mod, "columns_pack_independently", lambda bits: False)
    for (d, r), p in fast.items():
        q = shard(qw, d, r, 4)
        assert q.tensors.keys() == p.tensors.keys()
        for name in q.tensors:
            assert torch.equal(q[name], p[name]), (d, r, name)


def test_shards_own_their_storage():
    qw = _qw("int4", {"group_size": 32}, 24, 256)
    p = shard(qw, 1, 1, 2)
    for name, t in p.tensors.items():
        assert t.is_contiguous()
        assert t.untyped_storage().data_ptr() != qw[name].untyped_storage().data_ptr(), name


def test_csr_rows_are_rebased():
    qw = _qw("sq4", {"iters": 2, "outlier_fraction": 0.05}, 24, 240)
    for dim in (0, 1):
        for r in range(4):
            p = shard(qw, dim, r, 4)
            rp = p["row_ptr"]
            assert rp.dtype == torch.int32 and p["col_idx"].dtype == torch.int32
            assert int(rp[0]) == 0 and int(rp[-1]) == p["col_idx"].numel()
            assert int(p["col_idx"].max()) < p.K


# -- errors -----------------------------------------------------------------------------------

def test_group_cut_names_the_world_sizes_that_work():
    qw = _qw("int4", {"group_size": 64}, 24, 256)  # K / 64 = 4 groups: worlds 1, 2, 4
    with pytest.raises(ValueError, match=r"group_size=64.*world sizes that work: 1, 2, 4$"):
        shard(qw, 1, 0, 8)
    with pytest.raises(ValueError, match=r"not divisible by world=3.*world sizes that work: 1, 2, 4$"):
        check_shardable(qw, ShardDim.INPUT, 3)
    shard(qw, 0, 0, 8)  # rows: 24 / 8, no group constraint


def test_uneven_rows_name_the_world_sizes_that_work():
    qw = _qw("lut4", {"iters": 2}, 24, 240)
    with pytest.raises(ValueError, match=r"N \(out_features\)=24 is not divisible by world=5.*"
                                         r"1, 2, 3, 4, 6, 8, 12, 24"):
        shard(qw, 0, 0, 5)


@pytest.mark.parametrize("args,exc,msg", [
    pytest.param((2, 0, 2), ValueError, "dim must be 0", id="dim-2"),
    pytest.param((True, 0, 2), TypeError, "dim must be", id="dim-bool"),
    pytest.param((0, 2, 2), ValueError, r"rank must be in \[0, 2\)", id="rank-too-big"),
    pytest.param((0, -1, 2), ValueError, "rank must be in", id="rank-negative"),
    pytest.param((0, 0, 0), ValueError, "world must be >= 1", id="world-0"),
    pytest.param((0, 0, 2.0), TypeError, "world must be an int", id="world-float"),
])
def test_bad_arguments(args, exc, msg):
    qw = _qw("int4", {"group_size": 32}, 24, 256)
    with pytest.raises(exc, match=msg):
        shard(qw, *args)


def test_not_a_quantized_weight():
    with pytest.raises(TypeError, match="QuantizedWeight"):
        shard(torch.zeros(4, 4), 0, 0, 1)


def test_every_scheme_is_covered():
    assert {p.values[0] for p in CASES} == {s.value for s in Scheme}
