"""Ahead-of-time compile gate for the ternary and binary families (sm_80 and sm_90, no GPU needed).

The gate must run without TRITON_INTERPRET, so it runs in a subprocess with that variable
removed. It exits 1 on a compile error, a spill, shared memory over the limit, or a missing
tensor-core instruction. The A8 GEMM cases set integer_mma=True, so exit 0 also means that
their SASS holds IMMA (sm_80) or IGMMA (sm_90) instructions.
"""
import os
import subprocess
import sys
from pathlib import Path

from lowbit.kernels import ternary

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_a8_gemm_cases_demand_integer_mma():
    a8_gemm = [c for c in ternary.FAMILY.aot_cases() if c.label.startswith("a8 gemm")]
    assert a8_gemm
    assert all(c.integer_mma and c.expects_tensor_cores for c in a8_gemm)


def test_gate_ternary_and_binary():
    proc = subprocess.run([sys.executable, "-m", "lowbit.kernels.aot", "--family", "ternary", "--family", "binary"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1500)
    table = proc.stdout
    assert proc.returncode == 0, f"gate failed:\n{table[-6000:]}\n{proc.stderr[-2000:]}"
    rows = [line.split() for line in table.splitlines() if line.startswith(("ternary ", "binary "))]
    a8 = [r for r in rows if r[2:4] == ["a8", "gemm"]]
    # every A8 GEMM row compiled for both targets, with tensor-core instructions and status ok
    assert {r[r.index("gemm") + 3] for r in a8} == {"80", "90"}
    for r in a8:
        assert r[-1] == "ok" and int(r[-2]) > 0, r
    assert all(r[-1] == "ok" for r in rows)


_DIV_CHECK = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource
from lowbit.kernels import _ternary_launch as L
case = L.quantize_aot_case("ternary", torch.float16, 1024)
src = ASTSource(case.kernel, case.signature, constexprs=case.constexprs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
print("div.rn.f32" in ptx, "div.full.f32" in ptx, "div.approx.f32" in ptx)
"""


def test_quantizer_divides_ieee():
    """127 / absmax must round like torch's fp32 division: the PTX holds div.rn.f32, no approximate divide."""
    proc = subprocess.run([sys.executable, "-c", _DIV_CHECK], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True", "False", "False"], proc.stdout
