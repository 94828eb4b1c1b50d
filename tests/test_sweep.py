"""Stage 4: the label-count study (filterlens.sweep)."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from filterlens.errors import FilterlensError
from filterlens.sweep import draw_subsets, fit_line, parse_counts


def _cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "filterlens", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=env, cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_matches_numpy_polyfit_and_scipy(seed):
    rng = np.random.default_rng(seed)
    x = np.array([3, 5, 7, 10, 20, 50], dtype=float)
    y = 0.02 + 0.004 * x + rng.normal(0, 0.01, len(x))
    f = fit_line(x, y)
    b, a = np.polyfit(x, y, 1)
    assert f["a"] == pytest.approx(a, abs=1e-12)
    assert f["b"] == pytest.approx(b, abs=1e-12)
    ref = stats.linregress(x, y)
    assert f["r2"] == pytest.approx(ref.rvalue ** 2, abs=1e-12)
    t = stats.t.ppf(0.975, len(x) - 2)
    assert f["b_low"] == pytest.approx(ref.slope - t * ref.stderr, abs=1e-12)
    assert f["b_high"] == pytest.approx(ref.slope + t * ref.stderr, abs=1e-12)


def test_fit_exact_line_and_degenerate_cases():
    f = fit_line([2, 4, 6], [1.0, 2.0, 3.0])  # y = 0 + 0.5 x exactly
    assert f["a"] == pytest.approx(0.0, abs=1e-12) and f["b"] == pytest.approx(0.5)
    assert f["r2"] == pytest.approx(1.0)
    assert math.isnan(fit_line([3], [0.1])["b"])
    assert math.isnan(fit_line([3, 3], [0.1, 0.2])["b"])


def test_subsets_are_seeded_distinct_and_full_set_once():
    a = draw_subsets(10, [3, 5, 10], 4, seed=7)
    b = draw_subsets(10, [3, 5, 10], 4, seed=7)
    c = draw_subsets(10, [3, 5, 10], 4, seed=8)
    assert a == b
    assert [t.labels for t in a] != [t.labels for t in c]
    for k in (3, 5):
        subs = [t.labels for t in a if t.num_labels == k]
        assert len(subs) == 4 and len(set(subs)) == 4
        for s in subs:
            assert len(s) == k and len(set(s)) == k and list(s) == sorted(s) and all(0 <= i < 10 for i in s)
    full = [t for t in a if t.num_labels == 10]
    assert len(full) == 1 and full[0].labels == tuple(range(10))
    # fewer distinct subsets exist than asked for: C(4, 3) = 4
    assert len(draw_subsets(4, [3], 9, seed=0)) == 4


def test_counts_out_of_range_are_errors():
    with pytest.raises(FilterlensError, match="out of range"):
        parse_counts("1,3", 10)
    with pytest.raises(FilterlensError, match="out of range"):
        parse_counts("3,11", 10)
    with pytest.raises(FilterlensError, match="empty"):
        parse_counts("", 10)
    assert parse_counts("5,3,5", 10) == [3, 5]


SWEEP = ["sweep", "--dataset", "digits", "--model", "vgg_tiny", "--num-labels", "3,5,10", "--subsets", "2",
         "--epochs", "3", "--probe-epochs", "3", "--seed", "1", "--no-progress"]


def test_sweep_interrupted_after_first_model_resumes_without_retraining(tmp_path):
    d = tmp_path / "sw"
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "filterlens", *SWEEP, "--run-dir", str(d)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    first = d / "L003-s1" / "task.json"
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the first model never finished"
    assert not (d / "sweep.csv").exists(), "the sweep finished before it could be interrupted"
    model_stat = (d / "L003-s1" / "model.pt").stat()
    task_bytes = first.read_bytes()
    r = _cli(*SWEEP, "--run-dir", str(d))
    assert r.returncode == 0, r.stderr
    assert "already done" in r.stdout
    assert (d / "L003-s1" / "model.pt").stat().st_mtime_ns == model_stat.st_mtime_ns
    assert first.read_bytes() == task_bytes
    rows = (d / "sweep.csv").read_text().splitlines()
    header = rows[0].split(",")
    for col in ("num_labels", "subset", "labels", "error", "last_layer_accuracy", "clusters_per_filter",
                "cluster_size", "noise_per_filter", "snr"):
        assert col in header
    assert len(rows) - 1 == 5  # 2 subsets of 3, 2 of 5, the full set once
    out = json.loads((d / "sweep.json").read_text())
    per = {c["num_labels"]: c for c in out["per_count"]}
    errs3 = [json.loads((d / f"L003-s{i}" / "task.json").read_text())["error"] for i in (1, 2)]
    assert per[3]["max_error"] == pytest.approx(max(errs3)) and per[3]["min_error"] == pytest.approx(min(errs3))
    xs = [3, 5, 10]
    b, a = np.polyfit(xs, [per[k]["max_error"] for k in xs], 1)
    assert out["fits"]["max_error"]["b"] == pytest.approx(b, abs=1e-9)
    # claims 4-5 (three label counts: enough for a verdict), printed after the fit
    got = {(c["claim"], c["metric"]): c for c in out["claims"]}
    assert set(got) == {(4, "cluster_size"), (4, "clusters_per_filter"), (4, "snr"), (4, "snr_median"),
                        (4, "snr_field"), (5, "max_error")}
    assert got[(5, "max_error")]["value"] == pytest.approx(b, abs=1e-9) and got[(5, "max_error")]["n"] == 3
    assert r.stdout.index("the papers' claims") > r.stdout.index("fit max_error")
    for col in ("snr_median", "snr_field"):
        assert col in header
    assert (d / "sweep_error.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a third start finds everything done
    r = _cli(*SWEEP, "--run-dir", str(d))
    assert r.returncode == 0 and "5 already done" in r.stdout


@pytest.mark.slow  # `make test-slow`: two shards and a whole sweep, trained
def test_shards_then_merge_equal_one_run(tmp_path):
    base = ["sweep", "--dataset", "digits", "--model", "vgg_tiny", "--num-labels", "3,4", "--subsets", "1",
            "--epochs", "2", "--probe-epochs", "2", "--seed", "3", "--no-progress"]
    one, split = tmp_path / "one", tmp_path / "split"
    assert _cli(*base, "--run-dir", str(one)).returncode == 0
    r0 = _cli(*base, "--run-dir", str(split), "--shard", "0/2")
    assert r0.returncode == 0 and "not done yet" in r0.stdout
    assert _cli(*base, "--run-dir", str(split), "--shard", "1/2").returncode == 0
    assert _cli(*base, "--run-dir", str(split), "--merge").returncode == 0
    a = json.loads((one / "sweep.json").read_text())["per_count"]
    b = json.loads((split / "sweep.json").read_text())["per_count"]
    assert [c["max_error"] for c in a] == [c["max_error"] for c in b]


def test_sweep_bad_input_is_one_line(tmp_path):
    r = _cli("sweep", "--dataset", "digits", "--num-labels", "3,12", "--run-dir", str(tmp_path / "x"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "12" in r.stderr and "2..10" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    r = _cli("sweep", "--dataset", "digits", "--shard", "3/2", "--run-dir", str(tmp_path / "y"))
    assert r.returncode == 2 and "3/2" in r.stderr


def test_the_error_figure_shows_L_on_a_linear_and_a_logarithmic_axis():
    """The papers' range, 3 to 1,000 labels, crowds the small counts at the left of a linear axis; the error
    figure draws the same points against log L beside it (issue 29, item 6)."""
    from filterlens.report.plots import sweep_figures

    per_count = [{"num_labels": n, "max_error": e, "mean_error": e / 2, "mean_cluster_size": 1.0,
                  "mean_clusters_per_filter": 1.0, "mean_snr": 1.0} for n, e in ((3, 0.0), (30, 0.02), (1000, 0.03))]
    rows = [{"num_labels": c["num_labels"], "error": c["max_error"]} for c in per_count]
    fits = {"max_error": {"a": 0.01, "b": 2e-05, "r2": 0.5}}
    figs = sweep_figures(per_count, fits, rows)
    assert sorted(figs) == ["sweep_clusters.png", "sweep_error.png"]
    axes = figs["sweep_error.png"].axes
    assert [ax.get_xscale() for ax in axes] == ["linear", "log"]
    for ax in axes:  # each panel: the two curves and the one fit line given
        assert any("fit 0.010" in t.get_text() for t in ax.get_legend().get_texts())
        assert sorted(x for line in ax.get_lines()[:1] for x in line.get_xdata()) == [3, 30, 1000]
