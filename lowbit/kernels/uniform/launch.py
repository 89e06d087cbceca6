"""Uniform int1/int2/int3/int4/int8 linear layers: launch wrapper, custom op and the family descriptor.

Small M runs a GEMV (tensor cores for fp16/bf16 x, CUDA cores for fp32 x and bf16 int8), large M
the tensor-core GEMM; each writes straight into the output (split_k = 1) or fp32 partials into a
[split_k, M, N] workspace that a fixed-order reduction sums, so results are deterministic. Extra
memory is that workspace only; the dequantized weight is never materialised.
"""
from typing import Optional

import torch
import triton

from ...formats import UNIFORM_SCHEMES, QuantizedWeight, UniformSpec
from ..base import KernelConfig, KernelFamily, KernelPath, on_interpreter, operands
from . import configs as cfgs
from .kernels import _uniform_gemm_kernel, _uniform_gemv_fma_kernel, _uniform_gemv_kernel, _uniform_reduce_kernel

REDUCE_BLOCK_M = 16
REDUCE_BLOCK_N = 128

__all__ = ["FAMILY", "UniformFamily", "launch", "uniform_linear", "workspace_numel"]


def workspace_numel(path: KernelPath, m: int, qw: QuantizedWeight, config: KernelConfig,
                    dtype: torch.dtype = torch.float16) -> int:
    """fp32 elements of the split-K workspace a launch allocates: split * M * N, or 0 without split."""
    _, split = cfgs.split_plan(path, qw.N, qw.K, qw.bits, config, m, dtype)
    return split * m * qw.N if split > 1 else 0


def _run(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
         bias: Optional[torch.Tensor], spec: UniformSpec, path: KernelPath, config: KernelConfig,
         out: torch.Tensor) -> torch.Tensor:
    """Allocate the workspace, pick the grid and launch: out[M, N] = x2d[M, K] . W^T (+ bias)."""
    m, k = x2d.shape
    n = qweight.shape[1]
    dtype = x2d.dtype
    per_split, split = cfgs.split_plan(path, n, k, spec.bits, config, m, dtype)
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x2d.device) if split > 1 else out
    zeros_arg = zeros if zeros is not None else scales  # unused pointer when symmetric
    b = bias if bias is not None else scales  # unused pointer without bias
    meta = dict(BITS=spec.bits, HAS_ZEROS=not spec.symmetric, SYM_ZERO=spec.symmetric_zero, HAS_BIAS=bias is not None,
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n)
    if path is KernelPath.GEMV and cfgs.mma_gemv(spec.bits, dtype):
        _uniform_gemv_kernel[(tiles, split)](
            x2d, qweight, scales, zeros_arg, b, out, ws, m, n, k, x2d.stride(0), out.stride(0), per_split, split,
            VGG=cfgs.per_group(spec, config), BF16=dtype == torch.bfloat16, NW=config.num_warps,
            EVEN=cfgs.gemv_geometry(spec.bits, config).even(k, per_split), EVEN_N=n % config.block_n == 0,
            USE_ASM=not on_interpreter(x2d), num_warps=config.num_warps, num_stages=config.num_stages, **meta)
    else:
        args = (x2d, qweight, scales, zeros_arg, b, out, ws, m, n, k, x2d.stride(0), out.stride(0), per_split, split)
        launch_opts = dict(num_warps=config.num_warps, num_stages=config.num_stages, TPG=cfgs.per_group(spec, config))
        if path is KernelPath.GEMV:
            _uniform_gemv_fma_kernel[(tiles, split)](*args, **meta, **launch_opts)
        else:
            _uniform_gemm_kernel[(tiles, split)](*args, PAIRS=cfgs.pair_fields_fit(spec.bits, dtype),
                                                 IEEE=dtype == torch.float32, GROUP_M=config.group_m, **meta,
                                                 **launch_opts)
    if split > 1:
        grid = (triton.cdiv(n, REDUCE_BLOCK_N), triton.cdiv(m, REDUCE_BLOCK_M))
        _uniform_reduce_kernel[grid](ws, b, out, m, n, split, out.stride(0), HAS_BIAS=bias is not None,
                                     BLOCK_M=REDUCE_BLOCK_M, BLOCK_N=REDUCE_BLOCK_N)
    return out


def launch(x2d: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor], path, config: KernelConfig,
           out: torch.Tensor) -> torch.Tensor:
    """Run one explicit config: out[M, N] = x2d[M, K] . W^T (+ bias), every argument checked; returns out."""
    return FAMILY.launch(x2d, qw, bias, path, config, out)


@torch.library.custom_op("lowbit::uniform_linear", mutates_args=())
def uniform_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], bits: int, group_size: int, symmetric: bool, path: str,
                   config: list[int]) -> torch.Tensor:
    """y [M, N] = x [M, K] . W^T + b for a uniform weight given as its tensors (checked by the caller)."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    spec = UniformSpec(bits=bits, group_size=group_size, symmetric=symmetric)
    return _run(x, qweight, scales, zeros, bias, spec, KernelPath(path), KernelConfig.from_list(config), out)


@uniform_linear.register_fake
def _uniform_linear_fake(x, qweight, scales, zeros, bias, bits, group_size, symmetric, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


class UniformFamily(KernelFamily):
    """int1..int8 with group-wise scales/zeros: GEMV for M <= gemv_max_m, tensor-core GEMM above.

    gemv_max_m = 16: the tensor-core GEMV serves up to 16 rows of x per program (two MMAs of 8
    columns), streaming the weight once; beyond that the GEMM's larger tiles win.
    """

    name = "uniform"
    schemes = frozenset(UNIFORM_SCHEMES)
    gemv_max_m = 16
    configs = cfgs

    def choose_path(self, m: int, qw=None, dtype=None) -> KernelPath:
        """GEMV up to gemv_max_m rows; where the tensor-core GEMV cannot run (configs.mma_layout_ok: Triton
        older than 3.6), only M = 1 takes the CUDA-core GEMV and M >= 2 the GEMM (static estimate at
        M = 16, N = K = 8192: 17.5 us for the GEMM against 152 us for the CUDA-core GEMV)."""
        return KernelPath.GEMV if m <= (self.gemv_max_m if cfgs.mma_layout_ok() else 1) else KernelPath.GEMM

    def forward(self, x2d, qw, bias, path, config):
        t = operands(qw)
        spec: UniformSpec = qw.spec
        return uniform_linear(x2d, t["qweight"], t["scales"], t.get("zeros"), bias, spec.bits, spec.group_size,
                              spec.symmetric, path.value, config.to_list())

    def run(self, x2d, qw, bias, path, config, out):
        t = operands(qw)
        return _run(x2d, t["qweight"], t["scales"], t.get("zeros"), bias, qw.spec, path, config, out)

    def tuned_config_problem(self, path, config, qw, dtype):
        """As config_problem, plus: the tile must be one the declared space of `dtype` holds (fp32 GEMMs
        only fit small tiles; other tiles were never compile-checked)."""
        problem = self.config_problem(path, config, qw, dtype)
        if problem is None and not cfgs.in_space(path, config, dtype, qw.bits):
            problem = f"{config.label()} is not in the declared {path.value} space for {dtype} activations"
        return problem

    def interpreter_block_k_ok(self, path, cfg, qw):
        """Interpreter tiles obey the same K rules as the GPU ones (inside a group, whole blocks)."""
        return cfgs.spec_problem(path, cfg, qw.spec, torch.float32) is None

    def interpreter_config(self, path, m, qw, dtype):
        """Large tiles for the CPU interpreter; the tensor-core GEMV keeps its own geometry (8 warps: the
        interpreter runs their super-steps as one tensor op; 8 MMA row blocks where they fit; the largest
        virtual group the group size allows)."""
        if path is KernelPath.GEMV and cfgs.mma_gemv(qw.bits, dtype):
            want = 1 if m <= 1 else 2 if m <= 2 else 4 if m <= 4 else 8 if m <= 8 else 16
            for bm in [b for b in reversed(cfgs.GEMV_BLOCK_M) if b <= want]:
                for bk in sorted(cfgs.GEMV_BLOCK_K, reverse=True):
                    for bn in (128, 64, 32):
                        cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1, group_m=1, num_warps=8,
                                           num_stages=1)
                        if cfgs.spec_problem(path, cfg, qw.spec, dtype) is None:
                            return cfg
        return super().interpreter_config(path, m, qw, dtype)

    def aot_cases(self):
        from .aot import aot_cases

        return aot_cases()

    def launch_plans(self, qw, m, path, dtype, config):
        from .aot import launch_plans

        self.check_served(qw)
        return launch_plans(self, qw, m, path, dtype, config)


FAMILY = UniformFamily()
