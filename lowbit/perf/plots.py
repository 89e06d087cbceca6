"""Plots of a sweep (matplotlib, no pyplot state): speedup vs M, achieved GB/s vs M, and a roofline.

Each figure has one panel per N x K shape. The memory roof is the copy bandwidth measured in
the same run; the compute roof is the best TFLOP/s F.linear (cuBLAS fp16/bf16) reached in that run.
"""
from __future__ import annotations

import math
from pathlib import Path

from .roofline import roof_tflops

BASELINES = ("torch-fp16", "torch-fp16+graph")


def load_results(root: str | Path):
    """Every results CSV under `root` (recursively) as one DataFrame with a `file` column; empty if none."""
    import pandas as pd

    files = sorted(Path(root).glob("**/*.csv"))
    frames = []
    for f in files:
        d = pd.read_csv(f, keep_default_na=True)
        d["note"] = d["note"].fillna("") if "note" in d else ""
        d["file"] = str(f)
        frames.append(d)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def timed(df):
    """Rows that carry a timing (note-only rows dropped)."""
    if df.empty or "median_us" not in df:
        return df.iloc[0:0]
    return df[df["median_us"].notna() & (df["median_us"] > 0)]


def series_label(provider: str, scheme: str) -> str:
    """A short legend label: the scheme for lowbit rows, library + scheme for the others."""
    graph = provider.endswith("+graph")
    base = provider[: -len("+graph")] if graph else provider
    if base == "lowbit":
        label = str(scheme)
    elif base.startswith("lowbit-"):
        label = f"{scheme} ({base[len('lowbit-'):]})"
    elif base.startswith("torch-"):
        label = f"{scheme} F.linear"
    else:
        label = f"{base} {scheme}"
    return label + (" [graph]" if graph else "")


def _panels(shapes):
    from matplotlib.figure import Figure

    n = max(1, len(shapes))
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(shapes):]:
        ax.set_visible(False)
    return fig, axes


def _shapes(df):
    return sorted({(int(n), int(k)) for n, k in zip(df["N"], df["K"])}, key=lambda s: (s[0] * s[1], s))


def _lines(ax, d, ycol, skip=()):
    for (prov, scheme), g in d.groupby(["provider", "scheme"], sort=True):
        if prov in skip:
            continue
        g = g.sort_values("M")
        ax.plot(g["M"], g[ycol], marker="o", ms=3, lw=1.2, ls="--" if prov.endswith("+graph") else "-",
                label=series_label(prov, scheme))


def _empty(fig_title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.text(0.5, 0.5, "no timed rows", ha="center", va="center")
    ax.set_axis_off()
    fig.suptitle(fig_title)
    return fig


def _per_shape_figure(df, ycol: str, ylabel: str, default_title: str, title: str, skip=(), hline=None):
    """One panel per weight shape, `ycol` vs M (log2), one line per provider/scheme; `hline` = (y, style)."""
    d = timed(df)
    if d.empty:
        return _empty(title or default_title)
    shapes = _shapes(d)
    fig, axes = _panels(shapes)
    for ax, (n, k) in zip(axes, shapes):
        _lines(ax, d[(d["N"] == n) & (d["K"] == k)], ycol, skip=skip)
        if hline is not None:
            ax.axhline(hline[0], **hline[1])
        ax.set_xscale("log", base=2)
        ax.set_title(f"N={n} K={k}")
        ax.set_xlabel("M (batch rows)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle(title or default_title)
    return fig


def speedup_figure(df, title: str = ""):
    """Speedup over F.linear fp16 vs M, one line per scheme/provider, one panel per shape."""
    return _per_shape_figure(df, "speedup_vs_fp16", "speedup vs fp16 F.linear",
                             "speedup over F.linear fp16\n(dashed: CUDA-graph replay vs fp16 under replay)", title,
                             skip=BASELINES, hline=(1.0, {"color": "black", "lw": 0.8}))


def bandwidth_figure(df, copy_gbps: float | None = None, title: str = ""):
    """Achieved GB/s (bytes moved / median) vs M, with the measured copy bandwidth as the roof."""
    roof = (copy_gbps, {"color": "red", "lw": 1, "ls": ":", "label": "measured copy bandwidth"}) \
        if copy_gbps and copy_gbps > 0 else None
    return _per_shape_figure(df, "gbps", "GB/s (weights+meta+x+y)", "achieved bandwidth vs the copy-bandwidth roof",
                             title, hline=roof)


def roofline_figure(df, copy_gbps: float | None = None, title: str = ""):
    """TFLOP/s vs arithmetic intensity (FLOP/byte) for every timed row, under the measured roofs."""
    import numpy as np
    from matplotlib.figure import Figure

    d = timed(df)
    if d.empty:
        return _empty(title or "roofline")
    d = d.assign(intensity=2.0 * d["M"].astype(float) * d["N"].astype(float) * d["K"].astype(float)
                 / d["bytes_moved"].astype(float))
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    for (prov, scheme), g in d.groupby(["provider", "scheme"], sort=True):
        ax.scatter(g["intensity"], g["tflops"], s=10, marker="x" if prov.endswith("+graph") else "o",
                   label=series_label(prov, scheme))
    cublas = d[d["provider"].str.startswith("torch-")]["tflops"]
    peak = float(cublas.max()) if len(cublas) else float(d["tflops"].max())
    if copy_gbps and copy_gbps > 0 and peak > 0:
        xs = np.logspace(math.log10(d["intensity"].min() / 2), math.log10(d["intensity"].max() * 2), 200)
        ax.plot(xs, [roof_tflops(x, copy_gbps, peak) for x in xs], color="black", lw=1,
                label=f"roof: {copy_gbps:.4g} GB/s copy, {peak:.4g} TFLOP/s best F.linear")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte moved)")
    ax.set_ylabel("TFLOP/s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title or "roofline (all shapes and batch sizes)")
    return fig


def write_plots(df, out_dir: str | Path, stem: str, copy_gbps: float | None = None) -> list[Path]:
    """Save <stem>-speedup.png, <stem>-bandwidth.png and <stem>-roofline.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = {"speedup": speedup_figure(df), "bandwidth": bandwidth_figure(df, copy_gbps),
            "roofline": roofline_figure(df, copy_gbps)}
    paths = []
    for name, fig in figs.items():
        p = out_dir / f"{stem}-{name}.png"
        fig.savefig(p, dpi=110)
        paths.append(p)
    return paths
