"""The tuner's selection: fastest correct config wins, wrong or crashing configs are rejected (injected timers)."""
import pytest
import torch

import lowbit
from fakes import BROKEN, CRASH, GPU, FakeFamily, small_qw
from helpers import nan_out
from lowbit.autotune import cache, tuner
from lowbit.kernels import KernelConfig, KernelPath

pytestmark = pytest.mark.usefixtures("isolated_cache")
GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM


# -- tuner selection ----------------------------------------------------------------------------

def _dict_timer(times):
    return lambda fn, cfg: times[cfg]


def test_tuner_picks_fastest_correct_config():
    fam, qw = FakeFamily(), small_qw()
    times = {KernelConfig(): 10.0, KernelConfig(block_k=16): 8.0, KernelConfig(block_k=32): 6.0, BROKEN: 1.0, CRASH: 0.5}
    res = tuner.tune(fam, GEMV, qw, 3, torch.float32, timer=_dict_timer(times))
    assert res.best == KernelConfig(block_k=32) and res.best_us == 6.0
    assert res.heuristic == KernelConfig() and res.heuristic_us == 10.0 and res.speedup == pytest.approx(10 / 6)
    assert res.times() == {KernelConfig(): 10.0, KernelConfig(block_k=16): 8.0, KernelConfig(block_k=32): 6.0}
    errors = {t.config: t.error for t in res.rejected}
    assert "differs from the heuristic" in errors[BROKEN] and "cannot run" in errors[CRASH]
    assert res.key == cache.CacheKey("fake", "int4", 40, 128, 64, "float32", "gemv", 4)


def test_tuner_heuristic_can_win_and_rejects_bad_times():
    fam, qw = FakeFamily([KernelConfig(block_k=16), KernelConfig(block_k=32)]), small_qw()
    times = {KernelConfig(): 2.0, KernelConfig(block_k=16): float("nan"), KernelConfig(block_k=32): 3.0}
    seen = []
    res = tuner.tune(fam, GEMM, qw, 16, torch.float32, timer=_dict_timer(times), on_trial=lambda i, n, t: seen.append((i, n)))
    assert res.best == KernelConfig() and res.speedup == 1.0
    assert [t.config for t in res.rejected] == [KernelConfig(block_k=16)]
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_tuner_fails_when_nothing_is_correct():
    fam = FakeFamily([BROKEN])
    with pytest.raises(RuntimeError, match="no config"):
        tuner.tune(fam, GEMV, small_qw(), 1, torch.float32, timer=lambda fn, cfg: float("inf"))


def test_tuner_on_uniform_family_under_interpreter(device):
    """Selection on the real uniform kernels: each candidate runs (interpreter) and is checked."""
    from lowbit.kernels import uniform

    fam = uniform.FAMILY
    qw = small_qw("int4", n=40, k=128).to(device)
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
    fam, qw = FakeFamily([KernelConfig(block_k=16)]), small_qw()
    res = tuner.tune(fam, GEMV, qw, 1, torch.float32, timer=lambda fn, cfg: 3.0 if cfg.block_k == 16 else 4.0)
    path = cache.record([res], GPU, tmp_path / "out.json")
    (entry,) = cache.read_entries(path)
    assert entry["config"] == KernelConfig(block_k=16).to_dict() and entry["heuristic_us"] == 4.0
    assert cache.load_configs(path, GPU) == {res.key: KernelConfig(block_k=16)}
