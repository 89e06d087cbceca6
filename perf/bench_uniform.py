"""Benchmark the uniform int1..int8 kernels (GEMV and GEMM paths) against F.linear in fp16.

    python perf/bench_uniform.py                      # int4 g128, DESIGN.md shapes x batch sizes
    python perf/bench_uniform.py --bits 2 --shapes 8192x8192 --ms 1,16,4096 --csv out.csv

Needs a CUDA GPU; on a CPU-only machine it prints why and exits 0. For each shape and M it times
F.linear (fp16 weight), lowbit's default dispatch and each forced path (GEMV only for M <= 16),
and reports the median/p20/p80 in us, effective GB/s (packed weights + metadata + x + y),
TFLOP/s, speedup over fp16, the CUDA-graph replay time at M <= 16 and the peak extra memory
one call allocates (torch.cuda.max_memory_allocated delta).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DESIGN_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (1024, 4096),
                 (8192, 8192), (384, 384), (1536, 384), (384, 1536))
DESIGN_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
GRAPH_MAX_M = 16
COLUMNS = ("gpu", "torch", "triton", "scheme", "group_size", "N", "K", "M", "provider", "median_us", "p20_us",
           "p80_us", "graph_us", "gbps", "tflops", "speedup_vs_fp16", "peak_alloc_bytes")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, default=4, choices=(1, 2, 3, 4, 8))
    p.add_argument("--group-size", type=int, default=128, choices=(32, 64, 128, -1))
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--shapes", default=None, help="comma list of NxK (default: the DESIGN.md shapes)")
    p.add_argument("--ms", default=None, help="comma list of batch sizes (default: the DESIGN.md list)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"))
    p.add_argument("--no-graph", action="store_true", help="skip CUDA-graph replay timings")
    p.add_argument("--csv", default=None, help="write the rows to this CSV file")
    return p.parse_args(argv)


def _shapes(text):
    if not text:
        return DESIGN_SHAPES
    return tuple(tuple(int(v) for v in s.lower().split("x")) for s in text.split(","))


def _ms(text):
    return DESIGN_MS if not text else tuple(int(v) for v in text.split(","))


def peak_extra_bytes(fn) -> int:
    """Bytes one call allocates beyond what was allocated before it (its output included)."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def bench_shape(n, k, ms, args, dtype, rows, meta):
    """Time every provider for one weight shape and append result rows."""
    import torch.nn.functional as F

    import lowbit
    from lowbit.perf.bench import BenchSettings, l2_cache_bytes, rotation_count, time_calls, time_graph

    dev = torch.device("cuda")
    settings = BenchSettings()
    w = torch.randn(n, k, device=dev) * 0.02
    qw = lowbit.quantize_weight(w, f"int{args.bits}", group_size=args.group_size, symmetric=args.symmetric)
    w16 = w.to(dtype)
    del w
    l2 = l2_cache_bytes(dev)
    for m in ms:
        act = m * k * w16.element_size() + m * n * w16.element_size()
        # enough weight copies that the one in use is not still in L2 from the previous call
        reps_q = rotation_count(qw.nbytes + act, l2, cap=16)
        reps_f = rotation_count(w16.numel() * w16.element_size() + act, l2, cap=16)
        qws = [qw] + [lowbit.QuantizedWeight(qw.scheme, qw.spec, qw.shape,
                                             {key: t.clone() for key, t in qw.tensors.items()})
                      for _ in range(reps_q - 1)]
        w16s = [w16] + [w16.clone() for _ in range(reps_f - 1)]
        xs = [torch.randn(m, k, device=dev, dtype=dtype) for _ in range(max(reps_q, reps_f))]
        providers = [("fp16" if dtype == torch.float16 else "bf16", [lambda x=x, w=ww: F.linear(x, w)
                                                                     for x, ww in zip(xs, w16s * len(xs))])]
        paths = [None, "gemm"] + (["gemv"] if m <= GRAPH_MAX_M else [])
        for path in paths:
            name = f"lowbit-{path or 'auto'}"
            providers.append((name, [lambda x=x, q=q, p=path: lowbit.linear(x, q, path=p)
                                     for x, q in zip(xs, qws * len(xs))]))
        base_us = None
        for name, calls in providers:
            calls[0]()  # compile / warm up outside the timed region
            t = time_calls(calls, dev, settings)
            graph_us = float("nan")
            if m <= GRAPH_MAX_M and not args.no_graph:
                try:
                    graph_us = time_graph(calls, dev, settings).median_us
                except RuntimeError as e:
                    print(f"  (graph capture failed for {name}: {e})", file=sys.stderr)
            wbytes = w16.numel() * w16.element_size() if name in ("fp16", "bf16") else qw.nbytes
            nbytes = wbytes + act
            sec = t.median_us * 1e-6
            if base_us is None:
                base_us = t.median_us
            rows.append(dict(meta, scheme=f"int{args.bits}", group_size=args.group_size, N=n, K=k, M=m,
                             provider=name, median_us=round(t.median_us, 3), p20_us=round(t.p20_us, 3),
                             p80_us=round(t.p80_us, 3), graph_us=round(graph_us, 3),
                             gbps=round(nbytes / sec / 1e9, 1), tflops=round(2 * m * n * k / sec / 1e12, 3),
                             speedup_vs_fp16=round(base_us / t.median_us, 3),
                             peak_alloc_bytes=peak_extra_bytes(calls[0])))
            r = rows[-1]
            print(f"{n:>6}x{k:<6} M={m:<5} {name:<13} {r['median_us']:>10.2f} us  [{r['p20_us']:.2f}, "
                  f"{r['p80_us']:.2f}]  graph {r['graph_us']:>8.2f} us  {r['gbps']:>8.1f} GB/s  "
                  f"{r['tflops']:>8.2f} TFLOP/s  x{r['speedup_vs_fp16']:.2f}  +{r['peak_alloc_bytes']} B",
                  flush=True)
        del qws, w16s, xs, providers


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_uniform: no CUDA GPU is available, so there is nothing to time "
              "(the kernels' CPU interpreter path is for correctness tests only).")
        return 0
    import triton

    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    print(f"# {meta['gpu']}  torch {meta['torch']}  triton {meta['triton']}  int{args.bits} "
          f"g{args.group_size} {'sym' if args.symmetric else 'asym'} {args.dtype}")
    rows = []
    for n, k in _shapes(args.shapes):
        bench_shape(n, k, _ms(args.ms), args, dtype, rows, meta)
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=COLUMNS)
            wr.writeheader()
            wr.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
