"""Issue 32, in Python: a model that breaks the contract, data that breaks it, an analysis paired with another model,
and an analysis saved over another model's run (items 2, 3, 7 and 8).

Every refusal is one FilterlensError naming what is wrong, raised before any work: nothing is written.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import Dataset, TensorDataset

import filterlens
from filterlens.errors import FilterlensError

SETTINGS = dict(probe_epochs=1, heatmaps="none", top_images=0, progress=False, seed=0)
L = 3


def make(num_labels: int = L, channels: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(4 * channels, num_labels))


def tensors(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % L


TRAIN, TEST = tensors(30), tensors(15, 1)


@pytest.fixture(scope="module")
def analysis():
    return filterlens.analyze(make(), TRAIN, TEST, labels=["a", "b", "c"], **SETTINGS)


def tree(d) -> dict:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(d.rglob("*"))}


# ------------------------------------------------------------------------------ item 7: the model's contract

class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = make()

    def forward(self, x):
        return {"logits": self.net(x)}


class TupleOut(DictOut):
    def forward(self, x):
        return self.net(x), x


class Exits(DictOut):
    def forward(self, x):
        raise SystemExit(3)


def _meta() -> nn.Module:
    with torch.device("meta"):
        return make()


class NoMaps(nn.Module):
    """No module gives a 4-D map: nothing to analyse."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(192, L)

    def forward(self, x):
        return self.fc(x.flatten(1))


BAD_MODELS = {
    "dict": (DictOut, "dict"),
    "tuple": (TupleOut, "tuple"),
    "ten-outputs": (lambda: make(10), "10 class scores"),
    "float64": (lambda: make().double(), "float64"),
    "float16": (lambda: make().half(), "float16"),
    "meta": (_meta, "meta device"),
    "forward-exits": (Exits, "SystemExit"),
    "no-layer": (NoMaps, "no layer"),
}


@pytest.mark.parametrize("which", list(BAD_MODELS))
def test_a_model_that_breaks_the_contract_is_one_line_before_any_work(which, tmp_path):
    build, needle = BAD_MODELS[which]
    model = build()
    with pytest.raises(FilterlensError, match=needle) as exc:
        filterlens.analyze(model, TRAIN, TEST, cache_dir=tmp_path / "c", **SETTINGS)
    assert "\n" not in str(exc.value)
    assert list(tmp_path.iterdir()) == []


FACTORIES = """
import sys
import torch.nn as nn


def exits(num_labels=3):
    sys.exit(3)


def three(num_labels=10):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = three()

    def forward(self, x):
        return self.net(x), x


def pair(num_labels=10):
    return Pair()


def wide(num_labels=10):
    return three(num_labels).double()
"""


@pytest.mark.parametrize("factory, needles", [
    ("exits", ("exits", "SystemExit")),
    ("three", ("3 class scores", "10 labels")),
    ("pair", ("tuple",)),
    ("wide", ("float64",)),
])
def test_the_command_line_refuses_such_a_model_before_writing(factory, needles, tmp_path):
    from conftest import assert_user_error, run_cli

    (tmp_path / "zoo.py").write_text(FACTORIES)
    run = tmp_path / "run"
    rc, out, err = run_cli("train", "--run-dir", run, "--dataset", "digits", "--model", f"zoo.py:{factory}",
                           "--epochs", "1", "--no-progress", cwd=tmp_path)
    assert_user_error(rc, out, err, *needles)
    assert not run.exists()


# ------------------------------------------------------------------------------ item 8: the data's contract

class Shapes(Dataset):
    """Images of two shapes (sample 5 is larger)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.rand(3, 10 if i == 5 else 8, 8), i % L


class NaNs(Shapes):
    def __getitem__(self, i):
        x = torch.rand(3, 8, 8)
        if i == 7:
            x[0, 1, 1] = float("nan")
        return x, i % L


BAD_DATA = {
    "string-labels-numpy": (lambda: (TRAIN[0].numpy(), np.array(["a", "b", "c"] * 10)), "labels", "U1"),
    "string-labels-list": (lambda: (TRAIN[0], ["a", "b", "c"] * 10), "'a'", "str"),
    "float-labels-list": (lambda: (TRAIN[0], [0.5] * 30), "0.5", "float"),
    "object-images": (lambda: (np.array([None] * 30, dtype=object), TRAIN[1].numpy()), "object"),
    "dataset-shapes": (Shapes, "sample 5", "(3, 10, 8)"),
    "dataset-nan": (NaNs, "sample 7", "NaN"),
    "dataset-string-labels": (lambda: [(TRAIN[0][i], "abc"[i % 3]) for i in range(30)], "'a'"),
}


@pytest.mark.parametrize("which", list(BAD_DATA))
def test_bad_data_from_python_is_one_clear_error(which, tmp_path):
    build, *needles = BAD_DATA[which]
    data = build()
    if isinstance(data, list):
        items = data

        class Listed(Dataset):
            def __len__(self):
                return len(items)

            def __getitem__(self, i):
                return items[i]
        data = Listed()
    with pytest.raises(FilterlensError) as exc:
        filterlens.analyze(make(), data, TensorDataset(*TEST), cache_dir=tmp_path / "c", **SETTINGS)
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


# ------------------------------------------------------------------------------ item 3: pairs

def test_the_analysis_records_what_it_analysed(analysis):
    from filterlens.fingerprint import weights_fingerprint

    assert analysis.meta["model_fingerprint"] == weights_fingerprint(make())
    assert analysis.meta["label_names"] == ["a", "b", "c"]


def _negated():
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            p.neg_()
    return model


@pytest.mark.parametrize("other, needle", [
    (_negated, "weights differ"),
    (lambda: make(channels=5), "weights differ"),
    (lambda: make(10), "weights differ"),
])
def test_afcc_refuses_a_model_the_analysis_was_not_made_of(analysis, other, needle):
    with pytest.raises(FilterlensError, match=needle):
        filterlens.afcc.apply(other(), analysis, retrain_epochs=0, random_draws=1, afcc_thresholds="",
                              progress=False)


def test_afcc_refuses_data_with_other_labels(analysis):
    x, y = TRAIN
    with pytest.raises(FilterlensError, match="labels"):
        filterlens.afcc.apply(make(), analysis, (x, y), TEST, labels=["x", "y", "z"], retrain_epochs=0,
                              random_draws=1, afcc_thresholds="", progress=False)
    with pytest.raises(FilterlensError, match="4 labels"):
        filterlens.afcc.apply(make(), analysis, (x, torch.arange(30) % 4), (TEST[0], torch.arange(15) % 4),
                              retrain_epochs=0, random_draws=1, afcc_thresholds="", progress=False)


def test_afcc_accepts_the_model_it_analysed(analysis):
    out = filterlens.afcc.apply(make(), analysis, retrain_epochs=0, random_draws=1, afcc_thresholds="",
                                progress=False)
    assert out.accuracy["before"] >= 0


# ------------------------------------------------------------------------------ item 2: Python writes

def test_saving_over_another_models_run_needs_overwrite(analysis, tmp_path):
    other = filterlens.analyze(_negated(), TRAIN, TEST, labels=["a", "b", "c"], **SETTINGS)
    run = tmp_path / "run"
    analysis.save(run)
    before = tree(run)
    with pytest.raises(FilterlensError, match="overwrite=True"):
        other.save(run)
    assert tree(run) == before
    analysis.save(run)  # the same model's analysis again: allowed, as analyze is on the command line
    other.save(run, overwrite=True)
    loaded = filterlens.analysis.Analysis.load(run)
    assert loaded.meta["model_fingerprint"] == other.meta["model_fingerprint"]


def test_saving_into_a_trained_run_of_another_model_needs_overwrite(tiny_run, tmp_path, analysis):
    from conftest import copy_run

    run = copy_run(tiny_run, tmp_path / "run")
    before = tree(run)
    with pytest.raises(FilterlensError, match="model.pt"):
        analysis.save(run)
    assert tree(run) == before
    analysis.save(run, overwrite=True)
    assert not (run / "model.pt").exists()  # that run is replaced, not mixed with this analysis


# ------------------------------------------------------------------------------ item 4: files read back are checked

def _flip_a_weight_bit(path) -> None:
    """conftest.flip_a_weight_bit, and the file still loads: only the digest tells."""
    from conftest import flip_a_weight_bit

    flip_a_weight_bit(path)
    torch.load(path, map_location="cpu", weights_only=True)


def test_a_flipped_byte_in_an_afcc_file_or_a_checkpoint_is_refused(tmp_path):
    from filterlens import afcc
    from filterlens.models import ModelSpec, build_model, read_checkpoint, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("vgg", 4, 1, 8, vgg_cfg="4,M,6,M")
    model = build_model(spec).eval()
    w = torch.randn(4, 6, 2, 2, generator=torch.Generator().manual_seed(1))
    net = afcc.build_diluted(model, ["features.0", "features.1"], w, (1, 8, 8), "none", spec)
    masks = afcc.make_masks(net, {"features.0": [[[0]], [[1]], [], [[2]]],
                                  "features.1": [[[0]], [], [[1, 2]], [], [[2]], [[0], [1]]]})
    afcc.apply_masks(net, masks)
    path = afcc.save(tmp_path / "m.pt", net, masks, {"config": {"threshold": 0.3}})
    afcc.load(path)  # intact: loads
    _flip_a_weight_bit(path)
    with pytest.raises(FilterlensError, match="damaged"):
        afcc.load(path)
    ckpt = save_checkpoint(tmp_path / "c.pt", model, spec, ["a", "b", "c", "d"])
    read_checkpoint(ckpt)
    _flip_a_weight_bit(ckpt)
    with pytest.raises(FilterlensError, match="damaged"):
        read_checkpoint(ckpt)
    with pytest.raises(FilterlensError, match="directory"):
        afcc.load(tmp_path)
