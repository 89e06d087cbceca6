"""The notebooks execute on the CPU: quickstart (MiniLM swap + one Triton layer) and perf (plots from CSVs)."""
import os

import torch

import nbclient  # test extras: a missing one fails the run instead of skipping it
import nbformat

from helpers import ROOT

NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT_S = 600


def _execute(name: str, monkeypatch, **env) -> list:
    """Run a notebook in a fresh kernel (cwd = notebooks/); returns its cells, raising on any cell error."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    return nb.cells


def _text(cells) -> str:
    parts = []
    for cell in cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def _images(cells) -> int:
    return sum("image/png" in out.get("data", {}) for cell in cells for out in cell.get("outputs", []))


def test_quickstart_runs(monkeypatch):
    cells = _execute("quickstart.ipynb", monkeypatch)
    text = _text(cells)
    assert "37 nn.Linear layers" in text  # MiniLM: 6 x (q, k, v, o, up, down) + pooler
    assert "mean cosine vs fp32" in text and "int4" in text and "nf4" in text
    # The last cell runs one layer on the Triton kernels (interpreter here) against the fp64 oracle.
    assert "Triton vs fp64 reference: relative error" in text, text[-2000:]


def test_perf_notebook_plots_a_sweep_csv(monkeypatch, tmp_path):
    from lowbit.perf import SweepConfig, run_sweep, write_results

    cfg = SweepConfig(shapes=((64, 128),), ms=(1, 4), schemes=(), device=torch.device("cpu"), peers=(),
                      log=lambda msg: None)
    df, info = run_sweep(cfg)
    write_results(df, info, tmp_path)
    cells = _execute("perf.ipynb", monkeypatch, LOWBIT_PERF_RESULTS=str(tmp_path))
    text = _text(cells)
    assert "1 results file(s)" in text and "cpu-interpreter" in text
    assert _images(cells) == 3  # speedup, bandwidth, roofline


def test_perf_notebook_without_results(monkeypatch, tmp_path):
    cells = _execute("perf.ipynb", monkeypatch, LOWBIT_PERF_RESULTS=str(tmp_path / "nothing-here"))
    text = _text(cells)
    assert "No results yet" in text
    assert _images(cells) == 0
