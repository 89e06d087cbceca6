"""Static roofline of the lut family from its launch plans (no GPU): instructions per weight and estimates.

Stopgap until ``python -m lowbit check --roofline`` lands: compiles every launch of
``FAMILY.launch_plans`` for sm_90, reads the main loop of its SASS (lowbit.kernels.sass) and prints
instructions per weight per thread in that loop plus the static-model estimate on an H200
(lowbit.perf.static_model). Every figure is an estimate from SASS counts, not a measurement.

    TRITON_CACHE_DIR=$PWD/.triton-cache python perf/lut_static.py [--shape 8192 8192] [--m 1 16 4096]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)  # compile for real GPUs


def compile_sass(case, cc: int = 90) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from lowbit.kernels.sass import sass_of_cubin

    attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
    src_cls = ASTSource
    if getattr(case.kernel, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as src_cls
    src = src_cls(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                        options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages})
    return sass_of_cubin(ck.asm["cubin"])


def plan_rows(scheme: str, opts: dict, shape, m: int, dtype, path=None):
    """(estimate, [(plan, LoopReport, instructions per weight)]) for one call."""
    import torch

    from lowbit.formats import QuantizedWeight
    from lowbit.kernels.lut import FAMILY
    from lowbit.kernels.sass import analyze
    from lowbit.perf import static_model as sm

    qw = QuantizedWeight.empty(scheme, shape, **opts)
    path = path or FAMILY.choose_path(m)
    cfg = FAMILY.heuristic(path, m, qw, dtype)
    rows, launches = [], []
    for plan in FAMILY.launch_plans(qw, m, path, dtype, cfg):
        rep = analyze(compile_sass(plan.case), inner_trips=plan.inner_trips)
        ipw = rep.instructions_per_weight(plan.threads_per_cta, plan.weights_per_iteration) \
            if plan.weights_per_iteration else float("nan")
        rows.append((plan, rep, ipw))
        launches.append(sm.Launch.from_loop(rep, name=plan.label, bytes_moved=plan.hbm_bytes,
                                            threads_per_cta=plan.threads_per_cta, ctas=plan.ctas,
                                            iterations=plan.loop_trips))
    est = sm.estimate(launches, sm.H200, shape=(m, qw.N, qw.K))
    return cfg, est, rows


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=2, default=(8192, 8192), metavar=("N", "K"))
    p.add_argument("--m", type=int, nargs="+", default=(1, 16, 4096))
    p.add_argument("--schemes", default="lut4,nf4,lut3,sq3,sq4")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    opts = {"nf4": {"group_size": 64}}
    print("ESTIMATES from the static SASS model (sm_90, H200), not measurements")
    print(f"{'scheme':6} {'M':>5} {'config':28} {'launch':18} {'ipw':>6} {'instr/it':>8} {'trips':>6} "
          f"{'est us':>8} {'% roof':>7} {'x fp16':>7}")
    for scheme in args.schemes.split(","):
        for m in args.m:
            cfg, est, rows = plan_rows(scheme, opts.get(scheme, {}), tuple(args.shape), m, torch.float16)
            for i, ((plan, rep, ipw), lt) in enumerate(zip(rows, est.launches)):
                tail = (f"{est.time_s * 1e6:8.2f} {est.pct_memory_roofline:7.1f} {est.speedup_vs_fp16:7.2f}"
                        if i == 0 else "")
                print(f"{scheme:6} {m:5d} {cfg.label():28} {plan.label[:18]:18} {ipw:6.2f} {rep.instructions:8.0f} "
                      f"{plan.loop_trips:6d} {tail}")
                if args.verbose:
                    print("       ", {k.value: v for k, v in rep.counts.items()}, f"{lt.bound.value}-bound",
                          f"mem {lt.memory_s * 1e6:.2f} issue {lt.issue_s * 1e6:.2f} tensor {lt.tensor_s * 1e6:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
