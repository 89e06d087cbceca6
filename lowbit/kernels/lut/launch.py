"""Lookup-table family (lut3/lut4, sq3/sq4 with sparse outliers, nf4): launch wrapper, custom op, descriptor.

Data flow of one forward:

- Without split-K or outliers: one kernel (GEMV, or the fused-decode GEMM) writes
  ``cast(x W^T + b)`` straight into the output.
- M = 1 tensor-core GEMV without split-K: it adds the sq outliers of its own rows (same CSR walk
  as the finish kernel below) before the bias, in the same launch.
- Otherwise, with split-K or sq outliers: the kernel writes fp32 partial sums to a workspace
  ``[split, M, N]``; :func:`_lut_finish_kernel` sums them in split order, adds the sq outliers of
  whole rows (CSR: each row's nonzeros in stored order, no search, no atomics), the bias, and
  casts into the output. Every sum runs in a fixed order, so the same input gives bitwise the
  same output on every run.
- Large M (``configs.decodes_once``: GEMM calls with M >= 1024 of nf4, 3-bit and sq weights):
  :func:`decode_weight` writes the dense weight once into an x-dtype buffer [N, K] (outliers
  scattered in by row), then a dense tensor-core GEMM runs. The decode is N*K work instead of
  N*K*M/BLOCK_M; the buffer (2 bytes per weight for fp16 x) lives for the call.

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

from ...formats import LUT_SCHEMES, QuantizedWeight, Scheme
from ..base import KernelConfig, KernelFamily, KernelPath, on_interpreter, operands
from . import configs as cfgs
from .kernels import (_lut_dense_gemm_kernel, _lut_dequant_kernel, _lut_finish_kernel, _lut_gemm_kernel,
                      _lut_gemv_kernel, _lut_mma_twin_kernel, _lut_scatter_kernel)

_NF4_TABLES: dict = {}  # (device, dtype) -> the 16 NF4 values; constants, uploaded once per device
_ZEROS: dict = {}  # device -> fp16 zeros read by the tensor-core GEMV's off-diagonal lanes (grown on demand)
_SPARSE = ("row_ptr", "col_idx", "values")

__all__ = ["FAMILY", "LutFamily", "launch", "lut_linear", "workspace_numel"]


def nf4_table(device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The NF4 code book on `device` in `dtype` (built once per device; fp16 rounds the values)."""
    key = (str(device), dtype)
    if key not in _NF4_TABLES:
        from ...reference.nf4 import nf4_table as _table

        _NF4_TABLES[key] = _table(device).to(dtype)
    return _NF4_TABLES[key]


def _zeros(device: torch.device, n: int) -> torch.Tensor:
    """At least n fp16 zeros on `device` (cached; grows to the largest K seen)."""
    key = str(device)
    z = _ZEROS.get(key)
    if z is None or z.numel() < n:
        z = _ZEROS[key] = torch.zeros(max(n, 8192), dtype=torch.float16, device=device)
    return z


def _mma_device_ok(x: torch.Tensor) -> bool:
    """mma.sync m16n8k16 needs sm_80+; the 128-bit x loads need a 16-byte aligned x (and rows, when M > 1).
    Meta tensors stand for a launch on an sm_80/sm_90 GPU being planned (lowbit.kernels.plans records such
    calls)."""
    if x.device.type == "meta":
        return True
    if x.device.type != "cuda" or x.data_ptr() % 16 or (x.shape[0] > 1 and x.stride(0) % 8):
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 0)


def _run_mma_gemv(x2d, qweight, table, scale, nf4: bool, group: int, bits: int, bias, out, ws, split: int,
                  ups: int, to_ws: bool, cfg: KernelConfig, csr: list | None = None) -> None:
    """The tensor-core GEMV on a GPU, its pure-Triton twin under the interpreter (same outputs). A CTA
    takes cfgs.mma_pairs(cfg) pairs of x rows. `csr` (row_ptr, col_idx, values; M = 1, one split, not
    to_ws): the sq outliers join in the same launch."""
    kw, n = qweight.shape
    m, k = x2d.shape
    mp = cfgs.mma_pairs(cfg)
    grid = (n // cfgs.MMA_ROWS, split, triton.cdiv(m, 2 * mp))
    target = ws if to_ws else out
    bias_arg = bias if bias is not None else out
    sparse_args = csr if csr is not None else [qweight] * 3  # dummies when HAS_SPARSE is off
    nnz = csr[1].numel() if csr is not None else 0
    consts = dict(BITS=bits, WARPS=cfg.num_warps, UNROLL=cfg.block_k // cfgs.unit_codes(bits), GROUP=group, HAS_SCALE=nf4,
                  HAS_BIAS=bias is not None, TO_WS=to_ws, HAS_SPARSE=csr is not None, MP=mp)
    tab_stride = 0 if nf4 else table.shape[1]
    strides = (x2d.stride(0), out.stride(0))
    if on_interpreter(x2d):
        tab2 = torch.empty((grid[0] * grid[1] * grid[2], 256 * cfgs.MMA_ROWS), dtype=torch.int32, device=x2d.device)
        _lut_mma_twin_kernel[grid](x2d, qweight, table, scale, bias_arg, target, *sparse_args, tab2, m, n, ups,
                                   tab_stride, k, nnz, *strides, **consts)
        return
    from .mma_gemv import _lut_mma_gemv_kernel

    zeros = _zeros(x2d.device, x2d.shape[1])
    zero_off = (zeros.data_ptr() - x2d.data_ptr()) // 2
    _lut_mma_gemv_kernel[grid](x2d, qweight, table, scale, bias_arg, target, *sparse_args, zero_off, m, n, ups,
                               tab_stride, k, nnz, *strides, num_warps=cfg.num_warps, **consts)


def workspace_numel(path: KernelPath, m: int, qw: QuantizedWeight, config: KernelConfig,
                    dtype: torch.dtype = torch.float16) -> int:
    """fp32 elements of the split/outlier workspace a call allocates: split * M * N when partials go
    through it (the large-M route's decoded weight, N * K in x's dtype, comes on top)."""
    sparse = getattr(qw.spec, "sparse", False)
    nf4 = "absmax" in qw.tensors
    dense = cfgs.decodes_once(path, m, qw.bits, nf4, sparse)
    table = None if nf4 else qw["lut"].dtype
    if path is KernelPath.GEMV and cfgs.mma_gemv_plan(m, dtype, qw.bits, nf4, cfgs.scale_group(qw), qw.N, qw.K,
                                                      table, config) is not None:
        split = config.split_k
        if split == 1 and (m == 1 or not sparse):  # at M = 1 the outliers join in the GEMV itself
            return 0
    else:
        _, split = cfgs.split_plan(m, qw.N, qw.K, qw.bits, config, dense)
    return split * m * qw.N if split > 1 or (sparse and not dense) else 0


def _run(x2d, qweight, lut, absmax, sparse: Optional[dict], bias, bits: int, group: int,
         path: KernelPath, cfg: KernelConfig, out: torch.Tensor) -> torch.Tensor:
    """Launch the kernels of one call: x2d [M, K] . W^T (+ bias) into out [M, N]."""
    m, k = x2d.shape
    kw, n = qweight.shape
    nu = cfgs.units(k, bits)  # packed units along K: words, or 3-word blocks of 32 3-bit codes
    nf4 = absmax is not None
    table = nf4_table(x2d.device) if nf4 else lut
    scale = absmax if nf4 else qweight  # dummy pointer when HAS_SCALE is off
    tab_stride_n = 0 if nf4 else lut.shape[1]
    nnz = sparse["col_idx"].numel() if sparse is not None else 0
    dense = cfgs.decodes_once(path, m, bits, nf4, sparse is not None)
    ups = None
    if path is KernelPath.GEMV:
        ups = cfgs.mma_gemv_plan(m, x2d.dtype, bits, nf4, group, n, k, None if nf4 else lut.dtype, cfg)
        if ups is not None and not (on_interpreter(x2d) or _mma_device_ok(x2d)):
            ups = None
    per_split, split = (None, cfg.split_k) if ups is not None else cfgs.split_plan(m, n, k, bits, cfg, dense)
    outliers_in_gemv = nnz > 0 and ups is not None and split == 1 and m == 1  # the CTA owns its rows whole
    outliers_in_finish = nnz > 0 and not dense and not outliers_in_gemv
    to_ws = split > 1 or outliers_in_finish
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x2d.device) if to_ws else out
    bias_arg = bias if bias is not None else out
    packing = dict(BITS=bits, VPW=cfgs.unit_codes(bits), LANES=cfgs.lanes(bits), GROUP=group, HAS_SCALE=nf4)
    launch_opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    tiles = dict(BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
    if ups is not None:
        table16 = nf4_table(x2d.device, torch.float16) if nf4 else lut
        _run_mma_gemv(x2d, qweight, table16, scale, nf4, group, bits, bias, out, ws, split, ups, to_ws, cfg,
                      [sparse[name] for name in _SPARSE] if outliers_in_gemv else None)
    elif path is KernelPath.GEMV:
        grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
        _lut_gemv_kernel[grid](x2d, qweight, table, scale, bias_arg, out, ws, m, n, k, nu, x2d.stride(0),
                               out.stride(0), tab_stride_n, per_split, int(to_ws), HAS_BIAS=bias is not None,
                               **packing, **tiles, **launch_opts)
    elif dense:
        wd = decode_weight(qweight, table, scale, sparse, bits, group, nf4, k, x2d.dtype)
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
        _lut_dense_gemm_kernel[grid](x2d, wd, bias_arg, out, ws, m, n, k, x2d.stride(0), out.stride(0), per_split,
                                     int(to_ws), HAS_BIAS=bias is not None, IEEE_DOT=x2d.dtype == torch.float32,
                                     GROUP_M=cfg.group_m, **tiles, **launch_opts)
    else:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
        _lut_gemm_kernel[grid](x2d, qweight, table, scale, bias_arg, out, ws, m, n, k, nu,
                               x2d.stride(0), out.stride(0), tab_stride_n, per_split, int(to_ws),
                               HAS_BIAS=bias is not None, IEEE_DOT=x2d.dtype == torch.float32, GROUP_M=cfg.group_m,
                               **packing, **tiles, **launch_opts)
    if to_ws:
        csr = [sparse[name] for name in _SPARSE] if outliers_in_finish else [qweight] * 3
        fbm, fbn = cfgs.finish_block_m(m), cfgs.finish_block_n(m, n)
        if on_interpreter(x2d):  # the interpreter pays per program and per outlier step, not per element
            fbm, fbn = min(triton.next_power_of_2(m), cfgs.FINISH_INTERPRETER_BLOCK), cfgs.FINISH_INTERPRETER_BLOCK
        grid = (triton.cdiv(n, fbn), triton.cdiv(m, fbm))
        _lut_finish_kernel[grid](ws, x2d, *csr, bias_arg, out, m, n, k, nnz, split, x2d.stride(0), out.stride(0),
                                 HAS_SPARSE=outliers_in_finish, HAS_BIAS=bias is not None,
                                 BLOCK_M=fbm, BLOCK_N=fbn, num_warps=cfgs.finish_warps(fbm, fbn))
    return out


def decode_weight(qweight, table, scale, sparse: Optional[dict], bits: int, group: int, nf4: bool, k: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """The dense weight [N, K] in `dtype` (outliers included): the large-M route's transient buffer."""
    kw, n = qweight.shape
    nu = cfgs.units(k, bits)  # packed units along K: words, or 3-word blocks of 32 3-bit codes
    wd = torch.empty((n, k), dtype=dtype, device=qweight.device)
    bk = cfgs.dequant_block_k(bits, group)
    tiles = cfgs.num_k_tiles(k, bits, bk)
    grid = (triton.cdiv(n, cfgs.DEQUANT_BLOCK_N), triton.cdiv(tiles, cfgs.DEQUANT_TILES))
    _lut_dequant_kernel[grid](qweight, table, scale, wd, n, k, nu, 0 if nf4 else table.shape[1], cfgs.DEQUANT_TILES,
                              BITS=bits, VPW=cfgs.unit_codes(bits), LANES=cfgs.lanes(bits), GROUP=group, HAS_SCALE=nf4,
                              BLOCK_N=cfgs.DEQUANT_BLOCK_N, BLOCK_K=bk, num_warps=4)
    nnz = sparse["col_idx"].numel() if sparse is not None else 0
    if nnz:
        _lut_scatter_kernel[(triton.cdiv(n, cfgs.SCATTER_BLOCK_N),)](
            sparse["row_ptr"], sparse["col_idx"], sparse["values"], wd, n, k, nnz,
            BLOCK_N=cfgs.SCATTER_BLOCK_N, num_warps=4)
    return wd


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
               bias: Optional[torch.Tensor], bits: int, group: int, path: str, config: list[int]) -> torch.Tensor:
    """y [M, N] = x [M, K] . W^T + bias for a lut/sq/nf4 weight (see the module docstring)."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    sparse = None
    if row_ptr is not None:
        sparse = dict(row_ptr=row_ptr, col_idx=col_idx, values=values)
    return _run(x, qweight, lut, absmax, sparse, bias, bits, group, KernelPath(path),
                KernelConfig.from_list(config), out)


@lut_linear.register_fake
def _lut_linear_fake(x, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits, group, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


class LutFamily(KernelFamily):
    """lut3/lut4/sq3/sq4/nf4: the GEMV (tensor cores at M <= 16 for fp16 x and 3- or 4-bit codes, else CUDA cores),
    the fused-decode GEMM, the decode-once route for large M, and the finish kernel (split-K sum,
    outliers)."""

    name = "lut"
    schemes = frozenset(LUT_SCHEMES | {Scheme.NF4})
    gemv_max_m = 8
    configs = cfgs

    def choose_path(self, m: int, qw: QuantizedWeight | None = None, dtype: torch.dtype | None = None) -> KernelPath:
        """GEMV at M = 1, and up to MMA_MAX_M rows where the tensor-core GEMV takes the call (fp16 x, 3- or
        4-bit codes, fp16 table: every pair of x rows shares each decoded weight). Otherwise the CUDA-core
        GEMV, whose cost grows with every row of x, only up to 2 rows (fp32 x: gemv_max_m, where the
        GEMM's fp32 dots cost more), the GEMM above (static estimates, perf/NOTES.md). Without the weight
        and dtype, the M-only rule (gemv_max_m)."""
        if m <= 1:
            return KernelPath.GEMV
        if qw is None or dtype is None:
            return super().choose_path(m)
        if cfgs.mma_route(m, qw, dtype) is not None:
            return KernelPath.GEMV
        return KernelPath.GEMV if m <= (self.gemv_max_m if dtype == torch.float32 else 2) else KernelPath.GEMM

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

        return launch_plans(self, qw, m, path, dtype, config)


FAMILY = LutFamily()
