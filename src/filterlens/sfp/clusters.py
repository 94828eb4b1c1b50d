"""Normalise, binarise and cluster unit matrices (METHOD.md stage 3, items 1-3), and the display order."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .matrices import _CHUNK_ELEMENTS, DEFAULT_THRESHOLD, _check_normalise, _check_threshold


def _process_block(block: torch.Tensor, normalise: str, out: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise ``block`` (n, L, L) into ``out`` (torch: every core, no Python loop); return the raw
    column means, the basis maxima and the dead flags.

    Dead filters (basis maximum <= 0) get an all-zero normalised matrix.
    """
    colmean = block.mean(dim=1)  # (n, L): mean over input labels i, per output unit j
    if not bool(torch.isfinite(colmean).all()):
        raise ValueError("filter matrices contain NaN or infinite values")
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
    return colmean, maxima, dead


def _as_matrices(matrices: Any) -> np.ndarray:
    """(C, L, L) (or a single (L, L)) float array from a tensor / array, no copy if possible."""
    if isinstance(matrices, torch.Tensor):
        matrices = matrices.detach().cpu().numpy()
    m = np.asarray(matrices)
    if m.dtype not in (np.float32, np.float64):
        m = m.astype(np.float64)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[1] != m.shape[2] or m.shape[1] == 0:
        raise ValueError(
            f"matrices must have shape (C, L, L) (or (L, L)) with L >= 1; got shape "
            f"{tuple(np.shape(matrices))}"
        )
    return m


def normalise_matrices(matrices: Any, normalise: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Normalise filter matrices (METHOD.md stage 3, items 1 and 7).

    ``"max"``: ``F_c / max(F_c)``. ``"column-centred"``: subtract each column's mean over
    input labels (``F_c[:, j].mean()``) and divide by the maximum of the result.

    Parameters
    ----------
    matrices : array or tensor, shape (C, L, L) or (L, L)
    normalise : {"max", "column-centred"}

    Returns
    -------
    normalised : numpy.ndarray, same shape as ``matrices``
        Dead filters (maximum <= 0) are all zeros here.
    dead : numpy.ndarray of bool, shape (C,) (a 0-d array for a single matrix)
    """
    normalise = _check_normalise(normalise)
    single = np.ndim(matrices) == 2
    m = _as_matrices(matrices)
    out = np.empty_like(m)
    _, _, dead = _process_block(torch.from_numpy(m), normalise, torch.from_numpy(out))
    return (out[0], dead.numpy()[0]) if single else (out, dead.numpy())


def binarise_matrices(matrices: Any, threshold: float = DEFAULT_THRESHOLD,
                      normalise: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Normalise and binarise filter matrices (METHOD.md stage 3, items 1-2).

    An element is 1 when its normalised value is *strictly* greater than ``threshold``.
    Processed in chunks of filters so the normalised copy never exists in full.

    Parameters
    ----------
    matrices : array or tensor, shape (C, L, L) or (L, L)
    threshold : float in (0, 1), default 0.3
    normalise : {"max", "column-centred"}, default "max"

    Returns
    -------
    binary : numpy.ndarray of bool, same shape as ``matrices``
    dead : numpy.ndarray of bool, shape (C,) (0-d for a single matrix)
    """
    single = np.ndim(matrices) == 2
    binary, dead, _, _ = _binarise(_as_matrices(matrices), _check_threshold(threshold),
                                   _check_normalise(normalise))
    return (binary[0], dead[0]) if single else (binary, dead)


def _binarise(m: np.ndarray, threshold: float, normalise: str, buffers: tuple | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chunked normalise + binarise; also returns basis maxima and preferred output units.

    ``buffers``: (normalised, binary) torch tensors, reused across calls (fresh large buffers cost more in page
    faults than the arithmetic); their length is the chunk, so with ``len(m) <= len(buffers[0])`` the normalised
    matrices of all of ``m`` are in ``buffers[0][:len(m)]`` afterwards."""
    c, L, _ = m.shape
    step = max(1, min(c, _CHUNK_ELEMENTS // (L * L))) if buffers is None else len(buffers[0])
    mt = torch.from_numpy(m)  # a view: no copy
    if buffers is None:
        buffers = (torch.empty((step, L, L), dtype=mt.dtype), torch.empty((step, L, L), dtype=torch.bool))
    buf, bbuf = buffers
    binary = np.empty((c, L, L), dtype=bool) if c > len(bbuf) else bbuf[:c].numpy()
    dead = np.empty(c, dtype=bool)
    maxima = np.empty(c, dtype=np.float64)
    preferred = np.empty(c, dtype=np.int64)
    bt = torch.from_numpy(binary)
    for s in range(0, c, step):
        e = min(c, s + step)
        out = buf[: e - s]
        colmean, mx, dd = _process_block(mt[s:e], normalise, out)
        torch.gt(out, threshold, out=bt[s:e])
        dead[s:e] = dd.numpy()
        maxima[s:e] = mx.numpy()
        preferred[s:e] = colmean.argmax(dim=1).numpy()
    return binary, dead, maxima, preferred


def _greedy_unchecked(binary: np.ndarray) -> list[list[int]]:
    cand = np.flatnonzero(np.diagonal(binary))
    k = cand.size
    if k == 0:
        return []
    sub = binary[np.ix_(cand, cand)]
    sym = sub & sub.T  # a and b compatible: binary[a, b] and binary[b, a]
    remaining = np.ones(k, dtype=bool)
    clusters = []
    start = 0
    while start < k:
        members = [start]
        remaining[start] = False
        comp = remaining & sym[start]
        while True:
            nxt = int(np.argmax(comp))  # smallest candidate compatible with every member
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


def greedy_clusters(binary: Any) -> list[list[int]]:
    """Greedy cluster partition of one binarised filter matrix (METHOD.md stage 3, item 3).

    Candidates are the labels whose diagonal element is 1. The smallest remaining candidate
    starts a cluster; every later remaining candidate, in ascending order, joins it if the
    square block of the enlarged cluster (``binary[a, b]`` for all ``a, b`` in it, both
    directions) is still all ones; the cluster's labels leave the candidates; repeat until
    none remain. Singletons are allowed.

    Implementation: a boolean "compatible with every member" vector (``binary[k, m] and
    binary[m, k]`` ANDed over the members, restricted to remaining candidates); the smallest
    compatible candidate is added each time. Compatibility only shrinks as members are added,
    so this equals the ascending scan, at O(L) vector work per added label.

    Parameters
    ----------
    binary : array-like of bool, shape (L, L)

    Returns
    -------
    list of list of int
        Clusters in order of their smallest label; labels ascending within each.
    """
    b = np.asarray(binary.detach().cpu() if isinstance(binary, torch.Tensor) else binary)
    if b.ndim != 2 or b.shape[0] != b.shape[1]:
        raise ValueError(f"binary must be a square (L, L) matrix; got shape {b.shape}")
    if b.dtype != bool:
        if not np.all((b == 0) | (b == 1)):
            raise ValueError("binary must contain only 0/1 (or bool) values")
        b = b.astype(bool)
    return _greedy_unchecked(b)


def _candidate_blocks(binary: np.ndarray, cand: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each matrix's candidate labels (ascending) packed to the front: their labels ``pos`` (M, K), which packed
    positions are real candidates ``valid`` (M, K), and their compatibility ``sym`` (M, K, K) (``binary[a, b]``
    and ``binary[b, a]``, both candidates). Without packing (``K`` close to L) the positions are the labels."""
    m, L = binary.shape[0], binary.shape[1]
    if 2 * K > L:  # little to gain: keep every label, the non-candidates masked out
        pos, valid = np.broadcast_to(np.arange(L), (m, L)), cand
        sym = binary & binary.transpose(0, 2, 1)
    else:  # rows, then (through a transposed copy) columns, gathered as whole rows: no element-wise gather
        pos = np.argsort(~cand, axis=1, kind="stable")[:, :K]
        valid = np.arange(K) < np.count_nonzero(cand, axis=1)[:, None]
        flat = (pos + L * np.arange(m)[:, None]).ravel()
        rows = binary.reshape(m * L, L)[flat].reshape(m, K, L)
        sub_t = np.ascontiguousarray(rows.transpose(0, 2, 1)).reshape(m * L, K)[flat].reshape(m, K, K)
        sym = sub_t & sub_t.transpose(0, 2, 1)
    sym &= valid[:, :, None]
    sym &= valid[:, None, :]
    return pos, valid, sym


def _greedy_labels_unchecked(binary: np.ndarray) -> np.ndarray:
    """:func:`greedy_cluster_labels` of a bool (M, L, L) array, unchecked."""
    m, L = binary.shape[0], binary.shape[1]
    out = np.full((m, L), -1, dtype=np.int64)
    cand = np.diagonal(binary, axis1=1, axis2=2)
    K = int(np.count_nonzero(cand, axis=1).max()) if m else 0
    if K == 0:
        return out
    # the greedy only ever looks at candidates: packed to the front, the loop below runs over K (the most
    # candidates of any matrix), not over L
    pos, valid, sym = _candidate_blocks(binary, cand, K)
    K = sym.shape[1]
    # comp[m, s, q]: q is compatible with every member so far of the cluster that packed candidate s started
    comp = sym.copy()
    start = np.zeros((m, K), dtype=bool)
    lab = np.full((m, K), -1, dtype=np.int64)  # per packed candidate: the packed start of its cluster
    for p in range(K):
        # candidate p joins the first open cluster (smallest start) whose members (all < p) it is compatible
        # with, else it starts the next cluster (when it is a candidate)
        if p:
            col = comp[:, :p, p] & start[:, :p]
            first, joins = col.argmax(axis=1), col.any(axis=1)
        else:
            first, joins = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=bool)
        new = valid[:, p] & ~joins
        start[:, p] = new
        lab[:, p] = np.where(joins, first, np.where(new, p, -1))
        j = np.flatnonzero(joins)
        if j.size:
            s = first[j]
            comp[j, s, :] &= sym[j, p, :]
    mi, pi = np.nonzero(lab >= 0)
    out[mi, pos[mi, pi]] = pos[mi, lab[mi, pi]]
    return out


def greedy_cluster_labels(binary: Any) -> np.ndarray:
    """The greedy clusters (METHOD.md stage 3, item 3) of many binarised matrices at once, as labels.

    Equal, matrix by matrix, to :func:`greedy_clusters`. The greedy scan, cluster after cluster, equals one
    ascending pass over the candidates in which each candidate joins the first cluster (in the order of their
    smallest labels) whose members so far it is compatible with (``binary[a, b]`` and ``binary[b, a]``), or
    else starts a new cluster: a cluster's members below a candidate are fixed before the scan reaches it, and
    every label below the first remaining candidate is already placed. That pass is vectorised over the
    matrices, with a "compatible with every member" vector per open cluster, so the Python loop runs once per
    candidate position (at most L times), whatever the number of matrices; the work is O(L^2) per matrix.

    Parameters
    ----------
    binary : array-like of bool, shape (M, L, L) (or a single (L, L))

    Returns
    -------
    numpy.ndarray of int64, shape (M, L) (or (L,))
        For every matrix and label, the smallest label of the label's cluster, -1 for a label in no cluster.
        :func:`clusters_from_labels` turns a row into :func:`greedy_clusters`' lists.
    """
    b = np.asarray(binary.detach().cpu() if isinstance(binary, torch.Tensor) else binary)
    single = b.ndim == 2
    if single:
        b = b[None]
    if b.ndim != 3 or b.shape[1] != b.shape[2]:
        raise ValueError(f"binary must have shape (M, L, L) or (L, L); got shape {b.shape}")
    if b.dtype != bool:
        if not np.all((b == 0) | (b == 1)):
            raise ValueError("binary must contain only 0/1 (or bool) values")
        b = b.astype(bool)
    out = _greedy_labels_unchecked(b)
    return out[0] if single else out


def clusters_from_labels(labels: Any) -> list[list[int]]:
    """One matrix's clusters as :func:`greedy_clusters` lists them, from its row of
    :func:`greedy_cluster_labels` (L,): clusters in order of their smallest label, labels ascending within."""
    lab = np.asarray(labels, dtype=np.int64)
    members = np.flatnonzero(lab >= 0)
    if members.size == 0:
        return []
    members = members[np.argsort(lab[members], kind="stable")]  # by cluster (its smallest label), ascending
    cuts = np.flatnonzero(np.diff(lab[members])) + 1
    return [part.tolist() for part in np.split(members, cuts)]


def cluster_order(clusters: Sequence[Sequence[int]], num_labels: int) -> list[int]:
    """Label order for display: cluster labels first, grouped by cluster, then the rest
    in ascending order."""
    seen: list[int] = []
    used = np.zeros(num_labels, dtype=bool)
    for cl in clusters:
        for i in cl:
            i = int(i)
            if not 0 <= i < num_labels:
                raise ValueError(f"cluster label {i} outside [0, {num_labels})")
            if used[i]:
                raise ValueError(f"label {i} appears in more than one cluster")
            used[i] = True
            seen.append(i)
    return seen + np.flatnonzero(~used).tolist()


def top_samples(values: Any, indices: Any, cluster: Sequence[int], k: int) -> list[int]:
    """The ``k`` samples that drive a cluster most: ranked by their largest field on any of the cluster's
    output units, from the per-output-unit top lists ``values``/``indices`` (L, k') of one unit (the
    test pass keeps them: :class:`filterlens.probes.ProbeEval`). Exact for k <= k': a sample in the top k
    of the maximum over the cluster is in the top list of the output unit where its maximum is."""
    vals = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    idx = np.asarray(indices.detach().cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
    best: dict[int, float] = {}
    for j in cluster:
        for v, i in zip(vals[int(j)], idx[int(j)]):
            if v > best.get(int(i), -np.inf):
                best[int(i)] = float(v)
    return [i for i, _ in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
