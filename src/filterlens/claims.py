"""The papers' claims as a run can test them (METHOD.md, "The papers' claims").

One row per claim and metric: the statistic, its 95% interval, a verdict (``holds``, ``does not hold``,
``cannot tell``) and the rule that gave it, written out. Pure: numbers in, rows out; no plotting, no files.

1. The accuracy of the layers rises with depth.             -> :func:`depth_claims`
2. The SNR rises with depth (one row per SNR candidate).     -> :func:`depth_claims`
3. Noise per filter falls with depth.                        -> :func:`depth_claims`
4. At the last layer, cluster size and clusters per filter hardly depend on the number of labels L, and
   the SNR stays high.                                       -> :func:`sweep_claims`
5. The maximal error rate grows about linearly with L.      -> :func:`sweep_claims`
6. AFCC dilutes strongly with little loss of accuracy and beats a random dilution of the same size.
                                                             -> :func:`afcc_claims`

Every threshold of these rules is a constant below, fixed before any run was judged by it; a rule is
never tuned to make a claim hold.

Claims 1-3 are tested per unit kind: a run whose layers mix kinds (a ViT's heads and its MLPs' nodes, a VGG's
filters and its classifier's nodes) gets one set of depth rows per kind, each over that kind's layers in depth
order (its own relative depth), marked by the row's ``unit_kind``. A head layer and an MLP node layer of the same
block are different measurements of different units; one rank correlation over both would mix the two.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "cannot tell"
VERDICTS = (HOLDS, FAILS, UNCLEAR)

#: Confidence level of every interval in the table.
LEVEL = 0.95
#: A depth trend needs at least this many layers with a value (METHOD.md).
MIN_LAYERS = 3
#: A sweep claim needs at least this many label counts.
MIN_LABEL_COUNTS = 3
#: Claim 5: "about linearly" needs a least-squares line of the maximal error against L with R^2 >= this.
LINEAR_R2 = 0.9
#: Claim 4: "hardly depends on L" allows the fitted line to change by at most this fraction of the metric's
#: mean over the whole range of L in the sweep.
FLAT_MAX_CHANGE = 0.25
#: Claim 4: a "high" SNR is above this value: signal exceeds noise (for the count SNR: more signal elements
#: than noise elements per filter).
HIGH_SNR = 1.0
#: Claim 6: "strongly diluted" means at least this fraction of the masked weights removed.
AFCC_MIN_DILUTION = 0.5
#: Claim 6: "without affecting accuracy" allows at most this accuracy loss (before - retrained; 0.01 = 1 point).
AFCC_MAX_LOSS = 0.01
#: Claim 6: a loss above this (5 points) is a large loss: the claim does not hold.
AFCC_LARGE_LOSS = 0.05

CLAIMS = {
    1: "The accuracy of the layers rises with depth.",
    2: "The SNR rises with depth.",
    3: "Noise per filter falls with depth.",
    4: "At the last layer, mean cluster size and clusters per filter hardly depend on the number of labels L, "
       "and the SNR stays high.",
    5: "The maximal error rate grows about linearly with L.",
    6: "AFCC dilutes the network strongly with little loss of accuracy, and beats a random dilution of the same "
       "size.",
}
#: The SNR candidates of METHOD.md ("SNR candidates"), the default first.
SNR_CANDIDATES = ("snr", "snr_median", "snr_field")
#: (claim, layers.csv column, claimed direction: +1 rises, -1 falls with depth).
DEPTH_METRICS = ((1, "accuracy", 1), *((2, m, 1) for m in SNR_CANDIDATES), (3, "noise_per_filter", -1))
#: The columns of a claims row, in order.
COLUMNS = ["claim", "text", "metric", "statistic", "value", "low", "high", "n", "verdict", "rule", "detail"]

DEPTH_RULE = ("Spearman rank correlation of the metric with relative depth (layer position / (n - 1)) over the "
              f"layers where it is defined; {LEVEL:.0%} percentile interval over the bootstrap replicates (each "
              "replicate resamples the same test images in every layer; a replicate where the correlation is "
              "undefined counts as 0). Holds when the whole interval is on the claimed side of 0, does not hold "
              "when it is wholly on the other side, cannot tell otherwise, with fewer than "
              f"{MIN_LAYERS} layers, or without bootstrap replicates.")
FLAT_RULE = ("Least-squares line of the metric against L over the sweep's models (one point per trained model), "
             f"{LEVEL:.0%} t interval of its slope b; relative change = b (L_max - L_min) / mean of the metric. "
             f"Holds when the whole interval of the relative change lies within +-{FLAT_MAX_CHANGE:g}, does not "
             f"hold when it lies wholly outside, cannot tell otherwise or with fewer than {MIN_LABEL_COUNTS} "
             "label counts.")
HIGH_SNR_RULE = (f"SNR of the last layer of every model of the sweep. Holds when every model's SNR is above "
                 f"{HIGH_SNR:g}, does not hold when the mean SNR at some label count is below {HIGH_SNR:g}, cannot "
                 f"tell otherwise (e.g. an undefined SNR) or with fewer than {MIN_LABEL_COUNTS} label counts.")
LINEAR_RULE = (f"Least-squares line of the maximal error (over each count's label subsets) against L, {LEVEL:.0%} "
               f"t interval of its slope b. Holds when the interval is above 0 and R^2 >= {LINEAR_R2:g}, does not "
               "hold when the interval is below 0 (the maximal error falls with L), cannot tell otherwise or with "
               f"fewer than {MIN_LABEL_COUNTS} label counts.")
AFCC_RULE = ("Difference of the retrained accuracy of AFCC and of the random control (same number of kept "
             f"connections), {LEVEL:.0%} t interval over the random draws. Holds when the dilution is >= "
             f"{AFCC_MIN_DILUTION:g}, the loss (accuracy before - retrained) is <= {AFCC_MAX_LOSS:g} and the "
             f"interval is above 0; does not hold when the interval is below 0, the loss is > {AFCC_LARGE_LOSS:g} "
             f"or the dilution is < {AFCC_MIN_DILUTION:g}; cannot tell otherwise (or with one random draw, no "
             "interval).")


def _row(claim: int, metric: str, statistic: str, value: float, low: float, high: float, n: int, verdict: str,
         rule: str, detail: str = "") -> dict[str, Any]:
    return {"claim": claim, "text": CLAIMS[claim], "metric": metric, "statistic": statistic, "value": _f(value),
            "low": _f(low), "high": _f(high), "n": int(n), "verdict": verdict, "rule": rule, "detail": detail}


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ------------------------------------------------------------------------------ statistics

def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation (average ranks for ties) of the pairs where both are not nan (inf ranks
    last); nan with fewer than 2 such pairs or when either side is constant."""
    from scipy.stats import rankdata

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 2:
        return math.nan
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else math.nan


def percentile_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval: the (1 - level)/2 quantile (method "lower") and the (1 + level)/2 quantile (method
    "higher") of the values that are not nan; (nan, nan) when none is."""
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    return (float(np.percentile(arr, 100 * alpha, method="lower")),
            float(np.percentile(arr, 100 * (1 - alpha), method="higher")))


def fit_line(x, y, level: float = LEVEL) -> dict:
    """Least-squares ``y = a + b*x``: a, b, R^2, the standard error and a ``level`` t interval for b."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return {"a": math.nan, "b": math.nan, "r2": math.nan, "b_low": math.nan, "b_high": math.nan, "n": n}
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    b = ((x - xm) * (y - ym)).sum() / sxx
    a = ym - b * xm
    resid = y - (a + b * x)
    ss_res, ss_tot = (resid ** 2).sum(), ((y - ym) ** 2).sum()
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    if n > 2:
        from scipy import stats

        se = math.sqrt(ss_res / (n - 2) / sxx)
        t = stats.t.ppf(0.5 + level / 2, n - 2)
        lo, hi = b - t * se, b + t * se
    else:
        se, lo, hi = math.nan, math.nan, math.nan
    return {"a": float(a), "b": float(b), "r2": float(r2), "b_se": se, "b_low": lo, "b_high": hi, "n": n}


def side_verdict(low: float, high: float, direction: int) -> str:
    """Holds when the whole interval [low, high] is strictly on the claimed side of 0 (``direction`` +1: above,
    -1: below), does not hold when it is strictly on the other side, cannot tell otherwise (or nan)."""
    lo, hi = direction * low, direction * high
    if math.isnan(lo) or math.isnan(hi):
        return UNCLEAR
    lo, hi = min(lo, hi), max(lo, hi)
    return HOLDS if lo > 0 else FAILS if hi < 0 else UNCLEAR


# ------------------------------------------------------------------------------ claims 1-3: depth

def depth_claims(layers: Sequence[Mapping], replicates: Mapping[str, Any] | None = None,
                 level: float = LEVEL) -> list[dict]:
    """Claims 1-3 from a run's layer rows (in depth order) and, when the analysis bootstrapped, the replicates:
    ``replicates[metric]`` an array (n_boot, n_layers), replicate b computed on the same resample of the test
    images in every layer (:func:`filterlens.sfp.resample_counts`). Per unit kind (the rows' ``unit_kind``,
    ``filter`` when absent): one set of rows per kind, in the order the kinds first appear, each row marked
    with its ``unit_kind``."""
    kinds = list(dict.fromkeys(str(r.get("unit_kind") or "filter") for r in layers))
    rows = []
    for kind in kinds:
        at = [i for i, r in enumerate(layers) if str(r.get("unit_kind") or "filter") == kind]
        reps = None if replicates is None else {
            k: np.asarray(v, dtype=np.float64).reshape(-1, len(layers))[:, at] for k, v in replicates.items()}
        rows += [{**row, "unit_kind": kind} for row in _depth_rows([layers[i] for i in at], reps, level)]
    return rows


def _depth_rows(layers: Sequence[Mapping], replicates: Mapping[str, Any] | None, level: float) -> list[dict]:
    """Claims 1-3 over layers of one unit kind (see :func:`depth_claims`)."""
    n_layers = len(layers)
    depth = np.arange(n_layers) / max(n_layers - 1, 1)
    rows = []
    for claim, metric, direction in DEPTH_METRICS:
        values = np.array([_f(r.get(metric)) for r in layers], dtype=np.float64)
        n = int((~np.isnan(values)).sum())
        rho = spearman(depth, values) if n >= MIN_LAYERS else math.nan
        reps = None if replicates is None else replicates.get(metric)
        low = high = math.nan
        detail = ""
        replicate_stats = None
        if n < MIN_LAYERS:
            verdict, detail = UNCLEAR, f"{n} layer(s) with a value; a trend needs {MIN_LAYERS}"
        elif reps is None or np.size(reps) == 0:
            verdict, detail = UNCLEAR, "needs --bootstrap N (no bootstrap replicates: no interval)"
        else:
            reps = np.asarray(reps, dtype=np.float64).reshape(-1, n_layers)
            per = np.array([spearman(depth, rep) if (~np.isnan(rep)).sum() >= MIN_LAYERS else math.nan
                            for rep in reps])
            replicate_stats = per
            undefined = int(np.isnan(per).sum())
            low, high = percentile_interval(np.nan_to_num(per, nan=0.0), level)
            verdict = side_verdict(low, high, direction) if not math.isnan(rho) else UNCLEAR
            detail = (f"{len(reps)} bootstrap replicates" + (f", {undefined} undefined (counted as 0)" if undefined
                                                             else "")
                      + ("" if not math.isnan(rho) else "; the metric is constant over the layers"))
        side = "rises" if direction > 0 else "falls"
        row = _row(claim, metric, "spearman_rho", rho, low, high, n, verdict,
                   f"claimed: {metric} {side} with depth. " + DEPTH_RULE, detail)
        if replicate_stats is not None:  # each replicate's statistic, for pooling over seeds
            row["replicates"] = [float(v) for v in np.nan_to_num(replicate_stats, nan=0.0)]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ claims 4-5: the sweep

def sweep_claims(per_count: Sequence[Mapping], models: Sequence[Mapping] | None = None,
                 level: float = LEVEL) -> list[dict]:
    """Claims 4 and 5 from a label-count sweep: ``per_count`` (one row per L: ``num_labels``, ``max_error``,
    ``mean_<metric>``) and ``models`` (one row per trained model: ``num_labels`` and the last layer's
    ``cluster_size``, ``clusters_per_filter`` and SNR candidates); the per-count means stand in for the models
    when ``models`` is None."""
    per_count = sorted(per_count, key=lambda c: c["num_labels"])
    counts = [int(c["num_labels"]) for c in per_count]
    if models is None:
        models = [{"num_labels": c["num_labels"], **{k[5:]: v for k, v in c.items() if k.startswith("mean_")}}
                  for c in per_count]
    few = len(counts) < MIN_LABEL_COUNTS
    why = f"{len(counts)} label count(s); a sweep claim needs {MIN_LABEL_COUNTS}"
    rows = [_flat_row(metric, models, counts, few, why, level) for metric in ("cluster_size", "clusters_per_filter")]
    rows += [_high_snr_row(metric, models, per_count, few, why) for metric in SNR_CANDIDATES]
    fit = fit_line(counts, [_f(c.get("max_error")) for c in per_count], level)
    if few or any(math.isnan(_f(fit.get(k))) for k in ("b", "b_low", "b_high")):
        verdict = UNCLEAR
    elif fit["b_low"] > 0 and _f(fit["r2"]) >= LINEAR_R2:
        verdict = HOLDS
    else:
        verdict = FAILS if fit["b_high"] < 0 else UNCLEAR
    detail = why if few else f"R^2 {_f(fit['r2']):.3f}, a = {_f(fit['a']):.4f}, L {counts[0]}..{counts[-1]}"
    rows.append(_row(5, "max_error", "slope_per_label", fit["b"], fit["b_low"], fit["b_high"], len(counts), verdict,
                     LINEAR_RULE, detail))
    return rows


def _flat_row(metric: str, models: Sequence[Mapping], counts: list[int], few: bool, why: str, level: float) -> dict:
    pts = [(float(m["num_labels"]), _f(m.get(metric))) for m in models]
    pts = [(x, y) for x, y in pts if math.isfinite(y)]
    fit = fit_line([p[0] for p in pts], [p[1] for p in pts], level)
    mean = float(np.mean([p[1] for p in pts])) if pts else math.nan
    span = (counts[-1] - counts[0]) if counts else 0
    scale = span / mean if mean > 0 else math.nan
    value, low, high = (_f(fit[k]) * scale for k in ("b", "b_low", "b_high"))
    if few or any(math.isnan(v) for v in (low, high)):
        verdict = UNCLEAR
    elif -FLAT_MAX_CHANGE <= low and high <= FLAT_MAX_CHANGE:
        verdict = HOLDS
    else:
        verdict = FAILS if (low > FLAT_MAX_CHANGE or high < -FLAT_MAX_CHANGE) else UNCLEAR
    detail = why if few else (f"slope {_f(fit['b']):.4g} per label [{_f(fit['b_low']):.4g}, "
                              f"{_f(fit['b_high']):.4g}], mean {mean:.4g}, L {counts[0]}..{counts[-1]}")
    return _row(4, metric, "relative_change", value, low, high, len(pts), verdict, FLAT_RULE, detail)


def _high_snr_row(metric: str, models: Sequence[Mapping], per_count: Sequence[Mapping], few: bool, why: str) -> dict:
    vals = [_f(m.get(metric)) for m in models]
    means = {int(c["num_labels"]): _f(c.get(f"mean_{metric}")) for c in per_count}
    lowest = min(vals) if vals and not any(math.isnan(v) for v in vals) else math.nan
    if few or not vals:
        verdict = UNCLEAR
    elif any(v < HIGH_SNR for v in means.values()):  # nan < x is False
        verdict = FAILS
    else:
        verdict = HOLDS if (not math.isnan(lowest) and lowest > HIGH_SNR) else UNCLEAR
    detail = why if few else "mean per L: " + ", ".join(f"{k}: {v:.3g}" for k, v in means.items())
    return _row(4, metric, "lowest_model_snr", lowest, math.nan, math.nan, len(vals), verdict, HIGH_SNR_RULE, detail)


# ------------------------------------------------------------------------------ claim 6: AFCC

def afcc_claims(afcc: Mapping, level: float = LEVEL) -> list[dict]:
    """Claim 6 from results.json's ``afcc`` entry: ``accuracy`` (``before``, ``retrained``,
    ``random_retrained_draws`` or ``random_retrained``) and ``dilution_total``."""
    acc = afcc.get("accuracy") or {}
    draws = [_f(v) for v in (acc.get("random_retrained_draws") or [acc.get("random_retrained")])]
    draws = [v for v in draws if not math.isnan(v)]
    retrained, before = _f(acc.get("retrained")), _f(acc.get("before"))
    dilution, loss = _f(afcc.get("dilution_total")), before - retrained
    n = len(draws)
    diff = retrained - float(np.mean(draws)) if n else math.nan
    low = high = math.nan
    if n >= 2:
        from scipy import stats

        half = stats.t.ppf(0.5 + level / 2, n - 1) * float(np.std(draws, ddof=1)) / math.sqrt(n)
        low, high = diff - half, diff + half
    if high < 0 or loss > AFCC_LARGE_LOSS or dilution < AFCC_MIN_DILUTION:
        verdict = FAILS
    elif low > 0 and loss <= AFCC_MAX_LOSS and dilution >= AFCC_MIN_DILUTION:
        verdict = HOLDS
    else:
        verdict = UNCLEAR
    detail = (f"dilution {dilution:.3f}, loss {loss:.4f} (before {before:.4f}, retrained {retrained:.4f}), "
              f"{n} random draw(s)" + ("; one draw: no interval" if n == 1 else ""))
    return [_row(6, "afcc_minus_random", "accuracy_difference", diff, low, high, n, verdict, AFCC_RULE, detail)]


# ------------------------------------------------------------------------------ pooled over the seeds of a recipe

#: Pooling needs at least this many seeds (runs of one recipe).
MIN_SEEDS = 2
#: Resamples of the hierarchical bootstrap of a pooled statistic.
POOL_RESAMPLES = 4000
POOLED_DEPTH_RULE = ("Mean over the seeds of each seed's Spearman rank correlation with relative depth; "
                     f"{LEVEL:.0%} percentile interval of a hierarchical bootstrap ({POOL_RESAMPLES} resamples): "
                     "draw the seeds with replacement, then for each drawn seed one of its own bootstrap "
                     "replicates (which resample its test images and, with probe_seeds > 1, its probes' training), "
                     "and average. Holds when the whole interval is on the claimed side of 0, does not hold when "
                     "it is wholly on the other side, cannot tell otherwise or with fewer than "
                     f"{MIN_SEEDS} seeds that have replicates.")
POOLED_AFCC_RULE = ("Mean over the seeds of (AFCC's retrained accuracy - the mean of that seed's random draws); "
                    f"{LEVEL:.0%} percentile interval of a hierarchical bootstrap ({POOL_RESAMPLES} resamples): "
                    "draw the seeds with replacement, then each drawn seed's random draws with replacement, and "
                    f"average the differences. Holds when the interval is above 0, every seed's dilution is >= "
                    f"{AFCC_MIN_DILUTION:g} and the mean loss (before - retrained) is <= {AFCC_MAX_LOSS:g}; does "
                    f"not hold when the interval is below 0, the mean loss is > {AFCC_LARGE_LOSS:g} or the mean "
                    f"dilution is < {AFCC_MIN_DILUTION:g}; cannot tell otherwise or with fewer than {MIN_SEEDS} "
                    "seeds.")


def pooled_claims(runs: Sequence[Mapping], level: float = LEVEL, resamples: int = POOL_RESAMPLES,
                  seed: int = 0) -> list[dict]:
    """Claims 1-3 and 6 pooled over the runs of one recipe (one run per training seed).

    ``runs``: one mapping per seed with ``claims`` (its results.json rows; depth rows carry ``replicates``, the
    per-replicate statistic) and, for claim 6, ``afcc`` (its results.json ``afcc`` entry). Returns one row per
    claim and metric: the pooled statistic with its interval and verdict (the rules above), how many seeds hold,
    do not hold and cannot tell on their own (``seeds_holds``, ``seeds_fails``, ``seeds_unclear``) and the
    per-seed statistics (``per_seed``). The resampling is seeded by ``seed``: the same runs give the same rows.
    """
    rng = np.random.default_rng(seed)
    rows = []
    kinds = list(dict.fromkeys(r.get("unit_kind") for run in runs for r in run.get("claims") or []
                               if r.get("claim") in (1, 2, 3)))
    for kind, (claim, metric, direction) in ((k, m) for k in kinds for m in DEPTH_METRICS):
        per = [next((r for r in run.get("claims") or [] if r.get("claim") == claim and r.get("metric") == metric
                     and r.get("unit_kind") == kind), None) for run in runs]
        have = [r for r in per if r is not None]
        if not have:
            continue
        stats = [_f(r.get("value")) for r in have]
        reps = [np.asarray(r.get("replicates") or [], dtype=np.float64) for r in have]
        usable = [x for x in reps if x.size]
        value = float(np.nanmean(stats)) if any(not math.isnan(v) for v in stats) else math.nan
        low = high = math.nan
        if len(usable) < MIN_SEEDS or len(usable) < len(have):
            verdict = UNCLEAR
            detail = (f"{len(usable)} of {len(have)} seed(s) with bootstrap replicates; pooling needs every seed's "
                      f"and at least {MIN_SEEDS}")
        else:
            pooled = _hierarchical_means(usable, resamples, rng)
            low, high = percentile_interval(pooled, level)
            verdict = side_verdict(low, high, direction) if not math.isnan(value) else UNCLEAR
            detail = f"{len(usable)} seeds, {resamples} hierarchical resamples"
        side = "rises" if direction > 0 else "falls"
        rows.append(_pooled_row(claim, metric, "mean_spearman_rho", value, low, high, per, verdict,
                                f"claimed: {metric} {side} with depth. " + POOLED_DEPTH_RULE, detail))
        if kind is not None:
            rows[-1]["unit_kind"] = kind
    afcc = [run.get("afcc") for run in runs]
    if any(isinstance(a, Mapping) for a in afcc):
        rows.append(_pooled_afcc(runs, afcc, level, resamples, rng))
    return rows


def _hierarchical_means(groups: Sequence[np.ndarray], resamples: int, rng) -> np.ndarray:
    """Means of ``resamples`` hierarchical resamples: as many groups as there are, drawn with replacement, and one
    value drawn from each drawn group."""
    k = len(groups)
    chosen = rng.integers(0, k, size=(resamples, k))
    values = np.empty((resamples, k))
    for g, vals in enumerate(groups):
        mask = chosen == g
        values[mask] = vals[rng.integers(0, vals.size, size=int(mask.sum()))]
    return values.mean(axis=1)


def _pooled_afcc(runs, afcc, level: float, resamples: int, rng) -> dict:
    per = [next((r for r in run.get("claims") or [] if r.get("claim") == 6), None) for run in runs]
    diffs, losses, dilutions = [], [], []
    for a in afcc:
        if not isinstance(a, Mapping):
            continue
        acc = a.get("accuracy") or {}
        listed = [_f(v) for v in (acc.get("random_retrained_draws") or [acc.get("random_retrained")])]
        draws = np.array([v for v in listed if not math.isnan(v)])
        retrained = _f(acc.get("retrained"))
        diffs.append(retrained - draws)
        losses.append(_f(acc.get("before")) - retrained)
        dilutions.append(_f(a.get("dilution_total")))
    value = float(np.mean([d.mean() for d in diffs if d.size])) if any(d.size for d in diffs) else math.nan
    loss, dilution = float(np.mean(losses)), float(np.mean(dilutions))
    low = high = math.nan
    if len(diffs) >= MIN_SEEDS and all(d.size for d in diffs):
        k = len(diffs)
        means = np.empty(resamples)
        chosen = rng.integers(0, k, size=(resamples, k))
        for t in range(resamples):
            means[t] = np.mean([diffs[g][rng.integers(0, diffs[g].size, size=diffs[g].size)].mean()
                                for g in chosen[t]])
        low, high = percentile_interval(means, level)
    if len(diffs) < MIN_SEEDS or math.isnan(low):
        verdict = UNCLEAR
    elif high < 0 or loss > AFCC_LARGE_LOSS or dilution < AFCC_MIN_DILUTION:
        verdict = FAILS
    elif low > 0 and loss <= AFCC_MAX_LOSS and min(dilutions) >= AFCC_MIN_DILUTION:
        verdict = HOLDS
    else:
        verdict = UNCLEAR
    detail = f"{len(diffs)} seeds; mean dilution {dilution:.3f}, mean loss {loss:.4f}"
    return _pooled_row(6, "afcc_minus_random", "mean_accuracy_difference", value, low, high, per, verdict,
                       POOLED_AFCC_RULE, detail)


def _pooled_row(claim, metric, statistic, value, low, high, per, verdict, rule, detail) -> dict:
    have = [r for r in per if r is not None]
    row = _row(claim, metric, statistic, value, low, high, len(have), verdict, rule, detail)
    row.update(seeds_holds=sum(r.get("verdict") == HOLDS for r in have),
               seeds_fails=sum(r.get("verdict") == FAILS for r in have),
               seeds_unclear=sum(r.get("verdict") == UNCLEAR for r in have),
               per_seed=[_f(r.get("value")) if r is not None else math.nan for r in per],
               per_seed_verdicts=[r.get("verdict") if r is not None else None for r in per])
    return row


def metric_label(row: Mapping, rows: Sequence[Mapping]) -> str:
    """A row's metric, with its unit kind (``accuracy [node]``) where the rows test more than one kind."""
    kinds = {r.get("unit_kind") for r in rows if r.get("unit_kind")}
    kind = row.get("unit_kind")
    return f"{row['metric']} [{kind}]" if kind and len(kinds) > 1 else str(row["metric"])


def format_pooled(rows: Sequence[Mapping], seeds: Sequence | None = None) -> list[str]:
    """The pooled claims as terminal lines: the pooled statistic, its interval and verdict, how the seeds voted on
    their own (holds / does not hold / cannot tell), and each seed's statistic and verdict."""
    if not rows:
        return []
    w = max([20] + [len(metric_label(r, rows)) + 2 for r in rows])
    out = [f"the papers' claims pooled over the seeds of one recipe ({LEVEL:.0%} hierarchical intervals)",
           f"{'claim':<6}{'metric':<{w}}{'value':>10}{'low':>11}{'high':>11}{'seeds':>6}  {'h/n/?':<8} "
           f"{'verdict':<14} each seed"]
    rules: list[str] = []
    short = {HOLDS: "holds", FAILS: "fails", UNCLEAR: "?", None: "-"}
    for r in rows:
        votes = f"{r['seeds_holds']}/{r['seeds_fails']}/{r['seeds_unclear']}"
        names = list(seeds) if seeds is not None else list(range(len(r.get("per_seed", []))))
        each = ", ".join(f"{n}: {_num(v)} {short.get(vd, vd)}" for n, v, vd in
                         zip(names, r.get("per_seed", []), r.get("per_seed_verdicts", [])))
        out.append(f"{r['claim']:<6}{metric_label(r, rows):<{w}}{_num(r['value']):>10} {_num(r['low']):>10} "
                   f"{_num(r['high']):>10}{r['n']:>6}  {votes:<8} {r['verdict']:<14} {each}")
        rule = general_rule(r["rule"])
        if rule not in rules:
            rules.append(rule)
    return out + ["h/n/?: seeds whose own verdict holds / does not hold / cannot tell", "rules:"] + \
        [f"  - {rule}" for rule in rules]


def merge(rows: Sequence[Mapping], new: Sequence[Mapping]) -> list[dict]:
    """``rows`` without the claims that ``new`` answers, then ``new`` (a stage that runs again replaces its rows)."""
    answered = {r["claim"] for r in new}
    return [dict(r) for r in rows if r.get("claim") not in answered] + [dict(r) for r in new]


# ------------------------------------------------------------------------------ words

def format_table(rows: Sequence[Mapping]) -> list[str]:
    """The claims as terminal lines: a table, then each rule once."""
    if not rows:
        return []
    w = max([20] + [len(metric_label(r, rows)) + 2 for r in rows])
    out = [f"the papers' claims ({LEVEL:.0%} intervals; METHOD.md, \"The papers' claims\")",
           f"{'claim':<6}{'metric':<{w}}{'statistic':<22}{'value':>10}{'low':>11}{'high':>11}{'n':>5}  verdict"]
    rules: list[str] = []
    for r in rows:
        out.append(f"{r['claim']:<6}{metric_label(r, rows):<{w}}{r['statistic']:<22}{_num(r['value']):>10} "
                   f"{_num(r['low']):>10}"
                   f" {_num(r['high']):>10}{r['n']:>5}  {r['verdict']}" + (f"  ({r['detail']})" if r.get("detail")
                                                                          else ""))
        rule = general_rule(r["rule"])
        if rule not in rules:
            rules.append(rule)
    return out + ["rules:"] + [f"  - {rule}" for rule in rules]


def general_rule(rule: str) -> str:
    """The rule without its row's "claimed: ..." prefix (printed once for every depth row)."""
    return rule.split(". ", 1)[1] if rule.startswith("claimed: ") else rule


def _num(v: Any) -> str:
    v = _f(v)
    return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:.4g}")


def snr_sentence(rows: Sequence[Mapping]) -> str:
    """One plain sentence: which SNR candidates rise with depth and which do not (from claim 2's verdicts); one per
    unit kind where the rows test more than one."""
    kinds = list(dict.fromkeys(r.get("unit_kind") for r in rows if r.get("claim") == 2))
    if len(kinds) > 1:
        each = (_snr_sentence([r for r in rows if r.get("unit_kind") == k], f" over the {k}s' layers") for k in kinds)
        return " ".join(s for s in each if s)
    return _snr_sentence(rows, "")


def _snr_sentence(rows: Sequence[Mapping], where: str) -> str:
    got = {r["metric"]: r for r in rows if r.get("claim") == 2}
    if not got:
        return ""
    groups = {v: [m for m in SNR_CANDIDATES if m in got and got[m]["verdict"] == v] for v in VERDICTS}
    parts = [f"{_names(groups[HOLDS])} {_verb(groups[HOLDS], 'rises', 'rise')} with depth" if groups[HOLDS]
             else "none rises with depth"]
    if groups[FAILS]:
        parts.append(f"{_names(groups[FAILS])} {_verb(groups[FAILS], 'falls', 'fall')} with depth")
    if groups[UNCLEAR]:
        why = ("no bootstrap replicates" if any("bootstrap" in got[m]["detail"] for m in groups[UNCLEAR])
               else "the interval includes 0 or too few layers")
        parts.append(f"for {_names(groups[UNCLEAR])} the run cannot tell ({why})")
    return (f"Of the SNR candidates{where}, " + "; ".join(parts) + f" ({LEVEL:.0%} bootstrap interval of the rank "
            "correlation with depth).")


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _verb(names: list[str], one: str, many: str) -> str:
    return one if len(names) == 1 else many
