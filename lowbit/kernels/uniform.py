"""Uniform int1/int2/int3/int4/int8 linear layers: launch wrappers, custom op and the kernel family.

The Triton kernels live in ``_uniform_kernels.py`` and the search spaces/heuristics in
``_uniform_configs.py``. Small M runs the split-K CUDA-core GEMV, large M the tensor-core GEMM;
both write either straight into the output (split_k = 1) or fp32 partials into a
[split_k, M, N] workspace that a fixed-order reduction sums, so results are deterministic.
Extra memory is that workspace only; the dequantized weight is never materialised.
"""
import math
from typing import Optional

import torch
import triton

from .._checks import check_linear_args
from ..formats import UNIFORM_SCHEMES, QuantizedWeight, Scheme, UniformSpec, packed_words, values_per_word
from . import _uniform_configs as cfgs
from ._common import KernelConfig, KernelFamily, KernelPath, check_runtime, flatten_rows
from ._uniform_kernels import splitk_reduce_kernel, uniform_gemm_kernel, uniform_gemv_kernel

REDUCE_BLOCK = 1024

__all__ = ["FAMILY", "UniformFamily", "linear", "launch", "workspace_numel"]


# ---------------------------------------------------------------------------------------------
# launch wrapper
# ---------------------------------------------------------------------------------------------
def workspace_numel(path: KernelPath, m: int, qw: QuantizedWeight, config: KernelConfig) -> int:
    """fp32 elements of the split-K workspace a launch allocates: split * M * N, or 0 without split."""
    _, split = cfgs.split_plan(qw, config, m)
    return split * m * qw.N if split > 1 else 0


def _check_launch(x2d, qw, bias, path, config, out) -> None:
    FAMILY.check_served(qw)
    if not isinstance(path, KernelPath):
        raise TypeError(f"path must be a KernelPath, got {type(path).__name__}")
    if not isinstance(config, KernelConfig):
        raise TypeError(f"config must be a KernelConfig, got {type(config).__name__}")
    if not isinstance(x2d, torch.Tensor) or x2d.dim() != 2:
        raise ValueError(f"x2d must be a 2-D [M, K] tensor, got {getattr(x2d, 'shape', type(x2d).__name__)}")
    check_linear_args(x2d, qw, bias)
    check_runtime(x2d)
    m, n = x2d.shape[0], qw.N
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (m, n):
        raise ValueError(f"out must have shape ({m}, {n}), got {getattr(out, 'shape', None)}")
    if out.dtype != x2d.dtype or out.device != x2d.device:
        raise ValueError(f"out must be {x2d.dtype} on {x2d.device}, got {out.dtype} on {out.device}")
    if out.stride(1) != 1:
        raise ValueError("out must be contiguous along N (stride 1 in its last dim)")
    problem = cfgs.config_problem(path, config, qw.spec)
    if problem:
        raise ValueError(f"config {config.label()} cannot run {qw.scheme.value} g{qw.spec.group_size} "
                         f"on the {path.value} path: {problem}")


def _fp16_dequant(x2d: torch.Tensor, qw: QuantizedWeight) -> bool:
    """GEMM dequantizes in fp16 when x and the stored metadata are fp16 (then it is exact up to one rounding)."""
    meta = [qw["scales"]] + ([] if qw.spec.symmetric else [qw["zeros"]])
    return x2d.dtype == torch.float16 and all(t.dtype == torch.float16 for t in meta)


def launch(x2d: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor], path: KernelPath,
           config: KernelConfig, out: torch.Tensor) -> torch.Tensor:
    """Run one explicit config: out[M, N] = x2d[M, K] . W^T (+ bias); returns `out`."""
    _check_launch(x2d, qw, bias, path, config, out)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    spec: UniformSpec = qw.spec
    m, k = x2d.shape
    n = qw.N
    per_split, split = cfgs.split_plan(qw, config, m)
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x2d.device) if split > 1 else out
    scales = qw["scales"]
    zeros = qw["zeros"] if not spec.symmetric else scales  # unused pointer when symmetric
    b = bias if bias is not None else scales  # unused pointer without bias
    common = dict(BITS=spec.bits, VPW=values_per_word(spec.bits), VP=cfgs.lanes_per_word(spec.bits),
                  HAS_ZEROS=not spec.symmetric, SYM_ZERO=spec.symmetric_zero, HAS_BIAS=bias is not None,
                  TWO_GROUPS=cfgs.two_groups(spec), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                  BLOCK_K=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages)
    args = (x2d, qw["qweight"], scales, zeros, b, out, ws, m, n, k, packed_words(k, spec.bits),
            k // qw.group_size, qw.group_size, x2d.stride(0), out.stride(0), per_split, split)
    tiles = triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n)
    if path is KernelPath.GEMV:
        uniform_gemv_kernel[(tiles, split)](*args, **common)
    else:
        uniform_gemm_kernel[(tiles, split)](*args, IEEE=x2d.dtype == torch.float32,
                                            DQ_F16=_fp16_dequant(x2d, qw), GROUP_M=config.group_m, **common)
    if split > 1:
        splitk_reduce_kernel[(triton.cdiv(m * n, REDUCE_BLOCK),)](
            ws, b, out, m * n, n, split, out.stride(0), HAS_BIAS=bias is not None, BLOCK=REDUCE_BLOCK)
    return out


# ---------------------------------------------------------------------------------------------
# custom op (torch.compile / CUDA graphs see one opaque op with a shape-only fake)
# ---------------------------------------------------------------------------------------------
def _rebuild(qweight, scales, zeros, bits, group_size, symmetric, n, k) -> QuantizedWeight:
    spec = UniformSpec(bits=bits, group_size=group_size, symmetric=symmetric)
    tensors = {"qweight": qweight, "scales": scales}
    if not symmetric:
        tensors["zeros"] = zeros
    return QuantizedWeight(Scheme(f"int{bits}"), spec, (n, k), tensors)


@torch.library.custom_op("lowbit::uniform_linear", mutates_args=())
def uniform_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], bits: int, group_size: int, symmetric: bool, n: int,
                   path: str, config: list[int]) -> torch.Tensor:
    """y = x . W^T + b for a uniform weight given as its tensors; config = KernelConfig fields in order."""
    qw = _rebuild(qweight, scales, zeros, bits, group_size, symmetric, n, x.shape[-1])
    x2d = flatten_rows(x)
    out = torch.empty((x2d.shape[0], n), dtype=x.dtype, device=x.device)
    cfg = KernelConfig(**dict(zip(_CONFIG_FIELDS, config)))
    launch(x2d, qw, bias, KernelPath(path), cfg, out)
    return out.reshape(*x.shape[:-1], n)


@uniform_linear.register_fake
def _uniform_linear_fake(x, qweight, scales, zeros, bias, bits, group_size, symmetric, n, path, config):
    return x.new_empty((*x.shape[:-1], n))


def linear(x: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor] = None, *,
           path=None) -> torch.Tensor:
    """kernels.uniform.linear: y = x . W^T + b for an int1..int8 weight (matches reference.uniform)."""
    return FAMILY.forward(x, qw, bias, KernelPath.parse(path))


# ---------------------------------------------------------------------------------------------
# the family
# ---------------------------------------------------------------------------------------------
_CONFIG_FIELDS = ("block_m", "block_n", "block_k", "split_k", "group_m", "num_warps", "num_stages")


class UniformFamily(KernelFamily):
    """int1..int8 with group-wise scales/zeros: split-K GEMV for M <= gemv_max_m, tensor-core GEMM above.

    gemv_max_m = 4: the CUDA-core GEMV spends ~4 + M instructions per weight, so beyond a few rows
    it stops being bound by memory and the BLOCK_M = 16 tensor-core GEMM with split-K wins.
    """

    name = "uniform"
    schemes = frozenset(UNIFORM_SCHEMES)
    gemv_max_m = 4

    def forward(self, x, qw, bias=None, path=None):
        FAMILY.check_served(qw)
        check_linear_args(x, qw, bias)
        check_runtime(x)
        path = KernelPath.parse(path)
        m = math.prod(x.shape[:-1])
        path = path or self.choose_path(m)
        cfg = self.select_config(x, path, m, qw)
        spec: UniformSpec = qw.spec
        return torch.ops.lowbit.uniform_linear(
            x, qw["qweight"], qw["scales"], None if spec.symmetric else qw["zeros"], bias, spec.bits,
            spec.group_size, spec.symmetric, qw.N, path.value, [getattr(cfg, f) for f in _CONFIG_FIELDS])

    def launch(self, x2d, qw, bias, path, config, out):
        return launch(x2d, qw, bias, KernelPath.parse(path), config, out)

    def search_space(self, path, qw=None, dtype=torch.float16):
        if qw is not None:
            FAMILY.check_served(qw)
        return cfgs.search_space(KernelPath.parse(path), qw, dtype)

    def heuristic(self, path, m, qw, dtype=torch.float16):
        FAMILY.check_served(qw)
        return cfgs.heuristic(KernelPath.parse(path), m, qw, dtype)

    def config_for(self, path, m, qw, dtype):
        """The cached or heuristic config; fp32 GEMMs fall back to the fp32 tiles (large FMA tiles spill)."""
        cfg = super().config_for(path, m, qw, dtype)
        if dtype == torch.float32 and not cfgs.in_space(path, cfg, dtype):
            cfg = self.heuristic(path, m, qw, dtype)
        return cfg

    def interpreter_block_k_ok(self, path, cfg, qw):
        """Interpreter tiles obey the same K rules as the GPU ones (inside a group; 3-bit: two groups)."""
        return cfgs.config_problem(path, cfg, qw.spec) is None

    def aot_cases(self):
        from ._uniform_aot import aot_cases

        return aot_cases()


FAMILY = UniformFamily()
