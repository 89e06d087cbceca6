"""The ahead-of-time compile gate over the uniform family (sm_80 and sm_90 builds of every case, the
inline-PTX GEMV included), and facts of the compiled tensor-core GEMV that the CPU tests rely on.

The gate exits 1 on a compile error, a spill, shared memory over the device limit, or a GEMM case
without tensor-core instructions (helpers.run_gate fails the test then).
"""
import json
import subprocess
import sys
from pathlib import Path

import torch

from helpers import ROOT, env_without_interpreter, run_gate
from lowbit.formats import QuantizedWeight
from lowbit.kernels import KernelConfig, KernelPath
from lowbit.kernels.uniform import FAMILY
from lowbit.kernels.uniform import configs as C


def test_aot_gate_uniform():
    rows = run_gate("uniform")
    cases = list(FAMILY.aot_cases())
    assert len(rows) == 2 * len(cases)
    assert {r.sm for r in rows} == {80, 90}
    assert all(r.status == "ok" and r.spill == 0 for r in rows)
    by_kernel = {k: [r for r in rows if r.kernel == k] for k in
                 ("_uniform_gemv_kernel", "_uniform_gemv_fma_kernel", "_uniform_gemm_kernel", "_uniform_reduce_kernel")}
    assert all(by_kernel.values())
    for r in by_kernel["_uniform_gemv_kernel"]:  # the inline-PTX mma.sync compiled on both targets
        assert r.mma > 0, f"{r.label} sm{r.sm}: no tensor-core instructions"
    for r in by_kernel["_uniform_gemm_kernel"]:
        if "/f32/" not in r.label:  # fp32 x uses exact FMA dots (input_precision="ieee"), not tensor cores
            assert r.mma > 0, f"{r.label} sm{r.sm}: no tensor-core instructions"
    labels = {r.label for r in rows if r.kernel != "_uniform_reduce_kernel"}
    # every bit width at every BLOCK_M of the GEMV; fp16 and bf16; symmetric and asymmetric; per channel
    for bits in (1, 2, 3, 4, 8):
        for bm in C.GEMV_BLOCK_M:
            assert any(s.startswith(f"gemv:{bm}x") and f"/i{bits}" in s for s in labels), (bits, bm)
    assert any("/f16/" in s for s in labels) and any("/bf16/" in s for s in labels)
    assert any(s.split("/")[2][2] == "s" for s in labels) and any(s.split("/")[2][2] == "a" for s in labels)
    assert any("g-1/" in s for s in labels)  # per channel


def _compile_facts():
    script = Path(__file__).with_name("gemv_compile_facts.py")
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env_without_interpreter(),
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# lane = 4g + c holds element (l, warp, g, c) of a [L, NW, 8, 4] fragment tensor for every l
FRAGMENT_LANES = [[0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 4, 0]]


def _check_fragments(label, asm, warps):
    """Every operand of every inline-PTX MMA is a [L, NW, 8, 4] tensor with lanes on (g, c) as above and
    warps on NW: the fragment-to-lane mapping the PTX and its interpreter twin assume."""
    assert asm, f"{label}: no inline-PTX MMA in the TTGIR"
    for ops in asm:
        assert len(ops) == 16  # 4 outputs + 12 inputs, all fragment tensors
        for o in ops:
            dims = [int(v) for v in o["shape"].split("x")]
            assert len(dims) == 4 and dims[1:] == [warps, 8, 4], (label, o["shape"])
            assert o["bases"]["lane"] == FRAGMENT_LANES, (label, o["layout"], o["bases"])
            assert o["bases"]["warp"] == [[0, 1 << i, 0, 0] for i in range(warps.bit_length() - 1)], (label, o["bases"])


def test_compiled_gemv_layout_and_loop():
    """On the compiled sm_90 GEMV, under the installed Triton (3.6 and 3.9 order a load's equally contiguous
    dims differently, and the fragments inherit their loads' layouts; the kernel's loads have one
    non-contiguous dim so both give the layout checked here):

    - the fragment layout of _check_fragments, for the dispatcher's configs at N = K = 8192 and for
      every tensor-core GEMV case of the compile gate (bit widths, BLOCK_M, warps, bf16, groups);
    - the main loop has no shared memory, no barrier and no spill, and runs exactly the planned MMAs
      (inner iterations x steps x (row blocks + 1 sums MMA) x column halves) per trip.
    """
    facts = _compile_facts()
    assert facts["loop"] and len(facts["gate"]) == sum(
        c.kernel.__name__ == "_uniform_gemv_kernel" for c in FAMILY.aot_cases()) >= 25
    for g in facts["gate"]:
        _check_fragments(g["label"], g["asm"], g["config"]["num_warps"])
    for f in facts["loop"]:
        assert f["is_gemv"]
        _check_fragments(f["label"], f["asm"], f["config"]["num_warps"])
        for cls in ("shared_load", "shared_store", "barrier", "local"):
            assert f["counts"].get(cls, 0) == 0, (f["label"], cls, f["counts"])
        assert f["local"] == 0
        assert not f["lower_bound"]
        assert f["mma_per_trip"] == f["expected_mma_per_trip"], f


def test_launch_plans_describe_each_call():
    """Plans list every launch of a call with the specialisation a JIT launch on aligned shapes makes."""
    qw = QuantizedWeight.empty("int4", (8192, 8192), group_size=128)
    # M = 1: one tensor-core GEMV, M = 1 folded into the binary, no split at 8192 columns
    cfg = FAMILY.heuristic(KernelPath.GEMV, 1, qw, torch.float16)
    plans = FAMILY.launch_plans(qw, 1, KernelPath.GEMV, torch.float16, cfg)
    assert [p.label for p in plans] == ["gemv"]
    p = plans[0]
    assert p.case.signature["M"] == "constexpr" and p.case.constexprs["M"] == 1
    assert p.case.constexprs["EVEN"] and p.case.constexprs["USE_ASM"] and not p.case.constexprs["HAS_BIAS"]
    assert "N" in p.case.divisible_by_16 and "x_ptr" in p.case.divisible_by_16
    geo = C.gemv_geometry(4, cfg)
    assert p.grid == (8192 // cfg.block_n, 1, 1) and p.threads_per_cta == 32 * cfg.num_warps
    assert p.loop_trips * cfg.num_warps * geo.superstep_codes == 8192  # every super-step once
    assert p.weights_per_iteration == cfg.block_n * geo.superstep_codes * cfg.num_warps
    assert p.inner_trips == geo.inner_trips
    weights = 8192 * 8192 // 2 + 2 * (64 * 8192 * 2)  # codes + fp16 scales and zeros
    assert p.hbm_bytes == weights + 8192 * 2 + 8192 * 2
    # a forced split: the GEMV writes an fp32 workspace and a reduction follows
    split = FAMILY.launch_plans(qw, 1, KernelPath.GEMV, torch.float16, KernelConfig(1, 64, 128, 4, 1, 2, 1))
    assert [s.label for s in split] == ["gemv", "reduce"]
    assert split[0].grid[1] == 4 and split[1].loop_trips == 4
    assert split[1].hbm_bytes == 4 * 8192 * 4 + 8192 * 2
    # M = 4096: the GEMM, per-K-step weights of a tile, no inner loop
    gcfg = FAMILY.heuristic(KernelPath.GEMM, 4096, qw, torch.float16)
    (g,) = FAMILY.launch_plans(qw, 4096, KernelPath.GEMM, torch.float16, gcfg)
    assert g.case.kernel.__name__ == "_uniform_gemm_kernel" and g.case.signature["M"] == "i32"
    assert g.loop_trips == 8192 // gcfg.block_k and g.weights_per_iteration == gcfg.block_n * gcfg.block_k
    assert g.grid == ((4096 // gcfg.block_m) * (8192 // gcfg.block_n), 1, 1) and g.inner_trips is None
    # fp32 activations on the GEMV path: the CUDA-core kernel
    (f,) = FAMILY.launch_plans(qw, 2, KernelPath.GEMV, torch.float32,
                               FAMILY.heuristic(KernelPath.GEMV, 2, qw, torch.float32))[:1]
    assert f.case.kernel.__name__ == "_uniform_gemv_fma_kernel"
