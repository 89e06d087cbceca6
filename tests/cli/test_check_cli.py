"""python -m lowbit check: the ahead-of-time compile gate (sm_80 + sm_90, no GPU needed).

The gate compiles every kernel x config of every implemented family; it runs in a subprocess
because compiling needs TRITON_INTERPRET unset (conftest sets it on CPU machines) -- the
first test leaves TRITON_INTERPRET=1 in the child's environment on purpose, so the command's
own re-exec without it is exercised too. Triton's cache (TRITON_CACHE_DIR, set by
scripts/test.sh, else <checkout>/.triton-cache) is shared with the families' own AOT tests.
The full gate costs a few minutes on 2 cores when nothing is cached and seconds when all is.
"""
import os
import subprocess
import sys
import textwrap

from helpers import ROOT as _ROOT
from lowbit.cli.check import TARGETS as CLI_TARGETS
from lowbit.kernels import AotCase, KernelConfig
from lowbit.kernels import gate

ROOT = str(_ROOT)
COLUMNS = ["family", "kernel", "config", "sm", "regs", "spill", "shared", "mma", "status"]


def _env(**extra):
    env = dict(os.environ)
    env.setdefault("TRITON_CACHE_DIR", os.path.join(ROOT, ".triton-cache"))
    env.update(extra)
    return env


def test_check_full_gate_passes():
    """Every implemented family x every config of its space x {sm_80, sm_90}: no error, spill or overflow."""
    names = gate.gate_names()  # the families and the shared kernels (lowrank)
    assert names, "no kernel family is implemented"
    proc = subprocess.run([sys.executable, "-m", "lowbit", "check"], cwd=ROOT, env=_env(TRITON_INTERPRET="1"),
                          capture_output=True, text=True, timeout=1800)
    assert "re-running without it" in proc.stderr
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].split() == COLUMNS
    # config labels may hold spaces: read family from the left, the numbers and status from the right
    rows = [ln.split() for ln in lines[2:-1]]
    expected = len(list(gate.family_cases()))
    assert len(rows) == 2 * expected  # every case, both targets
    assert {r[0] for r in rows} == set(names)
    assert {r[-6] for r in rows} == {"80", "90"}
    assert all(r[-1] == "ok" and r[-4] == "0" and int(r[-5]) > 0 for r in rows)  # status, spill, regs
    assert f"{len(rows)} compiled ({len(rows)} ok, 0 with problems)" in lines[-1]
    assert "[" in proc.stderr and "/" in proc.stderr  # progress lines


def test_check_unknown_family_exits_2():
    env = _env()
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-m", "lowbit", "check", "--family", "nosuch"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "unknown kernel families ['nosuch']" in proc.stderr
    assert "Traceback" not in proc.stderr


BAD_FAMILY = '''
import sys
import triton
import triton.language as tl

import lowbit.kernels
import lowbit.kernels.gate
from lowbit.__main__ import main
from lowbit.kernels import AotCase, KernelConfig, KernelFamily


@triton.jit
def hog_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    # BLOCK fp32 values stay live across two reductions: 8192 values on one warp need
    # 256 registers a thread for x alone, more than the 255 a thread can have -> spills
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    s = tl.sum(x * x, axis=0)
    m = tl.max(x, axis=0)
    tl.store(y_ptr + offs, x * s - m, mask=offs < n)


@triton.jit
def broken_kernel(x_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, not_defined_anywhere(offs))


class BadFamily(KernelFamily):
    name = "bad"

    def forward(self, x2d, qw, bias, path, config): raise NotImplementedError
    def run(self, x2d, qw, bias, path, config, out): raise NotImplementedError
    def search_space(self, path, qw=None, dtype=None): return []
    def heuristic(self, path, m, qw, dtype=None): return KernelConfig()

    def aot_cases(self):
        sig = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}
        return [
            AotCase("bad", hog_kernel, sig, {"BLOCK": 256}, KernelConfig(num_warps=1), "fits"),
            AotCase("bad", hog_kernel, sig, {"BLOCK": 8192}, KernelConfig(num_warps=1), "spills"),
            AotCase("bad", broken_kernel, {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 64},
                    KernelConfig(), "broken"),
        ]


lowbit.kernels.families = lambda: [BadFamily()]
lowbit.kernels.gate.SHARED_KERNELS.clear()  # only the bad family's cases
sys.exit(main(["check", "--target", "80", "--jobs", "1"]))
'''


def test_check_fails_on_spill_and_compile_error(tmp_path):
    script = tmp_path / "bad_family.py"
    script.write_text(textwrap.dedent(BAD_FAMILY))
    env = _env(PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = {ln.split()[2]: ln for ln in proc.stdout.splitlines()[2:-1]}
    assert rows["fits"].endswith("  ok")
    assert "spills" in rows["spills"].split("  ")[-1]
    assert "compile error" in rows["broken"] and "not_defined_anywhere" in rows["broken"]
    assert "3 compiled (1 ok, 2 with problems)" in proc.stdout
    assert "FAIL bad hog_kernel spills sm_80" in proc.stderr and "Traceback" not in proc.stderr


def _report(**kw):
    base = dict(family="f", kernel="k", label="c", cc=80, registers=64)
    base.update(kw)
    return gate.CompileReport(**base)


def test_gate_rules_shared_memory_and_tensor_cores():
    assert CLI_TARGETS == gate.TARGETS  # the CLI's --target choices are the gate's targets
    assert _report().ok
    over = gate.SHARED_LIMIT[80] + 1
    assert _report(shared=over).problems == [f"shared {over} B > {163 * 1024} B"]
    assert _report(cc=90, shared=gate.SHARED_LIMIT[80] + 1).ok  # sm_90 allows 227 KiB
    assert _report(spill_bytes=8).problems == ["spills 8 B"]
    assert _report(expects_tensor_cores=True).problems == ["no tensor-core instructions"]
    assert _report(expects_tensor_cores=True, mma=4, integer_mma=True).problems == ["no integer tensor-core instructions"]
    assert _report(error="CompilationError: x", spill_bytes=8).problems == ["compile error: CompilationError: x"]
    table = gate.format_table([_report(), _report(spill_bytes=8, label="a-much-longer-config-label")])
    head, rule, ok_row, bad_row = table.splitlines()
    assert head.split() == COLUMNS and set(rule) == {"-"}
    assert ok_row.split() == ["f", "k", "c", "80", "64", "0", "0", "0", "ok"]
    assert bad_row.endswith("spills 8 B")


def test_quick_subset_keeps_first_and_largest():
    def case(kernel, bm, bk, st, label):
        return AotCase("f", kernel, {}, {}, KernelConfig(block_m=bm, block_k=bk, num_stages=st), label)

    k1, k2 = (lambda: 0), (lambda: 1)
    k1.__name__, k2.__name__ = "gemv", "gemm"
    cases = [case(k1, 1, 32, 2, "a"), case(k1, 4, 64, 2, "b"), case(k1, 2, 32, 2, "c"),
             case(k2, 64, 64, 3, "d"), case(k2, 16, 32, 4, "e")]
    assert [c.label for c in gate.select_quick(cases)] == ["a", "b", "d"]
