"""The sweep pipeline end to end on the CPU (Triton interpreter): CSV columns, values, note rows, plots, CLI.

Timings taken here are never asserted on (they are CPU-interpreter numbers); only their sanity is.
"""
import contextlib
import importlib.util
import io
import json
import math
import re

import pandas as pd
import pytest
import torch
from helpers import ROOT

from lowbit.__main__ import main
from lowbit.perf import COLUMNS, EXTRA_COLUMNS, add_speedup, rotation_count
from lowbit.perf.roofline import achieved, bytes_moved, flops
from lowbit.perf.providers import PEERS
from lowbit.perf.runner import PEER_NAMES

SHAPE = (200, 384)  # N not a power of two; K divisible by group_size 128
MS = (1, 16)
SCHEMES = ("int4", "ternary", "binary")  # one scheme from each of three kernel families
# Worst relative error (2-norm) of a lowbit row against the fp64 oracle of the same format: fp16
# output rounding gives ~2^-11 = 5e-4; the A8 ternary path adds rare int8 rounding ties of the
# activations (a few codes off by one, ~1e-3). A wrong kernel is off by O(1).
REL_ERR_BOUND = 1e-2


def _family_exists(scheme):
    from lowbit.kernels import family_for

    try:
        family_for(scheme)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # peers are off by default without a GPU: ask for them
        rc = main(["sweep", "--shapes", f"{SHAPE[0]}x{SHAPE[1]}", "--m", ",".join(map(str, MS)),
                   "--schemes", ",".join(SCHEMES), "--out", str(out), "--cpu-reps", "2",
                   "--peers", ",".join(PEER_NAMES)])
    assert rc == 0
    csvs = list(out.glob("**/*.csv"))
    assert len(csvs) == 1, csvs
    return {"out": out, "csv": csvs[0], "df": pd.read_csv(csvs[0], keep_default_na=True),
            "stdout": printed.getvalue()}


def test_cpu_table_is_labelled_and_holds_lowbit_rows_only(sweep):
    """Interpreter timings are pipeline checks: the printed table says so and leaves baselines and peers out."""
    out = sweep["stdout"]
    assert "CPU-INTERPRETER ARTEFACTS, NOT SPEED" in out
    lines = out.split("NOT SPEED", 1)[1].splitlines()[1:]
    table = "\n".join(lines[:next(i for i, ln in enumerate(lines) if "row(s) without timings" in ln or
                                  ln.startswith(("(CPU", "wrote")))])
    assert "lowbit" in table and "torch-" not in table and not any(p in table for p in PEER_NAMES), table


def test_csv_location_and_columns(sweep):
    csv = sweep["csv"]
    assert csv.parent == sweep["out"] / "cpu-interpreter"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}-[0-9a-z-]+", csv.stem), csv.stem
    df = sweep["df"]
    assert list(df.columns) == COLUMNS + EXTRA_COLUMNS
    assert COLUMNS == ["gpu", "torch", "triton", "commit", "scheme", "N", "K", "M", "provider", "median_us",
                       "p20_us", "p80_us", "gbps", "tflops", "speedup_vs_fp16"]  # the results-file columns of perf/README.md, in order
    assert set(df["gpu"]) == {"cpu-interpreter"}
    assert set(df["torch"]) == {torch.__version__}
    import triton

    assert set(df["triton"]) == {triton.__version__}
    assert df["commit"].nunique() == 1


def test_baseline_rows_are_sane(sweep):
    df = sweep["df"]
    n, k = SHAPE
    for prov, scheme in (("torch-fp16", "fp16"), ("torch-bf16", "bf16")):
        rows = df[df["provider"] == prov].sort_values("M")
        assert list(rows["M"]) == list(MS), prov
        assert set(rows["scheme"]) == {scheme}
        assert (rows["N"] == n).all() and (rows["K"] == k).all()
        for r in rows.itertuples():
            assert r.bytes_moved == bytes_moved(n * k * 2, r.M, n, k, 2, 2)
    fp16 = df[df["provider"] == "torch-fp16"]
    assert (fp16["speedup_vs_fp16"] == 1.0).all()


def test_every_timed_row_has_positive_times_and_finite_ratios(sweep):
    df = sweep["df"]
    t = df[df["median_us"].notna()]
    assert len(t) >= 2 * len(MS)  # at least the two F.linear baselines at every M
    for r in t.itertuples():
        assert 0 < r.p20_us <= r.median_us <= r.p80_us, r
        for v in (r.gbps, r.tflops, r.speedup_vs_fp16, r.pct_copy_bw, r.bits_per_weight):
            assert math.isfinite(v) and v > 0, r
        assert math.isclose(r.tflops, flops(r.M, r.N, r.K) / (r.median_us * 1e-6) / 1e12, rel_tol=1e-9)
        assert math.isclose(r.gbps, r.bytes_moved / (r.median_us * 1e-6) / 1e9, rel_tol=1e-9)


def test_rows_without_timing_say_why(sweep):
    df = sweep["df"]
    untimed = df[df["median_us"].isna()]
    for r in untimed.itertuples():
        assert isinstance(r.note, str) and r.note.strip(), r
        assert all(pd.isna(v) for v in (r.p20_us, r.p80_us, r.gbps, r.tflops, r.speedup_vs_fp16))


def test_absent_peers_get_a_note_row(sweep):
    df = sweep["df"]
    for name in PEER_NAMES:
        rows = df[df["provider"] == name]
        assert len(rows) == 1, name
        expected = "not installed" if importlib.util.find_spec(PEERS[name].module) is None else "needs a CUDA GPU"
        assert rows.iloc[0]["note"] == expected
        assert pd.isna(rows.iloc[0]["median_us"]) and pd.isna(rows.iloc[0]["M"])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_lowbit_rows(sweep, scheme):
    """A scheme with a kernel family is timed at every M and matches its oracle; otherwise a note row."""
    df = sweep["df"]
    rows = df[(df["provider"] == "lowbit") & (df["scheme"] == scheme)]
    if not _family_exists(scheme):
        assert len(rows) == 1 and rows.iloc[0]["note"].startswith("no Triton kernel serves"), rows
        return
    errors = rows[rows["median_us"].isna()]
    assert errors.empty, f"lowbit {scheme} rows failed: {list(errors['note'])}"
    assert sorted(rows["M"]) == sorted(MS)
    assert (rows["rel_err"] < REL_ERR_BOUND).all(), rows[["M", "rel_err"]]
    assert (rows["bits_per_weight"] < 16).all()


def test_plots_and_versions_written(sweep):
    csv = sweep["csv"]
    for name in ("speedup", "bandwidth", "roofline"):
        png = csv.with_name(f"{csv.stem}-{name}.png")
        assert png.is_file() and png.stat().st_size > 1000, png
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads(csv.with_suffix(".json").read_text())
    assert info["gpu"] == "cpu-interpreter" and info["torch"] == torch.__version__
    assert info["copy_bw_gbps"] > 0
    assert info["config"]["shapes"] == [f"{SHAPE[0]}x{SHAPE[1]}"] and info["config"]["ms"] == list(MS)
    assert set(info["peers"]) == set(PEER_NAMES)


# -- pure functions --------------------------------------------------------------------------
def test_speedup_pairs_graph_rows_with_the_graph_baseline():
    rows = [
        {"provider": "torch-fp16", "scheme": "fp16", "N": 8, "K": 8, "M": 1, "median_us": 10.0},
        {"provider": "torch-fp16+graph", "scheme": "fp16", "N": 8, "K": 8, "M": 1, "median_us": 4.0},
        {"provider": "lowbit", "scheme": "int4", "N": 8, "K": 8, "M": 1, "median_us": 5.0},
        {"provider": "lowbit+graph", "scheme": "int4", "N": 8, "K": 8, "M": 1, "median_us": 2.0},
        {"provider": "lowbit", "scheme": "int4", "N": 8, "K": 8, "M": 2, "median_us": 5.0},  # no baseline
        {"provider": "gemlite", "scheme": "int4", "N": None, "K": None, "M": None, "median_us": None,
         "note": "not installed"},
    ]
    df = pd.DataFrame([{c: None for c in COLUMNS + EXTRA_COLUMNS} | r for r in rows])
    s = add_speedup(df)["speedup_vs_fp16"].tolist()
    assert s[:4] == [1.0, 1.0, 2.0, 2.0]
    assert math.isnan(s[4]) and math.isnan(s[5])


def test_rotation_count():
    l2 = 50 << 20
    assert rotation_count(100 << 20, l2) == 1  # larger than L2: no rotation needed
    assert rotation_count(10 << 20, l2) == 10  # 2 x L2 / working set
    assert rotation_count(1, l2, cap=64) == 64
    assert rotation_count(1 << 20, 0) == 1  # CPU: no L2 figure


def test_roofline_arithmetic():
    assert bytes_moved(1000, m=2, n=3, k=4, act_bytes=2, out_bytes=2) == 1000 + 16 + 12
    assert flops(2, 3, 4) == 48
    a = achieved(median_us=2.0, nbytes=4000, nflops=8_000_000, copy_gbps=4.0)
    assert math.isclose(a.gbps, 2.0) and math.isclose(a.tflops, 4.0) and math.isclose(a.pct_copy_bw, 50.0)
    assert math.isnan(achieved(0.0, 1, 1, 1.0).gbps)


# -- command line ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--shapes", "4096by4096"], "bad shape '4096by4096': expected NxK"),
    (["--shapes", "4096x4096,0x128"], "N and K must be positive"),
    (["--m", "1,two"], "bad batch size 'two'"),
    (["--m", "0"], "M must be positive"),
    (["--schemes", "int4,int5"], "unknown scheme 'int5'"),
    (["--peers", "marlin"], "unknown peer(s) ['marlin']"),
    (["--paths", "fast"], "unknown path(s) ['fast']"),
    (["--group-size", "100"], "invalid choice: 100"),
])
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_arguments_parse():
    import argparse

    from lowbit.cli import sweep as cli

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    a = p.parse_args(["--shapes", "4096x4096, 11008X4096", "--m", "1,16,4096", "--schemes", "int4,NF4",
                      "--peers", "none", "--paths", "auto,gemv", "--quick"])
    assert a.shapes == ((4096, 4096), (11008, 4096))
    assert a.m == (1, 16, 4096)
    assert a.schemes == ("int4", "nf4")
    assert a.peers == () and a.paths == (None, "gemv") and a.quick
    assert p.parse_args(["--schemes", "all"]).schemes[0] == "int1"
    grid = cli._resolve(p.parse_args([]), cuda=False)  # no GPU: the tiny interpreter grid
    assert len(grid["shapes"]) == 1 and grid["ms"] == (1, 16) and len(grid["schemes"]) <= 3
    assert grid["peers"] == ()  # no GPU: no peers unless asked for
    full = cli._resolve(p.parse_args([]), cuda=True)  # GPU: the full benchmark grid
    assert len(full["shapes"]) == 10 and full["ms"] == (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096)


def test_help_states_the_defaults_the_tool_uses():
    """Every default `sweep --help` names is the one _resolve/argparse applies (issue 21: help and tool agree)."""
    import argparse
    import re

    from lowbit.cli import sweep as cli
    from lowbit.formats import Scheme
    from lowbit.perf.runner import BENCH_SHAPES

    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    text = " ".join(p.format_help().split())
    fmt = lambda shapes: ",".join(f"{n}x{k}" for n, k in shapes)  # noqa: E731
    cpu = cli._resolve(p.parse_args([]), cuda=False)
    gpu = cli._resolve(p.parse_args([]), cuda=True)
    quick = cli._resolve(p.parse_args(["--quick"]), cuda=True)
    assert f"the {len(BENCH_SHAPES)} benchmark shapes listed in perf/README.md" in text and len(gpu["shapes"]) == 10
    listed = (ROOT / "perf" / "README.md").read_text().replace("×", "x")
    assert all(f"{n}x{k}" in listed for n, k in BENCH_SHAPES)
    assert f"without a GPU: {fmt(cpu['shapes'])})" in text
    assert f"default on a GPU: {','.join(map(str, gpu['ms']))}; without a GPU: {','.join(map(str, cpu['ms']))})" in text
    assert f"default on a GPU: all {len(Scheme)}; without a GPU: {','.join(cpu['schemes'])})" in text
    assert gpu["schemes"] == tuple(s.value for s in Scheme)
    assert (f"a small grid on a GPU: {fmt(quick['shapes'])} x M {','.join(map(str, quick['ms']))} x "
            f"{','.join(quick['schemes'])}") in text
    assert (f"already the CPU grid ({fmt(cpu['shapes'])} x M {','.join(map(str, cpu['ms']))} x "
            f"{','.join(cpu['schemes'])})") in text
    d = p.parse_args([])
    assert "(default 128)" in text and d.group_size == 128
    assert "(default 16)" in text and d.graph_max_m == 16
    assert "DESIGN.md" not in text
    assert re.search(r"without a GPU: none\)", text) and cpu["peers"] == ()
