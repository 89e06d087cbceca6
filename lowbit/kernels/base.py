"""What every kernel family shares: paths, configs, the family interface, hardware constants, checks.

A family is a package ``lowbit/kernels/<family>/`` laid out the same way (ARCHITECTURE.md):
``kernels.py`` (only ``@triton.jit`` code), ``launch.py`` (check once, allocate, grid, the
``lowbit::<family>_linear`` custom op and its fake, and the ``FAMILY`` descriptor),
``configs.py`` (search spaces, validity rules, heuristics) and ``aot.py`` (compile-gate cases).
This module imports torch only, never triton, so the registry can be imported cheaply.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import os
from dataclasses import dataclass
from typing import Iterable

import torch

from ..formats import DTYPE_TAGS, QuantizedWeight, Scheme

# -- hardware constants (one table) ------------------------------------------------------------
# Opt-in dynamic shared memory per block, bytes, by compute capability (CUDA C programming
# guide, "Technical Specifications per Compute Capability").
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# What a family's configs may plan for: the smallest target's limit less Triton's scratch margin.
SHARED_BUDGET = min(SHARED_LIMIT.values()) - 3 * 1024
DEFAULT_SMS = 132  # H100/H200 SXM; used by heuristics when no CUDA device can be queried
TARGET_PROGRAMS = 2 * DEFAULT_SMS  # split-K heuristics grow small grids to about two waves


def sm_count() -> int:
    """SMs of the current CUDA device, or DEFAULT_SMS without one (heuristics only; no timing)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return DEFAULT_SMS


# Triton pointer element names (AOT signatures) for the torch dtypes kernels see.
TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
                 torch.int8: "i8", torch.int16: "i16", torch.int64: "i64"}


def triton_dtype(dtype: torch.dtype) -> str:
    """Triton's pointer element name for a torch dtype (used by AOT signatures)."""
    return TRITON_DTYPES[dtype]


def dtype_tag(dtype: torch.dtype) -> str:
    """Short tag of an activation dtype in labels ("f16", "bf16", "f32")."""
    return DTYPE_TAGS[dtype]


class KernelPath(str, enum.Enum):
    """GEMV: small-M, memory-bound (split-K). GEMM: large-M, tensor-core tiles."""

    GEMV = "gemv"
    GEMM = "gemm"

    @classmethod
    def parse(cls, value) -> "KernelPath | None":
        if value is None or isinstance(value, KernelPath):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"unknown kernel path {value!r}; expected 'gemv', 'gemm' or None") from None


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of one kernel variant (tile sizes, split-K, warps, pipeline stages)."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_list(self) -> list[int]:
        """The fields in declaration order: how configs cross a custom-op boundary."""
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def from_list(cls, values) -> "KernelConfig":
        return cls(*[int(v) for v in values])

    @classmethod
    def from_dict(cls, d: dict) -> "KernelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            raise ValueError(f"not a KernelConfig: {d!r}")
        vals = {k: int(v) for k, v in d.items()}
        if any(v <= 0 for v in vals.values()):
            raise ValueError(f"KernelConfig fields must be positive: {d!r}")
        return cls(**vals)

    def label(self) -> str:
        return (f"m{self.block_m}n{self.block_n}k{self.block_k}s{self.split_k}"
                f"g{self.group_m}w{self.num_warps}st{self.num_stages}")


def common_config_problem(path: KernelPath, cfg: KernelConfig) -> str | None:
    """Rules every family shares: positive fields, power-of-two tiles, tl.dot's 16 minimum on the GEMM path."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            return f"{f.name}={v!r} must be a positive int"
    for name in ("block_m", "block_n", "block_k"):
        v = getattr(cfg, name)
        if v & (v - 1):
            return f"{name}={v} is not a power of two"
    if path is KernelPath.GEMM and min(cfg.block_m, cfg.block_n, cfg.block_k) < 16:
        return "GEMM tiles need block_m, block_n, block_k >= 16 (tl.dot)"
    return None


@dataclass(frozen=True)
class AotCase:
    """One kernel specialisation for the ahead-of-time compile gate."""

    family: str
    kernel: object  # a triton JITFunction
    signature: dict  # arg name -> triton type string ("*fp16", "i32", "constexpr")
    constexprs: dict  # arg name -> value
    config: KernelConfig
    label: str
    expects_tensor_cores: bool = False
    integer_mma: bool = False
    # argument names a JIT launch on aligned shapes specialises as multiples of 16 (pointers, dims,
    # strides); the gate passes them as tt.divisibility attributes so it compiles what runs
    divisible_by_16: tuple = ()


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch of one call, as the static roofline models it (see perf/README.md).

    A call is a list of these (activation quantizer, main kernel, split-K reduce, outlier pass, ...),
    so work moved out of the main loop still counts.
    """

    label: str  # what the launch does: "gemv", "gemm", "reduce", "quantize x", ...
    case: AotCase  # the exact specialisation this launch compiles (what the compile gate builds)
    grid: tuple  # programs launched per grid axis
    threads_per_cta: int  # 32 * num_warps
    loop_trips: int  # trips of the main loop per program (1 when the kernel has no loop)
    weights_per_iteration: int  # weight elements one trip consumes per program (0: reads no weights)
    hbm_bytes: int  # bytes read from and written to HBM by the whole launch, each tensor counted once
    inner_trips: object = None  # trip counts of loops nested in the main loop (lowbit.kernels.sass)

    @property
    def ctas(self) -> int:
        n = 1
        for g in self.grid:
            n *= int(g)
        return n


def aligned_args(signature: dict, ints: Iterable[str]) -> tuple:
    """The arguments a launch on aligned shapes (dims multiples of 16) specialises: pointers and `ints`."""
    ints = set(ints)
    return tuple(n for n, t in signature.items() if t.startswith("*") or n in ints)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def on_interpreter(x: torch.Tensor) -> bool:
    """True when `x` will be computed by the Triton CPU interpreter (a CPU tensor under TRITON_INTERPRET=1)."""
    return x.device.type == "cpu" and interpreting()


# Interpreter tile caps. The interpreter runs each program and each K step as numpy calls, so its
# cost is a fixed overhead per program per K step (~15 ms) plus numpy work proportional to the tile;
# the GPU-sized tiles of the heuristics make thousands of tiny steps. These caps keep a tile's
# temporaries at a few MiB while cutting the step count by one to two orders of magnitude.
INTERP_MAX_BLOCK_M = 128  # GEMM; the GEMV path caps BLOCK_M at 16 (its [M, K, N] product is 3-D)
INTERP_MAX_BLOCK_N = 512
INTERP_MAX_BLOCK_K = 256


def _pow2_at_least(v, cap: int) -> int:
    """min(next power of two >= v, cap) by comparisons only, so a symbolic M (torch.compile with
    dynamic shapes) guards on its power-of-two bucket instead of specialising on its value."""
    b = 1
    while b < cap and b < v:
        b *= 2
    return b


def check_runtime(x: torch.Tensor) -> None:
    """Kernels run on CUDA tensors, or on CPU tensors under the Triton interpreter."""
    if x.device.type == "cuda":
        return
    if x.device.type == "cpu" and interpreting():
        return
    raise ValueError(f"lowbit kernels need CUDA tensors (x is on {x.device}); on a CPU-only machine set "
                     "TRITON_INTERPRET=1 before importing triton, or use lowbit.reference.linear")


def flatten_rows(x: torch.Tensor) -> torch.Tensor:
    """View x [..., K] as [M, K] with unit stride along K (copies only when it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2


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


def operands(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """The weight's tensors as the kernels read them: layout re-checked (cheap, no sync), contiguous.

    QuantizedWeight validated everything when it was built, but its ``tensors`` dict can be
    edited afterwards, and a wrong shape would make a kernel read out of bounds.
    """
    qw.check_layout()
    return {name: t.contiguous() for name, t in qw.tensors.items()}


class KernelFamily(abc.ABC):
    """What dispatch, the autotuner and the compile gate need from one family of kernels.

    Configs are always arguments: a family never looks up the autotune cache (lowbit.dispatch
    does, and passes the result down).
    """

    name: str = ""
    schemes: frozenset = frozenset()
    gemv_max_m: int = 8  # M at or below this uses the GEMV path by default

    def serves(self, scheme: Scheme) -> bool:
        return scheme in self.schemes

    def check_served(self, qw) -> None:
        """TypeError unless `qw` is a QuantizedWeight; ValueError naming its scheme unless this family serves it."""
        if not isinstance(qw, QuantizedWeight):
            raise TypeError(f"weight must be a lowbit.QuantizedWeight, got {type(qw).__name__}")
        if not self.serves(qw.scheme):
            served = "/".join(sorted(s.value for s in self.schemes))
            raise ValueError(f"the {self.name} kernels serve {served}, not scheme {qw.scheme.value!r}")

    def choose_path(self, m: int) -> KernelPath:
        return KernelPath.GEMV if m <= self.gemv_max_m else KernelPath.GEMM

    # -- running ------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, x2d: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None,
                path: KernelPath, config: KernelConfig) -> torch.Tensor:
        """y [M, N] = x2d [M, K] . W^T + b through the family's custom op; arguments already checked."""

    @abc.abstractmethod
    def run(self, x2d: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None, path: KernelPath,
            config: KernelConfig, out: torch.Tensor) -> torch.Tensor:
        """Launch the kernels of one explicit config into `out` (arguments already checked)."""

    def launch(self, x2d: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None, path,
               config: KernelConfig, out: torch.Tensor) -> torch.Tensor:
        """Run one explicit config on x2d [M, K], writing out [M, N]; checks everything once (tests, tuner)."""
        from .._checks import check_linear_args

        self.check_served(qw)
        check_linear_args(x2d, qw, bias)
        if x2d.dim() != 2:
            raise ValueError(f"launch takes x2d [M, K], got shape {tuple(x2d.shape)}")
        check_runtime(x2d)
        path = KernelPath.parse(path)
        if path is None:
            raise ValueError("launch needs an explicit path ('gemv' or 'gemm')")
        if not isinstance(config, KernelConfig):
            raise TypeError(f"config must be a KernelConfig, got {type(config).__name__}")
        problem = self.config_problem(path, config, qw, x2d.dtype)
        if problem:
            raise ValueError(f"config {config.label()} cannot run {qw.scheme.value} on the {path.value} path: "
                             f"{problem}")
        check_out(out, x2d, qw.N)
        if x2d.stride(1) != 1:
            x2d = x2d.contiguous()
        return self.run(x2d, qw, None if bias is None else bias.contiguous(), path, config, out)

    # -- configs (delegated to the family's configs module) -----------------------------------
    # The module holds search_space(path, qw, dtype), heuristic(path, m, qw, dtype) and
    # config_problem(path, config, qw, dtype); qw may be None for search_space (the whole space).
    configs = None

    def search_space(self, path: KernelPath, qw: QuantizedWeight | None = None,
                     dtype: torch.dtype = torch.float16) -> list[KernelConfig]:
        """Every candidate config of `path` for `dtype` activations (pruned for `qw` when given)."""
        if qw is not None:
            self.check_served(qw)
        return self.configs.search_space(KernelPath.parse(path), qw, dtype)

    def heuristic(self, path: KernelPath, m: int, qw: QuantizedWeight,
                  dtype: torch.dtype = torch.float16) -> KernelConfig:
        """A good config without tuning."""
        self.check_served(qw)
        return self.configs.heuristic(KernelPath.parse(path), m, qw, dtype)

    def config_problem(self, path: KernelPath, config: KernelConfig, qw: QuantizedWeight,
                       dtype: torch.dtype) -> str | None:
        """Why `config` cannot run `qw` on `path` with `dtype` activations (None when it can)."""
        return self.configs.config_problem(path, config, qw, dtype)

    def tuned_config_problem(self, path: KernelPath, config: KernelConfig, qw: QuantizedWeight,
                             dtype: torch.dtype) -> str | None:
        """Why a config read from the autotune cache should not be used (None to use it): it cannot run,
        or it is not one the family would plan for `dtype` (e.g. a tile that spills)."""
        return self.config_problem(path, config, qw, dtype)

    @abc.abstractmethod
    def aot_cases(self) -> Iterable[AotCase]:
        """Every kernel x config x dtype specialisation that the compile gate builds."""

    def launch_plans(self, qw: QuantizedWeight, m: int, path: KernelPath, dtype: torch.dtype,
                     config: KernelConfig) -> list[LaunchPlan]:
        """Every launch one call makes for an [m, K] x of `dtype` with `config`, for the static roofline.

        `qw` may hold meta tensors (QuantizedWeight.empty): plans read shapes and specs only.
        """
        raise NotImplementedError(f"the {self.name} family does not describe its launches yet")

    def interpreter_block_k_ok(self, path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight) -> bool:
        """Whether cfg.block_k satisfies the family's K-tile rules (group sizes, word lanes) for qw.
        interpreter_config halves BLOCK_K until this holds; families with such rules override it."""
        return True

    def interpreter_config(self, path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
        """Large tiles for the Triton CPU interpreter, where per-program and per-K-step overhead dominates.

        Powers of two, every dim >= 16 (tl.dot) but no larger than the problem needs (next power of
        two of M, N and K, capped by the INTERP_MAX_* limits), BLOCK_K shrunk to the family's rules,
        no split-K. Never used for CUDA tensors (see default_config).
        """
        bm_cap = INTERP_MAX_BLOCK_M if path is KernelPath.GEMM else 16
        bm = _pow2_at_least(m, bm_cap)
        if path is KernelPath.GEMM:
            bm = max(16, bm)
        bn = max(16, _pow2_at_least(qw.N, INTERP_MAX_BLOCK_N))
        bk = max(32, _pow2_at_least(qw.K, INTERP_MAX_BLOCK_K))
        cfg = KernelConfig(block_m=bm, block_n=bn, block_k=bk, split_k=1,
                           group_m=8 if path is KernelPath.GEMM else 1, num_warps=4, num_stages=1)
        while cfg.block_k > 16 and not self.interpreter_block_k_ok(path, cfg, qw):
            cfg = dataclasses.replace(cfg, block_k=cfg.block_k // 2)
        return cfg

    def default_config(self, x: torch.Tensor, path: KernelPath, m: int, qw: QuantizedWeight) -> KernelConfig:
        """The config without a tuned entry: interpreter_config for CPU tensors under the interpreter,
        else the heuristic. CUDA tensors never get interpreter configs."""
        if on_interpreter(x):
            return self.interpreter_config(path, m, qw, x.dtype)
        return self.heuristic(path, m, qw, x.dtype)
