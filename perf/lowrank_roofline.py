"""Static estimate (not a measurement) of what the unfused low-rank term adds to one call, H200 and H100.

Compiles the two generic launches of lowbit.kernels.lowrank (the projection t = x B^T and the
expansion y += t A^T) for sm_90 as the dispatcher would launch them at N = K = 8192, counts their
SASS and runs lowbit.perf.static_model's estimate, the model behind ``python -m lowbit check
--roofline``; compare with the main call's estimate in perf/static/roofline-sm90.csv.

    python perf/lowrank_roofline.py [--ranks 16,32,64] [--ms 1,16,4096]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compiles for real GPUs

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lowbit.formats import QuantizedWeight  # noqa: E402
from lowbit.kernels import gate, lowrank  # noqa: E402
from lowbit.perf import static_model as sm  # noqa: E402
from lowbit.perf.static_roofline import Launched, analyze_kernel  # noqa: E402


def estimate(m: int, rank: int, n: int = 8192, k: int = 8192, dtype=torch.float16, target: int = 90):
    """{hardware name: (seconds of the two launches, [per-launch LaunchTime])} for one call's term."""
    qw = QuantizedWeight.empty("int4", (n, k), lowrank=rank)
    launched = []
    for plan in lowrank.launch_plans(qw, m, dtype):
        rep = gate.compile_case(plan.case, target, want_sass=True)
        if rep.error or rep.spill_bytes:
            raise RuntimeError(f"{plan.label}: {rep.error or f'spills {rep.spill_bytes} B'}")
        report, no_loop = analyze_kernel(rep.sass)
        launched.append(Launched(plan, report, no_loop))
    launches = [ln for la in launched for ln in la.model_launches()]
    out = {}
    for name in ("h200", "h100"):
        est = sm.estimate(launches, sm.HARDWARE[name])
        out[name] = (est.time_s, est.launches)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", default="16,32,64")
    p.add_argument("--ms", default="1,16,4096")
    args = p.parse_args(argv)
    gate.prepare_environment()
    print("| M | r | H200 est. us (projection + expansion, launch overheads included) | H100 est. us | bound |")
    print("|---|---|---|---|---|")
    for m in (int(v) for v in args.ms.split(",")):
        for r in (int(v) for v in args.ranks.split(",")):
            e = estimate(m, r)
            t200, lts = e["h200"]
            parts = " + ".join(f"{lt.time_s * 1e6:.2f}" for lt in lts)
            bounds = "/".join(lt.bound.value for lt in lts)
            print(f"| {m} | {r} | {t200 * 1e6:.2f} ({parts}) | {e['h100'][0] * 1e6:.2f} | {bounds} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
