"""Ahead-of-time compile gate for the sign family, ternary and binary (sm_80 and sm_90, no GPU needed).

The gate must run without TRITON_INTERPRET, so it runs in a subprocess with that variable
removed (helpers.run_gate). It exits 1 on a compile error, a spill, shared memory over the limit, or a missing
tensor-core instruction. The A8 GEMM cases set integer_mma=True, so exit 0 also means that
their SASS holds IMMA (sm_80) or IGMMA (sm_90) instructions.
"""
import json
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, env_without_interpreter, run_gate
from lowbit.formats import QuantizedWeight
from lowbit.kernels import KernelPath, sign


def test_a8_gemm_cases_demand_integer_mma():
    a8_gemm = [c for c in sign.FAMILY.aot_cases() if c.label.startswith("a8 gemm")]
    assert a8_gemm
    assert all(c.integer_mma and c.expects_tensor_cores for c in a8_gemm)


def test_gate_ternary_and_binary():
    rows = run_gate("sign")
    assert len(rows) == 2 * len(sign.FAMILY.aot_cases())
    a8 = [r for r in rows if r.label.startswith("a8 gemm")]
    # every A8 GEMM row compiled for both targets, with tensor-core instructions and status ok
    assert {r.sm for r in a8} == {80, 90}
    for r in a8:
        assert r.status == "ok" and r.mma > 0, r
    assert all(r.status == "ok" for r in rows)
    assert {r.label.split()[0] for r in rows if r.kernel == "_sign_gemv_kernel"} == {"a8", "a16", "binary"}


_DIV_CHECK = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource
from lowbit.kernels import sign
case = next(c for c in sign.FAMILY.aot_cases() if c.kernel.__name__ == "_sign_quant_kernel")
src = ASTSource(case.kernel, case.signature, constexprs=case.constexprs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
print("div.rn.f32" in ptx, "div.full.f32" in ptx, "div.approx.f32" in ptx)
"""


def test_quantizer_divides_ieee():
    """127 / absmax must round like torch's fp32 division: the PTX holds div.rn.f32, no approximate divide."""
    proc = subprocess.run([sys.executable, "-c", _DIV_CHECK], cwd=ROOT, env=env_without_interpreter(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "False", "False"], proc.stdout


# -- launch plans for the static roofline -----------------------------------------------------------

PLAN_CASES = [pytest.param(s, m, id=f"{s}-m{m}") for s in ("ternary", "ternary_a16", "binary") for m in (1, 16, 4096)]


@pytest.mark.parametrize("scheme,m", PLAN_CASES)
def test_launch_plans_describe_every_launch(scheme, m):
    """At N = K = 8192 with meta tensors: the quantizer (W1.58A8), the main kernel and a split-K reduce exactly
    when the config splits; grids and trips cover every weight once; M = 1 is a constant, as a JIT launch
    specialises it; bytes count every tensor once."""
    fam = sign.FAMILY
    qw = QuantizedWeight.empty(scheme, (8192, 8192))
    path = fam.choose_path(m)
    cfg = fam.heuristic(path, m, qw, torch.float16)
    plans = fam.launch_plans(qw, m, path, torch.float16, cfg)
    labels = [p.label for p in plans]
    main = plans[1] if scheme == "ternary" else plans[0]
    assert labels[0] == "quantize x" if scheme == "ternary" else labels[0] == main.label
    assert main.label == path.value
    split = main.grid[1] if path is KernelPath.GEMV else 1
    assert ("reduce" in labels) == (split > 1)
    rpl = qw.spec.layout.rows_per_lane
    lanes = qw.spec.layout.lanes(8192)
    covered = main.ctas * main.loop_trips * main.weights_per_iteration
    rows = cfg.block_n * -(-lanes // (cfg.block_n // rpl))
    m_tiles = -(-m // cfg.block_m)
    assert covered == rows * 8192 * m_tiles  # each M tile reads every weight once, all K steps full
    c = main.case.constexprs
    assert main.threads_per_cta == 32 * cfg.num_warps and main.case.config == cfg
    assert c["BLOCK_L"] == cfg.block_n // rpl and c["EVEN"] is True
    if path is KernelPath.GEMV:
        assert c["SLICES"] == cfg.num_warps and c["BLOCK_KS"] * cfg.num_warps == cfg.block_k
        assert c["SPLIT_K"] == split
    assert ("M" in c) == (m == 1) and (c.get("M") == 1 if m == 1 else main.case.signature["M"] == "i32")
    assert "qw_ptr" in main.case.divisible_by_16 and "K" in main.case.divisible_by_16
    assert main.hbm_bytes > qw.nbytes  # the packed weight and scales, plus x and the output
    assert all(p.hbm_bytes > 0 and p.threads_per_cta > 0 and p.ctas > 0 for p in plans)


_TARGETS = {"ternary": 0.5, "ternary_a16": 1.0, "binary": 0.8}
_COUNT = """
import json
from lowbit.perf import static_roofline as sr
for row in sr.run(sr.quick_cases(["ternary", "ternary_a16", "binary"])):
    if row.case.call.m == 1:
        print(json.dumps({"scheme": row.case.call.scheme, "instr_per_weight": row.instructions_per_weight}))
"""


def test_static_instruction_targets_at_m1():
    """The issue-14 targets at M = 1, N = K = 8192, sm_90, the dispatcher's config: main-loop instructions per
    weight per thread <= 0.5 (W1.58A8), 1.0 (W1.58A16), 0.8 (binary). Counted from compiled SASS, not timed."""
    proc = subprocess.run([sys.executable, "-c", _COUNT], cwd=ROOT, env=env_without_interpreter(), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["scheme"] for r in rows} == set(_TARGETS)
    for r in rows:
        assert r["instr_per_weight"] <= _TARGETS[r["scheme"]], r
