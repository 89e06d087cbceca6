"""Typed scheme specs and the QuantizedWeight container.

Every quantization scheme is named by a :class:`Scheme` member and configured by a frozen
spec dataclass; kernels and the reference read options from the spec, never from integer
mode codes. :class:`QuantizedWeight` holds the packed tensors of one [N, K] weight and
validates their shapes and dtypes so that a kernel never sees an inconsistent layout.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch


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
DEFAULT_OUTLIER_FRACTION = 0.0045
MAX_OUTLIER_FRACTION = 0.1


def code_bits(scheme: Scheme) -> int:
    """Bits of one stored code (ternary codes occupy 2 bits)."""
    return _BITS[scheme]


def values_per_word(bits: int) -> int:
    """Codes packed into one int32 word: 32 // bits, except 3-bit codes, 10 per word (30 bits used)."""
    if bits == 3:
        return 10
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"no packing for {bits}-bit codes")
    return 32 // bits


@dataclass(frozen=True)
class UniformSpec:
    """Options of int1..int8: W = (q - z) * s per group of `group_size` inputs (-1: per channel)."""

    bits: int
    group_size: int = 128
    symmetric: bool = False

    def effective_group(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size

    @property
    def symmetric_zero(self) -> float:
        """The implicit zero point of the symmetric grid (0.5 for 1 bit: codes mean -s/2 and +s/2)."""
        return 0.5 if self.bits == 1 else float(2 ** (self.bits - 1))


@dataclass(frozen=True)
class NF4Spec:
    """Options of nf4: W = NF4[q] * absmax, one absmax per block of `group_size` inputs of a row."""

    group_size: int = 64

    def effective_group(self, k: int) -> int:
        return k if self.group_size == -1 else self.group_size


@dataclass(frozen=True)
class LUTSpec:
    """Options of lut3/lut4/sq3/sq4: W = LUT[n, q] (+ sparse outliers S when outlier_fraction > 0)."""

    bits: int
    outlier_fraction: float = 0.0

    @property
    def sparse(self) -> bool:
        return self.outlier_fraction > 0


class ActivationQuant(str, enum.Enum):
    """How ternary kernels treat activations: per-token int8 (BitNet W1.58A8) or as given (A16)."""

    INT8_PER_TOKEN = "int8_per_token"
    NONE = "none"


@dataclass(frozen=True)
class TernarySpec:
    """Options of ternary/ternary_a16: T in {-1, 0, 1}, gamma = mean|W| per tensor or per channel."""

    activation: ActivationQuant = ActivationQuant.INT8_PER_TOKEN
    per_channel: bool = False


@dataclass(frozen=True)
class BinarySpec:
    """Options of binary (OneBit): W = S * outer(h, g), S a sign matrix."""


Spec = UniformSpec | NF4Spec | LUTSpec | TernarySpec | BinarySpec

# Option names each scheme accepts as keyword arguments.
_ALLOWED_OPTIONS: dict[str, frozenset[str]] = {
    "uniform": frozenset({"group_size", "symmetric"}),
    "nf4": frozenset({"group_size"}),
    "lut": frozenset({"sensitivity", "iters"}),
    "sq": frozenset({"sensitivity", "iters", "outlier_fraction"}),
    "ternary": frozenset({"per_channel"}),
    "binary": frozenset(),
}


def _option_family(scheme: Scheme) -> str:
    if scheme in UNIFORM_SCHEMES:
        return "uniform"
    if scheme is Scheme.NF4:
        return "nf4"
    if scheme in SPARSE_SCHEMES:
        return "sq"
    if scheme in LUT_SCHEMES:
        return "lut"
    if scheme in TERNARY_SCHEMES:
        return "ternary"
    return "binary"


def check_options(scheme: Scheme, options: Mapping[str, object]) -> None:
    """Reject keyword options the scheme does not understand, naming them."""
    allowed = _ALLOWED_OPTIONS[_option_family(scheme)]
    unknown = sorted(set(options) - allowed)
    if unknown:
        ok = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"unknown option(s) {unknown} for scheme {scheme.value!r}; accepted: {ok}")


def make_spec(scheme: Scheme | str, **options) -> Spec:
    """Build and validate the spec of `scheme` from keyword options (sensitivity/iters are quantizer-only)."""
    scheme = Scheme.parse(scheme)
    check_options(scheme, options)
    fam = _option_family(scheme)
    if fam == "uniform":
        gs = options.get("group_size", 128)
        sym = options.get("symmetric", False)
        _check_group_size(gs)
        if not isinstance(sym, bool):
            raise TypeError(f"symmetric must be a bool, got {type(sym).__name__}")
        return UniformSpec(bits=code_bits(scheme), group_size=gs, symmetric=sym)
    if fam == "nf4":
        gs = options.get("group_size", 64)
        _check_group_size(gs)
        return NF4Spec(group_size=gs)
    if fam in ("lut", "sq"):
        frac = options.get("outlier_fraction", DEFAULT_OUTLIER_FRACTION) if fam == "sq" else 0.0
        if isinstance(frac, bool) or not isinstance(frac, (int, float)):
            raise TypeError(f"outlier_fraction must be a float, got {type(frac).__name__}")
        frac = float(frac)
        if fam == "sq" and not (0.0 < frac <= MAX_OUTLIER_FRACTION):
            raise ValueError(f"outlier_fraction must be in (0, {MAX_OUTLIER_FRACTION}], got {frac}")
        return LUTSpec(bits=code_bits(scheme), outlier_fraction=frac)
    if fam == "ternary":
        pc = options.get("per_channel", False)
        if not isinstance(pc, bool):
            raise TypeError(f"per_channel must be a bool, got {type(pc).__name__}")
        act = ActivationQuant.INT8_PER_TOKEN if scheme is Scheme.TERNARY else ActivationQuant.NONE
        return TernarySpec(activation=act, per_channel=pc)
    return BinarySpec()


def _check_group_size(gs: object) -> None:
    if isinstance(gs, bool) or not isinstance(gs, int):
        raise TypeError(f"group_size must be an int, got {type(gs).__name__}")
    if gs not in VALID_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {VALID_GROUP_SIZES} (-1 = per channel), got {gs}")


def packed_words(k: int, bits: int) -> int:
    """Number of int32 words along K that hold `k` codes of `bits` bits."""
    return -(-k // values_per_word(bits))


@dataclass(frozen=True)
class _TensorRule:
    shape: tuple  # entries: int, or a str naming a dimension ("N", "K", "Kw", "G", "L", "N+1", "nnz")
    dtypes: tuple[torch.dtype, ...]


_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _tensor_rules(scheme: Scheme, spec: Spec) -> dict[str, _TensorRule]:
    """Which tensors a scheme carries, their shapes (symbolic) and allowed dtypes."""
    codes = _TensorRule(("Kw", "N"), (torch.int32,))
    if isinstance(spec, UniformSpec):
        rules = {"qweight": codes, "scales": _TensorRule(("G", "N"), _FLOATS)}
        if not spec.symmetric:
            rules["zeros"] = _TensorRule(("G", "N"), _FLOATS)
        return rules
    if isinstance(spec, NF4Spec):
        return {"qweight": codes, "absmax": _TensorRule(("G", "N"), _FLOATS)}
    if isinstance(spec, LUTSpec):
        rules = {"qweight": codes, "lut": _TensorRule(("N", "L"), _FLOATS)}
        if spec.sparse:
            rules["row_ptr"] = _TensorRule(("N+1",), (torch.int32,))
            rules["col_idx"] = _TensorRule(("nnz",), (torch.int32,))
            rules["values"] = _TensorRule(("nnz",), _FLOATS)
        return rules
    if isinstance(spec, TernarySpec):
        return {"qweight": codes, "gamma": _TensorRule(("N",) if spec.per_channel else (1,), (torch.float32,))}
    return {"qweight": codes, "g": _TensorRule(("K",), _FLOATS), "h": _TensorRule(("N",), _FLOATS)}


@dataclass
class QuantizedWeight:
    """A quantized [N, K] weight: scheme, spec, shape and the packed tensors the kernels read.

    Construction validates every tensor's shape and dtype and that all share one device.
    `bits_per_weight` counts every stored byte, metadata included, per weight element.
    """

    scheme: Scheme
    spec: Spec
    shape: tuple[int, int]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scheme = Scheme.parse(self.scheme)
        self.shape = tuple(int(d) for d in self.shape)
        self.validate()

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
        if isinstance(self.spec, (UniformSpec, NF4Spec)):
            return self.spec.effective_group(self.K)
        raise AttributeError(f"scheme {self.scheme.value} has no groups")

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
        s = self.spec
        if isinstance(s, UniformSpec):
            return {"group_size": s.group_size, "symmetric": s.symmetric}
        if isinstance(s, NF4Spec):
            return {"group_size": s.group_size}
        if isinstance(s, LUTSpec):
            return {"outlier_fraction": s.outlier_fraction} if s.sparse else {}
        if isinstance(s, TernarySpec):
            return {"per_channel": s.per_channel}
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return (f"QuantizedWeight({self.scheme.value}, N={self.N}, K={self.K}"
                f"{', ' + opts if opts else ''}, bits_per_weight={self.bits_per_weight:.3f}, device={self.device})")

    # -- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError/TypeError naming the first inconsistency between spec, shape and tensors."""
        expected_spec = type(make_spec(self.scheme, **_spec_kwargs(self.spec, self.scheme)))
        if not isinstance(self.spec, expected_spec):
            raise TypeError(f"scheme {self.scheme.value} needs a {expected_spec.__name__}, got {type(self.spec).__name__}")
        if isinstance(self.spec, (UniformSpec, LUTSpec)) and self.spec.bits != code_bits(self.scheme):
            raise ValueError(f"{self.scheme.value} spec has bits={self.spec.bits}, expected {code_bits(self.scheme)}")
        if isinstance(self.spec, LUTSpec) and self.spec.sparse != (self.scheme in SPARSE_SCHEMES):
            raise ValueError(f"{self.scheme.value} spec has outlier_fraction={self.spec.outlier_fraction}")
        if isinstance(self.spec, TernarySpec):
            want = ActivationQuant.INT8_PER_TOKEN if self.scheme is Scheme.TERNARY else ActivationQuant.NONE
            if self.spec.activation is not want:
                raise ValueError(f"{self.scheme.value} spec has activation={self.spec.activation.value}")
        n, k = self.shape
        if n <= 0 or k <= 0:
            raise ValueError(f"weight shape must be positive, got {self.shape}")
        rules = _tensor_rules(self.scheme, self.spec)
        missing = sorted(set(rules) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(rules))
        if missing or extra:
            raise ValueError(f"{self.scheme.value} weight: missing tensors {missing}, unexpected tensors {extra}")
        dims = {"N": n, "K": k, "Kw": packed_words(k, self.bits), "N+1": n + 1,
                "L": 2 ** self.bits}
        if isinstance(self.spec, (UniformSpec, NF4Spec)):
            g = self.spec.effective_group(k)
            if k % g:
                raise ValueError(f"K={k} is not divisible by group_size={g}")
            dims["G"] = k // g
        if "col_idx" in self.tensors:
            dims["nnz"] = self.tensors["col_idx"].numel()
        devices = {t.device for t in self.tensors.values()}
        if len(devices) > 1:
            raise ValueError(f"{self.scheme.value} weight tensors are on several devices: {sorted(map(str, devices))}")
        for name, rule in rules.items():
            t = self.tensors[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
            want = tuple(dims[d] if isinstance(d, str) else d for d in rule.shape)
            if tuple(t.shape) != want:
                raise ValueError(f"{self.scheme.value} tensor {name!r} has shape {tuple(t.shape)}, expected {want}")
            if t.dtype not in rule.dtypes:
                raise TypeError(f"{self.scheme.value} tensor {name!r} has dtype {t.dtype}, expected one of {rule.dtypes}")
        if isinstance(self.spec, LUTSpec) and self.spec.sparse:
            self._validate_csr()
        if isinstance(self.spec, TernarySpec):
            self._validate_ternary_codes()

    def _validate_ternary_codes(self) -> None:
        """Reject code 3 (not t + 1 for a ternary t) here, so the kernels' forward needs no check or sync.

        A 2-bit field holds 3 exactly when both its bits are set: one pass over the packed int32
        words, no unpacked copy (bit 30 of ``q >> 1`` is the sign bit 31 of ``q``).
        """
        q = self.tensors["qweight"]
        if q.device.type != "meta" and bool(((q & (q >> 1)) & 0x55555555).any()):
            raise ValueError("ternary qweight holds code 3, which is not a ternary value "
                             "(codes must be t + 1 in {0, 1, 2})")

    def _validate_csr(self) -> None:
        rp, ci = self.tensors["row_ptr"], self.tensors["col_idx"]
        if rp.device.type == "meta":
            return  # shapes and dtypes are checked; values do not exist yet (a model built before loading)
        nnz = ci.numel()
        rp_c = rp.detach().to("cpu", torch.int64)
        if rp_c[0].item() != 0 or rp_c[-1].item() != nnz:
            raise ValueError(f"CSR row_ptr must start at 0 and end at nnz={nnz}, got {rp_c[0].item()}..{rp_c[-1].item()}")
        if bool((rp_c[1:] < rp_c[:-1]).any()):
            raise ValueError("CSR row_ptr is not monotone non-decreasing")
        if nnz:
            ci_c = ci.detach().to("cpu", torch.int64)
            if bool((ci_c < 0).any()) or bool((ci_c >= self.K).any()):
                raise ValueError(f"CSR col_idx out of range [0, {self.K})")


def _spec_kwargs(spec: Spec, scheme: Scheme) -> dict:
    """Keyword options that rebuild a spec of the right type for `scheme` (used to check the spec type)."""
    if scheme in UNIFORM_SCHEMES and isinstance(spec, UniformSpec):
        return {"group_size": spec.group_size, "symmetric": spec.symmetric}
    if scheme is Scheme.NF4 and isinstance(spec, NF4Spec):
        return {"group_size": spec.group_size}
    if scheme in SPARSE_SCHEMES and isinstance(spec, LUTSpec) and spec.sparse:
        return {"outlier_fraction": spec.outlier_fraction}
    if scheme in TERNARY_SCHEMES and isinstance(spec, TernarySpec):
        return {"per_channel": spec.per_channel}
    return {}


def dim_bucket(m: int) -> int:
    """The M bucket used by dispatch and the autotune cache: the next power of two, at least 1."""
    return 1 if m <= 1 else 2 ** math.ceil(math.log2(m))
