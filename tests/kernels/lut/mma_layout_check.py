"""Compile the tensor-core LUT GEMV's gate cases for sm_80/sm_90 and check what its inline PTX assumes.

Run by test_lut_aot.py in a subprocess without TRITON_INTERPRET: ``python mma_layout_check.py``. Prints
one JSON object, case label -> {sm: {"table_offset": int, "a_fragment": bool, "b_fragment": bool}}:
- table_offset: the shared-memory offset Triton's allocator gives the pair table (the lookup PTX
  addresses it from global_smem, so it must be 0);
- a_fragment / b_fragment: the TTGIR holds the linear layouts of the mma m16n8k16 A and B fragments
  (PTX ISA, .f16) for the [W, 16, 16] / [W, 16, 8] operands; the kernel converts its lookups and x
  into the dot-operand layouts with assert_trivial=True, so these are the layouts it fills.
"""
import json
import os
import re
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton._C.libtriton import ir, nvidia  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

from lowbit.kernels.lut import FAMILY  # noqa: E402

A_BASES = "register = [[0, 0, 1], [0, 8, 0], [0, 0, 8]], lane = [[0, 0, 2], [0, 0, 4], [0, 1, 0], [0, 2, 0], [0, 4, 0]]"
B_BASES = "register = [[0, 1, 0], [0, 8, 0]], lane = [[0, 2, 0], [0, 4, 0], [0, 0, 1], [0, 0, 2], [0, 0, 4]]"


def table_offset(ttgir: str, cc: int) -> int:
    """Run Triton's shared-memory allocation on the TTGIR and return the pair table's offset."""
    backend = make_backend(GPUTarget("cuda", cc, 32))
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ttgir")
        with open(path, "w") as fh:
            fh.write(ttgir)
        mod = ir.parse_mlir_module(path, ctx)
        mod.context = ctx
        pm = ir.pass_manager(ctx)
        nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(pm, cc, 80)
        pm.run(mod, "lowbit-table-offset")
        found = re.findall(r"%table\S* = ttg\.local_alloc.*?allocation\.offset = (\d+)", str(mod))
    if len(found) != 1:
        raise RuntimeError(f"expected one pair-table allocation, found {found}")
    return int(found[0])


def main() -> None:
    out = {}
    for case in FAMILY.aot_cases():
        if not getattr(case.kernel, "is_gluon", lambda: False)():
            continue
        attrs = {(case.kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in case.divisible_by_16}
        for cc in (80, 90):
            src = GluonASTSource(case.kernel, dict(case.signature), constexprs=dict(case.constexprs), attrs=attrs)
            ck = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                                options={"num_warps": case.config.num_warps, "num_stages": case.config.num_stages})
            ttgir = ck.asm["ttgir"]
            out.setdefault(case.label, {})[cc] = {"table_offset": table_offset(ttgir, cc),
                                                  "a_fragment": A_BASES in ttgir, "b_fragment": B_BASES in ttgir}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
