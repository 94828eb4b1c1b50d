"""Tests of the batched single-unit analysis: the greedy clusters of many matrices at once, and the bootstrap's
replicates as matrix products (METHOD.md stage 3, "single-filter performance" and "SNR candidates").

The expected values come from (a) METHOD.md's words, written out as nested loops here, (b) the one-matrix
``greedy_clusters``, and (c) REFERENCE: the bootstrap as it was before it was batched (commit 64e8eef), copied
below: one replicate at a time, ``np.add.reduceat`` for the resampled label means, the per-unit Python greedy
clustering and the per-unit field parts and summary. Never from the new code's own output.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import pytest
import torch

import filterlens.sfp.bootstrap as boot
from filterlens.claims import percentile_interval
from filterlens.sfp import (
    bootstrap_summary,
    clusters_from_labels,
    correct_from_fields,
    greedy_cluster_labels,
    greedy_clusters,
    resample_counts,
)


# ------------------------------------------------------------------------------------------
# METHOD.md stage 3 item 3, literally
# ------------------------------------------------------------------------------------------
def method_words_clusters(binary):
    """Candidates: labels whose diagonal element is 1. The smallest remaining candidate starts a cluster; every
    later remaining candidate, ascending, joins when the enlarged cluster's square block (rows and columns, both
    directions) is still all ones; the cluster's labels leave the candidates; repeat until none remain."""
    b = np.asarray(binary, dtype=bool)
    candidates = [i for i in range(b.shape[0]) if b[i, i]]
    clusters = []
    while candidates:
        cluster = [candidates[0]]
        for k in candidates[1:]:
            enlarged = cluster + [k]
            if all(b[x, y] for x in enlarged for y in enlarged):
                cluster = enlarged
        clusters.append(cluster)
        candidates = [k for k in candidates if k not in cluster]
    return clusters


def random_binaries(rng, m, L):
    """``m`` binary (L, L) matrices of one kind, at a random density: plain, symmetric, or planted blocks
    with flips (dense ones leave many candidates: no packing; sparse ones few: packed)."""
    kind = int(rng.integers(3))
    density = rng.uniform(0.02, 0.99)
    if kind == 0:
        return rng.random((m, L, L)) < density
    if kind == 1:
        u = np.triu(rng.random((m, L, L)) < density)
        return u | u.transpose(0, 2, 1)
    b = np.zeros((m, L, L), dtype=bool)
    for k in range(m):
        for members in np.array_split(rng.permutation(L), int(rng.integers(1, L + 1))):
            if rng.random() < density:
                b[k][np.ix_(members, members)] = True
    return b ^ (rng.random((m, L, L)) < rng.uniform(0, 0.15))


@pytest.mark.parametrize("seed", range(4))
def test_batched_greedy_equals_greedy_clusters_and_method_words(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        L = int(rng.integers(1, 41))
        b = random_binaries(rng, int(rng.integers(1, 25)), L)
        labels = greedy_cluster_labels(b)
        assert labels.shape == b.shape[:2] and labels.dtype == np.int64
        for k in range(len(b)):
            expected = greedy_clusters(b[k])
            assert clusters_from_labels(labels[k]) == expected, b[k].astype(int)
            if L <= 16:
                assert expected == method_words_clusters(b[k])
            # the labels' meaning: each label's cluster named by its smallest label, -1 outside every cluster
            want = np.full(L, -1)
            for cluster in expected:
                want[cluster] = cluster[0]
            np.testing.assert_array_equal(labels[k], want)


def test_batched_greedy_mixes_sizes_and_hand_cases():
    # matrices of very different candidate counts in one call (packing pads the sparse ones)
    rng = np.random.default_rng(5)
    L = 30
    b = np.concatenate([rng.random((6, L, L)) < d for d in (0.03, 0.3, 0.97)])
    b[0] = False  # no candidate at all
    b[1] = np.eye(L, dtype=bool)  # only singletons
    b[2] = True  # one cluster of everything
    labels = greedy_cluster_labels(torch.from_numpy(b))
    for k in range(len(b)):
        assert clusters_from_labels(labels[k]) == method_words_clusters(b[k])
    assert clusters_from_labels(labels[0]) == [] and (labels[0] == -1).all()
    assert clusters_from_labels(labels[1]) == [[i] for i in range(L)]
    assert labels[2].tolist() == [0] * L
    # the order split of METHOD.md: 0 takes 2 (0 and 1 do not match), so 1 starts its own cluster with 3
    h = np.zeros((4, 4), dtype=bool)
    for x, y in ((0, 2), (1, 3), (0, 3)):
        h[np.ix_([x, y], [x, y])] = True
    assert clusters_from_labels(greedy_cluster_labels(h)) == [[0, 2], [1, 3]] == method_words_clusters(h)
    # one direction only: 0 -> 1 is 1, 1 -> 0 is 0: no joint cluster
    a = np.eye(2, dtype=bool)
    a[0, 1] = True
    assert greedy_cluster_labels(a).tolist() == [0, 1]
    with pytest.raises(ValueError, match="shape"):
        greedy_cluster_labels(np.ones((2, 2, 3), dtype=bool))
    with pytest.raises(ValueError, match="0/1"):
        greedy_cluster_labels(np.full((1, 2, 2), 0.5))
    assert greedy_cluster_labels(np.zeros((0, 3, 3), dtype=bool)).shape == (0, 3)


# ------------------------------------------------------------------------------------------
# REFERENCE: bootstrap_summary before batching (commit 64e8eef), copied with what it called
# ------------------------------------------------------------------------------------------
def reference_resample_counts(labels, num_labels, n_boot, seed):
    lab = np.asarray(labels)
    n = lab.size
    counts = np.bincount(lab, minlength=num_labels)
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    starts = np.cumsum(counts) - counts
    high = counts[sorted_lab]
    base = starts[sorted_lab]
    rng = np.random.default_rng(seed)
    for _ in range(int(n_boot)):
        draw = base + rng.integers(0, high)
        out = np.empty(n, dtype=np.float64)
        out[order] = np.bincount(draw, minlength=n)
        yield out


def reference_means_sorted(flat_sorted, starts, weights_sorted, denom, c):
    data = flat_sorted if weights_sorted is None else flat_sorted * weights_sorted[:, None]
    sums = np.add.reduceat(data, starts, axis=0)
    L = starts.size
    means = sums / denom[:, None]
    return np.ascontiguousarray(means.reshape(L, c, L).transpose(1, 0, 2))


def reference_greedy_unchecked(binary):
    cand = np.flatnonzero(np.diagonal(binary))
    k = cand.size
    if k == 0:
        return []
    sub = binary[np.ix_(cand, cand)]
    sym = sub & sub.T
    remaining = np.ones(k, dtype=bool)
    clusters = []
    start = 0
    while start < k:
        members = [start]
        remaining[start] = False
        comp = remaining & sym[start]
        while True:
            nxt = int(np.argmax(comp))
            if not comp[nxt]:
                break
            members.append(nxt)
            remaining[nxt] = False
            comp[nxt] = False
            comp &= sym[nxt]
        clusters.append(cand[members].tolist())
        rest = np.flatnonzero(remaining[start:])
        if rest.size == 0:
            break
        start += int(rest[0])
    return clusters


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


def reference_layer_summary(mats, threshold, normalise):
    """LayerSFP(threshold, normalise).fit_matrices(mats).summary() as it was: normalise (_process_block),
    binarise, the per-unit greedy, the per-unit field parts (_field_parts), _finish and summary()."""
    block = torch.from_numpy(mats)
    n_units, L = mats.shape[0], mats.shape[1]
    out = torch.empty_like(block)
    colmean = block.mean(dim=1)
    if normalise == "column-centred":
        torch.sub(block, colmean[:, None, :], out=out)
        basis = out
    else:
        basis = block
    maxima = basis.amax(dim=(1, 2))
    dead = ~(maxima > 0)
    scale = torch.where(dead, torch.ones_like(maxima), maxima)
    torch.div(basis, scale[:, None, None], out=out)
    if bool(dead.any()):
        out[dead] = 0
    binary = torch.gt(out, threshold).numpy()
    dead = dead.numpy()
    ones_ = np.count_nonzero(binary.reshape(n_units, -1), axis=1)
    clusters_ = [reference_greedy_unchecked(binary[i]) for i in range(n_units)]
    # _field_parts
    field_signal_, field_noise_ = np.full(n_units, np.nan), np.full(n_units, np.nan)
    norm = out
    values = norm.numpy()
    inside = np.zeros(n_units)
    for i in range(n_units):
        for k in clusters_[i]:
            inside[i] += float(values[i][np.ix_(k, k)].sum())
    total = norm.sum(dim=(1, 2)).numpy().astype(np.float64)
    norm.masked_fill_(torch.from_numpy(binary), 0)
    ones = total - norm.sum(dim=(1, 2)).numpy()
    low = norm.clamp_(min=0).sum(dim=(1, 2)).numpy().astype(np.float64)
    for i in range(n_units):
        clusters = clusters_[i]
        if not clusters:
            continue
        signal = sum(len(k) ** 2 for k in clusters)
        noise_mass = ones[i] - inside[i] if int(ones_[i]) > signal else 0.0
        field_signal_[i] = inside[i] / signal
        field_noise_[i] = (low[i] + noise_mass) / (L * L - signal) if L * L > signal else 0.0
    # _finish
    sizes = [np.fromiter((len(k) for k in cl), dtype=np.int64, count=len(cl)) for cl in clusters_]
    num_clusters_ = np.array([len(cl) for cl in clusters_], dtype=np.int64)
    labels_in_clusters_ = np.array([int(s.sum()) for s in sizes], dtype=np.int64)
    signal_ = np.array([int((s * s).sum()) for s in sizes], dtype=np.int64)
    noise_ = ones_ - signal_
    # summary()
    has = num_clusters_ > 0
    all_sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    signal_all = _nanmean(signal_)
    noise_all = _nanmean(noise_)
    if math.isnan(signal_all) or math.isnan(noise_all):
        snr = math.nan
    elif noise_all > 0:
        snr = signal_all / noise_all
    else:
        snr = math.inf if signal_all > 0 else math.nan
    signal_field, noise_field = _nanmean(field_signal_[has]), _nanmean(field_noise_[has])
    return {
        "clusters_per_filter": _nanmean(num_clusters_[has]),
        "clusters_per_filter_all": _nanmean(num_clusters_),
        "cluster_size": _nanmean(all_sizes),
        "noise_per_filter": _nanmean(noise_[has]),
        "noise_per_filter_all": noise_all,
        "filters_without_cluster": _nanmean(~has),
        "snr": snr,
        "snr_median": (float(np.median(signal_[has] / np.maximum(noise_[has], 1))) if has.any() else math.nan),
        "snr_field": signal_field / noise_field if noise_field > 0 else math.nan,
        "signal_field": signal_field,
        "noise_field": noise_field,
        "signal_per_filter": _nanmean(signal_[has]),
        "signal_per_filter_all": signal_all,
        "ones_per_filter_all": _nanmean(ones_),
        "labels_in_clusters_per_filter": _nanmean(labels_in_clusters_[has]),
        "dead_filters": _nanmean(dead),
        "num_filters": int(n_units),
        "num_labels": int(L),
        "num_clusters": int(num_clusters_.sum()),
        "threshold": float(threshold),
        "normalise": str(normalise),
    }


def reference_bootstrap_summary(fields, labels, num_labels, n_boot, seed, threshold=0.3, normalise="max",
                                level=0.95, accuracy=False):
    """bootstrap_summary(..., return_samples=True) as it was: one replicate at a time."""
    f = torch.as_tensor(fields)
    n = int(f.shape[0])
    lab = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(lab, minlength=num_labels)
    order = np.argsort(lab, kind="stable")
    flat = f.to(device="cpu", dtype=torch.float64).reshape(n, -1).numpy()[order]
    c = int(f.shape[1])
    starts = np.cumsum(counts) - counts
    denom = counts.astype(np.float64)
    if accuracy:
        logits = f.to(device="cpu", dtype=torch.float64).sum(dim=1)
        correct = (logits.argmax(dim=1) == torch.from_numpy(lab)).numpy().astype(np.float64)
    values = {}
    for weights in reference_resample_counts(lab, num_labels, n_boot, seed):
        mats = reference_means_sorted(flat, starts, weights[order], denom, c)
        summ = reference_layer_summary(mats, threshold, normalise)
        if accuracy:
            values.setdefault("accuracy", []).append(float(weights @ correct) / n)
        for key, val in summ.items():
            if key in ("threshold", "normalise", "num_filters", "num_labels") or isinstance(val, (str, bool)):
                continue
            if isinstance(val, numbers.Real):
                values.setdefault(key, []).append(float(val))
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    return {key: percentile_interval(arr, level) for key, arr in samples.items()}, samples


# ------------------------------------------------------------------------------------------
# the new bootstrap against the reference
# ------------------------------------------------------------------------------------------
# keys whose replicates are counts (or ratios of counts): equal exactly; the field parts to float rounding
COUNT_KEYS = ("clusters_per_filter", "clusters_per_filter_all", "cluster_size", "noise_per_filter",
              "noise_per_filter_all", "filters_without_cluster", "snr", "snr_median", "signal_per_filter",
              "signal_per_filter_all", "ones_per_filter_all", "labels_in_clusters_per_filter", "dead_filters",
              "num_clusters", "accuracy")


def planted_fields(seed, c=12, L=7, n_per_label=(9, 30)):
    """Per-sample fields (N, C, L) whose label means carry planted blocks (1-3 clusters of 1-4 labels), a
    background around the threshold, noise; unequal label counts; a dead unit (every field negative) and a
    unit whose block is the whole matrix. Labels shuffled."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(n_per_label[0], n_per_label[1] + 1, size=L)
    labels = np.repeat(np.arange(L), counts)
    rng.shuffle(labels)
    means = rng.uniform(-0.3, 0.45, size=(c, L, L))
    for k in range(c - 2):
        for members in np.array_split(rng.permutation(L)[: int(rng.integers(1, min(L, 8) + 1))],
                                      int(rng.integers(1, 4))):
            if members.size:
                means[k][np.ix_(members, members)] = rng.uniform(0.7, 1.0, size=(members.size, members.size))
    means[c - 2] = rng.uniform(0.6, 1.0, size=(L, L))
    fields = means.transpose(1, 0, 2)[labels] + rng.normal(scale=0.35, size=(labels.size, c, L))
    fields[:, c - 1, :] = -rng.uniform(0.1, 1.0, size=(labels.size, L))
    return fields, labels


def assert_same_replicates(got, ref, rtol=1e-12):
    assert list(got) == list(ref)  # the same keys, in the same order
    for key in ref:
        a, b = got[key], ref[key]
        assert a.shape == b.shape, key
        if key in COUNT_KEYS:
            np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-15, equal_nan=True, err_msg=key)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalise", ["max", "column-centred"])
def test_bootstrap_equals_reference(seed, normalise):
    fields, labels = planted_fields(seed)
    L = fields.shape[2]
    ref_iv, ref = reference_bootstrap_summary(fields, labels, L, 40, seed + 10, 0.3, normalise, accuracy=True)
    iv, got = bootstrap_summary(fields, labels, L, 40, seed + 10, threshold=0.3, normalise=normalise,
                                return_samples=True, accuracy=True)
    assert_same_replicates(got, ref)
    assert list(iv) == list(ref_iv)
    for key in ref_iv:
        np.testing.assert_allclose(iv[key], ref_iv[key], rtol=1e-12, atol=1e-15, equal_nan=True, err_msg=key)
    # the check is not trivial: replicates differ, units have clusters and noise, the field SNR is defined
    assert got["noise_per_filter_all"].std() > 0 and got["clusters_per_filter_all"].min() > 0
    assert np.isfinite(got["snr_field"]).all() and 0 < got["accuracy"].mean() < 1
    if normalise == "max":
        assert (got["dead_filters"] > 0).all()
    # the intervals alone, from torch float32 fields (converted to float64 as the reference does)
    f32 = torch.from_numpy(fields.astype(np.float32))
    _, ref32 = reference_bootstrap_summary(f32, labels, L, 10, 3, 0.4, normalise)
    _, got32 = bootstrap_summary(f32, torch.from_numpy(labels), L, 10, 3, threshold=0.4, normalise=normalise,
                                 return_samples=True)
    assert_same_replicates(got32, ref32)


@pytest.mark.parametrize("case", ["padded group", "small memory"])
def test_bootstrap_in_chunks_equals_reference(monkeypatch, case):
    """Several chunks of replicates and of units, with (a) all labels in one group, padded to the largest label
    count, or (b) a small working memory: labels in groups of their own; the replicates are those of the
    reference (and so of one chunk)."""
    spread = (30, 36) if case == "padded group" else (5, 40)
    fields, labels = planted_fields(7, c=9, L=8, n_per_label=spread)
    L, n, c = fields.shape[2], fields.shape[0], fields.shape[1]
    _, ref = reference_bootstrap_summary(fields, labels, L, 23, 4, accuracy=True)
    _, whole = bootstrap_summary(fields, labels, L, 23, 4, return_samples=True, accuracy=True)
    counts = np.bincount(labels)
    assert boot._plan(n, c, L, 23, counts.max(), 8) == (23, c)  # one chunk at the default size
    if case == "padded group":
        monkeypatch.setattr(boot, "_plan", lambda *args: (5, 2))
        bc, cc = 5, 2
    else:
        monkeypatch.setattr(boot, "_WORK_BYTES", 16 * 8 * 6 * (n + 1))
        bc, cc = boot._plan(n, c, L, 23, counts.max(), 8)
        assert 1 < bc < 23 and 1 < cc < c
    groups = boot._label_groups(counts, cc * L * 8, 8 * bc * cc * L)
    if case == "padded group":
        assert groups == [(0, L, counts.max())] and counts.min() < counts.max()
    else:
        assert len(groups) > 1
    _, chunked = bootstrap_summary(fields, labels, L, 23, 4, return_samples=True, accuracy=True)
    assert_same_replicates(chunked, ref)
    assert_same_replicates(chunked, whole)


def test_label_groups():
    """Consecutive labels, each group padded to its largest count by at most a quarter of its rows, within the
    memory share of its gathered rows and product."""
    counts = np.array([10, 10, 12, 30, 31, 5, 100, 100, 100])
    part = boot._WORK_BYTES // 16
    assert boot._label_groups(counts, 1, 1) == [(0, 3, 12), (3, 5, 31), (5, 6, 5), (6, 9, 100)]
    # gathered rows of 1/250 of the share each: at most 250 rows (padding included) in a group
    assert boot._label_groups(counts, part // 250, 1) == [(0, 3, 12), (3, 5, 31), (5, 6, 5), (6, 8, 100),
                                                         (8, 9, 100)]
    assert boot._label_groups(counts, 1, part // 2) == [(0, 2, 10), (2, 3, 12), (3, 5, 31), (5, 6, 5),
                                                        (6, 8, 100), (8, 9, 100)]
    assert boot._label_groups(counts, part, part) == [(i, i + 1, int(k)) for i, k in enumerate(counts)]


def test_resamples_unchanged():
    """The draws are those of before: replicate b is the same resample of the same inputs (shared by layers)."""
    labels = np.random.default_rng(0).integers(0, 5, size=200)
    for new, old in zip(resample_counts(labels, 5, 30, seed=9), reference_resample_counts(labels, 5, 30, 9)):
        np.testing.assert_array_equal(new, old)
    with pytest.raises(ValueError, match="without any test sample"):
        next(resample_counts(np.array([0, 0, 2]), 3, 1, 0))


def test_plan_keeps_memory_bounded():
    """The chunks follow the memory note of bootstrap_summary: counts, matrices and one label's gathered fields
    and product stay within their shares of the working memory, at CIFAR, ImageNet and larger shapes."""
    budget = boot._WORK_BYTES
    for n, c, L, n_boot in ((10_000, 128, 10, 200), (10_000, 512, 100, 1000), (50_000, 512, 1000, 200),
                            (10_000, 128, 1000, 20), (1_000_000, 64, 10, 2000), (100, 3, 2, 1)):
        n_max = -(-n // L)
        for in_bytes in (8, 12):
            bc, cc = boot._plan(n, c, L, n_boot, n_max, in_bytes)
            assert 1 <= bc <= n_boot and 1 <= cc <= c
            assert 8 * bc * (n + 1) <= budget // 16
            assert bc * cc * (12 * L * L + 64 * L) <= budget // 2
            assert n_max * cc * L * in_bytes <= budget // 16 and 8 * bc * cc * L <= budget // 16
            if L == 10 and n <= 10_000:  # the small-L shapes fit in one chunk of units and replicates
                assert (bc, cc) == (n_boot, c)


def test_correct_from_fields_in_pieces(monkeypatch):
    fields, labels = planted_fields(3)
    f32 = torch.from_numpy(fields.astype(np.float32))
    whole = correct_from_fields(f32, labels)
    expected = f32.double().sum(dim=1).argmax(dim=1).numpy() == labels
    np.testing.assert_array_equal(whole, expected)
    monkeypatch.setattr(boot, "_WORK_BYTES", 16 * 8 * fields.shape[1] * fields.shape[2] * 5)  # 5 samples a piece
    np.testing.assert_array_equal(correct_from_fields(f32, labels), expected)


def test_several_probes_replicate_b_reads_probe_b_mod_k():
    """With the fields of K probes, replicate b is the resample b of the test images on probe b mod K: each
    replicate's values equal those of the one-probe bootstrap of that probe (same seed: the same resamples)."""
    rng = np.random.default_rng(5)
    n, c, L = 300, 6, 4
    lab = np.repeat(np.arange(L), n // L)
    a = rng.normal(size=(n, c, L)) + 2 * np.eye(L)[lab][:, None, :]
    b = rng.normal(size=(n, c, L)) + 1 * np.eye(L)[lab][:, None, :]
    _, both = bootstrap_summary([a, b], lab, L, 9, 3, return_samples=True, accuracy=True)
    _, only_a = bootstrap_summary(a, lab, L, 9, 3, return_samples=True, accuracy=True)
    _, only_b = bootstrap_summary(b, lab, L, 9, 3, return_samples=True, accuracy=True)
    for key in ("accuracy", "noise_per_filter_all", "snr_field", "clusters_per_filter_all"):
        want = np.where(np.arange(9) % 2 == 0, only_a[key], only_b[key])
        np.testing.assert_allclose(both[key], want, rtol=1e-12, equal_nan=True, err_msg=key)
    assert not np.allclose(only_a["noise_per_filter_all"], only_b["noise_per_filter_all"])  # the probes differ
    with pytest.raises(ValueError, match="every probe's the same"):
        bootstrap_summary([a, b[:, :5]], lab, L, 3, 0)


# ------------------------------------------------------------------------------------------
# the features route: the same replicates from the test features and the probe weight
# ------------------------------------------------------------------------------------------
def planted_features(seed, c=10, L=7, p=3, n_per_label=(9, 30)):
    """Test features (N, C, P), a probe weight (L, C, P) and labels: unit c's position q carries a cluster of
    labels (the features of its labels near 1 there, the weight of its output units near 1), the rest around 0,
    so the label means F_c = M W^T hold blocks over a background near the threshold; noise per input; unequal
    label counts; a dead unit (positive features, negative weight). Labels shuffled."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(n_per_label[0], n_per_label[1] + 1, size=L)
    labels = np.repeat(np.arange(L), counts)
    rng.shuffle(labels)
    means = rng.uniform(-0.2, 0.5, size=(L, c, p))
    weight = rng.uniform(-0.3, 0.6, size=(L, c, p))
    for u in range(c - 1):
        for q in range(int(rng.integers(1, p + 1))):
            members = rng.choice(L, size=int(rng.integers(1, 4)), replace=False)
            means[members, u, q] = rng.uniform(0.8, 1.2, size=members.size)
            weight[members, u, q] = rng.uniform(0.8, 1.2, size=members.size)
    means[:, c - 1] = rng.uniform(0.5, 1.0, size=(L, p))
    weight[:, c - 1] = -rng.uniform(0.1, 1.0, size=(L, p))
    features = means[labels] + rng.normal(scale=0.3, size=(labels.size, c, p))
    return features, weight, labels


def fields_of(features, weight):
    """h[n, c, j] = sum_p W[j, c, p] A[n, c, p] (METHOD.md stage 3), float64, written out with numpy."""
    a = np.asarray(features, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    return np.einsum("ncp,jcp->ncj", a.reshape(a.shape[0], a.shape[1], -1), w.reshape(w.shape[0], w.shape[1], -1))


# field parts (sums of different float64 products): to float rounding; counts: exactly
FEATURES_RTOL = 1e-9


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalise", ["max", "column-centred"])
def test_features_route_equals_reference_on_the_fields(seed, normalise):
    """Features (N, C, H, W) and weight (L, C, H, W): the replicates are those of the reference bootstrap of the
    fields they give, and those of the fields route; the intervals too."""
    a, w, labels = planted_features(seed, p=4)
    L = w.shape[0]
    a4, w4 = a.reshape(a.shape[0], a.shape[1], 2, 2), w.reshape(L, w.shape[1], 2, 2)
    fields = fields_of(a, w)
    ref_iv, ref = reference_bootstrap_summary(fields, labels, L, 40, seed + 3, 0.3, normalise, accuracy=True)
    iv, got = boot.bootstrap_summary_from_features(a4, w4, labels, L, 40, seed + 3, normalise=normalise,
                                                   return_samples=True, accuracy=True)
    assert_same_replicates(got, ref, rtol=FEATURES_RTOL)
    _, by_fields = bootstrap_summary(fields, labels, L, 40, seed + 3, normalise=normalise, return_samples=True,
                                     accuracy=True)
    assert_same_replicates(got, by_fields, rtol=FEATURES_RTOL)
    assert list(iv) == list(ref_iv)
    for key in ref_iv:
        np.testing.assert_allclose(iv[key], ref_iv[key], rtol=FEATURES_RTOL, equal_nan=True, err_msg=key)
    # not trivial: the replicates differ, units have clusters and noise, the accuracy is neither 0 nor 1
    assert got["noise_per_filter_all"].std() > 0 and got["clusters_per_filter_all"].min() > 0
    assert np.isfinite(got["snr_field"]).all() and 0 < got["accuracy"].mean() < 1
    if normalise == "max":
        assert (got["dead_filters"] > 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_features_route_reads_half_precision_as_stored(dtype):
    """Features as the cache holds them (bfloat16 or float16 tensors) and a float32 weight: the replicates of the
    fields of exactly those stored values; a float16 numpy array too."""
    a, w, labels = planted_features(4, c=8, L=6, p=5)
    L = w.shape[0]
    stored = torch.from_numpy(a).to(dtype)
    w32 = torch.from_numpy(w).float()
    _, ref = reference_bootstrap_summary(fields_of(stored.double().numpy(), w32.double().numpy()), labels, L, 25, 1,
                                         accuracy=True)
    _, got = boot.bootstrap_summary_from_features(stored, w32, torch.from_numpy(labels), L, 25, 1,
                                                  return_samples=True, accuracy=True)
    assert_same_replicates(got, ref, rtol=FEATURES_RTOL)
    if dtype == torch.float16:
        _, from_numpy = boot.bootstrap_summary_from_features(stored.numpy(), w32.numpy(), labels, L, 25, 1,
                                                             return_samples=True, accuracy=True)
        assert_same_replicates(from_numpy, ref, rtol=FEATURES_RTOL)


def test_features_route_with_several_probes_reads_probe_b_mod_k():
    """K probes: one set of features, K weights; replicate b is the reference's replicate b on the fields of probe
    b mod K (the same resamples: the same seed), and the fields route's with the K probes' fields."""
    a, w0, labels = planted_features(6, c=7, L=6, p=3)
    rng = np.random.default_rng(60)
    ws = [w0, w0 + rng.normal(scale=0.3, size=w0.shape), w0 * rng.uniform(0.5, 1.5, size=w0.shape)]
    L, n_boot = w0.shape[0], 14
    refs = [reference_bootstrap_summary(fields_of(a, w), labels, L, n_boot, 2, accuracy=True)[1] for w in ws]
    _, got = boot.bootstrap_summary_from_features(a, ws, labels, L, n_boot, 2, return_samples=True, accuracy=True)
    want = {key: np.array([refs[b % 3][key][b] for b in range(n_boot)]) for key in refs[0]}
    assert_same_replicates(got, want, rtol=FEATURES_RTOL)
    _, by_fields = bootstrap_summary([fields_of(a, w) for w in ws], labels, L, n_boot, 2, return_samples=True,
                                     accuracy=True)
    assert_same_replicates(got, by_fields, rtol=FEATURES_RTOL)
    # the probes differ, so reading the wrong one would show
    assert not np.array_equal(refs[0]["noise_per_filter_all"], refs[1]["noise_per_filter_all"])
    assert not np.array_equal(refs[0]["accuracy"], refs[2]["accuracy"])


def test_features_route_in_chunks_equals_reference(monkeypatch):
    """A small working memory: several chunks of replicates and of units, labels in several groups, the
    accuracy's logits in pieces of samples and of features; the replicates are still the reference's."""
    a, w, labels = planted_features(8, c=9, L=8, p=12, n_per_label=(5, 40))
    n, c, p = a.shape
    L = w.shape[0]
    _, ref = reference_bootstrap_summary(fields_of(a, w), labels, L, 23, 4, accuracy=True)
    counts = np.bincount(labels)
    assert boot._plan(n, c, L, 23, counts.max(), 8, p) == (23, c)  # one chunk at the default size
    monkeypatch.setattr(boot, "_WORK_BYTES", 16 * 8 * 4 * (n + 1))
    bc, cc = boot._plan(n, c, L, 23, counts.max(), 8, p)
    assert 1 < bc < 23 and 1 <= cc < c
    assert len(boot._label_groups(counts, cc * p * 8, 8 * bc * cc * p)) > 1
    assert boot._WORK_BYTES // 16 < 8 * L * c * p  # the accuracy's weight in pieces too
    _, got = boot.bootstrap_summary_from_features(a, w, labels, L, 23, 4, return_samples=True, accuracy=True)
    assert_same_replicates(got, ref, rtol=FEATURES_RTOL)


def test_features_plan_keeps_memory_bounded():
    """The chunks of the features route follow its memory note: counts, matrices, one label's gathered features,
    the mean maps and the repeated weight within their shares, at CIFAR, ImageNet and L = 1000 shapes."""
    budget = boot._WORK_BYTES
    for n, c, p, L, n_boot in ((10_000, 128, 4, 10, 200), (10_000, 16, 1024, 10, 200), (12_000, 128, 4, 1000, 20),
                               (12_000, 16, 400, 1000, 20), (50_000, 512, 49, 1000, 200), (100, 3, 1, 2, 1)):
        n_max = -(-n // L)
        for in_bytes in (10, 12, 8):
            bc, cc = boot._plan(n, c, L, n_boot, n_max, in_bytes, p)
            assert 1 <= bc <= n_boot and 1 <= cc <= c
            assert 8 * bc * (n + 1) <= budget // 16
            assert bc * cc * (12 * L * L + 64 * L) <= budget // 2
            assert n_max * cc * p * in_bytes <= budget // 16
            assert 8 * bc * cc * L * p <= budget // 16 or cc == 1


def test_correct_from_features_and_checks(monkeypatch):
    a, w, labels = planted_features(3, c=6, L=5, p=4)
    expected = np.einsum("ncp,jcp->nj", a, w).argmax(axis=1) == labels
    assert 0 < expected.mean() < 1
    np.testing.assert_array_equal(boot.correct_from_features(a, w, labels), expected)
    monkeypatch.setattr(boot, "_WORK_BYTES", 16 * 8 * 5 * 7)  # 7 features of the weight, a few samples a piece
    np.testing.assert_array_equal(boot.correct_from_features(torch.from_numpy(a), w, labels), expected)
    L = w.shape[0]
    with pytest.raises(ValueError, match="every probe's the same"):
        boot.bootstrap_summary_from_features(a, [w, w[:, :5]], labels, L, 3, 0)
    with pytest.raises(ValueError, match="num_labels"):
        boot.bootstrap_summary_from_features(a, w, labels, L + 1, 3, 0)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        boot.bootstrap_summary_from_features(a[:, :, 0], w[:, :, 0], labels, L, 3, 0)
    with pytest.raises(ValueError, match="empty list"):
        boot.bootstrap_summary_from_features(a, [], labels, L, 3, 0)
