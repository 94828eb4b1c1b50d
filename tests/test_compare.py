"""`filterlens compare`: three real runs (a VGG and a ResNet with filters, a ViT with heads) and a real
sweep, compared through the real CLI; the CSVs, the figures, bad inputs, and the page in headless Chromium."""
from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from browser import Page, chromium
from conftest import assert_user_error, run_cli

# flat keys; the rest as flags (every flag is a Config field)
TOML = 'dataset = "digits"\nmodel = "vgg_tiny"\nafcc = false\nheatmaps = "none"\n'
TINY = ["--epochs", "1", "--probe-epochs", "2", "--seed", "0", "--no-progress"]
# name -> flags over the TOML: every unit kind and a bootstrap band
RUNS = {"vgg": ["--bootstrap", "20"], "resnet": ["--model", "resnet20", "--image-size", "16"],
        "vit": ["--model", "vit_tiny_cifar"]}
FIGURES = ("depth_accuracy.png", "depth_snr.png", "depth_snr_median.png", "depth_snr_field.png", "depth_noise.png",
           "depth_cluster_size.png", "depth_clusters.png", "depth_no_cluster.png", "sweep_max_error.png",
           "sweep_mean_error.png")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """The three runs, the sweep, and `filterlens compare` of all four into out/."""
    root = tmp_path_factory.mktemp("compare")
    (root / "tiny.toml").write_text(TOML)
    for name, flags in RUNS.items():
        rc, out, err = run_cli("run", root / "tiny.toml", "--run-dir", root / name, *TINY, *flags, cwd=root)
        assert rc == 0, f"{name}:\n{out}\n{err}"
    rc, out, err = run_cli("sweep", "--dataset", "digits", "--model", "vgg_tiny", "--num-labels", "3,5",
                           "--subsets", "1", "--heatmaps", "none", *TINY, "--run-dir", root / "sweep", cwd=root)
    assert rc == 0, f"{out}\n{err}"
    rc, out, err = run_cli("compare", *(root / n for n in RUNS), root / "sweep", "--out", root / "out", cwd=root)
    assert rc == 0, f"{out}\n{err}"
    assert "compare.html" in out
    return root


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_one_row_per_run_and_layer_with_relative_depth(compared):
    rows = _csv(compared / "out" / "compare.csv")
    for name in RUNS:
        layers = _csv(compared / name / "layers.csv")
        mine = [r for r in rows if Path(r["run"]).name == name]
        assert [r["layer"] for r in mine] == [r["layer"] for r in layers]
        depths = [float(r["relative_depth"]) for r in mine]
        assert all(0 < d <= 1 for d in depths) and depths == sorted(depths) and depths[-1] == 1
        assert [int(r["position"]) for r in mine] == list(range(1, len(layers) + 1))
        assert [r["accuracy"] for r in mine] == [r["accuracy"] for r in layers]
    assert len(rows) == sum(len(_csv(compared / n / "layers.csv")) for n in RUNS)
    assert {r["unit_kind"] for r in rows} == {"filter", "head"}
    sweeps = _csv(compared / "out" / "compare_sweeps.csv")
    assert [int(r["num_labels"]) for r in sweeps] == [3, 5]
    assert all(float(r["min_error"]) <= float(r["mean_error"]) <= float(r["max_error"]) for r in sweeps)



def test_one_claims_row_per_run_or_sweep_and_claim(compared):
    import json

    rows = _csv(compared / "out" / "compare_claims.csv")
    for name in RUNS:
        saved = json.loads((compared / name / "results.json").read_text())["claims"]
        mine = [r for r in rows if Path(r["run"]).name == name]
        assert [(int(r["claim"]), r["metric"], r["verdict"]) for r in mine] == [
            (c["claim"], c["metric"], c["verdict"]) for c in saved]
        assert [int(r["claim"]) for r in mine] == [1, 2, 2, 2, 3]
    sweep = [r for r in rows if Path(r["run"]).name == "sweep"]
    assert sorted({int(r["claim"]) for r in sweep}) == [4, 5]
    assert {r["verdict"] for r in sweep} == {"cannot tell"}  # two label counts: too few for a sweep claim
    assert len(rows) == 3 * 5 + len(sweep)


def test_every_figure_is_a_png(compared):
    for name in FIGURES:
        assert (compared / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    html = (compared / "out" / "compare.html").read_text()
    assert html.count("<img") == len(FIGURES)
    for label in ("vgg_tiny on digits (10 labels, filters)", "resnet20 on digits (10 labels, filters)",
                  "vit_tiny_cifar on digits (10 labels, heads)"):
        assert label in html
    assert not list((compared / "out").glob(".*.tmp"))


@pytest.mark.parametrize("case", ["missing", "file", "empty", "untrained", "unfinished sweep"])
def test_bad_input_is_one_line_naming_it_and_writes_nothing(compared, tmp_path, case):
    bad = tmp_path / "bad"
    if case == "file":
        bad.write_text("not a run\n")
    elif case in ("empty", "untrained", "unfinished sweep"):
        bad.mkdir()
    if case == "untrained":  # claimed by a training that never finished: its config only
        shutil.copy(compared / "vgg" / "config.json", bad / "config.json")
    if case == "unfinished sweep":
        shutil.copy(compared / "sweep" / "sweep_plan.json", bad / "sweep_plan.json")
    before = sorted((p, p.stat().st_mtime_ns) for p in (compared / "vgg").rglob("*"))
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("compare", compared / "vgg", bad, "--out", out, cwd=tmp_path)
    line = assert_user_error(rc, stdout, stderr, f"'{bad}'", "finished run")
    assert not out.exists(), line
    assert sorted((p, p.stat().st_mtime_ns) for p in (compared / "vgg").rglob("*")) == before


def test_output_that_is_an_input_is_refused(compared):
    before = sorted((p, p.stat().st_mtime_ns) for p in (compared / "vit").rglob("*"))
    rc, out, err = run_cli("compare", compared / "vgg", compared / "vit", "--out", compared / "vit", cwd=compared)
    assert_user_error(rc, out, err, str(compared / "vit"), "one of the inputs")
    assert sorted((p, p.stat().st_mtime_ns) for p in (compared / "vit").rglob("*")) == before


def test_run_holding_a_sweep_counts_as_both_and_changed_files_are_refused(compared, tmp_path):
    from filterlens.errors import FilterlensError
    from filterlens.report import build_compare

    both = shutil.copytree(compared / "vgg", tmp_path / "vgg")
    shutil.copytree(compared / "sweep", both / "sweep")
    out = tmp_path / "out"
    build_compare([compared / "vgg", both], out)
    html = (out / "compare.html").read_text()
    # same model and data: the folder tells the two lines apart
    assert html.count("<img") == len(FIGURES) and f"[{both}]" in html
    assert {r["sweep"] for r in _csv(out / "compare_sweeps.csv")} == {str(both / "sweep")}
    build_compare([compared / "vit"], out)  # no sweep now: the earlier sweep files go
    assert not (out / "compare_sweeps.csv").exists() and not (out / "sweep_max_error.png").exists()
    assert (out / "compare.html").read_text().count("<img") == len(FIGURES) - 2
    (both / "layers.csv").write_text((both / "layers.csv").read_text().replace("features.1", "features.9"))
    with pytest.raises(FilterlensError, match="layers.csv' changed since stage sfp"):
        build_compare([both], tmp_path / "out2")
    (both / "sweep" / "sweep.json").write_text("{}")
    with pytest.raises(FilterlensError, match="sweep.json' is damaged"):
        build_compare([both / "sweep"], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_loads_every_image_and_requests_nothing(compared, tmp_path):
    page_file = compared / "out" / "compare.html"
    html = page_file.read_text()
    assert not re.search(r"https?://", html), "the page names a URL"
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', html))
    assert "href=" not in html and "@import" not in html and "url(" not in html
    page = Page(page_file.resolve().as_uri(), tmp_path / "profile")
    try:
        n = len(FIGURES)
        assert page.evaluate("document.body.getAttribute('data-images-loaded')") == f"{n}/{n}"
        outside = [u for u in page.requests if not u.startswith(("file://", "data:"))]
        assert outside == [], outside  # Chromium's own network log: no request leaves the file
    finally:
        page.close()
