"""Compile gate for the lut family (every aot case builds for sm_80 and sm_90 without spills, GEMMs and
the tensor-core GEMV use tensor cores) and the compiled facts the tensor-core GEMV's inline PTX relies on."""
import json
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, env_without_interpreter, run_gate
from lowbit.kernels.lut import FAMILY

TENSOR_CORE_KERNELS = {"_lut_gemm_kernel", "_lut_dense_gemm_kernel", "_lut_mma_gemv_kernel"}


def test_lut_family_compiles_for_sm80_and_sm90():
    rows = run_gate("lut")
    assert len(rows) == 2 * len(FAMILY.aot_cases())
    assert {r.kernel for r in rows} == {"_lut_gemv_kernel", "_lut_gemm_kernel", "_lut_finish_kernel",
                                        "_lut_mma_gemv_kernel", "_lut_dequant_kernel", "_lut_scatter_kernel",
                                        "_lut_dense_gemm_kernel"}
    for r in rows:
        assert r.status == "ok" and r.spill == 0, (r.label, r.sm, r.status)
        if r.kernel in TENSOR_CORE_KERNELS and " f32 " not in f" {r.label} ":
            assert r.mma > 0, f"{r.label} sm_{r.sm}: no tensor-core instructions"
        if r.kernel not in TENSOR_CORE_KERNELS:
            assert r.mma == 0, f"{r.label} sm_{r.sm}: unexpected MMA in a CUDA-core kernel"


def test_mma_gemv_table_offset_and_fragments():
    """The pair table sits at offset 0 of shared memory (the lookup PTX reads global_smem + address) and
    the lookups and x reach mma.sync as the PTX m16n8k16 A and B fragments (what the emulation test uses)."""
    script = Path(__file__).with_name("mma_layout_check.py")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env_without_interpreter(), capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert len(found) >= 3  # lut4, nf4 grouped, nf4 per channel
    for label, by_sm in found.items():
        assert set(by_sm) == {"80", "90"}, label
        for sm, facts in by_sm.items():
            assert facts == {"table_offset": 0, "a_fragment": True, "b_fragment": True}, (label, sm, facts)
