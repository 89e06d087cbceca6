"""What every test shares: where kernels run, NaN-filled outputs, relative-error assertions.

tests/conftest.py sets TRITON_INTERPRET before anything imports triton; this module only reads it.
"""
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"


def nan_out(shape, dtype, device):
    """An output buffer pre-filled with NaN, so an element a kernel never writes fails the test."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max|out - ref| / max|ref| in float64; NaN anywhere in `out` gives inf."""
    out64, ref64 = out.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    return float((out64 - ref64).abs().max() / ref64.abs().max().clamp(min=1e-30))


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
    """Fail unless `out` is within relative error `tol` of `ref` (max-abs error over max|ref|), NaN-free."""
    assert tuple(out.shape) == tuple(ref.shape), f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


GATE_ROW = re.compile(r"^(\S+)\s+(\S+)\s+(.+?)\s+(80|90)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S.*)$")
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class GateRow:
    """One row of `python -m lowbit check`: a kernel specialisation compiled for one target."""

    family: str
    kernel: str
    label: str
    sm: int
    regs: int
    spill: int
    shared: int
    mma: int
    status: str


def env_without_interpreter() -> dict:
    """The environment for a subprocess that compiles for real GPUs (no TRITON_INTERPRET), importing this checkout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_gate(*families: str, timeout: int = 1800) -> list[GateRow]:
    """Run the compile gate for `families` in a subprocess (the interpreter cannot compile) and parse its table.

    Fails the calling test when the gate exits non-zero (a compile error, a spill, shared memory over
    the limit or a missing tensor-core instruction).
    """
    cmd = [sys.executable, "-m", "lowbit", "check"] + [a for f in families for a in ("--family", f)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_without_interpreter(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"gate failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    rows = []
    for line in proc.stdout.splitlines():
        m = GATE_ROW.match(line)
        if m and m.group(1) in families:
            f, k, label, sm, regs, spill, shared, mma, status = m.groups()
            rows.append(GateRow(f, k, label, int(sm), int(regs), int(spill), int(shared), int(mma), status))
    return rows
