"""Timing primitives for the sweep: do_bench medians with p20/p80, L2-aware buffer rotation, CUDA graphs.

On a GPU every number comes from ``triton.testing.do_bench`` (which also flushes L2 before each
timed call). On the CPU (Triton interpreter) a short wall-clock loop stands in, so the pipeline
can be exercised in CI; those numbers say nothing about GPU speed.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

QUANTILES = (0.5, 0.2, 0.8)  # median, p20, p80 -- the order of the Timing fields


@dataclass(frozen=True)
class Timing:
    """One measurement in microseconds: median and the 20th/80th percentiles."""

    median_us: float
    p20_us: float
    p80_us: float


@dataclass(frozen=True)
class BenchSettings:
    """How long to measure: do_bench warmup/rep in ms on a GPU, call counts on the CPU."""

    warmup_ms: int = 25
    rep_ms: int = 100
    cpu_warmup: int = 1
    cpu_reps: int = 3
    max_rotation: int = 4096  # cap on the number of rotated buffer sets
    graph_calls: int = 8  # at least this many calls captured in one CUDA graph


def l2_cache_bytes(device: torch.device) -> int:
    """The device's L2 size in bytes (0 on the CPU: no rotation there)."""
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 0)


def rotation_count(working_set_bytes: int, l2_bytes: int, cap: int = 4096) -> int:
    """How many buffer sets to cycle through so the set in use is evicted before it comes back.

    One set when the data does not fit in L2; otherwise enough sets to cover twice the L2 size.
    """
    if l2_bytes <= 0 or working_set_bytes <= 0 or working_set_bytes >= l2_bytes:
        return 1
    return max(1, min(cap, math.ceil(2 * l2_bytes / working_set_bytes)))


def _to_timing(values_ms: Sequence[float], scale: float = 1.0) -> Timing:
    med, p20, p80 = (float(v) * 1e3 / scale for v in values_ms)
    return Timing(median_us=med, p20_us=p20, p80_us=p80)


def _cpu_quantiles(fn: Callable[[], object], settings: BenchSettings) -> list[float]:
    for _ in range(settings.cpu_warmup):
        fn()
    samples = []
    for _ in range(max(1, settings.cpu_reps)):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    t = torch.tensor(samples, dtype=torch.float64)
    return [float(torch.quantile(t, q)) for q in QUANTILES]


def time_calls(calls: Sequence[Callable[[], object]], device: torch.device,
               settings: BenchSettings = BenchSettings()) -> Timing:
    """Time one call; successive calls cycle through `calls` (each bound to its own buffers)."""
    if not calls:
        raise ValueError("time_calls needs at least one call")
    cycle = itertools.cycle(calls)

    def step():
        return next(cycle)()

    if device.type == "cuda":
        from triton.testing import do_bench

        res = do_bench(step, warmup=settings.warmup_ms, rep=settings.rep_ms, quantiles=list(QUANTILES))
        return _to_timing(res)
    return _to_timing(_cpu_quantiles(step, settings))


def time_graph(calls: Sequence[Callable[[], object]], device: torch.device,
               settings: BenchSettings = BenchSettings()) -> Timing:
    """Per-call time under CUDA-graph replay: one graph holds max(len(calls), graph_calls) calls.

    Launch overhead disappears from the measurement, as in serving engines that replay graphs.
    Raises RuntimeError on the CPU (graphs need CUDA).
    """
    if device.type != "cuda":
        raise RuntimeError("CUDA-graph timing needs a CUDA device")
    if not calls:
        raise ValueError("time_graph needs at least one call")
    from triton.testing import do_bench

    n = max(len(calls), settings.graph_calls)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up (compile, allocate) outside the capture
        for c in calls:
            c()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    keep = []
    try:
        with torch.cuda.graph(graph):
            for i in range(n):
                keep.append(calls[i % len(calls)]())
    except Exception:
        torch.cuda.synchronize(device)  # let a failed capture finish before the sweep goes on
        raise
    res = do_bench(graph.replay, warmup=settings.warmup_ms, rep=settings.rep_ms, quantiles=list(QUANTILES))
    del graph, keep
    return _to_timing(res, scale=n)
