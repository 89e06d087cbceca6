"""The autotune cache: keys, files, warnings, concurrent writers, online tuning (no GPU needed; see tests/fakes.py)."""
import json
import multiprocessing
import warnings

import pytest
import torch
import triton

import lowbit
from fakes import CFG_A, CFG_B, GPU, FakeCudaWeight, FakeFamily, key_of, plant_gpu, small_qw
from lowbit.autotune import cache, tuner
from lowbit.formats import dim_bucket
from lowbit.kernels import KernelPath

pytestmark = pytest.mark.usefixtures("isolated_cache")
GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM


def _write(path, entries, raw=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_text(raw)
    else:
        cache.merge_into_file(path, entries, GPU.name)


def _cache_warnings(record):
    return [w for w in record if issubclass(w.category, cache.AutotuneCacheWarning)]


# -- keys ----------------------------------------------------------------------------------------
def test_cache_key_fields():
    qw = small_qw()
    assert key_of(qw, GEMM, 33, torch.bfloat16) == ("uniform", "int4", 40, 128, 64, "bfloat16", "gemm", 64)
    assert small_qw("int4", group_size=-1).spec.group_size == -1
    assert key_of(small_qw("int4", group_size=-1)).group_size == -1  # per channel stays distinct from g=K
    assert key_of(small_qw("ternary"), family="ternary").group_size == 0  # no groups
    assert key_of(small_qw("nf4")).group_size == 64
    assert cache.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert cache.user_path(GPU).name == "autotune-fake-gpu-80gb.json"
    assert cache.shipped_path(GPU).name == "fake-gpu-80gb.json"


def test_lookup_on_cpu_is_none_without_loading(monkeypatch):
    def boom(gpu):
        raise AssertionError("a CPU lookup must not load cache files")

    monkeypatch.setattr(cache, "table_for", boom)
    assert cache.lookup("uniform", small_qw(), GEMV, 1, torch.float16) is None


# -- files ---------------------------------------------------------------------------------------
def test_roundtrip_and_user_overrides_shipped(tmp_path):
    qw = FakeCudaWeight(small_qw())
    k1, k2 = key_of(qw, GEMV, 1), key_of(qw, GEMV, 4)
    _write(cache.shipped_path(GPU), [cache.make_entry(GPU, k1, CFG_A, 10.0), cache.make_entry(GPU, k2, CFG_A, 11.0)])
    _write(cache.user_path(GPU), [cache.make_entry(GPU, k2, CFG_B, 9.0)])
    plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) == CFG_A  # shipped only
        assert cache.lookup("uniform", qw, GEMV, 4, torch.float16) == CFG_B  # user wins
        assert cache.lookup("uniform", qw, GEMV, 4, torch.bfloat16) is None  # another dtype
        assert cache.lookup("uniform", qw, GEMM, 4, torch.float16) is None  # another path
        assert cache.lookup("lut", qw, GEMV, 4, torch.float16) is None  # another family
    assert not _cache_warnings(rec)
    doc = json.loads(cache.user_path(GPU).read_text())
    assert doc["lowbit_autotune"] == 1 and doc["entries"][0]["us"] == 9.0
    assert doc["entries"][0]["config"] == CFG_B.to_dict() and doc["entries"][0]["triton"] == triton.__version__


def test_entries_are_loaded_once(monkeypatch):
    qw = FakeCudaWeight(small_qw())
    _write(cache.user_path(GPU), [cache.make_entry(GPU, key_of(qw), CFG_A)])
    plant_gpu()
    assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) == CFG_A
    monkeypatch.setattr(cache, "read_entries", lambda path: pytest.fail("cache file re-read after the first load"))
    for _ in range(3):
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) == CFG_A


@pytest.mark.parametrize("raw", ["{not json", "[]", '{"lowbit_autotune": 99, "entries": []}', "",
                                 "[" * 100_000 + "]" * 100_000],  # nested too deeply for the json parser
                         ids=["not-json", "a-list", "other-format", "empty", "deeply-nested"])
def test_corrupt_file_warns_once_and_falls_back(raw):
    qw = FakeCudaWeight(small_qw())
    _write(cache.user_path(GPU), None, raw=raw)
    plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
        assert cache.load_configs(cache.user_path(GPU), GPU) == {}  # a second load does not warn again
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
    msgs = [str(w.message) for w in _cache_warnings(rec)]
    assert sum("ignoring autotune cache" in m for m in msgs) == 1, msgs


@pytest.mark.parametrize("field,value", [
    pytest.param("block_k", -64, id="negative"), pytest.param("block_m", 3, id="not-pow2"),
    pytest.param("block_n", 2 ** 40, id="huge"), pytest.param("block_k", 16.9, id="float"),
    pytest.param("block_k", "32", id="string"), pytest.param("num_warps", True, id="bool"),
    pytest.param("num_stages", 0, id="zero"), pytest.param("split_k", None, id="null")])
def test_an_invalid_entry_is_skipped_with_one_warning(field, value):
    """A bad config in one entry: that key falls back to the heuristic, every valid entry is still used."""
    bad_qw, good_qw = FakeCudaWeight(small_qw()), FakeCudaWeight(small_qw(n=48))
    bad = cache.make_entry(GPU, key_of(bad_qw), CFG_A)
    bad["config"][field] = value
    good = cache.make_entry(GPU, key_of(good_qw), CFG_B)
    _write(cache.user_path(GPU), None, raw=json.dumps({"lowbit_autotune": 1, "gpu": GPU.name,
                                                       "entries": [bad, {"gpu": 1}, good]}))
    plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", bad_qw, GEMV, 1, torch.float16) is None
        assert cache.lookup("uniform", good_qw, GEMV, 1, torch.float16) == CFG_B
        assert cache.lookup("uniform", bad_qw, GEMV, 1, torch.float16) is None
    msgs = [str(w.message) for w in _cache_warnings(rec)]
    assert len(msgs) == 1 and "2 invalid entries" in msgs[0] and field in msgs[0], msgs


def test_a_config_the_family_cannot_run_falls_back_with_one_warning(monkeypatch):
    """A structurally valid config that breaks the family's own rules (a K tile across two int4 groups)."""
    from lowbit.dispatch import choose_config
    from lowbit.kernels import uniform

    qw = small_qw(group_size=32)
    cfg = uniform.FAMILY.heuristic(GEMV, 1, qw, torch.float16)
    bad = type(cfg)(**{**cfg.to_dict(), "block_k": 64})  # 64 > group_size 32
    assert uniform.FAMILY.config_problem(GEMV, bad, qw, torch.float16)
    monkeypatch.setattr("lowbit.autotune.lookup", lambda *a, **k: bad)
    x = torch.empty(1, qw.K, dtype=torch.float16, device="meta")  # not the interpreter: the cache is consulted
    with pytest.warns(cache.AutotuneCacheWarning, match="ignoring the cached config"):
        assert choose_config(uniform.FAMILY, x, GEMV, 1, qw) == cfg


@pytest.mark.parametrize("other", [GPU._replace(triton="0.0.1"), GPU._replace(name="NVIDIA A100-SXM4-80GB"),
                                   GPU._replace(capability=(8, 0))])
def test_foreign_entries_are_never_used(other):
    """A file (shipped or user) whose entries come from another GPU, cc or triton version is ignored."""
    qw = FakeCudaWeight(small_qw())
    _write(cache.user_path(GPU), [cache.make_entry(other, key_of(qw), CFG_A)])
    _write(cache.shipped_path(GPU), [cache.make_entry(other, key_of(qw, GEMV, 2), CFG_B)])
    plant_gpu()
    with pytest.warns(cache.AutotuneCacheWarning, match="tuned for"):
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
    assert cache.lookup("uniform", qw, GEMV, 2, torch.float16) is None


def test_mixed_file_uses_only_matching_entries():
    qw = FakeCudaWeight(small_qw())
    old = GPU._replace(triton="0.0.1")
    _write(cache.user_path(GPU), [cache.make_entry(old, key_of(qw, GEMV, 1), CFG_B),
                                  cache.make_entry(GPU, key_of(qw, GEMV, 2), CFG_A)])
    plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
        assert cache.lookup("uniform", qw, GEMV, 2, torch.float16) == CFG_A
    assert not _cache_warnings(rec)


def test_unknown_gpu_warns_once():
    qw = FakeCudaWeight(small_qw())
    plant_gpu(GPU._replace(name="Some Future GPU"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for m in (1, 2, 16):
            assert cache.lookup("uniform", qw, GEMV, dim_bucket(m), torch.float16) is None
    msgs = [str(w.message) for w in _cache_warnings(rec)]
    assert len(msgs) == 1 and "no tuned kernel configs for GPU 'Some Future GPU'" in msgs[0]


def test_lookup_never_raises(monkeypatch):
    qw = FakeCudaWeight(small_qw())
    plant_gpu()

    def broken(gpu):
        raise PermissionError("cache dir unreadable")

    monkeypatch.setattr(cache, "table_for", broken)
    with pytest.warns(cache.AutotuneCacheWarning, match="lookup failed"):
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None


def test_write_replaces_corrupt_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "w" / "autotune-x.json"
    _write(path, None, raw="garbage")
    qw = small_qw()
    with pytest.warns(cache.AutotuneCacheWarning, match="replacing corrupt"):
        cache.merge_into_file(path, [cache.make_entry(GPU, key_of(qw), CFG_A)], GPU.name)
    assert len(cache.read_entries(path)) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["autotune-x.json", "autotune-x.json.lock"]
    with pytest.raises(KeyError):  # an invalid entry is refused before anything is written
        cache.merge_into_file(path, [{"gpu": "x"}])
    assert len(cache.read_entries(path)) == 1


def _writer(path, worker, count, barrier):
    """Child process: `count` separate read-merge-replace writes of distinct keys."""
    qw = lowbit.quantize_weight(torch.randn(8, 64), "int4", group_size=32)
    barrier.wait()
    for i in range(count):
        key = cache.CacheKey.of("uniform", qw, "gemv", 2 ** (i % 12), "float16")._replace(N=1000 * worker + i)
        cache.merge_into_file(path, [cache.make_entry(GPU, key, CFG_A, float(i))], GPU.name)


def test_two_processes_writing_at_once(tmp_path):
    path = tmp_path / "shared" / "autotune-fake.json"
    ctx = multiprocessing.get_context("fork")  # the children only run lowbit.autotune.cache (no CUDA, no triton)
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, w, 40, barrier)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    doc = json.loads(path.read_text())  # valid JSON
    ns = sorted(e["N"] for e in doc["entries"])
    assert ns == sorted([1000 + i for i in range(40)] + [2000 + i for i in range(40)])  # nobody lost an entry
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]


# -- online tuning -----------------------------------------------------------------------------
def test_online_tuning_switch(monkeypatch):
    assert not cache.online_tuning_enabled()
    monkeypatch.setenv("LOWBIT_AUTOTUNE", "1")
    assert cache.online_tuning_enabled()
    cache.enable_online_tuning(False)
    assert not cache.online_tuning_enabled()
    monkeypatch.delenv("LOWBIT_AUTOTUNE")
    cache.enable_online_tuning()
    assert cache.online_tuning_enabled()


def test_online_tuning_tunes_a_miss_once(monkeypatch):
    """With online tuning on, the first miss tunes and persists; later calls are table hits."""
    qw = FakeCudaWeight(small_qw())
    fam = FakeFamily()
    calls = []

    def fake_tune(family, path, qw_, m, dtype):
        calls.append((family.name, path, m, dtype))
        key = cache.CacheKey.of(family, qw_, path, dim_bucket(m), dtype)
        return tuner.TuneResult(key, CFG_A, CFG_B, [tuner.Trial(CFG_A, 5.0), tuner.Trial(CFG_B, 4.0)])

    monkeypatch.setattr(tuner, "tune", fake_tune)
    monkeypatch.setattr("lowbit.kernels.families", lambda: [fam])
    plant_gpu()
    with pytest.warns(cache.AutotuneCacheWarning, match="no tuned kernel configs"):
        assert cache.lookup("fake", qw, GEMV, 4, torch.float16) is None  # off by default
    assert calls == []
    cache.enable_online_tuning()
    assert cache.lookup("fake", qw, GEMV, 4, torch.float16) == CFG_B
    assert cache.lookup("fake", qw, GEMV, 4, torch.float16) == CFG_B
    assert calls == [("fake", GEMV, 4, torch.float16)]
    entries = cache.read_entries(cache.user_path(GPU))
    assert len(entries) == 1 and entries[0]["us"] == 4.0 and entries[0]["heuristic_us"] == 5.0


def test_online_tuning_result_survives_an_unwritable_cache(tmp_path, monkeypatch):
    qw = FakeCudaWeight(small_qw())
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "not-a-dir" / "sub"))

    def fake_tune(family, path, qw_, m, dtype):
        key = cache.CacheKey.of(family, qw_, path, dim_bucket(m), dtype)
        return tuner.TuneResult(key, CFG_A, CFG_B, [tuner.Trial(CFG_A, 5.0), tuner.Trial(CFG_B, 4.0)])

    monkeypatch.setattr(tuner, "tune", fake_tune)
    monkeypatch.setattr("lowbit.kernels.families", lambda: [FakeFamily()])
    plant_gpu()
    cache.enable_online_tuning()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("fake", qw, GEMV, 4, torch.float16) == CFG_B
        assert cache.lookup("fake", qw, GEMV, 4, torch.float16) == CFG_B
    assert any("could not save tuned configs" in str(w.message) for w in _cache_warnings(rec))


def test_online_tuning_failure_is_not_retried(monkeypatch):
    qw = FakeCudaWeight(small_qw())
    calls = []

    def failing_tune(*args):
        calls.append(1)
        raise RuntimeError("no config ran")

    monkeypatch.setattr(tuner, "tune", failing_tune)
    monkeypatch.setattr("lowbit.kernels.families", lambda: [FakeFamily()])
    plant_gpu()
    cache.enable_online_tuning()
    with pytest.warns(cache.AutotuneCacheWarning):
        for _ in range(3):
            assert cache.lookup("fake", qw, GEMV, 4, torch.float16) is None
    assert calls == [1]
