"""Probe: static SASS counts of today's int4 and lut4 GEMV heuristic configs at M=1, N=K=8192.

Compiles ahead of time (no GPU) for sm_90 and prints the main-loop report of lowbit.kernels.sass
and an ESTIMATE from lowbit.perf.static_model. Each kernel is built twice:

- "gate": the specialisation the compile gate builds today (its AotCase attributes);
- "jit":  what a JIT launch with these argument values specialises: every pointer 16-byte
  aligned, integer arguments that are multiples of 16 marked divisible by 16, and integer
  arguments equal to 1 turned into constants (Triton does both when it launches).

Run with TRITON_INTERPRET unset:  PYTHONPATH=$PWD python scripts/sass_probe.py [--cc 90]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402

from lowbit.formats import QuantizedWeight, Scheme, UniformSpec, packed_words, values_per_word  # noqa: E402
from lowbit.kernels.sass import analyze, sass_of_cubin  # noqa: E402
from lowbit.perf import static_model as sm  # noqa: E402

M, N, K = 1, 8192, 8192


def compile_sass(kernel, signature: dict, constexprs: dict, divisible: tuple, cfg, cc: int) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(kernel, dict(signature), constexprs=dict(constexprs), attrs=attrs)
    ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    return sass_of_cubin(ck.asm["cubin"])


def jit_like(signature: dict, constexprs: dict, ints: dict) -> tuple[dict, dict, tuple]:
    """The specialisation a JIT launch makes for these integer argument values."""
    sig, const = dict(signature), dict(constexprs)
    divisible = [n for n, t in sig.items() if t.startswith("*")]
    for name, v in ints.items():
        if v == 1:
            sig[name] = "constexpr"
            const[name] = 1
        elif v % 16 == 0:
            divisible.append(name)
    return sig, const, tuple(divisible)


def show(title: str, sass: str, threads: int, weights_per_iter: int, iterations: int, ctas: int,
         launches_extra=(), bytes_main: float = 0.0, cc: int = 90) -> None:
    r = analyze(sass)
    ipw = r.instructions_per_weight(threads, weights_per_iter)
    print(f"== {title}")
    print(f"   main loop {r.first:#06x}-{r.last:#06x}: {r.instructions:.0f} instructions/iteration/thread, "
          f"{threads} threads, {weights_per_iter} weights/iteration -> {ipw:.2f} instructions per weight per thread")
    print("   by class: " + ", ".join(f"{c.value} {v:.0f}" for c, v in r.counts.items()))
    print(f"   global loads by width (bits: count): {dict(r.global_load_widths)}; "
          f"{r.load_bytes_per_weight(threads, weights_per_iter):.3f} requested bytes/weight; "
          f"outside-loop instructions {r.outside_instructions}"
          + ("; LOWER BOUND (inner loops counted once)" if r.lower_bound else ""))
    main = sm.Launch.from_loop(r, name="gemv", bytes_moved=bytes_main, threads_per_cta=threads, ctas=ctas,
                               iterations=iterations)
    for hw in ((sm.H200, sm.H100_SXM) if cc == 90 else (sm.A100_SXM_80GB,)):  # the GPUs this build runs on
        est = sm.estimate([main, *launches_extra], hw, shape=(M, N, K))
        print("   " + sm.format_estimate(est).replace("\n", "\n   "))


def probe_uniform(cc: int) -> None:
    from lowbit.kernels import _uniform_configs as cfgs
    from lowbit.kernels._common import KernelPath
    from lowbit.kernels._uniform_aot import make_case
    from lowbit.kernels._uniform_kernels import uniform_gemv_kernel

    spec = UniformSpec(4, 128, False)
    meta = torch.empty(K // 128, N, dtype=torch.float16, device="meta")
    qw = QuantizedWeight(Scheme.INT4, spec, (N, K), {
        "qweight": torch.empty(packed_words(K, 4), N, dtype=torch.int32, device="meta"),
        "scales": meta, "zeros": meta})
    cfg = cfgs.heuristic(KernelPath.GEMV, M, qw)
    case = make_case(KernelPath.GEMV, cfg, torch.float16, spec)
    per_split, split = cfgs.split_plan(qw, cfg, M)
    ints = dict(M=M, N=N, K=K, KW_TOTAL=packed_words(K, 4), G=K // 128, group_size=128, stride_xm=K,
                stride_om=N, tiles_per_split=per_split, split_k=split)
    threads = 32 * cfg.num_warps
    weights = cfg.block_n * cfgs.tile_codes(4, cfg.block_k)
    ctas = -(-N // cfg.block_n) * -(-M // cfg.block_m) * split
    gemv_bytes = N * K // 2 + 2 * (K // 128) * N * 2 + M * K * 2 + split * M * N * 4
    reduce = sm.Launch("splitk_reduce (bytes only: its SASS is not counted here)",
                       bytes_moved=split * M * N * 4 + M * N * 2, threads_per_cta=128, ctas=max(1, M * N // 1024))
    print(f"int4 g128 asym GEMV, fp16 x, M={M} N={N} K={K}, heuristic {cfg.label()} (split {split}, "
          f"{per_split} K tiles per split), sm_{cc}")
    for label, (sig, const, div) in (
            ("gate", (case.signature, case.constexprs, case.divisible_by_16)),
            ("jit", jit_like(case.signature, case.constexprs, ints))):
        sass = compile_sass(uniform_gemv_kernel, sig, const, div, cfg, cc)
        show(f"uniform int4 GEMV [{label}]", sass, threads, weights, per_split, ctas, (reduce,), gemv_bytes, cc)


def probe_lut4(cc: int) -> None:
    from lowbit.kernels import lut
    from lowbit.kernels._lut_kernels import lut_gemv_kernel

    bits, group = 4, 0
    cfg = lut._gemv_heuristic(M, N, K, bits, group)
    slots = lut._slots(bits)
    vpw = values_per_word(bits)
    kw = packed_words(K, bits)
    block_k = max(cfg.block_k, slots)
    steps = -(-kw // (block_k // slots))
    per_split = -(-steps // max(1, min(cfg.split_k, steps)))
    words_per_split = per_split * (block_k // slots)
    split = -(-kw // words_per_split)
    atomic = split > 1
    sig = lut._dense_signature("fp16", "fp32" if atomic else "fp16", False, gemv=True)
    const = dict(BITS=bits, VPW=vpw, SLOTS=slots, GROUP=group, HAS_SCALE=False,
                 SCALE_ROW=lut._scale_row(group, block_k // slots * vpw), HAS_BIAS=True, ATOMIC=atomic,
                 BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k)
    sig.update({c: "constexpr" for c in const})
    ints = dict(M=M, N=N, K=K, KW=kw, stride_xm=K, stride_om=N, stride_on=1, tab_stride_n=2 ** bits,
                words_per_split=words_per_split)
    threads = 32 * cfg.num_warps
    weights = cfg.block_n * (block_k // slots) * vpw
    ctas = -(-N // cfg.block_n) * split * -(-M // cfg.block_m)
    gemv_bytes = N * K // 2 + N * 16 * 2 + M * K * 2 + 2 * split * M * N * 4  # atomics: read + write
    extra = (sm.Launch("zero fp32 target (bytes only)", bytes_moved=M * N * 4, threads_per_cta=128, ctas=1),
             sm.Launch("cast fp32 -> fp16 (bytes only)", bytes_moved=M * N * 6, threads_per_cta=128, ctas=1))
    print(f"\nlut4 GEMV, fp16 x, M={M} N={N} K={K}, heuristic {cfg.label()} (split {split}, "
          f"{per_split} steps per split), sm_{cc}")
    for label, (s, c, div) in (("gate", (sig, const, ())), ("jit", jit_like(sig, const, ints))):
        sass = compile_sass(lut_gemv_kernel, s, c, div, cfg, cc)
        show(f"lut4 GEMV [{label}]", sass, threads, weights, per_split, ctas, extra, gemv_bytes, cc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cc", type=int, default=90, choices=(80, 90))
    args = p.parse_args(argv)
    probe_uniform(args.cc)
    probe_lut4(args.cc)
    print("\nAll times above are ESTIMATES of a static model (lowbit.perf.static_model), not measurements.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
