"""The compile gate over the shared low-rank correction kernels (python -m lowbit check --family lowrank)."""
from helpers import run_gate
from lowbit.kernels import lowrank


def test_aot_gate_lowrank():
    rows = run_gate("lowrank")
    assert len(rows) == 2 * len(lowrank.aot_cases())
    assert {r.sm for r in rows} == {80, 90}
    assert all(r.status == "ok" and r.spill == 0 and r.mma > 0 for r in rows)
    assert {r.kernel for r in rows} == {"_lowrank_project_kernel", "_lowrank_expand_kernel"}
    labels = {r.label for r in rows}
    for tag in ("/f16/", "/bf16/", "/f32/", "r16", "r32", "r64"):
        assert any(tag in s for s in labels), tag
