"""Compile small Triton kernels with known loop contents for sm_80/sm_90 and write their SASS.

Run by tests/kernels/test_sass.py in a subprocess without TRITON_INTERPRET (the interpreter
replaces JIT functions): ``python compile_sass_cases.py OUT_DIR``. Writes ``OUT_DIR/<case>_sm<cc>.sass``
and ``OUT_DIR/cases.json`` (case name -> launch facts the tests check the counts against).
"""
import json
import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource

from lowbit.kernels.sass import sass_of_cubin

BLOCK = 1024  # fp16 values per loop trip per CTA: 4 warps x 32 threads x 8 values (one 128-bit load)
WARPS = 4


@triton.jit
def copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    """Grid-stride copy: each trip moves BLOCK fp16 values."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    offs = tl.arange(0, BLOCK)
    for start in range(pid * BLOCK, n, step):
        idx = start + offs
        m = idx < n
        tl.store(dst + idx, tl.load(src + idx, mask=m), mask=m)


@triton.jit
def unrolled_kernel(src, dst, n, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Grid-stride copy of UNROLL * BLOCK values per trip, unrolled with tl.static_range."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK * UNROLL
    offs = tl.arange(0, BLOCK)
    for start in range(pid * BLOCK * UNROLL, n, step):
        for u in tl.static_range(UNROLL):
            idx = start + u * BLOCK + offs
            m = idx < n
            tl.store(dst + idx, tl.load(src + idx, mask=m), mask=m)


@triton.jit
def nested_kernel(src, dst, n_outer, n_inner, BLOCK: tl.constexpr):
    """A runtime loop inside a runtime loop; the inner one holds the only global load."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, n_outer):
        base = src + i * n_inner * BLOCK
        part = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(0, n_inner):
            part += tl.load(base + j * BLOCK + offs).to(tl.float32)
        acc = acc * 0.5 + part
    tl.store(dst + offs, acc.to(tl.float16))


@triton.jit
def dot_kernel(a, b, c, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One output tile of C = A @ B (row-major A [BM, K], B [K, BN]) with a K loop of tl.dot."""
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=c.dtype.element_ty)
    for k0 in range(0, K, BK):
        x = tl.load(a + rm[:, None] * K + (k0 + rk)[None, :])
        w = tl.load(b + (k0 + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(x, w)
    tl.store(c + rm[:, None] * BN + rn[None, :], acc)


def _compile(kernel, signature, constexprs, divisible, cc, num_stages):
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": WARPS, "num_stages": num_stages})
    return sass_of_cubin(ck.asm["cubin"])


def cases():
    """name -> (kernel, signature, constexprs, divisible args, num_stages, facts for the tests)."""
    copy_sig = {"src": "*fp16", "dst": "*fp16", "n": "i32", "BLOCK": "constexpr"}
    out = {"copy": (copy_kernel, copy_sig, {"BLOCK": BLOCK}, ("src", "dst", "n"), 1,
                    {"threads": 32 * WARPS, "values_per_trip": BLOCK})}
    for u in (1, 2, 4):
        sig = dict(copy_sig, UNROLL="constexpr")
        out[f"unroll{u}"] = (unrolled_kernel, sig, {"BLOCK": BLOCK, "UNROLL": u}, ("src", "dst", "n"), 1,
                             {"threads": 32 * WARPS, "values_per_trip": BLOCK * u, "unroll": u})
    nested_sig = {"src": "*fp16", "dst": "*fp16", "n_outer": "i32", "n_inner": "i32", "BLOCK": "constexpr"}
    out["nested"] = (nested_kernel, nested_sig, {"BLOCK": 4 * BLOCK}, ("src", "dst"), 1,
                     {"threads": 32 * WARPS, "values_per_trip": 4 * BLOCK})
    for name, dt, acc in (("dot_f16", "fp16", "fp32"), ("dot_i8", "i8", "i32")):
        sig = {"a": f"*{dt}", "b": f"*{dt}", "c": f"*{acc}", "K": "i32", "BM": "constexpr", "BN": "constexpr",
               "BK": "constexpr"}
        bk = 64 if dt == "i8" else 32
        out[name] = (dot_kernel, sig, {"BM": 64, "BN": 64, "BK": bk}, ("a", "b", "c", "K"), 3,
                     {"threads": 32 * WARPS, "flops_per_trip": 2 * 64 * 64 * bk, "int8": dt == "i8"})
    return out


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    facts = {}
    for name, (kernel, sig, const, div, stages, info) in cases().items():
        for cc in (80, 90):
            with open(os.path.join(out_dir, f"{name}_sm{cc}.sass"), "w") as fh:
                fh.write(_compile(kernel, sig, const, div, cc, stages))
        facts[name] = dict(info, kernel=kernel.__name__)
    with open(os.path.join(out_dir, "cases.json"), "w") as fh:
        json.dump(facts, fh)


if __name__ == "__main__":
    main(sys.argv[1])
