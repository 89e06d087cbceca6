"""Pieces every kernel family shares: paths, configs, the family interface, runtime checks.

A family module (uniform.py, lut.py, ...) is laid out as: Triton kernels, then launch
wrappers (validate, allocate, grid), then one ``torch.library.custom_op`` with a fake
implementation, then a :class:`KernelFamily` instance that dispatch, autotune and the
compile gate use.
"""
from __future__ import annotations

import abc
import dataclasses
import enum
import os
from dataclasses import dataclass
from typing import Iterable

import torch

from ..formats import QuantizedWeight, Scheme, dim_bucket


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


def triton_dtype(dtype: torch.dtype) -> str:
    """Triton's pointer element name for a torch dtype (used by AOT signatures)."""
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32",
            torch.int8: "i8", torch.int64: "i64"}[dtype]


class KernelFamily(abc.ABC):
    """What dispatch, the autotuner and the compile gate need from one family of kernels."""

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

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None,
                path: KernelPath | None) -> torch.Tensor:
        """y = x . W^T + b through the family's custom op (configs from the cache or heuristic)."""

    @abc.abstractmethod
    def launch(self, x2d: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None,
               path: KernelPath, config: KernelConfig, out: torch.Tensor) -> torch.Tensor:
        """Run one explicit config on x2d [M, K], writing out [M, N]; used by tests and the tuner."""

    @abc.abstractmethod
    def search_space(self, path: KernelPath, qw: QuantizedWeight | None = None) -> list[KernelConfig]:
        """Every candidate config of `path` (pruned for `qw`'s group size when given)."""

    @abc.abstractmethod
    def heuristic(self, path: KernelPath, m: int, qw: QuantizedWeight) -> KernelConfig:
        """A good config without tuning."""

    @abc.abstractmethod
    def aot_cases(self) -> Iterable[AotCase]:
        """Every kernel x config x dtype specialisation that the compile gate builds."""

    def config_for(self, path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
        """The tuned config from the autotune cache when one exists, else the heuristic."""
        from ..autotune import lookup

        cfg = lookup(self.name, qw, path, dim_bucket(m), dtype)
        return cfg if cfg is not None else self.heuristic(path, m, qw)

    def select_config(self, x: torch.Tensor, path: KernelPath, m: int, qw: QuantizedWeight) -> KernelConfig:
        """The config forward() runs: interpreter_config for CPU tensors under the interpreter, else
        config_for (cache, then heuristic). CUDA tensors never get interpreter configs."""
        if on_interpreter(x):
            return self.interpreter_config(path, m, qw, x.dtype)
        return self.config_for(path, m, qw, x.dtype)

    def interpreter_block_k_ok(self, path: KernelPath, cfg: KernelConfig, qw: QuantizedWeight) -> bool:
        """Whether cfg.block_k satisfies the family's K-tile rules (group sizes, word lanes) for qw.
        interpreter_config halves BLOCK_K until this holds; families with such rules override it."""
        return True

    def interpreter_config(self, path: KernelPath, m: int, qw: QuantizedWeight, dtype: torch.dtype) -> KernelConfig:
        """Large tiles for the Triton CPU interpreter, where per-program and per-K-step overhead dominates.

        Powers of two, every dim >= 16 (tl.dot) but no larger than the problem needs (next power of
        two of M, N and K, capped by the INTERP_MAX_* limits), BLOCK_K shrunk to the family's rules,
        no split-K. Never used for CUDA tensors (see select_config).
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
