"""@triton.jit helpers every family shares: the grouped tile order, the split-K sum and the epilogue store.

Written once here so the families' kernels only hold what differs between them (how a weight
tile is decoded). All are inlined by Triton; none adds a launch.
"""
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid` when tiles are visited in bands of GROUP_M tile rows.

    Consecutive programs then share weight column tiles and activation row tiles in L2.
    """
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    band = GROUP_M * num_n
    first_m = (pid // band) * GROUP_M
    band_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % band) % band_rows
    pid_n = (pid % band) // band_rows
    return pid_m, pid_n


@triton.jit
def sum_splits(ws_ptr, rm, rn, M, N, split_k, ZERO):
    """sum_s ws[s, rm, rn] over the split-K workspace [split_k, M, N], in split order (deterministic).

    `ZERO` is a zero tile of the accumulator's dtype and shape (fp32 or int32 partials).
    """
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    ptrs = ws_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :]
    slice_elems = tl.cast(M, tl.int64) * N
    acc = ZERO
    for s in range(0, split_k):
        acc += tl.load(ptrs + s * slice_elems, mask=mask, other=0)
    return acc


@triton.jit
def store_tile(out_ptr, acc, rm, rn, M, N, stride_om, stride_on):
    """out[rm, rn] = acc cast to out's element type, masked to [M, N], with 64-bit row offsets."""
    mask = (rm < M)[:, None] & (rn < N)[None, :]
    ptrs = out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :] * stride_on
    tl.store(ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def add_bias(acc, bias_ptr, rn, N):
    """acc [BM, BN] + bias[rn] in fp32 (bias read once per column tile)."""
    return acc + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
