"""Static roofline: an *estimate* of a call's time on H100 SXM, H200 and A100 from compiled SASS.

With no GPU, a call (one or more kernel launches) is costed from counts read off its SASS
(:mod:`lowbit.kernels.sass`) and from the bytes it must move::

    time = sum over launches of max(bytes / HBM bandwidth,
                                    thread-instructions / issue rate x SM imbalance,
                                    tensor-core FLOPs / tensor peak x SM imbalance)  + launch overhead

- issue rate = SMs x schedulers per SM x 32 lanes x clock (one warp instruction per scheduler per
  cycle, counted in thread-instructions);
- a launch's thread-instructions = (main-loop instructions per iteration x iterations per CTA +
  instructions outside the loop) x threads per CTA x CTAs. The issue and tensor terms are those of
  the busiest SM: CTAs go round-robin to the SMs, so one SM runs ceil(CTAs / SMs) of them, and the
  totals are multiplied by that over the even share CTAs / SMs (``Launch.sm_imbalance``): a grid of
  64 CTAs on 132 SMs leaves 68 idle and takes 132 / 64 = 2.06x the even-spread issue time. The outside part is every instruction
  of the kernel outside its main loop counted once (``LoopReport.outside_instructions``): the
  prologue, the epilogue, and alternative paths that a given CTA may skip, so it is a rough
  per-CTA overhead, small next to the loop in the kernels it is meant for;
- % of memory roofline = (bytes of the whole call / bandwidth) / estimate;
- fp16 ``F.linear`` at the same shape: max((N*K + M*K + M*N) * 2 bytes / bandwidth,
  2*M*N*K / fp16 tensor peak) + one launch overhead; ``speedup_vs_fp16`` = that / estimate.

Blind spots (why this is an estimate, not a prediction):

- latency hiding: the max() assumes memory, issue and tensor work overlap perfectly; a kernel
  with too few warps in flight to cover DRAM latency, or a dependency chain, runs slower;
- occupancy: how many CTAs an SM holds at once is not modelled (only how many it must run);
  the memory term assumes any grid can draw the full HBM bandwidth, though a grid on a few SMs
  cannot (no per-SM bandwidth figure is published);
- per-pipe throughput: every instruction costs one issue slot, but conversions (I2F, F2I),
  MUFU and some integer ops run at a quarter or half rate, shared-memory bank conflicts
  replay, and barriers stall; none of this is modelled;
- caches: bytes are the minimum HBM traffic the caller states; L2 hits, re-reads of the
  activations by many CTAs, and partial sectors are ignored;
- launch overhead: one fixed figure per launch, measured on another GPU generation (see the
  table); host-side launch cost in eager mode can be much larger, CUDA graphs smaller;
- clocks: one issue clock per GPU; real clocks vary with power and temperature.

Every figure this module formats says it is an estimate.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..kernels.sass import LoopReport, MmaKind

__all__ = ["Hardware", "HARDWARE", "H100_SXM", "H200", "A100_SXM_80GB", "Launch", "Bound", "LaunchTime",
           "Estimate", "estimate", "fp16_linear_floor", "format_estimate"]

_LANES = 32


@dataclass(frozen=True)
class Hardware:
    """Published constants of one GPU (dense tensor peaks, i.e. without 2:4 sparsity)."""

    name: str
    sms: int
    schedulers_per_sm: int
    issue_clock_hz: float
    hbm_bytes_per_s: float
    fp16_tensor_flops: float
    int8_tensor_ops: float
    tf32_tensor_flops: float
    fp8_tensor_flops: float | None
    launch_overhead_s: float
    sources: tuple[str, ...] = field(default=(), repr=False)

    @property
    def issue_rate(self) -> float:
        """Thread-instructions per second: SMs x schedulers x 32 lanes x clock."""
        return self.sms * self.schedulers_per_sm * _LANES * self.issue_clock_hz

    def tensor_peak(self, kind: MmaKind) -> float:
        """Dense tensor-core FLOP/s (or OP/s) for MMA inputs of `kind`."""
        peak = {MmaKind.FP16: self.fp16_tensor_flops, MmaKind.INT8: self.int8_tensor_ops,
                MmaKind.TF32: self.tf32_tensor_flops, MmaKind.FP8: self.fp8_tensor_flops}.get(MmaKind(kind))
        if peak is None:
            raise ValueError(f"no published {MmaKind(kind).value} tensor peak for {self.name}")
        return peak


_H100_DATASHEET = ("NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column "
                   "(https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet): "
                   "'GPU memory bandwidth 3.35TB/s', 'FP16 Tensor Core 1,979 teraFLOPS*', "
                   "'INT8 Tensor Core 3,958 TOPS*', 'TF32 Tensor Core 989 teraFLOPS*', "
                   "'FP8 Tensor Core 3,958 teraFLOPS*', '* With sparsity' (dense = half)")
_HOPPER_WP = ("NVIDIA H100 Tensor Core GPU Architecture whitepaper "
              "(https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper): H100 SXM5 has "
              "132 SMs; each SM has four partitions, each with one warp scheduler (32 threads/clk); "
              "dense peaks (H100 SXM5 column): 'Peak FP16 Tensor TFLOPS with FP32 Accumulate 989.4', "
              "'Peak INT8 Tensor TOPS 1978.9', 'Peak TF32 Tensor TFLOPS 494.7', 'Peak FP8 Tensor TFLOPS 1978.9'")
_HOPPER_CLOCK = ("issue clock 1.755 GHz: the figure lowbit uses (issue 12: 132 x 4 x 32 x 1.755 GHz = 2.96e13 "
                 "thread-instructions/s). It is below both the 1.83 GHz implied by the dense FP16 peak "
                 "(989.4e12 / (132 SMs x 4096 FLOP/clk)) and the 1.98 GHz maximum boost, so issue-bound "
                 "estimates err on the slow side")
_H200_PAGE = ("NVIDIA H200 product page / datasheet, H200 SXM column (https://www.nvidia.com/en-us/data-center/h200/): "
              "'GPU Memory Bandwidth 4.8TB/s', 'FP16 Tensor Core 1,979 TFLOPS*', 'INT8 Tensor Core 3,958 TFLOPS*', "
              "'TF32 Tensor Core 989 TFLOPS*', 'FP8 Tensor Core 3,958 TFLOPS*', '* With sparsity'; same GH100 "
              "compute as the H100 SXM (132 SMs)")
_A100_DATASHEET = ("NVIDIA A100 Tensor Core GPU datasheet (https://www.nvidia.com/content/dam/en-zz/Solutions/"
                   "Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf), A100 80GB SXM: "
                   "'GPU Memory Bandwidth 2,039GB/s', 'FP16 Tensor Core 312 TFLOPS | 624 TFLOPS*', "
                   "'INT8 Tensor Core 624 TOPS | 1248 TOPS*', 'TF32 Tensor Core 156 TFLOPS | 312 TFLOPS*'")
_AMPERE_WP = ("NVIDIA A100 Tensor Core GPU Architecture whitepaper (https://images.nvidia.com/aem-dam/en-zz/"
              "Solutions/data-center/nvidia-ampere-architecture-whitepaper.pdf): A100 has 108 SMs, four "
              "processing blocks (one warp scheduler each) per SM, 'GPU Boost Clock 1410 MHz'")
_LAUNCH = ("launch overhead 0.9 us per kernel: 'Getting Started with CUDA Graphs', NVIDIA Technical Blog "
           "(https://developer.nvidia.com/blog/cuda-graphs/): back-to-back launches in one stream took "
           "3.8 us per kernel for a kernel that runs 2.9 us (3.4 us per kernel in a CUDA graph), measured on "
           "a V100; no figure for these GPUs is published, so the same one is used for all three")

H100_SXM = Hardware("H100 SXM", sms=132, schedulers_per_sm=4, issue_clock_hz=1.755e9, hbm_bytes_per_s=3.35e12,
                    fp16_tensor_flops=989.4e12, int8_tensor_ops=1978.9e12, tf32_tensor_flops=494.7e12,
                    fp8_tensor_flops=1978.9e12, launch_overhead_s=0.9e-6,
                    sources=(_H100_DATASHEET, _HOPPER_WP, _HOPPER_CLOCK, _LAUNCH))
H200 = Hardware("H200", sms=132, schedulers_per_sm=4, issue_clock_hz=1.755e9, hbm_bytes_per_s=4.8e12,
                fp16_tensor_flops=989.4e12, int8_tensor_ops=1978.9e12, tf32_tensor_flops=494.7e12,
                fp8_tensor_flops=1978.9e12, launch_overhead_s=0.9e-6,
                sources=(_H200_PAGE, _HOPPER_WP, _HOPPER_CLOCK, _LAUNCH))
A100_SXM_80GB = Hardware("A100 SXM 80GB", sms=108, schedulers_per_sm=4, issue_clock_hz=1.41e9,
                         hbm_bytes_per_s=2.039e12, fp16_tensor_flops=312e12, int8_tensor_ops=624e12,
                         tf32_tensor_flops=156e12, fp8_tensor_flops=None, launch_overhead_s=0.9e-6,
                         sources=(_A100_DATASHEET, _AMPERE_WP, _LAUNCH))
# the one table of hardware constants, by short name
HARDWARE: dict[str, Hardware] = {"h100": H100_SXM, "h200": H200, "a100": A100_SXM_80GB}


@dataclass(frozen=True)
class Launch:
    """What one kernel launch of a call costs: bytes it must move and the work read off its SASS."""

    name: str
    bytes_moved: float  # minimum HBM traffic of this launch (reads + writes)
    threads_per_cta: int
    ctas: int
    loop_instructions: float = 0.0  # main-loop instructions per iteration per thread
    iterations: float = 0.0  # main-loop trips per CTA
    per_cta_instructions: float = 0.0  # instructions per thread outside the main loop
    mma_flops: float = 0.0  # tensor-core FLOPs of the whole launch
    mma_kind: MmaKind = MmaKind.FP16

    def __post_init__(self) -> None:
        for name in ("threads_per_cta", "ctas"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"launch {self.name!r}: {name} must be a positive int, got {v!r}")
        for name in ("bytes_moved", "loop_instructions", "iterations", "per_cta_instructions", "mma_flops"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"launch {self.name!r}: {name} must be a finite number >= 0, got {v!r}")
        object.__setattr__(self, "mma_kind", MmaKind(self.mma_kind))

    @property
    def thread_instructions(self) -> float:
        """(loop instructions x iterations + per-CTA instructions) x threads x CTAs."""
        per_thread = self.loop_instructions * self.iterations + self.per_cta_instructions
        return per_thread * self.threads_per_cta * self.ctas

    def sm_imbalance(self, sms: int) -> float:
        """Work of the busiest of `sms` SMs (ceil(CTAs / SMs) CTAs) over the even share (CTAs / SMs), >= 1."""
        return math.ceil(self.ctas / sms) * sms / self.ctas

    @classmethod
    def from_loop(cls, report: LoopReport, *, name: str, bytes_moved: float, threads_per_cta: int, ctas: int,
                  iterations: float) -> Launch:
        """A launch whose work is `report`'s main loop run `iterations` times by each CTA, plus the
        report's instructions outside the loop once per CTA."""
        return cls(name=name, bytes_moved=bytes_moved, threads_per_cta=threads_per_cta, ctas=ctas,
                   loop_instructions=report.instructions, iterations=iterations,
                   per_cta_instructions=report.outside_instructions,
                   mma_flops=report.mma_flops_per_thread * threads_per_cta * iterations * ctas,
                   mma_kind=report.mma_kind or MmaKind.FP16)


class Bound(str, enum.Enum):
    """Which term of the max() set a launch's estimated time."""

    MEMORY = "memory"
    ISSUE = "issue"
    TENSOR = "tensor"


@dataclass(frozen=True)
class LaunchTime:
    """The three terms of one launch's estimate (seconds) and the one that won."""

    name: str
    memory_s: float
    issue_s: float
    tensor_s: float
    overhead_s: float

    @property
    def busy_s(self) -> float:
        return max(self.memory_s, self.issue_s, self.tensor_s)

    @property
    def time_s(self) -> float:
        return self.busy_s + self.overhead_s

    @property
    def bound(self) -> Bound:
        terms = {Bound.MEMORY: self.memory_s, Bound.ISSUE: self.issue_s, Bound.TENSOR: self.tensor_s}
        return max(terms, key=terms.get)


@dataclass(frozen=True)
class Estimate:
    """Estimated time of one call (all launches) on one GPU; not a measurement."""

    hardware: Hardware
    launches: tuple[LaunchTime, ...]
    bytes_total: float
    fp16_linear_s: float | None = None  # fp16 F.linear floor + one launch, when a shape was given

    @property
    def time_s(self) -> float:
        return sum(lt.time_s for lt in self.launches)

    @property
    def memory_floor_s(self) -> float:
        """Pure bandwidth time of every byte of the call."""
        return self.bytes_total / self.hardware.hbm_bytes_per_s

    @property
    def pct_memory_roofline(self) -> float:
        """Memory floor / estimate, in percent (100 = as fast as moving the bytes)."""
        return 100.0 * self.memory_floor_s / self.time_s if self.time_s > 0 else float("nan")

    @property
    def speedup_vs_fp16(self) -> float | None:
        """fp16 F.linear's floor time / this estimate (> 1: estimated faster than fp16)."""
        if self.fp16_linear_s is None:
            return None
        return self.fp16_linear_s / self.time_s if self.time_s > 0 else float("nan")


def fp16_linear_floor(m: int, n: int, k: int, hw: Hardware, *, include_launch: bool = True) -> float:
    """Seconds for fp16 F.linear at [M, K] x [N, K]^T at best: max(fp16 weight + activation +
    output bytes / bandwidth, 2*M*N*K / fp16 tensor peak), plus one launch overhead by default."""
    for name, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    nbytes = 2 * (n * k + m * k + m * n)
    floor = max(nbytes / hw.hbm_bytes_per_s, 2 * m * n * k / hw.fp16_tensor_flops)
    return floor + (hw.launch_overhead_s if include_launch else 0.0)


def estimate(launches: Sequence[Launch], hw: Hardware, shape: tuple[int, int, int] | None = None) -> Estimate:
    """Estimated time of a call made of `launches` on `hw`; with `shape` = (M, N, K), also the
    fp16 F.linear floor at that shape for :attr:`Estimate.speedup_vs_fp16`."""
    if not isinstance(hw, Hardware):
        raise TypeError(f"hw must be a Hardware (e.g. static_model.H200), got {type(hw).__name__}")
    launches = list(launches)
    if not launches:
        raise ValueError("estimate needs at least one launch")
    times = []
    for ln in launches:
        if not isinstance(ln, Launch):
            raise TypeError(f"launches must be Launch objects, got {type(ln).__name__}")
        busiest = ln.sm_imbalance(hw.sms)  # issue and tensor work: the SM with the most CTAs sets the time
        tensor = busiest * ln.mma_flops / hw.tensor_peak(ln.mma_kind) if ln.mma_flops else 0.0
        times.append(LaunchTime(ln.name, memory_s=ln.bytes_moved / hw.hbm_bytes_per_s,
                                issue_s=busiest * ln.thread_instructions / hw.issue_rate, tensor_s=tensor,
                                overhead_s=hw.launch_overhead_s))
    fp16 = None
    if shape is not None:
        if not (isinstance(shape, tuple) and len(shape) == 3):
            raise ValueError(f"shape must be a tuple (M, N, K), got {shape!r}")
        fp16 = fp16_linear_floor(*shape, hw)
    return Estimate(hw, tuple(times), float(sum(ln.bytes_moved for ln in launches)), fp16)


def _us(s: float) -> str:
    return f"{s * 1e6:.2f} us"


def format_estimate(est: Estimate) -> str:
    """A few lines for humans; every figure is labelled as an estimate of the static model."""
    hw = est.hardware
    lines = [(f"ESTIMATE (static SASS model, not measured) on {hw.name}: {_us(est.time_s)} per call, "
              f"{est.pct_memory_roofline:.1f}% of the memory roofline (bytes floor {_us(est.memory_floor_s)})")]
    if est.speedup_vs_fp16 is not None:
        lines.append(f"  estimated fp16 F.linear floor {_us(est.fp16_linear_s)}: estimated speedup "
                     f"{est.speedup_vs_fp16:.2f}x")
    for lt in est.launches:
        lines.append(f"  estimate for launch {lt.name}: {_us(lt.time_s)}, {lt.bound.value}-bound "
                     f"(memory {_us(lt.memory_s)}, issue {_us(lt.issue_s)}, tensor {_us(lt.tensor_s)}, "
                     f"launch {_us(lt.overhead_s)})")
    return "\n".join(lines)
