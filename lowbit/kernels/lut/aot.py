"""Compile-gate cases and static-roofline launch plans of the lookup-table family.

:func:`launch_plans` describes every launch of one call exactly as ``launch._run`` makes it,
with the specialisation a JIT launch on that shape compiles: Triton turns an int argument equal
to 1 into a constant and marks pointers and ints that are multiples of 16 as divisible by 16
(see :func:`_specialise`). :func:`aot_cases` is the set of distinct cases of the plans of the
heuristic configs over the schemes, activation dtypes and batch sizes the gate covers.
"""
from __future__ import annotations

import torch
import triton

from ...formats import QuantizedWeight, packed_words, values_per_word
from ..base import AotCase, KernelConfig, KernelPath, LaunchPlan, dtype_tag, triton_dtype
from . import configs as cfgs
from .kernels import (_lut_dense_gemm_kernel, _lut_dequant_kernel, _lut_finish_kernel, _lut_gemm_kernel,
                      _lut_gemv_kernel, _lut_scatter_kernel)

# (scheme, quantizer options, activation dtype, batch sizes M) the gate compiles at GATE_SHAPE: every
# kernel x fp16/bf16/fp32 x LUT/NF4 x lut/sq x 3/4-bit, M = 1 (a constant) and larger
_F16, _BF16, _F32 = torch.float16, torch.bfloat16, torch.float32
GATE = (
    ("lut4", {}, _F16, (1, 8, 16, 4096)), ("lut3", {}, _F16, (1, 16, 4096)),
    ("nf4", {"group_size": 64}, _F16, (1, 8, 16, 4096)), ("nf4", {"group_size": -1}, _F16, (1, 4096)),
    ("sq3", {}, _F16, (1, 16, 4096)), ("sq4", {}, _F16, (1, 4096)),
    ("lut4", {}, _BF16, (1, 4096)), ("nf4", {"group_size": 64}, _BF16, (1, 4096)), ("sq4", {}, _BF16, (4096,)),
    ("lut4", {}, _F32, (1, 33)), ("nf4", {"group_size": 64}, _F32, (3, 33)), ("sq3", {}, _F32, (1, 33)),
)
GATE_SHAPE = (4096, 4096)


def _specialise(ints: dict) -> tuple[dict, dict, tuple]:
    """(signature entries, constexprs, divisible-by-16 names) that a JIT launch gives int arguments:
    1 becomes a constexpr, a multiple of 16 (0 included) is marked divisible, >= 2^31 is i64."""
    sig, const, div = {}, {}, []
    for name, v in ints.items():
        v = int(v)
        if v == 1:
            sig[name] = "constexpr"
            const[name] = 1
            continue
        sig[name] = "i64" if not -2 ** 31 <= v < 2 ** 31 else "i32"
        if v % 16 == 0:
            div.append(name)
    return sig, const, tuple(div)


def _case(kernel, label: str, pointers: dict, ints: dict, consts: dict, cfg: KernelConfig,
          expects_tensor_cores: bool = False, other: dict | None = None) -> AotCase:
    """An AotCase of `kernel` with every pointer 16-byte aligned, `ints` specialised like a JIT launch and
    `other` arguments typed as given (neither constant nor divisible)."""
    sig = dict(pointers, **(other or {}))
    isig, iconst, div = _specialise(ints)
    sig.update(isig)
    sig.update({name: "constexpr" for name in consts})
    order = kernel.arg_names
    sig = {name: sig[name] for name in order}
    const = dict(consts, **iconst)
    return AotCase("lut", kernel, sig, const, cfg, label, expects_tensor_cores=expects_tensor_cores,
                   divisible_by_16=tuple(pointers) + div)


def _weight_bytes(qw: QuantizedWeight) -> int:
    return sum(t.numel() * t.element_size() for name, t in qw.tensors.items()
               if name in ("qweight", "lut", "absmax"))


def _csr_bytes(qw: QuantizedWeight) -> int:
    return sum(qw[name].numel() * qw[name].element_size() for name in ("row_ptr", "col_idx", "values"))


def _decode_plans(qw: QuantizedWeight, tag: str, act: str, tab: str, scale: str, nnz: int) -> list[LaunchPlan]:
    """The launches of launch.decode_weight: the dense decode into an x-dtype [N, K] buffer, then the
    outlier scatter (sq)."""
    n, k = qw.shape
    bits = qw.bits
    group = cfgs.scale_group(qw)
    nf4 = "absmax" in qw.tensors
    xb = {"fp16": 2, "bf16": 2, "fp32": 4}[act]
    bk = cfgs.dequant_block_k(bits, group)
    tiles = cfgs.num_k_tiles(k, bits, bk)
    cfg = KernelConfig(1, cfgs.DEQUANT_BLOCK_N, bk, 1, 1, 4, 1)
    ptrs = {"qw_ptr": "*i32", "tab_ptr": tab, "scale_ptr": scale, "w_ptr": f"*{act}"}
    ints = dict(N=n, K=k, KW_TOTAL=packed_words(k, bits), tab_stride_n=0 if nf4 else 2 ** bits,
                tiles_per_prog=cfgs.DEQUANT_TILES)
    consts = dict(BITS=bits, VPW=values_per_word(bits), LANES=cfgs.lanes(bits), GROUP=group, HAS_SCALE=nf4,
                  BLOCK_N=cfg.block_n, BLOCK_K=bk)
    case = _case(_lut_dequant_kernel, f"dequant {tag}", ptrs, ints, consts, cfg)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(tiles, cfgs.DEQUANT_TILES))
    plans = [LaunchPlan("decode weight", case, grid, 32 * cfg.num_warps, cfgs.DEQUANT_TILES,
                        cfg.block_n * cfgs.tile_span(bits, bk), _weight_bytes(qw) + n * k * xb)]
    if nnz:
        s_cfg = KernelConfig(1, cfgs.SCATTER_BLOCK_N, 16, 1, 1, 4, 1)
        s_ptrs = {"row_ptr_ptr": "*i32", "col_ptr": "*i32", "val_ptr": "*" + triton_dtype(qw["values"].dtype),
                  "w_ptr": f"*{act}"}
        case = _case(_lut_scatter_kernel, f"scatter {tag}", s_ptrs, dict(N=n, K=k, NNZ=nnz),
                     dict(BLOCK_N=s_cfg.block_n), s_cfg)
        # trips: the densest row of a program's block, estimated by the mean row; each trip reads and
        # writes one element of every row (2 sectors of 32 bytes each, counted as moved)
        trips = max(1, triton.cdiv(nnz, n))
        plans.append(LaunchPlan("scatter outliers", case, (triton.cdiv(n, s_cfg.block_n),), 32 * s_cfg.num_warps,
                                trips, s_cfg.block_n, _csr_bytes(qw) + nnz * 2 * 32))
    return plans


def launch_plans(qw: QuantizedWeight, m: int, path: KernelPath, dtype: torch.dtype,
                 config: KernelConfig) -> list[LaunchPlan]:
    """Every launch of one call y = x W^T (+ bias) for x [m, K] of `dtype` with `config` (see the module
    docstring); `qw` may hold meta tensors. Bias is assumed present (as nn.Linear layers usually have)."""
    n, k = qw.shape
    bits = qw.bits
    group = cfgs.scale_group(qw)
    nf4 = "absmax" in qw.tensors
    sparse = "row_ptr" in qw.tensors
    nnz = qw["col_idx"].numel() if sparse else 0
    act = triton_dtype(dtype)
    xb = torch.empty((), dtype=dtype).element_size()
    kw = packed_words(k, bits)
    dense = cfgs.decodes_once(path, m, bits, nf4, sparse)
    per_split, split = cfgs.split_plan(m, n, k, bits, config, dense)
    in_finish = nnz > 0 and not dense
    to_ws = split > 1 or in_finish
    span = cfgs.tile_span(bits, config.block_k)
    vpw = values_per_word(bits)
    tab = "*fp32" if nf4 else "*" + triton_dtype(qw["lut"].dtype)
    scale = "*" + triton_dtype(qw["absmax"].dtype) if nf4 else "*i32"
    consts = dict(BITS=bits, VPW=vpw, LANES=cfgs.lanes(bits), GROUP=group, HAS_SCALE=nf4, HAS_BIAS=True,
                  BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k)
    pointers = {"x_ptr": f"*{act}", "qw_ptr": "*i32", "tab_ptr": tab, "scale_ptr": scale, "bias_ptr": f"*{act}",
                "out_ptr": f"*{act}", "ws_ptr": "*fp32"}
    ints = dict(M=m, N=n, K=k, KW_TOTAL=kw, stride_xm=k, stride_om=n, tab_stride_n=0 if nf4 else 2 ** bits,
                tiles_per_split=per_split, to_ws=int(to_ws))
    scheme = qw.scheme.value + (f"g{qw.spec.group_size}" if nf4 else "")
    tag = f"{scheme} {dtype_tag(dtype)} m{m} {config.label()}"
    threads = 32 * config.num_warps
    x_bytes = m * k * xb
    out_bytes = m * n * (4 * split if to_ws else xb)
    main_bytes = _weight_bytes(qw) + x_bytes + out_bytes + (0 if to_ws else n * xb)
    plans = []
    wps = None
    if path is KernelPath.GEMV:
        wps = cfgs.mma_gemv_plan(m, dtype, bits, nf4, group, n, k, None if nf4 else qw["lut"].dtype, config)
    if wps is not None:
        from .mma_gemv import _lut_mma_gemv_kernel

        split = config.split_k
        to_ws = split > 1 or in_finish
        unroll = config.block_k // 8
        m_ptrs = {"x_ptr": f"*{act}", "qw_ptr": "*i32", "tab_ptr": "*fp16", "scale_ptr": scale,
                  "bias_ptr": f"*{act}", "out_ptr": "*fp32" if to_ws else f"*{act}"}
        m_consts = dict(WARPS=config.num_warps, UNROLL=unroll, GROUP=group, HAS_SCALE=nf4, HAS_BIAS=True,
                        TO_WS=to_ws)
        m_ints = dict(N=n, words_per_stream=wps, tab_stride_n=0 if nf4 else 2 ** bits)
        # zero_off (zero buffer minus x, in elements) is a runtime distance between two allocations
        case = _case(_lut_mma_gemv_kernel, f"mma gemv {tag}", m_ptrs, m_ints, m_consts, config,
                     other={"zero_off": "i64"})
        out_bytes = split * n * 4 if to_ws else n * xb
        plans.append(LaunchPlan("mma gemv", case, (n // cfgs.MMA_ROWS, split), threads, wps // unroll,
                                config.num_warps * cfgs.MMA_ROWS * unroll * 8,
                                _weight_bytes(qw) + x_bytes + out_bytes + (0 if to_ws else n * xb)))
    elif path is KernelPath.GEMV:
        case = _case(_lut_gemv_kernel, f"gemv {tag}", pointers, ints, consts, config)
        grid = (triton.cdiv(n, config.block_n), split, triton.cdiv(m, config.block_m))
        plans.append(LaunchPlan("gemv", case, grid, threads, per_split, config.block_n * span, main_bytes))
    elif dense:
        plans += _decode_plans(qw, tag, act, tab, scale, nnz)
        d_ptrs = {"x_ptr": f"*{act}", "w_ptr": f"*{act}", "bias_ptr": f"*{act}", "out_ptr": f"*{act}",
                  "ws_ptr": "*fp32"}
        d_ints = dict(M=m, N=n, K=k, stride_xm=k, stride_om=n, tiles_per_split=per_split, to_ws=int(to_ws))
        d_consts = dict(HAS_BIAS=True, IEEE_DOT=dtype == torch.float32, BLOCK_M=config.block_m,
                        BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m)
        case = _case(_lut_dense_gemm_kernel, f"dense gemm {tag}", d_ptrs, d_ints, d_consts, config,
                     expects_tensor_cores=dtype != torch.float32)
        grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), split)
        d_bytes = n * k * xb + x_bytes + out_bytes + (0 if to_ws else n * xb)
        plans.append(LaunchPlan("dense gemm", case, grid, threads, per_split, config.block_n * config.block_k,
                                d_bytes))
    else:
        g_consts = dict(consts, IEEE_DOT=dtype == torch.float32, GROUP_M=config.group_m)
        case = _case(_lut_gemm_kernel, f"gemm {tag}", pointers, ints, g_consts, config,
                     expects_tensor_cores=dtype != torch.float32)
        grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n), split)
        plans.append(LaunchPlan("gemm", case, grid, threads, per_split, config.block_n * span, main_bytes))
    if to_ws:
        f_cfg = KernelConfig(cfgs.finish_block_m(m), cfgs.FINISH_BLOCK_N, 16, 1, 1, cfgs.FINISH_WARPS, 1)
        f_ptrs = {"ws_ptr": "*fp32", "x_ptr": f"*{act}", "row_ptr_ptr": "*i32", "col_ptr": "*i32",
                  "val_ptr": "*" + triton_dtype(qw["values"].dtype) if in_finish else "*i32",
                  "bias_ptr": f"*{act}", "out_ptr": f"*{act}"}
        f_ints = dict(M=m, N=n, K=k, NNZ=nnz, split_k=split, stride_xm=k, stride_om=n)
        f_consts = dict(HAS_SPARSE=in_finish, HAS_BIAS=True, BLOCK_M=f_cfg.block_m, BLOCK_N=f_cfg.block_n)
        case = _case(_lut_finish_kernel, f"finish {tag}", f_ptrs, f_ints, f_consts, f_cfg)
        grid = (triton.cdiv(n, f_cfg.block_n), triton.cdiv(m, f_cfg.block_m))
        f_bytes = split * m * n * 4 + m * n * xb + n * xb
        if in_finish:
            # the outlier loop: one nonzero of every row of the tile per trip; trips = the densest row of
            # the tile, estimated here by the mean row (the distribution is not known from shapes)
            trips = max(1, triton.cdiv(nnz, n))
            f_bytes += _csr_bytes(qw) + x_bytes
            plans.append(LaunchPlan("finish + outliers", case, grid, 32 * f_cfg.num_warps, trips, f_cfg.block_n,
                                    f_bytes))
        else:
            plans.append(LaunchPlan("split-K sum", case, grid, 32 * f_cfg.num_warps, split, 0, f_bytes))
    return plans


def aot_cases() -> list[AotCase]:
    """The distinct launch cases of the heuristic configs of GATE (the path dispatch picks for each M)."""
    from .launch import FAMILY

    seen, out = set(), []
    for scheme, opts, dtype, ms in GATE:
        qw = QuantizedWeight.empty(scheme, GATE_SHAPE, **opts)
        for m in ms:
            path = FAMILY.choose_path(m)
            for plan in launch_plans(qw, m, path, dtype, FAMILY.heuristic(path, m, qw, dtype)):
                c = plan.case
                key = (c.kernel.__name__, tuple(sorted(c.signature.items())), tuple(sorted(c.constexprs.items())),
                       c.divisible_by_16, c.config)
                if key not in seen:
                    seen.add(key)
                    out.append(c)
    return out
