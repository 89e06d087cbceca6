"""The ahead-of-time compile gate over the uniform family: sm_80 and sm_90 builds of every config.

Runs ``python -m lowbit.kernels.aot --family uniform`` in a subprocess without TRITON_INTERPRET
(the interpreter replaces JIT functions, so the gate cannot run in the test process). The gate
itself exits 1 on a compile error, a spill, shared memory over the device limit, or a GEMM case
without tensor-core instructions; this test also reads the table back.
"""
import os
import subprocess
import sys
from pathlib import Path

from lowbit.kernels.uniform import FAMILY

ROOT = Path(__file__).resolve().parents[1]


def _rows(stdout: str):
    """Table rows of the gate: (kernel, label, sm, regs, spill, shared, mma, status)."""
    out = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[0] == "uniform" and parts[3].isdigit():
            out.append((parts[1], parts[2], int(parts[3]), int(parts[4]), int(parts[5]), int(parts[6]),
                        int(parts[7]), " ".join(parts[8:])))
    return out


def test_aot_gate_uniform():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "lowbit.kernels.aot", "--family", "uniform"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"gate failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    rows = _rows(proc.stdout)
    cases = list(FAMILY.aot_cases())
    assert len(rows) == 2 * len(cases), proc.stdout[-3000:]
    assert {r[2] for r in rows} == {80, 90}
    assert all(r[7] == "ok" and r[4] == 0 for r in rows)
    gemm = [r for r in rows if r[0] == "uniform_gemm_kernel"]
    gemv = [r for r in rows if r[0] == "uniform_gemv_kernel"]
    assert gemm and gemv
    for kernel, label, sm, regs, spill, shared, mma, status in gemm:
        if "/f32/" not in label:  # fp32 x uses exact FMA dots (input_precision="ieee"), not tensor cores
            assert mma > 0, f"{label} sm{sm}: no tensor-core instructions"
    # every declared config compiled: fp16 and bf16, symmetric and asymmetric, a 3-bit two-group case
    labels = {r[1] for r in rows}
    assert any("/f16/" in s for s in labels) and any("/bf16/" in s for s in labels)
    assert any(s.split("/")[2][2] == "s" for s in labels) and any(s.split("/")[2][2] == "a" for s in labels)
    assert any("/i3" in s and not s.endswith("g-1") for s in labels)
