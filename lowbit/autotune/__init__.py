"""Per-GPU kernel configs: search spaces come from each family; this package tunes and caches the winners.

:func:`lookup` is called on every forward and must stay cheap: it never benchmarks unless
online tuning was turned on (:func:`enable_online_tuning` or ``LOWBIT_AUTOTUNE=1``).
The tuner (:mod:`lowbit.autotune.tuner`) is imported on demand; it needs a GPU to time.
"""
from __future__ import annotations

from .cache import (AutotuneCacheWarning, CacheKey, GpuInfo, clear, enable_online_tuning, gpu_info, gpu_slug, lookup,
                    online_tuning_enabled, record, user_path, warn_invalid)

__all__ = ["lookup", "record", "enable_online_tuning", "online_tuning_enabled", "clear", "gpu_info", "gpu_slug",
           "user_path", "warn_invalid", "CacheKey", "GpuInfo", "AutotuneCacheWarning"]
