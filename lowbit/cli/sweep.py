"""python -m lowbit sweep: time the kernels against F.linear fp16/bf16 and peers over shapes x M x schemes.

On a GPU the defaults are the full benchmark grid (lowbit.perf.BENCH_SHAPES x BENCH_MS x every
scheme). Without one, a tiny Triton-interpreter sweep checks the pipeline: its "gpu" column says
cpu-interpreter, it runs no peers, its printed table holds lowbit's rows only under a banner that
says they are not speed figures, and it writes to a temp directory unless --out is given.
Results: <out>/<gpu-slug>/<date>-<commit>.csv plus .json and PNG plots.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from ..formats import VALID_GROUP_SIZES
from .args import parse_ms, parse_schemes, parse_shapes

_DTYPES = ("fp16", "bf16", "fp32")
_PATHS = ("auto", "gemv", "gemm")


def parse_peers(text: str) -> tuple[str, ...]:
    """'gemlite,torchao' -> the named peers; 'none' -> ()."""
    from ..perf.runner import PEER_NAMES

    if text.strip().lower() == "none":
        return ()
    names = tuple(p.strip().lower() for p in text.split(","))
    bad = [p for p in names if p not in PEER_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {bad}; expected some of {', '.join(PEER_NAMES)} or none")
    return names


def parse_paths(text: str) -> tuple[str | None, ...]:
    """'auto,gemv' -> (None, 'gemv'): kernel paths to time ('auto' lets M choose)."""
    names = tuple(p.strip().lower() for p in text.split(","))
    bad = [p for p in names if p not in _PATHS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown path(s) {bad}; expected some of {', '.join(_PATHS)}")
    return tuple(None if p == "auto" else p for p in names)


def _grid_text(grid: dict) -> str:
    shapes = ",".join(f"{n}x{k}" for n, k in grid["shapes"])
    return f"{shapes} x M {','.join(map(str, grid['ms']))} x {','.join(grid['schemes'])}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..perf.runner import ALL_SCHEMES, BENCH_MS, BENCH_SHAPES, CPU_DEFAULT, PEER_NAMES, QUICK_GPU

    parser.add_argument("--shapes", type=parse_shapes, default=None,
                        help=f"comma-separated NxK weight shapes (default on a GPU: the {len(BENCH_SHAPES)} benchmark "
                             "shapes listed in perf/README.md; without a GPU: "
                             f"{','.join(f'{n}x{k}' for n, k in CPU_DEFAULT['shapes'])})")
    parser.add_argument("--m", type=parse_ms, default=None,
                        help=f"comma-separated batch sizes M (default on a GPU: {','.join(map(str, BENCH_MS))}; "
                             f"without a GPU: {','.join(map(str, CPU_DEFAULT['ms']))})")
    parser.add_argument("--schemes", type=parse_schemes, default=None,
                        help=f"comma-separated lowbit schemes or 'all' (default on a GPU: all {len(ALL_SCHEMES)}; "
                             f"without a GPU: {','.join(CPU_DEFAULT['schemes'])})")
    parser.add_argument("--out", default=None,
                        help="results root; files go to <out>/<gpu-slug>/ (default: perf/results on a GPU, "
                             "a temp directory on the CPU)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a small grid on a GPU: {_grid_text(QUICK_GPU)}. Without a GPU every run is already "
                             f"the CPU grid ({_grid_text(CPU_DEFAULT)}); --shapes/--m/--schemes override either")
    parser.add_argument("--dtype", choices=_DTYPES, default="fp16", help="activation dtype of lowbit rows")
    parser.add_argument("--group-size", type=int, choices=VALID_GROUP_SIZES, default=128,
                        help="group size of int1..int8 schemes (default 128)")
    parser.add_argument("--paths", type=parse_paths, default=(None,),
                        help="kernel paths: auto (M bucket decides), gemv, gemm; comma-separated")
    parser.add_argument("--peers", type=parse_peers, default=None,
                        help=f"peer providers: {','.join(PEER_NAMES)} (default on a GPU: all that are installed; "
                             "without a GPU: none) or none")
    parser.add_argument("--graph-max-m", type=int, default=16,
                        help="also time under CUDA-graph replay for M <= this (default 16)")
    parser.add_argument("--no-graph", action="store_true", help="skip CUDA-graph rows")
    parser.add_argument("--warmup-ms", type=int, default=25, help="do_bench warmup (ms)")
    parser.add_argument("--rep-ms", type=int, default=100, help="do_bench measurement time (ms)")
    parser.add_argument("--cpu-reps", type=int, default=3, help="timed calls per case on the CPU")
    parser.add_argument("--no-check", action="store_true", help="skip the rel_err check against the fp64 oracle")
    parser.add_argument("--no-plots", action="store_true", help="write the CSV and JSON only")
    parser.add_argument("--seed", type=int, default=0)


def _resolve(args, cuda: bool) -> dict:
    from ..perf.runner import ALL_SCHEMES, CPU_DEFAULT, BENCH_MS, BENCH_SHAPES, PEER_NAMES, QUICK_GPU

    base = (QUICK_GPU if cuda else CPU_DEFAULT) if (args.quick or not cuda) else \
        {"shapes": BENCH_SHAPES, "ms": BENCH_MS, "schemes": ALL_SCHEMES}
    default_peers = PEER_NAMES if cuda else ()  # peers on the interpreter would time CPU libraries, not kernels
    return {"shapes": args.shapes or base["shapes"], "ms": args.m or base["ms"],
            "schemes": args.schemes or base["schemes"],
            "peers": default_peers if args.peers is None else args.peers}


def run(args) -> int:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernel modules are first imported
    from ..perf import BenchSettings, SweepConfig, headline, run_sweep, write_results

    grid = _resolve(args, cuda)
    if not cuda and any(n * k > 1 << 20 for n, k in grid["shapes"]):
        print("lowbit sweep: no GPU; large shapes under the Triton interpreter will be very slow", file=sys.stderr)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    cfg = SweepConfig(shapes=tuple(grid["shapes"]), ms=tuple(grid["ms"]), schemes=tuple(grid["schemes"]),
                      device=torch.device("cuda" if cuda else "cpu"), act_dtype=dtype, group_size=args.group_size,
                      paths=tuple(args.paths), peers=tuple(grid["peers"]),
                      graph_max_m=0 if args.no_graph else args.graph_max_m, check=not args.no_check,
                      settings=BenchSettings(warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, cpu_reps=args.cpu_reps),
                      seed=args.seed)
    out = args.out or ("perf/results" if cuda else os.path.join(tempfile.gettempdir(), "lowbit-sweep"))
    df, info = run_sweep(cfg)
    paths = write_results(df, info, out, plots=not args.no_plots)
    shown = df if cuda else df[df["provider"].str.startswith("lowbit")]
    table = headline(shown, ms=tuple(m for m in (1, 16, 4096) if m in cfg.ms) or cfg.ms[:3])
    if not table.empty:
        if cuda:
            print("speedup vs fp16 F.linear (geometric mean over shapes):")
        else:
            print("CPU-INTERPRETER ARTEFACTS, NOT SPEED: lowbit's rows only, timed in Triton's CPU interpreter against "
                  "torch's CPU F.linear (they check the pipeline end to end; GPU numbers come from a GPU run):")
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    notes = df[df["median_us"].isna()]
    if len(notes):
        print(f"{len(notes)} row(s) without timings (see the note column), e.g.:")
        for r in notes.head(8).itertuples():
            print(f"  {r.provider} {r.scheme}: {r.note}")
    if not cuda:
        print("(CPU / Triton interpreter timings: they test the pipeline, not GPU speed -- do not commit them)")
    print(f"wrote {paths['csv']}")
    print(f"wrote {paths['json']}")
    for p in paths["plots"]:
        print(f"wrote {p}")
    return 0
