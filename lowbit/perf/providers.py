"""What the sweep times: lowbit schemes, F.linear fp16/bf16 (cuBLAS), and peer libraries when importable.

``int_mm`` is the int8 baseline for W1.58A8: torch._int_mm on the ternary weight stored as int8.

A provider turns one float [N, K] weight into a :class:`Prepared`: a factory that makes copies of
the device-side weight (for buffer rotation), a ``run(weight, x)`` callable, the bytes the weight
occupies and, where one exists, an fp64 oracle for the output. Peers (gemlite, torchao,
bitsandbytes) are optional: when absent the sweep writes a note row instead of timings.
"""
from __future__ import annotations

import abc
import importlib
import importlib.util
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..formats import QuantizedWeight, Scheme


@dataclass
class Prepared:
    """One provider's weight for one shape; `weights` grows on demand (one copy per rotation slot)."""

    factory: Callable[[], object]
    run: Callable[[object, torch.Tensor], torch.Tensor]
    weight_bytes: int
    act_dtype: torch.dtype
    bits_per_weight: float
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None  # x -> fp64 y of the same format
    note: str = ""
    weights: list = field(default_factory=list)

    def copies(self, n: int) -> list:
        """The first `n` weight copies, making new ones as needed."""
        while len(self.weights) < n:
            self.weights.append(self.factory())
        return self.weights[:n]


class Provider(abc.ABC):
    """A named way to compute y = x . W^T for a given weight."""

    name: str = ""
    scheme: str = ""

    def unavailable(self, device: torch.device) -> str | None:
        """Why this provider cannot run here (a note for the CSV), or None when it can."""
        return None

    @abc.abstractmethod
    def prepare(self, w: torch.Tensor, act_dtype: torch.dtype) -> Prepared:
        """Quantize/convert the float [N, K] weight `w` (already on the target device) once."""


class TorchLinear(Provider):
    """F.linear with an fp16 or bf16 weight: cuBLAS on a GPU, the baseline of every ratio."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self.scheme = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        self.name = f"torch-{self.scheme}"

    def prepare(self, w, act_dtype):
        base = w.to(self.dtype)
        return Prepared(factory=lambda: base.clone(), run=lambda wt, x: F.linear(x, wt),
                        weight_bytes=base.numel() * base.element_size(), act_dtype=self.dtype,
                        bits_per_weight=8.0 * base.element_size())


def default_options(scheme: Scheme, group_size: int) -> dict:
    """Quantizer options the sweep uses: `group_size` for int*, each scheme's defaults otherwise."""
    from ..formats import UNIFORM_SCHEMES

    return {"group_size": group_size} if scheme in UNIFORM_SCHEMES else {}


class LowbitProvider(Provider):
    """lowbit.linear on one scheme; `path` None lets the M bucket choose GEMV or GEMM."""

    def __init__(self, scheme: Scheme | str, options: dict | None = None, path: str | None = None):
        self.scheme_enum = Scheme.parse(scheme)
        self.scheme = self.scheme_enum.value
        self.options = dict(options or {})
        self.path = path
        self.name = "lowbit" if path is None else f"lowbit-{path}"

    def unavailable(self, device):
        from ..kernels import family_for

        try:
            family_for(self.scheme_enum)
        except ValueError as e:
            return str(e)
        return None

    def prepare(self, w, act_dtype):
        import lowbit

        qw = lowbit.quantize_weight(w, self.scheme_enum, **self.options)
        path = self.path

        def clone() -> QuantizedWeight:
            return replace(qw, tensors={k: v.clone() for k, v in qw.tensors.items()})

        return Prepared(factory=clone, run=lambda q, x: lowbit.linear(x, q, None, path=path),
                        weight_bytes=qw.nbytes, act_dtype=act_dtype, bits_per_weight=qw.bits_per_weight,
                        reference=lambda x: lowbit.reference.linear(x, qw, out_dtype=torch.float64))


# -- peers ---------------------------------------------------------------------------------------
def _nominal_bytes(n: int, k: int, bits: int, meta_bytes_per_group: int, group: int) -> int:
    """Bytes of a grouped format: packed codes plus per-group metadata (what the peer must read)."""
    return n * k * bits // 8 + n * (k // group) * meta_bytes_per_group


class PeerProvider(Provider):
    """A peer library, present only when its module imports and a CUDA device is in use."""

    module = ""

    def unavailable(self, device):
        if importlib.util.find_spec(self.module) is None:
            return "not installed"
        if device.type != "cuda":
            return "needs a CUDA GPU"
        return None

    def version(self) -> str:
        try:
            return str(getattr(importlib.import_module(self.module), "__version__", "unknown"))
        except Exception as e:  # a broken install reports itself in the note column instead
            return f"import failed: {type(e).__name__}"


class GemlitePeer(PeerProvider):
    """gemlite GemLiteLinearTriton, 4-bit asymmetric g128, fed lowbit's own int4 codes (same math)."""

    name, scheme, module = "gemlite", "int4", "gemlite"
    group = 128

    def prepare(self, w, act_dtype):
        import lowbit
        from gemlite.core import DType, GemLiteLinearTriton

        from ..reference import unpack_codes

        n, k = w.shape
        qw = lowbit.quantize_weight(w, "int4", group_size=self.group)
        codes = unpack_codes(qw["qweight"], 4, k).to(torch.uint8).contiguous()
        scales = qw["scales"].t().contiguous().half()
        zeros = qw["zeros"].t().contiguous().half()

        def make():
            layer = GemLiteLinearTriton(4, group_size=self.group, in_features=k, out_features=n,
                                        input_dtype=DType.FP16, output_dtype=DType.FP16)
            layer.pack(codes, scales, zeros, bias=None)
            return layer

        return Prepared(factory=make, run=lambda layer, x: layer(x), weight_bytes=qw.nbytes,
                        act_dtype=torch.float16, bits_per_weight=qw.bits_per_weight,
                        reference=lambda x: lowbit.reference.linear(x, qw, out_dtype=torch.float64),
                        note=f"gemlite {self.version()}")


class TorchaoPeer(PeerProvider):
    """torchao int4 weight-only g128 (tinygemm tile layout when offered), bf16 activations."""

    name, scheme, module = "torchao", "int4", "torchao"
    group = 128

    def _configs(self):
        import torchao.quantization as tq

        if hasattr(tq, "Int4WeightOnlyConfig"):
            try:
                yield "tile_packed_to_4d", tq.Int4WeightOnlyConfig(group_size=self.group,
                                                                   int4_packing_format="tile_packed_to_4d")
            except TypeError:  # older releases: no packing-format argument
                pass
            yield "default", tq.Int4WeightOnlyConfig(group_size=self.group)
        if hasattr(tq, "int4_weight_only"):
            yield "int4_weight_only", tq.int4_weight_only(group_size=self.group)

    def prepare(self, w, act_dtype):
        from torchao.quantization import quantize_

        n, k = w.shape
        errors = []
        for label, cfg in self._configs():
            def make(cfg=cfg):
                lin = torch.nn.Sequential(torch.nn.Linear(k, n, bias=False, device=w.device, dtype=torch.bfloat16))
                with torch.no_grad():
                    lin[0].weight.copy_(w)
                quantize_(lin, cfg)
                return lin
            try:
                layer = make()
                layer(torch.zeros(1, k, device=w.device, dtype=torch.bfloat16))
            except Exception as e:  # try the next config; all failing is reported as a note row
                errors.append(f"{label}: {type(e).__name__}: {e}")
                continue
            p = Prepared(factory=make, run=lambda lyr, x: lyr(x),
                         weight_bytes=_nominal_bytes(n, k, 4, 4, self.group), act_dtype=torch.bfloat16,
                         bits_per_weight=4 + 32 / self.group,
                         note=f"torchao {self.version()} {label}; bf16 activations; nominal bytes")
            p.weights.append(layer)
            return p
        raise RuntimeError("no torchao int4 config worked: " + " | ".join(errors))


class BitsandbytesPeer(PeerProvider):
    """bitsandbytes Linear4bit NF4 (blocksize 64, fp32 absmax), fp16 compute."""

    name, scheme, module = "bitsandbytes", "nf4", "bitsandbytes"

    def prepare(self, w, act_dtype):
        import bitsandbytes as bnb

        n, k = w.shape
        w16 = w.to(torch.float16)

        def make():
            layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.float16, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(w16.clone(), requires_grad=False, quant_type="nf4")
            return layer.to(w.device)

        return Prepared(factory=make, run=lambda layer, x: layer(x),
                        weight_bytes=_nominal_bytes(n, k, 4, 4, 64), act_dtype=torch.float16,
                        bits_per_weight=4 + 32 / 64, note=f"bitsandbytes {self.version()}; nominal bytes")


class TorchIntMMPeer(PeerProvider):
    """The int8 baseline for W1.58A8: per-token int8 activations (the same quantizer as ``ternary``) times the
    ternary weight stored as int8, through ``torch._int_mm`` (cuBLASLt int8 -> int32), rescaled like the oracle.

    Timed as eager PyTorch: the quantization and rescale are separate launches around the GEMM. On
    CUDA, ``torch._int_mm`` takes M > 16 only; smaller M raises here and the sweep records an error
    row for it.
    """

    name, scheme, module = "int_mm", "ternary", "torch"

    def unavailable(self, device):
        if not hasattr(torch, "_int_mm"):
            return f"torch {torch.__version__} has no torch._int_mm"
        return super().unavailable(device)

    def version(self) -> str:
        return torch.__version__

    def prepare(self, w, act_dtype):
        import lowbit

        qw = lowbit.quantize_weight(w, "ternary")
        t8 = lowbit.reference.ternary.ternary_values(qw).to(torch.int8).contiguous()  # [N, K]
        gamma = qw["gamma"].to(w.device, torch.float32)
        n, k = t8.shape

        def run(wt, x):
            if x.device.type == "cuda" and x.shape[0] <= 16:
                raise ValueError(f"torch._int_mm on CUDA needs M > 16, got M={x.shape[0]}")
            xf = x.float()
            scale = 127.0 / xf.abs().amax(dim=-1).clamp(min=1e-5)
            xq = torch.round(xf * scale.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
            acc = torch._int_mm(xq, wt.t())  # [M, N] int32; the weight column-major, as cuBLASLt wants
            return (acc.float() * gamma / scale.unsqueeze(-1)).to(x.dtype)

        return Prepared(factory=lambda: t8.clone(), run=run, weight_bytes=n * k + 4, act_dtype=act_dtype,
                        bits_per_weight=8.0 + 32 / (n * k),
                        reference=lambda x: lowbit.reference.linear(x, qw, out_dtype=torch.float64),
                        note=f"torch {torch.__version__} _int_mm; int8 weight; eager quantize + rescale")


PEERS: dict[str, type[PeerProvider]] = {"gemlite": GemlitePeer, "torchao": TorchaoPeer,
                                         "bitsandbytes": BitsandbytesPeer, "int_mm": TorchIntMMPeer}


def peer_providers(names) -> list[PeerProvider]:
    """Instances of the named peers, in the order given."""
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise ValueError(f"unknown peer(s) {unknown}; expected some of {sorted(PEERS)}")
    return [PEERS[n]() for n in names]
