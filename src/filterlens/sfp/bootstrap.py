"""Percentile bootstrap intervals of a layer's summary over the test inputs (stratified by label)."""
from __future__ import annotations

import numbers
from typing import Any, Iterator

import numpy as np
import torch

from ..claims import percentile_interval
from .clusters import _greedy_labels_unchecked, _process_block
from .matrices import DEFAULT_THRESHOLD, _as_tensor, _check_labels, _check_normalise, _check_threshold
from .stats import UNIT_KEYS, layer_summaries, unit_stats


# The bootstrap's working memory beyond its input fields and its output, in bytes (see bootstrap_summary)
_WORK_BYTES = 256 * 2**20


def _sorted_draws(lab: np.ndarray, num_labels: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The resamples of :func:`resample_counts`, each as int64 counts of the label-sorted inputs (the stable
    argsort of ``lab``), drawn in the same order from the same generator."""
    n = lab.size
    counts = np.bincount(lab, minlength=num_labels)
    if np.any(counts == 0):
        raise ValueError(
            f"labels without any test sample: {np.flatnonzero(counts == 0)[:10].tolist()}")
    sorted_lab = lab[np.argsort(lab, kind="stable")]
    starts = np.cumsum(counts) - counts
    high = counts[sorted_lab]  # for each sorted position: its label's sample count
    base = starts[sorted_lab]  # and the first sorted position of its label
    rng = np.random.default_rng(seed)
    for _ in range(int(n_boot)):
        # each sorted position draws a sample of its own label, with replacement
        yield np.bincount(base + rng.integers(0, high), minlength=n)


def resample_counts(labels: Any, num_labels: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's resamples of the test inputs: for replicate ``b = 0 .. n_boot-1``, how many times each
    input (in the order of ``labels``) is drawn, as float64 (N,).

    Stratified: within every label, as many inputs as the label has are drawn with replacement. The draws
    depend only on ``labels``, ``n_boot`` and ``seed`` (a ``numpy.random.Generator``), so replicate ``b`` is
    the same resample of the same test images in every layer of a run: a depth trend can be computed per
    replicate (:func:`filterlens.claims.depth_claims`).
    """
    lab = np.asarray(labels)
    order = np.argsort(lab, kind="stable")
    for drawn in _sorted_draws(lab, num_labels, n_boot, seed):
        out = np.empty(lab.size, dtype=np.float64)
        out[order] = drawn
        yield out


def correct_from_fields(fields: Any, labels: Any) -> np.ndarray:
    """Which test inputs the layer's probe classifies correctly, from its single-unit fields (N, C, L): the
    probe is bias-free, so its logit on output unit j is the sum over units of the fields, ``sum_c h[n, c, j]``
    (METHOD.md stages 2-3); the prediction is the first largest logit. Returns bool (N,)."""
    f = _as_tensor(fields, "fields")
    if f.ndim != 3:
        raise ValueError(f"fields must have shape (N, C, L); got shape {tuple(f.shape)}")
    n = int(f.shape[0])
    logits = torch.empty((n, int(f.shape[2])), dtype=torch.float64)
    step = max(1, _WORK_BYTES // 16 // max(1, 8 * int(f.shape[1]) * int(f.shape[2])))
    for s in range(0, n, step):  # in pieces of samples: no float64 copy of all the fields
        logits[s:s + step] = f[s:s + step].to(device="cpu", dtype=torch.float64).sum(dim=1)
    lab = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels))
    return (logits.argmax(dim=1) == lab.to(torch.int64)).numpy()


def _plan(n: int, c: int, L: int, n_boot: int, n_max: int, in_bytes: int) -> tuple[int, int]:
    """How many replicates and units :func:`bootstrap_summary` takes at once (see its memory note): the
    replicates' counts take at most 1/16 of ``_WORK_BYTES``, the chunk's matrices (``12 L^2 + 64 L`` bytes
    each: float64 values, binary copy, clustering) at most half, one label's gathered fields (``n_max`` rows
    of the chunk's units, ``in_bytes`` per value) and its product at most 1/16 each."""
    part = _WORK_BYTES // 16
    most = max(1, (_WORK_BYTES // 2) // (12 * L * L + 64 * L))
    bc = max(1, min(n_boot, part // (8 * (n + 1)), most))
    cc = max(1, min(c, most // bc, part // (n_max * L * in_bytes), part // (8 * bc * L)))
    return bc, cc


def _label_groups(counts: np.ndarray, row_bytes: int, out_bytes: int) -> list[tuple[int, int, int]]:
    """Consecutive labels ``[i0, i1)`` whose resampled sums one batched product gives, each label padded to the
    group's largest count ``width``: a group grows while the padding stays within a quarter of its rows and its
    gathered rows (``row_bytes`` each) and product (``out_bytes`` per label) within 1/16 of ``_WORK_BYTES``."""
    part = _WORK_BYTES // 16
    groups = []
    i0 = 0
    L = counts.size
    while i0 < L:
        i1, width, rows = i0 + 1, int(counts[i0]), int(counts[i0])
        while i1 < L:
            w, g = max(width, int(counts[i1])), i1 - i0 + 1
            if (4 * g * w > 5 * (rows + int(counts[i1])) or g * w * row_bytes > part
                    or g * out_bytes > part):
                break
            i1, width, rows = i1 + 1, w, rows + int(counts[i1])
        groups.append((i0, i1, width))
        i0 = i1
    return groups


def bootstrap_summary(fields: Any, labels: Any, num_labels: int, n_boot: int, seed: int,
                      threshold: float = DEFAULT_THRESHOLD, normalise: str = "max",
                      level: float = 0.95, return_samples: bool = False, accuracy: bool = False
                      ) -> dict[str, tuple[float, float]] | tuple[
                          dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Percentile bootstrap intervals of the layer summary over test inputs.

    The filter matrices are per-label means of the per-sample fields (METHOD.md stage 3),
    so each resample only re-averages ``fields``; the raw features are never needed.
    Resampling is *stratified* (:func:`resample_counts`): each resample draws, within every label, as many
    test inputs (with replacement) as the label has, so every matrix row stays defined and the
    label counts are those of the test set. Each resample's matrices are analysed as
    :class:`LayerSFP` analyses them (same ``threshold`` and ``normalise``; its summary's numeric keys). With the
    same ``labels``, ``n_boot`` and ``seed``, resample ``b`` is the same in every layer.

    Many replicates and units at once: label ``i``'s resampled means of a chunk of replicates are one matrix
    product, the resample counts (replicates x the label's inputs) times the label's fields (its inputs x units
    x output units), so ``fields`` is read once per chunk of replicates; the matrices of the chunk are
    normalised, binarised, clustered (:func:`~filterlens.sfp.greedy_cluster_labels`) and counted
    (:mod:`filterlens.sfp.stats`) together, and the summaries of all replicates come from per-unit arrays:
    no Python loop over units or replicates.

    Memory, beyond ``fields`` (never copied: gathered label by label, converted to float64 piece by piece) and
    the output (about ``60 n_boot C`` bytes of per-unit arrays), with ``Bc`` replicates and ``Cc`` units per
    chunk: ``8 Bc (N + 1)`` bytes of resample counts; ``Bc Cc (12 L^2 + 64 L)`` for the chunk's matrices
    (float64 values, their binary copy, the clustering's masks); per group of labels taken together (``n_g``
    inputs, padded) ``(8 + s) n_g Cc L`` for their gathered fields (``s`` bytes per stored value, 0 extra when
    already float64), ``8 g Bc Cc L`` for the product of its ``g`` labels and ``16 Bc n_g`` for their counts;
    and up to 36 MiB to select the cluster blocks. The chunks and groups are chosen so that the counts, each
    group's fields and its product stay under 16 MiB each (1/16 of ``_WORK_BYTES``) and the matrices under
    128 MiB (half): about 230 MiB in all, whatever N, C, L and ``n_boot``, except where one matrix alone needs
    more (``12 L^2`` bytes: L above about 3300) or one label's fields of one unit do (``(8 + s) n_i L``).

    Intervals are percentile intervals at ``level``: the lower end is the
    ``(1 - level)/2`` quantile with ``method="lower"``, the upper end the ``(1 + level)/2``
    quantile with ``method="higher"`` (observed values, no interpolation, so ``inf`` SNRs
    are handled); nan resamples (e.g. no filter with a cluster) are ignored, and a key that
    is nan in every resample gets ``(nan, nan)``.

    Several probes of one layer (trained with other seeds, ``probe_seeds``): ``fields`` a list of their fields,
    all (N, C, L); replicate ``b`` resamples the test images as above and takes the fields of probe
    ``b mod K``, so the intervals carry the spread of the probes' own training as well as the test images'.

    Parameters
    ----------
    fields : array or tensor, shape (N, C, L), or a list of K of them
        Per-sample fields of the test set (:func:`sample_fields`), of one probe or of K probes.
    labels : array-like of int, shape (N,)
        Every label in ``[0, num_labels)`` must occur.
    num_labels : int
    n_boot : int >= 1
    seed : int
        Seed of the ``numpy.random.Generator``.
    threshold, normalise
        As in :class:`LayerSFP`.
    level : float in (0, 1), default 0.95
    return_samples : bool, default False
        Also return the per-resample values (``dict[key -> ndarray (n_boot,)]``, in resample order).
    accuracy : bool, default False
        Also resample the layer's accuracy (key ``"accuracy"``): the fraction of the resampled inputs its
        probe classifies correctly (:func:`correct_from_fields`).

    Returns
    -------
    dict[str, tuple[float, float]]
        ``(low, high)`` for every numeric summary key (settings such as ``threshold`` and
        ``num_filters`` excluded); with ``return_samples`` a pair (intervals, samples).
    """
    threshold = _check_threshold(threshold)
    normalise = _check_normalise(normalise)
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    sets = [_as_tensor(x, "fields") for x in (fields if isinstance(fields, (list, tuple)) else [fields])]
    if not sets:
        raise ValueError("fields is an empty list; give the fields of one probe or more")
    f = sets[0]
    if f.ndim != 3 or f.shape[2] != num_labels or any(x.shape != f.shape for x in sets):
        raise ValueError(
            f"fields must have shape (N, C, L) with L = num_labels = {num_labels} (every probe's the same); "
            f"got shape(s) {sorted({tuple(x.shape) for x in sets})}"
        )
    n, c, L = (int(x) for x in f.shape)
    lab = _check_labels(labels, n, num_labels)
    counts = np.bincount(lab, minlength=num_labels)
    if np.any(counts == 0):
        raise ValueError(
            f"labels without any test sample: {np.flatnonzero(counts == 0)[:10].tolist()}")
    order = np.argsort(lab, kind="stable")
    starts = np.cumsum(counts) - counts
    # bytes per gathered field value: as stored, and as a float64 copy unless it already is one
    in_bytes = f.element_size() + (0 if f.dtype == torch.float64 and f.device.type == "cpu" else 8)
    bc, cc = _plan(n, c, L, n_boot, int(counts.max()), in_bytes)
    groups = []  # per group: labels [i0, i1), the padded sorted positions and the samples to gather
    for i0, i1, width in _label_groups(counts, cc * L * in_bytes, 8 * bc * cc * L):
        t = np.arange(width)
        inside = t[None, :] < counts[i0:i1, None]
        pos = np.where(inside, starts[i0:i1, None] + t[None, :], n)  # padding: the zero column of the counts
        take = order[np.where(inside, pos, starts[i0:i1, None])]  # padding: any sample of the label (count 0)
        groups.append((i0, i1, pos, torch.from_numpy(take.ravel()).to(f.device),
                       torch.from_numpy(counts[i0:i1].astype(np.float64))[:, None, None]))
    k_sets = len(sets)
    correct = [correct_from_fields(x, lab)[order].astype(np.float64) for x in sets] if accuracy else None
    accuracies = np.empty(n_boot)
    units = {key: np.empty((n_boot, c), dtype=np.float64 if key.startswith("field") else np.int64)
             for key in UNIT_KEYS}
    dead = np.empty((n_boot, c), dtype=bool)
    values = torch.empty(bc * min(c, cc) * L * L, dtype=torch.float64)
    binary = torch.empty(values.shape, dtype=torch.bool)
    draws = _sorted_draws(lab, num_labels, n_boot, seed)
    if k_sets > 1:  # replicate b takes probe b mod K: the draws in replicate order, then taken probe by probe
        drawn_all = list(draws)
        plan = [(k, list(range(k, n_boot, k_sets))) for k in range(k_sets)]
    else:
        drawn_all, plan = None, [(0, list(range(n_boot)))]
    chunks = [(k, which[j0:j0 + bc]) for k, which in plan for j0 in range(0, len(which), bc)]
    with torch.no_grad():
        for k, reps in chunks:
            f = sets[k]
            nb = len(reps)
            drawn = np.zeros((nb, n + 1))  # counts of the label-sorted inputs, then a zero for the padding
            for r, b in enumerate(reps):
                drawn[r, :n] = next(draws) if drawn_all is None else drawn_all[b]
            if correct is not None:
                accuracies[reps] = (drawn[:, :n] @ correct[k]) / n
            for c0 in range(0, c, cc):
                nc = min(c, c0 + cc) - c0
                m = nb * nc
                mats = values[: m * L * L].view(nb, nc, L, L)  # [replicate, unit, input label, output unit]
                part = f.narrow(1, c0, nc)
                for i0, i1, pos, take, denom in groups:
                    # label i's resampled means of every replicate and unit: counts (nb x n_i) @ fields (n_i x nc*L)
                    rows = part.index_select(0, take).to(device="cpu", dtype=torch.float64)
                    weights = torch.from_numpy(np.ascontiguousarray(drawn[:, pos].transpose(1, 0, 2)))
                    sums = torch.bmm(weights, rows.view(i1 - i0, pos.shape[1], nc * L)).div_(denom)
                    mats[:, :, i0:i1, :] = sums.view(i1 - i0, nb, nc, L).permute(1, 2, 0, 3)
                norm = mats.view(m, L, L)
                _, _, gone = _process_block(norm, normalise, norm)  # in place
                ones = torch.gt(norm, threshold, out=binary[: m * L * L].view(m, L, L))
                found = unit_stats(norm, ones, _greedy_labels_unchecked(ones.numpy()))
                for key in UNIT_KEYS:
                    units[key][reps, c0:c0 + nc] = found[key].reshape(nb, nc)
                dead[reps, c0:c0 + nc] = gone.numpy().reshape(nb, nc)
    samples = {"accuracy": accuracies} if accuracy else {}
    samples.update(layer_summaries(units, dead))
    intervals = {key: percentile_interval(arr, level) for key, arr in samples.items()}
    return (intervals, samples) if return_samples else intervals
