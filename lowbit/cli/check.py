"""python -m lowbit check: compile every kernel x config for sm_80/sm_90 without a GPU and gate the results.

Prints one row per (kernel, config, target) with registers, spill bytes, shared memory and
tensor-core instruction count, and exits 1 on a compile error, a spill or shared memory
over the device limit. Triton's compile cache ($TRITON_CACHE_DIR, defaulting to
<checkout>/.triton-cache) makes a second run cheap. The interpreter must be off: when
TRITON_INTERPRET is set the command re-runs itself in a subprocess without it.

``--roofline`` runs the static roofline instead (lowbit.perf.static_roofline): every scheme x path
x dtype x shape at the dispatcher's config, counted in the SASS and costed on H100/H200/A100 by a
documented model; its output is an estimate and says so. ``--out``, ``--sass-dir``, ``--budgets``
and ``--write-budgets`` write the committed tables, the SASS dump and check or set the budgets.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from .args import parse_ms, parse_schemes, parse_shapes

TARGETS = (80, 90)  # kept equal to lowbit.kernels.gate.TARGETS (a test checks); importing it here would load torch
DTYPE_NAMES = ("fp16", "bf16", "fp32")


def _parse_dtypes(text: str) -> tuple[str, ...]:
    """'fp16,bf16' -> ('fp16', 'bf16')."""
    out = tuple(t.strip().lower() for t in text.split(","))
    bad = [t for t in out if t not in DTYPE_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown dtype {bad[0]!r}: expected {', '.join(DTYPE_NAMES)}")
    return out


def add_arguments(p) -> None:
    p.add_argument("--family", action="append", metavar="NAME",
                   help="only this kernel family, or 'lowrank' for the shared low-rank correction kernels "
                        "(repeatable; default: all of them)")
    p.add_argument("--target", action="append", type=int, choices=TARGETS, metavar="CC",
                   help="compute capability 80 or 90 (repeatable; default both)")
    p.add_argument("--quick", action="store_true",
                   help="smoke subset: per kernel, its first config and its largest tile config")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="compile in this many processes (default: min(2, CPUs))")
    r = p.add_argument_group("static roofline (--roofline; every figure is an estimate, see perf/README.md)")
    r.add_argument("--roofline", action="store_true",
                   help="instead of the gate: count each case's main loop in its SASS and estimate its time on "
                        "H100/H200 (sm_90) and A100 (sm_80); with --quick, the CI subset (every scheme, fp16, "
                        "8192x8192, M 1 and 4096, sm_90)")
    r.add_argument("--scheme", type=parse_schemes, action="append", metavar="LIST",
                   help="schemes, comma-separated or 'all' (repeatable; default all)")
    r.add_argument("--m", type=parse_ms, metavar="LIST", help="batch sizes M (default 1,16,4096)")
    r.add_argument("--shapes", type=parse_shapes, metavar="LIST",
                   help="weight shapes NxK (default 8192x8192,28672x8192,8192x28672)")
    r.add_argument("--dtype", type=_parse_dtypes, metavar="LIST", help="activation dtypes (default fp16,bf16,fp32)")
    r.add_argument("--out", metavar="DIR", help="write roofline-sm<cc>.csv and the PNG plots to DIR (e.g. perf/static)")
    r.add_argument("--sass-dir", metavar="DIR", help="write each case's main-kernel SASS as DIR/<case>.sass and "
                                                      "DIR/manifest.json")
    r.add_argument("--budgets", metavar="FILE", help="fail (exit 1) when a case's instructions per weight rise "
                                                     "more than 5%% above its budget in FILE (perf/static/budgets.json)")
    r.add_argument("--write-budgets", metavar="FILE", help="set the computed cases' budgets in FILE to today's counts")


def _argv(args) -> list[str]:
    out = ["check"]
    for name in args.family or ():
        out += ["--family", name]
    for cc in args.target or ():
        out += ["--target", str(cc)]
    if args.quick:
        out.append("--quick")
    out += ["--jobs", str(args.jobs)]
    if args.roofline:
        out.append("--roofline")
    for schemes in args.scheme or ():
        out += ["--scheme", ",".join(schemes)]
    if args.m:
        out += ["--m", ",".join(map(str, args.m))]
    if args.shapes:
        out += ["--shapes", ",".join(f"{n}x{k}" for n, k in args.shapes)]
    if args.dtype:
        out += ["--dtype", ",".join(args.dtype)]
    for flag in ("out", "sass_dir", "budgets", "write_budgets"):
        if getattr(args, flag):
            out += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    return out


def _reexec(args) -> int:
    """Run the same command in a fresh interpreter with TRITON_INTERPRET removed from its environment."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    print("lowbit check: TRITON_INTERPRET is set; re-running without it", file=sys.stderr)
    return subprocess.run([sys.executable, "-m", "lowbit", *_argv(args)], env=env).returncode


class _Progress:
    """One status line per compiled case on stderr (rewritten in place on a terminal)."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty, self.t0 = stream, stream.isatty(), time.monotonic()

    def __call__(self, i: int, n: int, rep) -> None:
        status = "ok" if rep.ok else "FAIL: " + "; ".join(rep.problems)
        msg = (f"[{i:>4}/{n}] {time.monotonic() - self.t0:6.1f}s {rep.family} {rep.kernel} {rep.label} "
               f"sm_{rep.cc} {status}")
        if self.tty:
            self.stream.write("\r\x1b[K" + msg[:150] + ("\n" if i == n or not rep.ok else ""))
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()


def run(args) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return _reexec(args)
    from ..kernels import gate

    gate.prepare_environment()

    targets = tuple(dict.fromkeys(args.target or TARGETS))
    try:
        known = gate.gate_names()  # the families and the shared kernels (the low-rank correction)
    except Exception as e:  # a family module that does not import is a gate failure, not a traceback
        print(f"lowbit check: cannot import the kernel families: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    unknown = sorted(set(args.family or ()) - set(known))
    if unknown:
        print(f"lowbit check: unknown kernel families {unknown}; implemented: {known}", file=sys.stderr)
        return 2
    if not known:
        print("lowbit check: no kernel family is implemented: nothing to compile", file=sys.stderr)
        return 1
    names = args.family or known
    if args.roofline:
        from .check_roofline import run_roofline

        return run_roofline(args, names)
    print(f"lowbit check: compiling {', '.join(names)} for {', '.join(f'sm_{t}' for t in targets)} "
          f"(TRITON_CACHE_DIR={os.environ['TRITON_CACHE_DIR']}, {args.jobs} job(s))", file=sys.stderr)
    t0 = time.monotonic()
    try:
        reports = gate.run_families(names, targets, jobs=max(1, args.jobs), quick=args.quick, progress=_Progress())
    except Exception as e:  # e.g. a family's aot_cases() raising
        print(f"lowbit check: could not build the compile cases: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(gate.format_table(reports))
    bad = [r for r in reports if not r.ok]
    print(f"{len(reports)} compiled ({len(reports) - len(bad)} ok, {len(bad)} with problems) "
          f"in {time.monotonic() - t0:.0f}s")
    for r in bad:
        print(f"FAIL {r.family} {r.kernel} {r.label} sm_{r.cc}: {'; '.join(r.problems)}", file=sys.stderr)
    return 1 if bad or not reports else 0
