"""Static roofline of the uniform kernels from their sm_90 SASS (no GPU): instructions per weight
per thread in the main loop and the static-model estimate on H200, for the dispatcher's configs.

    TRITON_CACHE_DIR=$PWD/.triton-cache python scripts/uniform_static.py [--m 1,16,4096] [--schemes int4,...]

A stand-in until ``python -m lowbit check --roofline`` lands; it reads ``FAMILY.launch_plans``.
Must run without TRITON_INTERPRET (it compiles for a real GPU target).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

from lowbit.formats import QuantizedWeight  # noqa: E402
from lowbit.kernels.sass import analyze, sass_of_cubin  # noqa: E402
from lowbit.kernels.uniform import FAMILY  # noqa: E402
from lowbit.perf import static_model as sm  # noqa: E402

VARIANTS = {  # label -> (scheme, options)
    "int4 g128 asym": ("int4", dict(group_size=128, symmetric=False)),
    "int4 g128 sym": ("int4", dict(group_size=128, symmetric=True)),
    "int4 g64 asym": ("int4", dict(group_size=64, symmetric=False)),
    "int4 g64 sym": ("int4", dict(group_size=64, symmetric=True)),
    "int3 g128 asym": ("int3", dict(group_size=128, symmetric=False)),
    "int2 g128 asym": ("int2", dict(group_size=128, symmetric=False)),
    "int1 g128 asym": ("int1", dict(group_size=128, symmetric=False)),
    "int8 g128 asym": ("int8", dict(group_size=128, symmetric=False)),
}


def compile_sass(case, cc=90):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
    src = ASTSource(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                        options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages})
    return sass_of_cubin(ck.asm["cubin"]), ck


def measure(scheme, opts, m, n=8192, k=8192, dtype=torch.float16, hw=sm.H200, verbose=False):
    qw = QuantizedWeight.empty(scheme, (n, k), **opts)
    path = FAMILY.choose_path(m)
    cfg = FAMILY.heuristic(path, m, qw, dtype)
    launches, ipw, rows = [], None, []
    for plan in FAMILY.launch_plans(qw, m, path, dtype, cfg):
        sass, ck = compile_sass(plan.case)
        name = plan.case.kernel.__name__
        try:
            rep = analyze(sass, kernel_name=None if sass.count("Function :") == 1 else name)
        except ValueError:  # no loop
            rep = None
        if rep is None:
            per_cta = sum(1 for ln in sass.splitlines() if ln.strip().startswith("/*") and "*/" in ln)
            launches.append(sm.Launch(name=plan.label, bytes_moved=plan.hbm_bytes, threads_per_cta=plan.threads_per_cta,
                                      ctas=plan.ctas, per_cta_instructions=per_cta))
            continue
        if plan.inner_trips is not None:
            rep = analyze(sass, kernel_name=None if sass.count("Function :") == 1 else name,
                          inner_trips=plan.inner_trips)
        launches.append(sm.Launch.from_loop(rep, name=plan.label, bytes_moved=plan.hbm_bytes,
                                            threads_per_cta=plan.threads_per_cta, ctas=plan.ctas,
                                            iterations=plan.loop_trips))
        if plan.weights_per_iteration:
            ipw = rep.instructions_per_weight(plan.threads_per_cta, plan.weights_per_iteration)
            rows.append((plan.label, rep, ck.n_regs if hasattr(ck, "n_regs") else None))
    est = sm.estimate(launches, hw, shape=(m, n, k))
    if verbose:
        for label, rep, regs in rows:
            print(f"    {label}: {rep.instructions:.0f} instr/iter, regs {regs}, counts "
                  + ", ".join(f"{c.value}={v:.0f}" for c, v in rep.counts.items()))
        print("    " + sm.format_estimate(est).replace("\n", "\n    "))
    return cfg, ipw, est


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,16,4096")
    ap.add_argument("--schemes", default=",".join(VARIANTS))
    ap.add_argument("-v", action="store_true")
    a = ap.parse_args(argv)
    ms = [int(v) for v in a.m.split(",")]
    print(f"{'variant':16} {'M':>5} {'config':32} {'instr/w':>8} {'est us':>8} {'% roofline':>10} {'vs fp16':>8}")
    for label in a.schemes.split(","):
        scheme, opts = VARIANTS[label]
        for m in ms:
            cfg, ipw, est = measure(scheme, opts, m, verbose=a.v)
            print(f"{label:16} {m:5d} {cfg.label():32} {ipw if ipw is not None else float('nan'):8.3f} "
                  f"{est.time_s * 1e6:8.2f} {est.pct_memory_roofline:10.1f} {est.speedup_vs_fp16:8.2f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
