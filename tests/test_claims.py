"""The papers' claims as a run tests them (filterlens.claims; METHOD.md, "The papers' claims").

Planted runs whose metrics rise or fall with depth (and flat, noisy, short ones), planted sweeps and AFCC
results, each with the verdict its construction implies; the statistics against scipy's own
(``spearmanr``, ``linregress``, ``ttest_1samp``), never against the module's output. End to end: a tiny
digits run analysed with the real CLI prints the table and writes it to results.json (schema-valid),
report.html and compare's claims block.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import run_cli
from filterlens import claims
from filterlens.claims import FAILS, HOLDS, UNCLEAR

DEPTH_KEYS = ("accuracy", "snr", "snr_median", "snr_field", "noise_per_filter")


def planted_run(n_layers: int, slope: float, noise: float, n_boot: int = 200, seed: int = 0):
    """Layer rows and bootstrap replicates (n_boot, n_layers): every metric is ``base + slope * depth`` (noise per
    filter ``base - slope * depth``: it moves against the others) plus independent normal noise of sd ``noise``
    per layer and replicate."""
    rng = np.random.default_rng(seed)
    depth = np.arange(n_layers) / max(n_layers - 1, 1)
    rows = [{"layer": f"l{i}"} for i in range(n_layers)]
    reps = {}
    for key in DEPTH_KEYS:
        sign = -1 if key == "noise_per_filter" else 1
        centre = 2.0 + sign * slope * depth
        for i, r in enumerate(rows):
            r[key] = float(centre[i] + rng.normal(0, noise))
        reps[key] = centre[None, :] + rng.normal(0, noise, size=(n_boot, n_layers))
    return rows, reps


def by_metric(rows):
    return {r["metric"]: r for r in rows}


# ------------------------------------------------------------------------------ depth trends

def test_spearman_matches_scipy_with_ties_inf_and_nan():
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.normal(size=7)
        y = np.round(rng.normal(size=7), 0)  # ties
        assert claims.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert claims.spearman([0, 1, 2], [1.0, 2.0, math.inf]) == pytest.approx(1.0)
    assert claims.spearman([0, 1, 2, 3], [1.0, math.nan, 3.0, 2.0]) == pytest.approx(
        stats.spearmanr([0, 2, 3], [1.0, 3.0, 2.0]).statistic)
    assert math.isnan(claims.spearman([0, 1, 2], [5, 5, 5]))  # constant: undefined


def test_metrics_rising_with_depth_hold():
    rows, reps = planted_run(6, slope=1.0, noise=0.05)
    got = by_metric(claims.depth_claims(rows, reps))
    assert set(got) == set(DEPTH_KEYS)
    for key in DEPTH_KEYS:  # accuracy and every SNR rise, noise falls: every claim as the papers say
        r = got[key]
        assert r["verdict"] == HOLDS, r
        assert r["n"] == 6 and r["statistic"] == "spearman_rho"
        expected = stats.spearmanr(np.arange(6), [row[key] for row in rows]).statistic
        assert r["value"] == pytest.approx(expected)
        assert (r["low"] > 0) if key != "noise_per_filter" else (r["high"] < 0)
    assert [r["claim"] for r in claims.depth_claims(rows, reps)] == [1, 2, 2, 2, 3]


def test_metrics_falling_with_depth_do_not_hold():
    rows, reps = planted_run(6, slope=-1.0, noise=0.05)
    for r in claims.depth_claims(rows, reps):
        assert r["verdict"] == FAILS, r
        assert (r["high"] < 0) if r["metric"] != "noise_per_filter" else (r["low"] > 0)


def test_interval_is_the_percentile_interval_of_the_replicates():
    rows, reps = planted_run(5, slope=0.3, noise=0.3, n_boot=101, seed=4)
    got = by_metric(claims.depth_claims(rows, reps))
    for key in DEPTH_KEYS:
        per = [stats.spearmanr(np.arange(5), rep).statistic for rep in reps[key]]
        assert got[key]["low"] == pytest.approx(np.percentile(per, 2.5, method="lower"), abs=1e-12)
        assert got[key]["high"] == pytest.approx(np.percentile(per, 97.5, method="higher"), abs=1e-12)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_too_few_layers_cannot_tell(n_layers):
    rows, reps = planted_run(n_layers, slope=1.0, noise=0.01)
    for r in claims.depth_claims(rows, reps):
        assert r["verdict"] == UNCLEAR and r["n"] == n_layers and "needs 3" in r["detail"]


def test_flat_noisy_trend_cannot_tell():
    rows, reps = planted_run(6, slope=0.0, noise=1.0, seed=2)
    for r in claims.depth_claims(rows, reps):
        assert r["verdict"] == UNCLEAR, r
        assert r["low"] < 0 < r["high"]


def test_without_replicates_the_row_says_bootstrap_is_needed():
    rows, _ = planted_run(6, slope=1.0, noise=0.01)
    for r in claims.depth_claims(rows, None):
        assert r["verdict"] == UNCLEAR and "--bootstrap" in r["detail"]
        assert r["value"] == pytest.approx(1.0 if r["metric"] != "noise_per_filter" else -1.0)
        assert math.isnan(r["low"]) and math.isnan(r["high"])


def test_undefined_layers_and_replicates():
    rows, reps = planted_run(5, slope=1.0, noise=0.01)
    rows[0]["snr_median"] = math.nan  # no unit with a cluster in layer 0: that layer drops out
    reps["snr_median"][:, 0] = math.nan
    reps["snr"][:, :] = 2.0  # constant in every replicate: undefined correlations count as 0
    got = by_metric(claims.depth_claims(rows, reps))
    assert got["snr_median"]["n"] == 4 and got["snr_median"]["verdict"] == HOLDS
    assert got["snr"]["low"] == 0 and got["snr"]["high"] == 0 and got["snr"]["verdict"] == UNCLEAR
    assert "undefined" in got["snr"]["detail"]
    flat = [dict(r, accuracy=0.5) for r in rows]
    assert by_metric(claims.depth_claims(flat, reps))["accuracy"]["verdict"] == UNCLEAR


def test_snr_sentence_names_each_candidate():
    rows, reps = planted_run(6, slope=1.0, noise=0.05)
    reps["snr_median"] = reps["snr_median"][:, ::-1]  # falls
    reps["snr_field"] = np.random.default_rng(0).normal(size=reps["snr_field"].shape)  # no trend
    out = claims.depth_claims(rows, reps)
    assert [by_metric(out)[m]["verdict"] for m in claims.SNR_CANDIDATES] == [HOLDS, FAILS, UNCLEAR]
    text = claims.snr_sentence(out)
    assert "snr rises with depth" in text and "snr_median falls with depth" in text
    assert "snr_field the run cannot tell" in text
    none = claims.snr_sentence(claims.depth_claims(*planted_run(6, slope=-1.0, noise=0.05)))
    assert "none rises with depth" in none and "snr, snr_median and snr_field fall" in none


# ------------------------------------------------------------------------------ the sweep (claims 4-5)

def planted_sweep(counts, error, metric, snr, subsets=3, seed=0):
    """per_count and model rows: error(L) for the maximal error, metric(L, rng) per model for cluster size and
    clusters per filter, snr(L, rng) for every SNR candidate."""
    rng = np.random.default_rng(seed)
    models = [{"num_labels": L, "subset": s, "cluster_size": metric(L, rng), "clusters_per_filter": metric(L, rng),
               **{k: snr(L, rng) for k in claims.SNR_CANDIDATES}} for L in counts for s in range(subsets)]
    per_count = [{"num_labels": L, "max_error": error(L),
                  **{f"mean_{k}": float(np.mean([m[k] for m in models if m["num_labels"] == L]))
                     for k in ("cluster_size", "clusters_per_filter", *claims.SNR_CANDIDATES)}} for L in counts]
    return per_count, models


def test_linear_error_growth_holds_with_scipy_slope_and_interval():
    counts = [3, 5, 7, 10]
    per_count, models = planted_sweep(counts, lambda L: 0.01 + 0.02 * L + 0.001 * (-1) ** L,
                                      lambda L, r: 2 + r.normal(0, 0.02), lambda L, r: 3.0)
    row = [r for r in claims.sweep_claims(per_count, models) if r["claim"] == 5][0]
    ref = stats.linregress(counts, [c["max_error"] for c in per_count])
    t = stats.t.ppf(0.975, len(counts) - 2)
    assert row["value"] == pytest.approx(ref.slope)
    assert row["low"] == pytest.approx(ref.slope - t * ref.stderr) and row["high"] == pytest.approx(
        ref.slope + t * ref.stderr)
    assert ref.rvalue ** 2 >= 0.9 and row["verdict"] == HOLDS


def test_sweep_verdicts_other_way_and_cannot_tell():
    counts = [3, 5, 7, 10]
    falling = planted_sweep(counts, lambda L: 0.5 - 0.03 * L + 0.002 * (-1) ** L, lambda L, r: L / 2,
                            lambda L, r: 0.5)
    got = {(r["claim"], r["metric"]): r for r in claims.sweep_claims(*falling)}
    assert got[(5, "max_error")]["verdict"] == FAILS
    # cluster size L/2: the line changes by 0.5 * 7 / 3.25 = 108% of its mean over L = 3..10
    assert got[(4, "cluster_size")]["value"] == pytest.approx(0.5 * 7 / np.mean([L / 2 for L in counts]))
    assert got[(4, "cluster_size")]["verdict"] == FAILS
    assert all(got[(4, m)]["verdict"] == FAILS for m in claims.SNR_CANDIDATES)  # SNR 0.5 < 1 everywhere
    at5 = iter([0.95] * 3 + [1.2] * 3 + [1.3] * 3)  # the models at L = 5, each model its three SNR candidates
    noisy = planted_sweep(counts, lambda L: [0.3, 0.1, 0.35, 0.12][counts.index(L)],
                          lambda L, r: 2 + r.normal(0, 1.5), lambda L, r: 3.0 if L != 5 else next(at5), seed=3)
    got = {(r["claim"], r["metric"]): r for r in claims.sweep_claims(*noisy)}
    assert got[(5, "max_error")]["verdict"] == UNCLEAR  # the slope interval includes 0
    assert got[(4, "cluster_size")]["verdict"] == UNCLEAR  # the relative change's interval is wide
    assert got[(4, "cluster_size")]["low"] < -0.25 or got[(4, "cluster_size")]["high"] > 0.25
    # one model below 1 at L = 5, but the mean there is above 1: cannot tell whether it stays high
    snr5 = [m["snr"] for m in noisy[1] if m["num_labels"] == 5]
    assert min(snr5) < 1 < np.mean(snr5) and got[(4, "snr")]["verdict"] == UNCLEAR
    two = planted_sweep([3, 5], lambda L: 0.02 * L, lambda L, r: 2.0, lambda L, r: 3.0)
    assert {r["verdict"] for r in claims.sweep_claims(*two)} == {UNCLEAR}


def test_flat_cluster_metrics_and_high_snr_hold():
    counts = [3, 5, 7, 10]
    per_count, models = planted_sweep(counts, lambda L: 0.02 * L, lambda L, r: 2 + r.normal(0, 0.05),
                                      lambda L, r: 2 + r.random())
    got = {(r["claim"], r["metric"]): r for r in claims.sweep_claims(per_count, models)}
    for m in ("cluster_size", "clusters_per_filter"):
        pts = [(x["num_labels"], x[m]) for x in models]
        ref = stats.linregress(*zip(*pts))
        scale = 7 / np.mean([p[1] for p in pts])
        assert got[(4, m)]["value"] == pytest.approx(ref.slope * scale)
        assert -0.25 <= got[(4, m)]["low"] and got[(4, m)]["high"] <= 0.25 and got[(4, m)]["verdict"] == HOLDS
        assert got[(4, m)]["n"] == len(models)
    for m in claims.SNR_CANDIDATES:
        assert got[(4, m)]["verdict"] == HOLDS and got[(4, m)]["value"] == min(x[m] for x in models)


# ------------------------------------------------------------------------------ AFCC (claim 6)

def afcc(before, retrained, draws, dilution):
    return {"accuracy": {"before": before, "retrained": retrained, "random_retrained_draws": draws,
                         "random_retrained": float(np.mean(draws))}, "dilution_total": dilution}


def test_afcc_holds_with_scipy_interval():
    draws = [0.80, 0.82, 0.81, 0.79]
    (row,) = claims.afcc_claims(afcc(0.90, 0.895, draws, 0.8))
    ci = stats.ttest_1samp(draws, 0.0).confidence_interval(0.95)  # of the random draws' mean
    assert row["value"] == pytest.approx(0.895 - np.mean(draws))
    assert row["low"] == pytest.approx(0.895 - ci.high) and row["high"] == pytest.approx(0.895 - ci.low)
    assert row["claim"] == 6 and row["n"] == 4 and row["verdict"] == HOLDS


@pytest.mark.parametrize("case, args, verdict", [
    ("random beats AFCC", (0.90, 0.895, [0.95, 0.96, 0.94], 0.8), FAILS),
    ("large loss", (0.90, 0.80, [0.70, 0.71, 0.69], 0.8), FAILS),
    ("weak dilution", (0.90, 0.90, [0.80, 0.81, 0.79], 0.3), FAILS),
    ("one random draw", (0.90, 0.895, [0.80], 0.8), UNCLEAR),
    ("loss of 3 points", (0.90, 0.87, [0.80, 0.81, 0.79], 0.8), UNCLEAR),
    ("interval includes 0", (0.90, 0.895, [0.85, 0.95, 0.88], 0.8), UNCLEAR),
])
def test_afcc_rules(case, args, verdict):
    (row,) = claims.afcc_claims(afcc(*args))
    assert row["verdict"] == verdict, (case, row)
    if case == "one random draw":
        assert math.isnan(row["low"]) and "one draw" in row["detail"]


def test_merge_replaces_the_answered_claims():
    old = [{"claim": 1, "metric": "accuracy"}, {"claim": 6, "metric": "afcc_minus_random", "value": 0.1}]
    new = [{"claim": 6, "metric": "afcc_minus_random", "value": 0.2}]
    assert claims.merge(old, new) == [old[0], new[0]]


# ------------------------------------------------------------------------------ end to end

THREE = ["--dataset", "digits", "--model", "vgg", "--vgg-cfg", "8,8,M,16,M", "--epochs", "2", "--seed", "0",
         "--no-progress"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A three-layer VGG on digits, trained and analysed (with 30 bootstrap resamples) by the real CLI."""
    base = tmp_path_factory.mktemp("claims")
    run = base / "run"
    rc, out, err = run_cli("train", *THREE, "--run-dir", run, cwd=base)
    assert rc == 0, err
    rc, out, err = run_cli("analyze", "--run-dir", run, "--bootstrap", "30", "--probe-epochs", "3", "--no-progress",
                           cwd=base)
    assert rc == 0, err
    return run, out


def _rule_verdict(row):
    """The depth rule, written again here: the interval against 0 on the claimed side."""
    sign = -1 if row["metric"] == "noise_per_filter" else 1
    lo, hi = sorted((sign * row["low"], sign * row["high"]))
    return HOLDS if lo > 0 else FAILS if hi < 0 else UNCLEAR


def test_analyze_prints_and_saves_the_claims(analysed):
    import jsonschema
    import torch

    from filterlens.results import schema
    from filterlens.sfp import correct_from_features, correct_from_fields

    run, out = analysed
    lines = out.splitlines()
    table = next(i for i, l in enumerate(lines) if l.startswith("features.2"))
    head = next(i for i, l in enumerate(lines) if l.startswith("the papers' claims"))
    assert head > table  # after the layer table
    for metric in DEPTH_KEYS:
        assert any(l.split()[1:2] == [metric] for l in lines[head:]), metric
    res = json.loads((run / "results.json").read_text())
    jsonschema.validate(res, schema())
    rows = res["claims"]
    assert [(r["claim"], r["metric"]) for r in rows] == [(1, "accuracy"), (2, "snr"), (2, "snr_median"),
                                                          (2, "snr_field"), (3, "noise_per_filter")]
    with open(run / "layers.csv", newline="") as fh:
        layers = list(csv.DictReader(fh))
    assert len(layers) == 3
    for r in rows:
        values = [float(l[r["metric"]]) if l[r["metric"]] not in ("", "nan") else math.nan for l in layers]
        if all(math.isfinite(v) for v in values) and len(set(values)) > 1:
            assert r["value"] == pytest.approx(stats.spearmanr([0, 1, 2], values).statistic)
        assert r["n"] == 3 and r["low"] is not None and r["low"] <= r["high"]
        assert r["verdict"] == _rule_verdict(r), r
    # accuracy per replicate comes from the kept fields, or the test features times the weight: on the full test
    # set they give the probes' accuracy (the first layer, 64 positions per unit and 10 labels, keeps its fields;
    # the others, 16 and 4, their features)
    blob = torch.load(run / "label_means.pt", weights_only=True)
    weights = torch.load(run / "probes.pt", weights_only=True)
    probes = json.loads((run / "probes.json").read_text())
    assert [m["bootstrap_input"] for m in probes["layers"]] == ["fields", "features", "features"]
    for m in probes["layers"]:
        if m["bootstrap_input"] == "fields":
            correct = correct_from_fields(blob["fields"][m["name"]], blob["test_labels"])
        else:
            correct = correct_from_features(blob["features"][m["name"]], weights[m["name"]], blob["test_labels"])
        assert correct.mean() == pytest.approx(m["accuracy"], abs=1e-12)
    boot = (run / "bootstrap.csv").read_text()
    assert "features.0,accuracy," in boot and "features.2,snr_field," in boot


def test_report_and_compare_show_the_claims(analysed, tmp_path):
    run, _ = analysed
    rc, out, err = run_cli("report", run, cwd=tmp_path)
    assert rc == 0, err
    html = (run / "report.html").read_text()
    assert "The papers' claims" in html and "Of the SNR candidates" in html
    assert html.index("The papers' claims") < html.index("<h2>Layers</h2>")  # near the top
    rc, out, err = run_cli("compare", run, "--out", tmp_path / "cmp", cwd=tmp_path)
    assert rc == 0, err
    with open(tmp_path / "cmp" / "compare_claims.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    saved = json.loads((run / "results.json").read_text())["claims"]
    assert [(Path(r["run"]), int(r["claim"]), r["metric"], r["verdict"]) for r in got] == [
        (run, r["claim"], r["metric"], r["verdict"]) for r in saved]
    assert list(got[0]) == ["run", "claim", "metric", "unit_kind", "statistic", "value", "low", "high", "n", "verdict"]
    assert {r["unit_kind"] for r in got if r["claim"] in "123"} == {"filter"}  # a VGG run: its filters
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert "The papers' claims" in page and "spearman_rho" in page


def test_terminal_table_keeps_every_number_apart():
    # a negative eight-character bound once ran into the value before it: "0.002222-0.003298"
    row = {"claim": 6, "metric": "afcc_minus_random", "statistic": "accuracy_difference", "value": 0.002222,
           "low": -0.003298, "high": -0.0001234, "n": 3, "verdict": "cannot tell", "rule": "a rule"}
    line = claims.format_table([row])[2]
    fields = line.split()
    assert fields[3:7] == ["0.002222", "-0.003298", "-0.0001234", "3"], line


# ------------------------------------------------------------------------------ pooled over the seeds of a recipe

def _seed_run(rho_reps, metric="accuracy", claim=1, afcc=None):
    """A planted run: its depth row for one metric, with its replicates, and optionally its AFCC entry."""
    reps = np.asarray(rho_reps, dtype=float)
    low, high = claims.percentile_interval(reps)
    row = {"claim": claim, "metric": metric, "value": float(np.median(reps)), "low": low, "high": high,
           "verdict": claims.side_verdict(low, high, 1), "replicates": reps.tolist()}
    out = {"claims": [row]}
    if afcc is not None:
        out["afcc"] = afcc
    return out


def test_pooled_depth_claim_holds_when_seeds_agree_and_cannot_tell_when_they_disagree():
    rng = np.random.default_rng(1)
    agree = [_seed_run(rng.normal(m, 0.05, 200)) for m in (0.8, 0.7, 0.75)]
    row = next(r for r in claims.pooled_claims(agree) if r["metric"] == "accuracy")
    assert row["verdict"] == claims.HOLDS and (row["seeds_holds"], row["seeds_fails"]) == (3, 0)
    assert row["low"] > 0.6 and row["high"] < 0.85 and row["n"] == 3
    # two seeds rise, one falls as clearly: each seed's own verdict is firm, the recipe's cannot be told
    disagree = [_seed_run(rng.normal(m, 0.05, 200)) for m in (0.8, 0.7, -0.8)]
    row = next(r for r in claims.pooled_claims(disagree) if r["metric"] == "accuracy")
    assert (row["seeds_holds"], row["seeds_fails"]) == (2, 1)
    assert row["verdict"] == claims.UNCLEAR and row["low"] < 0 < row["high"]
    # the hierarchical interval by hand: its lowest resample is all three seeds at -0.8's level
    assert row["low"] < -0.5


def test_pooled_claims_need_two_seeds_with_replicates_and_are_reproducible():
    rng = np.random.default_rng(2)
    runs = [_seed_run(rng.normal(0.8, 0.05, 100))]
    assert claims.pooled_claims(runs)[0]["verdict"] == claims.UNCLEAR
    two = runs + [{"claims": [{**runs[0]["claims"][0], "replicates": []}]}]
    assert claims.pooled_claims(two)[0]["verdict"] == claims.UNCLEAR  # one seed lacks replicates
    three = [_seed_run(rng.normal(0.8, 0.05, 100)) for _ in range(3)]
    assert claims.pooled_claims(three) == claims.pooled_claims(three)


def test_pooled_afcc_from_every_seeds_draws():
    def afcc(retrained, draws, before=0.92, dilution=0.8):
        return {"accuracy": {"before": before, "retrained": retrained, "random_retrained_draws": draws},
                "dilution_total": dilution}

    better = [_seed_run([0.5] * 10, afcc=afcc(0.918, [0.91, 0.912, 0.909])) for _ in range(3)]
    row = next(r for r in claims.pooled_claims(better) if r["claim"] == 6)
    assert row["verdict"] == claims.HOLDS and row["value"] == pytest.approx(0.918 - np.mean([0.91, 0.912, 0.909]))
    worse = [_seed_run([0.5] * 10, afcc=afcc(0.90, [0.91, 0.912, 0.909])) for _ in range(3)]
    assert next(r for r in claims.pooled_claims(worse) if r["claim"] == 6)["verdict"] == claims.FAILS
    mixed = [_seed_run([0.5] * 10, afcc=afcc(r, [0.91, 0.911])) for r in (0.918, 0.905, 0.919)]
    assert next(r for r in claims.pooled_claims(mixed) if r["claim"] == 6)["verdict"] == claims.UNCLEAR
    thin = [_seed_run([0.5] * 10, afcc=afcc(0.918, [0.91, 0.912], dilution=0.3)) for _ in range(3)]
    assert next(r for r in claims.pooled_claims(thin) if r["claim"] == 6)["verdict"] == claims.FAILS


def test_depth_rows_carry_their_replicates():
    layers = [{"accuracy": a} for a in (0.5, 0.6, 0.7, 0.8)]
    reps = {"accuracy": np.array([[0.5, 0.6, 0.7, 0.8], [0.6, 0.5, 0.7, 0.8], [0.5, 0.6, 0.8, 0.7]])}
    row = next(r for r in claims.depth_claims(layers, reps) if r["metric"] == "accuracy")
    assert row["replicates"] == pytest.approx([1.0, 0.8, 0.8])  # Spearman of each replicate, by hand
    assert "replicates" not in next(r for r in claims.depth_claims(layers, None) if r["metric"] == "accuracy")
