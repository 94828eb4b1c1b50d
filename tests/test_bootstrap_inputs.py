"""What the probe stage keeps for the bootstrap (METHOD.md stage 3, "single-filter performance"): per layer, the
smaller of the per-sample single-unit fields (N C L float32) and the test features (N C P, as the cache holds
them), saved, loaded and recorded; and an analysis whose bootstrap reads the features gives the claims and
intervals of one that reads the fields.

Expected values: the rule written out here in bytes, the test features captured here (not by the probe stage),
the fields as numpy products of those features and the probe weight; the end-to-end comparison sets the two routes
against each other within one machine's analysis (same probes, same resamples).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import filterlens
from filterlens import probes as probes_mod
from filterlens.analysis import LAYER_METRICS
from filterlens.capture import Capture, FeatureCache, capture_pass
from filterlens.config import Config
from filterlens.data import load_data
from filterlens.loaders import Feed, make_loader
from filterlens.models import ModelSpec, build_model, list_layers
from filterlens.pipeline import _has_bootstrap_inputs
from filterlens.precision import for_inference
from filterlens.probe_results import ProbeResult
from filterlens.probes import bootstrap_input, train_probes
from filterlens.rundir import RunDir

L = 10  # digits


@pytest.fixture(scope="module")
def setup():
    """digits (300 training, 150 test images), an untrained vgg_small: 6 layers of 16 to 64 units whose FC inputs
    have 64, 16, 16, 4, 4 and 1 positions per unit."""
    torch.manual_seed(0)
    data = load_data("digits", train_samples=300, test_samples=150)
    model = build_model(ModelSpec("vgg_small", L, 1, 8)).eval()
    return model, data, list_layers(model, (1, 8, 8))


def smaller(shape, n):
    """The bootstrap input with fewer bytes: the test features, 2 bytes a value (bfloat16 or float16), or the
    fields, 4 bytes a value; the fields on a tie."""
    c, p = shape[0], int(np.prod(shape[1:]))
    return "features" if n * c * p * 2 < n * c * L * 4 else "fields"


def test_the_rule_in_bytes():
    assert bootstrap_input((8, 2, 2), 3, 2) == "features"  # 8*4*2 = 64 < 8*3*4 = 96 bytes per input
    assert bootstrap_input((8, 1, 6), 3, 2) == "fields"  # 96 = 96: a tie keeps the fields
    assert bootstrap_input((8, 1, 5), 3, 2) == "features"  # 80 < 96
    assert bootstrap_input((8, 4, 4), 3, 2) == "fields"  # 256 > 96
    assert bootstrap_input((128, 2, 2), 1000, 2) == "features"  # VGG-16 at L = 1000
    assert bootstrap_input((3, 7, 5), 50, 4) == "features" and bootstrap_input((3, 7, 5), 30, 4) == "fields"
    assert [smaller(s, 150) for s in [(16, 8, 8), (16, 4, 4), (64, 1, 1)]] == ["fields", "features", "features"]


def captured_test(model, data, layers, dtype):
    """Every layer's test features, captured here in the precision the probes capture them, as a cache holds them
    (``dtype``), with the test labels in the order of the pass."""
    prec = for_inference("cpu", True, model)
    with Capture(model, layers, precision=prec) as cap:
        te = FeatureCache(cap.layers, len(data.test), dtype=dtype)
        capture_pass(cap, make_loader(data, "test", 64), [te])
        return {cl.name: te.features[cl.name].reshape(len(data.test), *cl.shape).clone() for cl in cap.layers}, \
            te.labels.clone()


@pytest.mark.parametrize("engine", ["memory", "disk", "stream"])
def test_probe_stage_keeps_the_smaller_input(setup, engine, tmp_path):
    """Fields where they are smaller (features.0: 64 positions per unit, 10 labels), the test features elsewhere
    (bfloat16 where the CPU computes in it, else float16); with probe_seeds 2 the other probe's fields, or its
    weight; saved, loaded and recorded per layer in probes.json; the pipeline sees them as the bootstrap's."""
    model, data, layers = setup
    cfg = Config(probe_epochs=2, seed=0, progress=False, engine=engine, probe_seeds=2)
    pr = train_probes(model, layers, Feed(data, seed=0), cfg, cache_dir=tmp_path / "cache", progress=False,
                      keep_fields=True)
    assert pr.engine == engine
    dtype = torch.bfloat16 if pr.precision["cache"] == "bfloat16" else torch.float16
    assert pr.precision["cache"] in ("bfloat16", "float16")
    feats, labels = captured_test(model, data, layers, dtype)
    n = len(data.test)
    assert torch.equal(pr.test_labels, labels)
    routes = [smaller(r.shape, n) for r in pr.layers]
    assert routes[0] == "fields" and routes[1:] == ["features"] * 5
    for r, route in zip(pr.layers, routes):
        a = feats[r.name].double().numpy().reshape(n, r.shape[0], -1)
        assert r.bootstrap_input == route, r.name
        if route == "fields":
            assert r.test_features is None and r.extra_weights is None
            assert r.fields.shape == (n, r.shape[0], L) and r.fields.dtype == torch.float32
            for f, w in zip([r.fields, *r.extra_fields], [r.weight, None]):
                if w is not None:  # the first probe's: the products of the captured features and its weight
                    want = np.einsum("ncp,jcp->ncj", a, w.double().numpy().reshape(L, r.shape[0], -1))
                    np.testing.assert_allclose(f.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
            assert len(r.extra_fields) == 1 and not torch.equal(r.extra_fields[0], r.fields)
        else:
            assert r.fields is None and r.extra_fields is None
            assert r.test_features.dtype == dtype and torch.equal(r.test_features, feats[r.name]), r.name
            assert len(r.extra_weights) == 1 and r.extra_weights[0].shape == r.weight.shape
            assert not torch.equal(r.extra_weights[0], r.weight)
        assert len(r.extra_accuracy) == 1
    # saved and loaded; probes.json says which, per layer
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    pr.save(rd.path)
    meta = json.loads((rd.path / "probes.json").read_text())
    assert [m["bootstrap_input"] for m in meta["layers"]] == routes
    assert meta["bootstrap_inputs_kept"] is True and meta["fields_kept"] is False
    assert _has_bootstrap_inputs(rd)
    back = ProbeResult.load(rd.path)
    assert torch.equal(back.test_labels, pr.test_labels)
    for x, y in zip(back.layers, pr.layers):
        assert x.bootstrap_input == y.bootstrap_input and x.extra_accuracy == y.extra_accuracy
        for attr in ("fields", "test_features"):
            a, b = getattr(x, attr), getattr(y, attr)
            assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), (x.name, attr)
        for attr in ("extra_fields", "extra_weights"):
            a, b = getattr(x, attr), getattr(y, attr)
            assert (a is None and b is None) or all(torch.equal(u, v) for u, v in zip(a, b)), (x.name, attr)


def test_without_bootstrap_nothing_is_kept(setup, tmp_path):
    model, data, layers = setup
    cfg = Config(probe_epochs=1, seed=0, progress=False, engine="memory")
    pr = train_probes(model, layers, Feed(data, seed=0), cfg, progress=False)
    assert all(r.bootstrap_input is None for r in pr.layers) and pr.test_labels is None
    rd = RunDir(tmp_path)
    pr.save(rd.path)
    meta = json.loads((rd.path / "probes.json").read_text())
    assert meta["bootstrap_inputs_kept"] is False and not _has_bootstrap_inputs(rd)
    assert [m["bootstrap_input"] for m in meta["layers"]] == [None] * len(layers)
    # a run of a filterlens that kept fields only and said so
    meta.pop("bootstrap_inputs_kept")
    meta["fields_kept"] = True
    (rd.path / "probes.json").write_text(json.dumps(meta))
    assert _has_bootstrap_inputs(rd)


# the bootstrap metrics whose replicates are counts (equal whichever input); snr_field is a ratio of field means
COUNT_METRICS = ["accuracy", *[k for k in LAYER_METRICS if k != "snr_field"]]


def test_analysis_reads_features_or_fields_alike(setup, monkeypatch):
    """filterlens.analyze with the bootstrap: every layer's fields forced, then every layer's test features
    forced (bootstrap_input patched): the same probes, the same intervals of every layer and metric (the field
    SNR to float32 rounding: the kept fields are float32) and the same claims."""
    model, data, _ = setup
    out = {}
    for route in ("fields", "features"):
        monkeypatch.setattr(probes_mod, "bootstrap_input", lambda *args, route=route: route)
        out[route] = filterlens.analyze(model, data, probe_epochs=3, bootstrap=20, heatmaps="none", top_images=0,
                                        engine="memory", progress=False)
    f, g = out["fields"], out["features"]
    assert set(f.meta["bootstrap"]["inputs"].values()) == {"fields"}
    assert set(g.meta["bootstrap"]["inputs"].values()) == {"features"}
    for x, y in zip(f.probes.layers, g.probes.layers):
        assert torch.equal(x.weight, y.weight) and x.fields is not None and y.test_features is not None
    rows_f, rows_g = f.meta["bootstrap"]["intervals"], g.meta["bootstrap"]["intervals"]
    assert [(r["layer"], r["metric"]) for r in rows_f] == [(r["layer"], r["metric"]) for r in rows_g]
    assert len(rows_f) == 6 * (1 + len(LAYER_METRICS))
    for a, b in zip(rows_f, rows_g):
        assert a["estimate"] == b["estimate"] or (a["estimate"] != a["estimate"] and b["estimate"] != b["estimate"])
        if a["metric"] in COUNT_METRICS:
            assert (a["low"], a["high"]) == pytest.approx((b["low"], b["high"]), rel=0, abs=0, nan_ok=True), a
        else:
            assert (a["low"], a["high"]) == pytest.approx((b["low"], b["high"]), rel=1e-5, nan_ok=True), a
    # the comparison has something to compare: intervals of some width, layers that differ
    assert any(r["low"] < r["high"] for r in rows_f if r["metric"] == "noise_per_filter_all" or
               r["metric"] == "accuracy")
    assert len(f.claims) == len(g.claims) == 5
    for a, b in zip(f.claims, g.claims):
        assert (a["claim"], a["metric"], a["verdict"], a["n"]) == (b["claim"], b["metric"], b["verdict"], b["n"])
        assert (a["value"], a["low"], a["high"]) == pytest.approx((b["value"], b["low"], b["high"]), rel=1e-6,
                                                                  nan_ok=True), a
    assert any(a["low"] is not None and a["low"] < a["high"] for a in f.claims)
    # and with the rule as it is, the layers split between the two inputs; the same probes again
    monkeypatch.undo()
    mixed = filterlens.analyze(model, data, probe_epochs=3, bootstrap=20, heatmaps="none", top_images=0,
                               engine="memory", progress=False)
    assert list(mixed.meta["bootstrap"]["inputs"].values()) == ["fields"] + ["features"] * 5
    assert [(r["low"], r["high"]) for r in mixed.meta["bootstrap"]["intervals"] if r["metric"] in COUNT_METRICS] \
        == [(r["low"], r["high"]) for r in rows_f if r["metric"] in COUNT_METRICS]
