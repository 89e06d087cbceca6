"""Static roofline of the sign family (ternary, ternary_a16, binary) from FAMILY.launch_plans, without a GPU.

Every launch of one call is compiled for sm_90 exactly as its plan says (the AotCase a JIT launch on
aligned shapes specialises), its SASS main loop is counted (lowbit.kernels.sass) and the call is
estimated on the H200 (lowbit.perf.static_model). Everything printed is an ESTIMATE, not a measurement.

    python perf/sign_roofline.py [--m 1,16,4096] [--n 8192] [--k 8192] [--dtype fp16]

Must run with TRITON_INTERPRET unset. A stopgap until ``python -m lowbit check --roofline`` lands.
"""
from __future__ import annotations

import argparse
import json
import os

import torch


def compile_sass(case, cc: int = 90) -> str:
    """SASS of one AotCase compiled for sm_<cc>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from lowbit.kernels.sass import sass_of_cubin

    attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
    src = ASTSource(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                        options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages})
    return sass_of_cubin(ck.asm["cubin"])


def plan_launch(plan, sass: str):
    """(static_model.Launch, main-loop instructions per weight or None, LoopReport or None) of one plan."""
    from lowbit.kernels.sass import InstrClass, analyze, classify, parse_sass
    from lowbit.perf.static_model import Launch

    try:
        rep = analyze(sass, inner_trips=plan.inner_trips)
    except ValueError:  # no loop: every instruction runs once per CTA
        func = parse_sass(sass)[0]
        count = sum(1 for i in func.instructions if classify(i) is not InstrClass.NOP)
        return Launch(name=plan.label, bytes_moved=plan.hbm_bytes, threads_per_cta=plan.threads_per_cta,
                      ctas=plan.ctas, per_cta_instructions=count), None, None
    launch = Launch.from_loop(rep, name=plan.label, bytes_moved=plan.hbm_bytes, threads_per_cta=plan.threads_per_cta,
                              ctas=plan.ctas, iterations=plan.loop_trips)
    ipw = None
    if plan.weights_per_iteration:
        ipw = rep.instructions_per_weight(plan.threads_per_cta, plan.weights_per_iteration)
    return launch, ipw, rep


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="ternary,ternary_a16,binary")
    ap.add_argument("--m", default="1,16,4096")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--verbose", action="store_true", help="print each launch's estimate and loop counts")
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("run without TRITON_INTERPRET: this compiles for real GPUs")
    from lowbit.formats import QuantizedWeight
    from lowbit.kernels import sign
    from lowbit.perf.static_model import H200, estimate, format_estimate

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    fam = sign.FAMILY
    if not args.json:
        print(f"ESTIMATES (static SASS model, sm_90 SASS, H200 constants; not measured), N={args.n} K={args.k} "
              f"{args.dtype}")
        print(f"{'scheme':<12} {'M':>5} {'path':<5} {'config':<28} {'instr/weight':>12} {'est us':>8} "
              f"{'% roofline':>10} {'x fp16':>7}  launches")
    for scheme in args.schemes.split(","):
        qw = QuantizedWeight.empty(scheme, (args.n, args.k))
        for m in (int(v) for v in args.m.split(",")):
            path = fam.choose_path(m)
            cfg = fam.heuristic(path, m, qw, dtype)
            launches, ipws, reps = [], [], []
            for plan in fam.launch_plans(qw, m, path, dtype, cfg):
                launch, ipw, rep = plan_launch(plan, compile_sass(plan.case))
                launches.append(launch)
                reps.append((plan, rep))
                if ipw is not None:
                    ipws.append(ipw)
            est = estimate(launches, H200, (m, args.n, args.k))
            if args.json:
                print(json.dumps({"scheme": scheme, "m": m, "path": path.value, "config": cfg.label(),
                                  "instr_per_weight": ipws[0] if ipws else None, "est_us": est.time_s * 1e6,
                                  "pct_roofline": est.pct_memory_roofline, "x_fp16": est.speedup_vs_fp16,
                                  "launches": [lt.name for lt in est.launches]}))
                continue
            ipw_s = f"{ipws[0]:.3f}" if ipws else "-"
            print(f"{scheme:<12} {m:>5} {path.value:<5} {cfg.label():<28} {ipw_s:>12} {est.time_s * 1e6:>8.2f} "
                  f"{est.pct_memory_roofline:>9.1f}% {est.speedup_vs_fp16:>7.2f}  "
                  + ", ".join(f"{lt.name} ({lt.bound.value})" for lt in est.launches))
            if args.verbose:
                print("   " + format_estimate(est).replace("\n", "\n   "))
                for plan, rep in reps:
                    if rep is not None:
                        counts = {c.value: round(v) for c, v in rep.counts.items()}
                        print(f"   {plan.label}: {rep.instructions:.0f} instr/iter, {counts}")


if __name__ == "__main__":
    main()
