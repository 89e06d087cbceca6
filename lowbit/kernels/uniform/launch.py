"""Uniform int1/int2/int3/int4/int8 linear layers: launch wrapper, custom op and the family descriptor.

Small M runs the split-K CUDA-core GEMV, large M the tensor-core GEMM; both write either straight
into the output (split_k = 1) or fp32 partials into a [split_k, M, N] workspace that a
fixed-order reduction sums, so results are deterministic. Extra memory is that workspace only;
the dequantized weight is never materialised.
"""
from typing import Optional

import torch
import triton

from ...formats import UNIFORM_SCHEMES, QuantizedWeight, UniformSpec, packed_words, values_per_word
from ..base import KernelConfig, KernelFamily, KernelPath, operands
from . import configs as cfgs
from .kernels import _uniform_gemm_kernel, _uniform_gemv_kernel, _uniform_reduce_kernel

REDUCE_BLOCK_M = 16
REDUCE_BLOCK_N = 128

__all__ = ["FAMILY", "UniformFamily", "launch", "uniform_linear", "workspace_numel"]


def workspace_numel(path: KernelPath, m: int, qw: QuantizedWeight, config: KernelConfig) -> int:
    """fp32 elements of the split-K workspace a launch allocates: split * M * N, or 0 without split."""
    _, split = cfgs.split_plan(qw.N, qw.K, qw.bits, config, m)
    return split * m * qw.N if split > 1 else 0


def _run(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
         bias: Optional[torch.Tensor], spec: UniformSpec, path: KernelPath, config: KernelConfig,
         out: torch.Tensor) -> torch.Tensor:
    """Allocate the workspace, pick the grid and launch: out[M, N] = x2d[M, K] . W^T (+ bias)."""
    m, k = x2d.shape
    n = qweight.shape[1]
    group = k if spec.group_size == -1 else spec.group_size
    per_split, split = cfgs.split_plan(n, k, spec.bits, config, m)
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x2d.device) if split > 1 else out
    zeros = zeros if zeros is not None else scales  # unused pointer when symmetric
    b = bias if bias is not None else scales  # unused pointer without bias
    # fp16 dequant in the GEMM when x and the stored metadata are fp16 (exact up to one rounding)
    dq_f16 = x2d.dtype == torch.float16 and scales.dtype == torch.float16 and (
        spec.symmetric or zeros.dtype == torch.float16)
    common = dict(BITS=spec.bits, VPW=values_per_word(spec.bits), VP=cfgs.lanes_per_word(spec.bits),
                  HAS_ZEROS=not spec.symmetric, SYM_ZERO=spec.symmetric_zero, HAS_BIAS=bias is not None,
                  TWO_GROUPS=cfgs.two_groups(spec), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                  BLOCK_K=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages)
    args = (x2d, qweight, scales, zeros, b, out, ws, m, n, k, packed_words(k, spec.bits),
            k // group, group, x2d.stride(0), out.stride(0), per_split, split)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n)
    if path is KernelPath.GEMV:
        _uniform_gemv_kernel[(tiles, split)](*args, **common)
    else:
        _uniform_gemm_kernel[(tiles, split)](*args, IEEE=x2d.dtype == torch.float32, DQ_F16=dq_f16,
                                             GROUP_M=config.group_m, **common)
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
    """int1..int8 with group-wise scales/zeros: split-K GEMV for M <= gemv_max_m, tensor-core GEMM above.

    gemv_max_m = 4: the CUDA-core GEMV spends ~4 + M instructions per weight, so beyond a few rows
    it stops being bound by memory and the BLOCK_M = 16 tensor-core GEMM with split-K wins.
    """

    name = "uniform"
    schemes = frozenset(UNIFORM_SCHEMES)
    gemv_max_m = 4
    configs = cfgs

    def forward(self, x2d, qw, bias, path, config):
        t = operands(qw)
        spec: UniformSpec = qw.spec
        return uniform_linear(x2d, t["qweight"], t["scales"], t.get("zeros"), bias, spec.bits, spec.group_size,
                              spec.symmetric, path.value, config.to_list())

    def run(self, x2d, qw, bias, path, config, out):
        t = operands(qw)
        return _run(x2d, t["qweight"], t["scales"], t.get("zeros"), bias, qw.spec, path, config, out)

    def tuned_config_problem(self, path, config, qw, dtype):
        """As config_problem; fp32 GEMMs also need a tile of the fp32 space (larger FMA tiles spill)."""
        problem = self.config_problem(path, config, qw, dtype)
        if problem is None and dtype == torch.float32 and not cfgs.in_space(path, config, dtype):
            problem = "fp32 activations run exact FMA dots, which only the fp32 tiles fit without spilling"
        return problem

    def interpreter_block_k_ok(self, path, cfg, qw):
        """Interpreter tiles obey the same K rules as the GPU ones (inside a group; 3-bit: two groups)."""
        return cfgs.spec_problem(path, cfg, qw.spec) is None

    def aot_cases(self):
        from .aot import aot_cases

        return aot_cases()

    def launch_plans(self, qw, m, path, dtype, config):
        from .aot import launch_plans

        return launch_plans(self, qw, m, path, dtype, config)


FAMILY = UniformFamily()
