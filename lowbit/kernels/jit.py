"""@triton.jit helpers every family shares: the grouped tile order, the split-K sum, the epilogue store and the
low-rank term (projection rows for a GEMV, the epilogue that adds t A^T).

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


# -- the low-rank term W = W_hat + A B (perf/NOTES.md, "low-rank term": the fused design) ---------------
@triton.jit
def lowrank_project_rows(x_ptr, b_ptr, u_ptr, rm, M, K, stride_xm, pid_n, pid_s, k_begin, k_end, R,
                         R_TILE: tl.constexpr, BLOCK_K: tl.constexpr):
    """Decode side of the fused term: u[pid_s, rm, j] = x[rm, k_begin:k_end] . B[j, k_begin:k_end] for the
    R_TILE rank rows j = pid_n * R_TILE + i that N tile `pid_n` owns (nothing when it owns none).

    Called by a split-K GEMV program after its main loop, over the same K range, so the main loop
    is unchanged; spreading the r rows over the N tiles keeps every program's extra work at
    R_TILE x (k_end - k_begin) multiply-adds. u is the fp32 workspace [split, M, R]; x [M, K] and
    B [R, K] have unit stride along K.
    """
    rr = pid_n * R_TILE + tl.arange(0, R_TILE)
    if pid_n * R_TILE < R:
        rk = tl.arange(0, BLOCK_K)
        x_rows = x_ptr + rm.to(tl.int64)[:, None] * stride_xm
        b_rows = b_ptr + rr.to(tl.int64)[:, None] * K
        # element-wise partial products, reduced across K once after the loop (a cross-thread sum per
        # K step would cost more than the multiply-adds)
        acc = tl.zeros((rm.shape[0], R_TILE, BLOCK_K), dtype=tl.float32)
        for k0 in range(k_begin, k_end, BLOCK_K):
            ks = k0 + rk
            k_ok = ks < k_end
            xt = tl.load(x_rows + ks[None, :], mask=(rm < M)[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            bt = tl.load(b_rows + ks[None, :], mask=(rr < R)[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc += xt[:, None, :] * bt[None, :, :]
        store_tile(u_ptr + pid_s.to(tl.int64) * M * R, tl.sum(acc, axis=2), rm, rr, M, R, R, 1)


@triton.jit
def lowrank_apply(acc, u_ptr, a_ptr, rm, rn, M, N, R, split, BLOCK_R: tl.constexpr, USE_DOT: tl.constexpr,
                  F16_DOT: tl.constexpr):
    """Epilogue of the fused term: acc [BM, BN] + t . A[rn, :]^T with t = sum_s u[s, rm, :] (fixed order).

    u is the fp32 workspace [split, M, R] (split = 1 for a precomputed t = x B^T); A [N, R] is read
    once per output tile. USE_DOT: a tensor-core dot (BM, BN >= 16), with F16_DOT in fp16 (fp16 A;
    each row of t scaled by its largest |value| first, so it cannot overflow and keeps 11 bits
    relative to that value; the scale is applied to the fp32 result), else as tf32x3 (about fp32's
    accuracy, but three tf32 passes plus operand splitting). Without USE_DOT: CUDA-core
    multiply-adds, for decode tiles with few rows.
    """
    rr = tl.arange(0, BLOCK_R)
    t = sum_splits(u_ptr, rm, rr, M, R, split, tl.zeros((rm.shape[0], BLOCK_R), dtype=tl.float32))
    at = tl.load(a_ptr + rn.to(tl.int64)[None, :] * R + rr[:, None], mask=(rr < R)[:, None] & (rn < N)[None, :],
                 other=0.0)  # A^T tile [BLOCK_R, BN]
    if USE_DOT:
        if F16_DOT:
            amax = tl.max(tl.abs(t), axis=1)
            scale = tl.where(amax > 0, amax, 1.0)
            part = tl.dot((t / scale[:, None]).to(tl.float16), at.to(tl.float16))
            return acc + part * scale[:, None]
        return tl.dot(t, at.to(tl.float32), acc, input_precision="tf32x3")
    return acc + tl.sum(t[:, :, None] * at.to(tl.float32)[None, :, :], axis=1)
