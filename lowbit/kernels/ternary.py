"""BitNet b1.58 ternary kernels: W1.58A8 (scheme "ternary") and W1.58A16 (scheme "ternary_a16").

W1.58A8 runs in two launches. First, :func:`quantize_activations` does a per-token absmax
int8 quantization in one read of x (rows longer than 8192 are swept twice, the second time
from L2): it writes x_q int8 [M, K] and scale fp32 [M], with
scale = 127 / max(absmax, 1e-5) as an IEEE division and round-half-even. Second, a GEMV
(small M) or an int8 x int8 -> int32 ``tl.dot`` GEMM unpacks the 2-bit codes (t + 1) to int8 in
the K loop. Its epilogue is y = acc * gamma / scale (+ bias), in x's dtype.

Why a separate quantization pass, counted in bytes (M = 4096, N = K = 8192, fp16 x, BLOCK_N = 128):
- The GEMM re-reads each row strip of activations once per column tile, N / BLOCK_N = 64 times.
  With a separate pass, those re-reads are int8: 64 x 32 MiB = 2 GiB of operand traffic,
  mostly served from L2. The pass itself moves 64 MiB (read x) + 32 MiB (write x_q) of HBM.
- A prologue fused into the GEMM needs each row's absmax before it can quantize the first K
  tile. Every program would sweep its fp16 strip twice: once for the absmax, once for the dot.
  That is 2 x 64 x 64 MiB = 8 GiB, four times the traffic. The absmax and the rounding would
  also run 64 times per element instead of once.
- Fusing would save only the x_q round trip of 64 MiB on HBM. At this shape the GEMM is
  compute-bound: 550 int8 GOP take about 280 us at 1980 TOPS, while all its HBM traffic takes
  about 65 us (about 45 us without the round trip), so the round trip is hidden.
- At decode (M = 1) the round trip costs 2 bytes per input (write x_q, read it back) against
  N / 4 = 2048 bytes of packed weights per input at N = 8192, about 0.1 %. What remains is the
  price of one more launch (a few us eagerly, about 1 us under CUDA-graph replay).

W1.58A16 skips activation quantization: y = (x . T^T) * gamma, with T decoded to x's dtype (exact).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .._checks import ACTIVATION_DTYPES, check_linear_args
from ..formats import ActivationQuant, QuantizedWeight, Scheme, dim_bucket
from . import _ternary_launch as L
from ._common import KernelConfig, KernelFamily, KernelPath, check_runtime, flatten_rows

FP_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel twin of reference.ternary.quantize_activations: x [..., K] -> (x_q int8 [..., K], scale fp32 [...])."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty [..., K] tensor, got shape {tuple(x.shape)}")
    check_runtime(x)
    xq, scale = L.quantize_rows(flatten_rows(x))
    return xq.reshape(x.shape), scale.reshape(x.shape[:-1])


def _unit_k(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _run_a8(x, qweight, gamma, bias, path: KernelPath, cfg: KernelConfig, out):
    xq, scale = L.quantize_rows(_unit_k(x))
    return L.run(L.TERNARY_A8, path, cfg, xq, scale, qweight, None, gamma, bias, out)


def _run_a16(x, qweight, gamma, bias, path: KernelPath, cfg: KernelConfig, out):
    return L.run(L.TERNARY_A16, path, cfg, _unit_k(x), None, qweight, None, gamma, bias, out)


@torch.library.custom_op("lowbit::ternary_a8_linear", mutates_args=())
def ternary_a8_linear(x: torch.Tensor, qweight: torch.Tensor, gamma: torch.Tensor, bias: Optional[torch.Tensor],
                      path: str, config: List[int]) -> torch.Tensor:
    """W1.58A8 on x [M, K]: quantize rows to int8, integer dot with the ternary codes, rescale."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    return _run_a8(x, qweight, gamma, bias, KernelPath(path), L.config_from_list(config), out)


@ternary_a8_linear.register_fake
def _(x, qweight, gamma, bias, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


@torch.library.custom_op("lowbit::ternary_a16_linear", mutates_args=())
def ternary_a16_linear(x: torch.Tensor, qweight: torch.Tensor, gamma: torch.Tensor, bias: Optional[torch.Tensor],
                       path: str, config: List[int]) -> torch.Tensor:
    """W1.58A16 on x [M, K]: float dot with the ternary codes, times gamma."""
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    return _run_a16(x, qweight, gamma, bias, KernelPath(path), L.config_from_list(config), out)


@ternary_a16_linear.register_fake
def _(x, qweight, gamma, bias, path, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


def check_out(out, x2d: torch.Tensor, n: int) -> None:
    """An explicit output buffer must be [M, N] in x's dtype and device with unit stride along N."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != (x2d.shape[0], n):
        raise ValueError(f"out must have shape {(x2d.shape[0], n)}, got {tuple(out.shape)}")
    if out.dtype != x2d.dtype or out.device != x2d.device:
        raise ValueError(f"out must be {x2d.dtype} on {x2d.device}, got {out.dtype} on {out.device}")
    if out.stride(1) != 1:
        raise ValueError("out must have unit stride along N")


class TernaryFamily(KernelFamily):
    """Ternary weights (2-bit codes t + 1, fp32 gamma): int8-activation and float-activation kernels."""

    name = "ternary"
    schemes = frozenset({Scheme.TERNARY, Scheme.TERNARY_A16})
    gemv_max_m = 8

    @staticmethod
    def kind(qw: QuantizedWeight) -> L.SignKind:
        a8 = qw.spec.activation is ActivationQuant.INT8_PER_TOKEN
        return L.TERNARY_A8 if a8 else L.TERNARY_A16

    def _check(self, x, qw, bias) -> None:
        check_linear_args(x, qw, bias)
        self.check_served(qw)
        check_runtime(x)

    def forward(self, x, qw, bias, path):
        self._check(x, qw, bias)
        x2d = flatten_rows(x)
        m = x2d.shape[0]
        path = KernelPath.parse(path) or self.choose_path(m)
        cfg = self.select_config(x, path, m, qw)
        op = ternary_a8_linear if self.kind(qw).int8_act else ternary_a16_linear
        y = op(x2d, qw["qweight"], qw["gamma"], bias, path.value, L.config_list(cfg))
        return y.reshape(*x.shape[:-1], qw.N)

    def launch(self, x2d, qw, bias, path, config, out):
        self._check(x2d, qw, bias)
        if x2d.dim() != 2:
            raise ValueError(f"launch takes x2d [M, K], got shape {tuple(x2d.shape)}")
        path = KernelPath.parse(path)
        if path is None:
            raise ValueError("launch needs an explicit path ('gemv' or 'gemm')")
        kind = self.kind(qw)
        L.check_config(kind, path, config)
        check_out(out, x2d, qw.N)
        run = _run_a8 if kind.int8_act else _run_a16
        return run(x2d, qw["qweight"], qw["gamma"], bias, path, config, out)

    def search_space(self, path, qw=None):
        path = KernelPath.parse(path)
        kinds = [self.kind(qw)] if qw is not None else [L.TERNARY_A8, L.TERNARY_A16]
        return list(dict.fromkeys(c for k in kinds for c in L.search_space(k, path)))

    def heuristic(self, path, m, qw, dtype=torch.float16):
        return L.heuristic(self.kind(qw), KernelPath.parse(path), m, qw.N, qw.K, dtype)

    def config_for(self, path, m, qw, dtype):
        """The cached config, else the heuristic for this activation dtype (fp32 needs smaller tiles)."""
        from ..autotune import lookup

        cfg = lookup(self.name, qw, path, dim_bucket(m), dtype)
        return cfg if cfg is not None else self.heuristic(path, m, qw, dtype)

    def aot_cases(self):
        """Quantizer x dtype, heuristic configs of every path and kind, and the largest search-space tiles."""
        fam, gemv, gemm = self.name, KernelPath.GEMV, KernelPath.GEMM
        f16, bf16, f32 = torch.float16, torch.bfloat16, torch.float32
        cases = [L.quantize_aot_case(fam, dt, 4096) for dt in FP_DTYPES]
        cases.append(L.quantize_aot_case(fam, f16, L.QUANT_MAX_BLOCK))
        for kind in (L.TERNARY_A8, L.TERNARY_A16):
            def h(p, m, dt=f16, split=None, kind=kind):
                return _with_split(L.heuristic(kind, p, m, 8192, 8192, dt), split)

            def sc(p, cfg, dt=f16, kind=kind):
                return L.sign_aot_case(fam, kind, p, dt, cfg, f32)

            corner = KernelConfig(block_m=8, block_n=64, block_k=8 * kind.vpw, split_k=4, group_m=1)
            cases += [sc(gemv, h(gemv, 1, split=1)), sc(gemv, h(gemv, 1)), sc(gemv, h(gemv, 8)), sc(gemv, corner),
                      sc(gemv, h(gemv, 2, bf16), bf16)]
            big = KernelConfig(block_m=128, block_n=128, block_k=128 if kind.int8_act else 64, group_m=8,
                               num_warps=8, num_stages=4)
            cases += [sc(gemm, h(gemm, 16)), sc(gemm, h(gemm, 64)), sc(gemm, h(gemm, 4096)), sc(gemm, big),
                      sc(gemm, h(gemm, 4096, bf16), bf16), sc(gemm, h(gemm, 64, f32), f32)]
            cases.append(L.reduce_aot_case(fam, kind, f16, 8, f32))
        return cases


def _with_split(cfg: KernelConfig, split: int | None) -> KernelConfig:
    if split is None:
        return cfg
    return KernelConfig(**{**cfg.to_dict(), "split_k": split})


FAMILY = TernaryFamily()
