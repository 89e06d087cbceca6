"""Benchmark the ternary (W1.58A8, W1.58A16) and binary kernels against F.linear fp16 and torch._int_mm.

    python perf/bench_ternary.py                                   # DESIGN.md shapes x batch sizes
    python perf/bench_ternary.py --shapes 8192x8192 --ms 1,16,4096 --schemes ternary

Needs a CUDA GPU; on a CPU-only machine it prints why and exits 0. For each shape and M it times:
- F.linear with an fp16 weight (cuBLAS, the baseline);
- torch._int_mm, int8 x int8 -> int32, where it applies (M > 16, N and K multiples of 8). This
  is the bare integer GEMM of a W8A8 layer, with no activation quantization and no rescale: a
  reference point for the A8 GEMM path, not a full layer;
- lowbit's default dispatch for each scheme, and both forced paths for ternary (GEMV only at
  M <= 16).

Reported per row: median, p20 and p80 in us; CUDA-graph replay time at M <= 16; effective GB/s
(packed weights + metadata + x + y); TFLOP/s (2*M*N*K per call); speedup over fp16. Weights and
activations rotate over enough copies that L2 never holds the next call's data.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import os
import re
import subprocess
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

DESIGN_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (1024, 4096),
                 (8192, 8192), (384, 384), (1536, 384), (384, 1536))
DESIGN_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
SCHEMES = ("ternary", "ternary_a16", "binary")
GRAPH_MAX_M = 16
COLUMNS = ("gpu", "torch", "triton", "commit", "scheme", "N", "K", "M", "provider", "median_us", "p20_us", "p80_us",
           "graph_us", "gbps", "tflops", "speedup_vs_fp16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=None, help="comma list of NxK (default: the DESIGN.md shapes)")
    p.add_argument("--ms", default=None, help="comma list of batch sizes (default: the DESIGN.md list)")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="comma list out of " + ", ".join(SCHEMES))
    p.add_argument("--no-graph", action="store_true", help="skip CUDA-graph replay timings")
    p.add_argument("--csv", default=None, help="output CSV (default perf/results/<gpu>/<date>-<commit>-ternary.csv)")
    return p.parse_args(argv)


def _shapes(text):
    if not text:
        return DESIGN_SHAPES
    return tuple(tuple(int(v) for v in s.lower().split("x")) for s in text.split(","))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _int_mm_applies(m: int, n: int, k: int) -> bool:
    return m > 16 and n % 8 == 0 and k % 8 == 0


def bench_shape(n, k, ms, schemes, args, rows, meta):
    """Time every provider for one weight shape and append result rows."""
    import torch.nn.functional as F

    import lowbit
    from lowbit.perf.bench import BenchSettings, l2_cache_bytes, rotation_count, time_calls, time_graph

    dev = torch.device("cuda")
    settings = BenchSettings()
    w = torch.randn(n, k, device=dev) * 0.02
    w16 = w.half()
    w8 = torch.randint(-127, 128, (k, n), device=dev, dtype=torch.int8)  # [K, N] operand of _int_mm
    qws = {s: lowbit.quantize_weight(w, s) for s in schemes}
    del w
    l2 = l2_cache_bytes(dev)

    def copies(make, nbytes):
        return [make() for _ in range(rotation_count(nbytes, l2, cap=16))]

    def clone_qw(qw):
        return lowbit.QuantizedWeight(qw.scheme, qw.spec, qw.shape, {a: t.clone() for a, t in qw.tensors.items()})

    for m in ms:
        act16 = m * k * 2 + m * n * 2
        providers = []  # (scheme, provider, weight bytes + activation bytes, calls)
        w16s = copies(lambda: w16.clone(), w16.numel() * 2 + act16)
        smallest = min([qw.nbytes for qw in qws.values()] + [w16.numel() * 2])
        xs = [torch.randn(m, k, device=dev, dtype=torch.float16)
              for _ in range(max(len(w16s), rotation_count(smallest + act16, l2, cap=16), 2))]
        providers.append(("fp16", "torch-fp16", w16.numel() * 2 + act16,
                          [lambda x=x, ww=ww: F.linear(x, ww) for x, ww in zip(xs, itertools.cycle(w16s))]))
        if _int_mm_applies(m, n, k):
            nb = n * k + m * k + m * n * 4
            w8s = copies(lambda: w8.clone(), nb)
            x8s = [torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8) for _ in range(len(w8s))]
            providers.append(("int8", "torch-int_mm", nb, [lambda x=x, ww=ww: torch._int_mm(x, ww)
                                                            for x, ww in zip(x8s, w8s)]))
        for scheme, qw in qws.items():
            nb = qw.nbytes + act16
            qcopies = [qw] + [clone_qw(qw) for _ in range(rotation_count(nb, l2, cap=16) - 1)]
            paths = [None]
            if scheme == "ternary":
                paths += ["gemm"] + (["gemv"] if m <= GRAPH_MAX_M else [])
            for path in paths:
                calls = [lambda x=x, q=q, p=path: lowbit.linear(x, q, path=p)
                         for x, q in zip(xs, itertools.cycle(qcopies))]
                providers.append((scheme, f"lowbit-{path or 'auto'}", nb, calls))
        base_us = None
        for scheme, name, nbytes, calls in providers:
            calls[0]()  # compile and warm up outside the timed region
            t = time_calls(calls, dev, settings)
            graph_us = float("nan")
            if m <= GRAPH_MAX_M and not args.no_graph:
                try:
                    graph_us = time_graph(calls, dev, settings).median_us
                except RuntimeError as e:
                    print(f"  (graph capture failed for {name}: {e})", file=sys.stderr)
            base_us = base_us or t.median_us
            sec = t.median_us * 1e-6
            rows.append(dict(meta, scheme=scheme, N=n, K=k, M=m, provider=name, median_us=round(t.median_us, 3),
                             p20_us=round(t.p20_us, 3), p80_us=round(t.p80_us, 3), graph_us=round(graph_us, 3),
                             gbps=round(nbytes / sec / 1e9, 1), tflops=round(2 * m * n * k / sec / 1e12, 3),
                             speedup_vs_fp16=round(base_us / t.median_us, 3)))
            r = rows[-1]
            print(f"{n:>6}x{k:<6} M={m:<5} {scheme:<12} {name:<13} {r['median_us']:>10.2f} us "
                  f"[{r['p20_us']:.2f}, {r['p80_us']:.2f}]  graph {r['graph_us']:>8.2f} us  "
                  f"{r['gbps']:>8.1f} GB/s  {r['tflops']:>8.2f} TFLOP/s  x{r['speedup_vs_fp16']:.2f}", flush=True)
        del providers, xs, w16s


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_ternary: no CUDA GPU is available, so there is nothing to time "
              "(the kernels' CPU interpreter path is for correctness tests only).")
        return 0
    import triton

    schemes = tuple(s for s in args.schemes.split(",") if s)
    unknown = sorted(set(schemes) - set(SCHEMES))
    if unknown:
        print(f"bench_ternary: unknown scheme(s) {unknown}; choose from {', '.join(SCHEMES)}", file=sys.stderr)
        return 2
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "commit": _commit()}
    print(f"# {meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  commit {meta['commit']}")
    ms = DESIGN_MS if not args.ms else tuple(int(v) for v in args.ms.split(","))
    rows = []
    for n, k in _shapes(args.shapes):
        bench_shape(n, k, ms, schemes, args, rows, meta)
        torch.cuda.empty_cache()
    path = args.csv
    if path is None:
        slug = re.sub(r"[^a-z0-9]+", "-", meta["gpu"].lower()).strip("-")
        day = datetime.date.today().isoformat()
        path = os.path.join(ROOT, "perf", "results", slug, f"{day}-{meta['commit']}-ternary.csv")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
