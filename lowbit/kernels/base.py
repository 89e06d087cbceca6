"""What every kernel family shares: paths, configs, the family interface, hardware constants, checks.

A family is a package ``lowbit/kernels/<family>/`` laid out the same way (ARCHITECTURE.md):
``kernels.py`` (only ``@triton.jit`` code), ``launch.py`` (check once, allocate, grid, the
``lowbit::<family>_linear`` custom op and its fake, and the ``FAMILY`` descriptor),
``configs.py`` (search spaces, validity rules, heuristics) and ``aot.py`` (compile-gate cases).
This module imports torch only, never triton, so the registry can be imported cheaply.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import enum
import os
import threading
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
        """A config from a dict of its fields (e.g. a cache file entry), rejecting anything that is not one.

        Every field must be an int (not a bool, float or string) within KernelConfig.LIMITS, and the
        tile sizes, warps and group_m powers of two; families check their own rules on top.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            raise ValueError(f"not a KernelConfig: {d!r}")
        for k, v in d.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"KernelConfig field {k}={v!r} must be an int")
        cfg = cls(**d)
        problem = cfg.structural_problem()
        if problem:
            raise ValueError(f"not a valid KernelConfig ({problem}): {d!r}")
        return cfg

    # (low, high, power of two) per field: what any family could launch
    LIMITS = {"block_m": (1, 1024, True), "block_n": (1, 1024, True), "block_k": (1, 4096, True),
              "split_k": (1, 256, False), "group_m": (1, 64, False), "num_warps": (1, 32, True),
              "num_stages": (1, 8, False)}

    def structural_problem(self) -> str | None:
        """Why no family could launch this config (None when it is within KernelConfig.LIMITS)."""
        for name, (lo, hi, pow2) in self.LIMITS.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                return f"{name}={v!r} is not an int in [{lo}, {hi}]"
            if pow2 and v & (v - 1):
                return f"{name}={v} is not a power of two"
        return None

    def label(self) -> str:
        return (f"m{self.block_m}n{self.block_n}k{self.block_k}s{self.split_k}"
                f"g{self.group_m}w{self.num_warps}st{self.num_stages}")


def common_config_problem(path: KernelPath, cfg: KernelConfig) -> str | None:
    """Rules every family shares: KernelConfig.LIMITS (ints, ranges, powers of two) and tl.dot's 16 minimum
    on the GEMM path."""
    problem = cfg.structural_problem()
    if problem:
        return problem
    if path is KernelPath.GEMM and min(cfg.block_m, cfg.block_n, cfg.block_k) < 16:
        return "GEMM tiles need block_m, block_n, block_k >= 16 (tl.dot)"
    return None


@dataclass(frozen=True)
class KernelCall:
    """One call of a family at a given shape, as the compile gate and the static roofline describe it.

    `weight()` builds the QuantizedWeight on the meta device (no memory): the launch wrapper can then
    run with its kernel launches recorded instead of executed (lowbit.kernels.plans).
    """

    scheme: str
    n: int
    k: int
    m: int
    path: KernelPath
    dtype: torch.dtype
    config: KernelConfig
    options: tuple = ()  # weight options as (name, value) pairs, e.g. (("group_size", 128),)
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("n", "k", "m"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"KernelCall.{name} must be a positive int, got {v!r}")
        object.__setattr__(self, "scheme", Scheme.parse(self.scheme).value)
        object.__setattr__(self, "path", KernelPath.parse(self.path))
        if self.path is None:
            raise ValueError("KernelCall needs a path ('gemv' or 'gemm')")
        if self.dtype not in DTYPE_TAGS:
            raise ValueError(f"KernelCall.dtype must be one of {list(DTYPE_TAGS)}, got {self.dtype}")
        if not isinstance(self.config, KernelConfig):
            raise TypeError(f"KernelCall.config must be a KernelConfig, got {type(self.config).__name__}")
        object.__setattr__(self, "options", tuple(sorted(dict(self.options).items())))

    def weight(self, device: str = "meta") -> QuantizedWeight:
        return QuantizedWeight.empty(self.scheme, (self.n, self.k), device=device, **dict(self.options))

    def label(self) -> str:
        opts = "".join(f",{k}={v}" for k, v in self.options)
        return (f"{self.scheme}{opts} {self.path.value} {dtype_tag(self.dtype)} m{self.m} n{self.n} k{self.k}"
                f"{' bias' if self.bias else ''} {self.config.label()}")


@dataclass(frozen=True)
class AotCase:
    """One kernel specialisation for the ahead-of-time compile gate.

    Cases made by :func:`lowbit.kernels.plans.gate_case` are what a JIT launch of `call` specialises
    (argument types, constants such as an M of 1, divisibility attributes, launch options);
    tests/kernels/test_plans.py re-records every case's call and fails when a case drifts from it.
    """

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
    call: KernelCall | None = None  # the call whose launch this case is (None: written by hand)
    options: tuple = ()  # compile options besides num_warps/num_stages, as (name, value) pairs


@dataclass(frozen=True)
class LaunchPlan:
    """One kernel launch of one call, as the static roofline models it (see perf/README.md).

    A call is a list of these (activation quantizer, main kernel, split-K reduce, outlier pass, ...),
    so work moved out of the main loop still counts. A launch that is a torch op (a memset, a cast
    copy, a sort) has no case: the model costs its bytes and launch overhead only.
    """

    label: str  # what the launch does: "gemv", "gemm", "reduce", "quantize x", ...
    case: AotCase | None  # the exact specialisation this launch compiles; None for torch ops
    grid: tuple  # programs launched per grid axis
    threads_per_cta: int  # 32 * num_warps (0 for torch ops)
    loop_trips: float  # trips of the main loop per program, averaged over the grid (1: no loop)
    weights_per_iteration: int  # weight elements one trip consumes per program (0: reads no weights)
    hbm_bytes: int  # bytes read from and written to HBM by the whole launch, each tensor counted once
    inner_trips: object = None  # trip counts of loops nested in the main loop (lowbit.kernels.sass)
    launches: int = 1  # kernel launches this entry stands for (a torch op may take several)
    main: bool = False  # the call's main kernel: the one whose instructions per weight are reported

    @property
    def ctas(self) -> int:
        n = 1
        for g in self.grid:
            n *= int(g)
        return n


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
    """The weight's tensors as the kernels read them (contiguous).

    Callers check the layout first (check_linear_args runs QuantizedWeight.check_layout on every call),
    because the tensors dict can be edited after construction and a wrong shape would make a kernel
    read out of bounds.
    """
    return {name: t.contiguous() for name, t in qw.tensors.items()}


# The Triton interpreter keeps global state (the current program's grid, patched builtins), so two
# threads interpreting kernels at once corrupt each other. Launches on the interpreter take this lock;
# GPU launches never do.
INTERPRETER_LOCK = threading.RLock()


def launch_guard(x: torch.Tensor):
    """A context that serialises kernel launches when `x` runs on the interpreter (a no-op on a GPU).

    Not taken while torch.compile traces (Dynamo cannot enter a lock, and tracing launches nothing).
    """
    if on_interpreter(x) and not torch.compiler.is_compiling():
        return INTERPRETER_LOCK
    return contextlib.nullcontext()


class KernelFamily(abc.ABC):
    """What dispatch, the autotuner and the compile gate need from one family of kernels.

    Configs are always arguments: a family never looks up the autotune cache (lowbit.dispatch
    does, and passes the result down).
    """

    name: str = ""
    schemes: frozenset = frozenset()
    gemv_max_m: int = 8  # M at or below this uses the GEMV path by default
    # Whether forward/run add a weight's low-rank term (QuantizedWeight.lowrank) themselves. While False,
    # lowbit.kernels.linear and launch() add it after them with the generic kernels of lowbit.kernels.lowrank
    # (two extra launches); a family sets it True once its own kernels fuse the term.
    fuses_lowrank: bool = False

    def serves(self, scheme: Scheme) -> bool:
        return scheme in self.schemes

    def check_served(self, qw) -> None:
        """TypeError unless `qw` is a QuantizedWeight; ValueError naming its scheme unless this family serves it."""
        if not isinstance(qw, QuantizedWeight):
            raise TypeError(f"weight must be a lowbit.QuantizedWeight, got {type(qw).__name__}")
        if not self.serves(qw.scheme):
            served = "/".join(sorted(s.value for s in self.schemes))
            raise ValueError(f"the {self.name} kernels serve {served}, not scheme {qw.scheme.value!r}")

    def choose_path(self, m: int, qw: QuantizedWeight | None = None, dtype: torch.dtype | None = None) -> KernelPath:
        """The default path of a call with M rows of x; a family may also weigh the weight and x's dtype
        (None: not known, the M-only rule)."""
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
        if x2d.shape[0] == 0:
            return out
        if x2d.stride(1) != 1:
            x2d = x2d.contiguous()
        with launch_guard(x2d):
            out = self.run(x2d, qw, None if bias is None else bias.contiguous(), path, config, out)
            if qw.lowrank and not self.fuses_lowrank:
                from .lowrank import add_lowrank

                add_lowrank(x2d, qw, out, inplace=True)
            return out

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
