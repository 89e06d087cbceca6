"""The static roofline (lowbit.perf.static_roofline, python -m lowbit check --roofline) and its CI budget gate.

The first tests build rows from literal SASS (no compiler): known instruction counts, the manifest
fields, and a budget regression that must be caught. The last ones run the command in a subprocess
without TRITON_INTERPRET on the CI subset: every case within 5% of perf/static/budgets.json, and
each case re-counted from its SASS dump gives the manifest's number.
"""
import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, env_without_interpreter
from lowbit.kernels.base import AotCase, KernelCall, KernelConfig, KernelPath, LaunchPlan
from lowbit.kernels.sass import analyze
from lowbit.perf import static_model as sm
from lowbit.perf import static_roofline as sr

BUDGETS = ROOT / "perf" / "static" / "budgets.json"
MANIFEST_FIELDS = {"case", "sass", "family", "scheme", "path", "dtype", "target", "M", "N", "K", "config",
                   "threads_per_cta", "weights_per_loop_iteration", "loop", "instructions_per_weight",
                   "est_pct_roofline_h200"}


def _sass(loop_body: int) -> str:
    """A kernel whose only loop holds one 128-bit load, `loop_body - 2` FFMAs and the backward branch."""
    lines = ["\t\tFunction : fake_kernel", "        /*0000*/                   MOV R1, c[0x0][0x28] ;"]
    off = 0x10
    lines.append(f"        /*{off:04x}*/                   LDG.E.128 R4, desc[UR4][R2.64] ;")
    for _ in range(loop_body - 2):
        off += 0x10
        lines.append(f"        /*{off:04x}*/                   FFMA R8, R4, R5, R8 ;")
    off += 0x10
    lines.append(f"        /*{off:04x}*/               @P0 BRA 0x10 ;")
    lines.append(f"        /*{off + 0x10:04x}*/                   EXIT ;")
    return "\n".join(lines) + "\n"


def _row(loop_body: int, target: int = 90, m: int = 1) -> sr.Row:
    """A GEMV case whose main loop has `loop_body` instructions: 128 threads, 1024 weights per trip."""
    call = KernelCall("int4", 8192, 8192, m, KernelPath.GEMV, torch.float16,
                      KernelConfig(block_m=1, block_n=128, block_k=128, split_k=8, group_m=1))
    kernel = type("K", (), {"__name__": "fake_kernel"})()
    case = AotCase("uniform", kernel, {}, {}, call.config, "fake")
    plan = LaunchPlan("gemv", case, grid=(64, 8, 1), threads_per_cta=128, loop_trips=8.0, weights_per_iteration=1024,
                      hbm_bytes=8192 * 8192 // 2, main=True)
    report, no_loop = sr.analyze_kernel(_sass(loop_body))
    assert not no_loop
    row = sr.Row(sr.RooflineCase(call, target, "uniform"), [sr.Launched(plan, report)], sass=_sass(loop_body))
    model = [x for ln in row.launched for x in ln.model_launches()]
    for gpu in sr.GPUS_OF_TARGET[target]:
        row.estimates[gpu] = sm.estimate(model, sm.HARDWARE[gpu], shape=(m, 8192, 8192))
    return row


def test_known_counts_give_known_instructions_per_weight():
    row = _row(8)
    assert row.main.report.instructions == 8 and row.instructions_per_weight == 8 * 128 / 1024
    v = row.values()
    assert v["instr_per_weight"] == 1.0 and v["n_fp32"] == 6 and v["n_global_load"] == 1
    assert v["load_widths"] == "128b:1" and v["requested_bytes_per_weight"] == 16 * 128 / 1024
    assert v["hbm_bytes_per_weight"] == 0.5 and v["default_path"] == 1
    # issue budget on the H200: 2.96e13 thread-instr/s x 0.5 B/w / 4.8e12 B/s
    assert v["issue_budget_ipw_h200"] == pytest.approx(sm.H200.issue_rate * 0.5 / 4.8e12, abs=1e-3)
    assert "est_us_h200" in v and "est_us_a100" not in v  # sm_90 code is costed on Hopper GPUs only


def test_a_kernel_without_loop_counts_whole():
    report, no_loop = sr.analyze_kernel("/*0000*/ MOV R1, c[0x0][0x28] ;\n/*0010*/ FADD R2, R2, R3 ;\n"
                                        "/*0020*/ EXIT ;\n/*0030*/ BRA 0x30 ;\n/*0040*/ NOP ;\n")
    assert no_loop and report.instructions == 3 and report.outside_instructions == 0


def test_manifest_has_the_issue_fields_and_recounts(tmp_path):
    row = _row(12, target=80)
    sr.write_sass_dir([row], tmp_path)
    (entry,) = json.loads((tmp_path / "manifest.json").read_text())
    assert set(entry) == MANIFEST_FIELDS
    assert entry["config"] == row.case.call.config.to_dict() and entry["est_pct_roofline_h200"] is None
    assert set(entry["loop"]) == {"first", "last", "inner_trips"} and entry["loop"]["first"] == 0x10
    rep = analyze((tmp_path / entry["sass"]).read_text(), loop=entry["loop"]["first"])
    assert rep.instructions_per_weight(entry["threads_per_cta"], entry["weights_per_loop_iteration"]) == \
        entry["instructions_per_weight"] == 12 * 128 / 1024


def test_budget_regression_is_caught_and_named():
    row = _row(8)  # 1.0 instruction per weight
    name = row.case.name
    assert sr.check_budgets([row], {name: 1.0}) == ([], [])
    assert sr.check_budgets([row], {name: 0.96}) == ([], [])  # within 5%
    fails, _ = sr.check_budgets([_row(9)], {name: 1.0})  # a fake higher count: 1.125
    assert len(fails) == 1 and fails[0].startswith(name) and "12.5% above its budget 1.000" in fails[0]
    fails, _ = sr.check_budgets([row], {})
    assert "no budget" in fails[0]
    fails, notes = sr.check_budgets([row], {name: 1.2})
    assert not fails and "tighten" in notes[0]


def test_write_and_load_budgets(tmp_path):
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps({"cases": {"other-case": 3.5}}))
    assert sr.write_budgets([_row(8)], path) == 1
    assert sr.load_budgets(path) == {"other-case": 3.5, _row(8).case.name: 1.0}
    with pytest.raises(ValueError, match="no budgets file"):
        sr.load_budgets(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        sr.load_budgets(path)
    path.write_text(json.dumps({"cases": {"x": "fast"}}))
    with pytest.raises(ValueError, match="must hold"):
        sr.load_budgets(path)


def test_case_grid_and_bad_target():
    quick = sr.quick_cases()
    assert len(quick) == 26 and {c.target for c in quick} == {90}
    assert {c.call.path for c in quick if c.call.m == 1} == {KernelPath.GEMV}
    full = sr.cases(schemes=["int4"], targets=(90,))
    # 3 dtypes x 3 shapes x (M=1, M=16 on both paths, M=4096)
    assert len(full) == 36 and sum(not c.default_path for c in full) == 9
    names = [c.name for c in full]
    assert len(set(names)) == len(names)
    with pytest.raises(ValueError, match="target must be one of"):
        sr.cases(schemes=["int4"], targets=(70,))


def _roofline(*args, timeout=1500):
    return subprocess.run([sys.executable, "-m", "lowbit", "check", "--roofline", *args], cwd=ROOT,
                          env=env_without_interpreter(), capture_output=True, text=True, timeout=timeout)


def test_ci_budget_gate_and_sass_dump(tmp_path):
    """The CI subset (every scheme, fp16, 8192 x 8192, M 1 and 4096, sm_90): no case rises more than 5%
    above perf/static/budgets.json, and every case re-counted from the dump gives the manifest's figure."""
    proc = _roofline("--quick", "--budgets", str(BUDGETS), "--sass-dir", str(tmp_path / "sass"),
                     "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ESTIMATES of the static SASS model" in proc.stdout and "26 of 26 cases within 5%" in proc.stdout
    manifest = json.loads((tmp_path / "sass" / "manifest.json").read_text())
    assert len(manifest) == 26
    for e in manifest:
        assert set(e) == MANIFEST_FIELDS, e["case"]
        trips = {int(k): v for k, v in e["loop"]["inner_trips"].items()}
        rep = analyze((tmp_path / "sass" / e["sass"]).read_text(), loop=e["loop"]["first"], inner_trips=trips)
        assert rep.last == e["loop"]["last"]
        recount = rep.instructions_per_weight(e["threads_per_cta"], e["weights_per_loop_iteration"])
        assert recount == pytest.approx(e["instructions_per_weight"], rel=1e-12), e["case"]
        assert 0 < e["est_pct_roofline_h200"] <= 100
    assert (tmp_path / "out" / "roofline-sm90.csv").is_file()
    assert (tmp_path / "out" / "roofline-sm90-instr-per-weight.png").stat().st_size > 10_000


def test_ci_budget_gate_fails_on_a_regression(tmp_path):
    """A budget below today's count (as if the kernel got 20% slower) fails the command, naming the case."""
    budgets = json.loads(BUDGETS.read_text())
    name = "int4-gemv-fp16-m1-n8192-k8192-sm90"
    budgets["cases"][name] /= 1.2
    path = tmp_path / "budgets.json"
    path.write_text(json.dumps(budgets))
    proc = _roofline("--quick", "--scheme", "int4", "--budgets", str(path))
    assert proc.returncode == 1
    fails = [ln for ln in proc.stderr.splitlines() if ln.startswith("FAIL ")]
    assert len(fails) == 1 and fails[0].startswith(f"FAIL {name}: ") and "20.0% above its budget" in fails[0]


def test_bad_arguments_exit_2():
    proc = _roofline("--dtype", "fp8", timeout=120)
    assert proc.returncode == 2 and "unknown dtype 'fp8'" in proc.stderr
    proc = _roofline("--target", "70", timeout=120)
    assert proc.returncode == 2
