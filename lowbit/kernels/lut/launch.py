"""Lookup-table family (lut3/lut4, sq3/sq4 with CSR outliers, nf4): launch wrapper, custom op, descriptor.

Data flow of one forward:

- GEMM (large M): one kernel writes ``cast(x W^T + b)`` straight into the output; sq outliers
  are regrouped per weight tile on the device and added to the dequantized tiles in the K loop.
- GEMV without split-K or outliers: the same, one kernel, direct store.
- GEMV otherwise: the kernel writes (or, with split-K, atomically adds) fp32 partial sums into
  an fp32 accumulator, the load-balanced outlier pass adds ``x S^T`` into it with fp32 atomics,
  and one cast copies it into the output (for fp32 outputs the output itself is the
  accumulator). The bias is added once, by the dense kernel's split 0.

Nothing here reads tensor values on the host, so the forward is CUDA-graph capturable and
``torch.compile(fullgraph=True)`` traces it through the ``lowbit::lut_linear`` custom op.

Sparse outliers of sq3/sq4 (W = LUT[n, q] + S, S in CSR over output rows n) use two strategies.

Small M (GEMV path), :func:`add_csr_outliers`: a load-balanced pass. Work is split by *nonzeros*,
not rows. Program (c, mb) takes the fixed chunk ``j in [c*BLOCK_NNZ, (c+1)*BLOCK_NNZ)`` of the
CSR arrays and a block of activation rows, finds each nonzero's output row by a vectorised
binary search in ``row_ptr`` (the largest r with row_ptr[r] <= j, so empty rows are skipped
naturally), and atomically adds ``x[m, col] * val`` in fp32 into the dense kernel's fp32
accumulator. A row holding thousands of outliers costs the same per nonzero as any other,
so one heavy row cannot stall a tile the way a fused per-tile loop would.

Memory safety does not depend on the CSR contents: the search only reads row_ptr[0..N-1] and
always lands in [0, N), and nonzeros whose column falls outside [0, K) are masked out, so a
corrupted CSR gives wrong numbers, never an out-of-bounds access. (QuantizedWeight validates the
CSR when it is built; the forward path cannot re-check values without a host sync.)

Because it accumulates with atomics into fp32, the caller casts to the output dtype after this
pass (and the dense kernel adds the bias once), so dtype and bias are right.

Large M (GEMM path), :func:`tile_outliers`: the atomic pass would cost M x nnz scattered
atomics and gathers of x columns (about 1.2e9 of each at M = 4096 on an 8192^2 weight), far
more than the GEMM itself. Instead the outliers are regrouped per [BLOCK_K, BLOCK_N] weight
tile (device-side sort, no sync) and the GEMM adds each tile's outliers to its dequantized tile
in the K loop with a one-hot tensor-core product, so the output is written once, in its dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton

from ...formats import LUT_SCHEMES, QuantizedWeight, Scheme
from ..base import KernelConfig, KernelFamily, KernelPath, on_interpreter, operands
from . import configs as cfgs
from .kernels import _lut_gemm_kernel, _lut_gemv_kernel, _lut_outlier_kernel

OUTLIER_BLOCK_NNZ = 128  # nonzeros per program of the GEMV-path outlier pass
OUTLIER_BLOCK_M = 4  # activation rows per program (the grid's second axis covers the rest)
OUTLIER_WARPS = 4
_NF4_TABLES: dict = {}  # device -> the 16 NF4 values (fp32); a constant, uploaded once per device

__all__ = ["FAMILY", "LutFamily", "launch", "lut_linear", "tile_outliers", "add_csr_outliers"]


def nf4_table(device: torch.device) -> torch.Tensor:
    """The NF4 code book on `device` (built once per device)."""
    key = str(device)
    if key not in _NF4_TABLES:
        from ...reference.nf4 import nf4_table as _table

        _NF4_TABLES[key] = _table(device)
    return _NF4_TABLES[key]


def tile_outliers(row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor, n: int, k: int,
                  block_n: int, block_k: int):
    """Regroup CSR outliers by GEMM weight tile: (tile_ptr, k_local, n_local, values), all on device.

    Tile t = (col // block_k) * ceil(n / block_n) + row // block_n (the GEMM's K-step-major
    order); tile_ptr [tiles + 1] bounds each tile's run. Built with device ops only (sort and
    searchsorted, no host sync). Rows come from a search in row_ptr clamped to [0, n) and
    columns outside [0, k) are dropped to a sentinel tile past the end, so any CSR contents
    give in-bounds indices.
    """
    nnz = col_idx.numel()
    dev = col_idx.device
    nt, kt = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    j = torch.arange(nnz, device=dev, dtype=torch.int32)
    rows = (torch.searchsorted(row_ptr, j, right=True) - 1).clamp(0, n - 1)
    cols = col_idx.to(torch.int64)
    valid = (cols >= 0) & (cols < k)
    cols = cols.clamp(0, k - 1)
    key = torch.where(valid, (cols // block_k) * nt + rows // block_n, nt * kt)
    key, order = torch.sort(key, stable=True)
    tiles = torch.arange(nt * kt + 1, device=dev, dtype=key.dtype)
    tile_ptr = torch.searchsorted(key, tiles).to(torch.int32)
    k_local = (cols % block_k)[order].to(torch.int32)
    n_local = (rows % block_n)[order].to(torch.int32)
    return tile_ptr, k_local, n_local, values[order].contiguous()


def search_steps(n: int) -> int:
    """Binary-search iterations that narrow [0, n) to one row."""
    return max(1, math.ceil(math.log2(max(n, 2))))


def add_csr_outliers(x2d: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
                     acc: torch.Tensor) -> None:
    """acc [M, N] fp32 += x2d . S^T for the CSR outliers S [N, K]; nnz comes from the shape (no sync)."""
    m, k = x2d.shape
    n = acc.shape[1]
    nnz = col_idx.numel()
    if nnz == 0:  # a shape, not a value: no host sync
        return
    if acc.dtype != torch.float32 or acc.stride(1) != 1:
        raise ValueError("the outlier accumulator must be fp32 with unit stride along N")
    grid = (triton.cdiv(nnz, OUTLIER_BLOCK_NNZ), triton.cdiv(m, OUTLIER_BLOCK_M))
    _lut_outlier_kernel[grid](x2d, row_ptr, col_idx, values, acc, m, n, k, nnz, x2d.stride(0), acc.stride(0),
                             search_steps(n), BLOCK_NNZ=OUTLIER_BLOCK_NNZ, BLOCK_M=OUTLIER_BLOCK_M, num_warps=OUTLIER_WARPS)


def _run(x2d, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits: int, group: int,
         path: KernelPath, cfg: KernelConfig, out: torch.Tensor) -> torch.Tensor:
    """Launch the dense kernel (and the outlier pass) for x2d [M, K] into out [M, N]."""
    m, k = x2d.shape
    n = qweight.shape[1]
    kw = cfgs.units(k, bits)  # GEMV "words": int32 words (4-bit) or 32-code blocks (3-bit)
    nf4 = absmax is not None
    table = nf4_table(x2d.device) if nf4 else lut
    scale = absmax if nf4 else qweight  # dummy pointer when HAS_SCALE is off
    tab_stride_n = 0 if nf4 else lut.shape[1]
    vpw = cfgs.unit_codes(bits)
    has_outliers = col_idx is not None and col_idx.numel() > 0
    sparse = has_outliers and path is KernelPath.GEMV  # atomic pass after the GEMV; the GEMM fuses them
    split = 1
    if path is KernelPath.GEMV:
        sl = cfgs.slots(bits)
        block_k = max(cfg.block_k, sl)
        words_per_step = block_k // sl
        steps = triton.cdiv(kw, words_per_step)
        per_split = triton.cdiv(steps, max(1, min(cfg.split_k, steps)))
        words_per_split = per_split * words_per_step
        split = triton.cdiv(kw, words_per_split)
    direct = split == 1 and not sparse
    if direct or (out.dtype == torch.float32 and out.stride(1) == 1):
        target = out
    else:
        target = torch.empty((m, n), dtype=torch.float32, device=x2d.device)
    if split > 1:
        target.zero_()
    span = block_k // sl * vpw if path is KernelPath.GEMV else cfg.block_k  # K covered by one tile
    common = dict(BITS=bits, VPW=vpw, GROUP=group, HAS_SCALE=nf4, SCALE_ROW=cfgs.scale_row(group, span),
                  HAS_BIAS=bias is not None,
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    bias_arg = bias if bias is not None else x2d
    if path is KernelPath.GEMV:
        grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
        _lut_gemv_kernel[grid](x2d, qweight, table, scale, bias_arg, target, m, n, k, kw, x2d.stride(0),
                              target.stride(0), target.stride(1), tab_stride_n, words_per_split,
                              SLOTS=sl, ATOMIC=split > 1, BLOCK_K=block_k, **common)
    else:
        tiles = (tile_outliers(row_ptr, col_idx, values, n, k, cfg.block_n, cfg.block_k) if has_outliers
                 else (qweight,) * 4)  # dummies when HAS_SPARSE is off
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
        _lut_gemm_kernel[grid](x2d, qweight, table, scale, bias_arg, target, *tiles, m, n, k, x2d.stride(0),
                              target.stride(0), target.stride(1), tab_stride_n,
                              IEEE_DOT=x2d.dtype == torch.float32, HAS_SPARSE=has_outliers,
                              SPARSE_CHUNK=cfgs.INTERP_SPARSE_CHUNK if on_interpreter(x2d) else cfgs.SPARSE_CHUNK,
                              BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, **common)
    if sparse:
        add_csr_outliers(x2d, row_ptr, col_idx, values, target)
    if target is not out:
        out.copy_(target)
    return out


def _tensors(qw: QuantizedWeight) -> tuple:
    """(qweight, lut, absmax, row_ptr, col_idx, values) with None for what the scheme lacks."""
    t = operands(qw)
    return tuple(t.get(name) for name in ("qweight", "lut", "absmax", "row_ptr", "col_idx", "values"))


def launch(x2d: torch.Tensor, qw: QuantizedWeight, bias: Optional[torch.Tensor], path, config: KernelConfig,
           out: torch.Tensor) -> torch.Tensor:
    """Run one explicit config: out[M, N] = x2d[M, K] . W^T (+ bias), every argument checked; returns out."""
    return FAMILY.launch(x2d, qw, bias, path, config, out)


@torch.library.custom_op("lowbit::lut_linear", mutates_args=())
def lut_linear(x: torch.Tensor, qweight: torch.Tensor, lut: Optional[torch.Tensor], absmax: Optional[torch.Tensor],
               row_ptr: Optional[torch.Tensor], col_idx: Optional[torch.Tensor], values: Optional[torch.Tensor],
               bias: Optional[torch.Tensor], bits: int, group: int, path: str, config: list[int]) -> torch.Tensor:
    """y [M, N] = x [M, K] . W^T + bias for a lut/sq/nf4 weight (see the module docstring)."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    return _run(x, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits, group, KernelPath(path),
                KernelConfig.from_list(config), out)


@lut_linear.register_fake
def _lut_linear_fake(x, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits, group, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


class LutFamily(KernelFamily):
    """GEMV (split-K, FMA) and GEMM (tensor cores) kernels for lut3/lut4/sq3/sq4/nf4."""

    name = "lut"
    schemes = frozenset(LUT_SCHEMES | {Scheme.NF4})
    gemv_max_m = 8
    configs = cfgs

    def forward(self, x2d, qw, bias, path, config):
        return lut_linear(x2d, *_tensors(qw), bias, qw.bits, cfgs.scale_group(qw), path.value, config.to_list())

    def run(self, x2d, qw, bias, path, config, out):
        return _run(x2d, *_tensors(qw), bias, qw.bits, cfgs.scale_group(qw), path, config, out)

    def aot_cases(self):
        from .aot import aot_cases

        return aot_cases()


FAMILY = LutFamily()
