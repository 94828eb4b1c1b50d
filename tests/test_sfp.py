"""Tests of filterlens.sfp (METHOD.md, "Stage 3: single-filter performance (SFP)").

Expected values come from brute-force computations written here (silenced-weight forward
passes, nested loops) or from hand calculations stated in the comments, never from the
module's own output.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from filterlens.sfp import (
    LayerSFP,
    NotFittedError,
    analyze_layer,
    binarise_matrices,
    bootstrap_summary,
    cluster_order,
    filter_matrices,
    greedy_clusters,
    matrices_from_fields,
    normalise_matrices,
    sample_fields,
    threshold_sweep,
    vote_fractions,
)


# ------------------------------------------------------------------------------------------
# independent references
# ------------------------------------------------------------------------------------------
def reference_greedy(binary):
    """METHOD.md stage 3 item 3, literally: nested loops over an ascending candidate list."""
    b = np.asarray(binary, dtype=bool)
    n = b.shape[0]
    remaining = [i for i in range(n) if b[i, i]]
    clusters = []
    while remaining:
        cluster = [remaining[0]]
        for k in remaining[1:]:
            trial = cluster + [k]
            if all(b[x, y] for x in trial for y in trial):
                cluster = trial
        clusters.append(cluster)
        remaining = [k for k in remaining if k not in cluster]
    return clusters


def label_means_loop(a, labels, num_labels):
    """Per-label mean of a (N, ...) array by a plain loop over labels."""
    return np.stack([a[labels == i].mean(axis=0) for i in range(num_labels)])


def make_layer(seed=0, n_per_label=7, num_labels=5, c=4, h=3, w=2):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_labels), n_per_label)
    rng.shuffle(labels)
    acts = rng.normal(size=(labels.size, c, h, w))
    weight = rng.normal(size=(num_labels, c, h, w))
    return acts, labels, weight


def stats_of(binary):
    """(clusters, signal, noise) of one binary matrix from a single-filter LayerSFP fit."""
    b = np.asarray(binary, dtype=np.float64)
    s = LayerSFP.from_matrices(b[None], threshold=0.5)
    return s.clusters_[0], int(s.signal_[0]), int(s.noise_[0])


# ------------------------------------------------------------------------------------------
# the contraction
# ------------------------------------------------------------------------------------------
def test_filter_matrices_equal_silenced_fc_forward():
    """F_c = per-label mean output of the FC with every weight but filter c's zeroed."""
    acts, labels, weight = make_layer(seed=1)
    num_labels, c = weight.shape[0], weight.shape[1]
    a_t = torch.from_numpy(acts)
    w_t = torch.from_numpy(weight)
    expected = np.empty((c, num_labels, num_labels))
    for k in range(c):
        silenced = torch.zeros_like(w_t)
        silenced[:, k] = w_t[:, k]
        out = F.linear(a_t.flatten(1), silenced.flatten(1)).numpy()  # (N, L), no bias
        expected[k] = label_means_loop(out, labels, num_labels)
    means = label_means_loop(acts, labels, num_labels)
    got = filter_matrices(weight, means)
    assert got.dtype == np.float64
    assert got.shape == (c, num_labels, num_labels)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # same result from torch inputs, and in float32 within float32 accuracy
    np.testing.assert_allclose(filter_matrices(w_t, torch.from_numpy(means)), expected,
                               rtol=0, atol=1e-5)
    got32 = filter_matrices(weight, means, dtype="float32")
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, expected, rtol=0, atol=1e-4)


def test_filter_matrices_orientation_rows_input_columns_output():
    # one filter, one position: F[i, j] = W[j] * M[i]
    weight = np.array([1.0, 10.0]).reshape(2, 1, 1, 1)
    means = np.array([2.0, 3.0]).reshape(2, 1, 1, 1)
    np.testing.assert_array_equal(filter_matrices(weight, means)[0],
                                  [[2.0, 20.0], [3.0, 30.0]])


def test_filter_matrices_shape_errors():
    w = np.zeros((5, 4, 2, 2))
    with pytest.raises(ValueError, match=r"\(5, 4, 2, 2\).*\(5, 3, 2, 2\)"):
        filter_matrices(w, np.zeros((5, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"\(5, 16\)"):
        filter_matrices(np.zeros((5, 16)), np.zeros((5, 16)))
    with pytest.raises(ValueError, match="dtype"):
        filter_matrices(w, w, dtype="int32")


def test_sample_fields_brute_force_and_label_means_equal_filter_matrices():
    acts, labels, weight = make_layer(seed=2)
    n, c = acts.shape[:2]
    num_labels = weight.shape[0]
    fields = sample_fields(weight, acts)
    assert isinstance(fields, np.ndarray) and fields.shape == (n, c, num_labels)
    expected = np.empty_like(fields)
    for s in range(n):
        for k in range(c):
            for j in range(num_labels):
                expected[s, k, j] = np.sum(weight[j, k] * acts[s, k])
    np.testing.assert_allclose(fields, expected, rtol=0, atol=1e-10)
    # per-label means of the fields (loop here) equal the contraction of the mean maps
    fm = np.stack([label_means_loop(fields[:, k, :], labels, num_labels) for k in range(c)])
    np.testing.assert_allclose(fm, filter_matrices(weight, label_means_loop(acts, labels,
                                                                            num_labels)),
                               rtol=0, atol=1e-10)
    np.testing.assert_allclose(matrices_from_fields(fields, labels, num_labels), fm,
                               rtol=0, atol=1e-10)
    # torch in -> torch out, dtype kept
    ft = sample_fields(torch.from_numpy(weight).float(), torch.from_numpy(acts).float())
    assert isinstance(ft, torch.Tensor) and ft.dtype == torch.float32
    np.testing.assert_allclose(ft.numpy(), expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="disagree"):
        sample_fields(weight, acts[:, :2])


# ------------------------------------------------------------------------------------------
# greedy clusters on hand-made binary matrices
# ------------------------------------------------------------------------------------------
def block(n, *blocks, diag=()):
    b = np.zeros((n, n), dtype=bool)
    for members in blocks:
        b[np.ix_(members, members)] = True
    for i in diag:
        b[i, i] = True
    return b


def test_greedy_nested_blocks():
    # {0,1,2,3,4} all ones except 3-4 (both directions); inner block {0,1,2}.
    # Scan from 0: 1, 2, 3 join; 4 conflicts with 3 -> [[0,1,2,3],[4]].
    b = block(5, [0, 1, 2, 3, 4])
    b[3, 4] = b[4, 3] = False
    assert greedy_clusters(b) == [[0, 1, 2, 3], [4]]
    # a block nested inside a bigger all-ones block is not split off
    assert greedy_clusters(block(6, [1, 2, 3, 4], [2, 3], diag=[5])) == [[1, 2, 3, 4], [5]]


def test_greedy_overlapping_blocks():
    assert greedy_clusters(block(4, [0, 1, 2], [2, 3])) == [[0, 1, 2], [3]]


def test_greedy_order_split():
    b = block(3, [0, 1], [0, 2])  # 0-1 and 0-2 ones, 1-2 zero
    assert greedy_clusters(b) == [[0, 1], [2]]
    # signal 2^2 + 1^2 = 5; ones = 7 (3 diagonal + 4 off-diagonal); noise = 2
    assert stats_of(b) == ([[0, 1], [2]], 5, 2)


def test_greedy_asymmetric_ones_do_not_join():
    b = block(2, diag=[0, 1])
    b[0, 1] = True  # one direction only
    assert greedy_clusters(b) == [[0], [1]]
    assert stats_of(b) == ([[0], [1]], 2, 1)


def test_greedy_empty_diagonal_all_noise():
    b = np.zeros((4, 4), dtype=bool)
    b[0, 1] = b[1, 0] = b[2, 3] = True
    assert greedy_clusters(b) == []
    assert stats_of(b) == ([], 0, 3)


def test_greedy_all_ones():
    b = np.ones((5, 5), dtype=bool)
    assert greedy_clusters(b) == [[0, 1, 2, 3, 4]]
    assert stats_of(b) == ([[0, 1, 2, 3, 4]], 25, 0)


def test_greedy_input_validation():
    with pytest.raises(ValueError, match="square"):
        greedy_clusters(np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="0/1"):
        greedy_clusters(np.full((2, 2), 0.5))
    assert greedy_clusters(np.eye(3, dtype=int)) == [[0], [1], [2]]


@pytest.mark.parametrize("seed", range(4))
def test_greedy_matches_reference_loops(seed):
    rng = np.random.default_rng(seed)
    for _ in range(150):
        n = int(rng.integers(1, 14))
        kind = rng.integers(3)
        if kind == 0:  # plain random
            b = rng.random((n, n)) < rng.uniform(0.1, 0.95)
        elif kind == 1:  # symmetric dense: large clusters, many conflicts
            u = rng.random((n, n)) < rng.uniform(0.5, 0.95)
            b = np.triu(u) | np.triu(u).T
        else:  # planted blocks plus random flips
            b = np.zeros((n, n), dtype=bool)
            perm = rng.permutation(n)
            for members in np.array_split(perm, int(rng.integers(1, n + 1))):
                b[np.ix_(members, members)] = True
            b ^= rng.random((n, n)) < 0.1
        assert greedy_clusters(b) == reference_greedy(b), b.astype(int)


def test_greedy_large_random_matches_reference():
    rng = np.random.default_rng(11)
    n = 60
    u = rng.random((n, n)) < 0.8
    b = np.triu(u) | np.triu(u).T
    assert greedy_clusters(b) == reference_greedy(b)


# ------------------------------------------------------------------------------------------
# normalise and binarise
# ------------------------------------------------------------------------------------------
def test_threshold_equality_is_excluded():
    assert 3.0 / 10.0 == 0.3  # the element normalises to exactly the threshold literal
    m = np.array([[10.0, 3.0, 3.0000001], [0.0, 10.0, 1.0], [0.0, 0.0, 10.0]])
    b, dead = binarise_matrices(m, threshold=0.3)
    assert not dead
    assert not b[0, 1]  # 0.3 > 0.3 is False
    assert b[0, 2]  # 0.30000001 > 0.3
    assert b.sum() == 4
    s = LayerSFP.from_matrices(m[None], threshold=0.3)
    assert s.clusters_[0] == [[0], [1], [2]]  # 0-2 is one-directional: no join
    assert s.signal_[0] == 3 and s.noise_[0] == 1


def test_dead_filters_negative_max_and_zero():
    m = np.stack([
        -np.ones((3, 3)) - np.eye(3),  # largest element -1 <= 0
        np.zeros((3, 3)),  # largest element 0
        np.eye(3),
    ])
    s = LayerSFP.from_matrices(m)
    np.testing.assert_array_equal(s.dead_, [True, True, False])
    assert s.clusters_[:2] == [[], []]
    np.testing.assert_array_equal(s.noise_, [0, 0, 0])
    np.testing.assert_array_equal(s.num_clusters_, [0, 0, 3])
    assert not s.binary_[:2].any()
    assert s.summary()["filters_without_cluster"] == pytest.approx(2 / 3)


def test_column_centred_hand_example():
    m = np.array([[4.0, 1.0], [2.0, 3.0]])
    # column means (3, 2) -> centred [[1, -1], [-1, 1]], max 1
    norm, dead = normalise_matrices(m, "column-centred")
    assert not dead
    np.testing.assert_allclose(norm, [[1.0, -1.0], [-1.0, 1.0]])
    s = LayerSFP.from_matrices(m, normalise="column-centred")
    assert s.clusters_ == [[[0], [1]]] and s.noise_[0] == 0 and s.signal_[0] == 2
    # "max": m / 4 = [[1, .25], [.5, .75]] -> ones at (0,0), (1,0), (1,1)
    norm, _ = normalise_matrices(m, "max")
    np.testing.assert_allclose(norm, [[1.0, 0.25], [0.5, 0.75]])
    s = LayerSFP.from_matrices(m, normalise="max")
    assert s.clusters_ == [[[0], [1]]] and s.noise_[0] == 1 and s.signal_[0] == 2
    # a 3x3 example where centring changes the clusters: column 2 is large for every input.
    m3 = np.array([[5.0, 0.0, 9.0], [4.0, 6.0, 9.0], [0.0, 0.0, 10.0]])
    # max: /10 -> ones: (0,0) .5, (0,2) .9, (1,0) .4, (1,1) .6, (1,2) .9, (2,2) 1
    # candidates 0,1,2; 0-1: (0,1)=0 -> no; 0-2: (2,0)=0 -> no; [[0],[1],[2]], 6 ones, noise 3
    s = LayerSFP.from_matrices(m3, normalise="max")
    assert s.clusters_[0] == [[0], [1], [2]] and s.noise_[0] == 3
    # centred: column means (3, 2, 28/3) -> [[2, -2, -1/3], [1, 4, -1/3], [-3, -2, 2/3]]
    # max 4 -> [[.5, -.5, -1/12], [.25, 1, -1/12], [-.75, -.5, 1/6]] -> ones (0,0), (1,1)
    norm, _ = normalise_matrices(m3, "column-centred")
    np.testing.assert_allclose(norm, [[0.5, -0.5, -1 / 12], [0.25, 1.0, -1 / 12],
                                      [-0.75, -0.5, 1 / 6]])
    s = LayerSFP.from_matrices(m3, normalise="column-centred")
    assert s.clusters_[0] == [[0], [1]] and s.noise_[0] == 0


def test_option_validation():
    m = np.eye(3)[None]
    for bad in (0, 1, 0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.3"):
        with pytest.raises(ValueError, match="threshold"):
            LayerSFP.from_matrices(m, threshold=bad)
    with pytest.raises(ValueError, match=r"'maximum'.*'max'.*'column-centred'"):
        LayerSFP.from_matrices(m, normalise="maximum")
    with pytest.raises(ValueError, match="NaN"):
        LayerSFP.from_matrices(np.full((1, 2, 2), np.nan))
    with pytest.raises(ValueError, match=r"\(C, L, L\)"):
        LayerSFP.from_matrices(np.zeros((2, 3, 4)))
    with pytest.raises(NotFittedError):
        LayerSFP().summary()


# ------------------------------------------------------------------------------------------
# per-layer summary
# ------------------------------------------------------------------------------------------
def hand_layer():
    """Four 4x4 filter matrices with values 1 (one) and 0 (zero), max 1, threshold 0.3.

    f0: block {0,1}, diag 2, extra one (3,0): clusters [[0,1],[2]], signal 5, ones 6, noise 1
    f1: all -1 (dead): no cluster, signal 0, noise 0
    f2: no diagonal, ones (0,1), (1,2), (2,3): no cluster, noise 3
    f3: block {0,1,2}, diag 3, one (0,3) one-directional: [[0,1,2],[3]], signal 10, ones 11,
        noise 1
    """
    m = np.zeros((4, 4, 4))
    m[0][np.ix_([0, 1], [0, 1])] = 1
    m[0, 2, 2] = m[0, 3, 0] = 1
    m[1] = -1
    m[2, 0, 1] = m[2, 1, 2] = m[2, 2, 3] = 1
    m[3][np.ix_([0, 1, 2], [0, 1, 2])] = 1
    m[3, 3, 3] = m[3, 0, 3] = 1
    return m


def test_summary_by_hand():
    s = LayerSFP.from_matrices(hand_layer(), threshold=0.3)
    assert s.clusters_ == [[[0, 1], [2]], [], [], [[0, 1, 2], [3]]]
    np.testing.assert_array_equal(s.signal_, [5, 0, 0, 10])
    np.testing.assert_array_equal(s.noise_, [1, 0, 3, 1])
    np.testing.assert_array_equal(s.dead_, [False, True, False, False])
    summ = s.summary()
    assert summ["clusters_per_filter"] == pytest.approx(2.0)  # (2 + 2) / 2
    assert summ["clusters_per_filter_all"] == pytest.approx(1.0)  # 4 / 4
    assert summ["cluster_size"] == pytest.approx(7 / 4)  # (2 + 1 + 3 + 1) / 4
    assert summ["noise_per_filter"] == pytest.approx(1.0)  # (1 + 1) / 2
    assert summ["noise_per_filter_all"] == pytest.approx(5 / 4)
    assert summ["filters_without_cluster"] == pytest.approx(0.5)
    assert summ["signal_per_filter_all"] == pytest.approx(15 / 4)
    assert summ["snr"] == pytest.approx((15 / 4) / (5 / 4))  # 3
    assert summ["num_clusters"] == 4 and summ["num_filters"] == 4
    row = s.row("conv5")
    assert row["layer"] == "conv5" and row["snr"] == summ["snr"]


def test_summary_degenerate_cases_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        only_signal = LayerSFP.from_matrices(np.ones((2, 3, 3))).summary()
        assert only_signal["snr"] == math.inf and only_signal["noise_per_filter_all"] == 0
        dead = LayerSFP.from_matrices(-np.ones((2, 3, 3))).summary()
        for key in ("clusters_per_filter", "cluster_size", "noise_per_filter", "snr"):
            assert math.isnan(dead[key]), key
        assert dead["clusters_per_filter_all"] == 0 and dead["filters_without_cluster"] == 1


def test_filter_table_and_preferred_label():
    m = hand_layer()
    m[2, :, 3] += 0.2  # f2 col 3 raw mean 0.45 > 0.25; normalised 0.2/1.2 < 0.3: no new one
    s = LayerSFP.from_matrices(m)
    # raw column means: f0 (3/4, 1/2, 1/4, 0) -> 0; f1 all -1 -> 0 (first index);
    # f2 (0, 1/4, 1/4, 0.45) -> 3; f3 (3/4, 3/4, 3/4, 1/2) -> 0 (first index)
    np.testing.assert_array_equal(s.preferred_label_, [0, 0, 3, 0])
    names = ["cat", "dog", "ship", "car"]
    table = s.filter_table("conv5", names)
    assert [r["clusters"] for r in table] == ["cat+dog|ship", "", "", "cat+dog+ship|car"]
    assert [r["preferred_label"] for r in table] == ["cat", "cat", "car", "cat"]
    assert table[0]["layer"] == "conv5" and table[3]["filter"] == 3
    assert table[3]["signal"] == 10 and table[3]["noise"] == 1
    assert s.filter_table("x")[0]["clusters"] == "0+1|2"
    with pytest.raises(ValueError, match="label_names"):
        s.filter_table("x", names[:2])


def test_estimator_api_and_threshold_sweep():
    acts, labels, weight = make_layer(seed=3)
    means = label_means_loop(acts, labels, weight.shape[0])
    est = LayerSFP(threshold=0.4)
    assert est.fit(weight, means) is est
    other = analyze_layer(weight, means, threshold=0.4)
    assert est.summary() == other.summary()
    assert est.get_params() == {"threshold": 0.4, "normalise": "max", "dtype": "float64", "keep_matrices": "auto"}
    mats = filter_matrices(weight, means)
    thresholds = [0.1, 0.3, 0.5, 0.9]
    sweep = threshold_sweep(mats, thresholds)
    assert [d["threshold"] for d in sweep] == thresholds
    for t, d in zip(thresholds, sweep):
        # independent count of ones: normalise by hand with numpy
        ones = np.mean([(mm / mm.max() > t).sum() if mm.max() > 0 else 0 for mm in mats])
        assert d["ones_per_filter_all"] == pytest.approx(ones)
    ones = [d["ones_per_filter_all"] for d in sweep]
    assert all(a >= b for a, b in zip(ones, ones[1:]))


# ------------------------------------------------------------------------------------------
# votes
# ------------------------------------------------------------------------------------------
def test_vote_fractions_match_direct_per_sample_computation():
    acts, labels, weight = make_layer(seed=4, n_per_label=9, num_labels=4, c=6)
    n, c = acts.shape[:2]
    L = weight.shape[0]
    rng = np.random.default_rng(5)
    preferred = rng.integers(0, L, size=c)
    hits = np.zeros(c)
    for s in range(n):
        for k in range(c):
            h = [np.sum(weight[j, k] * acts[s, k]) for j in range(L)]
            hits[k] += int(np.argmax(h)) == preferred[k]
    expected = hits / n
    batches = [acts[:5], torch.from_numpy(acts[5:17]), acts[17:]]
    got = vote_fractions(weight, batches, preferred)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # a generator works too and LayerSFP.score_votes uses preferred_label_
    est = analyze_layer(weight, label_means_loop(acts, labels, L))
    est.score_votes(weight, (acts[i:i + 4] for i in range(0, n, 4)))
    hits = np.zeros(c)
    for s in range(n):
        for k in range(c):
            h = [np.sum(weight[j, k] * acts[s, k]) for j in range(L)]
            hits[k] += int(np.argmax(h)) == est.preferred_label_[k]
    np.testing.assert_allclose(est.vote_fraction_, hits / n, rtol=0, atol=1e-12)
    assert "vote_fraction" in est.filter_table("x")[0]
    with pytest.raises(ValueError, match="no samples"):
        vote_fractions(weight, [], preferred)


# ------------------------------------------------------------------------------------------
# bootstrap
# ------------------------------------------------------------------------------------------
def synthetic_fields(seed=0, n_per_label=40, num_labels=6, c=5):
    """Fields whose label means have clear 2-label blocks plus near-threshold elements."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_labels), n_per_label)
    means = rng.uniform(-0.2, 0.1, size=(c, num_labels, num_labels))
    for k in range(c):
        members = rng.choice(num_labels, size=2, replace=False)
        means[k][np.ix_(members, members)] = 1.0
        means[k, rng.integers(num_labels), rng.integers(num_labels)] = 0.3  # borderline
    noise = rng.normal(scale=0.3, size=(labels.size, c, num_labels))
    fields = means.transpose(1, 0, 2)[labels] + noise  # (N, C, L)
    return fields, labels


def test_bootstrap_contains_point_and_is_reproducible():
    fields, labels = synthetic_fields()
    L = 6
    point_mats = np.stack([label_means_loop(fields[:, k, :], labels, L)
                           for k in range(fields.shape[1])])
    point = LayerSFP.from_matrices(point_mats).summary()
    iv, samples = bootstrap_summary(fields, labels, L, n_boot=60, seed=7,
                                    return_samples=True)
    for key in ("clusters_per_filter", "clusters_per_filter_all", "cluster_size",
                "noise_per_filter", "noise_per_filter_all", "filters_without_cluster",
                "snr", "signal_per_filter_all", "snr_median", "snr_field"):
        lo, hi = iv[key]
        assert lo <= point[key] <= hi, (key, lo, point[key], hi)
        assert samples[key].shape == (60,)
    assert "threshold" not in iv and "num_filters" not in iv
    # noise varies across resamples (borderline elements), so the bootstrap is not trivial
    assert samples["noise_per_filter_all"].std() > 0
    iv2, samples2 = bootstrap_summary(torch.from_numpy(fields), labels, L, n_boot=60, seed=7,
                                      return_samples=True)
    assert iv2 == iv
    np.testing.assert_array_equal(samples2["noise_per_filter_all"],
                                  samples["noise_per_filter_all"])
    _, samples3 = bootstrap_summary(fields, labels, L, n_boot=60, seed=8, return_samples=True)
    assert not np.array_equal(samples3["noise_per_filter_all"],
                              samples["noise_per_filter_all"])


def test_bootstrap_is_stratified_and_validates():
    # one sample per label: stratified resampling must reproduce the data every time
    rng = np.random.default_rng(0)
    fields = rng.normal(size=(4, 3, 4))
    labels = np.array([2, 0, 3, 1])
    iv, samples = bootstrap_summary(fields, labels, 4, n_boot=10, seed=1, return_samples=True)
    mats = np.stack([fields[np.argsort(labels), k, :] for k in range(3)])
    point = LayerSFP.from_matrices(mats).summary()
    assert np.all(samples["ones_per_filter_all"] == point["ones_per_filter_all"])
    with pytest.raises(ValueError, match="without any test sample"):
        bootstrap_summary(fields, np.array([0, 0, 1, 1]), 4, n_boot=2, seed=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_summary(fields, labels, 4, n_boot=2, seed=0, level=1.0)


# ------------------------------------------------------------------------------------------
# plot
# ------------------------------------------------------------------------------------------
def test_cluster_order():
    assert cluster_order([[2, 5], [0]], 6) == [2, 5, 0, 1, 3, 4]
    with pytest.raises(ValueError, match="more than one"):
        cluster_order([[1, 2], [2]], 4)


def test_plot_filter_matrix_writes_reordered_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from filterlens.report import plots
    from filterlens.report.plots import plot_filter_matrix

    names = ["a", "b", "c", "d", "e"]
    m = np.eye(5)
    m[np.ix_([1, 3], [1, 3])] = 1.0
    clusters = LayerSFP.from_matrices(m).clusters_[0]
    assert clusters == [[0], [1, 3], [2], [4]]
    fig = plots.filter_matrix_figure(m, 0.3, [[1, 3]], names, "t", "max")
    ax_bin = fig.axes[1]  # the binarised matrix, beside the normalised one (axes[0])
    assert [t.get_text() for t in ax_bin.get_xticklabels()] == ["b", "d", "a", "c", "e"]
    assert [t.get_text() for t in ax_bin.get_yticklabels()] == ["b", "d", "a", "c", "e"]
    assert ax_bin.get_xlabel() == "output unit" and ax_bin.get_ylabel() == "input label"
    shown = ax_bin.get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown)[:2, :2], np.ones((2, 2)))  # the block
    out = plot_filter_matrix(m, 0.3, clusters, names, tmp_path / "sub" / "f0.png", title="f0")
    assert out.exists() and out.stat().st_size > 1000
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path / "sub") == ["f0.png"]  # no temporary file left behind


def test_chunked_fit_equals_the_whole_layer_at_once(monkeypatch):
    """fit() contracts and analyses units chunk by chunk and keeps no array of all matrices unless asked:
    the same clusters, noise and summary as analysing the full (C, L, L) matrices at once, any unit's
    matrix on demand, and the threshold sweep recomputed from the weight and means."""
    import filterlens.sfp.layer as layer_module

    acts, labels, weight = make_layer(seed=5)
    means = label_means_loop(acts, labels, weight.shape[0])
    whole = LayerSFP(threshold=0.3).fit_matrices(filter_matrices(weight, means))
    L = weight.shape[0]
    monkeypatch.setattr(layer_module, "_CHUNK_ELEMENTS", 2 * L * L + 1)  # two units per chunk, an odd remainder
    est = LayerSFP(threshold=0.3, keep_matrices=False).fit(weight, means)
    assert not hasattr(est, "matrices_") and not hasattr(est, "binary_")
    assert est.clusters_ == whole.clusters_
    assert np.array_equal(est.noise_, whole.noise_) and np.array_equal(est.dead_, whole.dead_)
    assert est.summary() == whole.summary()
    for c in (0, weight.shape[1] - 1):
        np.testing.assert_array_equal(est.matrix(c), whole.matrices_[c])
    assert est.summaries([0.2, 0.5]) == threshold_sweep(whole.matrices_, [0.2, 0.5])
    kept = LayerSFP(threshold=0.3, keep_matrices=True).fit(weight, means)
    np.testing.assert_array_equal(kept.matrices_, whole.matrices_)


def test_analyze_unit_is_that_unit_of_the_layer_analysis():
    """A unit analysed on its own (the explorer's and Analysis.unit's path) gives the layer analysis' matrix,
    binary matrix, clusters and noise for that unit; its matrix is the silenced-FC mean of the brute-force
    loop; its top samples are the k strongest fields on the cluster's output units, found here by sorting
    all of them."""
    from filterlens.sfp import analyze_unit

    acts, labels, weight = make_layer(seed=3, c=5)
    means = label_means_loop(acts, labels, weight.shape[0])
    layer = LayerSFP(threshold=0.3).fit(weight, means)
    fields = np.einsum("jchw,nchw->ncj", weight, acts)  # (N, C, L) every sample's single-unit fields
    values = torch.from_numpy(np.sort(fields, axis=0)[::-1].transpose(1, 2, 0).copy())  # (C, L, N), all samples
    indices = torch.from_numpy(np.argsort(-fields, axis=0, kind="stable").transpose(1, 2, 0).copy())
    for c in range(weight.shape[1]):
        one = analyze_unit(weight, means, c, 0.3, "max", (values, indices), k=3)
        brute = np.stack([fields[labels == i, c].mean(0) for i in range(weight.shape[0])])
        np.testing.assert_allclose(one.matrix, brute, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(one.binary, layer.binary_[c])
        assert one.clusters == layer.clusters_[c] and one.noise == layer.noise_[c]
        assert one.dead == bool(layer.dead_[c])
        for cluster, top in zip(one.clusters, one.top):
            strongest = fields[:, c, cluster].max(1)
            assert top == [int(i) for i in np.argsort(-strongest, kind="stable")[:3]]
    assert analyze_unit(weight, means, 0).top == []


# ------------------------------------------------------------------------------------------
# SNR candidates (METHOD.md, "SNR candidates"), against a brute force written from its words
# ------------------------------------------------------------------------------------------
def reference_snr_candidates(mats, threshold=0.3, normalise="max"):
    """``snr``, ``snr_median`` and ``snr_field`` of a layer, literally: loops over filters and elements.

    M_c = F_c / max(F_c) (after subtracting each column's mean over input labels for "column-centred"); a
    filter whose largest element is <= 0 has no cluster and no ones. Signal elements: the elements of the
    cluster blocks; noise elements: the ones outside them."""
    C, L, _ = mats.shape
    signals, noises, S, N, with_cluster = [], [], [], [], []
    for c in range(C):
        F = np.array(mats[c], dtype=np.float64)
        if normalise == "column-centred":
            F = F - np.array([[F[:, j].mean() for j in range(L)]] * L)
        top = max(F[i, j] for i in range(L) for j in range(L))
        if top <= 0:
            signals.append(0)
            noises.append(0)
            continue
        M = F / top
        ones = [[M[i, j] > threshold for j in range(L)] for i in range(L)]
        clusters = reference_greedy(np.array(ones))
        in_block = [[False] * L for _ in range(L)]
        for k in clusters:
            for a in k:
                for b in k:
                    in_block[a][b] = True
        signal = sum(in_block[i][j] for i in range(L) for j in range(L))
        noise = sum(ones[i][j] and not in_block[i][j] for i in range(L) for j in range(L))
        signals.append(signal)
        noises.append(noise)
        if clusters:
            with_cluster.append(c)
            block_values = [M[i, j] for i in range(L) for j in range(L) if in_block[i][j]]
            rest_values = [max(M[i, j], 0.0) for i in range(L) for j in range(L) if not in_block[i][j]]
            S.append(sum(block_values) / len(block_values))
            N.append(sum(rest_values) / len(rest_values) if rest_values else 0.0)
    mean_signal, mean_noise = sum(signals) / C, sum(noises) / C
    snr = mean_signal / mean_noise if mean_noise > 0 else (math.inf if mean_signal > 0 else math.nan)
    if not with_cluster:
        return {"snr": snr, "snr_median": math.nan, "snr_field": math.nan, "S": S, "N": N}
    ratios = sorted(signals[c] / max(noises[c], 1) for c in with_cluster)
    k = len(ratios)
    median = ratios[k // 2] if k % 2 else (ratios[k // 2 - 1] + ratios[k // 2]) / 2
    mean_S, mean_N = sum(S) / len(S), sum(N) / len(N)
    return {"snr": snr, "snr_median": median, "snr_field": mean_S / mean_N if mean_N > 0 else math.nan,
            "S": S, "N": N, "with_cluster": with_cluster}


def planted_layer(seed, c=7, L=6):
    """Random filter matrices with planted blocks, a dead filter (all negative), an all-zero one, one whose
    only block covers the whole matrix, and one with ones but no diagonal (no cluster)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-0.6, 0.45, size=(c, L, L))
    for k in range(c - 4):
        members = rng.choice(L, size=int(rng.integers(1, 4)), replace=False)
        m[k][np.ix_(members, members)] = rng.uniform(0.6, 1.0, size=(len(members), len(members)))
    m[c - 4] = -rng.uniform(0.1, 1.0, size=(L, L))  # dead: largest element < 0
    m[c - 3] = 0.0  # dead: largest element 0
    m[c - 2] = rng.uniform(0.5, 1.0, size=(L, L))  # every element above 0.3 of the max: one block of L
    m[c - 1] = rng.uniform(-0.5, 0.2, size=(L, L))
    m[c - 1][np.arange(L), (np.arange(L) + 1) % L] = 1.0  # ones off the diagonal only
    np.fill_diagonal(m[c - 1], -0.5)
    return m


def _same_or_nan(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("normalise", ["max", "column-centred"])
def test_snr_candidates_match_brute_force(seed, normalise):
    m = planted_layer(seed)
    ref = reference_snr_candidates(m, 0.3, normalise)
    s = LayerSFP.from_matrices(m, threshold=0.3, normalise=normalise)
    summ = s.summary()
    for key in ("snr", "snr_median", "snr_field"):
        assert _same_or_nan(summ[key], ref[key]), (key, summ[key], ref[key])
    has = np.flatnonzero(s.num_clusters_ > 0)
    assert has.tolist() == ref["with_cluster"]
    np.testing.assert_allclose(s.field_signal_[has], ref["S"], rtol=1e-12)
    np.testing.assert_allclose(s.field_noise_[has], ref["N"], rtol=1e-12, atol=1e-15)
    assert np.isnan(s.field_signal_[s.num_clusters_ == 0]).all()
    if normalise == "max":  # the filter whose block is the whole matrix: N_c = 0, S_c its mean
        whole = m.shape[0] - 2
        assert s.clusters_[whole] == [list(range(m.shape[1]))]
        assert s.field_noise_[whole] == 0.0
        assert s.field_signal_[whole] == pytest.approx((m[whole] / m[whole].max()).mean(), rel=1e-12)


def test_snr_candidates_edge_cases():
    # no filter with a cluster (dead, all-zero, ones off the diagonal only): nan, without warnings
    off = np.full((3, 3), -0.2)
    off[0, 1] = off[1, 2] = 1.0
    none = np.stack([-np.ones((3, 3)), np.zeros((3, 3)), off])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summ = LayerSFP.from_matrices(none).summary()
    assert math.isnan(summ["snr_median"]) and math.isnan(summ["snr_field"])
    assert summ["snr"] == 0.0  # no signal, noise 2/3 per filter (the count SNR is defined)
    # every clustered filter's blocks cover the whole matrix: N_c = 0 for all -> snr_field nan, S_c still there
    cover = np.stack([np.ones((3, 3)), 0.5 + np.eye(3) / 2, -np.ones((3, 3))])
    s = LayerSFP.from_matrices(cover)
    summ = s.summary()
    assert s.field_noise_[:2].tolist() == [0.0, 0.0]
    assert summ["noise_field"] == 0.0 and math.isnan(summ["snr_field"])
    assert summ["signal_field"] == pytest.approx((1.0 + (3 * 1.0 + 6 * 0.5) / 9) / 2)
    assert summ["snr_median"] == pytest.approx(9.0)  # 9 / max(0, 1) for both
    assert summ["snr"] == math.inf
    # a hand example: block {0, 1} of 0.8 (max 1 at (0, 0)), one noise one 0.5, a negative and 0.1s elsewhere
    h = np.full((3, 3), 0.1)
    h[np.ix_([0, 1], [0, 1])] = 0.8
    h[0, 0], h[2, 0], h[2, 1] = 1.0, 0.5, -0.4
    s = LayerSFP.from_matrices(h[None])
    assert s.clusters_[0] == [[0, 1]] and s.noise_[0] == 1
    assert s.field_signal_[0] == pytest.approx((1.0 + 3 * 0.8) / 4)
    assert s.field_noise_[0] == pytest.approx((0.5 + 0 + 3 * 0.1) / 5)
    assert s.summary()["snr_median"] == pytest.approx(4.0)


def test_snr_candidates_chunked_equal_whole(monkeypatch):
    """The field parts come from each chunk's normalised matrices: chunk by chunk (fit and fit_matrices) gives
    the values of the whole layer at once."""
    import filterlens.sfp.layer as layer_module

    m = np.concatenate([planted_layer(s) for s in range(3)])
    whole = LayerSFP.from_matrices(m)
    w = np.random.default_rng(0).normal(size=(6, 5, 2, 2))
    means = np.random.default_rng(1).normal(size=(6, 5, 2, 2))
    whole_fit = LayerSFP(keep_matrices=False).fit(w, means)
    L = m.shape[1]
    monkeypatch.setattr(layer_module, "_CHUNK_ELEMENTS", 2 * L * L + 1)  # two units per chunk
    chunked = LayerSFP.from_matrices(m)
    chunked_fit = LayerSFP(keep_matrices=False).fit(w, means)
    for a, b in ((whole, chunked), (whole_fit, chunked_fit)):
        np.testing.assert_array_equal(a.field_signal_, b.field_signal_)
        np.testing.assert_array_equal(a.field_noise_, b.field_noise_)
        sa, sb = a.summary(), b.summary()
        for key in ("snr", "snr_median", "snr_field", "signal_field", "noise_field"):
            assert _same_or_nan(sa[key], sb[key]), key
    assert np.isfinite(whole.summary()["snr_field"])


# ------------------------------------------------------------------------------------------
# bootstrap replicates for depth trends: the same resample in every layer, and the accuracy
# ------------------------------------------------------------------------------------------
def test_resamples_are_stratified_seeded_and_shared_by_layers():
    from filterlens.sfp import resample_counts

    labels = np.array([2, 0, 1, 1, 0, 2, 2, 0, 1, 0])
    a = list(resample_counts(labels, 3, 5, seed=11))
    b = list(resample_counts(labels, 3, 5, seed=11))
    assert len(a) == 5 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, resample_counts(labels, 3, 5, seed=12)))
    for counts in a:
        assert counts.shape == (10,) and counts.sum() == 10
        for i in range(3):  # stratified: each label keeps its number of draws
            assert counts[labels == i].sum() == (labels == i).sum()
    # two layers (different unit counts) of one run: replicate b re-averages the same resample in both, so
    # each layer's replicate b equals the summary of its fields' weighted label means with that resample's
    # counts (weighted means by a plain loop here)
    rng = np.random.default_rng(3)
    layers = [rng.normal(size=(10, c, 3)) for c in (2, 5)]
    for fields in layers:
        _, samples = bootstrap_summary(fields, labels, 3, n_boot=5, seed=11, return_samples=True)
        for rep, counts in enumerate(a):
            mats = np.zeros((fields.shape[1], 3, 3))
            for k in range(fields.shape[1]):
                for i in range(3):
                    w = counts * (labels == i)
                    mats[k, i] = (w[:, None] * fields[:, k, :]).sum(0) / w.sum()
            expected = LayerSFP.from_matrices(mats).summary()
            for key in ("ones_per_filter_all", "noise_per_filter_all", "signal_per_filter_all"):
                assert samples[key][rep] == pytest.approx(expected[key]), (key, rep)


def test_accuracy_from_fields_equals_the_fc_and_is_resampled():
    """The probe is bias-free: its logits are the single-unit fields summed over units, so the per-sample
    correctness (and so the accuracy) follows from the kept fields; each replicate's accuracy is the mean
    correctness over its resample."""
    from filterlens.sfp import correct_from_fields, resample_counts

    acts, labels, weight = make_layer(seed=9, n_per_label=6, num_labels=4, c=3)
    fc = torch.nn.Linear(acts[0].size, 4, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(weight.reshape(4, -1)))
        pred = fc(torch.from_numpy(acts.reshape(len(acts), -1)).float()).argmax(1).numpy()
    fields = sample_fields(weight, acts)
    correct = correct_from_fields(fields, labels)
    np.testing.assert_array_equal(correct, pred == labels)
    assert 0 < correct.mean() < 1  # the check is not trivial
    iv, samples = bootstrap_summary(fields, labels, 4, n_boot=30, seed=2, return_samples=True, accuracy=True)
    draws = list(resample_counts(labels, 4, 30, seed=2))
    expected = [sum(c * ok for c, ok in zip(counts, pred == labels)) / len(labels) for counts in draws]
    np.testing.assert_allclose(samples["accuracy"], expected, rtol=1e-12)
    assert iv["accuracy"][0] <= correct.mean() <= iv["accuracy"][1]
    assert "accuracy" not in bootstrap_summary(fields, labels, 4, n_boot=2, seed=2)
