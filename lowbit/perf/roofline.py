"""Roofline accounting: bytes moved, FLOPs, achieved GB/s and TFLOP/s, and the measured copy bandwidth.

Bytes moved = packed weights + metadata + activations read + output written (+ bias), the
minimum traffic of one y = x . W^T + b call; FLOPs = 2*M*N*K. The ceiling for the memory-bound
(small-M) regime is the device-to-device copy bandwidth measured in the same run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .bench import BenchSettings, l2_cache_bytes, time_calls


def bytes_moved(weight_bytes: int, m: int, n: int, k: int, act_bytes: int, out_bytes: int,
                bias_bytes: int = 0) -> int:
    """Minimum traffic of one call: weights + metadata once, x [M, K] read, y [M, N] written."""
    return int(weight_bytes) + m * k * act_bytes + m * n * out_bytes + n * bias_bytes


def flops(m: int, n: int, k: int) -> int:
    """Multiply-adds of y = x . W^T counted as 2 FLOPs."""
    return 2 * m * n * k


@dataclass(frozen=True)
class Achieved:
    """Rates derived from one median time."""

    gbps: float
    tflops: float
    pct_copy_bw: float


def achieved(median_us: float, nbytes: int, nflops: int, copy_gbps: float) -> Achieved:
    """GB/s (1e9 bytes/s), TFLOP/s and % of the measured copy bandwidth for one timing."""
    if not (median_us > 0 and math.isfinite(median_us)):
        nan = float("nan")
        return Achieved(nan, nan, nan)
    sec = median_us * 1e-6
    gbps = nbytes / sec / 1e9
    pct = 100.0 * gbps / copy_gbps if copy_gbps > 0 else float("nan")
    return Achieved(gbps=gbps, tflops=nflops / sec / 1e12, pct_copy_bw=pct)


def copy_buffer_bytes(device: torch.device) -> int:
    """Size of the copy used to measure bandwidth: 1 GiB (at least 8x L2) on a GPU, 32 MiB on the CPU."""
    if device.type == "cuda":
        return max(1 << 30, 8 * l2_cache_bytes(device))
    return 32 << 20


def measure_copy_bandwidth(device: torch.device, settings: BenchSettings = BenchSettings(),
                           nbytes: int | None = None) -> float:
    """Achieved GB/s of a large same-device copy, counting the read and the write."""
    nbytes = int(nbytes or copy_buffer_bytes(device))
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_calls([lambda: dst.copy_(src)], device, settings)
    return 2 * nbytes / (t.median_us * 1e-6) / 1e9


def roof_tflops(intensity_flop_per_byte: float, copy_gbps: float, peak_tflops: float) -> float:
    """Attainable TFLOP/s at an arithmetic intensity: min(bandwidth x intensity, compute peak)."""
    return min(copy_gbps * intensity_flop_per_byte / 1e3, peak_tflops)
