"""Lookup-table family: lut3/lut4 (per-row tables), sq3/sq4 (plus CSR outliers) and nf4.

Launch wrappers check every tensor's shape, dtype and device (cheap, shapes only) and pick the
grid; the Triton kernels are in ``_lut_kernels.py`` (dense part) and ``sparse.py`` (outliers).
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
"""
from typing import List, Optional

import torch
import triton

from ..formats import (LUT_SCHEMES, LUTSpec, NF4Spec, QuantizedWeight, Scheme, packed_words, values_per_word)
from ._common import (AotCase, KernelConfig, KernelFamily, KernelPath, check_runtime, flatten_rows, on_interpreter,
                      triton_dtype)
from ._lut_kernels import lut_gemm_kernel, lut_gemv_kernel
from .sparse import add_csr_outliers, csr_outlier_kernel, tile_outliers

SPARSE_CHUNK = 32  # outliers scattered into a GEMM tile per one-hot dot
INTERP_SPARSE_CHUNK = 256  # under the CPU interpreter: each chunk is a step with fixed overhead
_TARGET_PROGRAMS = 264  # ~2 programs per SM on a 132-SM H100: the GEMV split-K heuristic aims here
_NF4_TABLES: dict = {}  # device -> the 16 NF4 values (fp32); a constant, uploaded once per device


def _nf4_table(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _NF4_TABLES:
        from ..reference.nf4 import nf4_table

        _NF4_TABLES[key] = nf4_table(device)
    return _NF4_TABLES[key]


def _slots(bits: int) -> int:
    """Lanes per packed word in the GEMV tile: codes per word rounded up to a power of two."""
    return triton.next_power_of_2(values_per_word(bits))


# -- operand checks ----------------------------------------------------------------------------
def _want(name: str, t, shape: tuple, dtypes: tuple, device) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"lut weight tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"lut weight tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    if t.dtype not in dtypes:
        raise TypeError(f"lut weight tensor {name!r} has dtype {t.dtype}, expected one of {dtypes}")
    if t.device != device:
        raise ValueError(f"lut weight tensor {name!r} is on {t.device}, expected {device}")
    return t.contiguous()


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _operands(qw: QuantizedWeight) -> dict:
    """The tensors and constants the kernels read, re-checked from shapes and dtypes only.

    QuantizedWeight validated them (CSR contents included) when it was built; this repeats the
    shape checks because its tensors dict can be replaced afterwards, and a wrong shape would
    make a kernel read out of bounds. CSR *values* cannot be re-read without a host sync; the
    outlier kernel is memory-safe for any values (see sparse.py).
    """
    FAMILY.check_served(qw)
    n, k = qw.shape
    bits = qw.bits
    dev = qw.device
    t = qw.tensors
    ops = {"qweight": _want("qweight", t.get("qweight"), (packed_words(k, bits), n), (torch.int32,), dev),
           "lut": None, "absmax": None, "row_ptr": None, "col_idx": None, "values": None, "bits": bits, "group": 0}
    if qw.scheme is Scheme.NF4:
        if not isinstance(qw.spec, NF4Spec):
            raise TypeError(f"nf4 needs an NF4Spec, got {type(qw.spec).__name__}")
        g = qw.spec.effective_group(k)
        if k % g:
            raise ValueError(f"K={k} is not divisible by group_size={g}")
        ops["absmax"] = _want("absmax", t.get("absmax"), (k // g, n), _FLOATS, dev)
        ops["group"] = 0 if qw.spec.group_size == -1 else g
        return ops
    if not isinstance(qw.spec, LUTSpec):
        raise TypeError(f"{qw.scheme.value} needs a LUTSpec, got {type(qw.spec).__name__}")
    ops["lut"] = _want("lut", t.get("lut"), (n, 2 ** bits), _FLOATS, dev)
    if qw.spec.sparse:
        if not (0.0 < qw.spec.outlier_fraction <= 0.1):
            raise ValueError(f"outlier_fraction must be in (0, 0.1], got {qw.spec.outlier_fraction}")
        col = t.get("col_idx")
        nnz = col.numel() if isinstance(col, torch.Tensor) else -1
        ops["row_ptr"] = _want("row_ptr", t.get("row_ptr"), (n + 1,), (torch.int32,), dev)
        ops["col_idx"] = _want("col_idx", col, (max(nnz, 0),), (torch.int32,), dev)
        ops["values"] = _want("values", t.get("values"), (nnz,), _FLOATS, dev)
    return ops


def _check_config(path: KernelPath, cfg: KernelConfig) -> None:
    for name in ("block_m", "block_n", "block_k"):
        v = getattr(cfg, name)
        if v <= 0 or v & (v - 1):
            raise ValueError(f"{name}={v} must be a positive power of two")
    if cfg.split_k <= 0 or cfg.num_warps <= 0 or cfg.num_stages <= 0:
        raise ValueError(f"split_k, num_warps and num_stages must be positive, got {cfg.label()}")
    if path is KernelPath.GEMM and min(cfg.block_m, cfg.block_n, cfg.block_k) < 16:
        raise ValueError(f"GEMM tiles need every block dim >= 16 (tl.dot), got {cfg.label()}")


def _scale_row(group: int, span: int) -> bool:
    """Whether every K tile of `span` codes (tiles start at multiples of span) sits in one scale group."""
    return group == 0 or group % span == 0


# -- launch ------------------------------------------------------------------------------------
def _run(x2d, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits: int, group: int,
         path: KernelPath, cfg: KernelConfig, out: torch.Tensor) -> torch.Tensor:
    """Launch the dense kernel (and the outlier pass) for x2d [M, K] into out [M, N]."""
    m, k = x2d.shape
    kw, n = qweight.shape
    nf4 = absmax is not None
    table = _nf4_table(x2d.device) if nf4 else lut
    scale = absmax if nf4 else qweight  # dummy pointer when HAS_SCALE is off
    tab_stride_n = 0 if nf4 else lut.shape[1]
    vpw = values_per_word(bits)
    has_outliers = col_idx is not None and col_idx.numel() > 0
    sparse = has_outliers and path is KernelPath.GEMV  # atomic pass after the GEMV; the GEMM fuses them
    split = 1
    if path is KernelPath.GEMV:
        slots = _slots(bits)
        block_k = max(cfg.block_k, slots)
        words_per_step = block_k // slots
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
    span = block_k // slots * vpw if path is KernelPath.GEMV else cfg.block_k  # K covered by one tile
    common = dict(BITS=bits, VPW=vpw, GROUP=group, HAS_SCALE=nf4, SCALE_ROW=_scale_row(group, span),
                  HAS_BIAS=bias is not None,
                  BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    bias_arg = bias if bias is not None else x2d
    if path is KernelPath.GEMV:
        grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
        lut_gemv_kernel[grid](x2d, qweight, table, scale, bias_arg, target, m, n, k, kw, x2d.stride(0),
                              target.stride(0), target.stride(1), tab_stride_n, words_per_split,
                              SLOTS=slots, ATOMIC=split > 1, BLOCK_K=block_k, **common)
    else:
        tiles = (tile_outliers(row_ptr, col_idx, values, n, k, cfg.block_n, cfg.block_k) if has_outliers
                 else (qweight,) * 4)  # dummies when HAS_SPARSE is off
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
        lut_gemm_kernel[grid](x2d, qweight, table, scale, bias_arg, target, *tiles, m, n, k, x2d.stride(0),
                              target.stride(0), target.stride(1), tab_stride_n,
                              IEEE_DOT=x2d.dtype == torch.float32, HAS_SPARSE=has_outliers,
                              SPARSE_CHUNK=INTERP_SPARSE_CHUNK if on_interpreter(x2d) else SPARSE_CHUNK,
                              BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, **common)
    if sparse:
        add_csr_outliers(x2d, row_ptr, col_idx, values, target)
    if target is not out:
        out.copy_(target)
    return out


def _cfg_list(cfg: KernelConfig) -> List[int]:
    return [cfg.block_m, cfg.block_n, cfg.block_k, cfg.split_k, cfg.group_m, cfg.num_warps, cfg.num_stages]


@torch.library.custom_op("lowbit::lut_linear", mutates_args=())
def lut_linear_op(x: torch.Tensor, qweight: torch.Tensor, lut: Optional[torch.Tensor], absmax: Optional[torch.Tensor],
                  row_ptr: Optional[torch.Tensor], col_idx: Optional[torch.Tensor], values: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], bits: int, group: int, gemm: bool, config: List[int]) -> torch.Tensor:
    """y [M, N] = x [M, K] . W^T + bias for a lut/sq/nf4 weight (see the module docstring)."""
    cfg = KernelConfig(*config)
    path = KernelPath.GEMM if gemm else KernelPath.GEMV
    out = torch.empty((x.shape[0], qweight.shape[1]), dtype=x.dtype, device=x.device)
    return _run(x, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits, group, path, cfg, out)


@lut_linear_op.register_fake
def _(x, qweight, lut, absmax, row_ptr, col_idx, values, bias, bits, group, gemm, config):
    return x.new_empty((x.shape[0], qweight.shape[1]))


# -- heuristics (register counts from the compile gate: no spills on sm_80/sm_90) ----------------
def _operands_group(qw: QuantizedWeight) -> int:
    """The kernels' GROUP constant: the NF4 block along K, 0 for per channel or for LUT schemes."""
    if isinstance(qw.spec, NF4Spec) and qw.spec.group_size != -1:
        return qw.spec.group_size
    return 0


def _gemv_heuristic(m: int, n: int, k: int, bits: int, group: int) -> KernelConfig:
    """BLOCK_M covers M (<= 8); BLOCK_M * BLOCK_K = 128 slots keeps the 3-D product at <= 64
    values per thread; NF4 tiles stay inside one absmax group (one vector load per tile);
    split-K until the grid has ~2 programs per SM, keeping >= 8 K steps per split."""
    slots = _slots(bits)
    bm = min(triton.next_power_of_2(max(m, 1)), 8)
    bn = 64 if n >= 64 * 32 else 32
    bk = max(slots, 128 // bm)
    if group:
        bk = max(slots, min(bk, group))
    steps = triton.cdiv(packed_words(k, bits), bk // slots)
    blocks = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    split = 1
    while split < 16 and blocks * split < _TARGET_PROGRAMS and steps >= 16 * split:
        split *= 2
    return KernelConfig(bm, bn, bk, split, 1, 4, 2)


def _gemm_heuristic(m: int, dtype: torch.dtype) -> KernelConfig:
    """Tensor-core tiles growing with M; fp32 (ieee FMA dots) uses small tiles to avoid spills."""
    if dtype == torch.float32:
        return KernelConfig(16, 64, 16, 1, 8, 4, 2) if m <= 16 else KernelConfig(32, 32, 16, 1, 8, 4, 2)
    if m <= 32:
        return KernelConfig(16 if m <= 16 else 32, 64, 64, 1, 8, 4, 3)
    return KernelConfig(64 if m <= 64 else 128, 128, 32, 1, 8, 8, 3)


# -- family ------------------------------------------------------------------------------------
class LutFamily(KernelFamily):
    """GEMV (split-K, FMA) and GEMM (tensor cores) kernels for lut3/lut4/sq3/sq4/nf4."""

    name = "lut"
    schemes = frozenset(LUT_SCHEMES | {Scheme.NF4})
    gemv_max_m = 8

    def forward(self, x, qw, bias, path):
        check_runtime(x)
        ops = _operands(qw)
        x2 = flatten_rows(x)
        m = x2.shape[0]
        path = path or self.choose_path(m)
        cfg = self.select_config(x, path, m, qw)
        _check_config(path, cfg)
        y = torch.ops.lowbit.lut_linear(x2, ops["qweight"], ops["lut"], ops["absmax"], ops["row_ptr"],
                                        ops["col_idx"], ops["values"], None if bias is None else bias.contiguous(),
                                        ops["bits"], ops["group"], path is KernelPath.GEMM, _cfg_list(cfg))
        return y.reshape(*x.shape[:-1], qw.N)

    def launch(self, x2d, qw, bias, path, config, out):
        check_runtime(x2d)
        ops = _operands(qw)
        path = KernelPath.parse(path)
        if path is None:
            raise ValueError("launch needs an explicit path ('gemv' or 'gemm')")
        _check_config(path, config)
        if x2d.dim() != 2 or x2d.shape[1] != qw.K:
            raise ValueError(f"x2d must be [M, {qw.K}], got {tuple(x2d.shape)}")
        if tuple(out.shape) != (x2d.shape[0], qw.N) or out.dtype != x2d.dtype or out.device != x2d.device:
            raise ValueError(f"out must be [{x2d.shape[0]}, {qw.N}] {x2d.dtype} on {x2d.device}, "
                             f"got {tuple(out.shape)} {out.dtype} on {out.device}")
        x2d = flatten_rows(x2d)
        return _run(x2d, ops["qweight"], ops["lut"], ops["absmax"], ops["row_ptr"], ops["col_idx"], ops["values"],
                    None if bias is None else bias.contiguous(), ops["bits"], ops["group"], path, config, out)

    def search_space(self, path, qw=None, dtype=torch.float16):
        path = KernelPath.parse(path)
        out = []
        if path is KernelPath.GEMM and dtype == torch.float32:  # ieee FMA dots: larger tiles spill
            return [KernelConfig(bm, bn, bk, 1, 8, 4, 2) for bm in (16, 32) for bn in (32, 64) for bk in (16, 32)]
        if path is KernelPath.GEMV:
            min_k = _slots(qw.bits) if qw is not None else 16
            for bm in (1, 2, 4, 8):
                for bn in (32, 64, 128):
                    for bk in (32, 64, 128, 256):
                        for warps in (4, 8):
                            per_thread = bm * bk * bn // (32 * warps)
                            if bk < min_k or not 16 <= per_thread <= 128:
                                continue
                            for split in (1, 2, 4, 8):
                                out.append(KernelConfig(bm, bn, bk, split, 1, warps, 2))
            return out
        for bm in (16, 32, 64, 128):
            for bn in (32, 64, 128, 256):
                for bk in (32, 64, 128):
                    for warps in (4, 8):
                        for stages in (2, 3, 4):
                            smem = stages * (bm * bk + bk * bn) * 2
                            if smem > 160 * 1024 or bm * bn // (32 * warps) > 128 or bk * bn // (32 * warps) > 128:
                                continue
                            out.append(KernelConfig(bm, bn, bk, 1, 8, warps, stages))
        return out

    def heuristic(self, path, m, qw, dtype=torch.float16):
        path = KernelPath.parse(path)
        if path is KernelPath.GEMV:
            return _gemv_heuristic(m, qw.N, qw.K, qw.bits, _operands_group(qw))
        return _gemm_heuristic(m, dtype)

    def config_for(self, path, m, qw, dtype):
        """The tuned config from the autotune cache, else the (dtype-aware) heuristic."""
        from ..autotune import lookup
        from ..formats import dim_bucket

        cfg = lookup(self.name, qw, path, dim_bucket(m), dtype)
        return cfg if cfg is not None else self.heuristic(path, m, qw, dtype)

    def aot_cases(self):
        return list(_aot_cases())


FAMILY = LutFamily()


# -- compile-gate cases ------------------------------------------------------------------------
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


def _aot_cases():
    """35 specialisations: lut3, lut4 and nf4 (g64) x GEMV/GEMM heuristic configs x fp16/bf16/fp32; sq3's
    GEMM with fused tile outliers (fp16, fp32); the GEMV-path outlier pass (fp16, fp32)."""
    for label, bits, nf4, sq in _AOT_SCHEMES:
        group = 64 if nf4 else 0
        for dt in (torch.float16, torch.bfloat16, torch.float32):
            x_dt = triton_dtype(dt)
            # heuristic configs at a 4096 x 4096 weight: M = 1 without split-K (direct store),
            # M = 1 and M = 8 with split-K (fp32 atomics); other dtypes at M = 1
            gemv_cfgs = [_gemv_heuristic(1, 4096, 4096, bits, group)]
            gemv_cfgs[0] = KernelConfig(**dict(gemv_cfgs[0].to_dict(), split_k=1))
            if dt is torch.float16:
                gemv_cfgs += [_gemv_heuristic(1, 4096, 4096, bits, group), _gemv_heuristic(8, 4096, 4096, bits, group)]
            for cfg in gemv_cfgs if not sq else ():  # sq's GEMV is lut's GEMV plus the pass below
                atomic = cfg.split_k > 1
                sig = _dense_signature(x_dt, "fp32" if atomic else x_dt, nf4, gemv=True)
                bk = max(cfg.block_k, _slots(bits))
                consts = dict(BITS=bits, VPW=values_per_word(bits), SLOTS=_slots(bits), GROUP=group, HAS_SCALE=nf4,
                              SCALE_ROW=_scale_row(group, bk // _slots(bits) * values_per_word(bits)),
                              HAS_BIAS=True, ATOMIC=atomic, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk)
                sig.update({c: "constexpr" for c in consts})
                yield AotCase("lut", lut_gemv_kernel, sig, consts, cfg, f"gemv {label} {x_dt} {cfg.label()}")
            gemm_cfgs = [_gemm_heuristic(33, dt)] if dt is torch.float32 else [
                _gemm_heuristic(16, dt), _gemm_heuristic(4096, dt)]
            if sq and dt is torch.bfloat16:
                gemm_cfgs = []
            for cfg in gemm_cfgs:
                sig = _dense_signature(x_dt, x_dt, nf4, gemv=False)
                consts = dict(BITS=bits, VPW=values_per_word(bits), GROUP=group, HAS_SCALE=nf4,
                              SCALE_ROW=_scale_row(group, cfg.block_k), HAS_BIAS=True,
                              IEEE_DOT=dt is torch.float32, HAS_SPARSE=sq, SPARSE_CHUNK=SPARSE_CHUNK,
                              BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m)
                sig.update({c: "constexpr" for c in consts})
                # fp32 activations use exact ieee dots, which run on FMA units, not tensor cores
                yield AotCase("lut", lut_gemm_kernel, sig, consts, cfg, f"gemm {label} {x_dt} {cfg.label()}",
                              expects_tensor_cores=dt is not torch.float32)
    for dt in (torch.float16, torch.float32):
        from . import sparse

        x_dt = triton_dtype(dt)
        sig = {"x_ptr": f"*{x_dt}", "row_ptr_ptr": "*i32", "col_ptr": "*i32", "val_ptr": "*fp16", "acc_ptr": "*fp32",
               "M": "i32", "N": "i32", "K": "i32", "NNZ": "i32", "stride_xm": "i32", "stride_am": "i32",
               "search_steps": "i32", "BLOCK_NNZ": "constexpr", "BLOCK_M": "constexpr"}
        cfg = KernelConfig(sparse.BLOCK_M, 1, sparse.BLOCK_NNZ, 1, 1, sparse.NUM_WARPS, 1)
        yield AotCase("lut", csr_outlier_kernel, sig, dict(BLOCK_NNZ=sparse.BLOCK_NNZ, BLOCK_M=sparse.BLOCK_M), cfg,
                      f"csr outliers {x_dt}")
