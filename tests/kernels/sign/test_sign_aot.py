"""Ahead-of-time compile gate for the sign family, ternary and binary (sm_80 and sm_90, no GPU needed).

The gate must run without TRITON_INTERPRET, so it runs in a subprocess with that variable
removed (helpers.run_gate). It exits 1 on a compile error, a spill, shared memory over the limit, or a missing
tensor-core instruction. The A8 GEMM cases set integer_mma=True, so exit 0 also means that
their SASS holds IMMA (sm_80) or IGMMA (sm_90) instructions.
"""
import subprocess
import sys

from helpers import ROOT, env_without_interpreter, run_gate
from lowbit.kernels import sign


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
from lowbit.kernels.sign.aot import quantize_case
case = quantize_case(torch.float16, 1024)
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
