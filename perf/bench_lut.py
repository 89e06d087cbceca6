"""Benchmark the lut family (lut4, nf4, lut3, sq3) against F.linear in fp16 on the DESIGN.md shapes.

GPU only: on a machine without CUDA it prints a note and exits 0. Weights are synthetic (random
codes, tables, absmax and 0.45% CSR outliers at random positions): speed does not depend on the
values, and the reference k-means would take minutes at these sizes. Timing follows DESIGN.md:
``do_bench`` medians (p20/p80 too), buffers rotated so the working set exceeds L2, and at
M <= 16 also CUDA-graph replay. Prints a table and the sq3/lut3 time ratio at M = 1, and writes
perf/results/<gpu>/<date>-<commit>.csv.

    python perf/bench_lut.py [--schemes lut4,sq3] [--shapes 4096x4096] [--m 1,16] [--quick]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (1024, 4096), (8192, 8192),
          (384, 384), (1536, 384), (384, 1536)]
MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096]
SCHEMES = ["lut4", "nf4", "lut3", "sq3"]
OUTLIER_FRACTION = 0.0045
L2_BYTES = 50 * 2 ** 20  # H100; rotation aims at 4x this
COLUMNS = ["gpu", "torch", "triton", "commit", "scheme", "N", "K", "M", "provider", "median_us", "p20_us", "p80_us",
           "gbps", "tflops", "speedup_vs_fp16"]


def synthetic_weight(scheme: str, n: int, k: int, device: str, seed: int = 0):
    """A valid QuantizedWeight of `scheme` with random contents (no k-means)."""
    from lowbit.formats import LUTSpec, NF4Spec, QuantizedWeight, Scheme, code_bits
    from lowbit.reference.packing import pack_codes

    g = torch.Generator(device=device).manual_seed(seed)
    s = Scheme.parse(scheme)
    bits = code_bits(s)
    codes = torch.randint(0, 2 ** bits, (n, k), generator=g, device=device, dtype=torch.int32)
    tensors = {"qweight": pack_codes(codes, bits)}
    del codes
    if s is Scheme.NF4:
        tensors["absmax"] = (torch.rand(k // 64, n, generator=g, device=device) * 0.1 + 0.01).half()
        return QuantizedWeight(s, NF4Spec(64), (n, k), tensors)
    tensors["lut"] = (torch.randn(n, 2 ** bits, generator=g, device=device) * 0.05).half()
    if s in (Scheme.SQ3, Scheme.SQ4):
        nnz = max(1, round(OUTLIER_FRACTION * n * k))
        flat = torch.randperm(n * k, generator=g, device=device)[:nnz].sort().values
        rows, cols = flat // k, flat % k
        row_ptr = torch.zeros(n + 1, dtype=torch.int64, device=device)
        row_ptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
        tensors.update(row_ptr=row_ptr.to(torch.int32), col_idx=cols.to(torch.int32),
                       values=(torch.randn(nnz, generator=g, device=device) * 0.5).half())
        return QuantizedWeight(s, LUTSpec(bits, OUTLIER_FRACTION), (n, k), tensors)
    return QuantizedWeight(s, LUTSpec(bits), (n, k), tensors)


def clone_weight(qw):
    """An independent copy (own storage) of a QuantizedWeight."""
    from lowbit.formats import QuantizedWeight

    return QuantizedWeight(qw.scheme, qw.spec, qw.shape, {k: v.clone() for k, v in qw.tensors.items()})


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), for the % column."""
    from triton.testing import do_bench

    a = torch.empty(2 ** 28, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = do_bench(lambda: b.copy_(a), return_mode="median")
    return 2 * a.numel() / (ms * 1e-3) / 1e9


def _time(fn_of_i, copies: int, graph: bool):
    """(median, p20, p80) microseconds of one call, cycling through `copies` buffer sets."""
    from triton.testing import do_bench, do_bench_cudagraph

    state = {"i": 0}

    def step():
        fn_of_i(state["i"] % copies)
        state["i"] += 1

    if not graph:
        return [t * 1e3 for t in do_bench(step, quantiles=[0.5, 0.2, 0.8])]

    def all_copies():  # one graph replays every copy once; divide by copies
        for i in range(copies):
            fn_of_i(i)

    return [t * 1e3 / copies for t in do_bench_cudagraph(all_copies, quantiles=[0.5, 0.2, 0.8])]


def bench(schemes, shapes, ms, quick=False):
    import triton
    import torch.nn.functional as F

    import lowbit

    gpu = torch.cuda.get_device_name()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    bw = copy_bandwidth()
    print(f"{gpu}: copy bandwidth {bw:.0f} GB/s; torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for n, k in shapes:
        w16 = (torch.randn(n, k, device="cuda") * 0.05).half()
        qws = {s: synthetic_weight(s, n, k, "cuda") for s in schemes}
        per = {s: qws[s].nbytes for s in schemes}
        per["fp16"] = w16.numel() * 2
        # rotate weight copies so that the providers' working sets exceed L2 (weights would stay cached)
        copies = max(1, min(4 if quick else 64, -(-4 * L2_BYTES // min(per.values()))))
        wsets = {s: [qws[s]] + [clone_weight(qws[s]) for _ in range(1, copies)] for s in schemes}
        w16s = [w16] + [w16.clone() for _ in range(1, copies)]
        for m in ms:
            io = (m * k + m * n) * 2
            xs = [torch.randn(m, k, device="cuda", dtype=torch.float16) for _ in range(copies)]
            for graph in ([False, True] if m <= 16 else [False]):
                suffix = "_graph" if graph else ""
                ref_t = _time(lambda i: F.linear(xs[i], w16s[i]), copies, graph)
                results = {"fp16": ref_t}
                for s in schemes:
                    lowbit.linear(xs[0], wsets[s][0])  # compile outside the timed region
                    results[s] = _time(lambda i, s=s: lowbit.linear(xs[i], wsets[s][i]), copies, graph)
                for name, (med, p20, p80) in results.items():
                    nbytes = per[name] + io
                    gbps = nbytes / (med * 1e-6) / 1e9
                    tflops = 2 * m * n * k / (med * 1e-6) / 1e12
                    rows.append(dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, commit=commit,
                                     scheme=name, N=n, K=k, M=m,
                                     provider=("torch_fp16" if name == "fp16" else "lowbit") + suffix,
                                     median_us=round(med, 2), p20_us=round(p20, 2), p80_us=round(p80, 2),
                                     gbps=round(gbps, 1), tflops=round(tflops, 2),
                                     speedup_vs_fp16=round(ref_t[0] / med, 3)))
                    print(f"{n:>6}x{k:<6} M={m:<5} {name:<5}{suffix:<7} {med:9.1f} us  {gbps:7.0f} GB/s "
                          f"({100 * gbps / bw:5.1f}% of copy)  {tflops:7.2f} TFLOP/s  x{ref_t[0] / med:5.2f} vs fp16")
    return rows, gpu, commit


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="lut/nf4/sq kernels vs F.linear fp16")
    p.add_argument("--schemes", default=",".join(SCHEMES))
    p.add_argument("--shapes", help="comma-separated NxK (default: every DESIGN.md shape)")
    p.add_argument("--m", help="comma-separated batch sizes (default: DESIGN.md list)")
    p.add_argument("--quick", action="store_true", help="at most 4 rotating buffer sets")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_lut: no CUDA device; this benchmark needs a GPU (nothing measured).")
        return 0
    schemes = args.schemes.split(",")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")] if args.shapes else SHAPES
    ms = [int(v) for v in args.m.split(",")] if args.m else MS
    rows, gpu, commit = bench(schemes, shapes, ms, args.quick)
    if "lut3" in schemes and "sq3" in schemes:
        print("\nsq3 overhead vs lut3 at M=1 (time ratio, eager / graph):")
        for n, k in shapes:
            pick = {(r["scheme"], r["provider"]): r["median_us"] for r in rows if (r["N"], r["K"], r["M"]) == (n, k, 1)}
            if ("lut3", "lowbit") in pick:
                print(f"  {n}x{k}: {pick[('sq3', 'lowbit')] / pick[('lut3', 'lowbit')]:.2f} / "
                      f"{pick[('sq3', 'lowbit_graph')] / pick[('lut3', 'lowbit_graph')]:.2f}")
    out_dir = ROOT / "perf" / "results" / gpu.replace(" ", "_")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{datetime.date.today().isoformat()}-{commit}-lut.csv"
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
