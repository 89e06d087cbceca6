"""python -m lowbit tune: the plan, bad arguments, no-GPU exit, and the loop end to end with a fake timer."""
import os
import subprocess
import sys

import pytest

from fakes import BROKEN, GPU, FakeFamily, small_qw
from helpers import ROOT
from lowbit.autotune import cache, tuner
from lowbit.kernels import KernelConfig

pytestmark = pytest.mark.usefixtures("isolated_cache")


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
    monkeypatch.setattr(tune_cli, "_weight", lambda job, store: small_qw("int4", n=job.n, k=job.k, group_size=64))
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
