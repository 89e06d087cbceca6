"""The sweep itself: shapes x batch sizes x providers -> one pandas DataFrame, then CSV + JSON + plots.

Each weight is generated and quantized once per shape and provider (on the device it runs on);
every batch size M then reuses it. Timings follow the method in perf/README.md: do_bench
medians with p20/p80, rotated buffers when the data fits in L2, and CUDA-graph replay at small M
reported as a separate ``<provider>+graph`` row whose speedup is taken against ``torch-fp16+graph``.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..autotune import gpu_slug
from ..formats import Scheme
from .bench import BenchSettings, l2_cache_bytes, rotation_count, time_calls, time_graph
from .providers import LowbitProvider, Prepared, Provider, TorchLinear, default_options, peer_providers
from .roofline import achieved, bytes_moved, flops, measure_copy_bandwidth

BENCH_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (4096, 14336), (1024, 4096),
                 (8192, 8192), (384, 384), (1536, 384), (384, 1536))
BENCH_MS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)
ALL_SCHEMES = tuple(s.value for s in Scheme)
QUICK_GPU = {"shapes": ((4096, 4096), (8192, 8192)), "ms": (1, 16, 128, 4096),
             "schemes": ("int4", "int2", "nf4", "ternary_a16")}
# The CPU (Triton interpreter) sweep only proves the pipeline end to end: tiny and slow.
CPU_DEFAULT = {"shapes": ((384, 384),), "ms": (1, 16), "schemes": ("int4", "lut4", "ternary")}
PEER_NAMES = ("gemlite", "torchao", "bitsandbytes", "int_mm")
BASELINE = "torch-fp16"
GRAPH_SUFFIX = "+graph"

COLUMNS = ["gpu", "torch", "triton", "commit", "scheme", "N", "K", "M", "provider", "median_us", "p20_us",
           "p80_us", "gbps", "tflops", "speedup_vs_fp16"]
EXTRA_COLUMNS = ["pct_copy_bw", "bytes_moved", "bits_per_weight", "rel_err", "note"]
CPU_GPU_LABEL = "cpu-interpreter"


@dataclass
class SweepConfig:
    """Everything one sweep run varies; `device` cpu means the Triton interpreter."""

    shapes: tuple[tuple[int, int], ...]
    ms: tuple[int, ...]
    schemes: tuple[str, ...]
    device: torch.device
    act_dtype: torch.dtype = torch.float16
    group_size: int = 128
    paths: tuple[str | None, ...] = (None,)
    peers: tuple[str, ...] = PEER_NAMES
    graph_max_m: int = 16  # CUDA-graph rows for M <= this (0: none)
    check: bool = True  # rel_err against the fp64 oracle of the same format
    settings: BenchSettings = field(default_factory=BenchSettings)
    seed: int = 0
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)


def git_commit() -> str:
    """Short commit of the checkout lowbit runs from, '-dirty' when tracked files changed; 'nogit' outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    return f"{head}-dirty" if dirty else head


def environment(device: torch.device) -> dict:
    """Versions and hardware that identify a results file (the CSV's first columns and the JSON)."""
    import triton

    import lowbit

    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        slug = gpu_slug(gpu)
    else:
        gpu, cap, slug = CPU_GPU_LABEL, "", CPU_GPU_LABEL
    return {"gpu": gpu, "gpu_slug": slug, "capability": cap, "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda or "", "python": platform.python_version(),
            "lowbit": lowbit.__version__, "commit": git_commit(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d"),
            "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _providers(cfg: SweepConfig) -> list[Provider]:
    out: list[Provider] = [TorchLinear(torch.float16), TorchLinear(torch.bfloat16)]
    for s in cfg.schemes:
        scheme = Scheme.parse(s)
        for path in cfg.paths:
            out.append(LowbitProvider(scheme, default_options(scheme, cfg.group_size), path))
    out.extend(peer_providers(cfg.peers))
    return out


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    diff = torch.linalg.vector_norm(y.to(torch.float64) - ref)
    return float(diff / torch.linalg.vector_norm(ref).clamp_min(1e-300))


class _Sweep:
    """Accumulates rows for one run."""

    def __init__(self, cfg: SweepConfig, env: dict, copy_gbps: float):
        self.cfg, self.env, self.copy_gbps = cfg, env, copy_gbps
        self.l2 = l2_cache_bytes(cfg.device)
        self.rows: list[dict] = []
        self.gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)

    def row(self, prov: Provider, n=None, k=None, m=None, **values) -> dict:
        r = {c: None for c in COLUMNS + EXTRA_COLUMNS}
        r.update({c: self.env[c] for c in ("gpu", "torch", "triton", "commit")})
        r.update(scheme=prov.scheme, N=n, K=k, M=m, provider=prov.name, note="")
        r.update(values)
        self.rows.append(r)
        return r

    def timed_row(self, prov, name, prep: Prepared, n, k, m, t, nbytes, rel, note):
        a = achieved(t.median_us, nbytes, flops(m, n, k), self.copy_gbps)
        r = self.row(prov, n, k, m, median_us=t.median_us, p20_us=t.p20_us, p80_us=t.p80_us, gbps=a.gbps,
                     tflops=a.tflops, pct_copy_bw=a.pct_copy_bw, bytes_moved=nbytes,
                     bits_per_weight=prep.bits_per_weight, rel_err=rel, note=note)
        r["provider"] = name

    def run_shape(self, prov: Provider, n: int, k: int, w: torch.Tensor) -> None:
        cfg = self.cfg
        try:
            prep = prov.prepare(w, cfg.act_dtype)
        except Exception as e:  # a broken provider must not end the sweep: record why
            self.row(prov, n, k, None, note=f"prepare failed: {type(e).__name__}: {e}"[:500])
            return
        for m in cfg.ms:
            elem = torch.tensor([], dtype=prep.act_dtype).element_size()
            nbytes = bytes_moved(prep.weight_bytes, m, n, k, elem, elem)
            copies = rotation_count(nbytes, self.l2, cfg.settings.max_rotation)
            try:
                weights = prep.copies(copies)
                xs = [torch.randn(m, k, generator=self.gen, device=cfg.device, dtype=torch.float32).to(prep.act_dtype)
                      for _ in range(copies)]
                calls = [(lambda wt=wt, x=x: prep.run(wt, x)) for wt, x in zip(weights, xs)]
                y = calls[0]()
                rel = _rel_err(y, prep.reference(xs[0])) if (cfg.check and prep.reference) else None
                t = time_calls(calls, cfg.device, cfg.settings)
            except Exception as e:  # e.g. a kernel that rejects this shape: a note row, then go on
                self.row(prov, n, k, m, note=f"error: {type(e).__name__}: {e}"[:500])
                continue
            note = prep.note + (f"; rotated {copies} buffer sets" if copies > 1 else "")
            self.timed_row(prov, prov.name, prep, n, k, m, t, nbytes, rel, note.strip("; "))
            if cfg.device.type == "cuda" and m <= cfg.graph_max_m:
                try:
                    tg = time_graph(calls, cfg.device, cfg.settings)
                except Exception as e:  # some peers cannot be captured
                    self.row(prov, n, k, m, note=f"cuda graph failed: {type(e).__name__}: {e}"[:500])
                    self.rows[-1]["provider"] = prov.name + GRAPH_SUFFIX
                    continue
                self.timed_row(prov, prov.name + GRAPH_SUFFIX, prep, n, k, m, tg, nbytes, rel,
                               (note + "; CUDA-graph replay").strip("; "))


def run_sweep(cfg: SweepConfig):
    """Run the sweep; returns (DataFrame with COLUMNS + EXTRA_COLUMNS, info dict for the JSON file)."""
    import pandas as pd

    env = environment(cfg.device)
    cfg.log(f"lowbit sweep on {env['gpu']} (torch {env['torch']}, triton {env['triton']}, commit {env['commit']})")
    copy_gbps = measure_copy_bandwidth(cfg.device, cfg.settings)
    cfg.log(f"measured copy bandwidth: {copy_gbps:.1f} GB/s")
    sweep = _Sweep(cfg, env, copy_gbps)
    providers, peers_info = [], {}
    for prov in _providers(cfg):
        why = prov.unavailable(cfg.device)
        if why is not None:
            sweep.row(prov, note=why)
            if prov.name in cfg.peers:
                peers_info[prov.name] = why
            continue
        if prov.name in cfg.peers:
            peers_info[prov.name] = getattr(prov, "version", lambda: "")()
        providers.append(prov)
    for n, k in cfg.shapes:
        w = torch.randn(n, k, generator=sweep.gen, device=cfg.device, dtype=torch.float32) * k ** -0.5
        for prov in providers:
            cfg.log(f"  {n}x{k} {prov.name} {prov.scheme}")
            sweep.run_shape(prov, n, k, w)
        del w
        if cfg.device.type == "cuda":
            torch.cuda.empty_cache()
    df = pd.DataFrame(sweep.rows, columns=COLUMNS + EXTRA_COLUMNS)
    df = add_speedup(df)
    info = dict(env, copy_bw_gbps=copy_gbps, l2_bytes=sweep.l2, peers=peers_info,
                config={"shapes": [f"{n}x{k}" for n, k in cfg.shapes], "ms": list(cfg.ms),
                        "schemes": list(cfg.schemes), "act_dtype": str(cfg.act_dtype).replace("torch.", ""),
                        "group_size": cfg.group_size, "paths": [p or "auto" for p in cfg.paths],
                        "graph_max_m": cfg.graph_max_m, "warmup_ms": cfg.settings.warmup_ms,
                        "rep_ms": cfg.settings.rep_ms, "seed": cfg.seed})
    return df, info


def add_speedup(df):
    """speedup_vs_fp16 = median of torch-fp16 (same N, K, M and timing mode) / this row's median."""
    import pandas as pd

    df = df.copy()
    for c in ("N", "K", "M", "bytes_moved"):
        df[c] = pd.array(df[c], dtype="Int64")
    for c in ("median_us", "p20_us", "p80_us", "gbps", "tflops", "pct_copy_bw", "bits_per_weight", "rel_err"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    mode = df["provider"].str.endswith(GRAPH_SUFFIX)
    base = df[df["provider"].isin([BASELINE, BASELINE + GRAPH_SUFFIX]) & df["median_us"].notna()]
    lookup = {(int(r.N), int(r.K), int(r.M), r.provider.endswith(GRAPH_SUFFIX)): r.median_us
              for r in base.itertuples()}
    speed = []
    for r, g in zip(df.itertuples(), mode):
        b = lookup.get((int(r.N), int(r.K), int(r.M), bool(g))) if pd.notna(r.M) and pd.notna(r.median_us) else None
        speed.append(b / r.median_us if b is not None and r.median_us > 0 else math.nan)
    df["speedup_vs_fp16"] = pd.Series(speed, index=df.index, dtype="float64")
    df["note"] = df["note"].fillna("")
    return df


def write_results(df, info: dict, out_root: str | Path, plots: bool = True) -> dict:
    """Write <out_root>/<gpu-slug>/<date>-<commit>.csv, a .json of versions beside it, and PNG plots."""
    out_dir = Path(out_root) / info["gpu_slug"]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{info['date']}-{info['commit']}"
    i = 2
    while (out_dir / f"{stem}.csv").exists():
        stem = f"{info['date']}-{info['commit']}-r{i}"
        i += 1
    csv_path = out_dir / f"{stem}.csv"
    df.to_csv(csv_path, index=False)
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    paths = {"csv": csv_path, "json": json_path, "plots": []}
    if plots:
        from .plots import write_plots

        paths["plots"] = write_plots(df, out_dir, stem, copy_gbps=info.get("copy_bw_gbps"))
    return paths


def headline(df, ms=(1, 16, 4096)):
    """Geometric-mean speedup over all shapes, per provider and scheme, at the given M (a pivot table)."""
    import numpy as np
    import pandas as pd

    d = df[df["speedup_vs_fp16"].notna() & df["M"].isin(list(ms))]
    if d.empty:
        return pd.DataFrame()
    g = d.groupby(["provider", "scheme", "M"])["speedup_vs_fp16"].apply(lambda s: float(np.exp(np.log(s).mean())))
    return g.unstack("M").sort_index()
