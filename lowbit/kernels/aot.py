"""Ahead-of-time compile gate: build kernels for sm_80/sm_90 without a GPU and read their resources.

Uses ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and the
``cuobjdump`` shipped inside the triton wheel for registers, spills (local memory) and SASS
tensor-core instruction counts. Triton's own on-disk cache makes a repeated compile cheap.
Must run with TRITON_INTERPRET unset (the interpreter replaces JIT functions).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ._common import AotCase, interpreting

TARGETS = (80, 90)
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # opt-in dynamic shared memory per block
_MMA_RE = {
    80: re.compile(r"\b(HMMA|IMMA)\."),
    90: re.compile(r"\b(HGMMA|IGMMA|HMMA|IMMA)\."),
}
_INT_MMA_RE = re.compile(r"\b(IMMA|IGMMA)\.")
_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


@dataclass
class CompileReport:
    """Resources of one compiled specialisation and whether it passes the gate."""

    family: str
    kernel: str
    label: str
    cc: int
    registers: int = 0
    spill_bytes: int = 0  # local memory + stack per thread
    shared: int = 0
    mma: int = 0
    int_mma: int = 0
    error: str = ""
    expects_tensor_cores: bool = False
    integer_mma: bool = False

    @property
    def problems(self) -> list[str]:
        out = []
        if self.error:
            out.append(f"compile error: {self.error}")
            return out
        if self.spill_bytes:
            out.append(f"spills {self.spill_bytes} B")
        if self.shared > SHARED_LIMIT[self.cc]:
            out.append(f"shared {self.shared} B > {SHARED_LIMIT[self.cc]} B")
        if self.expects_tensor_cores and self.mma == 0:
            out.append("no tensor-core instructions")
        if self.integer_mma and self.int_mma == 0:
            out.append("no integer tensor-core instructions")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found in the triton wheel at {path}")
    return str(path)


def _inspect_cubin(cubin: bytes) -> tuple[dict, str]:
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "k.cubin")
        with open(f, "wb") as fh:
            fh.write(cubin)
        res = subprocess.run([_cuobjdump(), "--dump-resource-usage", f], capture_output=True, text=True, check=True)
        sass = subprocess.run([_cuobjdump(), "-sass", f], capture_output=True, text=True, check=True).stdout
    m = _RES_RE.search(res.stdout)
    if not m:
        raise RuntimeError(f"cannot parse cuobjdump resource usage: {res.stdout[:200]}")
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}, sass


def compile_case(case: AotCase, cc: int) -> CompileReport:
    """Compile one case for sm_<cc> and fill a CompileReport (errors are captured, not raised)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    if interpreting():
        raise RuntimeError("the compile gate needs TRITON_INTERPRET unset (run it in a separate process)")
    rep = CompileReport(case.family, getattr(case.kernel, "__name__", str(case.kernel)), case.label, cc,
                        expects_tensor_cores=case.expects_tensor_cores, integer_mma=case.integer_mma)
    try:
        attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
        src = ASTSource(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
        ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                            options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages})
        res, sass = _inspect_cubin(ck.asm["cubin"])
    except Exception as e:  # a compile failure is a gate result, reported per case
        rep.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
        return rep
    rep.registers = res["registers"]
    rep.spill_bytes = res["local"] + res["stack"]
    rep.shared = max(int(ck.metadata.shared), res["shared"])
    rep.mma = len(_MMA_RE[cc].findall(sass))
    rep.int_mma = len(_INT_MMA_RE.findall(sass))
    return rep


def run_gate(cases, targets=TARGETS, progress=None) -> list[CompileReport]:
    """Compile every case for every target; `progress(i, n, report)` is called after each."""
    cases = list(cases)
    total = len(cases) * len(targets)
    reports = []
    for case in cases:
        for cc in targets:
            rep = compile_case(case, cc)
            reports.append(rep)
            if progress:
                progress(len(reports), total, rep)
    return reports


def format_table(reports) -> str:
    """A fixed-width table: family, kernel, config, target, regs, spills, shared, MMA count, status."""
    head = f"{'family':<8} {'kernel':<28} {'config':<34} {'sm':>3} {'regs':>4} {'spill':>5} {'shared':>7} {'mma':>5}  status"
    rows = [head, "-" * len(head)]
    for r in reports:
        status = "ok" if r.ok else "; ".join(r.problems)
        rows.append(f"{r.family:<8} {r.kernel:<28} {r.label:<34} {r.cc:>3} {r.registers:>4} {r.spill_bytes:>5} "
                     f"{r.shared:>7} {r.mma:>5}  {status}")
    return "\n".join(rows)


def family_cases(names=None):
    """AOT cases of the named families (all implemented families when None)."""
    from . import families

    fams = [f for f in families() if names is None or f.name in names]
    missing = set(names or ()) - {f.name for f in fams}
    if missing:
        raise ValueError(f"unknown kernel families: {sorted(missing)}")
    for fam in fams:
        yield from fam.aot_cases()


def main(argv=None) -> int:
    """python -m lowbit.kernels.aot [--family NAME ...]: print the gate table, exit 1 on any problem."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lowbit.kernels.aot")
    p.add_argument("--family", action="append", help="restrict to these families (repeatable)")
    p.add_argument("--target", action="append", type=int, choices=TARGETS, help="compute capability (repeatable)")
    args = p.parse_args(argv)
    reports = run_gate(family_cases(args.family), tuple(args.target or TARGETS))
    print(format_table(reports))
    bad = [r for r in reports if not r.ok]
    print(f"{len(reports) - len(bad)} ok, {len(bad)} with problems")
    return 1 if bad or not reports else 0


if __name__ == "__main__":
    raise SystemExit(main())
