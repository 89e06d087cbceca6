"""Time every config of a family's search space on the GPU and pick the fastest correct one.

:func:`tune` runs each candidate through ``family.launch``, rejects any whose output differs
from the heuristic config's, and times the rest with ``triton.testing.do_bench`` (median).
The timer is a parameter, so the selection logic is testable on CPU with made-up times.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from ..formats import dim_bucket
from ..kernels import KernelConfig, KernelPath
from .cache import CacheKey

# Timer: (fn that launches the kernel once, its config) -> median time in microseconds.
Timer = Callable[[Callable[[], object], KernelConfig], float]

# Output agreement with the heuristic config, as max|y - y_h| / max|y_h|. Both accumulate in
# fp32, only the summation order differs, so the outputs differ by at most a few roundings of
# the output dtype: 8 units in the last place of the largest element (fp16 2^-10, bf16 2^-7).
# fp32 outputs differ by accumulation order only (~sqrt(K) * 2^-24 relative): 1e-4 is ample.
# A broken config (a skipped tile, an unwritten row) misses by O(1) or leaves NaN.
RTOL = {torch.float16: 8 * 2.0 ** -10, torch.bfloat16: 8 * 2.0 ** -7, torch.float32: 1e-4}


def do_bench_timer(fn: Callable[[], object], config: KernelConfig) -> float:
    """Median time of fn in µs with triton.testing.do_bench (needs a GPU)."""
    from triton.testing import do_bench

    try:
        ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
    except TypeError:  # a triton without return_mode
        ms = do_bench(fn, warmup=25, rep=100, quantiles=[0.5])
    if isinstance(ms, (list, tuple)):
        ms = ms[0]
    return float(ms) * 1e3


@dataclass
class Trial:
    """One candidate: its median time, or why it was rejected."""

    config: KernelConfig
    us: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.us is not None and math.isfinite(self.us)


@dataclass
class TuneResult:
    """The winner of one key, with every candidate's time (the heuristic config is always timed)."""

    key: CacheKey
    heuristic: KernelConfig
    best: KernelConfig
    trials: list[Trial] = field(default_factory=list)

    def time_of(self, config: KernelConfig) -> float | None:
        return next((t.us for t in self.trials if t.config == config and t.ok), None)

    @property
    def best_us(self) -> float:
        return self.time_of(self.best)

    @property
    def heuristic_us(self) -> float | None:
        return self.time_of(self.heuristic)

    @property
    def speedup(self) -> float | None:
        h = self.heuristic_us
        return h / self.best_us if h and self.best_us else None

    @property
    def rejected(self) -> list[Trial]:
        return [t for t in self.trials if not t.ok]

    def times(self) -> dict[KernelConfig, float]:
        """config -> µs for every accepted candidate."""
        return {t.config: t.us for t in self.trials if t.ok}


def _mismatch(out: torch.Tensor, ref: torch.Tensor, rtol: float) -> str:
    """'' when out agrees with ref within rtol (relative to max|ref|), else the reason."""
    o, r = out.float(), ref.float()
    if not bool(torch.isfinite(o).all()):
        return "output has NaN/Inf (unwritten or overflowed elements)"
    scale = float(r.abs().max().clamp(min=1e-30))
    err = float((o - r).abs().max()) / scale
    return "" if err <= rtol else f"output differs from the heuristic config's (rel err {err:.2e} > {rtol:.1e})"


def tune(family, path, qw, m: int, dtype: torch.dtype = torch.float16, *, timer: Timer | None = None,
         configs: Iterable[KernelConfig] | None = None, x: torch.Tensor | None = None,
         rtol: float | None = None, on_trial: Callable[[int, int, Trial], None] | None = None) -> TuneResult:
    """Tune `family`'s `path` kernel for `qw` at M=m with `dtype` activations.

    Candidates are `configs` (default ``family.search_space(path, qw)``) plus the heuristic
    config. Each runs once into a NaN-filled buffer and must match the heuristic's output;
    the accepted ones are timed with `timer` (default: do_bench median) and the fastest wins.
    `on_trial(i, n, trial)` is called after each candidate (progress display).
    """
    path = KernelPath.parse(path)
    timer = timer or do_bench_timer
    rtol = RTOL.get(dtype, 1e-4) if rtol is None else rtol
    if x is None:
        gen = torch.Generator(device=qw.device).manual_seed(0)
        x = torch.randn(m, qw.K, generator=gen, device=qw.device, dtype=torch.float32).to(dtype)
    if x.shape != (m, qw.K):
        raise ValueError(f"x must be [{m}, {qw.K}], got {tuple(x.shape)}")
    heur = family.heuristic(path, m, qw, x.dtype)
    space = family.search_space(path, qw, x.dtype) if configs is None else configs
    cands = list(dict.fromkeys([heur, *space]))
    key = CacheKey.of(family, qw, path, dim_bucket(m), x.dtype)

    def run(cfg):
        out = torch.full((m, qw.N), float("nan"), dtype=x.dtype, device=x.device)
        return family.launch(x, qw, None, path, cfg, out), out

    ref = run(heur)[0].clone()
    if not bool(torch.isfinite(ref).all()):
        raise RuntimeError(f"heuristic config {heur.label()} of {key.label()} leaves NaN/Inf in the output")
    trials = []
    for cfg in cands:
        trial = Trial(cfg)
        trials.append(trial)
        try:
            y, out = run(cfg)
            trial.error = _mismatch(y, ref, rtol)
            if not trial.error:
                buf = out
                trial.us = float(timer(lambda: family.launch(x, qw, None, path, cfg, buf), cfg))
                if not math.isfinite(trial.us) or trial.us <= 0:
                    trial.error, trial.us = f"timer returned {trial.us}", None
        except Exception as e:  # a config that fails to compile or launch is a rejected candidate
            trial.error = f"{type(e).__name__}: {str(e).strip()[:200]}"
        if on_trial is not None:
            on_trial(len(trials), len(cands), trial)
    ok = [t for t in trials if t.ok]
    if not ok:
        raise RuntimeError(f"no config of {key.label()} ran correctly: {trials[0].error}")
    best = min(ok, key=lambda t: t.us)
    return TuneResult(key, heur, best.config, trials)
