"""Compile gate for the lut family: every aot case builds for sm_80 and sm_90 without spills, GEMMs use tensor cores.

Runs ``python -m lowbit.kernels.aot --family lut`` in a subprocess with TRITON_INTERPRET removed
(the interpreter replaces JIT functions, so the gate cannot run inside the test process).
"""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^lut\s+(\w+)\s+(.+?)\s+(80|90)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(.+)$")


def test_lut_family_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "lowbit.kernels.aot", "--family", "lut"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [m.groups() for m in map(ROW.match, proc.stdout.splitlines()) if m]
    from lowbit.kernels.lut import FAMILY

    assert len(rows) == 2 * len(FAMILY.aot_cases())
    kernels = {r[0] for r in rows}
    assert kernels == {"lut_gemv_kernel", "lut_gemm_kernel", "csr_outlier_kernel"}
    for kernel, label, cc, regs, spill, shared, mma, status in rows:
        assert status == "ok" and int(spill) == 0, (label, cc, status)
        if kernel == "lut_gemm_kernel" and " fp32 " not in f" {label} ":
            assert int(mma) > 0, f"{label} sm_{cc}: no tensor-core instructions"
        if kernel != "lut_gemm_kernel":
            assert int(mma) == 0, f"{label} sm_{cc}: unexpected MMA in a CUDA-core kernel"
