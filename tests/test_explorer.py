"""The unit explorer of report.html and the top images behind each cluster (issue 19).

The top images are right: a planted layer whose fields are known gives, per unit and output unit, exactly the
test images with the largest fields, and per cluster the ones with the largest field on any of its outputs.
The page works in headless Chromium: clicking a layer and then a unit shows that unit's matrix and thumbnails,
the table sorts, the screenshot is not blank, and the page makes no request beyond its own file.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from browser import Page, chromium
from conftest import run_cli, tiny_toml
from filterlens import sfp
from filterlens.capture import CaptureLayer
from filterlens.models import Layer
from filterlens.probes import ProbeEval, ProbeRecipe, ProbeSet

TOML = tiny_toml("vgg_small", 2, 3)


def test_top_images_are_the_largest_fields_of_a_planted_layer():
    torch.manual_seed(0)
    C, L, H, W, n, k = 3, 5, 2, 2, 70, 4
    cl = CaptureLayer(Layer(0, "planted", C, (C, H, W)), (C, H, W))
    probes = ProbeSet([cl], L, ProbeRecipe.fast(1))
    weight = torch.randn(L, C * H * W)
    with torch.no_grad():
        probes.fcs["planted"].weight.copy_(weight)
    x = torch.randn(n, C, H, W)
    index = torch.randperm(1000)[:n]  # the samples' global test indices, in the order they are seen
    ev = ProbeEval(probes, top_k=k, test_index=index)
    for s in range(0, n, 16):  # several batches, as a test pass
        ev.update({"planted": x[s : s + 16]}, torch.zeros(min(16, n - s), dtype=torch.long))
    fields = torch.einsum("ncs,jcs->ncj", x.reshape(n, C, -1).double(), weight.reshape(L, C, -1).double())
    values, indices = ev.top["planted"]
    for c in range(C):
        for j in range(L):
            want = index[torch.argsort(fields[:, c, j], descending=True)[:k]]
            assert indices[c, j].tolist() == want.tolist()
            torch.testing.assert_close(values[c, j].double(), fields[:, c, j].sort(descending=True).values[:k])
    cluster = [1, 3]
    best = fields[:, 0, cluster].max(1).values  # a sample drives the cluster by its largest field on its outputs
    want = index[torch.argsort(best, descending=True)[:k]].tolist()
    assert sfp.top_samples(values[0], indices[0], cluster, k) == want


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("explorer")
    (base / "tiny.toml").write_text(TOML)
    rc, out, err = run_cli("run", base / "tiny.toml", "--run-dir", base / "run", "--no-progress",
                           "--explorer-units", "6", cwd=base)
    assert rc == 0, err
    return base / "run"


def test_report_stays_small_and_embeds_the_explorer(run):
    html = (run / "report.html").read_text()
    assert (run / "report.html").stat().st_size < 5 * 2**20
    assert "Unit explorer" in html and "--explorer-units" in html
    assert "http://" not in html and "https://" not in html


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_clicking_a_layer_then_a_unit_shows_its_matrix_and_thumbnails(run, tmp_path):
    from PIL import Image

    page = Page((run / "report.html").resolve().as_uri(), tmp_path / "profile")
    try:
        page.evaluate("document.querySelector('#fl-layers button[data-layer=\"2\"]').click()")
        rows = page.evaluate("document.querySelectorAll('#fl-units tr[data-unit]').length")
        assert rows == 32  # vgg_small's third layer: 32 filters
        noise_js = ("Array.from(document.querySelectorAll('#fl-units tr[data-unit]'))"
                    ".map(r => +r.children[4].textContent)")
        first = page.evaluate(noise_js)
        assert first == sorted(first, reverse=True) and first[0] > first[-1]  # the noisiest first
        page.evaluate("document.querySelector('#fl-units th[data-sort=\"noise\"]').click()")
        assert page.evaluate(noise_js) == sorted(first)  # a click on the header: the other way
        page.evaluate("document.querySelector('#fl-units tr[data-detail=\"1\"]').click()")
        detail = page.evaluate("""(() => { const d = document.getElementById('fl-detail');
            return {title: d.querySelector('h3').textContent, canvases: d.querySelectorAll('canvas').length,
                    clusters: d.querySelectorAll('.fl-cluster').length,
                    thumbs: d.querySelectorAll('img.fl-thumb').length,
                    loaded: Array.from(d.querySelectorAll('img.fl-thumb'))
                                 .every(i => i.complete && i.naturalWidth > 0)};
        })()""")
        assert detail["title"].startswith("features.2 filter") and detail["canvases"] == 2
        assert detail["clusters"] >= 1 and detail["thumbs"] >= 1 and detail["loaded"]
        page.evaluate("document.querySelector('#fl-units tr[data-detail=\"0\"]').click()")
        assert "Numbers only" in page.evaluate("document.getElementById('fl-detail').textContent")
        page.evaluate("document.querySelector('#fl-units tr[data-detail=\"1\"]').click()")
        shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        colours = len(set(np.asarray(shot).reshape(-1, 3)[::7].view("V3").ravel().tolist()))
        assert colours > 50, colours  # not a blank page: text, tables, two matrices, thumbnails
        outside = [u for u in page.requests if not u.startswith(("file://", "data:"))]
        assert outside == [], outside
    finally:
        page.close()


def test_run_unit_agrees_with_the_layer_analysis_and_refuses_bad_units(run):
    """``load_run(path).unit(layer, i)`` analyses one unit from the saved probe weights and label means: its
    clusters and noise are those the layer analysis wrote to filters.csv; every top image is a test index."""
    import csv

    from filterlens import load_run
    from filterlens.errors import FilterlensError

    r = load_run(run)
    names = r.results["label_names"]
    n_test = r.results["data"]["test_size"]
    with open(run / "filters.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows[::7]:
        u = r.unit(row["layer"], int(row["unit"]))
        assert "|".join("+".join(names[i] for i in c) for c in u.clusters) == row["clusters"]
        assert u.noise == float(row["noise"]) and u.unit_kind == row["unit_kind"]
        assert len(u.top_images) == len(u.clusters)
        assert all(0 <= i < n_test for ids in u.top_images for i in ids)
        assert all(1 <= len(ids) <= 8 for ids in u.top_images)
    layer = rows[0]["layer"]
    units = sum(1 for row in rows if row["layer"] == layer)
    for bad in (units, -1):
        with pytest.raises(FilterlensError, match="out of range"):
            r.unit(layer, bad)
    for bad in (True, "3", 1.0):  # the type is wrong, not the range
        with pytest.raises(FilterlensError, match=r"is a (bool|str|float); give an integer"):
            r.unit(layer, bad)
    with pytest.raises(FilterlensError, match="not analysed"):
        r.unit("no.such.layer", 0)
