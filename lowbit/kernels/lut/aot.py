"""Compile-gate cases of the lookup-table family: heuristic configs of every kernel x dtype."""
from __future__ import annotations

import torch

from ...formats import FLOAT_DTYPES
from ..base import AotCase, KernelConfig, triton_dtype
from . import configs as cfgs
from .kernels import _lut_gemm_kernel, _lut_gemv_kernel, _lut_outlier_kernel
from .launch import OUTLIER_BLOCK_M, OUTLIER_BLOCK_NNZ, OUTLIER_WARPS

_AOT_SCHEMES = (("lut3", 3, False, False), ("lut4", 4, False, False), ("nf4", 4, True, False),
                ("sq3", 3, False, True))


def _dense_signature(x_dt: str, out_dt: str, nf4: bool, gemv: bool) -> dict:
    sig = {"x_ptr": f"*{x_dt}", "qw_ptr": "*i32", "tab_ptr": "*fp32" if nf4 else "*fp16",
           "scale_ptr": "*fp16" if nf4 else "*i32", "bias_ptr": f"*{x_dt}", "out_ptr": f"*{out_dt}"}
    if not gemv:
        sig.update({"tile_ptr": "*i32", "kl_ptr": "*i32", "nl_ptr": "*i32", "sv_ptr": "*fp16"})
    sig.update({"M": "i32", "N": "i32", "K": "i32"})
    if gemv:
        sig["KW"] = "i32"
    sig.update({"stride_xm": "i32", "stride_om": "i32", "stride_on": "i32", "tab_stride_n": "i32"})
    if gemv:
        sig["words_per_split"] = "i32"
    return sig


def aot_cases() -> list[AotCase]:
    return list(_cases())


def _cases():
    """35 specialisations: lut3, lut4 and nf4 (g64) x GEMV/GEMM heuristic configs x fp16/bf16/fp32; sq3's
    GEMM with fused tile outliers (fp16, fp32); the GEMV-path outlier pass (fp16, fp32)."""
    for label, bits, nf4, sq in _AOT_SCHEMES:
        group = 64 if nf4 else 0
        for dt in FLOAT_DTYPES:
            x_dt = triton_dtype(dt)
            # heuristic configs at a 4096 x 4096 weight: M = 1 without split-K (direct store),
            # M = 1 and M = 8 with split-K (fp32 atomics); other dtypes at M = 1
            gemv_cfgs = [cfgs.gemv_heuristic(1, 4096, 4096, bits, group)]
            gemv_cfgs[0] = KernelConfig(**dict(gemv_cfgs[0].to_dict(), split_k=1))
            if dt is torch.float16:
                gemv_cfgs += [cfgs.gemv_heuristic(1, 4096, 4096, bits, group), cfgs.gemv_heuristic(8, 4096, 4096, bits, group)]
            for cfg in gemv_cfgs if not sq else ():  # sq's GEMV is lut's GEMV plus the pass below
                atomic = cfg.split_k > 1
                sig = _dense_signature(x_dt, "fp32" if atomic else x_dt, nf4, gemv=True)
                bk = max(cfg.block_k, cfgs.slots(bits))
                consts = dict(BITS=bits, VPW=cfgs.unit_codes(bits), SLOTS=cfgs.slots(bits), GROUP=group, HAS_SCALE=nf4,
                              SCALE_ROW=cfgs.scale_row(group, bk // cfgs.slots(bits) * cfgs.unit_codes(bits)),
                              HAS_BIAS=True, ATOMIC=atomic, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk)
                sig.update({c: "constexpr" for c in consts})
                yield AotCase("lut", _lut_gemv_kernel, sig, consts, cfg, f"gemv {label} {x_dt} {cfg.label()}")
            gemm_cfgs = [cfgs.gemm_heuristic(33, dt, bits)] if dt is torch.float32 else [
                cfgs.gemm_heuristic(16, dt, bits), cfgs.gemm_heuristic(4096, dt, bits)]
            if sq and dt is torch.bfloat16:
                gemm_cfgs = []
            for cfg in gemm_cfgs:
                sig = _dense_signature(x_dt, x_dt, nf4, gemv=False)
                consts = dict(BITS=bits, VPW=cfgs.unit_codes(bits), GROUP=group, HAS_SCALE=nf4,
                              SCALE_ROW=cfgs.scale_row(group, cfg.block_k), HAS_BIAS=True,
                              IEEE_DOT=dt is torch.float32, HAS_SPARSE=sq, SPARSE_CHUNK=cfgs.SPARSE_CHUNK,
                              BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m)
                sig.update({c: "constexpr" for c in consts})
                # fp32 activations use exact ieee dots, which run on FMA units, not tensor cores
                yield AotCase("lut", _lut_gemm_kernel, sig, consts, cfg, f"gemm {label} {x_dt} {cfg.label()}",
                              expects_tensor_cores=dt is not torch.float32)
    for dt in (torch.float16, torch.float32):
        x_dt = triton_dtype(dt)
        sig = {"x_ptr": f"*{x_dt}", "row_ptr_ptr": "*i32", "col_ptr": "*i32", "val_ptr": "*fp16", "acc_ptr": "*fp32",
               "M": "i32", "N": "i32", "K": "i32", "NNZ": "i32", "stride_xm": "i32", "stride_am": "i32",
               "search_steps": "i32", "BLOCK_NNZ": "constexpr", "BLOCK_M": "constexpr"}
        cfg = KernelConfig(OUTLIER_BLOCK_M, 1, OUTLIER_BLOCK_NNZ, 1, 1, OUTLIER_WARPS, 1)
        yield AotCase("lut", _lut_outlier_kernel, sig, dict(BLOCK_NNZ=OUTLIER_BLOCK_NNZ, BLOCK_M=OUTLIER_BLOCK_M),
                      cfg, f"csr outliers {x_dt}")
