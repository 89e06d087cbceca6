"""lowbit.kernels.plans: launches recorded from the families' wrappers, their JIT specialisations, gate
cases that match them, and the launch plans of the static roofline.

Recording runs the wrappers on meta tensors with every Triton launch intercepted, so these tests
run in-process under the interpreter (the specialisation comes from Triton's own binder of a
JITFunction twin of each kernel); nothing is compiled here.
"""
import dataclasses

import pytest
import torch
import triton
import triton.language as tl

from lowbit.formats import QuantizedWeight
from lowbit.kernels import KernelConfig, KernelPath, families, family_for
from lowbit.kernels import plans
from lowbit.kernels.base import KernelCall

GEMV, GEMM = KernelPath.GEMV, KernelPath.GEMM
N = K = 8192


@triton.jit
def probe_kernel(x_ptr, n, stride, BLOCK: tl.constexpr):
    """A kernel whose only purpose is to be specialised (never launched)."""
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs * stride, tl.load(x_ptr + offs, mask=offs < n), mask=offs < n)


# -- specialisation: what Triton's JIT does with these argument values -------------------------------
def test_specialise_int_one_becomes_constant_and_multiples_of_16_divisible():
    x = torch.empty(64, dtype=torch.float16, device="meta")  # data_ptr 0: aligned like a real allocation
    sp = plans.specialise(plans.RecordedLaunch(probe_kernel, {"x_ptr": x, "n": 1, "stride": 32, "BLOCK": 64}, {},
                                               (1, 1, 1)))
    assert sp.signature == {"x_ptr": "*fp16", "n": "constexpr", "stride": "i32", "BLOCK": "constexpr"}
    assert sp.constexprs == {"n": 1, "BLOCK": 64}
    assert sp.divisible_by_16 == ("x_ptr", "stride")
    assert (sp.num_warps, sp.num_stages, sp.options) == (4, 3, ())  # Triton's CUDA defaults


def test_specialise_plain_int_misaligned_pointer_and_options():
    x = torch.empty(64, dtype=torch.float16, device="meta")[1:]  # 2-byte offset: no alignment attribute
    sp = plans.specialise(plans.RecordedLaunch(probe_kernel, {"x_ptr": x, "n": 17, "stride": 48, "BLOCK": 32},
                                               {"num_warps": 8, "num_stages": 1, "maxnreg": 128}, (1, 1, 1)))
    assert sp.signature["n"] == "i32" and sp.divisible_by_16 == ("stride",)
    assert (sp.num_warps, sp.num_stages, sp.options) == (8, 1, (("maxnreg", 128),))


# -- recording the wrappers ---------------------------------------------------------------------------
def _plans(scheme, m, path=None, dtype=torch.float16, n=N, k=K):
    qw = QuantizedWeight.empty(scheme, (n, k))
    fam = family_for(scheme)
    path = path or fam.choose_path(m)
    cfg = fam.heuristic(path, m, qw, dtype)
    return cfg, fam.launch_plans(qw, m, path, dtype, cfg)


def test_int4_decode_plan_known_bytes_and_loop():
    """M = 1 int4 g128: one tensor-core GEMV (no split at 8192 columns); bytes are each touched tensor once;
    a forced split adds the reduce, which reads the fp32 partials and writes fp16 y."""
    from lowbit.kernels.uniform import configs as UC

    cfg, (gemv,) = _plans("int4", 1)
    assert gemv.label == "gemv" and gemv.main and gemv.grid[1] == 1
    weights, meta = N * K // 2, 2 * (K // 128) * N * 2  # int4 codes; fp16 scales and zeros
    assert gemv.hbm_bytes == weights + meta + K * 2 + N * 2  # + x, + y
    geo = UC.gemv_geometry(4, cfg)
    assert gemv.weights_per_iteration == cfg.block_n * geo.superstep_codes * cfg.num_warps
    assert gemv.ctas * gemv.loop_trips * gemv.weights_per_iteration == N * K  # every weight once
    assert gemv.threads_per_cta == 32 * cfg.num_warps
    assert gemv.case.constexprs["M"] == 1 and "N" in gemv.case.divisible_by_16  # what a JIT launch compiles
    qw = QuantizedWeight.empty("int4", (N, K))
    split = KernelConfig(**{**cfg.to_dict(), "split_k": 4})
    g, red = family_for("int4").launch_plans(qw, 1, "gemv", torch.float16, split)
    assert (g.label, red.label) == ("gemv", "reduce") and g.grid[1] == 4 and not red.main
    assert red.hbm_bytes == 4 * N * 4 + N * 2
    assert g.hbm_bytes == weights + meta + K * 2 + 4 * N * 4
    assert red.case.constexprs["M"] == 1


@pytest.mark.parametrize("scheme, m, labels", [
    pytest.param("int3", 4096, ["gemm"], id="int3-prefill"),
    pytest.param("nf4", 1, ["mma gemv"], id="nf4-decode"),  # 128 CTAs cover the SMs: no split
    pytest.param("sq4", 1, ["mma gemv"], id="sq4-decode"),  # unsplit: the GEMV adds the outliers itself
    pytest.param("sq4", 4096, ["decode weight", "scatter outliers", "dense gemm"], id="sq4-prefill"),
    pytest.param("ternary", 1, ["quantize x", "gemv"], id="ternary-decode"),
    pytest.param("ternary", 4096, ["quantize x", "gemm"], id="ternary-prefill"),
    pytest.param("binary", 1, ["gemv", "reduce"], id="binary-decode"),
])
def test_every_launch_of_a_call_is_planned(scheme, m, labels):
    _check_planned(_plans(scheme, m)[1], labels)


@pytest.mark.parametrize("scheme, labels", [
    pytest.param("nf4", ["mma gemv", "split-K sum"], id="nf4"),
    pytest.param("sq4", ["mma gemv", "finish + outliers"], id="sq4"),
])
def test_a_half_full_grid_splits_k_and_finishes(scheme, labels):
    """N = 4096: 64 CTAs of 64 rows would leave half the SMs idle, so the M = 1 GEMV splits K."""
    _check_planned(_plans(scheme, 1, n=4096)[1], labels)


def _check_planned(ps, labels):
    assert [p.label for p in ps] == labels
    assert sum(p.main for p in ps) == 1
    main = next(p for p in ps if p.main)
    assert main.weights_per_iteration > 0 and main.loop_trips > 0 and main.hbm_bytes > 0
    for p in ps:
        assert (p.case is None) == (p.threads_per_cta == 0)  # torch ops have no case and no threads


def test_lut_decode_bytes_skip_dummy_pointers():
    """lut4 M=1 (tensor-core GEMV + split-K sum at N = 4096): the unused scale pointer (a dummy aliasing the
    codes) and the output as dummy bias count once; each split writes one fp32 row of partials."""
    n = 4096
    cfg, ps = _plans("lut4", 1, n=n)
    gemv, total = ps
    ws = cfg.split_k * n * 4
    assert cfg.split_k > 1
    assert gemv.hbm_bytes == n * K // 2 + n * 16 * 2 + K * 2 + ws  # codes, per-row tables, x, partials
    assert total.hbm_bytes == ws + n * 2  # partials in, fp16 output out
    cfg, (one,) = _plans("lut4", 1)  # N = 8192: one split, straight into the output
    assert cfg.split_k == 1
    assert one.hbm_bytes == N * K // 2 + N * 16 * 2 + K * 2 + N * 2


def test_sign_gemv_weights_per_trip():
    """binary M=1: one trip of the GEMV loop consumes BLOCK_N rows x BLOCK_K inputs (no nested loop)."""
    cfg, ps = _plans("binary", 1)
    gemv = ps[0]
    assert gemv.label == "gemv" and gemv.inner_trips is None
    assert gemv.weights_per_iteration == cfg.block_n * cfg.block_k
    assert gemv.ctas * gemv.loop_trips * gemv.weights_per_iteration >= N * K


# -- gate cases are JIT specialisations of real calls --------------------------------------------------
def test_every_gate_case_is_the_jit_specialisation_of_its_call():
    problems = [p for fam in families() for case in fam.aot_cases() for p in [plans.case_drift(case)] if p]
    assert not problems, "\n".join(problems)


def test_lut_gate_cases_have_the_attributes_of_a_real_launch():
    """The lut gate compiled its GEMV without divisibility attributes (23.3 instead of 14.5 instructions
    per weight for lut4): every lut case now carries them, and M = 1 is a constant as in a JIT launch."""
    lut = next(f for f in families() if f.name == "lut")
    dense = [c for c in lut.aot_cases() if c.label.startswith(("gemv", "gemm"))]
    assert dense
    for c in dense:
        assert {"x_ptr", "qw_ptr", "tab_ptr", "out_ptr", "N", "K", "stride_xm"} <= set(c.divisible_by_16), c.label
        if " m1 " in c.label:
            assert c.signature["M"] == "constexpr" and c.constexprs["M"] == 1, c.label


def test_drift_is_reported():
    case = next(c for c in family_for("lut4").aot_cases() if c.label.startswith("gemv lut4"))
    assert plans.case_drift(case) is None
    assert "divisible_by_16" in plans.case_drift(dataclasses.replace(case, divisible_by_16=()))
    assert "num_warps" in plans.case_drift(dataclasses.replace(
        case, config=dataclasses.replace(case.config, num_warps=8)))
    assert "names no call" in plans.case_drift(dataclasses.replace(case, call=None))
    other = dataclasses.replace(case.call, path=GEMM, m=4096, config=KernelConfig(64, 64, 32, 1, 8, 4, 2))
    assert "launches ['_lut_gemm_kernel'], not _lut_gemv_kernel" in plans.case_drift(
        dataclasses.replace(case, call=other))


# -- bad input ---------------------------------------------------------------------------------------
def test_bad_calls_and_plans_raise():
    cfg = KernelConfig()
    with pytest.raises(ValueError, match="KernelCall.m must be a positive int"):
        KernelCall("int4", N, K, 0, GEMV, torch.float16, cfg)
    with pytest.raises(ValueError, match="KernelCall.dtype"):
        KernelCall("int4", N, K, 1, GEMV, torch.int8, cfg)
    with pytest.raises(TypeError, match="KernelCall.config"):
        KernelCall("int4", N, K, 1, GEMV, torch.float16, {"block_m": 1})
    with pytest.raises(ValueError, match="unknown"):
        KernelCall("int5", N, K, 1, GEMV, torch.float16, cfg)
    fam = family_for("int4")
    qw = QuantizedWeight.empty("int4", (N, K))
    cfg = fam.heuristic(GEMV, 1, qw, torch.float16)
    with pytest.raises(ValueError, match="marks 0 main launches"):
        plans.plan_launches(fam, qw, 1, GEMV, torch.float16, cfg, lambda ln, rec: plans.LoopFacts("x", 1))
    with pytest.raises(ValueError, match="not its arguments"):
        plans.plan_launches(fam, qw, 1, GEMV, torch.float16, cfg,
                            lambda ln, rec: plans.LoopFacts("x", 1, main=True, unused=("nope",)))
    call = KernelCall("int4", N, K, 4096, GEMM, torch.float16, fam.heuristic(GEMM, 4096, qw, torch.float16))
    with pytest.raises(ValueError, match="not _uniform_gemv_kernel"):
        plans.gate_case(call, next(c.kernel for c in fam.aot_cases() if c.label.startswith("gemv")), "x")
