"""perf/quality_lowrank.py on one real layer (all-MiniLM-L6-v2 layer 0, 1536 x 384), small r: cheap checks.

The full table (every layer, r up to 64, three variants, sentence embeddings) is in perf/NOTES.md,
not a CI test. Here: on a real weight the rank-r term removes exactly the error energy that its
singular values hold (the SVD and the fp16 factors are right), that share is above what an i.i.d.
error of the same shape would give but far from 1 (quantization error is nearly unstructured:
the reason int3 + r does not catch up with int4 on this model), and activation-aware factors
lower the activation-weighted error more than plain ones.
"""
import sys
from pathlib import Path

import torch

import lowbit

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
import quality_lowrank  # noqa: E402
import quality_minilm  # noqa: E402

NAME = "encoder.layer.0.intermediate.dense.weight"


def _layer():
    w = quality_minilm.linear_weights({0})[NAME]
    return w, lowbit.quantize_weight(w, "int3", group_size=128)


def test_the_term_removes_the_energy_its_singular_values_hold():
    w, qw = _layer()
    layers = {NAME: (qw, w, None)}
    e = w.double() - lowbit.dequantize(qw, torch.float64)
    for r in (4, 8):
        share = quality_lowrank.captured_energy(layers, r, None)
        q = lowbit.reference.with_lowrank(qw, w, r)
        left = float(((w.double() - lowbit.dequantize(q, torch.float64)).norm() / e.norm()) ** 2)
        assert abs(left - (1 - share)) < 1e-3, (r, left, share)
        assert r / min(w.shape) < share < 0.25, (r, share)


def test_activation_aware_lowers_the_weighted_error():
    w, qw = _layer()
    g = torch.Generator().manual_seed(0)
    s = torch.rand(w.shape[1], generator=g) ** 4 * 10 + 0.01  # heavy-tailed channel magnitudes
    e = w.double() - lowbit.dequantize(qw, torch.float64)

    def weighted(q):
        return float(((w.double() - lowbit.dequantize(q, torch.float64)) * s.double()).norm())

    plain = weighted(lowbit.reference.with_lowrank(qw, w, 8))
    aware = weighted(lowbit.reference.with_lowrank(qw, w, 8, act_scale=s))
    assert aware < 0.95 * plain < 0.95 * float((e * s.double()).norm())


def test_markdown_has_one_row_per_scheme_and_rank():
    rows = [dict(scheme="int3", options={"group_size": 128}, rank=0, variant="plain", bits=3.5, cos_mean=0.8,
                 cos_min=0.7)]
    rows += [dict(scheme="int3", options={"group_size": 128}, rank=8, variant=v, bits=4.0, cos_mean=0.9,
                  cos_min=0.85) for v in quality_lowrank.VARIANTS]
    text = quality_lowrank.markdown(rows)
    assert "| int3 g128 | 0 | 3.500 | 0.8000 / 0.7000 | (as plain) | (as plain) |" in text
    assert "| int3 g128 | 8 | 4.000 | 0.9000 / 0.8500 | 0.9000 / 0.8500 | 0.9000 / 0.8500 |" in text
