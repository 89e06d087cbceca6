"""The ahead-of-time compile gate over the uniform family: sm_80 and sm_90 builds of every config.

The gate exits 1 on a compile error, a spill, shared memory over the device limit, or a GEMM case
without tensor-core instructions (helpers.run_gate fails the test then); this test also reads the
table back.
"""
from helpers import run_gate
from lowbit.kernels.uniform import FAMILY


def test_aot_gate_uniform():
    rows = run_gate("uniform")
    cases = list(FAMILY.aot_cases())
    assert len(rows) == 2 * len(cases)
    assert {r.sm for r in rows} == {80, 90}
    assert all(r.status == "ok" and r.spill == 0 for r in rows)
    gemm = [r for r in rows if r.kernel == "_uniform_gemm_kernel"]
    gemv = [r for r in rows if r.kernel == "_uniform_gemv_kernel"]
    assert gemm and gemv and any(r.kernel == "_uniform_reduce_kernel" for r in rows)
    for r in gemm:
        if "/f32/" not in r.label:  # fp32 x uses exact FMA dots (input_precision="ieee"), not tensor cores
            assert r.mma > 0, f"{r.label} sm{r.sm}: no tensor-core instructions"
    # every declared config compiled: fp16 and bf16, symmetric and asymmetric, a 3-bit two-group case
    labels = {r.label for r in rows if r.kernel != "_uniform_reduce_kernel"}
    assert any("/f16/" in s for s in labels) and any("/bf16/" in s for s in labels)
    assert any(s.split("/")[2][2] == "s" for s in labels) and any(s.split("/")[2][2] == "a" for s in labels)
    assert any("/i3" in s and not s.endswith("g-1") for s in labels)
