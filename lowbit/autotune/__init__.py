"""Per-GPU kernel configs: search spaces come from each family; this package caches the winners.

:func:`lookup` is called on every forward and must stay cheap: it never benchmarks.
"""
from __future__ import annotations

from .cache import lookup

__all__ = ["lookup"]
