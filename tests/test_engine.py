"""The capture engine at scale (issue 18): memory, layer groups, disk and streaming.

Memory, groups and disk give identical probe weights, accuracies, label means and votes (CPU, same
seed): a probe starts from the same weights and sees the same mini-batches in the same order
whichever cache holds its features. An interrupted disk-tier fill is never read as complete; a
complete one is reused by the resumed analysis. ``auto`` takes memory when the cache fits and
says what it chose otherwise, with its estimates.
"""
from __future__ import annotations

import pytest
import torch

from filterlens import engine as engine_module
from filterlens.capture import CaptureLayer, FeatureCache
from filterlens.config import Config
from filterlens.data import load_data
from filterlens.engine import group_layers, open_disk_cache
from filterlens.errors import FilterlensError
from filterlens.models import ModelSpec, build_model, list_layers
from filterlens.loaders import Feed
from filterlens.probes import train_probes


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_data("digits", train_samples=400, test_samples=200)
    model = build_model(ModelSpec("vgg_small", 10, 1, 8)).eval()
    layers = list_layers(model, (1, 8, 8))
    need = FeatureCache.nbytes([CaptureLayer(l, l.shape) for l in layers], len(data.train) + len(data.test))
    return model, data, layers, need


def _train(setup, tmp_path=None, **kw):
    model, data, layers, _ = setup
    cfg = Config(probe_epochs=3, seed=0, progress=False, **kw)
    return train_probes(model, layers, Feed(data, seed=cfg.seed), cfg, cache_dir=tmp_path, progress=False, echo=lambda *a: None)


def _same(a, b):
    assert [r.name for r in a.layers] == [r.name for r in b.layers]
    for x, y in zip(a.layers, b.layers):
        assert torch.equal(x.weight, y.weight), x.name
        assert x.accuracy == y.accuracy and x.train_accuracy == y.train_accuracy
        assert torch.equal(x.label_means, y.label_means) and torch.equal(x.votes, y.votes)
    assert torch.equal(a.label_counts, b.label_counts)


def test_memory_groups_and_disk_give_identical_probes(setup, tmp_path):
    need = setup[3]
    memory = _train(setup, engine="memory")
    groups = _train(setup, engine="groups", cache_budget=str(need // 2))
    disk = _train(setup, tmp_path / "cache", engine="disk", cache_budget=str(need // 2))
    assert (memory.engine, groups.engine, disk.engine) == ("memory", "groups", "disk")
    assert len(groups.engine_plan["groups"]) >= 3 and groups.forward_passes == len(groups.engine_plan["groups"])
    _same(memory, groups)
    _same(memory, disk)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # removed once trained
    stream = _train(setup, engine="stream")  # the same mini-batches in the same order, from float32 maps
    for x, y in zip(memory.layers, stream.layers):  # only the cache's float16 rounding differs
        assert abs(x.accuracy - y.accuracy) <= 0.02
    assert torch.equal(stream.layers[0].label_means, memory.layers[0].label_means)  # both from the float32 maps


def test_groups_are_the_fewest_that_fit_and_keep_forward_order(setup):
    _, data, layers, _ = setup
    cls = [CaptureLayer(l, l.shape) for l in layers]
    rows = 100
    sizes = [FeatureCache.nbytes([cl], rows) for cl in cls]
    budget = max(sizes)
    groups = group_layers(cls, rows, budget)
    assert sorted(cl.name for g in groups for cl in g) == sorted(cl.name for cl in cls)
    for g in groups:
        assert FeatureCache.nbytes(g, rows) <= budget
        assert [cl.layer.index for cl in g] == sorted(cl.layer.index for cl in g)
    assert len(groups) == -(-sum(sizes) // budget) or len(groups) <= len(cls)  # never more bins than needed here
    assert group_layers(cls, rows, budget - 1) is None  # the largest layer alone does not fit


def test_an_interrupted_disk_fill_is_never_read_as_complete(setup, tmp_path, monkeypatch):
    model, data, layers, need = setup
    cache = tmp_path / "cache"
    calls = {"n": 0}
    real = engine_module.finish_disk_cache

    def crash(*args, **kw):  # the fill of both splits done, the marker never written: a kill at that moment
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr("filterlens.probes.finish_disk_cache", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(setup, cache, engine="disk", cache_budget=str(need // 2))
    assert calls["n"] == 1 and (cache / "train.f16").exists() and not (cache / "train.json").exists()
    cls = [CaptureLayer(l, l.shape) for l in layers]
    _, complete = open_disk_cache(cls, len(data.train), cache, "train", "any key")
    assert not complete  # no marker: it is filled again

    monkeypatch.setattr("filterlens.probes.finish_disk_cache", real)
    passes = {"n": 0}
    original = engine_module.FeatureCache.update

    def counting(self, feats, y):
        passes["n"] += len(y)
        return original(self, feats, y)

    monkeypatch.setattr(FeatureCache, "update", counting)
    resumed = _train(setup, cache, engine="disk", cache_budget=str(need // 2))
    assert passes["n"] == len(data.train) + len(data.test)  # captured again, in full
    _same(resumed, _train(setup, engine="memory"))


def test_a_complete_disk_cache_is_reused_with_the_same_key_only(setup, tmp_path):
    _, data, layers, _ = setup
    cls = [CaptureLayer(l, l.shape) for l in layers]
    n = 8
    cache, complete = open_disk_cache(cls, n, tmp_path, "train", "k1")
    assert not complete
    cache.update({cl.name: torch.ones(n, *cl.shape) for cl in cls}, torch.arange(n) % 10)
    engine_module.finish_disk_cache(cache, tmp_path, "train", "k1")
    again, complete = open_disk_cache(cls, n, tmp_path, "train", "k1")
    assert complete and torch.equal(again.labels, torch.arange(n) % 10)
    assert float(again.data.float().sum()) == n * sum(cl.features for cl in cls)
    _, complete = open_disk_cache(cls, n, tmp_path, "train", "another model")
    assert not complete


def test_auto_takes_memory_when_it_fits_and_says_why_otherwise(setup, tmp_path):
    need = setup[3]
    fits = _train(setup)
    assert fits.engine == "memory" and "memory" in fits.note
    tight = _train(setup, tmp_path / "cache", cache_budget=str(need // 2))
    plan = tight.engine_plan
    assert tight.engine in ("groups", "disk", "stream") and tight.engine in plan["note"]
    assert {"stream_s", "groups_s", "forward_s_per_sample"} <= set(plan["estimates"])


def test_forced_engines_that_cannot_work_are_refused_in_one_line(setup):
    need = setup[3]
    with pytest.raises(FilterlensError, match="engine memory needs .* over the cache budget"):
        _train(setup, engine="memory", cache_budget=str(need // 3))
    with pytest.raises(FilterlensError, match="alone needs"):
        _train(setup, engine="groups", cache_budget="1K")
    with pytest.raises(FilterlensError, match="probe augmentation"):
        _train(setup, engine="memory", probe_augment=True)
