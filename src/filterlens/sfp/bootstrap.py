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


def correct_from_features(features: Any, weight: Any, labels: Any) -> np.ndarray:
    """Which test inputs the layer's probe classifies correctly, from its test features (N, C, ...) and its
    bias-free weight (L, C, ...): the logits are the features times the weight, ``A (N, C*P) @ W (L, C*P)^T``
    (the sum over units of the fields, METHOD.md stages 2-3), in float64; the prediction is the first largest
    logit. Computed in pieces of samples (and of features, where the weight is large), never a float64 copy of
    all the features. Returns bool (N,)."""
    a, (w,) = _check_features(features, [weight], None)
    n, q = int(a.shape[0]), int(a.shape[1]) * int(a.shape[2])
    L = int(w.shape[0])
    flat_a, flat_w = a.reshape(n, q), w.reshape(L, q)
    part = _WORK_BYTES // 16
    cols = max(1, min(q, part // (8 * L)))  # features per piece of the float64 weight
    whole = flat_w.to(device="cpu", dtype=torch.float64).T if cols == q else None  # converted once when it fits
    step = max(1, part // (8 * (L + cols)))
    lab = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels))
    lab = lab.to(torch.int64)
    out = np.empty(n, dtype=bool)
    for s in range(0, n, step):
        logits = torch.zeros((min(n, s + step) - s, L), dtype=torch.float64)
        for q0 in range(0, q, cols):
            wt = whole if whole is not None else flat_w[:, q0:q0 + cols].to(device="cpu", dtype=torch.float64).T
            logits += flat_a[s:s + step, q0:q0 + cols].to(device="cpu", dtype=torch.float64) @ wt
        out[s:s + step] = (logits.argmax(dim=1) == lab[s:s + step]).numpy()
    return out


def _check_features(features: Any, weights: list, num_labels: int | None) -> tuple[torch.Tensor, list]:
    """The features as (N, C, P) and every weight as (L, C, P) (views when contiguous); each weight's (C, ...)
    must be the features' and, with ``num_labels``, its L that."""
    a = _as_tensor(features, "features")
    ws = [_as_tensor(w, "weight") for w in weights]
    if a.ndim < 3:
        raise ValueError(f"features must have shape (N, C, H, W) (or (N, C, P)); got shape {tuple(a.shape)}")
    bad = [tuple(w.shape) for w in ws if w.shape[1:] != a.shape[1:]
           or (num_labels is not None and w.shape[0] != num_labels)]
    if bad:
        want = f"({num_labels if num_labels is not None else 'L'}, {', '.join(str(s) for s in a.shape[1:])})"
        raise ValueError(f"weight must have shape {want}, the features' (C, ...) after L = num_labels (every "
                         f"probe's the same); got shape(s) {sorted(set(bad))}")
    n, c = int(a.shape[0]), int(a.shape[1])
    return a.reshape(n, c, -1), [w.reshape(int(w.shape[0]), c, -1) for w in ws]


def _plan(n: int, c: int, L: int, n_boot: int, n_max: int, in_bytes: int, p: int | None = None
          ) -> tuple[int, int]:
    """How many replicates and units :func:`bootstrap_summary` takes at once (see its memory note): the
    replicates' counts take at most 1/16 of ``_WORK_BYTES``, the chunk's matrices (``12 L^2 + 64 L`` bytes
    each: float64 values, binary copy, clustering) at most half, one label's gathered fields (``n_max`` rows
    of the chunk's units, ``in_bytes`` per value) and its product at most 1/16 each.

    With ``p`` (the features route, :func:`bootstrap_summary_from_features`: ``p`` positions per unit) a label's
    gathered rows hold ``p`` values per unit instead of ``L``, and the chunk's resampled mean maps (``8 p L``
    bytes per replicate and unit) and its weight, repeated per replicate (as many), take at most 1/16 each."""
    part = _WORK_BYTES // 16
    most = max(1, (_WORK_BYTES // 2) // (12 * L * L + 64 * L))
    bc = max(1, min(n_boot, part // (8 * (n + 1)), most))
    if p is None:
        cc = max(1, min(c, most // bc, part // (n_max * L * in_bytes), part // (8 * bc * L)))
    else:
        cc = max(1, min(c, most // bc, part // (n_max * p * in_bytes), part // (8 * bc * L * p)))
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


def _check_settings(threshold: Any, normalise: Any, level: Any, n_boot: Any) -> tuple[float, str]:
    threshold = _check_threshold(threshold)
    normalise = _check_normalise(normalise)
    if not (0.0 < float(level) < 1.0):
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer; got {n_boot!r}")
    return threshold, normalise


def _in_bytes(x: torch.Tensor) -> int:
    """Bytes per gathered value: as stored, and as a float64 copy unless it already is one on the host."""
    return x.element_size() + (0 if x.dtype == torch.float64 and x.device.type == "cpu" else 8)


class _Sums:
    """Label ``i``'s resampled sums of a chunk of replicates, for all labels: per group of labels one matrix
    product, the resample counts (replicates x the label's inputs) times the label's rows (its inputs x the
    chunk's values), the rows gathered from the stored tensor and converted to float64 group by group."""

    def __init__(self, lab: np.ndarray, counts: np.ndarray, row_bytes: int, out_bytes: int, device):
        order = np.argsort(lab, kind="stable")
        starts = np.cumsum(counts) - counts
        self.n = lab.size
        self.order = order
        self.groups = []  # per group: labels [i0, i1), the padded sorted positions and the samples to gather
        for i0, i1, width in _label_groups(counts, row_bytes, out_bytes):
            t = np.arange(width)
            inside = t[None, :] < counts[i0:i1, None]
            pos = np.where(inside, starts[i0:i1, None] + t[None, :], self.n)  # padding: the zero column
            take = order[np.where(inside, pos, starts[i0:i1, None])]  # padding: any sample of the label (count 0)
            self.groups.append((i0, i1, pos, torch.from_numpy(take.ravel()).to(device),
                                torch.from_numpy(counts[i0:i1].astype(np.float64))[:, None, None]))

    def means(self, part: torch.Tensor, drawn: np.ndarray):
        """For every group, ``(i0, i1, means)``: the resampled means (labels, replicates, values) of ``part``
        (N, ...; its values flattened), weighted by ``drawn`` (replicates x (N + 1) counts of the label-sorted
        inputs, then a zero for the padding)."""
        width = int(np.prod(part.shape[1:]))
        for i0, i1, pos, take, denom in self.groups:
            rows = part.index_select(0, take).to(device="cpu", dtype=torch.float64)
            weights = torch.from_numpy(np.ascontiguousarray(drawn[:, pos].transpose(1, 0, 2)))
            yield i0, i1, torch.bmm(weights, rows.view(i1 - i0, pos.shape[1], width)).div_(denom)


class _FieldsRoute:
    """The matrices of a chunk as resampled means of the per-sample fields (N, C, L) of probe ``k``."""

    def __init__(self, sets: list[torch.Tensor]):
        self.sets = sets
        self.n, self.c, self.L = (int(x) for x in sets[0].shape)

    def plan(self, n_boot: int, n_max: int) -> tuple[int, int]:
        return _plan(self.n, self.c, self.L, n_boot, n_max, _in_bytes(self.sets[0]))

    def sums(self, lab: np.ndarray, counts: np.ndarray, bc: int, cc: int) -> _Sums:
        return _Sums(lab, counts, cc * self.L * _in_bytes(self.sets[0]), 8 * bc * cc * self.L,
                     self.sets[0].device)

    def correct(self, k: int, lab: np.ndarray) -> np.ndarray:
        return correct_from_fields(self.sets[k], lab)

    def fill(self, mats: torch.Tensor, k: int, c0: int, sums: _Sums, drawn: np.ndarray) -> None:
        nb, nc, L = mats.shape[0], mats.shape[1], self.L
        for i0, i1, means in sums.means(self.sets[k].narrow(1, c0, nc), drawn):
            mats[:, :, i0:i1, :] = means.view(i1 - i0, nb, nc, L).permute(1, 2, 0, 3)


class _FeaturesRoute:
    """The matrices of a chunk from the resampled per-label mean maps of the test features (N, C, P) and the
    weight (L, C, P) of probe ``k``: ``F_b[c] = M_b[:, c, :] @ W[:, c, :]^T``, one batched product."""

    def __init__(self, features: torch.Tensor, weights: list[torch.Tensor]):
        self.features, self.weights = features, weights
        self.n, self.c, self.p = (int(x) for x in features.shape)
        self.L = int(weights[0].shape[0])
        self._maps = self._wts = torch.empty(0, dtype=torch.float64)  # made to size by sums()

    def plan(self, n_boot: int, n_max: int) -> tuple[int, int]:
        return _plan(self.n, self.c, self.L, n_boot, n_max, _in_bytes(self.features), self.p)

    def sums(self, lab: np.ndarray, counts: np.ndarray, bc: int, cc: int) -> _Sums:
        size = bc * cc * self.L * self.p
        self._maps = torch.empty(size, dtype=torch.float64)  # [replicate, unit, input label, position]
        self._wts = torch.empty(size, dtype=torch.float64)  # the weight of the chunk's units, per replicate
        return _Sums(lab, counts, cc * self.p * _in_bytes(self.features), 8 * bc * cc * self.p,
                     self.features.device)

    def correct(self, k: int, lab: np.ndarray) -> np.ndarray:
        return correct_from_features(self.features, self.weights[k], lab)

    def fill(self, mats: torch.Tensor, k: int, c0: int, sums: _Sums, drawn: np.ndarray) -> None:
        nb, nc, L, p = mats.shape[0], mats.shape[1], self.L, self.p
        maps = self._maps[: nb * nc * L * p].view(nb, nc, L, p)
        for i0, i1, means in sums.means(self.features.narrow(1, c0, nc), drawn):
            maps[:, :, i0:i1, :] = means.view(i1 - i0, nb, nc, p).permute(1, 2, 0, 3)
        w = self.weights[k].narrow(1, c0, nc).to(device="cpu", dtype=torch.float64).permute(1, 2, 0)  # (nc, P, L)
        wts = self._wts[: nb * nc * p * L].view(nb, nc, p, L)
        wts.copy_(w.unsqueeze(0).expand(nb, nc, p, L))
        # (nb*nc, L_i, P) @ (nb*nc, P, L_j): every replicate's and unit's matrix, straight into ``mats``
        torch.bmm(maps.view(nb * nc, L, p), wts.view(nb * nc, p, L), out=mats.view(nb * nc, L, L))


def _bootstrap(route, k_sets: int, labels: Any, num_labels: int, n_boot: int, seed: int, threshold: float,
               normalise: str, level: float, return_samples: bool, accuracy: bool):
    """The chunked core of both routes: the replicates' matrices chunk by chunk (``route.fill``), normalised,
    binarised, clustered and counted together, then the layer summaries and their percentile intervals."""
    n, c, L = route.n, route.c, route.L
    lab = _check_labels(labels, n, num_labels)
    counts = np.bincount(lab, minlength=num_labels)
    if np.any(counts == 0):
        raise ValueError(
            f"labels without any test sample: {np.flatnonzero(counts == 0)[:10].tolist()}")
    bc, cc = route.plan(n_boot, int(counts.max()))
    sums = route.sums(lab, counts, bc, cc)
    correct = [route.correct(k, lab)[sums.order].astype(np.float64) for k in range(k_sets)] if accuracy else None
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
                route.fill(mats, k, c0, sums, drawn)
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


def bootstrap_summary(fields: Any, labels: Any, num_labels: int, n_boot: int, seed: int,
                      threshold: float = DEFAULT_THRESHOLD, normalise: str = "max",
                      level: float = 0.95, return_samples: bool = False, accuracy: bool = False
                      ) -> dict[str, tuple[float, float]] | tuple[
                          dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Percentile bootstrap intervals of the layer summary over test inputs.

    The filter matrices are per-label means of the per-sample fields (METHOD.md stage 3),
    so each resample only re-averages ``fields``; the raw features are never needed (where the fields are too
    large to keep, :func:`bootstrap_summary_from_features` gives the same replicates from the test features and
    the probe weight).
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
    threshold, normalise = _check_settings(threshold, normalise, level, n_boot)
    sets = [_as_tensor(x, "fields") for x in (fields if isinstance(fields, (list, tuple)) else [fields])]
    if not sets:
        raise ValueError("fields is an empty list; give the fields of one probe or more")
    f = sets[0]
    if f.ndim != 3 or f.shape[2] != num_labels or any(x.shape != f.shape for x in sets):
        raise ValueError(
            f"fields must have shape (N, C, L) with L = num_labels = {num_labels} (every probe's the same); "
            f"got shape(s) {sorted({tuple(x.shape) for x in sets})}"
        )
    return _bootstrap(_FieldsRoute(sets), len(sets), labels, num_labels, n_boot, seed, threshold, normalise,
                      level, return_samples, accuracy)


def bootstrap_summary_from_features(features: Any, weight: Any, labels: Any, num_labels: int, n_boot: int,
                                    seed: int, threshold: float = DEFAULT_THRESHOLD, normalise: str = "max",
                                    level: float = 0.95, return_samples: bool = False, accuracy: bool = False
                                    ) -> dict[str, tuple[float, float]] | tuple[
                                        dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """:func:`bootstrap_summary` from the test features and the probe weight instead of the per-sample fields.

    The fields are linear in the maps (METHOD.md stage 3), so replicate ``b``'s matrices follow from its
    resampled per-label mean maps ``M_b`` (L, C, P) of the features ``A`` (N, C, P) and the weight ``W``
    (L, C, P): ``F_b[c] = M_b[:, c, :] @ W[:, c, :]^T`` (the contraction of :func:`filter_matrices`). The
    replicates are those of :func:`bootstrap_summary` on ``sample_fields(W, A)`` (the same resamples, the same
    ``b mod K`` rule with several probes, the same summaries and intervals), equal up to float rounding, while
    the input takes ``N C P s`` bytes (``s`` per stored value: 2 in bfloat16) instead of ``N C L 4`` in float32:
    at L = 1000 labels and 4 positions per unit, 1/500 of it.

    Memory, beyond ``features`` (never copied when contiguous: gathered label by label, converted to float64
    piece by piece) and the output (about ``60 n_boot C`` bytes), with ``Bc`` replicates and ``Cc`` units per
    chunk and ``P`` positions per unit: ``8 Bc (N + 1)`` bytes of resample counts; ``Bc Cc (12 L^2 + 64 L)`` for
    the chunk's matrices; ``8 Bc Cc L P`` for its resampled mean maps, as much for its units' weight in float64
    repeated per replicate, and ``8 Cc L P`` for that weight once; per group of labels (``n_g`` inputs, padded)
    ``(8 + s) n_g Cc P`` for their gathered features, ``8 g Bc Cc P`` for the product of its ``g`` labels and
    ``16 Bc n_g`` for their counts; up to 36 MiB to select the cluster blocks; and, with ``accuracy``, first
    (not at the same time) about 32 MiB for the logits in pieces of samples, beside the float64 weight when its
    ``8 L C P`` bytes fit in 16 MiB. The counts, the mean maps, the repeated weight, each group's features and
    its product stay under 16 MiB each (1/16 of ``_WORK_BYTES``) and the matrices under 128 MiB (half): about
    250 MiB in all, whatever N, C, P, L and ``n_boot``, except where one matrix alone needs more (``12 L^2``
    bytes: L above about 3300), one unit's mean maps of one replicate do (``16 L P`` bytes) or one label's
    features of one unit (``(8 + s) n_i P``).

    Time: the matrices cost ``2 L^2 P`` flops per replicate and unit (the fields route's products ``2 N L``),
    then both routes analyse them alike (normalise, binarise, cluster, count: about ten passes over their
    ``8 L^2`` bytes each), which dominates at small P.

    Parameters
    ----------
    features : array or tensor, shape (N, C, H, W) (or (N, C, P): any (N, C, ...))
        The layer's test features as its probe saw them; float16, bfloat16, float32 or float64.
    weight : array or tensor, shape (L, C, H, W), or a list of K of them
        The bias-free probe weight (``L = num_labels``; (C, ...) as the features'), of one probe or of K probes
        (``probe_seeds``: replicate ``b`` takes probe ``b mod K``).
    labels, num_labels, n_boot, seed, threshold, normalise, level, return_samples
        As in :func:`bootstrap_summary`.
    accuracy : bool, default False
        Also resample the layer's accuracy (key ``"accuracy"``), the probe's logits computed once as features
        times weight (:func:`correct_from_features`).

    Returns
    -------
    As :func:`bootstrap_summary`.
    """
    threshold, normalise = _check_settings(threshold, normalise, level, n_boot)
    weights = list(weight) if isinstance(weight, (list, tuple)) else [weight]
    if not weights:
        raise ValueError("weight is an empty list; give the weight of one probe or more")
    a, ws = _check_features(features, weights, num_labels)
    return _bootstrap(_FeaturesRoute(a, ws), len(ws), labels, num_labels, n_boot, seed, threshold, normalise,
                      level, return_samples, accuracy)
