"""Percentile bootstrap intervals of a layer's summary over the test inputs (stratified by label)."""
from __future__ import annotations

import numbers
from typing import Any, Iterator

import numpy as np
import torch

from ..claims import percentile_interval
from .layer import LayerSFP
from .matrices import (DEFAULT_THRESHOLD, _SETTING_KEYS, _as_tensor, _check_labels, _check_normalise,
                       _check_threshold, _means_sorted)


def resample_counts(labels: Any, num_labels: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap's resamples of the test inputs: for replicate ``b = 0 .. n_boot-1``, how many times each
    input (in the order of ``labels``) is drawn, as float64 (N,).

    Stratified: within every label, as many inputs as the label has are drawn with replacement. The draws
    depend only on ``labels``, ``n_boot`` and ``seed`` (a ``numpy.random.Generator``), so replicate ``b`` is
    the same resample of the same test images in every layer of a run: a depth trend can be computed per
    replicate (:func:`filterlens.claims.depth_claims`).
    """
    lab = np.asarray(labels)
    n = lab.size
    counts = np.bincount(lab, minlength=num_labels)
    if np.any(counts == 0):
        raise ValueError(
            f"labels without any test sample: {np.flatnonzero(counts == 0)[:10].tolist()}")
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    starts = np.cumsum(counts) - counts
    high = counts[sorted_lab]  # for each sorted position: its label's sample count
    base = starts[sorted_lab]  # and the first sorted position of its label
    rng = np.random.default_rng(seed)
    for _ in range(int(n_boot)):
        # each sorted position draws a sample of its own label, with replacement
        draw = base + rng.integers(0, high)
        out = np.empty(n, dtype=np.float64)
        out[order] = np.bincount(draw, minlength=n)
        yield out


def correct_from_fields(fields: Any, labels: Any) -> np.ndarray:
    """Which test inputs the layer's probe classifies correctly, from its single-unit fields (N, C, L): the
    probe is bias-free, so its logit on output unit j is the sum over units of the fields, ``sum_c h[n, c, j]``
    (METHOD.md stages 2-3); the prediction is the first largest logit. Returns bool (N,)."""
    f = _as_tensor(fields, "fields")
    if f.ndim != 3:
        raise ValueError(f"fields must have shape (N, C, L); got shape {tuple(f.shape)}")
    logits = f.to(device="cpu", dtype=torch.float64).sum(dim=1)
    lab = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels))
    return (logits.argmax(dim=1) == lab.to(torch.int64)).numpy()


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
    label counts are those of the test set. Each resample's matrices are analysed with
    :class:`LayerSFP` (same ``threshold`` and ``normalise``). With the same ``labels``, ``n_boot``
    and ``seed``, resample ``b`` is the same in every layer.

    Intervals are percentile intervals at ``level``: the lower end is the
    ``(1 - level)/2`` quantile with ``method="lower"``, the upper end the ``(1 + level)/2``
    quantile with ``method="higher"`` (observed values, no interpolation, so ``inf`` SNRs
    are handled); nan resamples (e.g. no filter with a cluster) are ignored, and a key that
    is nan in every resample gets ``(nan, nan)``.

    Parameters
    ----------
    fields : array or tensor, shape (N, C, L)
        Per-sample fields of the test set (:func:`sample_fields`).
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
    f = _as_tensor(fields, "fields")
    if f.ndim != 3 or f.shape[2] != num_labels:
        raise ValueError(
            f"fields must have shape (N, C, L) with L = num_labels = {num_labels}; "
            f"got shape {tuple(f.shape)}"
        )
    n = int(f.shape[0])
    lab = _check_labels(labels, n, num_labels)
    counts = np.bincount(lab, minlength=num_labels)
    if np.any(counts == 0):
        raise ValueError(
            f"labels without any test sample: {np.flatnonzero(counts == 0)[:10].tolist()}")
    order = np.argsort(lab, kind="stable")
    flat = f.to(device="cpu", dtype=torch.float64).reshape(n, -1).numpy()[order]
    c = int(f.shape[1])
    starts = np.cumsum(counts) - counts
    denom = counts.astype(np.float64)
    correct = correct_from_fields(f, lab).astype(np.float64) if accuracy else None
    values: dict[str, list[float]] = {}
    for weights in resample_counts(lab, num_labels, n_boot, seed):
        mats = _means_sorted(flat, starts, weights[order], denom, c)
        summ = LayerSFP(threshold=threshold, normalise=normalise).fit_matrices(mats).summary()
        if correct is not None:
            values.setdefault("accuracy", []).append(float(weights @ correct) / n)
        for key, val in summ.items():
            if key in _SETTING_KEYS or isinstance(val, (str, bool)):
                continue
            if isinstance(val, numbers.Real):
                values.setdefault(key, []).append(float(val))
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    intervals = {key: percentile_interval(arr, level) for key, arr in samples.items()}
    return (intervals, samples) if return_samples else intervals

