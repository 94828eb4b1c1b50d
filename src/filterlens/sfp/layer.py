"""The estimator of one layer, :class:`LayerSFP`, its summary (METHOD.md stage 3, items 4-6) and the votes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .clusters import (
    _as_matrices,
    _binarise,
    _greedy_labels_unchecked,
    clusters_from_labels,
    normalise_matrices,
    top_samples,
)
from .matrices import (
    _CHUNK_ELEMENTS,
    DEFAULT_THRESHOLD,
    NotFittedError,
    _as_tensor,
    _check_dtype,
    _check_layer_shapes,
    _check_normalise,
    _check_threshold,
    _nanmean,
    _shape,
    contract,
    filter_matrices,
    sample_fields,
)
from .stats import unit_stats


def _snr(signal: float, noise: float) -> float:
    """The layer's SNR, signal over noise: inf when the noise is 0 and the signal positive, nan when both are 0 or
    either is undefined (METHOD.md stage 3, item 6)."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise > 0:
        return signal / noise
    return math.inf if signal > 0 else math.nan


# LayerSFP keeps a layer's matrices (and their binarised copies) only up to this size ("auto")
_KEEP_BYTES = 256 * 2**20


class LayerSFP:
    """Single-filter performance of one layer (METHOD.md stage 3).

    Estimator-style (scikit-learn conventions): the constructor only stores settings,
    :meth:`fit` (from the probe weight and per-label mean maps) or :meth:`fit_matrices`
    (from ready filter matrices, e.g. to sweep thresholds) does the work and returns
    ``self``; learned state lives in attributes ending in ``_``.

    Parameters
    ----------
    threshold : float in (0, 1), default 0.3
        Binarisation threshold; an element is 1 when the normalised value is strictly
        greater (METHOD.md stage 3 item 2, option ``threshold``).
    normalise : {"max", "column-centred"}, default "max"
        METHOD.md stage 3 item 7, option ``normalise``.
    dtype : {"float64", "float32"}, default float64
        Precision of the contraction in :meth:`fit` (see :func:`filter_matrices`).
    keep_matrices : bool or "auto", default "auto"
        Keep every unit's matrix after :meth:`fit` (``"auto"``: when they take at most 256 MiB).

    Attributes
    ----------
    matrices_ : numpy.ndarray, shape (C, L, L)
        Raw filter matrices ``F_c`` (rows input label, columns output unit); only when kept
        (``keep_matrices``; always after :meth:`fit_matrices`). :meth:`matrix` gives one either way.
    binary_ : numpy.ndarray of bool, shape (C, L, L)
        Binarised normalised matrices (all zeros for dead filters); kept with ``matrices_``.
    num_units_, num_labels_ : int
    clusters_ : list of list of list of int
        Per filter, its clusters (label lists).
    num_clusters_ : numpy.ndarray of int, shape (C,)
    cluster_sizes_ : list of numpy.ndarray of int
    labels_in_clusters_ : numpy.ndarray of int, shape (C,)
        Sum of cluster sizes.
    signal_ : numpy.ndarray of int, shape (C,)
        Sum of squared cluster sizes (ones inside the cluster blocks).
    ones_ : numpy.ndarray of int, shape (C,)
        Number of ones in the binary matrix.
    noise_ : numpy.ndarray of int, shape (C,)
        ``ones_ - signal_``.
    field_signal_, field_noise_ : numpy.ndarray, shape (C,)
        For a filter with a cluster: the mean of its normalised matrix over its cluster-block elements, and
        the mean of its positive part over every other element (0 when the blocks cover the matrix); nan
        for a filter without a cluster (METHOD.md, "SNR candidates": ``snr_field``).
    dead_ : numpy.ndarray of bool, shape (C,)
        Filters whose normalisation basis has largest element <= 0 (no clusters, noise 0).
    max_ : numpy.ndarray, shape (C,)
        Largest element of each (raw or column-centred) matrix, the normalisation divisor.
    preferred_label_ : numpy.ndarray of int, shape (C,)
        Output unit with the largest column mean of the raw ``F_c``.
    vote_fraction_ : numpy.ndarray, shape (C,)
        Only after :meth:`score_votes`: fraction of test inputs whose largest single-filter
        field is on the preferred unit.
    """

    _weight: torch.Tensor | None  # after fit: the weight and means (None after fit_matrices)
    _means: torch.Tensor | None

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, normalise: str = "max",
                 dtype: Any = "float64", keep_matrices: Any = "auto") -> None:
        self.threshold = threshold
        self.normalise = normalise
        self.dtype = dtype
        self.keep_matrices = keep_matrices

    # -- scikit-learn style parameter access ------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's parameters (threshold, normalise, dtype, keep_matrices), scikit-learn style."""
        return {"threshold": self.threshold, "normalise": self.normalise, "dtype": self.dtype,
                "keep_matrices": self.keep_matrices}

    def set_params(self, **params: Any) -> "LayerSFP":
        """Set some of the parameters of :meth:`get_params` (any other name is a ValueError); returns self."""
        for key, value in params.items():
            if key not in ("threshold", "normalise", "dtype", "keep_matrices"):
                raise ValueError(f"invalid parameter {key!r} for LayerSFP")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return (f"LayerSFP(threshold={self.threshold!r}, normalise={self.normalise!r}, "
                f"dtype={self.dtype!r}, keep_matrices={self.keep_matrices!r})")

    # -- fitting ----------------------------------------------------------------------
    def fit(self, weight: Any, label_means: Any) -> "LayerSFP":
        """Contract, normalise, binarise and cluster the units' matrices, chunk by chunk of units
        (METHOD.md stage 3): the matrices of a whole layer (512 filters x 1000 labels: 4.1 GB in
        float64) never exist at once unless ``keep_matrices`` asks for them (``"auto"``: when they take
        at most 256 MiB); :meth:`matrix` gives any unit's matrix on demand.

        Parameters
        ----------
        weight : array or tensor, shape (L, C, H, W)
        label_means : array or tensor, shape (L, C, H, W)

        Returns
        -------
        self
        """
        threshold = _check_threshold(self.threshold)
        normalise = _check_normalise(self.normalise)
        dt = _check_dtype(self.dtype)
        _check_layer_shapes(_shape(weight), _shape(label_means), "label_means", same_first=True)
        w, m = _as_tensor(weight, "weight"), _as_tensor(label_means, "label_means")
        n_labels, n_units = int(w.shape[0]), int(w.shape[1])
        keep = self.keep_matrices
        if keep == "auto":
            keep = n_units * n_labels * n_labels * dt.itemsize <= _KEEP_BYTES
        self._weight, self._means = w, m
        self._reset(n_units, n_labels, keep, dt)
        step = max(1, min(n_units, _CHUNK_ELEMENTS // (n_labels * n_labels)))
        tdt = torch.float64 if dt == np.dtype(np.float64) else torch.float32
        with torch.no_grad():  # units first and contiguous, once: every chunk's product reads rows in order
            mp = m.to(tdt).reshape(n_labels, n_units, -1).permute(1, 0, 2).contiguous()  # (C, L, P)
            wp = w.to(mp.device, tdt).reshape(n_labels, n_units, -1).permute(1, 2, 0).contiguous()  # (C, P, L)
            buf = torch.empty((step, n_labels, n_labels), dtype=tdt, device=mp.device)
            work = (torch.empty((step, n_labels, n_labels), dtype=tdt), torch.empty((step, n_labels, n_labels),
                                                                                      dtype=torch.bool))
            for s in range(0, n_units, step):
                e = min(n_units, s + step)
                block = torch.bmm(mp[s:e], wp[s:e], out=buf[: e - s]).cpu().numpy()
                self._fit_block(s, block, threshold, normalise, work)
        self._finish()
        return self

    def fit_matrices(self, matrices: Any) -> "LayerSFP":
        """Analyse ready unit matrices ``(C, L, L)`` (normalise, binarise, cluster).

        The array is stored as ``matrices_`` without a copy when it already is a float
        numpy array.

        Returns
        -------
        self
        """
        threshold = _check_threshold(self.threshold)
        normalise = _check_normalise(self.normalise)
        m = _as_matrices(matrices)
        self._weight = self._means = None
        n_units, n_labels = m.shape[0], m.shape[1]
        self._reset(n_units, n_labels, True, m.dtype)
        self.matrices_ = m
        step = max(1, min(n_units, _CHUNK_ELEMENTS // (n_labels * n_labels)))
        work = (torch.empty((step, n_labels, n_labels), dtype=torch.from_numpy(m[:0]).dtype),
                torch.empty((step, n_labels, n_labels), dtype=torch.bool))
        for s in range(0, n_units, step):
            self._fit_block(s, m[s:s + step], threshold, normalise, work)
        self._finish()
        return self

    def _reset(self, n_units: int, n_labels: int, keep: bool, dtype) -> None:
        self.num_units_, self.num_labels_ = n_units, n_labels
        self.dead_ = np.empty(n_units, dtype=bool)
        self.max_ = np.empty(n_units, dtype=np.float64)
        self.preferred_label_ = np.empty(n_units, dtype=np.int64)
        self.ones_ = np.empty(n_units, dtype=np.int64)
        self.field_signal_ = np.full(n_units, np.nan)
        self.field_noise_ = np.full(n_units, np.nan)
        self.clusters_: list[list[list[int]]] = [[] for _ in range(n_units)]  # each unit's, set by _fit_block
        for name in ("matrices_", "binary_", "vote_fraction_"):
            if hasattr(self, name):
                delattr(self, name)
        if keep:
            self.matrices_ = np.empty((n_units, n_labels, n_labels), dtype=dtype)
            self.binary_ = np.empty((n_units, n_labels, n_labels), dtype=bool)

    def _fit_block(self, start: int, block: np.ndarray, threshold: float, normalise: str, work: tuple) -> None:
        """Normalise, binarise and cluster the units ``start..start+len(block)`` (all at once:
        :func:`~filterlens.sfp.greedy_cluster_labels`, :func:`~filterlens.sfp.stats.unit_stats`); ``work``: reused
        buffers (normalised, binary) of at least ``len(block)`` units (the field SNR reads the normalised ones)."""
        stop = start + len(block)
        if len(block) > len(work[0]):
            raise ValueError("a block larger than its work buffers")  # internal: fit/fit_matrices chunk first
        binary, dead, maxima, preferred = _binarise(block, threshold, normalise, work)
        self.dead_[start:stop], self.max_[start:stop], self.preferred_label_[start:stop] = dead, maxima, preferred
        labels = _greedy_labels_unchecked(binary)
        for i in range(len(block)):
            self.clusters_[start + i] = clusters_from_labels(labels[i])
        units = unit_stats(work[0][: len(block)], torch.from_numpy(binary), labels)  # overwrites work[0]
        self.ones_[start:stop] = units["ones"]
        self.field_signal_[start:stop], self.field_noise_[start:stop] = units["field_signal"], units["field_noise"]
        if hasattr(self, "binary_"):
            self.binary_[start:stop] = binary
            if not np.may_share_memory(self.matrices_, block):
                self.matrices_[start:stop] = block

    def _finish(self) -> None:
        sizes = [np.fromiter((len(k) for k in cl), dtype=np.int64, count=len(cl)) for cl in self.clusters_]
        self.cluster_sizes_ = sizes
        self.num_clusters_ = np.array([len(cl) for cl in self.clusters_], dtype=np.int64)
        self.labels_in_clusters_ = np.array([int(s.sum()) for s in sizes], dtype=np.int64)
        self.signal_ = np.array([int((s * s).sum()) for s in sizes], dtype=np.int64)
        self.noise_ = self.ones_ - self.signal_

    def matrix(self, unit: int) -> np.ndarray:
        """Unit ``unit``'s raw matrix ``F_c`` (L, L): kept, or contracted again from the weight and means."""
        self._check_fitted()
        if not 0 <= int(unit) < self.num_units_:
            raise IndexError(f"unit {unit} outside 0..{self.num_units_ - 1}")
        if hasattr(self, "matrices_"):
            return self.matrices_[int(unit)]
        assert self._weight is not None and self._means is not None  # fit keeps them when it keeps no matrices
        return contract(self._weight[:, int(unit):int(unit) + 1], self._means[:, int(unit):int(unit) + 1],
                        _check_dtype(self.dtype))[0]

    def summaries(self, thresholds: Iterable[float]) -> list[dict[str, Any]]:
        """The layer summary at each threshold (same normalisation), from the kept matrices or chunk by chunk
        from the weight and means."""
        self._check_fitted()
        thresholds = list(thresholds)
        if hasattr(self, "matrices_"):
            return threshold_sweep(self.matrices_, thresholds, self.normalise)
        return [LayerSFP(t, self.normalise, self.dtype, keep_matrices=False).fit(self._weight, self._means).summary()
                for t in thresholds]

    @classmethod
    def from_matrices(cls, matrices: Any, threshold: float = DEFAULT_THRESHOLD,
                      normalise: str = "max") -> "LayerSFP":
        """A fitted :class:`LayerSFP` from ready filter matrices (no contraction)."""
        return cls(threshold=threshold, normalise=normalise).fit_matrices(matrices)

    def score_votes(self, weight: Any, feature_batches: Iterable[Any]) -> "LayerSFP":
        """Set ``vote_fraction_`` from test-set layer outputs (see :func:`vote_fractions`).

        Returns
        -------
        self
        """
        self._check_fitted()
        self.vote_fraction_ = vote_fractions(weight, feature_batches, self.preferred_label_)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "ones_"):
            raise NotFittedError("this LayerSFP is not fitted yet; call fit or fit_matrices")

    # -- results ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Per-layer summary (METHOD.md stage 3, items 5-6).

        Returns
        -------
        dict
            ``clusters_per_filter`` (mean over filters with >= 1 cluster),
            ``clusters_per_filter_all`` (over all filters), ``cluster_size`` (mean over all
            clusters of the layer), ``noise_per_filter`` / ``noise_per_filter_all``,
            ``filters_without_cluster`` (fraction), ``snr`` = ``signal_per_filter_all /
            noise_per_filter_all`` (inf when the noise is 0 and the signal positive, nan
            when both are 0), plus ``signal_per_filter``, ``signal_per_filter_all``,
            ``ones_per_filter_all``, ``labels_in_clusters_per_filter``,
            ``dead_filters`` (fraction), ``num_filters``, ``num_labels``, ``num_clusters``
            (total), ``threshold``, ``normalise`` and, after :meth:`score_votes`,
            ``vote_fraction`` (mean over filters). Means over empty sets are nan.
            The other SNR candidates (METHOD.md, "SNR candidates"), over the filters with a cluster:
            ``snr_median``, the median of ``signal_c / max(noise_c, 1)``; ``snr_field`` =
            ``signal_field / noise_field``, the means of ``field_signal_`` and ``field_noise_`` (nan when
            ``noise_field`` is 0); both nan when no filter has a cluster.
        """
        self._check_fitted()
        has = self.num_clusters_ > 0
        all_sizes = (np.concatenate(self.cluster_sizes_) if self.cluster_sizes_
                     else np.zeros(0, dtype=np.int64))
        signal_all = _nanmean(self.signal_)
        noise_all = _nanmean(self.noise_)
        snr = _snr(signal_all, noise_all)
        signal_field, noise_field = _nanmean(self.field_signal_[has]), _nanmean(self.field_noise_[has])
        out: dict[str, Any] = {
            "clusters_per_filter": _nanmean(self.num_clusters_[has]),
            "clusters_per_filter_all": _nanmean(self.num_clusters_),
            "cluster_size": _nanmean(all_sizes),
            "noise_per_filter": _nanmean(self.noise_[has]),
            "noise_per_filter_all": noise_all,
            "filters_without_cluster": _nanmean(~has),
            "snr": snr,
            "snr_median": (float(np.median(self.signal_[has] / np.maximum(self.noise_[has], 1))) if has.any()
                           else math.nan),
            "snr_field": signal_field / noise_field if noise_field > 0 else math.nan,  # nan > 0 is False
            "signal_field": signal_field,
            "noise_field": noise_field,
            "signal_per_filter": _nanmean(self.signal_[has]),
            "signal_per_filter_all": signal_all,
            "ones_per_filter_all": _nanmean(self.ones_),
            "labels_in_clusters_per_filter": _nanmean(self.labels_in_clusters_[has]),
            "dead_filters": _nanmean(self.dead_),
            "num_filters": int(self.num_units_),
            "num_labels": int(self.num_labels_),
            "num_clusters": int(self.num_clusters_.sum()),
            "threshold": float(self.threshold),
            "normalise": str(self.normalise),
        }
        if hasattr(self, "vote_fraction_"):
            out["vote_fraction"] = _nanmean(self.vote_fraction_)
        return out

    def row(self, layer: str) -> dict[str, Any]:
        """``{"layer": layer, **summary()}``: one row of a per-layer table."""
        return {"layer": layer, **self.summary()}

    def filter_table(self, layer: str, label_names: Sequence[str] | None = None
                     ) -> list[dict[str, Any]]:
        """One dict per filter: layer, filter, num_clusters, clusters, cluster_sizes,
        signal, noise, ones, dead, preferred_label (and vote_fraction after
        :meth:`score_votes`).

        ``clusters`` is a string: labels of a cluster joined by ``+``, clusters by ``|``
        (e.g. ``"cat+dog|ship"``), with ``label_names`` when given, else label indices;
        ``""`` for a filter without a cluster. ``preferred_label`` is the name when
        ``label_names`` is given, else the index.
        """
        self._check_fitted()
        L = self.num_labels_
        if label_names is not None and len(label_names) != L:
            raise ValueError(f"label_names has {len(label_names)} entries; expected {L}")

        def name(i: int) -> Any:
            return str(label_names[i]) if label_names is not None else int(i)

        votes = getattr(self, "vote_fraction_", None)
        rows = []
        for c, cl in enumerate(self.clusters_):
            row = {
                "layer": layer,
                "filter": c,
                "num_clusters": int(self.num_clusters_[c]),
                "clusters": "|".join("+".join(str(name(i)) for i in k) for k in cl),
                "cluster_sizes": [len(k) for k in cl],
                "signal": int(self.signal_[c]),
                "noise": int(self.noise_[c]),
                "ones": int(self.ones_[c]),
                "dead": bool(self.dead_[c]),
                "preferred_label": name(int(self.preferred_label_[c])),
            }
            if votes is not None:
                row["vote_fraction"] = float(votes[c])
            rows.append(row)
        return rows


def analyze_layer(weight: Any, label_means: Any, threshold: float = DEFAULT_THRESHOLD,
                  normalise: str = "max", dtype: Any = "float64") -> LayerSFP:
    """``LayerSFP(threshold, normalise, dtype).fit(weight, label_means)`` (METHOD.md stage 3).

    Parameters
    ----------
    weight, label_means : array or tensor, shape (L, C, H, W)
    threshold : float in (0, 1), default 0.3
    normalise : {"max", "column-centred"}, default "max"
    dtype : {"float64", "float32"}, default float64

    Returns
    -------
    LayerSFP
        Fitted.
    """
    return LayerSFP(threshold=threshold, normalise=normalise, dtype=dtype).fit(
        weight, label_means)


@dataclass
class UnitSFP:
    """One unit's single-unit analysis (:func:`analyze_unit`)."""

    matrix: np.ndarray  # (L, L) raw F_c: rows input label, columns output unit
    normalised: np.ndarray  # (L, L); all zeros for a dead unit
    binary: np.ndarray  # (L, L) bool
    dead: bool  # largest (normalised-basis) element <= 0: no clusters
    clusters: list  # label lists
    noise: int
    top: list  # per cluster, the test samples that drive it most, strongest first ([] without top lists)


def analyze_unit(weight: Any, label_means: Any, unit: int, threshold: float = DEFAULT_THRESHOLD,
                 normalise: str = "max", top: Any = None, k: int = 8) -> UnitSFP:
    """Unit ``unit`` of a layer on its own (METHOD.md stage 3): its matrix from the layer's probe weight and
    label means (L, C, ...), normalised, binarised and clustered as :class:`LayerSFP` does, and per cluster the
    ``k`` test samples that drive it most (:func:`top_samples`) from ``top`` = (values, indices), each
    (C, L, k'), when the probes' test pass kept them."""
    m = filter_matrices(weight[:, unit : unit + 1], label_means[:, unit : unit + 1])[0]
    est = LayerSFP(threshold=threshold, normalise=normalise).fit_matrices(m[None])
    clusters = est.clusters_[0]
    normalised, dead = normalise_matrices(m, normalise)
    tops = [top_samples(top[0][unit], top[1][unit], c, k) for c in clusters] if top is not None else []
    return UnitSFP(m, normalised, est.binary_[0], bool(dead), clusters, int(est.noise_[0]), tops)


def threshold_sweep(matrices: Any, thresholds: Iterable[float],
                    normalise: str = "max") -> list[dict[str, Any]]:
    """Layer summary at each threshold, from ready filter matrices (METHOD.md stage 3).

    Returns
    -------
    list of dict
        One :meth:`LayerSFP.summary` per threshold (each has the key ``"threshold"``).
    """
    m = _as_matrices(matrices)
    return [LayerSFP.from_matrices(m, threshold=t, normalise=normalise).summary()
            for t in thresholds]


def vote_fractions(weight: Any, feature_batches: Iterable[Any], preferred: Any) -> np.ndarray:
    """Fraction of inputs whose largest single-filter field is on the preferred unit.

    METHOD.md stage 3: "the fraction of test inputs whose largest single-filter field is on
    that unit". For each sample ``x`` and filter ``c``, ``argmax_j h_{c,j}(x)`` (see
    :func:`sample_fields`; first index on ties) is compared with ``preferred[c]``.

    Parameters
    ----------
    weight : array or tensor, shape (L, C, H, W)
    feature_batches : iterable of arrays or tensors, each (n, C, H, W)
        Test-set layer outputs, streamed; counts accumulate over batches.
    preferred : array-like of int, shape (C,)
        E.g. ``LayerSFP.preferred_label_``.

    Returns
    -------
    numpy.ndarray, shape (C,), float64
    """
    w = _as_tensor(weight, "weight")
    if w.ndim != 4:
        raise ValueError(f"weight must have shape (L, C, H, W); got shape {tuple(w.shape)}")
    L, C = int(w.shape[0]), int(w.shape[1])
    pref = np.asarray(preferred.detach().cpu() if isinstance(preferred, torch.Tensor)
                      else preferred)
    if pref.shape != (C,):
        raise ValueError(f"preferred must have shape ({C},); got shape {pref.shape}")
    pref = pref.astype(np.int64)
    if C and (pref.min() < 0 or pref.max() >= L):
        raise ValueError(f"preferred labels must lie in [0, {L})")
    counts = torch.zeros(C, dtype=torch.int64)
    total = 0
    step_cap = max(1, (1 << 24) // max(1, C * L))
    pref_t = torch.from_numpy(pref)
    for batch in feature_batches:
        a = _as_tensor(batch, "features")
        _check_layer_shapes(tuple(w.shape), tuple(a.shape), "feature batch", same_first=False)
        if a.device != w.device:
            w = w.to(a.device)
        p = pref_t.to(a.device)
        for s in range(0, a.shape[0], step_cap):
            h = sample_fields(w, a[s:s + step_cap])  # (n, C, L) tensor
            counts += (h.argmax(dim=2) == p).sum(dim=0).cpu()
        total += int(a.shape[0])
    if total == 0:
        raise ValueError("feature_batches yielded no samples")
    return counts.numpy().astype(np.float64) / total
