"""Launch wrappers shared by the ternary and binary families: config checks, heuristics, grids, AOT cases.

The kernels live in :mod:`._ternary_kernels`; ternary.py and binary.py wrap these launchers in
custom ops. Nothing here synchronises with the device: shapes alone pick grids and constexprs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from ._common import AotCase, KernelConfig, KernelPath, triton_dtype
from ._ternary_kernels import (_quantize_rows_kernel, _sign_gemm_kernel, _sign_gemv_kernel,
                               _splitk_reduce_kernel)

TARGET_PROGRAMS = 264  # two waves on a 132-SM H100; split-K grows the GEMV grid up to this
MAX_SPLIT_K = 16
QUANT_MAX_BLOCK = 8192  # rows up to this K are quantized from registers in one read


@dataclass(frozen=True)
class SignKind:
    """What a sign-code kernel multiplies: code width, int8 activations (A8) and a per-K scale (binary g)."""

    name: str
    bits: int
    int8_act: bool
    has_kscale: bool

    @property
    def vpw(self) -> int:
        return 32 // self.bits


TERNARY_A8 = SignKind("a8", bits=2, int8_act=True, has_kscale=False)
TERNARY_A16 = SignKind("a16", bits=2, int8_act=False, has_kscale=False)
BINARY = SignKind("binary", bits=1, int8_act=False, has_kscale=True)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def check_config(kind: SignKind, path: KernelPath, cfg: KernelConfig) -> None:
    """Reject a config the kernels cannot run (non powers of two, K steps that split a word, tl.dot minimums)."""
    if not isinstance(cfg, KernelConfig):
        raise TypeError(f"config must be a KernelConfig, got {type(cfg).__name__}")
    for name in ("block_m", "block_n", "block_k"):
        if not _pow2(getattr(cfg, name)):
            raise ValueError(f"{name} must be a power of two, got {getattr(cfg, name)}")
    if cfg.block_k % kind.vpw:
        raise ValueError(f"block_k={cfg.block_k} must be a multiple of the {kind.vpw} codes in one word")
    if path is KernelPath.GEMM:
        min_k = 32 if kind.int8_act else 16
        if cfg.block_m < 16 or cfg.block_n < 16 or cfg.block_k < min_k:
            raise ValueError(f"GEMM tiles need block_m, block_n >= 16 and block_k >= {min_k} (tl.dot), "
                             f"got {cfg.label()}")
    elif cfg.split_k > MAX_SPLIT_K:
        raise ValueError(f"split_k must be <= {MAX_SPLIT_K}, got {cfg.split_k}")


def config_list(cfg: KernelConfig) -> list[int]:
    """A KernelConfig as the int list the custom ops take (field order of the dataclass)."""
    return list(cfg.to_dict().values())


def config_from_list(values) -> KernelConfig:
    return KernelConfig(*[int(v) for v in values])


def quantize_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the per-token quantizer on x2d [M, K] (unit stride along K): x_q int8 [M, K], scale fp32 [M]."""
    m, k = x2d.shape
    xq = torch.empty((m, k), dtype=torch.int8, device=x2d.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x2d.device)
    block = min(triton.next_power_of_2(k), QUANT_MAX_BLOCK)
    _quantize_rows_kernel[(m,)](x2d, xq, scale, k, x2d.stride(0), xq.stride(0),
                                BLOCK_K=block, ONE_TILE=k <= block, num_warps=8 if block >= 4096 else 4)
    return xq, scale


def run(kind: SignKind, path: KernelPath, cfg: KernelConfig, x2d: torch.Tensor, xscale: torch.Tensor | None,
        qweight: torch.Tensor, kscale: torch.Tensor | None, nscale: torch.Tensor, bias: torch.Tensor | None,
        out: torch.Tensor) -> torch.Tensor:
    """out[M, N] = decode(qweight) applied to x2d (x_q for A8) with the epilogue scales; returns out."""
    m, k = x2d.shape
    kw, n = qweight.shape
    per_n = nscale.numel() != 1
    dummy = nscale
    common = dict(BITS=kind.bits, INT8_ACT=kind.int8_act, HAS_KSCALE=kind.has_kscale,
                  NSCALE_PER_N=per_n, HAS_BIAS=bias is not None)
    xs = xscale if xscale is not None else dummy
    ks = kscale if kscale is not None else dummy
    bs = bias if bias is not None else dummy
    if path is KernelPath.GEMM:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
        _sign_gemm_kernel[grid](x2d, xs, qweight, ks, nscale, bs, out, m, n, k, x2d.stride(0), out.stride(0),
                                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                                GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                                **common)
        return out
    split = max(1, min(cfg.split_k, triton.cdiv(kw, cfg.block_k // kind.vpw)))
    ws = out
    if split > 1:
        ws = torch.empty((split, m, n), dtype=torch.int32 if kind.int8_act else torch.float32, device=out.device)
    grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
    _sign_gemv_kernel[grid](x2d, xs, qweight, ks, nscale, bs, out, ws, m, n, k, kw, x2d.stride(0), out.stride(0),
                            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_KW=cfg.block_k // kind.vpw,
                            SPLIT_K=split, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    if split > 1:
        rbm, rbn = min(16, triton.next_power_of_2(m)), 128
        _splitk_reduce_kernel[(triton.cdiv(n, rbn), triton.cdiv(m, rbm))](
            ws, xs, nscale, bs, out, m, n, out.stride(0), SPLIT_K=split, INT8_ACT=kind.int8_act,
            NSCALE_PER_N=per_n, HAS_BIAS=bias is not None, BLOCK_M=rbm, BLOCK_N=rbn, num_warps=4)
    return out


# -- configs -------------------------------------------------------------------------------------

def heuristic(kind: SignKind, path: KernelPath, m: int, n: int, k: int,
              dtype: torch.dtype = torch.float16) -> KernelConfig:
    """Tile sizes from M (and the grid size for split-K) without timing anything.

    fp32 activations (float kinds) run FMA dots (input_precision="ieee") whose operands live in
    registers, so they get small tiles; the AOT gate shows larger ones spilling.
    """
    if path is KernelPath.GEMV:
        bm = min(triton.next_power_of_2(max(m, 1)), 8)
        bn = 128 if bm <= 2 else 64
        bkw = 8 if bm <= 2 else 4
        kw_steps = triton.cdiv(triton.cdiv(k, kind.vpw), bkw)
        tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
        split = 1
        while tiles * split < TARGET_PROGRAMS and split * 2 <= min(MAX_SPLIT_K, kw_steps):
            split *= 2
        return KernelConfig(block_m=bm, block_n=bn, block_k=bkw * kind.vpw, split_k=split, group_m=1,
                            num_warps=4, num_stages=2)
    if dtype == torch.float32 and not kind.int8_act:
        return KernelConfig(block_m=32, block_n=64, block_k=32, num_warps=4, num_stages=2)
    bk = 128 if kind.int8_act else 64
    if m <= 16:
        return KernelConfig(block_m=16, block_n=64, block_k=bk, num_warps=4, num_stages=3)
    if m <= 64:
        return KernelConfig(block_m=64, block_n=128, block_k=bk, num_warps=4, num_stages=3)
    return KernelConfig(block_m=128, block_n=128, block_k=bk, group_m=8, num_warps=8, num_stages=3)


def search_space(kind: SignKind, path: KernelPath) -> list[KernelConfig]:
    """Candidate configs for the tuner (every one passes check_config)."""
    out = []
    if path is KernelPath.GEMV:
        for bm in (1, 2, 4, 8):
            for bn in (32, 64, 128):
                for bkw in (4, 8, 16):
                    if bm * bkw * bn > 4096:  # 3-D accumulator: at most 32 values per thread at 4 warps
                        continue
                    for split in (1, 2, 4, 8, 16):
                        out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bkw * kind.vpw, split_k=split,
                                                group_m=1, num_warps=4, num_stages=2))
        return out
    bks = (64, 128) if kind.int8_act else (32, 64)
    for bm, bn, warps in ((16, 64, 4), (32, 64, 4), (32, 128, 4), (64, 64, 4), (64, 128, 4), (128, 64, 4),
                          (128, 128, 8)):
        for bk in bks:
            bk = max(bk, kind.vpw)
            for stages in (2, 3, 4):
                out.append(KernelConfig(block_m=bm, block_n=bn, block_k=bk, group_m=8, num_warps=warps,
                                        num_stages=stages))
    return list(dict.fromkeys(out))


# -- ahead-of-time compile cases -----------------------------------------------------------------

def _ptr(dtype: torch.dtype) -> str:
    return "*" + triton_dtype(dtype)


_ALIGNED_INTS = ("N", "K", "Kw", "stride_xm", "stride_qm", "stride_om")


def _aligned(sig: dict) -> tuple:
    """What a launch on the DESIGN.md shapes (dims multiples of 16) specialises: pointers and dims."""
    return tuple(n for n, t in sig.items() if t.startswith("*") or n in _ALIGNED_INTS)


def quantize_aot_case(family: str, dtype: torch.dtype, block: int) -> AotCase:
    """The quantizer for activations of `dtype` with a BLOCK_K of `block` (one tile when K fits)."""
    sig = {"x_ptr": _ptr(dtype), "xq_ptr": "*i8", "scale_ptr": "*fp32", "K": "i32", "stride_xm": "i32",
           "stride_qm": "i32", "BLOCK_K": "constexpr", "ONE_TILE": "constexpr"}
    one = block < QUANT_MAX_BLOCK
    cfg = KernelConfig(block_m=1, block_n=1, block_k=block, num_warps=8 if block >= 4096 else 4, num_stages=1)
    return AotCase(family, _quantize_rows_kernel, sig, {"BLOCK_K": block, "ONE_TILE": one}, cfg,
                   f"quant {triton_dtype(dtype)} k{block}{' 1tile' if one else ''}", divisible_by_16=_aligned(sig))


def sign_aot_case(family: str, kind: SignKind, path: KernelPath, xdtype: torch.dtype, cfg: KernelConfig,
                  scale_dtype: torch.dtype, per_n: bool = True, has_bias: bool = True) -> AotCase:
    """One GEMV or GEMM specialisation; A8 GEMM cases require integer tensor-core instructions."""
    act = torch.int8 if kind.int8_act else xdtype
    sig = {"x_ptr": _ptr(act), "xscale_ptr": "*fp32", "qw_ptr": "*i32", "kscale_ptr": _ptr(scale_dtype),
           "nscale_ptr": _ptr(scale_dtype), "bias_ptr": _ptr(xdtype), "out_ptr": _ptr(xdtype)}
    consts = {"BITS": kind.bits, "INT8_ACT": kind.int8_act, "HAS_KSCALE": kind.has_kscale,
              "NSCALE_PER_N": per_n, "HAS_BIAS": has_bias, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n}
    if path is KernelPath.GEMM:
        kernel = _sign_gemm_kernel
        sig.update({"M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_om": "i32"})
        consts.update({"BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m})
    else:
        kernel = _sign_gemv_kernel
        sig.update({"ws_ptr": "*i32" if kind.int8_act else "*fp32", "M": "i32", "N": "i32", "K": "i32",
                    "Kw": "i32", "stride_xm": "i32", "stride_om": "i32"})
        consts.update({"BLOCK_KW": cfg.block_k // kind.vpw, "SPLIT_K": cfg.split_k})
    for name in consts:
        sig[name] = "constexpr"
    # fp32 activations use input_precision="ieee": FMA dots, no tensor cores
    tc = path is KernelPath.GEMM and (kind.int8_act or xdtype != torch.float32)
    return AotCase(family, kernel, sig, consts, cfg, f"{kind.name} {path.value} {triton_dtype(xdtype)} {cfg.label()}",
                   expects_tensor_cores=tc, integer_mma=tc and kind.int8_act, divisible_by_16=_aligned(sig))


def reduce_aot_case(family: str, kind: SignKind, xdtype: torch.dtype, split: int,
                    scale_dtype: torch.dtype) -> AotCase:
    """The split-K reduction + epilogue."""
    sig = {"ws_ptr": "*i32" if kind.int8_act else "*fp32", "xscale_ptr": "*fp32", "nscale_ptr": _ptr(scale_dtype),
           "bias_ptr": _ptr(xdtype), "out_ptr": _ptr(xdtype), "M": "i32", "N": "i32", "stride_om": "i32"}
    consts = {"SPLIT_K": split, "INT8_ACT": kind.int8_act, "NSCALE_PER_N": True, "HAS_BIAS": True,
              "BLOCK_M": 16, "BLOCK_N": 128}
    for name in consts:
        sig[name] = "constexpr"
    cfg = KernelConfig(block_m=16, block_n=128, split_k=split, num_warps=4, num_stages=1)
    return AotCase(family, _splitk_reduce_kernel, sig, consts, cfg,
                   f"{kind.name} reduce {triton_dtype(xdtype)} s{split}",
                   divisible_by_16=_aligned(sig))
