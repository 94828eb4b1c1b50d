"""Per-unit counts and field parts of many unit matrices at once (METHOD.md stage 3 items 4 and 6, "SNR
candidates"), and the layer summaries of many bootstrap replicates at once: no Python loop over units.

:class:`~filterlens.sfp.LayerSFP` fits its chunks with :func:`unit_stats`; the bootstrap
(:func:`~filterlens.sfp.bootstrap_summary`) also uses :func:`layer_summaries`, the batched twin of
:meth:`LayerSFP.summary <filterlens.sfp.LayerSFP.summary>` (same keys, same order, same formulas).
"""
from __future__ import annotations

import numpy as np
import torch

# the cluster blocks of many matrices are selected in pieces of at most this many elements
_PIECE_ELEMENTS = 1 << 22

#: What :func:`unit_stats` returns per unit, and :func:`layer_summaries` reads per replicate and unit.
UNIT_KEYS = ("num_clusters", "labels_in_clusters", "signal", "ones", "field_signal", "field_noise")


def _block_sums(norm: torch.Tensor, labels: np.ndarray) -> np.ndarray:
    """Per matrix, the sum of ``norm`` (M, L, L) over its cluster blocks (``labels`` (M, L), its greedy clusters):
    the block elements selected in one sequential pass, a piece of matrices at a time (at most
    ``_PIECE_ELEMENTS`` elements of masks and selections each), and summed matrix by matrix in row order."""
    m, L = labels.shape
    values = norm.numpy()
    out = np.zeros(m)
    step = max(1, _PIECE_ELEMENTS // (L * L))
    for s in range(0, m, step):
        lab = labels[s:s + step]
        block = np.equal(lab[:, :, None], lab[:, None, :])
        block &= (lab >= 0)[:, :, None]
        counts = np.count_nonzero(block.reshape(len(lab), -1), axis=1)
        picked = values[s:s + step][block]
        nz = np.flatnonzero(counts)
        if nz.size:
            out[s + nz] = np.add.reduceat(picked, (np.cumsum(counts) - counts)[nz])
    return out


def unit_stats(norm: torch.Tensor, binary: torch.Tensor, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-unit counts and field parts of ``M`` units (METHOD.md stage 3 item 4 and "SNR candidates").

    Parameters
    ----------
    norm : torch.Tensor, shape (M, L, L), float, contiguous, on the CPU
        The normalised matrices ``M_c``; **overwritten** (in place, so no temporary of their size).
    binary : torch.Tensor of bool, shape (M, L, L)
        ``norm > threshold`` (all zeros for a dead unit).
    labels : numpy.ndarray of int64, shape (M, L)
        The greedy clusters as :func:`~filterlens.sfp.greedy_cluster_labels` gives them.

    Returns
    -------
    dict of numpy.ndarray, shape (M,)
        ``num_clusters``, ``labels_in_clusters`` (sum of sizes), ``signal`` (sum of squared sizes), ``ones``
        (int64); ``field_signal`` S_c, the mean of M_c over its cluster-block elements, and ``field_noise``
        N_c, the mean of max(M_c, 0) over every other element (0 when the blocks cover the matrix), both
        float64 and nan for a unit without a cluster.
    """
    m, L = int(norm.shape[0]), int(norm.shape[1])
    placed = labels >= 0
    # sizes[u, s]: the size of unit u's cluster whose smallest label is s
    flat = (labels + L * np.arange(m)[:, None])[placed]
    sizes = np.bincount(flat, minlength=m * L).reshape(m, L)
    num_clusters = np.count_nonzero(sizes, axis=1).astype(np.int64)
    labels_in = placed.sum(axis=1).astype(np.int64)
    signal = (sizes * sizes).sum(axis=1).astype(np.int64)
    ones = np.count_nonzero(binary.numpy().reshape(m, -1), axis=1).astype(np.int64)
    inside = _block_sums(norm, labels)
    # outside the blocks an element below the threshold adds max(M, 0) and a one (noise) adds M
    total = norm.sum(dim=(1, 2)).numpy().astype(np.float64)
    norm.masked_fill_(binary, 0)
    ones_mass = total - norm.sum(dim=(1, 2)).numpy()  # the mass of the ones (blocks and noise)
    low = norm.clamp_(min=0).sum(dim=(1, 2)).numpy().astype(np.float64)  # the positive mass of the zeros
    has = num_clusters > 0
    rest = L * L - signal
    noise_mass = np.where(ones > signal, ones_mass - inside, 0.0)
    field_signal = np.full(m, np.nan)
    np.divide(inside, signal, out=field_signal, where=has)
    field_noise = np.where(has, 0.0, np.nan)
    np.divide(low + noise_mass, rest, out=field_noise, where=has & (rest > 0))
    return {"num_clusters": num_clusters, "labels_in_clusters": labels_in, "signal": signal, "ones": ones,
            "field_signal": field_signal, "field_noise": field_noise}


def _mean_where(values: np.ndarray, mask: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row, the mean of ``values`` where ``mask`` (``count`` of them); nan for a row without any."""
    total = np.where(mask, values, 0).sum(axis=1)
    out = np.full(values.shape[0], np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _median_where(values: np.ndarray, mask: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per row, the median of ``values`` where ``mask`` (as :func:`numpy.median`: the mean of the two middle
    values for an even count); nan for a row without any."""
    srt = np.sort(np.where(mask, values, np.inf), axis=1)  # the selected values first, ascending
    rows = np.arange(values.shape[0])
    hi = np.take(srt, rows * srt.shape[1] + np.minimum(count // 2, srt.shape[1] - 1))
    lo = np.take(srt, rows * srt.shape[1] + np.maximum((count - 1) // 2, 0))
    return np.where(count > 0, np.where(count % 2 == 1, hi, (lo + hi) / 2), np.nan)


def layer_summaries(units: dict[str, np.ndarray], dead: np.ndarray) -> dict[str, np.ndarray]:
    """The numeric entries of :meth:`LayerSFP.summary <filterlens.sfp.LayerSFP.summary>` for ``B`` replicates
    of a layer at once (METHOD.md stage 3 items 5-6 and "SNR candidates"), settings left out.

    Parameters
    ----------
    units : dict of numpy.ndarray, each shape (B, C)
        The :data:`UNIT_KEYS` per replicate and unit (as :func:`unit_stats` gives them).
    dead : numpy.ndarray of bool, shape (B, C)

    Returns
    -------
    dict of numpy.ndarray, each shape (B,), float64
        The keys of ``LayerSFP.summary()`` that are estimates, in its order; means over empty sets are nan.
    """
    n_clusters = units["num_clusters"]
    signal, ones = units["signal"], units["ones"]
    noise = ones - signal
    c = n_clusters.shape[1]
    has = n_clusters > 0
    n_has = has.sum(axis=1)
    total_clusters = n_clusters.sum(axis=1)
    cluster_size = np.full(n_clusters.shape[0], np.nan)
    np.divide(units["labels_in_clusters"].sum(axis=1), total_clusters, out=cluster_size,
              where=total_clusters > 0)
    signal_all, noise_all = signal.sum(axis=1) / c, noise.sum(axis=1) / c
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(noise_all > 0, signal_all / noise_all,
                       np.where(signal_all > 0, np.inf, np.nan))
        signal_field = _mean_where(units["field_signal"], has, n_has)
        noise_field = _mean_where(units["field_noise"], has, n_has)
        snr_field = np.where(noise_field > 0, signal_field / noise_field, np.nan)
    ratio = signal / np.maximum(noise, 1)
    return {
        "clusters_per_filter": _mean_where(n_clusters, has, n_has),
        "clusters_per_filter_all": n_clusters.sum(axis=1) / c,
        "cluster_size": cluster_size,
        "noise_per_filter": _mean_where(noise, has, n_has),
        "noise_per_filter_all": noise_all,
        "filters_without_cluster": (~has).sum(axis=1) / c,
        "snr": snr,
        "snr_median": _median_where(ratio, has, n_has),
        "snr_field": snr_field,
        "signal_field": signal_field,
        "noise_field": noise_field,
        "signal_per_filter": _mean_where(signal, has, n_has),
        "signal_per_filter_all": signal_all,
        "ones_per_filter_all": ones.sum(axis=1) / c,
        "labels_in_clusters_per_filter": _mean_where(units["labels_in_clusters"], has, n_has),
        "dead_filters": dead.sum(axis=1) / c,
        "num_clusters": total_clusters.astype(np.float64),
    }
