"""Typed scheme specs and the QuantizedWeight container.

Every quantization scheme is named by a :class:`Scheme` member and configured by a frozen
spec dataclass. Each spec class registers the schemes it serves (:func:`spec_class`) and
carries that family's behaviour: the keyword options it accepts, how it is built from them,
which tensors a weight holds and the value checks they need. Nothing else dispatches on the
spec type, so adding a scheme means adding one spec class. :class:`QuantizedWeight` holds the
packed tensors of one [N, K] weight and validates them so a kernel never sees an inconsistent
layout.
"""
from __future__ import annotations

import enum
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import ClassVar, Mapping

import torch

# The floating dtypes lowbit accepts for activations and stores metadata in (one table for the package).
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DTYPE_TAGS = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32"}


class Scheme(str, enum.Enum):
    """The weight formats lowbit stores and multiplies."""

    INT1 = "int1"
    INT2 = "int2"
    INT3 = "int3"
    INT4 = "int4"
    INT8 = "int8"
    NF4 = "nf4"
    LUT3 = "lut3"
    LUT4 = "lut4"
    SQ3 = "sq3"
    SQ4 = "sq4"
    TERNARY = "ternary"
    TERNARY_A16 = "ternary_a16"
    BINARY = "binary"

    @classmethod
    def parse(cls, value: "Scheme | str") -> "Scheme":
        """Turn a user string into a Scheme, with an error that lists the valid names."""
        if isinstance(value, Scheme):
            return value
        if not isinstance(value, str):
            raise TypeError(f"scheme must be a str or lowbit.Scheme, got {type(value).__name__}")
        try:
            return cls(value.lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValueError(f"unknown scheme {value!r}; expected one of: {names}") from None


UNIFORM_SCHEMES = frozenset({Scheme.INT1, Scheme.INT2, Scheme.INT3, Scheme.INT4, Scheme.INT8})
LUT_SCHEMES = frozenset({Scheme.LUT3, Scheme.LUT4, Scheme.SQ3, Scheme.SQ4})
SPARSE_SCHEMES = frozenset({Scheme.SQ3, Scheme.SQ4})
TERNARY_SCHEMES = frozenset({Scheme.TERNARY, Scheme.TERNARY_A16})

_BITS = {
    Scheme.INT1: 1, Scheme.INT2: 2, Scheme.INT3: 3, Scheme.INT4: 4, Scheme.INT8: 8,
    Scheme.NF4: 4, Scheme.LUT3: 3, Scheme.LUT4: 4, Scheme.SQ3: 3, Scheme.SQ4: 4,
    Scheme.TERNARY: 2, Scheme.TERNARY_A16: 2, Scheme.BINARY: 1,
}

VALID_GROUP_SIZES = (32, 64, 128, -1)
# The optional low-rank error correction W ~= W_hat + A B (LQER) every scheme can carry, as two extra
# tensors: A [N, r] and B [r, K]. Quantizer options that build them (reference.lowrank reads them):
LOWRANK_TENSORS = ("lowrank_a", "lowrank_b")
LOWRANK_OPTIONS = frozenset({"lowrank", "act_scale"})
DEFAULT_OUTLIER_FRACTION = 0.0045
MAX_OUTLIER_FRACTION = 0.1


def code_bits(scheme: Scheme) -> int:
    """Bits of one stored code (ternary codes occupy 2 bits)."""
    return _BITS[Scheme.parse(scheme)]


def code_block(bits: int) -> tuple[int, int]:
    """(codes, int32 words) of one packing block along K: 32 // bits codes in one word for 1/2/4/8 bits;
    32 codes in 3 words for 3 bits (exactly 3.0 bits per code, see lowbit/reference/packing.py)."""
    if bits == 3:
        return 32, 3
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"no packing for {bits}-bit codes")
    return 32 // bits, 1


def values_per_word(bits: int) -> int:
    """Codes packed into one int32 word: 32 // bits for 1/2/4/8 bits. 3-bit codes have no per-word
    count (32 codes share 3 words); use :func:`code_block`."""
    if bits == 3:
        raise ValueError("3-bit codes pack 32 per 3 words (no whole number per word); use code_block(3)")
    return code_block(bits)[0]


def packed_words(k: int, bits: int) -> int:
    """Number of int32 words along K that hold `k` codes of `bits` bits (the last block zero-padded)."""
    codes, words = code_block(bits)
    return -(-k // codes) * words


@dataclass(frozen=True)
class TensorRule:
    """Shape (ints, or names of dimensions: "N", "K", "Kw", "G", "L", "N+1", "nnz", "r") and dtypes of one tensor."""

    shape: tuple
    dtypes: tuple[torch.dtype, ...]


_CODES = TensorRule(("Kw", "N"), (torch.int32,))
# The low-rank factors: fp16 as the quantizer stores them (fp32 when fp16 would lose them, e.g. tiny weights).
LOWRANK_RULES = {"lowrank_a": TensorRule(("N", "r"), (torch.float16, torch.float32)),
                 "lowrank_b": TensorRule(("r", "K"), (torch.float16, torch.float32))}


@dataclass(frozen=True)
class LaneLayout:
    """How the sign-code schemes (ternary, ternary_a16, binary) pack a weight: lanes across rows.

    At every input column k, `rows_per_lane` consecutive output rows share one `lane_bits`-bit lane
    (row ``n = lane_row * rows_per_lane + f`` in field f, bits ``[f * field_bits, (f + 1) * field_bits)``).
    A lane row holds its lanes for k = 0, 1, ... contiguously, little-endian, padded with zero-weight
    codes to a multiple of `K_ALIGN` lanes, so rows start 16-byte aligned. The tensor is int32
    ``qweight [lanes(N), words(K)]``. The field codes and why this arrangement suits the kernels are
    documented next to the pack functions (lowbit.reference.ternary / binary).
    """

    field_bits: int
    lane_bits: int

    K_ALIGN: ClassVar[int] = 16

    @property
    def rows_per_lane(self) -> int:
        return self.lane_bits // self.field_bits

    def lanes(self, n: int) -> int:
        """Lane rows that hold `n` output rows."""
        return -(-n // self.rows_per_lane)

    def padded_k(self, k: int) -> int:
        return -(-k // self.K_ALIGN) * self.K_ALIGN

    def words(self, k: int) -> int:
        """int32 words per lane row."""
        return self.padded_k(k) * self.lane_bits // 32


_LANES = TensorRule(("NL", "KQ"), (torch.int32,))
_SPEC_CLASSES: dict[Scheme, type] = {}


def spec_class(*schemes: Scheme):
    """Class decorator: register a spec class as the one that configures `schemes`."""
    def register(cls):
        for s in schemes:
            _SPEC_CLASSES[s] = cls
        cls.SCHEMES = frozenset(schemes)
        return cls
    return register


def spec_type(scheme: Scheme | str) -> type:
    """The spec class registered for `scheme`."""
    return _SPEC_CLASSES[Scheme.parse(scheme)]


class SpecBase:
    """Behaviour every spec class provides; subclasses are frozen dataclasses registered with spec_class."""

    SCHEMES: ClassVar[frozenset] = frozenset()
    OPTIONS: ClassVar[frozenset] = frozenset()  # keyword options stored in the spec
    QUANTIZER_OPTIONS: ClassVar[frozenset] = frozenset()  # options only the quantizer reads

    @classmethod
    def build(cls, scheme: Scheme, **options) -> "SpecBase":
        """The spec of `scheme` from keyword options already checked against OPTIONS."""
        raise NotImplementedError

    def options(self) -> dict:
        """The spec as plain keyword options (for repr, save files and cache keys)."""
        return {}

    def tensor_rules(self) -> dict[str, TensorRule]:
        """Which tensors a weight of this spec carries, with symbolic shapes and allowed dtypes."""
        raise NotImplementedError

    def check_scheme(self, scheme: Scheme) -> None:
        """ValueError when this spec's fields contradict `scheme` (e.g. bits)."""

    def dims(self, n: int, k: int) -> dict[str, int]:
        """Extra named dimensions the tensor rules use (e.g. the number of groups "G")."""
        return {}

    def check_values(self, qw: "QuantizedWeight") -> None:
        """Checks that read tensor values (host sync); run at construction, never in a forward."""


def _check_group_size(gs: object) -> None:
    if isinstance(gs, bool) or not isinstance(gs, int):
        raise TypeError(f"group_size must be an int, got {type(gs).__name__}")
    if gs not in VALID_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {VALID_GROUP_SIZES} (-1 = per channel), got {gs}")


def _check_bool(name: str, v: object) -> None:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")


class _Grouped:
    """Shared by specs with per-group metadata along K."""

    def effective_group(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size

    def dims(self, n: int, k: int) -> dict[str, int]:
        g = self.effective_group(k)
        if k % g:
            raise ValueError(f"K={k} is not divisible by group_size={g}")
        return {"G": k // g}


@spec_class(*sorted(UNIFORM_SCHEMES, key=lambda s: s.value))
@dataclass(frozen=True)
class UniformSpec(_Grouped, SpecBase):
    """Options of int1..int8: W = (q - z) * s per group of `group_size` inputs (-1: per channel)."""

    bits: int
    group_size: int = 128
    symmetric: bool = False

    OPTIONS: ClassVar[frozenset] = frozenset({"group_size", "symmetric"})

    @classmethod
    def build(cls, scheme, group_size=128, symmetric=False):
        _check_group_size(group_size)
        _check_bool("symmetric", symmetric)
        return cls(bits=code_bits(scheme), group_size=group_size, symmetric=symmetric)

    def options(self) -> dict:
        return {"group_size": self.group_size, "symmetric": self.symmetric}

    def tensor_rules(self):
        rules = {"qweight": _CODES, "scales": TensorRule(("G", "N"), FLOAT_DTYPES)}
        if not self.symmetric:
            rules["zeros"] = TensorRule(("G", "N"), FLOAT_DTYPES)
        return rules

    def check_scheme(self, scheme):
        if self.bits != code_bits(scheme):
            raise ValueError(f"{scheme.value} spec has bits={self.bits}, expected {code_bits(scheme)}")
        _check_group_size(self.group_size)
        _check_bool("symmetric", self.symmetric)

    @property
    def symmetric_zero(self) -> float:
        """The implicit zero point of the symmetric grid (0.5 for 1 bit: codes mean -s/2 and +s/2)."""
        return 0.5 if self.bits == 1 else float(2 ** (self.bits - 1))


@spec_class(Scheme.NF4)
@dataclass(frozen=True)
class NF4Spec(_Grouped, SpecBase):
    """Options of nf4: W = NF4[q] * absmax, one absmax per block of `group_size` inputs of a row."""

    group_size: int = 64

    OPTIONS: ClassVar[frozenset] = frozenset({"group_size"})

    @classmethod
    def build(cls, scheme, group_size=64):
        _check_group_size(group_size)
        return cls(group_size=group_size)

    def options(self) -> dict:
        return {"group_size": self.group_size}

    def tensor_rules(self):
        return {"qweight": _CODES, "absmax": TensorRule(("G", "N"), FLOAT_DTYPES)}

    def check_scheme(self, scheme):
        _check_group_size(self.group_size)


@spec_class(*sorted(LUT_SCHEMES, key=lambda s: s.value))
@dataclass(frozen=True)
class LUTSpec(SpecBase):
    """Options of lut3/lut4/sq3/sq4: W = LUT[n, q] (+ sparse outliers S when outlier_fraction > 0)."""

    bits: int
    outlier_fraction: float = 0.0

    OPTIONS: ClassVar[frozenset] = frozenset({"outlier_fraction"})
    QUANTIZER_OPTIONS: ClassVar[frozenset] = frozenset({"sensitivity", "iters"})

    @classmethod
    def build(cls, scheme, outlier_fraction=None):
        if scheme not in SPARSE_SCHEMES:  # accepted_options() keeps outlier_fraction away from lut3/lut4
            return cls(bits=code_bits(scheme), outlier_fraction=0.0)
        frac = DEFAULT_OUTLIER_FRACTION if outlier_fraction is None else outlier_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)):
            raise TypeError(f"outlier_fraction must be a float, got {type(frac).__name__}")
        frac = float(frac)
        if not (0.0 < frac <= MAX_OUTLIER_FRACTION):
            raise ValueError(f"outlier_fraction must be in (0, {MAX_OUTLIER_FRACTION}], got {frac}")
        return cls(bits=code_bits(scheme), outlier_fraction=frac)

    @property
    def sparse(self) -> bool:
        return self.outlier_fraction > 0

    def options(self) -> dict:
        return {"outlier_fraction": self.outlier_fraction} if self.sparse else {}

    def tensor_rules(self):
        rules = {"qweight": _CODES, "lut": TensorRule(("N", "L"), FLOAT_DTYPES)}
        if self.sparse:
            rules["row_ptr"] = TensorRule(("N+1",), (torch.int32,))
            rules["col_idx"] = TensorRule(("nnz",), (torch.int32,))
            rules["values"] = TensorRule(("nnz",), FLOAT_DTYPES)
        return rules

    def check_scheme(self, scheme):
        if self.bits != code_bits(scheme):
            raise ValueError(f"{scheme.value} spec has bits={self.bits}, expected {code_bits(scheme)}")
        if self.sparse != (scheme in SPARSE_SCHEMES):
            raise ValueError(f"{scheme.value} spec has outlier_fraction={self.outlier_fraction}")
        if self.sparse and not (0.0 < self.outlier_fraction <= MAX_OUTLIER_FRACTION):
            raise ValueError(f"outlier_fraction must be in (0, {MAX_OUTLIER_FRACTION}], got {self.outlier_fraction}")

    def check_values(self, qw):
        if not self.sparse:
            return
        rp, ci = qw.tensors["row_ptr"], qw.tensors["col_idx"]
        if rp.device.type == "meta":
            return
        nnz = ci.numel()
        rp_c = rp.detach().to("cpu", torch.int64)
        if rp_c[0].item() != 0 or rp_c[-1].item() != nnz:
            raise ValueError(f"CSR row_ptr must start at 0 and end at nnz={nnz}, got {rp_c[0].item()}..{rp_c[-1].item()}")
        if bool((rp_c[1:] < rp_c[:-1]).any()):
            raise ValueError("CSR row_ptr is not monotone non-decreasing")
        if nnz:
            ci_c = ci.detach().to("cpu", torch.int64)
            if bool((ci_c < 0).any()) or bool((ci_c >= qw.K).any()):
                raise ValueError(f"CSR col_idx out of range [0, {qw.K})")


class ActivationQuant(str, enum.Enum):
    """How ternary kernels treat activations: per-token int8 (BitNet W1.58A8) or as given (A16)."""

    INT8_PER_TOKEN = "int8_per_token"
    NONE = "none"


@spec_class(Scheme.TERNARY, Scheme.TERNARY_A16)
@dataclass(frozen=True)
class TernarySpec(SpecBase):
    """Options of ternary/ternary_a16: T in {-1, 0, 1}, gamma = mean|W| per tensor or per channel.

    W1.58A8 (``ternary``) packs 4 rows per 8-bit lane, W1.58A16 (``ternary_a16``) 8 rows per 16-bit
    lane (:class:`LaneLayout`; the kernels' int8 and fp16 tensor-core operands).
    """

    activation: ActivationQuant = ActivationQuant.INT8_PER_TOKEN
    per_channel: bool = False

    OPTIONS: ClassVar[frozenset] = frozenset({"per_channel"})

    @staticmethod
    def activation_of(scheme: Scheme) -> ActivationQuant:
        return ActivationQuant.INT8_PER_TOKEN if scheme is Scheme.TERNARY else ActivationQuant.NONE

    @classmethod
    def build(cls, scheme, per_channel=False):
        _check_bool("per_channel", per_channel)
        return cls(activation=cls.activation_of(scheme), per_channel=per_channel)

    @property
    def layout(self) -> LaneLayout:
        return LaneLayout(field_bits=2, lane_bits=8 if self.activation is ActivationQuant.INT8_PER_TOKEN else 16)

    def options(self) -> dict:
        return {"per_channel": self.per_channel}

    def tensor_rules(self):
        return {"qweight": _LANES,
                "gamma": TensorRule(("N",) if self.per_channel else (1,), (torch.float32,))}

    def dims(self, n: int, k: int) -> dict[str, int]:
        return {"NL": self.layout.lanes(n), "KQ": self.layout.words(k)}

    def check_scheme(self, scheme):
        _check_bool("per_channel", self.per_channel)
        if self.activation is not self.activation_of(scheme):
            raise ValueError(f"{scheme.value} spec has activation={self.activation.value}")

    def check_values(self, qw):
        """Reject codes that are no ternary value here, so the kernels' forward needs no check or sync.

        Every field but a lane's top one holds t + 1, so 3 is invalid; the top field holds t in two's
        complement, so 0b10 (-2) is invalid. One pass over the packed words, no unpacked copy.
        """
        q = qw.tensors["qweight"]
        if q.device.type == "meta":
            return
        lane = self.layout.lane_bits
        low = 0x15151515 if lane == 8 else 0x15551555  # low bit of every field below the top one
        top = 0x80808080 if lane == 8 else 0x80008000  # high bit of every top field
        w = q.to(torch.int64) & 0xFFFFFFFF
        if bool(((w & (w >> 1)) & low).any()):
            raise ValueError("ternary qweight holds code 3, which is not a ternary value "
                             "(fields below a lane's top one hold t + 1 in {0, 1, 2})")
        if bool(((w & ~(w << 1)) & top).any()):
            raise ValueError("ternary qweight holds a top field of 0b10 (-2), which is not a ternary value "
                             "(a lane's top field holds t in two's complement)")


@spec_class(Scheme.BINARY)
@dataclass(frozen=True)
class BinarySpec(SpecBase):
    """Options of binary (OneBit): W = S * outer(h, g), S a sign matrix packed 16 rows per 16-bit lane."""

    layout: ClassVar[LaneLayout] = LaneLayout(field_bits=1, lane_bits=16)

    @classmethod
    def build(cls, scheme):
        return cls()

    def tensor_rules(self):
        return {"qweight": _LANES, "g": TensorRule(("K",), FLOAT_DTYPES), "h": TensorRule(("N",), FLOAT_DTYPES)}

    def dims(self, n: int, k: int) -> dict[str, int]:
        return {"NL": self.layout.lanes(n), "KQ": self.layout.words(k)}


Spec = UniformSpec | NF4Spec | LUTSpec | TernarySpec | BinarySpec


def accepted_options(scheme: Scheme | str) -> frozenset[str]:
    """Every keyword option `scheme` accepts (spec options, quantizer-only ones and the low-rank ones)."""
    cls = spec_type(scheme)
    opts = cls.OPTIONS | cls.QUANTIZER_OPTIONS | LOWRANK_OPTIONS
    if cls is LUTSpec and Scheme.parse(scheme) not in SPARSE_SCHEMES:
        opts = opts - {"outlier_fraction"}
    return opts


def check_options(scheme: Scheme, options: Mapping[str, object]) -> None:
    """Reject keyword options the scheme does not understand, naming them."""
    allowed = accepted_options(scheme)
    unknown = sorted(set(options) - allowed)
    if unknown:
        ok = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown option(s) {unknown} for scheme {Scheme.parse(scheme).value!r}; accepted: {ok}")


def make_spec(scheme: Scheme | str, **options) -> Spec:
    """Build and validate the spec of `scheme` from keyword options (quantizer-only and low-rank options are
    ignored: the low-rank term is tensors of the weight, not part of its spec)."""
    scheme = Scheme.parse(scheme)
    check_options(scheme, options)
    cls = spec_type(scheme)
    return cls.build(scheme, **{k: v for k, v in options.items() if k in cls.OPTIONS})


@dataclass
class QuantizedWeight:
    """A quantized [N, K] weight: scheme, spec, shape and the packed tensors the kernels read.

    Construction validates every tensor's shape and dtype, that all share one device, and the
    values that must hold (CSR structure, ternary codes). `bits_per_weight` counts every stored
    byte, metadata and low-rank factors included, per weight element.

    Any scheme may carry a low-rank error correction (LQER): two optional tensors ``lowrank_a``
    [N, r] and ``lowrank_b`` [r, K] (both or neither, one dtype), so the weight is
    W = W_hat + A B with W_hat what the scheme's codes and metadata give. The rank is a property
    of the tensors (:attr:`lowrank`, 0 without them), not of the spec: spec options, autotune
    keys and save-file records are the same with or without it.
    """

    scheme: Scheme
    spec: Spec
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scheme = Scheme.parse(self.scheme)
        self.shape = tuple(int(d) for d in self.shape)
        self.validate()

    @classmethod
    def unchecked(cls, scheme: Scheme, spec: Spec, shape: tuple[int, int],
                  tensors: dict[str, torch.Tensor]) -> "QuantizedWeight":
        """A weight over tensors validated before (e.g. a module's buffers): no checks, no host sync.

        Used on hot paths; the kernels still re-check the layout (:meth:`check_layout`) per call.
        """
        qw = object.__new__(cls)
        qw.scheme, qw.spec, qw.shape, qw.tensors = scheme, spec, shape, tensors
        return qw

    @classmethod
    def empty(cls, scheme: Scheme | str, shape: tuple[int, int], device: torch.device | str = "meta",
              **options) -> "QuantizedWeight":
        """A weight of the right layout with uninitialised tensors (meta by default: no memory).

        For planning and shape-only work (static cost models, building modules before loading
        weights). sq3/sq4 get round(outlier_fraction * N * K) outliers, as the quantizer stores;
        ``lowrank=r`` adds fp16 factors of rank r.
        """
        scheme = Scheme.parse(scheme)
        spec = make_spec(scheme, **options)
        n, k = (int(d) for d in shape)
        rank = check_rank(options.get("lowrank", 0), n, k)
        dims = {"N": n, "K": k, "Kw": packed_words(k, code_bits(scheme)), "N+1": n + 1, "L": 2 ** code_bits(scheme),
                "nnz": round(getattr(spec, "outlier_fraction", 0.0) * n * k), "r": rank, **spec.dims(n, k)}
        rules = dict(spec.tensor_rules())
        if rank:
            rules.update(LOWRANK_RULES)
        tensors = {name: torch.empty([dims[d] if isinstance(d, str) else d for d in rule.shape],
                                     dtype=rule.dtypes[0], device=device)  # the first dtype: what quantizers store
                   for name, rule in rules.items()}
        qw = cls.unchecked(scheme, spec, (n, k), tensors)
        qw.check_layout()  # the values are uninitialised: nothing to check there
        return qw

    # -- accessors -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    @property
    def N(self) -> int:
        return self.shape[0]

    @property
    def K(self) -> int:
        return self.shape[1]

    @property
    def bits(self) -> int:
        return code_bits(self.scheme)

    @property
    def device(self) -> torch.device:
        return self.tensors["qweight"].device

    @property
    def group_size(self) -> int:
        """The effective group length along K for grouped metadata (K when per channel)."""
        if isinstance(self.spec, _Grouped):
            return self.spec.effective_group(self.K)
        raise AttributeError(f"scheme {self.scheme.value} has no groups")

    @property
    def lowrank(self) -> int:
        """Rank r of the low-rank correction A [N, r] . B [r, K] (0 when the weight has none)."""
        a = self.tensors.get("lowrank_a")
        return int(a.shape[1]) if isinstance(a, torch.Tensor) and a.dim() == 2 else 0

    def tensor_rules(self) -> dict[str, TensorRule]:
        """The spec's tensor rules, plus the low-rank factors' when the weight has either of them."""
        rules = dict(self.spec.tensor_rules())
        if any(name in self.tensors for name in LOWRANK_TENSORS):
            rules.update(LOWRANK_RULES)
        return rules

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.N * self.K)

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        """A copy with every tensor on `device` (the original is not modified)."""
        return replace(self, tensors={k: v.to(device) for k, v in self.tensors.items()})

    def options(self) -> dict:
        """The spec as plain keyword options (for repr, save files and cache keys)."""
        return self.spec.options()

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in {**self.options(), **({"lowrank": self.lowrank} if self.lowrank
                                                                        else {})}.items())
        return (f"QuantizedWeight({self.scheme.value}, N={self.N}, K={self.K}"
                f"{', ' + opts if opts else ''}, bits_per_weight={self.bits_per_weight:.3f}, device={self.device})")

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first inconsistency between spec, shape and tensors."""
        self.check_layout()
        self.spec.check_values(self)

    def check_layout(self) -> None:
        """Spec, shape, tensor names, shapes, dtypes and device, without reading values (cheap, no sync).

        The kernels call this on every forward, because ``tensors`` can be edited after construction
        and a wrong shape would make a kernel read out of bounds.
        """
        want = spec_type(self.scheme)
        if not isinstance(self.spec, want):
            raise TypeError(f"scheme {self.scheme.value} needs a {want.__name__}, got {type(self.spec).__name__}")
        self.spec.check_scheme(self.scheme)
        n, k = self.shape
        if n <= 0 or k <= 0:
            raise ValueError(f"weight shape must be positive, got {self.shape}")
        if not isinstance(self.tensors, dict):
            raise TypeError(f"tensors must be a dict of torch.Tensor, got {type(self.tensors).__name__}")
        rules = self.tensor_rules()
        missing = sorted(set(rules) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(rules))
        if missing or extra:
            raise ValueError(f"{self.scheme.value} weight: missing tensors {missing}, unexpected tensors {extra}")
        for name, t in self.tensors.items():
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
        dims = {"N": n, "K": k, "Kw": packed_words(k, self.bits), "N+1": n + 1, "L": 2 ** self.bits,
                **self.spec.dims(n, k)}
        if "col_idx" in self.tensors:
            dims["nnz"] = self.tensors["col_idx"].numel()
        if "lowrank_a" in rules:
            dims["r"] = self._check_lowrank_pair()
        devices = {t.device for t in self.tensors.values()}
        if len(devices) > 1:
            raise ValueError(f"{self.scheme.value} weight tensors are on several devices: {sorted(map(str, devices))}")
        for name, rule in rules.items():
            t = self.tensors[name]
            shape = tuple(dims[d] if isinstance(d, str) else d for d in rule.shape)
            if tuple(t.shape) != shape:
                raise ValueError(f"{self.scheme.value} tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
            if t.dtype not in rule.dtypes:
                raise TypeError(f"{self.scheme.value} tensor {name!r} has dtype {t.dtype}, expected one of {rule.dtypes}")

    def _check_lowrank_pair(self) -> int:
        """The rank of lowrank_a/lowrank_b, after the checks their shape rules cannot express (2-D, r >= 1,
        one dtype)."""
        a, b = self.tensors["lowrank_a"], self.tensors["lowrank_b"]  # both present: check_layout checked names
        for name, t in (("lowrank_a", a), ("lowrank_b", b)):
            if t.dim() != 2:
                raise ValueError(f"{self.scheme.value} tensor {name!r} must be 2-D, got shape {tuple(t.shape)}")
        r = int(a.shape[1])
        if r < 1:
            raise ValueError(f"{self.scheme.value} low-rank factors have rank 0; drop lowrank_a/lowrank_b instead")
        if a.dtype != b.dtype:
            raise TypeError(f"{self.scheme.value} low-rank factors differ in dtype: lowrank_a {a.dtype}, "
                            f"lowrank_b {b.dtype}")
        return r


def check_rank(rank: object, n: int, k: int) -> int:
    """The low-rank option as an int: TypeError unless an int, ValueError unless 0 <= rank < min(N, K)."""
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"lowrank must be an int (the rank r of the correction; 0 = none), got {type(rank).__name__}")
    rank = int(rank)
    if rank < 0:
        raise ValueError(f"lowrank must be >= 0 (0 = no correction), got {rank}")
    if rank >= min(n, k):
        raise ValueError(f"lowrank={rank} must be below min(N, K) = {min(n, k)} for a [{n}, {k}] weight "
                         "(a full-rank correction would store more than the float weight)")
    return rank


def dim_bucket(m: int) -> int:
    """The M bucket used by dispatch and the autotune cache: the next power of two, at least 1."""
    return 1 if m <= 1 else 2 ** math.ceil(math.log2(m))
