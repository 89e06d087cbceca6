"""What a call launches, recorded from the family's own launch wrapper, as JIT specialisations.

No GPU is needed: the wrapper runs on meta tensors (``QuantizedWeight.empty``) while every Triton
launch (``kernel[grid](...)``) is recorded instead of executed. For each recorded launch, Triton's
own binder (the code ``JITFunction.run`` uses to key its cache) gives the argument types, the
integer arguments that become constants (an int equal to 1), and the divisibility-by-16
attributes: meta tensors have ``data_ptr() == 0``, like the aligned buffers of a real launch, and
ints that are multiples of 16 are marked. The compile gate (:func:`gate_case`) and the static
roofline (:func:`plan_launches`) therefore compile what a launch on aligned shapes runs.

Families keep only what is theirs: which calls the gate compiles (their ``aot.py``) and, per
kernel, how many main-loop trips a program makes and how many weights one trip consumes
(:class:`LoopFacts`). Everything here imports triton lazily and works with the interpreter on
or off (under ``TRITON_INTERPRET=1`` the binder comes from a JITFunction twin of the kernel).
"""
from __future__ import annotations

import dataclasses
import inspect
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..formats import QuantizedWeight
from .base import AotCase, KernelCall, KernelConfig, KernelPath, LaunchPlan, dtype_tag

__all__ = ["RecordedLaunch", "Recording", "LoopFacts", "Specialisation", "record", "record_call", "specialise",
           "to_case", "gate_case", "case_drift", "plan_launches", "torch_op_plan"]

_LOCK = threading.Lock()  # the recorder patches a triton class attribute: one recording at a time
_BINDERS: dict = {}  # python function -> (binder, backend, parameter names)
_COMPILE_OPTIONS = ("num_warps", "num_stages")  # taken from the launch; other options go to AotCase.options


@dataclass(frozen=True)
class RecordedLaunch:
    """One ``kernel[grid](*args, **options)`` the wrapper made: arguments by name, options, 3-D grid."""

    kernel: object  # the JITFunction (InterpretedFunction under TRITON_INTERPRET=1)
    args: dict  # parameter name -> value (tensors are meta tensors), defaults applied
    launch_options: dict  # keyword arguments that are not parameters (num_warps, num_stages, ...)
    grid: tuple  # (x, y, z) programs

    @property
    def name(self) -> str:
        return getattr(self.kernel, "__name__", str(self.kernel))

    def tensors(self) -> list[torch.Tensor]:
        """Distinct tensor arguments (a dummy pointer that repeats another argument counts once)."""
        seen, out = set(), []
        for v in self.args.values():
            if isinstance(v, torch.Tensor) and id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def tensors_used(self, unused=()) -> list[torch.Tensor]:
        """Distinct tensor arguments, leaving out those passed only under the names in `unused`."""
        used = {id(v) for k, v in self.args.items() if isinstance(v, torch.Tensor) and k not in unused}
        return [t for t in self.tensors() if id(t) in used]

    def hbm_bytes(self, unused=()) -> int:
        """Bytes of every distinct tensor argument the launch touches (dummy pointers named in `unused`
        left out), each counted once: the minimum HBM traffic of the launch."""
        return sum(t.numel() * t.element_size() for t in self.tensors_used(unused))

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


@dataclass(frozen=True)
class Recording:
    """Everything one call launched, with the tensors the recorder made for it."""

    launches: tuple[RecordedLaunch, ...]
    x: torch.Tensor
    out: torch.Tensor
    qw: QuantizedWeight
    m: int
    path: KernelPath
    dtype: torch.dtype
    config: KernelConfig


def _bind(kernel, grid, args, kwargs) -> RecordedLaunch:
    sig = inspect.signature(kernel.fn)
    params = {k: v for k, v in kwargs.items() if k in sig.parameters}
    bound = sig.bind(*args, **params)
    bound.apply_defaults()
    values = dict(bound.arguments)
    if callable(grid):
        grid = grid(dict(values))
    grid = tuple(int(g) for g in (grid if isinstance(grid, (tuple, list)) else (grid,)))
    if not 1 <= len(grid) <= 3 or min(grid) < 0:
        raise ValueError(f"{getattr(kernel, '__name__', kernel)}: bad launch grid {grid}")
    grid = grid + (1,) * (3 - len(grid))
    return RecordedLaunch(kernel, values, {k: v for k, v in kwargs.items() if k not in sig.parameters}, grid)


def record(family, qw: QuantizedWeight, m: int, path, dtype: torch.dtype, config: KernelConfig, *,
           bias: bool = False) -> Recording:
    """Run ``family.run`` for an [m, K] x of `dtype` on `qw` (meta tensors) and record its launches.

    Torch ops in the wrapper (allocations, memsets, copies) run on the meta device; Triton launches
    are recorded, not executed, so nothing needs a GPU.
    """
    import triton.runtime as rt

    path = KernelPath.parse(path)
    dev = qw.device
    x = torch.empty((m, qw.K), dtype=dtype, device=dev)
    b = torch.empty((qw.N,), dtype=dtype, device=dev) if bias else None
    out = torch.empty((m, qw.N), dtype=dtype, device=dev)
    launches: list = []

    def getitem(kernel, grid):
        return lambda *args, **kwargs: launches.append(_bind(kernel, grid, args, kwargs))

    with _LOCK:
        saved = rt.KernelInterface.__getitem__
        rt.KernelInterface.__getitem__ = getitem
        try:
            family.run(x, qw, b, path, config, out)
        finally:
            rt.KernelInterface.__getitem__ = saved
    return Recording(tuple(launches), x, out, qw, m, path, dtype, config)


def record_call(call: KernelCall) -> Recording:
    """:func:`record` for a KernelCall (its family found by scheme)."""
    from . import family_for

    return record(family_for(call.scheme), call.weight(), call.m, call.path, call.dtype, call.config,
                  bias=call.bias)


# -- specialisation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Specialisation:
    """What a JIT launch compiles for one set of arguments."""

    signature: dict  # name -> "*fp16" / "i32" / ... / "constexpr"
    constexprs: dict  # name -> value (declared constexprs, and ints Triton turned into constants)
    divisible_by_16: tuple  # names carrying tt.divisibility = 16
    num_warps: int
    num_stages: int
    options: tuple  # other compile options the launch passed, as (name, value) pairs


def _binder(kernel):
    """Triton's own argument binder for `kernel`, built for a CUDA target (the code JIT launches run)."""
    fn = kernel.fn
    hit = _BINDERS.get(fn)
    if hit is not None:
        return hit
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    jf = kernel if isinstance(kernel, JITFunction) else JITFunction(fn, **getattr(kernel, "kwargs", {}))
    backend = make_backend(GPUTarget("cuda", 90, 32))
    hit = (create_function_from_signature(jf.signature, jf.params, backend), backend,
           [p.name for p in jf.params])
    _BINDERS[fn] = hit
    return hit


def specialise(launch: RecordedLaunch) -> Specialisation:
    """The specialisation Triton's JIT picks for `launch` (same binder, same backend rules)."""
    binder, backend, names = _binder(launch.kernel)
    _, spec, _ = binder(**launch.args, **launch.launch_options)
    signature, constexprs, divisible = {}, {}, []
    for name, (ty, attr) in zip(names, spec):
        signature[name] = ty
        if ty == "constexpr":
            constexprs[name] = attr
            continue
        parsed = backend.parse_attr(attr) if isinstance(attr, str) else []
        if parsed == [["tt.divisibility", 16]]:
            divisible.append(name)
        elif parsed:
            raise ValueError(f"{launch.name}: argument {name} gets attributes {parsed}, which AotCase cannot "
                             "express (only tt.divisibility 16)")
    opts = backend.parse_options(dict(launch.launch_options))
    extra = tuple(sorted((k, v) for k, v in launch.launch_options.items() if k not in _COMPILE_OPTIONS))
    return Specialisation(signature, constexprs, tuple(divisible), int(opts.num_warps), int(opts.num_stages), extra)


def to_case(launch: RecordedLaunch, family: str, label: str, config: KernelConfig, *,
            expects_tensor_cores: bool = False, integer_mma: bool = False,
            call: KernelCall | None = None) -> AotCase:
    """The AotCase of a recorded launch: its JIT specialisation, with `config`'s warps and stages
    replaced by the ones the launch used."""
    sp = specialise(launch)
    cfg = dataclasses.replace(config, num_warps=sp.num_warps, num_stages=sp.num_stages)
    return AotCase(family=family, kernel=launch.kernel, signature=sp.signature, constexprs=sp.constexprs,
                   config=cfg, label=label, expects_tensor_cores=expects_tensor_cores, integer_mma=integer_mma,
                   divisible_by_16=sp.divisible_by_16, call=call, options=sp.options)


def _launches_of(rec: Recording, kernel_name: str, call: KernelCall) -> list[RecordedLaunch]:
    hits = [ln for ln in rec.launches if ln.name == kernel_name]
    if not hits:
        raise ValueError(f"the call {call.label()} launches {[ln.name for ln in rec.launches]}, not {kernel_name}")
    return hits


def gate_case(call: KernelCall, kernel, label: str, *, expects_tensor_cores: bool = False,
              integer_mma: bool = False, index: int = 0) -> AotCase:
    """The compile-gate case of `kernel` as `call` launches it (its `index`-th launch of that kernel)."""
    rec = record_call(call)
    name = getattr(kernel, "__name__", str(kernel))
    launch = _launches_of(rec, name, call)[index]
    return to_case(launch, _family_name(call), label, call.config, expects_tensor_cores=expects_tensor_cores,
                   integer_mma=integer_mma, call=call)


def _family_name(call: KernelCall) -> str:
    from . import family_for

    return family_for(call.scheme).name


def case_drift(case: AotCase) -> str | None:
    """Why `case` is not what a JIT launch of its call compiles (None when it is)."""
    if case.call is None:
        return f"{case.family} case {case.label!r} names no call, so nothing shows it is a launch that runs"
    name = getattr(case.kernel, "__name__", str(case.kernel))
    try:
        launches = _launches_of(record_call(case.call), name, case.call)
    except ValueError as e:
        return f"{case.family} case {case.label!r}: {e}"
    mine = (case.signature, case.constexprs, tuple(sorted(case.divisible_by_16)), case.config.num_warps,
            case.config.num_stages, tuple(case.options))
    diffs = []
    for ln in launches:
        sp = specialise(ln)
        theirs = (sp.signature, sp.constexprs, tuple(sorted(sp.divisible_by_16)), sp.num_warps, sp.num_stages,
                  sp.options)
        if theirs == mine:
            return None
        fields = ("signature", "constexprs", "divisible_by_16", "num_warps", "num_stages", "options")
        diffs.append("; ".join(f"{f}: case {a!r} != launch {b!r}" for f, a, b in zip(fields, mine, theirs)
                               if a != b))
    return f"{case.family} case {case.label!r} differs from its call's launch of {name}: {' | '.join(diffs)}"


# -- launch plans for the static roofline ---------------------------------------------------------
@dataclass(frozen=True)
class LoopFacts:
    """What a family knows about one of its kernels' main loop, for one recorded launch."""

    label: str  # "gemv", "gemm", "reduce", "quantize x", ...
    trips: float  # main-loop trips per program, averaged over the grid (1 when the kernel has no loop)
    weights_per_iteration: int = 0  # weight elements one trip consumes per program
    inner_trips: object = None  # trips of loops nested in the main loop (see lowbit.kernels.sass.analyze)
    main: bool = False  # the call's main kernel (instructions per weight are reported for it)
    unused: tuple = ()  # pointer arguments the launch does not touch (dummies), left out of its bytes
    extra_bytes: int = 0  # bytes it moves beyond its used tensor arguments (e.g. part of an unused buffer)


def plan_launches(family, qw: QuantizedWeight, m: int, path, dtype: torch.dtype, config: KernelConfig,
                  facts: Callable[[RecordedLaunch, Recording], LoopFacts],
                  extra: Callable[[Recording], list] | None = None) -> list[LaunchPlan]:
    """Every launch of one call as LaunchPlans: recorded from the wrapper, with the family's `facts`
    per kernel launch, plus `extra(recording)` plans (torch ops the wrapper runs)."""
    path = KernelPath.parse(path)
    rec = record(family, qw, m, path, dtype, config)
    plans = []
    for ln in rec.launches:
        f = facts(ln, rec)
        unknown = set(f.unused) - set(ln.args)
        if unknown:
            raise ValueError(f"{ln.name}: LoopFacts.unused names {sorted(unknown)}, which are not its arguments")
        label = f"{f.label}: {qw.scheme.value} {path.value} {dtype_tag(dtype)} m{m} n{qw.N} k{qw.K} {config.label()}"
        case = to_case(ln, family.name, label, config)
        plans.append(LaunchPlan(label=f.label, case=case, grid=ln.grid, threads_per_cta=32 * case.config.num_warps,
                                loop_trips=float(f.trips), weights_per_iteration=int(f.weights_per_iteration),
                                hbm_bytes=ln.hbm_bytes(f.unused) + int(f.extra_bytes), inner_trips=f.inner_trips,
                                main=f.main))
    if extra is not None:
        plans.extend(extra(rec))
    if sum(p.main for p in plans) != 1:
        raise ValueError(f"the {family.name} plan of {qw.scheme.value} {KernelPath.parse(path).value} marks "
                         f"{sum(p.main for p in plans)} main launches; exactly one is needed")
    return plans


def torch_op_plan(label: str, hbm_bytes: int, launches: int = 1) -> LaunchPlan:
    """A launch the wrapper makes through torch (a memset, a cast copy, a sort): bytes and overhead only."""
    return LaunchPlan(label=label, case=None, grid=(1, 1, 1), threads_per_cta=0, loop_trips=0.0,
                      weights_per_iteration=0, hbm_bytes=int(hbm_bytes), launches=int(launches))
