"""The SASS counter (lowbit.kernels.sass) and the static model (lowbit.perf.static_model).

Parser and classifier tests use literal snippets in the format of ``cuobjdump -sass``; the
known-answer tests compile small kernels for sm_80 and sm_90 in a subprocess (the compile must
run without TRITON_INTERPRET, which tests/conftest.py sets) and check the main-loop counts
against what the kernels must contain. The model is checked on hand-computed numbers.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.kernels.sass import (CLASSES, InstrClass, MmaKind, access_bits, analyze, classify, find_loops,
                                 mma_shape, parse_instruction, parse_sass)
from lowbit.perf import static_model as sm

ROOT = Path(__file__).resolve().parents[2]
TARGETS = (80, 90)


def _ins(text: str, offset: int = 0):
    return parse_instruction(offset, text)


# -- parser ------------------------------------------------------------------------------------
DUMP = """
\tcode for sm_90a
\t\tFunction : first_kernel
\t.headerflags\t@"EF_CUDA_ACCELERATORS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                   /* 0x00000a00ff017b82 */
                                                                            /* 0x000fe20000000800 */
        /*0010*/              @!P0 LDG.E.128 R4, desc[UR4][R2.64+0x10] ;    /* 0x0000040402048981 */
                                                                            /* 0x000ea2000c1e1d00 */
        /*0020*/               @P1 BRA !P2, 0x0 ;                           /* 0x0000000000008947 */
                                                                            /* 0x000fea0003800000 */
        /*0030*/                   EXIT ;                                   /* 0x000000000000794d */
                                                                            /* 0x000fea0003800000 */
        /*0040*/                   BRA 0x40;                                /* 0xfffffffc00fc7947 */
                                                                            /* 0x000fc0000383ffff */
        /*0050*/                   NOP;                                     /* 0x0000000000007918 */
\t\t..........
\t\tFunction : second_kernel
        /*0000*/                   HGMMA.64x128x16.F32 R24, gdesc[UR4].tnspB, R24 ;  /* 0x0 */
        /*0010*/                   EXIT ;                                   /* 0x0 */
"""


def test_parse_dump_functions_and_fields():
    funcs = parse_sass(DUMP)
    assert [f.name for f in funcs] == ["first_kernel", "second_kernel"]
    first = funcs[0].instructions
    assert [i.offset for i in first] == [0x0, 0x10, 0x20, 0x30, 0x40, 0x50]
    ldg = first[1]
    assert (ldg.predicate, ldg.opcode, ldg.mnemonic, ldg.modifiers) == ("!P0", "LDG.E.128", "LDG", ("E", "128"))
    assert ldg.operands == ("R4", "desc[UR4][R2.64+0x10]")
    assert first[2].predicate == "P1" and first[2].operands == ("!P2", "0x0") and first[2].branch_target() == 0
    assert first[4].branch_target() == 0x40 and first[5].opcode == "NOP" and first[5].operands == ()
    assert funcs[1].instructions[0].operands == ("R24", "gdesc[UR4].tnspB", "R24")


def test_parse_snippet_without_header_and_bad_input():
    funcs = parse_sass("/*0000*/ FFMA R1, R2, R3, R4 ;\n/*0010*/ EXIT ;")
    assert len(funcs) == 1 and funcs[0].name == "" and len(funcs[0].instructions) == 2
    with pytest.raises(TypeError, match="str"):
        parse_sass(b"/*0000*/ EXIT ;")
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_sass("/*0010*/ EXIT ;\n/*0000*/ EXIT ;")
    with pytest.raises(ValueError, match="no SASS function"):
        analyze("no instructions here")


# -- classifier --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, cls, bits", [
    pytest.param("LDG.E.128 R4, desc[UR4][R2.64]", InstrClass.GLOBAL_LOAD, 128, id="ldg128"),
    pytest.param("LDG.E.64 R4, [R2.64]", InstrClass.GLOBAL_LOAD, 64, id="ldg64"),
    pytest.param("LDG.E R4, [R2.64]", InstrClass.GLOBAL_LOAD, 32, id="ldg32"),
    pytest.param("LDG.E.U16 R4, [R2.64]", InstrClass.GLOBAL_LOAD, 16, id="ldg-u16"),
    pytest.param("LDG.E.S16 R4, [R2.64]", InstrClass.GLOBAL_LOAD, 16, id="ldg-s16"),
    pytest.param("LDG.E.U8.CONSTANT R4, [R2.64]", InstrClass.GLOBAL_LOAD, 8, id="ldg-u8"),
    pytest.param("LDGSTS.E.BYPASS.LTC128B.128 [R188], [R6.64], P5", InstrClass.GLOBAL_LOAD, 128, id="cp-async-128"),
    pytest.param("LDGSTS.E [R1], [R6.64]", InstrClass.GLOBAL_LOAD, 32, id="cp-async-32"),
    pytest.param("UTMALDG.2D [UR8], [UR4]", InstrClass.GLOBAL_LOAD, None, id="tma-load"),
    pytest.param("STG.E.U16 desc[UR4][R2.64], R5", InstrClass.GLOBAL_STORE, 16, id="stg-u16"),
    pytest.param("ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU PT, RZ, [R2.64], R5", InstrClass.GLOBAL_ATOMIC, 32, id="atomg"),
    pytest.param("LDL.64 R2, [R1]", InstrClass.LOCAL, 64, id="spill-load"),
    pytest.param("LDS.U8 R4, [R2]", InstrClass.SHARED_LOAD, 8, id="lds-u8"),
    pytest.param("LDS.128 R4, [R2+0x100]", InstrClass.SHARED_LOAD, 128, id="lds128"),
    pytest.param("LDSM.16.M88.4 R156, [R80]", InstrClass.SHARED_LOAD, 128, id="ldsm-x4"),
    pytest.param("LDSM.16.MT88.2 R32, [R33]", InstrClass.SHARED_LOAD, 64, id="ldsm-t-x2"),
    pytest.param("STSM.16.M88 [R1], R2", InstrClass.SHARED_STORE, 32, id="stsm-x1"),
    pytest.param("STS.U16 [R16+0x8000], R216", InstrClass.SHARED_STORE, 16, id="sts-u16"),
    pytest.param("BAR.SYNC.DEFER_BLOCKING 0x0", InstrClass.BARRIER, None, id="bar"),
    pytest.param("SYNCS.ARRIVE.TRANS64.A1T0 RZ, [UR4], RZ", InstrClass.BARRIER, None, id="mbarrier"),
    pytest.param("WARPGROUP.ARRIVE", InstrClass.BARRIER, None, id="wg-arrive"),
    pytest.param("WARPGROUP.DEPBAR.LE gsb0, 0x0", InstrClass.BARRIER, None, id="wg-wait"),
    pytest.param("LDGDEPBAR", InstrClass.BARRIER, None, id="cp-async-commit"),
    pytest.param("DEPBAR.LE SB0, 0x2", InstrClass.BARRIER, None, id="cp-async-wait"),
    pytest.param("FFMA R60, R8, R60, R13", InstrClass.FP32, None, id="ffma"),
    pytest.param("FMNMX R6, |R24|, |R22|, !PT", InstrClass.FP32, None, id="fmnmx"),
    pytest.param("FSETP.GEU.AND P6, PT, R35, RZ, PT", InstrClass.FP32, None, id="fsetp"),
    pytest.param("HFMA2 R1, R2, R3, R4", InstrClass.FP16X2, None, id="hfma2"),
    pytest.param("HADD2.F32 R8, -RZ, R7.H0_H0", InstrClass.FP16X2, None, id="hadd2"),
    pytest.param("HMNMX2 R1, R2, R3, !PT", InstrClass.FP16X2, None, id="hmnmx2"),
    pytest.param("I2F.RP R0, R7", InstrClass.CONVERT, None, id="i2f"),
    pytest.param("F2FP.PACK_AB R32, R61, R60", InstrClass.CONVERT, None, id="f2fp"),
    pytest.param("MUFU.RCP R0, R0", InstrClass.SFU, None, id="mufu"),
    pytest.param("IMAD.MOV.U32 R1, RZ, RZ, c[0x0][0x28]", InstrClass.INTEGER, None, id="imad-mov"),
    pytest.param("LOP3.LUT R0, R5, R4, RZ, 0x3c, !PT", InstrClass.INTEGER, None, id="lop3"),
    pytest.param("PRMT R82, RZ, 0x7610, R82", InstrClass.INTEGER, None, id="prmt"),
    pytest.param("ISETP.GT.U32.AND P1, PT, R7, R0, PT", InstrClass.INTEGER, None, id="isetp"),
    pytest.param("UIADD3 UR6, UR6, -0x80, URZ", InstrClass.UNIFORM, None, id="uiadd3"),
    pytest.param("UFUTURE UR1, UR2", InstrClass.UNIFORM, None, id="unknown-uniform"),
    pytest.param("HMMA.16816.F32 R56, R36, R112, R56", InstrClass.MMA, None, id="hmma"),
    pytest.param("IGMMA.64x128x32.S8.S8 R24, gdesc[UR4], R24", InstrClass.MMA, None, id="igmma"),
    pytest.param("@P5 CALL.REL.NOINC 0x3010", InstrClass.CONTROL, None, id="call"),
    pytest.param("BSSY B0, 0x790", InstrClass.CONTROL, None, id="bssy"),
    pytest.param("NOP", InstrClass.NOP, None, id="nop"),
    pytest.param("@!PT LDS RZ, [RZ]", InstrClass.NOP, 0, id="never-runs"),
    pytest.param("S2R R3, SR_CTAID.X", InstrClass.OTHER, None, id="s2r"),
    pytest.param("FUTUREOP R1", InstrClass.OTHER, None, id="unknown"),
    pytest.param("@!PT FFMA R1, R2, R3, R4", InstrClass.NOP, None, id="never-runs-math"),
])
def test_classify(text, cls, bits):
    ins = _ins(text)
    assert classify(ins) is cls
    assert access_bits(ins) == bits


def test_classification_table_is_typed():
    assert CLASSES and all(isinstance(k, str) and isinstance(v, InstrClass) for k, v in CLASSES.items())


@pytest.mark.parametrize("text, dims, kind, warpgroup, per_thread", [
    pytest.param("HMMA.16816.F32 R1, R2, R3, R1", (16, 8, 16), MmaKind.FP16, False, 128, id="hmma-f16"),
    pytest.param("HMMA.16816.F32.BF16 R1, R2, R3, R1", (16, 8, 16), MmaKind.FP16, False, 128, id="hmma-bf16"),
    pytest.param("HMMA.1688.F32.TF32 R1, R2, R3, R1", (16, 8, 8), MmaKind.TF32, False, 64, id="hmma-tf32"),
    pytest.param("IMMA.16832.S8.S8.SAT R12, R24.ROW, R20.COL, R12", (16, 8, 32), MmaKind.INT8, False, 256,
                 id="imma"),
    pytest.param("HGMMA.64x128x16.F32 R24, gdesc[UR4].tnspB, R24", (64, 128, 16), MmaKind.FP16, True, 2048,
                 id="hgmma"),
    pytest.param("IGMMA.64x128x32.S8.S8 R24, gdesc[UR4], R24", (64, 128, 32), MmaKind.INT8, True, 4096, id="igmma"),
])
def test_mma_shapes(text, dims, kind, warpgroup, per_thread):
    s = mma_shape(_ins(text))
    assert (s.m, s.n, s.k, s.kind, s.warpgroup) == (*dims, kind, warpgroup)
    assert s.flops == 2 * dims[0] * dims[1] * dims[2]
    assert s.flops_per_thread == per_thread


def test_mma_unknown_shape_is_counted_not_guessed():
    assert mma_shape(_ins("HMMA.999.F32 R1, R2, R3, R1")) is None
    assert mma_shape(_ins("FFMA R1, R2, R3, R4")) is None
    snippet = "/*0000*/ HMMA.999.F32 R1, R2, R3, R1 ;\n/*0010*/ @P0 BRA 0x0 ;"
    r = analyze(snippet)
    assert r.unknown_mma == 1 and r.mma_flops_per_thread == 0 and r.counts[InstrClass.MMA] == 1


# -- loops -------------------------------------------------------------------------------------
def _snippet(lines) -> str:
    return "\n".join(f"/*{16 * i:04x}*/ {text} ;" for i, text in enumerate(lines))


# outer loop 0x20..0xa0 around inner loop 0x40..0x70; a second, load-free loop 0xc0..0xd0
NESTED = _snippet([
    "MOV R1, RZ",                       # 0x00
    "S2R R2, SR_TID.X",                 # 0x10
    "LDG.E.64 R4, [R2.64]",             # 0x20 outer start
    "IADD3 R2, R2, 0x8, RZ",            # 0x30
    "LDG.E.128 R8, [R2.64]",            # 0x40 inner start
    "FFMA R1, R8, R9, R1",              # 0x50
    "ISETP.NE.AND P0, PT, R2, R3, PT",  # 0x60
    "@P0 BRA 0x40",                     # 0x70 inner back edge
    "@!P1 BRA 0x90",                    # 0x80 forward branch inside the outer loop
    "@P2 BRA 0x20",                     # 0x90 outer back edge
    "FADD R1, R1, R1",                  # 0xa0
    "LDS R5, [R0]",                     # 0xb0
    "FADD R1, R1, R5",                  # 0xc0 second loop start
    "@P3 BRA 0xc0",                     # 0xd0
    "EXIT",                             # 0xe0
    "BRA 0xf0",                         # 0xf0 end-of-code trap, not a loop
    "NOP",                              # 0x100
])


def test_find_loops_nesting_and_trap():
    f = parse_sass(NESTED)[0]
    loops = find_loops(f)
    assert [(lp.first, lp.last, lp.depth, lp.parent) for lp in loops] == [
        (0x20, 0x90, 0, None), (0x40, 0x70, 1, 0x20), (0xc0, 0xd0, 0, None)]


def test_main_loop_counts_inner_once_and_flags_lower_bound():
    r = analyze(NESTED)
    assert (r.first, r.last, r.depth) == (0x20, 0x90, 0)
    assert r.static_instructions == 8 and r.instructions == 8
    assert r.lower_bound and r.inner_trips == {0x40: 1.0}
    assert r.global_load_widths == {64: 1, 128: 1}
    assert r.global_load_bytes == 8 + 16
    assert r.forward_branches == 1
    assert r.counts[InstrClass.CONTROL] == 3 and r.counts[InstrClass.GLOBAL_LOAD] == 2
    assert r.outside_instructions == 17 - 8 - 2  # the trap and the trailing NOP are not counted


@pytest.mark.parametrize("trips", [pytest.param(5, id="int"), pytest.param({0x40: 5}, id="by-offset")])
def test_inner_trips_weight_the_inner_body(trips):
    r = analyze(NESTED, inner_trips=trips)
    assert not r.lower_bound
    assert r.instructions == 4 + 5 * 4  # 4 outer-only instructions, 4 inner ones x 5 trips
    assert r.global_load_widths == {64: 1, 128: 5}
    assert r.global_load_bytes == 8 + 5 * 16
    assert r.instructions_per_weight(threads_per_cta=128, weights_per_iteration=64) == 24 * 128 / 64
    assert r.load_bytes_per_weight(128, 64) == 88 * 128 / 64


def test_loop_override_and_errors():
    r = analyze(NESTED, loop=0xc0)
    assert (r.first, r.last, r.instructions, r.global_load_bytes) == (0xc0, 0xd0, 2, 0)
    with pytest.raises(ValueError, match="no loop starts at offset 0x30"):
        analyze(NESTED, loop=0x30)
    with pytest.raises(TypeError, match="loop must be"):
        analyze(NESTED, loop="0x20")
    with pytest.raises(ValueError, match="start no inner loop"):
        analyze(NESTED, inner_trips={0xc0: 2})
    with pytest.raises(ValueError, match="start no inner loop"):
        analyze(NESTED, inner_trips={"0x40": 2})
    with pytest.raises(ValueError, match="non-negative"):
        analyze(NESTED, inner_trips=-1)
    with pytest.raises(ValueError, match="no loop"):
        analyze(_snippet(["FFMA R1, R2, R3, R4", "EXIT"]))
    r = analyze(NESTED)
    for bad in (0, -1, None):
        with pytest.raises(ValueError, match="positive"):
            r.instructions_per_weight(bad, 64)


def test_main_loop_rule_loads_then_mma():
    loads = _snippet(["FADD R1, R1, R1", "@P0 BRA 0x0", "LDG.E R2, [R4.64]", "@P0 BRA 0x20"])
    assert analyze(loads).first == 0x20
    # equal load bytes: the loop with MMA wins even though it is shorter
    mma = _snippet(["LDG.E R2, [R4.64]", "FADD R1, R1, R1", "FADD R1, R1, R1", "@P0 BRA 0x0",
                    "LDG.E R2, [R4.64]", "HMMA.16816.F32 R8, R4, R6, R8", "@P0 BRA 0x40"])
    r = analyze(mma)
    assert r.first == 0x40 and r.mma == {"warp:16x8x16:fp16": 1} and r.mma_kind is MmaKind.FP16


def test_partially_overlapping_loops_merge():
    text = _snippet(["FADD R1, R1, R1", "FADD R1, R1, R1", "@P0 BRA 0x0", "@P1 BRA 0x10", "EXIT"])
    assert [(lp.first, lp.last) for lp in find_loops(parse_sass(text)[0])] == [(0x0, 0x30)]


def test_kernel_name_selection():
    with pytest.raises(ValueError, match="kernel_name"):
        analyze(DUMP)
    assert analyze(DUMP, kernel_name="first_kernel").first == 0
    with pytest.raises(ValueError, match="no function 'missing'"):
        analyze(DUMP, kernel_name="missing")


def test_report_to_dict_is_json():
    d = analyze(NESTED, inner_trips=2).to_dict()
    assert json.loads(json.dumps(d))["counts"]["global_load"] == 3


def test_importing_does_not_import_triton():
    code = ("import sys, lowbit.kernels.sass, lowbit.perf.static_model; "
            "assert 'triton' not in sys.modules, 'triton imported'")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- known-answer tests on compiled kernels ------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """SASS of tests/kernels/compile_sass_cases.py's kernels for sm_80 and sm_90, and their facts."""
    out = tmp_path_factory.mktemp("sass")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TRITON_CACHE_DIR", str(ROOT / ".triton-cache"))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = Path(__file__).with_name("compile_sass_cases.py")
    proc = subprocess.run([sys.executable, str(script), str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"compile failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    facts = json.loads((out / "cases.json").read_text())
    return {name: dict(info, sass={cc: (out / f"{name}_sm{cc}.sass").read_text() for cc in TARGETS})
            for name, info in facts.items()}


@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm{cc}")
def test_copy_loop_one_128bit_load_per_8_fp16(compiled, cc):
    case = compiled["copy"]
    r = analyze(case["sass"][cc], kernel_name=case["kernel"])
    assert r.global_load_widths == {128: 1}
    assert r.global_load_bytes == 16 and r.global_store_bytes == 16
    values_per_thread = case["values_per_trip"] / case["threads"]
    assert values_per_thread == 8
    assert r.load_bytes_per_weight(case["threads"], case["values_per_trip"]) == 2.0  # fp16: 2 bytes a value
    assert not r.lower_bound and r.inner_loops == () and r.mma == {}
    ipw = r.instructions_per_weight(case["threads"], case["values_per_trip"])
    assert ipw == r.instructions / values_per_thread


@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm{cc}")
def test_static_unroll_scales_the_loop(compiled, cc):
    reports = {u: analyze(compiled[f"unroll{u}"]["sass"][cc]) for u in (1, 2, 4)}
    for u, r in reports.items():
        assert r.global_load_widths == {128: u} and r.global_load_bytes == 16 * u
        assert r.global_store_bytes == 16 * u
    step = reports[2].instructions - reports[1].instructions
    assert step > 0
    # each extra copy of the body costs the same (address arithmetic, load, store), within 2 slots
    assert abs((reports[4].instructions - reports[2].instructions) - 2 * step) <= 2
    # one unrolled copy is the unroll=1 loop's work without its loop control
    assert step <= reports[1].instructions


@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm{cc}")
def test_nested_runtime_loop_needs_inner_trips(compiled, cc):
    case = compiled["nested"]
    sass = case["sass"][cc]
    f = parse_sass(sass)[0]
    loops = find_loops(f)
    assert len(loops) == 2
    outer, inner = loops
    assert inner.parent == outer.first and inner.depth == 1
    base = analyze(sass)
    assert (base.first, base.last) == (outer.first, outer.last) and base.lower_bound
    inner_r = analyze(sass, loop=inner.first)
    per_value = case["values_per_trip"] // case["threads"]  # fp16 values per thread per inner trip
    assert inner_r.global_load_widths == {128: per_value // 8}
    outer_only = base.static_instructions - inner_r.static_instructions
    r5 = analyze(sass, inner_trips=5)
    assert not r5.lower_bound
    assert r5.instructions == outer_only + 5 * inner_r.static_instructions
    assert r5.global_load_widths == {128: 5 * per_value // 8}
    assert r5.global_load_bytes == 5 * 2 * per_value


@pytest.mark.parametrize("name", ["dot_f16", "dot_i8"])
@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm{cc}")
def test_dot_loop_mma_flops_per_k_step(compiled, name, cc):
    case = compiled[name]
    r = analyze(case["sass"][cc])
    assert r.mma and r.unknown_mma == 0
    assert r.mma_flops_per_iteration(case["threads"]) == case["flops_per_trip"]
    assert r.mma_kind is (MmaKind.INT8 if case["int8"] else MmaKind.FP16)
    assert all(label.startswith("wg:" if cc == 90 else "warp:") for label in r.mma)


# -- the static model ----------------------------------------------------------------------------
def test_hardware_table():
    assert set(sm.HARDWARE) == {"h100", "h200", "a100"}
    assert sm.H200.issue_rate == pytest.approx(2.96e13, rel=2e-3)  # 132 x 4 x 32 x 1.755 GHz
    assert sm.H200.issue_rate == 132 * 4 * 32 * 1.755e9
    assert sm.H200.hbm_bytes_per_s == 4.8e12
    for hw in sm.HARDWARE.values():
        assert hw.sources and all("http" in s or "issue" in s for s in hw.sources)
        assert hw.tensor_peak(MmaKind.INT8) == pytest.approx(2 * hw.tensor_peak(MmaKind.FP16), rel=1e-3)
    with pytest.raises(ValueError, match="fp8"):
        sm.A100_SXM_80GB.tensor_peak(MmaKind.FP8)


NO_OVERHEAD = dataclasses.replace(sm.H200, launch_overhead_s=0.0)


def test_pure_bandwidth_launch_is_100_percent_of_roofline():
    ln = sm.Launch("copy", bytes_moved=4.8e9, threads_per_cta=128, ctas=1000)
    est = sm.estimate([ln], NO_OVERHEAD)
    assert est.time_s == pytest.approx(1e-3, rel=1e-12)
    assert est.pct_memory_roofline == pytest.approx(100.0, rel=1e-12)
    assert est.launches[0].bound is sm.Bound.MEMORY
    with_launch = sm.estimate([ln], sm.H200)
    assert with_launch.time_s == pytest.approx(1e-3 + 0.9e-6, rel=1e-12)
    assert with_launch.pct_memory_roofline == pytest.approx(100 * 1e-3 / (1e-3 + 0.9e-6), rel=1e-12)


def test_issue_bound_launch_time_is_instructions_over_issue_rate():
    ln = sm.Launch("gemv", bytes_moved=1e6, threads_per_cta=128, ctas=512, loop_instructions=900, iterations=8,
                   per_cta_instructions=100)
    assert ln.thread_instructions == (900 * 8 + 100) * 128 * 512
    est = sm.estimate([ln], NO_OVERHEAD)
    assert est.launches[0].bound is sm.Bound.ISSUE
    busiest = 4 * 132 / 512  # 512 CTAs on 132 SMs: the busiest SM runs 4 of them, the even share is 3.88
    assert est.time_s == pytest.approx(busiest * ln.thread_instructions / (132 * 4 * 32 * 1.755e9), rel=1e-12)
    assert est.pct_memory_roofline == pytest.approx(100 * (1e6 / 4.8e12) / est.time_s, rel=1e-12)


@pytest.mark.parametrize("kind, peak", [pytest.param(MmaKind.FP16, 989.4e12, id="fp16"),
                                        pytest.param(MmaKind.INT8, 1978.9e12, id="int8")])
def test_tensor_bound_launch(kind, peak):
    flops = 2 * 4096 * 8192 * 8192
    ln = sm.Launch("gemm", bytes_moved=1e6, threads_per_cta=256, ctas=132 * 8, mma_flops=flops, mma_kind=kind)
    est = sm.estimate([ln], NO_OVERHEAD)
    assert est.launches[0].bound is sm.Bound.TENSOR
    assert est.time_s == pytest.approx(flops / peak, rel=1e-12)


@pytest.mark.parametrize("ctas, busiest", [(1, 132.0), (64, 132 / 64), (132, 1.0), (133, 2 * 132 / 133),
                                           (264, 1.0), (512, 4 * 132 / 512)])
def test_grids_that_leave_sms_idle_cost_the_busiest_sms_time(ctas, busiest):
    """Issue and tensor work is the busiest SM's: ceil(CTAs / 132) CTAs, not an even spread."""
    ln = sm.Launch("k", bytes_moved=1.0, threads_per_cta=128, ctas=ctas, loop_instructions=1000, iterations=10,
                   mma_flops=1e9)
    assert ln.sm_imbalance(132) == pytest.approx(busiest, rel=1e-12)
    lt = sm.estimate([ln], NO_OVERHEAD).launches[0]
    assert lt.issue_s == pytest.approx(busiest * ln.thread_instructions / sm.H200.issue_rate, rel=1e-12)
    assert lt.tensor_s == pytest.approx(busiest * 1e9 / sm.H200.fp16_tensor_flops, rel=1e-12)
    assert lt.memory_s == pytest.approx(1.0 / 4.8e12, rel=1e-12)  # bytes: not scaled (see the docstring)


def test_launches_sum_and_fp16_floor():
    a = sm.Launch("quant", bytes_moved=4.8e6, threads_per_cta=128, ctas=1)
    b = sm.Launch("main", bytes_moved=9.6e6, threads_per_cta=128, ctas=1)
    est = sm.estimate([a, b], sm.H200, shape=(1, 8192, 8192))
    assert est.time_s == pytest.approx(1e-6 + 2e-6 + 2 * 0.9e-6, rel=1e-12)
    assert est.memory_floor_s == pytest.approx(3e-6, rel=1e-12)
    fp16_bytes = 2 * (8192 * 8192 + 8192 + 8192)  # small M: the fp16 weight bytes dominate
    assert est.fp16_linear_s == pytest.approx(fp16_bytes / 4.8e12 + 0.9e-6, rel=1e-12)
    assert est.speedup_vs_fp16 == pytest.approx(est.fp16_linear_s / est.time_s, rel=1e-12)
    big = sm.fp16_linear_floor(4096, 8192, 8192, sm.H200, include_launch=False)  # large M: tensor peak
    assert big == pytest.approx(2 * 4096 * 8192 * 8192 / 989.4e12, rel=1e-12)


def test_launch_from_loop_report():
    r = analyze(_snippet(["LDG.E.128 R4, [R2.64]", "HMMA.16816.F32 R8, R4, R6, R8", "@P0 BRA 0x0", "EXIT"]))
    ln = sm.Launch.from_loop(r, name="k", bytes_moved=10, threads_per_cta=128, ctas=3, iterations=7)
    assert ln.loop_instructions == 3 and ln.per_cta_instructions == 1
    assert ln.mma_flops == 2 * 16 * 8 * 16 / 32 * 128 * 7 * 3 and ln.mma_kind is MmaKind.FP16


def test_model_bad_input():
    with pytest.raises(ValueError, match="ctas"):
        sm.Launch("x", bytes_moved=1, threads_per_cta=128, ctas=0)
    with pytest.raises(ValueError, match="bytes_moved"):
        sm.Launch("x", bytes_moved=-1, threads_per_cta=128, ctas=1)
    with pytest.raises(ValueError, match="at least one launch"):
        sm.estimate([], sm.H200)
    with pytest.raises(TypeError, match="Hardware"):
        sm.estimate([sm.Launch("x", bytes_moved=1, threads_per_cta=1, ctas=1)], "h200")
    with pytest.raises(ValueError, match="fp8"):
        sm.estimate([sm.Launch("x", 1, 1, 1, mma_flops=1.0, mma_kind=MmaKind.FP8)], sm.A100_SXM_80GB)
    with pytest.raises(ValueError, match="shape"):
        sm.estimate([sm.Launch("x", 1, 1, 1)], sm.H200, shape=(1, 2))
    with pytest.raises(ValueError, match="positive int"):
        sm.fp16_linear_floor(0, 1, 1, sm.H200)


def test_every_formatted_line_says_estimate():
    ln = sm.Launch("gemv", bytes_moved=1e6, threads_per_cta=128, ctas=8, loop_instructions=100, iterations=4)
    text = sm.format_estimate(sm.estimate([ln, ln], sm.H100_SXM, shape=(1, 4096, 4096)))
    lines = text.splitlines()
    assert len(lines) == 4
    assert all("estimat" in line.lower() for line in lines)
