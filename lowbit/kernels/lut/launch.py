"""Lookup-table family (lut3/lut4, sq3/sq4 with sparse outliers, nf4): launch wrapper, custom op, descriptor.

Data flow of one forward:

- Without split-K or outliers: one kernel writes ``cast(x W^T + b)`` straight into the output.
- GEMV with split-K or sq outliers, GEMM with split-K: the kernel writes fp32 partial sums to a
  workspace ``[split, M, N]``; :func:`_lut_finish_kernel` sums them in split order, adds the sq
  outliers of whole rows (CSR, stored order), the bias, and casts into the output. Every sum runs
  in a fixed order, so the same input gives bitwise the same output on every run.
- GEMM with sq outliers: they are stored grouped by 32 x 32 weight sub-tile (built once with
  the weight, :func:`lowbit.formats.outlier_tiles`), and each K step adds its tile's outliers to
  the decoded weight tile with a one-hot tensor-core product; the output is written once.

Nothing here reads tensor values on the host, so the forward is CUDA-graph capturable and
``torch.compile(fullgraph=True)`` traces it through the ``lowbit::lut_linear`` custom op.
Memory safety does not depend on the outlier indices: the kernels mask every index to its
array and every column to [0, K), so a corrupted CSR gives wrong numbers, never an
out-of-bounds access (QuantizedWeight validates them when it is built).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton

from ...formats import LUT_SCHEMES, OUTLIER_TILE, QuantizedWeight, Scheme, packed_words, values_per_word
from ..base import KernelConfig, KernelFamily, KernelPath, on_interpreter, operands
from . import configs as cfgs
from .kernels import _lut_finish_kernel, _lut_gemm_kernel, _lut_gemv_kernel

_NF4_TABLES: dict = {}  # device -> the 16 NF4 values (fp32); a constant, uploaded once per device
_SPARSE = ("row_ptr", "col_idx", "values", "tile_ptr", "tile_kn", "tile_val")

__all__ = ["FAMILY", "LutFamily", "launch", "lut_linear", "workspace_numel"]


def nf4_table(device: torch.device) -> torch.Tensor:
    """The NF4 code book on `device` (built once per device)."""
    key = str(device)
    if key not in _NF4_TABLES:
        from ...reference.nf4 import nf4_table as _table

        _NF4_TABLES[key] = _table(device)
    return _NF4_TABLES[key]


def workspace_numel(path: KernelPath, m: int, qw: QuantizedWeight, config: KernelConfig) -> int:
    """fp32 elements of the workspace a launch allocates: split * M * N when partials go through it."""
    _, split = cfgs.split_plan(m, qw.N, qw.K, qw.bits, config)
    sparse = getattr(qw.spec, "sparse", False)
    return split * m * qw.N if split > 1 or (sparse and path is KernelPath.GEMV) else 0


def _run(x2d, qweight, lut, absmax, sparse: Optional[dict], bias, bits: int, group: int,
         path: KernelPath, cfg: KernelConfig, out: torch.Tensor) -> torch.Tensor:
    """Launch the kernels of one call: x2d [M, K] . W^T (+ bias) into out [M, N]."""
    m, k = x2d.shape
    kw, n = qweight.shape
    nf4 = absmax is not None
    table = nf4_table(x2d.device) if nf4 else lut
    scale = absmax if nf4 else qweight  # dummy pointer when HAS_SCALE is off
    tab_stride_n = 0 if nf4 else lut.shape[1]
    nnz = sparse["col_idx"].numel() if sparse is not None else 0
    per_split, split = cfgs.split_plan(m, n, k, bits, cfg)
    outliers_in_finish = nnz > 0 and path is KernelPath.GEMV
    to_ws = split > 1 or outliers_in_finish
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x2d.device) if to_ws else out
    bias_arg = bias if bias is not None else out
    common = dict(BITS=bits, VPW=values_per_word(bits), LANES=cfgs.lanes(bits), GROUP=group, HAS_SCALE=nf4,
                  HAS_BIAS=bias is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if path is KernelPath.GEMV:
        grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
        _lut_gemv_kernel[grid](x2d, qweight, table, scale, bias_arg, out, ws, m, n, k, kw, x2d.stride(0),
                               out.stride(0), tab_stride_n, per_split, int(to_ws), **common)
    else:
        has_tiles = nnz > 0
        tiles = [sparse[name] for name in ("tile_ptr", "tile_kn", "tile_val")] if has_tiles else [qweight] * 3
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
        _lut_gemm_kernel[grid](x2d, qweight, table, scale, bias_arg, out, ws, *tiles, m, n, k, kw, nnz,
                               x2d.stride(0), out.stride(0), tab_stride_n, per_split, int(to_ws),
                               IEEE_DOT=x2d.dtype == torch.float32, HAS_SPARSE=has_tiles, SUB=OUTLIER_TILE,
                               SPARSE_CHUNK=cfgs.INTERP_SPARSE_CHUNK if on_interpreter(x2d) else cfgs.SPARSE_CHUNK,
                               GROUP_M=cfg.group_m, **common)
    if to_ws:
        csr = [sparse[name] for name in ("row_ptr", "col_idx", "values")] if outliers_in_finish else [qweight] * 3
        grid = (triton.cdiv(n, cfgs.FINISH_BLOCK_N), triton.cdiv(m, cfgs.FINISH_BLOCK_M))
        _lut_finish_kernel[grid](ws, x2d, *csr, bias_arg, out, m, n, k, nnz, split, x2d.stride(0), out.stride(0),
                                 HAS_SPARSE=outliers_in_finish, HAS_BIAS=bias is not None,
                                 BLOCK_M=cfgs.FINISH_BLOCK_M, BLOCK_N=cfgs.FINISH_BLOCK_N,
                                 num_warps=cfgs.FINISH_WARPS)
    return out


def _tensors(qw: QuantizedWeight) -> tuple:
    """(qweight, lut, absmax, sparse dict or None) with None for what the scheme lacks."""
    t = operands(qw)
    sparse = {name: t[name] for name in _SPARSE} if "row_ptr" in t else None
    return t["qweight"], t.get("lut"), t.get("absmax"), sparse


def launch(x2d: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor], path, config: KernelConfig,
           out: torch.Tensor) -> torch.Tensor:
    """Run one explicit config: out[M, N] = x2d[M, K] . W^T (+ bias), every argument checked; returns out."""
    return FAMILY.launch(x2d, qw, bias, path, config, out)


@torch.library.custom_op("lowbit::lut_linear", mutates_args=())
def lut_linear(x: torch.Tensor, qweight: torch.Tensor, lut: Optional[torch.Tensor], absmax: Optional[torch.Tensor],
               row_ptr: Optional[torch.Tensor], col_idx: Optional[torch.Tensor], values: Optional[torch.Tensor],
               tile_ptr: Optional[torch.Tensor], tile_kn: Optional[torch.Tensor], tile_val: Optional[torch.Tensor],
               bias: Optional[torch.Tensor], bits: int, group: int, path: str, config: list[int]) -> torch.Tensor:
    """y [M, N] = x [M, K] . W^T + bias for a lut/sq/nf4 weight (see the module docstring)."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    sparse = None
    if row_ptr is not None:
        sparse = dict(row_ptr=row_ptr, col_idx=col_idx, values=values, tile_ptr=tile_ptr, tile_kn=tile_kn,
                      tile_val=tile_val)
    return _run(x, qweight, lut, absmax, sparse, bias, bits, group, KernelPath(path),
                KernelConfig.from_list(config), out)


@lut_linear.register_fake
def _lut_linear_fake(x, qweight, lut, absmax, row_ptr, col_idx, values, tile_ptr, tile_kn, tile_val, bias, bits,
                     group, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


class LutFamily(KernelFamily):
    """GEMV (split-K, FMA) and GEMM (tensor cores) kernels for lut3/lut4/sq3/sq4/nf4."""

    name = "lut"
    schemes = frozenset(LUT_SCHEMES | {Scheme.NF4})
    gemv_max_m = 8
    configs = cfgs

    def forward(self, x2d, qw, bias, path, config):
        qweight, lut, absmax, sparse = _tensors(qw)
        sp = [sparse[name] if sparse else None for name in _SPARSE]
        return lut_linear(x2d, qweight, lut, absmax, *sp, bias, qw.bits, cfgs.scale_group(qw), path.value,
                          config.to_list())

    def run(self, x2d, qw, bias, path, config, out):
        qweight, lut, absmax, sparse = _tensors(qw)
        return _run(x2d, qweight, lut, absmax, sparse, bias, qw.bits, cfgs.scale_group(qw), path, config, out)

    def interpreter_block_k_ok(self, path, cfg, qw):
        """Interpreter tiles obey the GPU tiles' K rules (a whole word, inside one NF4 group)."""
        return cfgs.config_problem(path, cfg, qw, torch.float32) is None

    def aot_cases(self):
        from .aot import aot_cases

        return aot_cases()

    def launch_plans(self, qw, m, path, dtype, config):
        from .aot import launch_plans

        return launch_plans(qw, m, KernelPath.parse(path), dtype, config)


FAMILY = LutFamily()
