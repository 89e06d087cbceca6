"""python -m lowbit check --roofline: the static roofline table, its files and the budget check.

Called by lowbit/cli/check.py (after it has made sure TRITON_INTERPRET is off); the work is in
lowbit.perf.static_roofline. Exit status 1 when a case fails to compile or breaks its budget.
"""
from __future__ import annotations

import sys
import time


def _dtypes(names):
    import torch

    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    return tuple(table[n] for n in names)


def select(args, families: list[str]):
    """The cases the arguments ask for: --quick is the CI subset (narrowed by --scheme, --family,
    --target); otherwise the grid, narrowed by every flag."""
    from ..perf import static_roofline as sr

    schemes = [s for group in args.scheme or () for s in group] or None
    if args.quick:
        return sr.quick_cases(schemes, targets=tuple(dict.fromkeys(args.target or (90,))), families=families)
    return sr.cases(schemes=schemes, ms=args.m or sr.MS, shapes=args.shapes or sr.SHAPES,
                    dtypes=_dtypes(args.dtype) if args.dtype else sr.DTYPES,
                    targets=tuple(dict.fromkeys(sorted(args.target or sr.TARGETS, reverse=True))), families=families)


class _Progress:
    """One status line per compiled kernel on stderr (rewritten in place on a terminal)."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.tty, self.t0 = stream, stream.isatty(), time.monotonic()

    def __call__(self, i: int, n: int, rep) -> None:
        status = "ok" if not rep.error else "FAIL: " + rep.error
        msg = f"[{i:>4}/{n}] {time.monotonic() - self.t0:6.1f}s {rep.kernel} {rep.label} sm_{rep.cc} {status}"
        if self.tty:
            self.stream.write("\r\x1b[K" + msg[:150] + ("\n" if i == n or rep.error else ""))
        else:
            self.stream.write(msg + "\n")
        self.stream.flush()


def run_roofline(args, families: list[str]) -> int:
    from ..perf import static_roofline as sr

    t0 = time.monotonic()
    try:
        chosen = select(args, families)
    except ValueError as e:
        print(f"lowbit check --roofline: {e}", file=sys.stderr)
        return 2
    if not chosen:
        print("lowbit check --roofline: no case matches the options", file=sys.stderr)
        return 2
    print(f"lowbit check --roofline: {len(chosen)} cases ({'CI subset' if args.quick else 'grid'}), "
          f"{args.jobs} job(s)", file=sys.stderr)
    try:
        rows = sr.run(chosen, jobs=max(1, args.jobs), progress=_Progress(), keep_sass=bool(args.sass_dir))
    except Exception as e:  # a family whose plans cannot be built is a failure, not a traceback
        print(f"lowbit check --roofline: could not plan the cases: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(sr.format_table(rows))
    if args.out:
        files = sr.write_csv(rows, args.out) + sr.write_plots(rows, args.out)
        print("wrote " + ", ".join(str(f) for f in files))
    if args.sass_dir:
        print(f"wrote {sr.write_sass_dir(rows, args.sass_dir)} and the .sass files beside it")
    failures = [f"{r.case.name}: {r.error}" for r in rows if r.error]
    if args.budgets:
        try:
            budget_fails, notes = sr.check_budgets(rows, sr.load_budgets(args.budgets))
        except ValueError as e:
            print(f"lowbit check --roofline: {e}", file=sys.stderr)
            return 1
        for note in notes:
            print(f"note: {note}")
        failures += [f for f in budget_fails if f not in failures]
        print(f"budgets ({args.budgets}): {len(rows) - len(budget_fails)} of {len(rows)} cases within "
              f"{100 * sr.BUDGET_TOLERANCE:.0f}% of their budget")
    if args.write_budgets:
        print(f"wrote {sr.write_budgets(rows, args.write_budgets)} budgets to {args.write_budgets}")
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    print(f"{len(rows)} cases in {time.monotonic() - t0:.0f}s; every time and % above is an ESTIMATE of the static "
          "model, not a measurement")
    return 1 if failures else 0
