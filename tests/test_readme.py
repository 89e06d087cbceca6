"""The README's API snippet runs as printed and prints what its comments promise."""
import ast
import os
import re
import subprocess
import sys

from helpers import ROOT


def _api_block() -> str:
    """The first ```python block under the README's '## API' heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README '## API' has no python block"
    return match.group(1)


def test_the_api_snippet_runs_and_prints_what_it_says(tmp_path):
    """Run the block in a fresh interpreter process (cwd = tmp, so model.lowbit.safetensors lands there)."""
    code = _api_block()
    promised = re.search(r"^# (\{'0\.attn'.*\})$", code, re.M)
    assert promised, "the snippet no longer shows the expected scheme per layer"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 3, proc.stdout
    bits, rel = lines[0].split()
    assert float(bits) == 4.25
    assert 0.0 <= float(rel) < 1e-3, rel                      # fp16 output rounding, not a kernel error
    assert ast.literal_eval(lines[1]) == ast.literal_eval(promised.group(1))
    assert lines[2] == "True"
    assert (tmp_path / "model.lowbit.safetensors").stat().st_size > 0
