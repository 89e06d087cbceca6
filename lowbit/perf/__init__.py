"""Performance sweeps: lowbit kernels vs F.linear fp16/bf16 (cuBLAS) and peer libraries.

``python -m lowbit sweep`` drives :func:`run_sweep` and :func:`write_results`; see perf/README.md.
Importing this package touches neither CUDA nor Triton.
"""
from __future__ import annotations

from .bench import BenchSettings, Timing, rotation_count
from .runner import (ALL_SCHEMES, COLUMNS, CPU_DEFAULT, BENCH_MS, BENCH_SHAPES, EXTRA_COLUMNS, QUICK_GPU,
                     SweepConfig, add_speedup, headline, run_sweep, write_results)

__all__ = ["BenchSettings", "Timing", "rotation_count", "SweepConfig", "run_sweep", "write_results",
           "add_speedup", "headline", "COLUMNS", "EXTRA_COLUMNS", "BENCH_SHAPES", "BENCH_MS", "ALL_SCHEMES",
           "QUICK_GPU", "CPU_DEFAULT"]
