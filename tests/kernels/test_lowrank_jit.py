"""The shared @triton.jit helpers of the fused low-rank design (lowbit.kernels.jit), through a small test kernel.

The test kernels are the decode design of perf/NOTES.md ("low-rank term") on a dense fp16 weight
standing in for a family's decode: a split-K GEMV whose programs, after their main loop, project x
onto the rank rows they own (lowrank_project_rows), and a split-K reduce whose epilogue adds
t A^T (lowrank_apply). Compared with reference.linear (float64) of a weight with the same term.
"""
import pytest
import torch
import triton
import triton.language as tl

import lowbit
from helpers import assert_close, nan_out
from lowbit.formats import QuantizedWeight
from lowbit.kernels.jit import lowrank_apply, lowrank_project_rows, store_tile, sum_splits


@triton.jit
def fused_gemv_test_kernel(x_ptr, w_ptr, b_ptr, ws_ptr, u_ptr, M, N, K, R, k_per_split,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           R_TILE: tl.constexpr):
    """ws[s] = x[:, K_s] W_hat[n tile, K_s]^T (the 'family' main loop), then u[s] for this tile's rank rows."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    k_begin = pid_s * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        ks = k0 + rk
        xt = tl.load(x_ptr + rm[:, None] * K + ks[None, :], mask=(rm < M)[:, None] & (ks < k_end)[None, :],
                     other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + rn[None, :] * K + ks[:, None], mask=(ks < k_end)[:, None] & (rn < N)[None, :],
                     other=0.0).to(tl.float32)
        acc += tl.sum(xt[:, :, None] * wt[None, :, :], axis=1)
    lowrank_project_rows(x_ptr, b_ptr, u_ptr, rm, M, K, K, pid_n, pid_s, k_begin, k_end, R, R_TILE, BLOCK_K)
    store_tile(ws_ptr + pid_s.to(tl.int64) * M * N, acc, rm, rn, M, N, N, 1)


@triton.jit
def fused_reduce_test_kernel(ws_ptr, u_ptr, a_ptr, out_ptr, M, N, R, split,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
                             USE_DOT: tl.constexpr, F16_DOT: tl.constexpr):
    """out = sum_s ws[s] + (sum_s u[s]) A^T: the split-K reduce with the low-rank epilogue."""
    pid_n = tl.program_id(0)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = sum_splits(ws_ptr, rm, rn, M, N, split, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
    acc = lowrank_apply(acc, u_ptr, a_ptr, rm, rn, M, N, R, split, BLOCK_R, USE_DOT, F16_DOT)
    store_tile(out_ptr, acc, rm, rn, M, N, N, 1)


def fused_linear(x, qw, block_n, block_k, split, use_dot, f16_dot=False):
    """y = x W^T for a weight with a low-rank term, W_hat dequantized to fp16 as the stand-in main loop."""
    m, k = x.shape
    n, r = qw.N, qw.lowrank
    w_hat = lowbit.dequantize(QuantizedWeight(qw.scheme, qw.spec, qw.shape, {
        name: t for name, t in qw.tensors.items() if not name.startswith("lowrank_")}), torch.float16)
    num_n = triton.cdiv(n, block_n)
    r_tile = triton.next_power_of_2(triton.cdiv(r, num_n))
    per_split = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    split = triton.cdiv(k, per_split)
    block_m = max(16 if use_dot else 1, triton.next_power_of_2(m))
    ws = nan_out((split, m, n), torch.float32, x.device)
    u = nan_out((split, m, r), torch.float32, x.device)  # every entry must be written by exactly one program
    out = nan_out((m, n), torch.float16, x.device)
    fused_gemv_test_kernel[(num_n, split)](x, w_hat, qw["lowrank_b"], ws, u, m, n, k, r, per_split,
                                           BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, R_TILE=r_tile)
    assert bool(torch.isfinite(u).all()), "a rank row of some split was not written"
    fused_reduce_test_kernel[(num_n,)](ws, u, qw["lowrank_a"], out, m, n, r, split, BLOCK_M=block_m,
                                       BLOCK_N=block_n, BLOCK_R=max(16, triton.next_power_of_2(r)),
                                       USE_DOT=use_dot, F16_DOT=f16_dot)
    return out, w_hat


@pytest.mark.parametrize("m,n,k,r,block_n,split,use_dot,f16_dot", [
    pytest.param(1, 72, 160, 4, 16, 3, False, False, id="m1-rtile1-split3"),  # 5 N tiles, r = 4: tiles 0..3 own 1 row
    pytest.param(1, 72, 160, 8, 16, 3, False, False, id="m1-rtile2-split3"),  # 5 N tiles, r = 8: tiles 0..3 own 2 rows
    pytest.param(3, 72, 160, 5, 32, 2, False, False, id="m3-rtile2-ragged"),  # 3 tiles own 2 rows each, r = 5
    pytest.param(2, 40, 96, 30, 16, 1, False, False, id="m2-rtile16-nosplit"),  # 3 tiles, 30 rows: 16 per tile
    pytest.param(4, 72, 160, 12, 16, 4, True, False, id="m4-tf32x3-epilogue"),
    pytest.param(4, 72, 160, 12, 16, 4, True, True, id="m4-f16-epilogue"),
])
def test_fused_decode_design_matches_the_reference(m, n, k, r, block_n, split, use_dot, f16_dot, device):
    torch.manual_seed(0)
    qw = lowbit.quantize_weight(torch.randn(n, k), "int3", group_size=32, lowrank=r).to(device)
    x = torch.randn(m, k, device=device, dtype=torch.float16)
    out, w_hat = fused_linear(x, qw, block_n, 32, split, use_dot, f16_dot)
    # W_hat in fp16 is exact for int3 codes times fp16 scales only up to one rounding: compare with the same W_hat
    a, b = qw["lowrank_a"].double(), qw["lowrank_b"].double()
    want = x.double() @ w_hat.double().t() + (x.double() @ b.t()) @ a.t()
    assert_close("fused design", want, out, 2e-3)
    # and the term is really there: without it the result is far off
    assert float((x.double() @ w_hat.double().t() - want).abs().max() / want.abs().max()) > 1e-2
    assert_close("vs reference.linear", lowbit.reference.linear(x, qw, out_dtype=torch.float64), out, 5e-3)
