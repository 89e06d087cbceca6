"""Compile launch plans of the tensor-core GEMV for sm_90 and print facts the tests check (JSON).

Run by tests/kernels/uniform/test_uniform_aot.py in a subprocess without TRITON_INTERPRET
(the interpreter replaces JIT functions): ``python gemv_compile_facts.py``. Prints
``{"loop": [...], "gate": [...]}``: for each of CASES, the lane/warp bases of the operands of every
inline-PTX MMA in the TTGIR (which element of a [L, NW, 8, 4] fragment tensor each lane holds) and
the main loop's counts from the SASS; for every tensor-core GEMV case of the compile gate
(aot.aot_cases: all bit widths and BLOCK_M, 2/4/8 warps, bf16, smaller groups), the bases alone.
"""
import json
import re
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import ASTSource

from lowbit.formats import QuantizedWeight
from lowbit.kernels import KernelPath
from lowbit.kernels.gate import prepare_environment
from lowbit.kernels.sass import analyze, sass_of_cubin
from lowbit.kernels.uniform import FAMILY
from lowbit.kernels.uniform import configs as C

CASES = [  # (scheme, options, M, dtype)
    ("int4", dict(group_size=128), 1, torch.float16),
    ("int3", dict(group_size=128), 16, torch.float16),
    ("int1", dict(group_size=128), 1, torch.float16),
    ("int4", dict(group_size=64, symmetric=True), 4, torch.bfloat16),
]


def _ints(text):
    return [int(v) for v in re.findall(r"-?\d+", text)]


def _bases_blocked(attr: str) -> dict:
    spt = _ints(re.search(r"sizePerThread = \[([^\]]*)\]", attr).group(1))
    tpw = _ints(re.search(r"threadsPerWarp = \[([^\]]*)\]", attr).group(1))
    wpc = _ints(re.search(r"warpsPerCTA = \[([^\]]*)\]", attr).group(1))
    order = _ints(re.search(r"order = \[([^\]]*)\]", attr).group(1))
    rank = len(spt)
    out = {"lane": [], "warp": []}
    for key, counts, unit in (("lane", tpw, spt), ("warp", wpc, [s * t for s, t in zip(spt, tpw)])):
        for d in order:
            n = counts[d]
            k = 1
            while k < n:
                v = [0] * rank
                v[d] = unit[d] * k
                out[key].append(v)
                k *= 2
    return out


def _bases_linear(attr: str) -> dict:
    out = {}
    for key in ("lane", "warp"):
        body = re.search(key + r" = \[(.*?)\]\](?:,|\s*\})", attr)
        text = body.group(1) + "]" if body else ""
        out[key] = [_ints(v) for v in re.findall(r"\[([^\[\]]*)\]", text)]
    return out


def layout_bases(name: str, defs: dict) -> dict:
    attr = defs[name]
    if attr.startswith("#ttg.blocked"):
        return _bases_blocked(attr)
    if attr.startswith("#ttg.linear"):
        return _bases_linear(attr)
    raise ValueError(f"unhandled layout {attr[:60]}")


def asm_operand_layouts(ttgir: str) -> list:
    defs = dict(re.findall(r"^(#\w+) = (#ttg\.[^\n]*)$", ttgir, flags=re.M))
    out = []
    for line in ttgir.splitlines():
        if "elementwise_inline_asm" in line and "mma.sync" in line:
            types = re.findall(r"tensor<([0-9x]+)x(?:i32|f32|f16|bf16), (#\w+)>", line)
            out.append([{"shape": shape, "layout": lay, "bases": layout_bases(lay, defs)} for shape, lay in types])
    return out


def _compile(case):
    """sm_90 build of an AotCase, as the compile gate makes it (same options: its cache entries serve)."""
    attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
    src = ASTSource(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
    options = {"num_warps": case.config.num_warps, "num_stages": case.config.num_stages, **dict(case.options)}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def main():
    prepare_environment()
    facts = []
    for scheme, opts, m, dtype in CASES:
        qw = QuantizedWeight.empty(scheme, (8192, 8192), **opts)
        path = FAMILY.choose_path(m)
        cfg = FAMILY.heuristic(path, m, qw, dtype)
        plan = FAMILY.launch_plans(qw, m, path, dtype, cfg)[0]
        ck = _compile(plan.case)
        sass = sass_of_cubin(ck.asm["cubin"])
        rep = analyze(sass, inner_trips=plan.inner_trips)
        geo = C.gemv_geometry(qw.bits, cfg)
        facts.append({
            "label": f"{scheme} {opts} M={m} {dtype}", "path": path.value, "config": cfg.to_dict(),
            "asm": asm_operand_layouts(ck.asm["ttgir"]),
            "counts": {c.value: v for c, v in rep.counts.items()},
            "inner_loops": len(rep.inner_loops), "lower_bound": rep.lower_bound,
            "mma_per_trip": sum(rep.mma.values()) + rep.unknown_mma,
            "expected_mma_per_trip": geo.inner_trips * geo.steps_per_iteration * geo.halves * (geo.rows + 1),
            "local": sass.count("LDL") + sass.count("STL"),
            "ipw": rep.instructions_per_weight(plan.threads_per_cta, plan.weights_per_iteration),
            "is_gemv": path is KernelPath.GEMV,
        })
    gate = []
    for case in FAMILY.aot_cases():
        if case.kernel.__name__ == "_uniform_gemv_kernel":
            gate.append({"label": case.label, "config": case.config.to_dict(),
                         "asm": asm_operand_layouts(_compile(case).asm["ttgir"])})
    json.dump({"loop": facts, "gate": gate}, sys.stdout)


if __name__ == "__main__":
    main()
