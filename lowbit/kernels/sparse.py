"""Sparse outliers of sq3/sq4 (W = LUT[n, q] + S, S in CSR over output rows n): two strategies.

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

import torch
import triton
import triton.language as tl

BLOCK_NNZ = 128  # nonzeros per program
BLOCK_M = 4  # activation rows per program (the grid's second axis covers the rest)
NUM_WARPS = 4


@triton.jit
def csr_outlier_kernel(x_ptr, row_ptr_ptr, col_ptr, val_ptr, acc_ptr,
                       M, N, K, NNZ, stride_xm, stride_am, search_steps,
                       BLOCK_NNZ: tl.constexpr, BLOCK_M: tl.constexpr):
    """acc[m, row(j)] += x[m, col[j]] * val[j] for one chunk of nonzeros and one block of rows."""
    pid = tl.program_id(0)
    pid_m = tl.program_id(1)
    j = pid * BLOCK_NNZ + tl.arange(0, BLOCK_NNZ)
    live = j < NNZ
    col = tl.load(col_ptr + j, mask=live, other=0)
    val = tl.load(val_ptr + j, mask=live, other=0.0).to(tl.float32)
    live = live & (col >= 0) & (col < K)
    # largest r in [0, N) with row_ptr[r] <= j: invariant lo < hi, answer in [lo, hi)
    lo = tl.zeros((BLOCK_NNZ,), dtype=tl.int32)
    hi = tl.zeros((BLOCK_NNZ,), dtype=tl.int32) + N
    for _ in range(search_steps):
        active = hi - lo > 1
        mid = (lo + hi) // 2
        rp = tl.load(row_ptr_ptr + mid, mask=active, other=0)
        right = rp <= j
        lo = tl.where(active & right, mid, lo)
        hi = tl.where(active & (~right), mid, hi)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (offs_m < M)[:, None] & live[None, :]
    xv = tl.load(x_ptr + offs_m[:, None] * stride_xm + col[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(acc_ptr + offs_m[:, None] * stride_am + lo[None, :], xv * val[None, :], mask=mask)


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
    grid = (triton.cdiv(nnz, BLOCK_NNZ), triton.cdiv(m, BLOCK_M))
    csr_outlier_kernel[grid](x2d, row_ptr, col_idx, values, acc, m, n, k, nnz, x2d.stride(0), acc.stride(0),
                             search_steps(n), BLOCK_NNZ=BLOCK_NNZ, BLOCK_M=BLOCK_M, num_warps=NUM_WARPS)
