"""The capture engine at scale (issue 18): memory, layer groups, disk and streaming.

Memory, groups and disk give identical probe weights, accuracies, label means and votes (CPU, same
seed): a probe starts from the same weights and sees the same mini-batches in the same order
whichever cache holds its features. An interrupted disk-tier fill is never read as complete; a
complete one is reused by the resumed analysis. ``auto`` takes memory when the cache fits and
says what it chose otherwise, with its estimates.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import said
from filterlens import engine as engine_module
from filterlens.capture import CaptureLayer, FeatureCache
from filterlens.config import Config
from filterlens.data import load_data
from filterlens.engine import DiskCache, group_layers
from filterlens.errors import FilterlensError
from filterlens.loaders import Feed
from filterlens.models import ModelSpec, build_model, list_layers
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
    return train_probes(model, layers, Feed(data, seed=cfg.seed), cfg, cache_dir=tmp_path, progress=False)


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
    real = DiskCache.finish

    def crash(*args, **kw):  # the fill of both splits done, the marker never written: a kill at that moment
        calls["n"] += 1
        raise KeyboardInterrupt

    monkeypatch.setattr(DiskCache, "finish", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(setup, cache, engine="disk", cache_budget=str(need // 2))
    home = cache / "filterlens-cache"
    assert calls["n"] == 1 and list(home.glob("*.train.f16")) and not list(home.glob("*[0-9a-f].json"))
    cls = [CaptureLayer(l, l.shape) for l in layers]
    key = list(home.glob("*.train.f16"))[0].name.split(".")[0]
    store = DiskCache(home, cls, {"train": len(data.train), "test": len(data.test)}, key)
    assert not store.open()  # no marker: it is filled again
    store.release()

    monkeypatch.setattr(DiskCache, "finish", real)
    passes = {"n": 0}
    original = engine_module.FeatureCache.update

    def counting(self, feats, y):
        passes["n"] += len(y)
        return original(self, feats, y)

    monkeypatch.setattr(FeatureCache, "update", counting)
    resumed = _train(setup, cache, engine="disk", cache_budget=str(need // 2))
    assert passes["n"] == len(data.train) + len(data.test)  # captured again, in full
    _same(resumed, _train(setup, engine="memory"))
    assert not cache.exists()  # made by filterlens for the cache, removed with it


def test_a_complete_disk_cache_is_reused_with_the_same_key_only(setup, tmp_path):
    _, data, layers, _ = setup
    cls = [CaptureLayer(l, l.shape) for l in layers]
    n = 8
    home = tmp_path / "filterlens-cache"
    rows = {"train": n, "test": n}
    store = DiskCache(home, cls, rows, "a" * 24)
    assert not store.open()
    for c in store.caches.values():
        c.update({cl.name: torch.ones(n, *cl.shape) for cl in cls}, torch.arange(n) % 10)
    store.finish({"sums": {}, "counts": torch.ones(10)})
    store.release()
    again = DiskCache(home, cls, rows, "a" * 24)
    assert again.open() and torch.equal(again.caches["train"].labels, torch.arange(n) % 10)
    assert float(again.caches["test"].data.float().sum()) == n * sum(cl.features for cl in cls)
    assert torch.equal(again.means["counts"], torch.ones(10))
    again.release()
    other = DiskCache(home, cls, rows, "b" * 24)
    assert not other.open()  # another model: its own files, filled
    other.remove()
    assert sorted(p.name for p in home.iterdir()) == [".filterlens"] + sorted(f"{'a' * 24}.{x}" for x in (
        "json", "lock", "means.pt", "test.f16", "test.labels", "train.f16", "train.labels"))


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


# ------------------------------------------------------------------ issue 24: a disk cache that owns its folder

def _disk(setup, cache_dir, lines=None, **kw):
    """Probes from the disk engine with ``cache_dir``; the notes it prints are appended to ``lines``."""
    model, data, layers, need = setup
    cfg = Config(probe_epochs=3, seed=0, progress=False, engine="disk", cache_budget=str(need // 2), **kw)
    with said(lines):
        return train_probes(model, layers, Feed(data, seed=cfg.seed), cfg, cache_dir=cache_dir, progress=False)


def _killed_after_fill(setup, cache_dir, monkeypatch):
    """A disk-engine run stopped (as by kill -9) once the cache is complete, while the probes train."""
    def stop(*args, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr("filterlens.probes.train_from_cache", stop)
        with pytest.raises(KeyboardInterrupt):
            _disk(setup, cache_dir)


def _files(folder, pattern):
    return sorted(p for p in folder.rglob(pattern) if p.is_file())


def test_disk_engine_leaves_the_users_files_and_folders(setup, tmp_path):
    """Item 1: its clean-up removed {train,test}{.f16,.labels,.json} whoever wrote them, and the folder itself."""
    u = tmp_path / "u"
    u.mkdir()
    (u / "train.json").write_text('{"mine": 1}')
    (u / "test.labels").write_text("keep")
    empty = tmp_path / "empty"
    empty.mkdir()
    memory = _train(setup, engine="memory")
    for folder in (u, empty):
        _same(_disk(setup, folder), memory)
    assert sorted(p.name for p in u.iterdir()) == ["test.labels", "train.json"]
    assert (u / "train.json").read_text() == '{"mine": 1}' and (u / "test.labels").read_text() == "keep"
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_disk_cache_under_missing_folders_leaves_none_behind(setup, tmp_path):
    """Item 7: --cache-dir /nonexistent/deep/cache left /nonexistent/deep behind."""
    _disk(setup, tmp_path / "missing" / "deep" / "cache")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_disk_cache_is_rebuilt_and_says_so(setup, tmp_path, monkeypatch):
    """Items 3 and 4: a complete cache whose features were overwritten was reused unchecked (wrong accuracies
    recorded as good); one with a damaged header failed with 'the magic string is not correct'."""
    memory = _train(setup, engine="memory")
    for damage in ("features", "header", "labels", "marker"):
        cache = tmp_path / damage
        _killed_after_fill(setup, cache, monkeypatch)
        if damage == "features":
            f16 = _files(cache, "*train*.f16")[0]
            with open(f16, "r+b") as fh:
                fh.seek(4096)
                fh.write(np.full(2000, 30000, dtype=np.float16).tobytes())
        elif damage == "header":
            f16 = _files(cache, "*test*.f16")[0]
            with open(f16, "r+b") as fh:
                fh.write(b"\xff" * 16)
        elif damage == "labels":
            labels = _files(cache, "*train*.labels")[0]
            labels.write_bytes(labels.read_bytes()[:-64])
        else:
            for marker in _files(cache, "*.json"):
                if "key" in marker.read_text():
                    marker.write_text("{not json")
        lines = []
        _same(_disk(setup, cache, lines), memory)
        notes = [line for line in lines if "rebuilt" in line]
        assert len(notes) == 1, (damage, lines)
        assert not _files(cache, "*.f16")  # removed once trained


def test_a_complete_disk_cache_is_reused_after_its_checksums(setup, tmp_path, monkeypatch):
    memory = _train(setup, engine="memory")
    cache = tmp_path / "cache"
    _killed_after_fill(setup, cache, monkeypatch)
    passes = {"n": 0}
    original = FeatureCache.update

    def counting(self, feats, y):
        passes["n"] += len(y)
        return original(self, feats, y)

    monkeypatch.setattr(FeatureCache, "update", counting)
    lines = []
    _same(_disk(setup, cache, lines), memory)
    assert passes["n"] == 0 and not any("rebuilt" in line for line in lines)  # reused, not captured again


def test_groups_budget_message_does_not_contradict_itself(setup):
    """Item 9: "layer 'features.0' alone needs 0 MiB, over the cache budget 0 MiB"."""
    import re

    with pytest.raises(FilterlensError) as info:
        _train(setup, engine="groups", cache_budget="1K")
    sizes = re.findall(r"([0-9.]+) (B|KiB|MiB|GiB)", str(info.value))
    unit = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    (need, u1), (budget, u2) = sizes[:2]
    assert float(need) * unit[u1] > float(budget) * unit[u2], str(info.value)
    assert "1.0 KiB" in str(info.value)
