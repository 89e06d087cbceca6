"""Autotune cache (keys, files, warnings, concurrent writers, online tuning), tuner selection, pruning, tune CLI.

No GPU is needed: lookups on CUDA are exercised with a weight stand-in whose .device says
"cuda" and a GpuInfo planted for device 0; the tuner runs with an injected timer on a
PyTorch fake family and on the real uniform family under the interpreter.
"""
import json
import multiprocessing
import os
import subprocess
import sys
import warnings

import pytest
import torch
import triton

import lowbit
from lowbit.autotune import cache, tuner
from lowbit.formats import dim_bucket
from lowbit.kernels._common import KernelConfig, KernelFamily, KernelPath

from helpers import nan_out

GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM
GPU = cache.GpuInfo("Fake GPU 80GB", (9, 0), triton.__version__)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own user cache dir and shipped dir, and a fresh in-memory cache."""
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "user"))
    monkeypatch.delenv("LOWBIT_AUTOTUNE", raising=False)
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "shipped")
    cache.clear()
    yield
    cache.clear()


def _qw(scheme="int4", n=40, k=128, **opts):
    if scheme == "int4":
        opts.setdefault("group_size", 64)
    return lowbit.quantize_weight(torch.randn(n, k), scheme, **opts)


class FakeCudaWeight:
    """Looks like a QuantizedWeight on cuda:0 to lookup() (scheme, spec, N, K, device) without a GPU."""

    def __init__(self, qw):
        self.scheme, self.spec, self.N, self.K = qw.scheme, qw.spec, qw.N, qw.K
        self.device = torch.device("cuda", 0)


def _plant_gpu(gpu=GPU):
    cache._DEVICE_GPU[0] = gpu


def _key(qw, path=GEMV, m=1, dtype=torch.float16, family="uniform"):
    return cache.CacheKey.of(family, qw, path, dim_bucket(m), dtype)


def _write(path, entries, raw=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_text(raw)
    else:
        cache.merge_into_file(path, entries, GPU.name)


def _cache_warnings(record):
    return [w for w in record if issubclass(w.category, cache.AutotuneCacheWarning)]


CFG_A = KernelConfig(block_m=1, block_n=256, block_k=64, split_k=4, group_m=1, num_warps=4, num_stages=2)
CFG_B = KernelConfig(block_m=2, block_n=128, block_k=32, split_k=2, group_m=1, num_warps=4, num_stages=2)


# -- keys ----------------------------------------------------------------------------------------
def test_cache_key_fields():
    qw = _qw()
    assert _key(qw, GEMM, 33, torch.bfloat16) == ("uniform", "int4", 40, 128, 64, "bfloat16", "gemm", 64)
    assert _qw("int4", group_size=-1).spec.group_size == -1
    assert _key(_qw("int4", group_size=-1)).group_size == -1  # per channel stays distinct from g=K
    assert _key(_qw("ternary"), family="ternary").group_size == 0  # no groups
    assert _key(_qw("nf4")).group_size == 64
    assert cache.gpu_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert cache.user_path(GPU).name == "autotune-fake-gpu-80gb.json"
    assert cache.shipped_path(GPU).name == "fake-gpu-80gb.json"


def test_lookup_on_cpu_is_none_without_loading(monkeypatch):
    def boom(gpu):
        raise AssertionError("a CPU lookup must not load cache files")

    monkeypatch.setattr(cache, "table_for", boom)
    assert cache.lookup("uniform", _qw(), GEMV, 1, torch.float16) is None


# -- files ---------------------------------------------------------------------------------------
def test_roundtrip_and_user_overrides_shipped(tmp_path):
    qw = FakeCudaWeight(_qw())
    k1, k2 = _key(qw, GEMV, 1), _key(qw, GEMV, 4)
    _write(cache.shipped_path(GPU), [cache.make_entry(GPU, k1, CFG_A, 10.0), cache.make_entry(GPU, k2, CFG_A, 11.0)])
    _write(cache.user_path(GPU), [cache.make_entry(GPU, k2, CFG_B, 9.0)])
    _plant_gpu()
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
    qw = FakeCudaWeight(_qw())
    _write(cache.user_path(GPU), [cache.make_entry(GPU, _key(qw), CFG_A)])
    _plant_gpu()
    assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) == CFG_A
    monkeypatch.setattr(cache, "read_entries", lambda path: pytest.fail("cache file re-read after the first load"))
    for _ in range(3):
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) == CFG_A


@pytest.mark.parametrize("raw", ["{not json", "[]", '{"lowbit_autotune": 1, "entries": [{"gpu": 1}]}',
                                 '{"lowbit_autotune": 99, "entries": []}', ""])
def test_corrupt_file_warns_once_and_falls_back(raw):
    qw = FakeCudaWeight(_qw())
    _write(cache.user_path(GPU), None, raw=raw)
    _plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
        assert cache.load_configs(cache.user_path(GPU), GPU) == {}  # a second load does not warn again
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
    msgs = [str(w.message) for w in _cache_warnings(rec)]
    assert sum("ignoring autotune cache" in m for m in msgs) == 1, msgs


def test_bad_config_in_entry_is_corrupt():
    qw = FakeCudaWeight(_qw())
    entry = cache.make_entry(GPU, _key(qw), CFG_A)
    entry["config"]["block_k"] = -64
    _write(cache.user_path(GPU), None, raw=json.dumps({"lowbit_autotune": 1, "gpu": GPU.name, "entries": [entry]}))
    _plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
    msgs = [str(w.message) for w in _cache_warnings(rec)]
    assert any("malformed" in m and "block_k" in m for m in msgs), msgs


@pytest.mark.parametrize("other", [GPU._replace(triton="0.0.1"), GPU._replace(name="NVIDIA A100-SXM4-80GB"),
                                   GPU._replace(capability=(8, 0))])
def test_foreign_entries_are_never_used(other):
    """A file (shipped or user) whose entries come from another GPU, cc or triton version is ignored."""
    qw = FakeCudaWeight(_qw())
    _write(cache.user_path(GPU), [cache.make_entry(other, _key(qw), CFG_A)])
    _write(cache.shipped_path(GPU), [cache.make_entry(other, _key(qw, GEMV, 2), CFG_B)])
    _plant_gpu()
    with pytest.warns(cache.AutotuneCacheWarning, match="tuned for"):
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
    assert cache.lookup("uniform", qw, GEMV, 2, torch.float16) is None


def test_mixed_file_uses_only_matching_entries():
    qw = FakeCudaWeight(_qw())
    old = GPU._replace(triton="0.0.1")
    _write(cache.user_path(GPU), [cache.make_entry(old, _key(qw, GEMV, 1), CFG_B),
                                  cache.make_entry(GPU, _key(qw, GEMV, 2), CFG_A)])
    _plant_gpu()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None
        assert cache.lookup("uniform", qw, GEMV, 2, torch.float16) == CFG_A
    assert not _cache_warnings(rec)


def test_unknown_gpu_warns_once():
    qw = FakeCudaWeight(_qw())
    _plant_gpu(GPU._replace(name="Some Future GPU"))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for m in (1, 2, 16):
            assert cache.lookup("uniform", qw, GEMV, dim_bucket(m), torch.float16) is None
    msgs = [str(w.message) for w in _cache_warnings(rec)]
    assert len(msgs) == 1 and "no tuned kernel configs for GPU 'Some Future GPU'" in msgs[0]


def test_lookup_never_raises(monkeypatch):
    qw = FakeCudaWeight(_qw())
    _plant_gpu()

    def broken(gpu):
        raise PermissionError("cache dir unreadable")

    monkeypatch.setattr(cache, "table_for", broken)
    with pytest.warns(cache.AutotuneCacheWarning, match="lookup failed"):
        assert cache.lookup("uniform", qw, GEMV, 1, torch.float16) is None


def test_write_replaces_corrupt_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "w" / "autotune-x.json"
    _write(path, None, raw="garbage")
    qw = _qw()
    with pytest.warns(cache.AutotuneCacheWarning, match="replacing corrupt"):
        cache.merge_into_file(path, [cache.make_entry(GPU, _key(qw), CFG_A)], GPU.name)
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
    qw = FakeCudaWeight(_qw())
    fam = FakeFamily()
    calls = []

    def fake_tune(family, path, qw_, m, dtype):
        calls.append((family.name, path, m, dtype))
        key = cache.CacheKey.of(family, qw_, path, dim_bucket(m), dtype)
        return tuner.TuneResult(key, CFG_A, CFG_B, [tuner.Trial(CFG_A, 5.0), tuner.Trial(CFG_B, 4.0)])

    monkeypatch.setattr(tuner, "tune", fake_tune)
    monkeypatch.setattr("lowbit.kernels.families", lambda: [fam])
    _plant_gpu()
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
    qw = FakeCudaWeight(_qw())
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path / "not-a-dir" / "sub"))

    def fake_tune(family, path, qw_, m, dtype):
        key = cache.CacheKey.of(family, qw_, path, dim_bucket(m), dtype)
        return tuner.TuneResult(key, CFG_A, CFG_B, [tuner.Trial(CFG_A, 5.0), tuner.Trial(CFG_B, 4.0)])

    monkeypatch.setattr(tuner, "tune", fake_tune)
    monkeypatch.setattr("lowbit.kernels.families", lambda: [FakeFamily()])
    _plant_gpu()
    cache.enable_online_tuning()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert cache.lookup("fake", qw, GEMV, 4, torch.float16) == CFG_B
        assert cache.lookup("fake", qw, GEMV, 4, torch.float16) == CFG_B
    assert any("could not save tuned configs" in str(w.message) for w in _cache_warnings(rec))


def test_online_tuning_failure_is_not_retried(monkeypatch):
    qw = FakeCudaWeight(_qw())
    calls = []

    def failing_tune(*args):
        calls.append(1)
        raise RuntimeError("no config ran")

    monkeypatch.setattr(tuner, "tune", failing_tune)
    monkeypatch.setattr("lowbit.kernels.families", lambda: [FakeFamily()])
    _plant_gpu()
    cache.enable_online_tuning()
    with pytest.warns(cache.AutotuneCacheWarning):
        for _ in range(3):
            assert cache.lookup("fake", qw, GEMV, 4, torch.float16) is None
    assert calls == [1]


# -- tuner selection ----------------------------------------------------------------------------
BROKEN = KernelConfig(block_k=13)  # the fake family computes garbage for it
CRASH = KernelConfig(block_k=7)  # and raises for this one


class FakeFamily(KernelFamily):
    """A PyTorch stand-in family (any scheme): exact for every config except BROKEN and CRASH."""

    name = "fake"
    schemes = frozenset(lowbit.Scheme)

    def __init__(self, space=None):
        self.space = space or [KernelConfig(block_k=16), KernelConfig(block_k=32), BROKEN, CRASH]
        self.launched = []

    def forward(self, x, qw, bias, path):
        raise NotImplementedError

    def launch(self, x2d, qw, bias, path, config, out):
        self.launched.append(config)
        if config == CRASH:
            raise ValueError("config cannot run")
        y = lowbit.reference.linear(x2d, qw, out_dtype=torch.float32)
        out.copy_(y * 1.5 if config == BROKEN else y)
        return out

    def search_space(self, path, qw=None):
        return list(self.space)

    def heuristic(self, path, m, qw):
        return KernelConfig()

    def aot_cases(self):
        return []


def _dict_timer(times):
    return lambda fn, cfg: times[cfg]


def test_tuner_picks_fastest_correct_config():
    fam, qw = FakeFamily(), _qw()
    times = {KernelConfig(): 10.0, KernelConfig(block_k=16): 8.0, KernelConfig(block_k=32): 6.0, BROKEN: 1.0, CRASH: 0.5}
    res = tuner.tune(fam, GEMV, qw, 3, torch.float32, timer=_dict_timer(times))
    assert res.best == KernelConfig(block_k=32) and res.best_us == 6.0
    assert res.heuristic == KernelConfig() and res.heuristic_us == 10.0 and res.speedup == pytest.approx(10 / 6)
    assert res.times() == {KernelConfig(): 10.0, KernelConfig(block_k=16): 8.0, KernelConfig(block_k=32): 6.0}
    errors = {t.config: t.error for t in res.rejected}
    assert "differs from the heuristic" in errors[BROKEN] and "cannot run" in errors[CRASH]
    assert res.key == cache.CacheKey("fake", "int4", 40, 128, 64, "float32", "gemv", 4)


def test_tuner_heuristic_can_win_and_rejects_bad_times():
    fam, qw = FakeFamily([KernelConfig(block_k=16), KernelConfig(block_k=32)]), _qw()
    times = {KernelConfig(): 2.0, KernelConfig(block_k=16): float("nan"), KernelConfig(block_k=32): 3.0}
    seen = []
    res = tuner.tune(fam, GEMM, qw, 16, torch.float32, timer=_dict_timer(times), on_trial=lambda i, n, t: seen.append((i, n)))
    assert res.best == KernelConfig() and res.speedup == 1.0
    assert [t.config for t in res.rejected] == [KernelConfig(block_k=16)]
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_tuner_fails_when_nothing_is_correct():
    fam = FakeFamily([BROKEN])
    with pytest.raises(RuntimeError, match="no config"):
        tuner.tune(fam, GEMV, _qw(), 1, torch.float32, timer=lambda fn, cfg: float("inf"))


def test_tuner_on_uniform_family_under_interpreter(device):
    """Selection on the real uniform kernels: each candidate runs (interpreter) and is checked."""
    from lowbit.kernels import uniform

    fam = uniform.FAMILY
    qw = _qw("int4", n=40, k=128).to(device)
    space = fam.search_space(GEMV, qw)
    heur = fam.heuristic(GEMV, 2, qw)
    cands = [c for c in space if c.block_m <= 2 and c.split_k in (1, 2) and c != heur][:3]
    assert len(cands) == 3
    times = {c: 5.0 + i for i, c in enumerate(cands)}
    times[heur] = 9.0
    times[cands[2]] = 2.0
    x = torch.randn(2, 128, dtype=torch.float16, device=device)
    timed = []

    def timer(fn, cfg):
        fn()  # the closure the tuner would time must launch without error
        timed.append(cfg)
        return times[cfg]

    res = tuner.tune(fam, GEMV, qw, 2, torch.float16, timer=timer, configs=cands, x=x)
    assert res.best == cands[2] and not res.rejected
    assert set(timed) == set(cands) | {heur}
    assert res.speedup == pytest.approx(9.0 / 2.0)
    # the winner really computes x . W^T: fp16 output of an fp32 accumulation, so the error is
    # the final rounding (2^-11 relative) plus fp32 summation noise; 2e-3 of max|y| bounds both.
    out = fam.launch(x, qw, None, GEMV, res.best, nan_out((2, 40), torch.float16, device))
    ref = lowbit.reference.linear(x, qw, out_dtype=torch.float64)
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < 2e-3


def test_record_merges_results(tmp_path):
    fam, qw = FakeFamily([KernelConfig(block_k=16)]), _qw()
    res = tuner.tune(fam, GEMV, qw, 1, torch.float32, timer=lambda fn, cfg: 3.0 if cfg.block_k == 16 else 4.0)
    path = cache.record([res], GPU, tmp_path / "out.json")
    (entry,) = cache.read_entries(path)
    assert entry["config"] == KernelConfig(block_k=16).to_dict() and entry["heuristic_us"] == 4.0
    assert cache.load_configs(path, GPU) == {res.key: KernelConfig(block_k=16)}


# -- pruning -------------------------------------------------------------------------------------
def _c(bm=16, bn=64, bk=64, sk=1, st=2):
    return KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=sk, num_stages=st)


def test_estimate_shared():
    # 3 stages x (x tile 64*32*2 B + int4 weight tile 32*128/2 B) = 3 * (4096 + 2048)
    assert tuner.estimate_shared(_c(64, 128, 32, st=3)) == 3 * (4096 + 2048)
    # fp32 activations, 2-bit weights, plus the dequantized fp32 operand 32*128*4
    assert tuner.estimate_shared(_c(64, 128, 32, st=3), act_bytes=4, weight_bits=2, dequant_tile=True) == \
        3 * (8192 + 1024) + 16384


def test_prune_group_size_split_k_shared_and_order():
    cfgs = [_c(bk=32), _c(bk=64), _c(bk=128), _c(bk=64), _c(bk=32, sk=8), _c(bk=32, sk=2)]
    assert tuner.prune(cfgs, group_size=64) == [_c(bk=32), _c(bk=64), _c(bk=32, sk=8), _c(bk=32, sk=2)]
    assert tuner.prune(cfgs, group_size=-1) == [_c(bk=32), _c(bk=64), _c(bk=128), _c(bk=32, sk=8), _c(bk=32, sk=2)]
    # K=128: 4 tiles of 32, so split_k=8 would leave empty slices
    assert tuner.prune(cfgs, k=128) == [_c(bk=32), _c(bk=64), _c(bk=128), _c(bk=32, sk=2)]
    big = _c(128, 256, 128, st=4)  # 4 * (128*128*2 + 128*256/2) = 196608 B
    assert tuner.estimate_shared(big) == 196608
    assert tuner.prune([big, _c()], shared_limit=tuner.shared_limit_for(80)) == [_c()]
    assert tuner.prune([big, _c()], shared_limit=tuner.shared_limit_for((9, 0))) == [big, _c()]
    assert tuner.prune([big], shared_limit=1) == []
    assert lowbit.autotune.prune(cfgs, group_size=32) == [_c(bk=32), _c(bk=32, sk=8), _c(bk=32, sk=2)]


def test_shared_limits():
    assert tuner.shared_limit_for(80) == 163 * 1024 == tuner.shared_limit_for("8.0")
    assert tuner.shared_limit_for((9, 0)) == 227 * 1024
    assert tuner.shared_limit_for((8, 6)) == 99 * 1024
    assert tuner.shared_limit_for((5, 0)) == 48 * 1024  # unknown: the portable minimum


# -- python -m lowbit tune ---------------------------------------------------------------------
def test_tune_dry_run_lists_plan(capsys):
    from lowbit.__main__ import main

    rc = main(["tune", "--dry-run", "--shapes", "256x128,96x100", "--schemes", "int4", "--m", "1,3,4,100"])
    out, err = capsys.readouterr()
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("  ")]
    # M=3 and M=4 share bucket 4; 96x100 is skipped (K not divisible by 128)
    assert len(lines) == 3 and "uniform/int4 256x128 g128 gemv M<=1" in lines[0] and "M<=128" in lines[2]
    assert "K is not divisible" in err


def test_tune_bad_arguments(capsys):
    from lowbit.__main__ import main

    assert main(["tune", "--dry-run", "--shapes", "4096by4096"]) == 2
    assert main(["tune", "--dry-run", "--m", "0"]) == 2
    assert main(["tune", "--dry-run", "--schemes", "int5"]) == 2
    err = capsys.readouterr().err
    assert "4096x4096" in err and "positive" in err and "unknown scheme" in err


def test_tune_without_gpu_exits_2_with_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU even on a GPU machine
    proc = subprocess.run([sys.executable, "-m", "lowbit", "tune", "--shapes", "256x128", "--m", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "lowbit tune: no CUDA GPU found: autotuning needs one (use --dry-run to list the plan)"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_tune_command_end_to_end_with_fake_timer(monkeypatch, capsys):
    """The tune command's loop, summary table and cache write, with the GPU parts stood in for."""
    from lowbit.__main__ import main
    from lowbit.cli import tune as tune_cli

    fam = FakeFamily([KernelConfig(block_k=16), KernelConfig(block_k=32), BROKEN])
    times = {KernelConfig(): 10.0, KernelConfig(block_k=16): 4.0, KernelConfig(block_k=32): 5.0, BROKEN: 1.0}
    monkeypatch.setattr(tune_cli, "_no_gpu_reason", lambda: None)
    monkeypatch.setattr(cache, "gpu_info", lambda device=None: GPU)
    monkeypatch.setattr("lowbit.kernels.family_for", lambda scheme: fam)
    monkeypatch.setattr(tune_cli, "_weight", lambda job, store: _qw("int4", n=job.n, k=job.k, group_size=64))
    monkeypatch.setattr(tuner, "do_bench_timer", lambda fn, cfg: times[cfg])
    rc = main(["tune", "--shapes", "40x128", "--schemes", "int4", "--m", "1,16", "--group-size", "64",
               "--dtype", "float32"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["key", "best", "config", "us", "heuristic", "us", "speedup"]
    assert len(lines) == 5 and "2 key(s) tuned, 0 failed" in lines[-1]
    assert all("4.00" in ln and "10.00" in ln and "2.50x" in ln for ln in lines[2:4])
    assert "[2/2]" in err
    entries = cache.read_entries(cache.user_path(GPU))
    assert sorted((e["path"], e["m_bucket"]) for e in entries) == [("gemm", 16), ("gemv", 1)]
    assert all(e["config"] == KernelConfig(block_k=16).to_dict() and e["dtype"] == "float32" for e in entries)
