"""Compile gate for the lut family: every aot case builds for sm_80 and sm_90 without spills, GEMMs use tensor cores."""
from helpers import run_gate
from lowbit.kernels.lut import FAMILY


def test_lut_family_compiles_for_sm80_and_sm90():
    rows = run_gate("lut")
    assert len(rows) == 2 * len(FAMILY.aot_cases())
    assert {r.kernel for r in rows} == {"_lut_gemv_kernel", "_lut_gemm_kernel", "_lut_outlier_kernel"}
    for r in rows:
        assert r.status == "ok" and r.spill == 0, (r.label, r.sm, r.status)
        if r.kernel == "_lut_gemm_kernel" and " fp32 " not in f" {r.label} ":
            assert r.mma > 0, f"{r.label} sm_{r.sm}: no tensor-core instructions"
        if r.kernel != "_lut_gemm_kernel":
            assert r.mma == 0, f"{r.label} sm_{r.sm}: unexpected MMA in a CUDA-core kernel"
