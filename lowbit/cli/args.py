"""Argument parsers the subcommands share (weight shapes, batch sizes, schemes), written once."""
from __future__ import annotations

import argparse

from ..formats import Scheme


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """'4096x4096,11008x4096' -> ((4096, 4096), (11008, 4096)) (N x K, both positive)."""
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        try:
            if len(parts) != 2:
                raise ValueError
            n, k = int(parts[0]), int(parts[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {item.strip()!r}: expected NxK such as 4096x4096") from None
        if n <= 0 or k <= 0:
            raise argparse.ArgumentTypeError(f"bad shape {item.strip()!r}: N and K must be positive")
        shapes.append((n, k))
    return tuple(shapes)


def parse_ms(text: str) -> tuple[int, ...]:
    """'1,16,4096' -> (1, 16, 4096) (positive integers): batch sizes M."""
    out = []
    for item in text.split(","):
        try:
            m = int(item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad batch size {item.strip()!r}: expected an integer") from None
        if m <= 0:
            raise argparse.ArgumentTypeError(f"bad batch size {m}: M must be positive")
        out.append(m)
    return tuple(out)


def parse_schemes(text: str) -> tuple[str, ...]:
    """'int4,nf4' -> ('int4', 'nf4'); 'all' -> every scheme."""
    if text.strip().lower() == "all":
        return tuple(s.value for s in Scheme)
    try:
        return tuple(Scheme.parse(s.strip()).value for s in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
