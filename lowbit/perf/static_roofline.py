"""The static roofline table: every family x scheme x path x dtype x shape, compiled and costed without a GPU.

For each case (a :class:`~lowbit.kernels.base.KernelCall` and a target, sm_90 or sm_80) the config is
the one the dispatcher picks without a tuned entry (``FAMILY.heuristic``), the launches are the
family's ``launch_plans`` (recorded from its launch wrapper, so every launch of the call counts),
each kernel launch is compiled ahead of time (the compile gate's ``compile_case``, Triton's cache
and the gate's cubin memo), its main loop is counted in the SASS (:mod:`lowbit.kernels.sass`) and
the call is costed by :mod:`lowbit.perf.static_model` on the GPUs of the target (sm_90: H100 SXM
and H200; sm_80: A100). Every figure is an ESTIMATE of that model, not a measurement.

:func:`run` computes rows; :func:`write_csv`, :func:`write_plots`, :func:`write_sass_dir`,
:func:`check_budgets` and :func:`write_budgets` turn them into the committed results
(perf/static/), the SASS dump and the CI budget gate. ``python -m lowbit check --roofline`` is the
command line (lowbit/cli/check.py). Must run with TRITON_INTERPRET unset.
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..formats import QuantizedWeight, Scheme
from ..kernels.base import KernelCall, KernelPath, LaunchPlan, dtype_tag
from ..kernels.sass import InstrClass, Loop, LoopReport, find_loops, loop_report, parse_sass, select_main_loop
from . import static_model as sm

__all__ = ["SHAPES", "MS", "DTYPES", "TARGETS", "GPUS_OF_TARGET", "BUDGET_TOLERANCE", "RooflineCase", "Row",
           "cases", "quick_cases", "run", "format_table", "write_csv", "write_plots", "write_sass_dir",
           "manifest_entry", "load_budgets", "check_budgets", "write_budgets", "analyze_kernel"]

SHAPES = ((8192, 8192), (28672, 8192), (8192, 28672))  # (N, K)
MS = (1, 16, 4096)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TARGETS = (90, 80)
GPUS_OF_TARGET = {90: ("h100", "h200"), 80: ("a100",)}  # the GPUs that run each target's code
BOTH_PATHS_M = (16,)  # batch sizes where both paths are reported (the GEMV/GEMM crossover)
BUDGET_TOLERANCE = 0.05  # a case fails the budget check when it rises more than this above its budget
_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class RooflineCase:
    """One row of the table: a call, compiled for one target; `default_path`: the dispatcher's choice."""

    call: KernelCall
    target: int
    family: str
    default_path: bool = True

    @property
    def name(self) -> str:
        c = self.call
        return f"{c.scheme}-{c.path.value}-{_DTYPE_NAMES[c.dtype]}-m{c.m}-n{c.n}-k{c.k}-sm{self.target}"


def cases(schemes: Sequence[str] | None = None, ms: Sequence[int] = MS, shapes=SHAPES, dtypes=DTYPES,
          targets: Sequence[int] = TARGETS, families: Sequence[str] | None = None) -> list[RooflineCase]:
    """The grid: scheme x dtype x shape x M (both paths at M in BOTH_PATHS_M) x target, heuristic configs."""
    from ..kernels import family_for

    schemes = [Scheme.parse(s).value for s in (schemes or [s.value for s in Scheme])]
    out = []
    for target in targets:
        if target not in GPUS_OF_TARGET:
            raise ValueError(f"target must be one of {sorted(GPUS_OF_TARGET)}, got {target!r}")
        for scheme in schemes:
            fam = family_for(scheme)
            if families is not None and fam.name not in families:
                continue
            for dtype in dtypes:
                for n, k in shapes:
                    qw = QuantizedWeight.empty(scheme, (n, k))
                    for m in ms:
                        default = fam.choose_path(m, qw, dtype)
                        paths = list(KernelPath) if m in BOTH_PATHS_M else [default]
                        for path in paths:
                            cfg = fam.heuristic(path, m, qw, dtype)
                            call = KernelCall(scheme, n, k, m, path, dtype, cfg)
                            out.append(RooflineCase(call, target, fam.name, default_path=path is default))
    return out


def quick_cases(schemes: Sequence[str] | None = None, targets: Sequence[int] = (90,),
                families: Sequence[str] | None = None) -> list[RooflineCase]:
    """The CI subset: every scheme at M = 1 and M = 4096 (the dispatcher's paths), fp16, 8192 x 8192, sm_90."""
    return cases(schemes, ms=(1, 4096), shapes=((8192, 8192),), dtypes=(torch.float16,), targets=targets,
                 families=families)


# -- counting -------------------------------------------------------------------------------------
def analyze_kernel(sass: str, inner_trips=None) -> tuple[LoopReport, bool]:
    """The main-loop report of a one-kernel SASS dump, and whether the kernel has no loop at all
    (then the report covers the whole kernel once: the caller counts it once per CTA)."""
    funcs = [f for f in parse_sass(sass) if f.instructions]
    if len(funcs) != 1:
        raise ValueError(f"expected the SASS of one kernel, found {len(funcs)} functions")
    func = funcs[0]
    loops = find_loops(func)
    if any(lp.depth == 0 for lp in loops):
        return loop_report(func, select_main_loop(func, loops), loops, inner_trips), False
    body = [i for i in func.instructions if i.iclass is not InstrClass.NOP and i.branch_target() != i.offset]
    whole = Loop(func.instructions[0].offset, body[-1].offset)
    return loop_report(func, whole, [], None), True


@dataclass
class Launched:
    """One launch of a case after compiling and counting (kernel launches) or as a torch op."""

    plan: LaunchPlan
    report: LoopReport | None = None
    no_loop: bool = False
    registers: int = 0
    spill_bytes: int = 0
    error: str = ""

    def model_launches(self) -> list[sm.Launch]:
        p = self.plan
        if p.case is None:  # torch op: bytes and launch overhead only
            return [sm.Launch(p.label, bytes_moved=p.hbm_bytes if i == 0 else 0, threads_per_cta=1, ctas=1)
                    for i in range(p.launches)]
        iterations = 1.0 if self.no_loop else p.loop_trips
        return [sm.Launch.from_loop(self.report, name=p.label, bytes_moved=p.hbm_bytes,
                                    threads_per_cta=p.threads_per_cta, ctas=max(1, p.ctas), iterations=iterations)]


@dataclass
class Row:
    """One case's results: the main kernel's counts and the call's estimates (per GPU of the target)."""

    case: RooflineCase
    launched: list[Launched]
    estimates: dict = field(default_factory=dict)  # gpu key -> static_model.Estimate
    sass: str = ""  # the main kernel's SASS (kept when a dump was asked for)

    @property
    def main(self) -> Launched:
        return next(ln for ln in self.launched if ln.plan.main)

    @property
    def error(self) -> str:
        return "; ".join(f"{ln.plan.label}: {ln.error}" for ln in self.launched if ln.error)

    @property
    def instructions_per_weight(self) -> float:
        main = self.main
        if main.report is None or not main.plan.weights_per_iteration:
            return float("nan")
        return main.report.instructions_per_weight(main.plan.threads_per_cta, main.plan.weights_per_iteration)

    @property
    def hbm_bytes(self) -> int:
        return sum(ln.plan.hbm_bytes for ln in self.launched)

    def values(self) -> dict:
        """The CSV row (see perf/README.md for the columns)."""
        c, call, main = self.case, self.case.call, self.main
        rep, p = main.report, main.plan
        out = {"case": c.name, "family": c.family, "scheme": call.scheme, "path": call.path.value,
               "default_path": int(c.default_path), "dtype": _DTYPE_NAMES[call.dtype], "target": c.target,
               "M": call.m, "N": call.n, "K": call.k, "config": call.config.label(),
               "launches": " + ".join(ln.plan.label + (f" x{ln.plan.launches}" if ln.plan.launches > 1 else "")
                                      for ln in self.launched),
               "kernel": getattr(p.case.kernel, "__name__", ""), "threads_per_cta": p.threads_per_cta,
               "weights_per_iter": p.weights_per_iteration, "loop_trips": round(p.loop_trips, 3),
               "registers": main.registers, "spill_bytes": main.spill_bytes, "error": self.error}
        if rep is not None:
            threads, wpi = p.threads_per_cta, p.weights_per_iteration
            out.update({"loop_first": rep.first, "loop_last": rep.last, "loop_instructions": rep.instructions,
                        "instr_per_weight": round(self.instructions_per_weight, 4)})
            for cls in InstrClass:
                if cls is not InstrClass.NOP:
                    out[f"n_{cls.value}"] = round(rep.counts.get(cls, 0.0), 2)
            out["load_widths"] = " ".join(f"{b}b:{n:g}" for b, n in rep.global_load_widths.items())
            out["requested_bytes_per_weight"] = round(rep.load_bytes_per_weight(threads, wpi), 4) if wpi else ""
            out["mma_flops_per_iter"] = rep.mma_flops_per_iteration(threads)
            out["mma_shapes"] = " ".join(f"{k}:{v:g}" for k, v in rep.mma.items())
            out["lower_bound"] = int(rep.lower_bound)
            out["forward_branches"] = rep.forward_branches
        out["hbm_bytes_per_weight"] = round(self.hbm_bytes / (call.n * call.k), 4)
        for gpu, est in self.estimates.items():
            hw = sm.HARDWARE[gpu]
            out[f"issue_budget_ipw_{gpu}"] = round(hw.issue_rate * self.hbm_bytes / (call.n * call.k)
                                                   / hw.hbm_bytes_per_s, 3)
            out[f"est_us_{gpu}"] = round(est.time_s * 1e6, 3)
            out[f"est_pct_mem_roofline_{gpu}"] = round(est.pct_memory_roofline, 2)
            out[f"est_ratio_vs_fp16_{gpu}"] = round(est.speedup_vs_fp16, 4)
            out[f"est_bound_{gpu}"] = max(est.launches, key=lambda lt: lt.busy_s).bound.value
        return out


# -- compiling ------------------------------------------------------------------------------------
def _plans(call: KernelCall) -> list[LaunchPlan]:
    from ..kernels import family_for

    return family_for(call.scheme).launch_plans(call.weight(), call.m, call.path, call.dtype, call.config)


def _case_key(case) -> tuple:
    return (getattr(case.kernel, "__name__", ""), tuple(sorted(case.signature.items())),
            tuple(sorted((k, repr(v)) for k, v in case.constexprs.items())), tuple(sorted(case.divisible_by_16)),
            case.config.num_warps, case.config.num_stages, tuple(case.options))


def _remote_compile(call: KernelCall, index: int, target: int, label: str):
    """Worker side: rebuild the call's plans, compile launch `index` for `target` with its SASS."""
    from ..kernels.gate import CompileReport, compile_case

    plans = _plans(call)
    case = plans[index].case if index < len(plans) else None
    if case is None or case.label != label:
        return CompileReport("", "", label, target, error="the launch plans differ between the main process "
                             "and a worker (source edited during the run?)")
    return compile_case(case, target, want_sass=True)


def run(selected: Sequence[RooflineCase], *, jobs: int = 1, progress=None, keep_sass: bool = False) -> list[Row]:
    """Plan, compile (deduplicated; Triton's cache and the gate memo make repeats cheap), count and
    estimate every case. Rows come in case order."""
    from ..kernels.gate import CompileReport, compile_case, run_tasks

    planned = [(c, _plans(c.call)) for c in selected]
    tasks, where = [], {}  # unique (case key, target) -> task index
    for c, plans in planned:
        for i, p in enumerate(plans):
            if p.case is None:
                continue
            key = (_case_key(p.case), c.target)
            if key not in where:
                where[key] = len(tasks)
                tasks.append((c.call, i, c.target, p.case))

    def failed(n, e):
        return CompileReport("", "", tasks[n][3].label, tasks[n][2], error=f"worker failed: {type(e).__name__}: {e}")

    reports = run_tasks(len(tasks), lambda n: compile_case(tasks[n][3], tasks[n][2], want_sass=True),
                        lambda n: (_remote_compile, (tasks[n][0], tasks[n][1], tasks[n][2], tasks[n][3].label)),
                        failed, jobs=jobs, progress=progress)
    counted: dict = {}
    rows = []
    for c, plans in planned:
        launched = []
        sass = ""
        for p in plans:
            if p.case is None:
                launched.append(Launched(p))
                continue
            n = where[(_case_key(p.case), c.target)]
            rep = reports[n]
            ln = Launched(p, registers=rep.registers, spill_bytes=rep.spill_bytes, error=rep.error)
            if not rep.error:
                key = (n, repr(p.inner_trips))
                if key not in counted:
                    counted[key] = analyze_kernel(rep.sass, p.inner_trips)
                ln.report, ln.no_loop = counted[key]
                if p.main and keep_sass:
                    sass = rep.sass
            launched.append(ln)
        row = Row(c, launched, sass=sass)
        if not row.error:
            model = [m for ln in launched for m in ln.model_launches()]
            for gpu in GPUS_OF_TARGET[c.target]:
                row.estimates[gpu] = sm.estimate(model, sm.HARDWARE[gpu], shape=(c.call.m, c.call.n, c.call.k))
        rows.append(row)
    return rows


# -- output ---------------------------------------------------------------------------------------
_HEADER = "ESTIMATES of the static SASS model (lowbit.perf.static_model), not measurements"


def format_table(rows: Sequence[Row]) -> str:
    """Per target: one line per case with the main kernel's instructions per weight and the estimates."""
    out = []
    for target in sorted({r.case.target for r in rows}, reverse=True):
        trs = [r for r in rows if r.case.target == target]
        gpus = GPUS_OF_TARGET[target]
        head = ["scheme", "path", "dtype", "M", "N", "K", "config", "instr/w", "HBM B/w", "MMA flop/iter"]
        for g in gpus:
            head += [f"est us {g}", f"%mem {g}", f"x fp16 {g}"]
        lines = []
        for r in trs:
            call = r.case.call
            cells = [call.scheme, call.path.value + ("" if r.case.default_path else "*"), dtype_tag(call.dtype),
                     str(call.m), str(call.n), str(call.k), call.config.label()]
            if r.error:
                lines.append(cells + [f"ERROR {r.error}"])
                continue
            rep = r.main.report
            cells += [f"{r.instructions_per_weight:.2f}", f"{r.hbm_bytes / (call.n * call.k):.3f}",
                      f"{rep.mma_flops_per_iteration(r.main.plan.threads_per_cta):.3g}"]
            for g in gpus:
                e = r.estimates[g]
                cells += [f"{e.time_s * 1e6:.1f}", f"{e.pct_memory_roofline:.0f}", f"{e.speedup_vs_fp16:.2f}"]
            lines.append(cells)
        widths = [max(len(h), *(len(ln[i]) for ln in lines if len(ln) > i)) for i, h in enumerate(head)]
        fmt = lambda cells: " ".join(c.rjust(w) if i >= 3 and i != 6 else c.ljust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(cells, widths)))
        out.append(f"{_HEADER}: sm_{target} code on {', '.join(sm.HARDWARE[g].name for g in gpus)}; "
                   "instr/w = main-loop instructions per weight per thread of the main kernel; path* = not the "
                   "dispatcher's default path at this M")
        out.append(fmt(head))
        out.append("-" * len(fmt(head)))
        out += [fmt(ln) if len(ln) == len(head) else " ".join(ln) for ln in lines]
        out.append("")
    return "\n".join(out)


def _columns(rows: Sequence[Row]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r.values():
            if k not in cols:
                cols.append(k)
    return cols


def write_csv(rows: Sequence[Row], out_dir: str | Path) -> list[Path]:
    """perf/static/roofline-sm<cc>.csv per target (rows in case order); returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for target in sorted({r.case.target for r in rows}, reverse=True):
        trs = [r for r in rows if r.case.target == target]
        path = out_dir / f"roofline-sm{target}.csv"
        with open(path, "w", newline="") as fh:
            fh.write(f"# {_HEADER}. Columns: perf/README.md, 'Static roofline'.\n")
            w = csv.DictWriter(fh, fieldnames=_columns(trs), restval="")
            w.writeheader()
            for r in trs:
                w.writerow(r.values())
        files.append(path)
    return files


def write_plots(rows: Sequence[Row], out_dir: str | Path, n: int = 8192, k: int = 8192) -> list[Path]:
    """Per target, two bar charts per scheme at N x K, fp16, the dispatcher's paths: instructions per
    weight and estimated % of the memory roofline (H200 for sm_90, A100 for sm_80)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for target in sorted({r.case.target for r in rows}, reverse=True):
        gpu = GPUS_OF_TARGET[target][-1]
        sel = [r for r in rows if r.case.target == target and r.case.call.dtype == torch.float16 and not r.error
               and (r.case.call.n, r.case.call.k) == (n, k) and r.case.default_path]
        if not sel:
            continue
        schemes = [s.value for s in Scheme if any(r.case.call.scheme == s.value for r in sel)]
        ms = sorted({r.case.call.m for r in sel})
        for metric, ylabel, fname in (
                ("ipw", "main-loop instructions per weight per thread", f"roofline-sm{target}-instr-per-weight.png"),
                ("pct", f"estimated % of memory roofline on {sm.HARDWARE[gpu].name}", f"roofline-sm{target}-pct-roofline.png")):
            fig = Figure(figsize=(12, 4.5))
            ax = fig.add_subplot(1, 1, 1)
            width = 0.8 / max(1, len(ms))
            for j, m in enumerate(ms):
                vals = []
                for s in schemes:
                    r = next((r for r in sel if r.case.call.scheme == s and r.case.call.m == m), None)
                    v = float("nan") if r is None else (
                        r.instructions_per_weight if metric == "ipw" else r.estimates[gpu].pct_memory_roofline)
                    vals.append(v)
                xs = [i + (j - (len(ms) - 1) / 2) * width for i in range(len(schemes))]
                ax.bar(xs, vals, width, label=f"M={m}")
                if metric == "ipw" and j == 0:  # where issue time equals HBM time at the smallest M
                    hw = sm.HARDWARE[gpu]
                    budget = []
                    for s in schemes:
                        r = next((r for r in sel if r.case.call.scheme == s and r.case.call.m == m), None)
                        budget.append(float("nan") if r is None else
                                      hw.issue_rate * r.hbm_bytes / (n * k) / hw.hbm_bytes_per_s)
                    ax.scatter(xs, budget, marker="_", s=400, color="black", zorder=3,
                               label=f"M={m}: issue budget on {hw.name} (issue time = HBM time)")
            ax.set_xticks(range(len(schemes)))
            ax.set_xticklabels(schemes, rotation=30)
            ax.set_ylabel(ylabel)
            ax.set_title(f"ESTIMATE (static SASS model, not measured): sm_{target}, fp16 x, N={n} K={k}")
            ax.legend()
            ax.grid(axis="y", alpha=0.3)
            fig.tight_layout()
            path = out_dir / fname
            fig.savefig(path, dpi=110)
            files.append(path)
    return files


def manifest_entry(row: Row, sass_file: str) -> dict:
    """One manifest object with the fields issue 12 lists. Re-count: ``sass.analyze(text,
    loop=loop["first"], inner_trips={int(k): v for k, v in loop["inner_trips"].items()})``, then
    ``.instructions_per_weight(threads_per_cta, weights_per_loop_iteration)``. ``loop.inner_trips``
    (empty for most kernels) gives the trip counts of loops nested in the main loop, which the SASS
    does not hold."""
    call, main = row.case.call, row.main
    h200 = row.estimates.get("h200")
    return {"case": row.case.name, "sass": sass_file, "family": row.case.family, "scheme": call.scheme,
            "path": call.path.value, "dtype": _DTYPE_NAMES[call.dtype], "target": row.case.target, "M": call.m,
            "N": call.n, "K": call.k, "config": call.config.to_dict(), "threads_per_cta": main.plan.threads_per_cta,
            "weights_per_loop_iteration": main.plan.weights_per_iteration,
            "loop": {"first": main.report.first, "last": main.report.last,
                     "inner_trips": {str(k): v for k, v in main.report.inner_trips.items()}},
            "instructions_per_weight": row.instructions_per_weight,
            "est_pct_roofline_h200": None if h200 is None else h200.pct_memory_roofline}


def write_sass_dir(rows: Sequence[Row], out_dir: str | Path) -> Path:
    """DIR/<case>.sass (the main kernel's cuobjdump -sass) per case and DIR/manifest.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for r in rows:
        if r.error or not r.sass:
            continue
        name = f"{r.case.name}.sass"
        (out_dir / name).write_text(r.sass)
        manifest.append(manifest_entry(r, name))
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


# -- budgets --------------------------------------------------------------------------------------
def load_budgets(path: str | Path) -> dict[str, float]:
    """case name -> budget (main-loop instructions per weight) from a budgets file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"no budgets file at {path}; write one with --write-budgets") from None
    except ValueError as e:
        raise ValueError(f"budgets file {path} is not JSON: {e}") from None
    budgets = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(budgets, dict) or not all(isinstance(v, (int, float)) for v in budgets.values()):
        raise ValueError(f"budgets file {path} must hold {{'cases': {{case: instructions per weight}}}}")
    return {k: float(v) for k, v in budgets.items()}


def check_budgets(rows: Sequence[Row], budgets: dict[str, float],
                  tolerance: float = BUDGET_TOLERANCE) -> tuple[list[str], list[str]]:
    """(failures, notes): a failure per case whose instructions per weight exceed its budget by more
    than `tolerance`, that has no budget, or that did not compile; a note per case more than
    `tolerance` below its budget (tighten: --write-budgets)."""
    fails, notes = [], []
    for r in rows:
        name = r.case.name
        if r.error:
            fails.append(f"{name}: did not compile: {r.error}")
            continue
        ipw = r.instructions_per_weight
        if math.isnan(ipw):
            continue
        budget = budgets.get(name)
        if budget is None:
            fails.append(f"{name}: no budget (instructions per weight now {ipw:.3f}); add it with --write-budgets")
        elif ipw > budget * (1 + tolerance):
            fails.append(f"{name}: {ipw:.3f} instructions per weight, {100 * (ipw / budget - 1):.1f}% above "
                         f"its budget {budget:.3f} (tolerance {100 * tolerance:.0f}%)")
        elif ipw < budget * (1 - tolerance):
            notes.append(f"{name}: {ipw:.3f} instructions per weight, {100 * (1 - ipw / budget):.1f}% below its "
                         f"budget {budget:.3f}: tighten it with --write-budgets")
    return fails, notes


def write_budgets(rows: Sequence[Row], path: str | Path) -> int:
    """Set the budgets of the computed cases to today's counts (other cases in the file are kept);
    returns how many were written."""
    path = Path(path)
    try:
        current = load_budgets(path)
    except ValueError:
        current = {}
    n = 0
    for r in rows:
        if not r.error and not math.isnan(r.instructions_per_weight):
            current[r.case.name] = round(r.instructions_per_weight, 4)
            n += 1
    data = {"about": "Main-loop SASS instructions per weight per thread of each case's main kernel (static "
                     "roofline, python -m lowbit check --roofline). CI fails when a case rises more than "
                     f"{100 * BUDGET_TOLERANCE:.0f}% above its budget; tighten them when a kernel improves.",
            "tolerance": BUDGET_TOLERANCE, "cases": dict(sorted(current.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return n
