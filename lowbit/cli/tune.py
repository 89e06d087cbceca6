"""python -m lowbit tune: time every config of each kernel's search space on this GPU and cache the winners.

Each (scheme, N x K, M bucket, path) is tuned with random weights of that shape; the fastest
config whose output matches the heuristic config's is merged into the user cache
($LOWBIT_CACHE_DIR or ~/.cache/lowbit/autotune-<gpu>.json) after every key, so an
interrupted run keeps what it measured. ``--dry-run`` lists the plan and needs no GPU.
"""
from __future__ import annotations

import os
import sys
import time
from argparse import ArgumentTypeError
from dataclasses import dataclass
from pathlib import Path

from .args import parse_ms, parse_shapes

DEFAULT_SHAPES = "4096x4096,11008x4096,4096x11008"
DEFAULT_SCHEMES = "int4"
DEFAULT_M = "1,4,16,64,256,1024"
_DTYPES = ("float16", "bfloat16", "float32")


def add_arguments(p) -> None:
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help=f"N x K weight shapes, comma separated (default {DEFAULT_SHAPES})")
    p.add_argument("--schemes", default=DEFAULT_SCHEMES, help=f"schemes, comma separated (default {DEFAULT_SCHEMES})")
    p.add_argument("--m", default=DEFAULT_M, help=f"batch sizes M, comma separated; tuned per M bucket (default {DEFAULT_M})")
    p.add_argument("--dtype", default="float16", choices=_DTYPES, help="activation dtype (default float16)")
    p.add_argument("--group-size", type=int, default=None, help="group size of grouped schemes (default: the scheme's)")
    p.add_argument("--path", default="auto", choices=("auto", "gemv", "gemm", "both"),
                   help="kernel path to tune: the one dispatch picks for each M (auto), or gemv/gemm/both")
    p.add_argument("--cache-file", default=None, help="write here instead of the user cache file")
    p.add_argument("--dry-run", action="store_true", help="list what would be tuned and exit (no GPU needed)")


@dataclass(frozen=True)
class Job:
    """One cache key to tune."""

    family: object
    scheme: str
    n: int
    k: int
    options: tuple  # quantizer keyword options, as sorted pairs
    path: object
    m: int  # the M bucket, also the M tuned with


def plan(args) -> tuple[list[Job], list[str]]:
    """The jobs to run (deduplicated by cache key) and notes about skipped combinations."""
    import torch

    from ..formats import QuantizedWeight, Scheme, dim_bucket, make_spec
    from ..kernels import KernelPath, family_for

    shapes = parse_shapes(args.shapes) if isinstance(args.shapes, str) else args.shapes
    ms = parse_ms(args.m) if isinstance(args.m, str) else args.m
    jobs, notes, seen = [], [], set()
    for name in [s.strip() for s in args.schemes.split(",") if s.strip()]:
        scheme = Scheme.parse(name)
        fam = family_for(scheme)
        spec = make_spec(scheme)
        opts = {}
        if hasattr(spec, "group_size"):
            opts["group_size"] = spec.group_size if args.group_size is None else args.group_size
            make_spec(scheme, **opts)  # validates the group size
        for n, k in shapes:
            gs = opts.get("group_size", -1)
            if gs > 0 and k % gs:
                notes.append(f"skipped {scheme.value} {n}x{k}: K is not divisible by group_size={gs}")
                continue
            for m in ms:
                bucket = dim_bucket(m)
                auto = fam.choose_path(bucket, QuantizedWeight.empty(scheme, (n, k), **opts), getattr(torch, args.dtype))
                paths = {"auto": [auto], "gemv": [KernelPath.GEMV], "gemm": [KernelPath.GEMM],
                         "both": [KernelPath.GEMV, KernelPath.GEMM]}[args.path]
                for path in paths:
                    job = Job(fam, scheme.value, n, k, tuple(sorted(opts.items())), path, bucket)
                    ident = (fam.name, job.scheme, n, k, job.options, path, bucket)
                    if ident not in seen:
                        seen.add(ident)
                        jobs.append(job)
    return jobs, notes


def _job_label(j: Job) -> str:
    opts = "".join(f" g{v}" for key, v in j.options if key == "group_size")
    return f"{j.family.name}/{j.scheme} {j.n}x{j.k}{opts} {j.path.value} M<={j.m}"


def _no_gpu_reason() -> str | None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "TRITON_INTERPRET is set: tuning times real kernels, unset it and run on a CUDA GPU"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU found: autotuning needs one (use --dry-run to list the plan)"
    return None


def _weight(job: Job, cache: dict):
    import torch

    from .. import reference

    key = (job.scheme, job.n, job.k, job.options)
    if key not in cache:
        cache.clear()  # keep one weight alive at a time
        gen = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(job.n, job.k, generator=gen, device="cuda") * 0.02
        opts = dict(job.options)
        if job.scheme.startswith(("lut", "sq")):
            opts["iters"] = 2  # k-means quality does not matter for timing
        cache[key] = reference.quantize_weight(w, job.scheme, **opts)
    return cache[key]


def _summary(rows) -> str:
    head = ("key", "best config", "us", "heuristic us", "speedup")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [fmt.format(*r) for r in rows])


def run(args) -> int:
    import torch

    try:
        jobs, notes = plan(args)
    except (ValueError, TypeError, ArgumentTypeError) as e:
        print(f"lowbit tune: {e}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"lowbit tune: {note}", file=sys.stderr)
    dtype = getattr(torch, args.dtype)
    if args.dry_run:
        print(f"{len(jobs)} key(s) to tune, activations {args.dtype}:")
        for j in jobs:
            print(f"  {_job_label(j)}  ({len(j.family.search_space(j.path, dtype=dtype))} configs before pruning)")
        return 0
    reason = _no_gpu_reason()
    if reason:
        print(f"lowbit tune: {reason}", file=sys.stderr)
        return 2
    from ..autotune import cache
    from ..autotune.tuner import tune

    gpu = cache.gpu_info()
    target = Path(args.cache_file) if args.cache_file else cache.user_path(gpu)
    print(f"lowbit tune: {len(jobs)} key(s) on {gpu.name} (cc {gpu.cc}, triton {gpu.triton}) -> {target}",
          file=sys.stderr)
    rows, failed, weights = [], 0, {}
    t0 = time.monotonic()
    for i, job in enumerate(jobs, 1):
        label = _job_label(job)

        def bar(j, n, trial, i=i, label=label):
            filled = int(20 * j / n)
            sys.stderr.write(f"\r[{i}/{len(jobs)}] {label} [{'#' * filled}{'.' * (20 - filled)}] {j}/{n}")
            sys.stderr.flush()

        try:
            qw = _weight(job, weights)
            res = tune(job.family, job.path, qw, job.m, dtype, on_trial=bar)
            cache.record([res], gpu, target)
        except Exception as e:  # one key failing does not stop the others
            failed += 1
            sys.stderr.write(f"\r[{i}/{len(jobs)}] {label}: FAILED {type(e).__name__}: {e}\n")
            continue
        sp = res.speedup
        sys.stderr.write(f"\r[{i}/{len(jobs)}] {label}: {res.best_us:.1f} us"
                         f"{f' ({sp:.2f}x vs heuristic)' if sp else ''}, {len(res.rejected)} rejected"
                         f"{' ' * 20}\n")
        rows.append((res.key.label(), res.best.label(), f"{res.best_us:.2f}",
                     f"{res.heuristic_us:.2f}" if res.heuristic_us else "-", f"{sp:.2f}x" if sp else "-"))
    print(_summary(rows))
    print(f"{len(rows)} key(s) tuned, {failed} failed, in {time.monotonic() - t0:.0f}s; cache: {target}")
    return 1 if failed else 0
