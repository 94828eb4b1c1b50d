"""benchmarks/paper_scale.py (the VGG-16 / CIFAR-100 recipe timed stage by stage) at tiny scale,
so the script a GPU user runs never rots: its synthetic CIFAR-100 files are read by the real
loader, and its projection follows the formula its docstring states."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from filterlens.data import load_data

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_scale.py"


@pytest.fixture(scope="module")
def paper_scale():
    spec = importlib.util.spec_from_file_location("paper_scale", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dataset,labels", [("cifar100", 100), ("cifar10", 10)])
def test_synthetic_cifar_is_read_by_the_real_loader(paper_scale, tmp_path, dataset, labels):
    root = paper_scale.write_synthetic_cifar(tmp_path / dataset, dataset, train=3 * labels + 5, test=2 * labels)
    data = load_data(dataset, data_dir=root)
    n = 3 * labels + 5
    assert len(data.train) == n and len(data.test) == 2 * labels and data.num_labels == labels
    assert data.train.images.shape == (n, 3, 32, 32)
    # labels cycle over the label set before shuffling
    assert np.bincount(data.train.labels.numpy(), minlength=labels).tolist() == [4] * 5 + [3] * (labels - 5)
    assert np.bincount(data.test.labels.numpy(), minlength=labels).tolist() == [2] * labels
    # images of one label resemble each other more than images of two labels (something to learn)
    x = data.train.images.float().reshape(n, -1).numpy()
    y = data.train.labels.numpy()
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    corr = (x @ x.T) / x.shape[1]
    same = (y[:, None] == y[None, :]) & ~np.eye(n, dtype=bool)
    diff = y[:, None] != y[None, :]
    assert corr[same].mean() > corr[diff].mean() + 0.1


@pytest.mark.slow  # `make test-slow` (the whole pipeline at paper shape; benchmarks/paper_scale.py runs it too)
def test_tiny_run_and_its_projection(paper_scale, tmp_path, capsys):
    out, run = tmp_path / "ps.json", tmp_path / "run"
    rc = paper_scale.main(["--device", "cpu", "--train-images", "200", "--test-images", "100", "--width-mult",
                           "0.125", "--no-afcc", "--run-dir", str(run), "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["synthetic_data"] is True and res["device"] == "cpu"
    assert set(res["stages"]) == {"train", "probes", "sfp", "report"}
    assert res["settings"]["probe_mode"] == "paper" and res["settings"]["full_epochs"] == 200
    # the projection, recomputed from the run directory's own records with the stated formula
    stages = json.loads((run / "stages.json").read_text())
    train = json.loads((run / "train.json").read_text())
    probes = json.loads((run / "probes.json").read_text())
    scale = 50_000 / 200
    epochs = [h["seconds"] for h in train["history"]]
    want_train = stages["train"]["seconds"] - sum(epochs) + np.mean(epochs) * scale * 200
    assert res["stages"]["train"]["projected_full_s"] == pytest.approx(want_train, rel=1e-9)
    pt = probes["timings"]["probe_train_s"]
    want_probes = (stages["probes"]["seconds"] - pt) * scale + pt * scale * 200
    assert res["stages"]["probes"]["projected_full_s"] == pytest.approx(want_probes, rel=1e-9)
    assert res["projected_full_total_s"] == pytest.approx(sum(r["projected_full_s"] for r in res["stages"].values()))
    assert res["inference_pass_s"] > 0 and set(res["layer_accuracy"]) and len(res["layer_accuracy"]) == 13
    printed = capsys.readouterr().out
    assert "| train |" in printed and "| probes |" in printed


def test_bad_device_is_one_line(paper_scale, capsys):
    assert paper_scale.main(["--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tpu" in err[0] and "cpu" in err[0]


def test_a_recipe_on_other_data_is_refused_in_one_line(paper_scale, capsys):
    config = SCRIPT.parents[1] / "configs" / "vgg16-imagenet.toml"
    assert paper_scale.main(["--config", str(config), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "imagenet" in err[0] and "cifar100" in err[0]
