"""Performance sweeps: lowbit kernels vs F.linear fp16/bf16 (cuBLAS) and peer libraries.

``python -m lowbit sweep`` drives :func:`run_sweep` and :func:`write_results`; see perf/README.md.
Importing this package touches neither CUDA nor Triton.
"""
from __future__ import annotations

from .bench import BenchSettings, Timing, rotation_count
from .runner import (ALL_SCHEMES, COLUMNS, CPU_DEFAULT, DESIGN_MS, DESIGN_SHAPES, EXTRA_COLUMNS, QUICK_GPU,
                     SweepConfig, add_speedup, headline, run_sweep, write_results)

__all__ = ["BenchSettings", "Timing", "rotation_count", "SweepConfig", "run_sweep", "write_results",
           "add_speedup", "headline", "COLUMNS", "EXTRA_COLUMNS", "DESIGN_SHAPES", "DESIGN_MS", "ALL_SCHEMES",
           "QUICK_GPU", "CPU_DEFAULT"]
