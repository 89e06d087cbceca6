"""The ahead-of-time compile gate: build kernels for sm_80/sm_90 without a GPU and read their resources.

Uses ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` and the
``cuobjdump`` shipped inside the triton wheel for registers, spills (local memory) and SASS
tensor-core instruction counts. Triton's own on-disk cache makes a repeated compile cheap, and
the cuobjdump results are memoised beside it by cubin hash (disassembly costs ~1 s a kernel).
:func:`run_families` compiles in worker processes; ``python -m lowbit check`` (lowbit/cli/check.py)
is the command line.
Must run with TRITON_INTERPRET unset (the interpreter replaces JIT functions).
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .base import SHARED_LIMIT, AotCase, interpreting
from .sass import cuobjdump_path

TARGETS = tuple(SHARED_LIMIT)
_MMA_RE = {
    80: re.compile(r"\b(HMMA|IMMA)\."),
    90: re.compile(r"\b(HGMMA|IGMMA|HMMA|IMMA)\."),
}
_INT_MMA_RE = re.compile(r"\b(IMMA|IGMMA)\.")
_MEMO_VERSION = 1  # bump when what _cubin_stats stores changes
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
    sass: str = field(default="", repr=False)  # cuobjdump -sass text, when compile_case was asked for it

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


def _kernel_name(case: AotCase) -> str:
    return getattr(case.kernel, "__name__", str(case.kernel))


def _memo_dir() -> Path:
    """Where inspected-cubin results are kept: beside Triton's own cache."""
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return Path(root) / "lowbit-aot"


def _inspect_cubin(cubin: bytes) -> tuple[dict, str]:
    with tempfile.TemporaryDirectory() as d:
        f = os.path.join(d, "k.cubin")
        with open(f, "wb") as fh:
            fh.write(cubin)
        res = subprocess.run([cuobjdump_path(), "--dump-resource-usage", f], capture_output=True, text=True, check=True)
        sass = subprocess.run([cuobjdump_path(), "-sass", f], capture_output=True, text=True, check=True).stdout
    m = _RES_RE.search(res.stdout)
    if not m:
        raise RuntimeError(f"cannot parse cuobjdump resource usage: {res.stdout[:200]}")
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}, sass


def _write_atomic(path: Path, data: bytes) -> None:
    """Write-then-rename, so a concurrent reader sees the whole file or none; a failure is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), suffix=".tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _cubin_stats(cubin: bytes, cc: int, want_sass: bool = False) -> tuple[dict, str | None]:
    """Resources and MMA counts of a cubin (and its SASS text when asked), memoised on disk by the
    cubin's hash: disassembly costs ~1 s a kernel."""
    stem = f"v{_MEMO_VERSION}-{hashlib.sha256(cubin).hexdigest()[:40]}-sm{cc}"
    memo, sass_memo = _memo_dir() / f"{stem}.json", _memo_dir() / f"{stem}.sass.gz"
    stats = sass = None
    with contextlib.suppress(OSError, ValueError):
        stats = json.loads(memo.read_text())
    if want_sass:
        with contextlib.suppress(OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError):
            sass = gzip.decompress(sass_memo.read_bytes()).decode()
    if stats is not None and (sass is not None or not want_sass):
        return stats, sass
    res, sass = _inspect_cubin(cubin)
    stats = dict(res, mma=len(_MMA_RE[cc].findall(sass)), int_mma=len(_INT_MMA_RE.findall(sass)))
    _write_atomic(memo, json.dumps(stats).encode())
    _write_atomic(sass_memo, gzip.compress(sass.encode(), compresslevel=6))
    return stats, (sass if want_sass else None)


def compile_case(case: AotCase, cc: int, *, want_sass: bool = False) -> CompileReport:
    """Compile one case for sm_<cc> and fill a CompileReport (errors are captured, not raised);
    `want_sass` also fills ``report.sass`` with the ``cuobjdump -sass`` text."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    if interpreting():
        raise RuntimeError("the compile gate needs TRITON_INTERPRET unset (run it in a separate process)")
    rep = CompileReport(case.family, _kernel_name(case), case.label, cc,
                        expects_tensor_cores=case.expects_tensor_cores, integer_mma=case.integer_mma)
    try:
        attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
        src_cls = ASTSource
        if getattr(case.kernel, "is_gluon", lambda: False)():  # a @gluon.jit kernel (triton >= 3.6)
            from triton.experimental.gluon._runtime import GluonASTSource as src_cls
        src = src_cls(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
        options = {"num_warps": case.config.num_warps, "num_stages": case.config.num_stages, **dict(case.options)}
        ck = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
        res, sass = _cubin_stats(ck.asm["cubin"], cc, want_sass)
    except Exception as e:  # a compile failure is a gate result, reported per case
        rep.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"[:300]
        return rep
    rep.registers = res["registers"]
    rep.spill_bytes = res["local"] + res["stack"]
    rep.shared = max(int(ck.metadata.shared), res["shared"])
    rep.mma = res["mma"]
    rep.int_mma = res["int_mma"]
    rep.sass = sass or ""
    return rep


def _cell(r: CompileReport) -> list[str]:
    status = "ok" if r.ok else "; ".join(r.problems)
    return [r.family, r.kernel, r.label, str(r.cc), str(r.registers), str(r.spill_bytes), str(r.shared),
            str(r.mma), status]


TABLE_COLUMNS = ("family", "kernel", "config", "sm", "regs", "spill", "shared", "mma", "status")


def format_table(reports) -> str:
    """A table: family, kernel, config, target sm, registers, spill bytes, shared bytes, MMA count, status."""
    rows = [_cell(r) for r in reports]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(TABLE_COLUMNS)]
    right = {3, 4, 5, 6, 7}

    def line(cells):
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells[:-1], widths))]
        return " ".join(out) + "  " + cells[-1]

    head = line(list(TABLE_COLUMNS))
    return "\n".join([head, "-" * len(head)] + [line(row) for row in rows])


# Kernels shared by every family that the gate compiles under a family-like name: name -> module with aot_cases()
SHARED_KERNELS = {"lowrank": "lowbit.kernels.lowrank"}  # the unfused low-rank correction


def gate_names() -> list[str]:
    """Every name the gate knows: the implemented families, then the shared kernels."""
    from . import families

    return [f.name for f in families()] + list(SHARED_KERNELS)


def family_cases(names=None):
    """AOT cases of the named families and shared kernels (all of them when None)."""
    import importlib

    from . import families

    fams = [f for f in families() if names is None or f.name in names]
    shared = [s for s in SHARED_KERNELS if names is None or s in names]
    missing = set(names or ()) - {f.name for f in fams} - set(shared)
    if missing:
        raise ValueError(f"unknown kernel families: {sorted(missing)}")
    for fam in fams:
        yield from fam.aot_cases()
    for name in shared:
        yield from importlib.import_module(SHARED_KERNELS[name]).aot_cases()


def _tile_volume(case: AotCase) -> int:
    c = case.config
    return c.block_m * c.block_n * c.block_k * c.num_stages


def select_quick(cases) -> list[AotCase]:
    """A smoke subset: per (family, kernel), the first case and the one with the largest tiles x stages
    (the likeliest to spill or overflow shared memory)."""
    groups: dict = {}
    for case in cases:
        groups.setdefault((case.family, _kernel_name(case)), []).append(case)
    out = []
    for group in groups.values():
        biggest = max(group, key=_tile_volume)
        out.extend([group[0]] if biggest is group[0] else [group[0], biggest])
    return out


# -- parallel compilation: workers rebuild a family's cases and compile (family, index, target) --
_WORKER_CASES: dict = {}


def _compile_remote(family: str, index: int, kernel: str, label: str, cc: int) -> CompileReport:
    cases = _WORKER_CASES.get(family)
    if cases is None:
        cases = _WORKER_CASES[family] = list(family_cases([family]))
    case = cases[index] if index < len(cases) else None
    if case is None or case.label != label:
        return CompileReport(family, kernel, label, cc, error="the family's aot_cases() differ between the "
                             "main process and a worker (source edited during the run, or nondeterministic cases)")
    return compile_case(case, cc)


def run_families(names=None, targets=TARGETS, *, jobs: int = 1, quick: bool = False,
                 progress=None) -> list[CompileReport]:
    """The gate over registered families, using up to `jobs` processes; reports come in case order
    (see :func:`run_tasks` for how the work is shared)."""
    per_family: dict = {}
    tagged = []  # (case, index within its family's aot_cases())
    for case in family_cases(names):
        idx = per_family.get(case.family, 0)
        per_family[case.family] = idx + 1
        tagged.append((case, idx))
    chosen = {id(c) for c in select_quick([c for c, _ in tagged])} if quick else None
    tagged = [(c, i) for c, i in tagged if chosen is None or id(c) in chosen]
    tasks = [(case, idx, cc) for case, idx in tagged for cc in targets]

    def failed(n, e):
        case, _, cc = tasks[n]
        return CompileReport(case.family, _kernel_name(case), case.label, cc,
                             error=f"worker failed: {type(e).__name__}: {e}"[:300])

    return run_tasks(len(tasks), lambda n: compile_case(tasks[n][0], tasks[n][2]),
                     lambda n: (_compile_remote, (tasks[n][0].family, tasks[n][1], _kernel_name(tasks[n][0]),
                                                  tasks[n][0].label, tasks[n][2])),
                     failed, jobs=jobs, progress=progress)


_SLOW_COMPILE_S = 0.5  # a Triton cache hit takes milliseconds; a real compile, seconds


def run_tasks(count: int, local, remote, failed, *, jobs: int = 1, progress=None) -> list:
    """Results of tasks 0..count-1, computed in this process and, when they are slow, in workers.

    ``local(n)`` computes task n here; ``remote(n)`` returns ``(function, args)``, a picklable
    module-level function and arguments that compute it in a spawned worker; ``failed(n, exc)``
    is the result of a task whose worker crashed. ``progress(done, count, result)`` is called as
    results come in. Tasks start in this process; only when one is slow (a compile not in
    Triton's cache) does a pool of ``jobs - 1`` workers take tasks from the front of the remaining
    list while this process keeps taking them from the back, so a fully cached run never pays
    for spawning.
    """
    results: list = [None] * count
    lock = threading.Lock()
    done = [0]

    def finish(n, res):
        with lock:
            results[n] = res
            done[0] += 1
            if progress:
                progress(done[0], count, res)

    todo = list(range(count))
    while todo:  # serial while tasks are fast (the first one also pays Triton's start-up)
        n = todo.pop(0)
        t0 = time.monotonic()
        finish(n, local(n))
        if jobs > 1 and n > 0 and time.monotonic() - t0 > _SLOW_COMPILE_S and len(todo) > 2:
            break
    if todo:
        _run_pool(todo, jobs - 1, local, remote, failed, finish)
    return results


def _run_pool(todo, workers, local, remote, failed, finish) -> None:
    """Workers compute `todo` from the front while this process computes from the back."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold threads
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {}
        for n in todo:
            fn, args = remote(n)
            fut = pool.submit(fn, *args)
            fut.add_done_callback(lambda f, n=n: _collect(f, n, failed, finish))
            futures[n] = fut
        for n in reversed(todo):
            if not futures[n].cancel():  # the workers got here first
                break
            finish(n, local(n))
        wait([f for f in futures.values() if not f.cancelled()])


def _collect(fut, n, failed, finish) -> None:
    if fut.cancelled():
        return
    try:
        res = fut.result()
    except Exception as e:  # a crashed worker fails its task, not the whole run
        res = failed(n, e)
    finish(n, res)


def default_triton_cache() -> Path:
    """<checkout>/.triton-cache in a source checkout (as scripts/test.sh uses), else ~/.cache/lowbit/triton."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "lowbit").is_dir() and os.access(root, os.W_OK):
        return root / ".triton-cache"
    return Path.home() / ".cache" / "lowbit" / "triton"


def prepare_environment() -> None:
    """Before Triton compiles: share one compile cache per checkout; state Triton's FP-fusion default."""
    os.environ.setdefault("TRITON_CACHE_DIR", str(default_triton_cache()))
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
