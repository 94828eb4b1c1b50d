"""Tests of ``filterlens analyze`` (the real CLI, in a subprocess), of the Python
``filterlens.analyze.analyze`` API and of ``filterlens demo``.

The saved tables are checked against what the model and the saved arrays say
independently: the layer list from ``list_layers``, the SFP columns recomputed with the
public ``filterlens.sfp`` API from the saved ``probes.pt`` and ``label_means.pt``, the
per-filter table against the per-layer one.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli_env
from filterlens import sfp
from filterlens.models import ModelSpec, build_model, list_layers

SFP_COLUMNS = ["clusters_per_filter", "clusters_per_filter_all", "cluster_size", "noise_per_filter",
               "noise_per_filter_all", "filters_without_cluster", "snr"]
N_TEST = 450  # digits' fixed test split




def _env() -> dict:
    env = cli_env()  # this checkout's src first, CI-like
    # the suite shares 2 cores: one intra-op thread per process avoids oversubscription stalls
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    env.pop("FILTERLENS_LOGLEVEL", None)
    return env


def _cli(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "filterlens", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _num(text: str) -> float:
    return float(text) if text != "" else math.nan


def _same(a: float, b: float, rel: float = 2e-5) -> bool:
    """CSV floats carry 6 significant digits."""
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def _expected_layers():
    model = build_model(ModelSpec("vgg_tiny", 10, 1, 8))
    return list_layers(model, (1, 8, 8))


def _snapshot(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    run = base / "run"
    tr = _cli("train", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", 5, "--run-dir", run,
              "--no-progress", cwd=base)
    assert tr.returncode == 0, tr.stderr
    an = _cli("analyze", "--run-dir", run, "--probe-epochs", 5, "--no-progress", cwd=base)
    assert an.returncode == 0, an.stderr
    return run, tr, an


# ----------------------------------------------------------------------------- CLI outputs


def test_cli_layers_csv(cli_run):
    run, _, an = cli_run
    expected = _expected_layers()
    assert [l.name for l in expected] == ["features.0", "features.1"]  # sanity of the reference
    cols, rows = _read_csv(run / "layers.csv")
    for c in ["layer", "unit_kind", "units", "features", "accuracy", *SFP_COLUMNS]:
        assert c in cols, c
    assert [r["layer"] for r in rows] == [l.name for l in expected]
    for r, l in zip(rows, expected):
        assert int(r["units"]) == l.units and r["unit_kind"] == "filter"
        assert int(r["features"]) == l.features == int(np.prod(l.shape))
        acc = float(r["accuracy"])
        assert 0.5 < acc <= 1.0  # chance is 0.1
        assert 0.0 <= float(r["filters_without_cluster"]) <= 1.0
        # the printed table has the layer too
        assert any(line.split()[:1] == [l.name] for line in an.stdout.splitlines()), an.stdout


def test_cli_filters_csv_consistent_with_layers_csv(cli_run):
    run, _, _ = cli_run
    _, layers = _read_csv(run / "layers.csv")
    cols, filters = _read_csv(run / "filters.csv")
    assert "num_clusters" in cols and "unit" in cols and "unit_kind" in cols and "layer" in cols
    assert len(filters) == sum(int(r["units"]) for r in layers) == 8 + 16
    for r in layers:
        mine = [f for f in filters if f["layer"] == r["layer"]]
        assert [int(f["unit"]) for f in mine] == list(range(int(r["units"])))
        k = np.array([int(f["num_clusters"]) for f in mine])
        assert _same(k.mean(), _num(r["clusters_per_filter_all"]))
        assert _same((k == 0).mean(), _num(r["filters_without_cluster"]))
        noise = np.array([float(f["noise"]) for f in mine])
        assert _same(noise.mean(), _num(r["noise_per_filter_all"]))


def test_cli_results_json(cli_run):
    run, _, _ = cli_run
    res = json.loads((run / "results.json").read_text())
    for key in ("version", "config", "probes", "layers"):
        assert key in res, key
    assert res["probes"]["mode"] == "fast"
    assert res["probes"]["engine"] == "memory"
    assert res["config"]["probe_epochs"] == 5
    _, rows = _read_csv(run / "layers.csv")
    assert [l["layer"] for l in res["layers"]] == [r["layer"] for r in rows]
    for l, r in zip(res["layers"], rows):
        assert _same(l["accuracy"], _num(r["accuracy"]))


def test_cli_plot_and_arrays(cli_run):
    run, _, _ = cli_run
    png = (run / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    probes = torch.load(run / "probes.pt", map_location="cpu", weights_only=True)
    means = torch.load(run / "label_means.pt", map_location="cpu", weights_only=True)
    expected = _expected_layers()
    assert set(probes) == {l.name for l in expected}
    for l in expected:
        assert tuple(probes[l.name].shape) == (10, *l.shape)
        assert tuple(means["means"][l.name].shape) == (10, *l.shape)
        assert torch.isfinite(probes[l.name]).all()
    counts = means["counts"]
    assert tuple(counts.shape) == (10,) and float(counts.sum()) == N_TEST


def test_cli_sfp_columns_equal_public_sfp_on_saved_arrays(cli_run):
    run, _, _ = cli_run
    cfg = json.loads((run / "config.json").read_text())
    probes = torch.load(run / "probes.pt", map_location="cpu", weights_only=True)
    means = torch.load(run / "label_means.pt", map_location="cpu", weights_only=True)["means"]
    _, rows = _read_csv(run / "layers.csv")
    for r in rows:
        est = sfp.analyze_layer(probes[r["layer"]].double().numpy(), means[r["layer"]].double().numpy(),
                                threshold=cfg["threshold"], normalise=cfg["normalise"])
        s = est.summary()
        for c in SFP_COLUMNS:
            assert _same(_num(r[c]), s[c]), (r["layer"], c, r[c], s[c])


# ----------------------------------------------------------------------------- CLI mistakes


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("filterlens: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def bad_layers(cli_run, tmp_path_factory):
    """``analyze --layers 99`` on a copy of the trained run."""
    run = tmp_path_factory.mktemp("bad") / "run"
    shutil.copytree(cli_run[0], run)
    before = _snapshot(run)
    proc = _cli("analyze", "--run-dir", run, "--layers", 99, "--no-progress", cwd=run.parent)
    return run, before, proc


def test_cli_unknown_layer_index(bad_layers):
    _, _, proc = bad_layers
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "99" in line
    assert "features.0" in line and "features.1" in line


def test_cli_failed_analyze_damages_nothing(bad_layers):
    run, before, proc = bad_layers
    assert proc.returncode == 2
    after = _snapshot(run)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name] == before[name], f"{name} changed by a failed command"


def test_cli_nonexistent_run_dir(tmp_path):
    missing = tmp_path / "no-such-run"
    proc = _cli("analyze", "--run-dir", missing, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "no-such-run" in line
    assert not missing.exists()


def test_cli_threshold_out_of_range(cli_run):
    run, _, _ = cli_run
    before = _snapshot(run)
    proc = _cli("analyze", "--run-dir", run, "--threshold", 1.5, "--no-progress", cwd=run.parent)
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert "1.5" in line
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- Python API


@pytest.mark.parametrize("spaced, plain", [(" none ", "none"), ("auto ", "auto")])
def test_heatmaps_setting_with_spaces_means_what_it_says(tmp_path, spaced, plain):
    """A heatmaps setting with spaces around auto or none passes the config's check (which strips it) and draws
    what the plain word draws (it was taken for a LAYER:UNIT list and failed unpacking its letters)."""
    from filterlens.analysis import Analysis

    matrices = np.random.default_rng(0).random((4, 5, 5))
    drawn = {}
    for spec in (spaced, plain):
        fitted = {"features.0": sfp.LayerSFP().fit_matrices(matrices)}
        meta = {"config": {"heatmaps": spec}, "label_names": list("abcde")}
        out = tmp_path / repr(spec)
        drawn[spec] = [p.relative_to(out) for p in Analysis([], [], None, fitted, meta).heatmaps(out)]
    assert drawn[spaced] == drawn[plain]
    assert len(drawn[plain]) == (3 if plain == "auto" else 0)  # auto: 3 units of the one layer


def test_python_api_analyze_and_save(cli_run, tmp_path):
    from filterlens.analysis import Analysis, analyze
    from filterlens.train import load_trained

    model, cfg, data, _ = load_trained(cli_run[0])
    model.train()  # the caller's mode, to be restored
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = analyze(model, data, config=cfg.replace(probe_epochs=5, progress=False))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), f"analyze changed {k}"

    assert isinstance(result, Analysis)
    expected = _expected_layers()
    assert [r["layer"] for r in result.layers] == [l.name for l in expected]
    assert len(result.units) == sum(l.units for l in expected)
    out = tmp_path / "saved"
    result.save(out)
    _, rows = _read_csv(out / "layers.csv")
    assert len(rows) == len(result.layers)
    for mem, disk in zip(result.layers, rows):
        assert disk["layer"] == mem["layer"]
        for c in ["units", "features", "accuracy", *SFP_COLUMNS]:
            assert _same(_num(disk[c]), mem[c]), (c, disk[c], mem[c])
    # the SFP columns recomputed with the public API from the saved arrays
    probes = torch.load(out / "probes.pt", map_location="cpu", weights_only=True)
    means = torch.load(out / "label_means.pt", map_location="cpu", weights_only=True)["means"]
    for mem in result.layers:
        s = sfp.analyze_layer(probes[mem["layer"]].double().numpy(), means[mem["layer"]].double().numpy(),
                              threshold=cfg.threshold, normalise=cfg.normalise).summary()
        for c in SFP_COLUMNS:
            assert _same(mem[c], s[c]), (mem["layer"], c, mem[c], s[c])
    # and the accuracy in the table is the saved probe's accuracy on the test split
    x = data.test.normalise(data.test.images)
    labels = data.test.labels
    model.eval()
    with torch.no_grad():
        feats = x
        for k, mem in enumerate(result.layers):
            feats = model.features[k](feats)
            w = probes[mem["layer"]].reshape(10, -1)
            acc = (feats.reshape(len(labels), -1) @ w.T).argmax(1).eq(labels).double().mean().item()
            # float16 cache vs float32 here: at most a couple of near-tie samples may differ
            assert abs(acc - mem["accuracy"]) <= 2 / N_TEST, (mem["layer"], acc, mem["accuracy"])
    loaded = Analysis.load(out)
    assert [r["layer"] for r in loaded.layers] == [r["layer"] for r in result.layers]


# ----------------------------------------------------------------------------- demo


def test_demo_acceptance(tmp_path):
    run = tmp_path / "demo"
    # its time is measured on a quiet machine for the README (`time filterlens demo`), not asserted here: the test
    # machines are shared
    proc = _cli("demo", "--run-dir", run, "--no-progress", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "train.json").read_text())
    assert summary["test_accuracy"] >= 0.95, summary["test_accuracy"]
    _, rows = _read_csv(run / "layers.csv")
    assert len(rows) == 6  # vgg_small: six layers
    assert (run / "accuracy.png").is_file() and (run / "results.json").is_file()
