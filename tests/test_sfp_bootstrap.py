"""Tests of the batched single-unit analysis: the greedy clusters of many matrices at once, and the bootstrap's
replicates as matrix products (METHOD.md stage 3, "single-filter performance" and "SNR candidates").

The expected values come from (a) METHOD.md's words, written out as nested loops here, (b) the one-matrix
``greedy_clusters``, and (c) REFERENCE: the bootstrap as it was before it was batched (commit 64e8eef), copied
below: one replicate at a time, ``np.add.reduceat`` for the resampled label means, the per-unit Python greedy
clustering and the per-unit field parts and summary. Never from the new code's own output.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from filterlens.sfp import clusters_from_labels, greedy_cluster_labels, greedy_clusters


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
