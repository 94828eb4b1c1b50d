"""Single-filter performance (SFP): per-filter label matrices, clusters, noise and SNR.

This module implements METHOD.md, "Stage 3: single-filter performance (SFP)".

Given the trained bias-free probe of a layer (Stage 2), with weight ``W`` of shape
``(L, C, H, W)`` (L output labels, C filters), and the per-label mean activation maps
``M`` of the same shape (``M[i]`` is the mean of the layer output ``A(x)`` over the test
inputs ``x`` of label ``i``), filter ``c`` has the L x L matrix::

    F_c[i, j] = sum_{p,q} W[j, c, p, q] * M[i, c, p, q]

(rows ``i``: input label, columns ``j``: output unit). It equals the mean over the test
inputs of label ``i`` of the single-filter field ``h_{c,j}(x) = sum_{p,q} W[j,c,p,q]
A(x)[c,p,q]``, i.e. the probe's output when every FC weight except those leaving filter
``c`` is silenced. Each matrix is normalised by its largest element, binarised with a
strict threshold (default 0.3), and the labels on its diagonal are partitioned greedily into
clusters whose square blocks are all ones. The per-layer summary reports clusters per filter,
cluster size, noise per filter, the fraction of filters without a cluster and the SNR.

Design choices (see METHOD.md stage 3 for the ones the method leaves open):

* Matrices are float64 by default (exact threshold semantics: an element that normalises to
  exactly the threshold is 0). ImageNet's shape, 512 filters x 1000 labels, takes 4.1 GB in
  float64; this fits in memory on the target machines (measured in
  ``benchmarks/sfp_scale.py``), and ``dtype="float32"`` halves it where memory is short.
* A filter whose largest (normalised-basis) element is <= 0 is "dead": it has no clusters,
  its binary matrix is all zeros (noise 0), and ``LayerSFP.dead_`` marks it. It counts as a
  filter without a cluster.
* The bootstrap resamples test inputs with replacement *within each label* (stratified), so
  every label keeps its number of samples and every matrix row stays defined.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "NORMALISE_CHOICES",
    "DEFAULT_THRESHOLD",
    "SUMMARY_KEYS",
    "NotFittedError",
    "LayerSFP",
    "analyze_layer",
    "bootstrap_summary",
    "binarise_matrices",
    "cluster_order",
    "filter_matrices",
    "greedy_clusters",
    "matrices_from_fields",
    "normalise_matrices",
    "plot_filter_matrix",
    "sample_fields",
    "threshold_sweep",
    "vote_fractions",
]

#: Valid values of the ``normalise`` option (METHOD.md stage 3, item 7).
NORMALISE_CHOICES = ("max", "column-centred")
#: Default binarisation threshold (METHOD.md stage 3, item 2).
DEFAULT_THRESHOLD = 0.3
#: The summary keys METHOD.md stage 3 items 5-6 require (``LayerSFP.summary`` has more).
SUMMARY_KEYS = (
    "clusters_per_filter",
    "clusters_per_filter_all",
    "cluster_size",
    "noise_per_filter",
    "noise_per_filter_all",
    "filters_without_cluster",
    "snr",
)
# Summary entries that are settings or fixed sizes, not estimates (skipped by the bootstrap).
_SETTING_KEYS = ("threshold", "normalise", "num_filters", "num_labels")

# Work arrays of the per-filter pipeline are processed in chunks of about this many elements
# (16 Mi elements = 128 MiB in float64), so that normalisation never doubles the memory.
_CHUNK_ELEMENTS = 1 << 24


class NotFittedError(ValueError, AttributeError):
    """Raised when a :class:`LayerSFP` result is requested before ``fit``."""


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def _check_threshold(threshold: Any) -> float:
    """Return ``threshold`` as float; it must be a real number in the open interval (0, 1)."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise ValueError(f"threshold must be a real number in (0, 1); got {threshold!r}")
    t = float(threshold)
    if not (0.0 < t < 1.0):  # also rejects nan
        raise ValueError(f"threshold must be in the open interval (0, 1); got {threshold!r}")
    return t


def _check_normalise(normalise: Any) -> str:
    if normalise not in NORMALISE_CHOICES:
        raise ValueError(
            f"unknown normalise={normalise!r}; valid values are "
            + ", ".join(repr(v) for v in NORMALISE_CHOICES)
        )
    return str(normalise)


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise ValueError(f"dtype must be float64 or float32; got {dt}")
    return dt


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.float64 if dt == np.dtype(np.float64) else torch.float32


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    """A detached torch view of a tensor / array / nested sequence (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array or tensor; got dtype object")
    if not arr.flags.writeable or not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        arr = np.ascontiguousarray(arr)
        if not arr.flags.writeable:
            arr = arr.copy()
    return torch.from_numpy(arr)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _float_result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dt = tensors[0].dtype
    for t in tensors[1:]:
        dt = torch.promote_types(dt, t.dtype)
    if not dt.is_floating_point or dt in (torch.float16, torch.bfloat16):
        # integer inputs, or half precision (bmm on CPU lacks it): compute in float32/64
        dt = torch.float64 if not dt.is_floating_point else torch.float32
    return dt


def _check_layer_shapes(weight_shape: tuple[int, ...], other_shape: tuple[int, ...],
                        other_name: str, same_first: bool) -> None:
    if len(weight_shape) != 4:
        raise ValueError(
            f"weight must have shape (L, C, H, W) (reshape the probe's (L, C*H*W) weight); "
            f"got shape {weight_shape}"
        )
    if len(other_shape) != 4:
        raise ValueError(
            f"{other_name} must have 4 dimensions (first, C, H, W); got shape {other_shape}"
        )
    if same_first:
        if weight_shape != other_shape:
            raise ValueError(
                f"weight shape {weight_shape} and {other_name} shape {other_shape} differ; "
                "both must be (L, C, H, W)"
            )
    elif weight_shape[1:] != other_shape[1:]:
        raise ValueError(
            f"weight shape {weight_shape} (L, C, H, W) and {other_name} shape {other_shape} "
            "(N, C, H, W) disagree on (C, H, W)"
        )


def _nanmean(values: np.ndarray) -> float:
    """Mean of a 1-d array; nan (no warning) when it is empty."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else math.nan


# --------------------------------------------------------------------------------------
# the contraction
# --------------------------------------------------------------------------------------
def filter_matrices(weight: Any, label_means: Any, dtype: Any = np.float64) -> np.ndarray:
    """Single-filter matrices of a layer (METHOD.md stage 3, the definition of ``F_c``).

    ``F_c[i, j] = sum_{p,q} W[j, c, p, q] * M[i, c, p, q]``: rows ``i`` are input labels,
    columns ``j`` output units. Because the field is linear in the activations, this equals
    the mean over the test inputs of label ``i`` of the output of the probe with every weight
    except filter ``c``'s silenced. Computed as one batched matrix product over filters
    (``torch.bmm``), no Python loop.

    Parameters
    ----------
    weight : torch.Tensor or numpy.ndarray, shape (L, C, H, W)
        Weight of the layer's trained bias-free probe (Stage 2), reshaped from ``(L, C*H*W)``.
    label_means : torch.Tensor or numpy.ndarray, shape (L, C, H, W)
        ``label_means[i]`` is the mean layer output over the test inputs of label ``i``.
    dtype : {"float64", "float32"}, default float64
        Result precision (also the precision of the contraction). float64 is the default;
        float32 halves the memory (512 filters x 1000 labels: 2.0 GB instead of 4.1 GB).

    Returns
    -------
    numpy.ndarray, shape (C, L, L)
        ``result[c]`` is ``F_c``.

    Raises
    ------
    ValueError
        If the shapes are not both ``(L, C, H, W)`` and equal.
    """
    dt = _check_dtype(dtype)
    _check_layer_shapes(_shape(weight), _shape(label_means), "label_means", same_first=True)
    w = _as_tensor(weight, "weight")
    m = _as_tensor(label_means, "label_means")
    device = w.device if w.device.type != "cpu" else m.device
    tdt = _torch_dtype(dt)
    n_labels, n_filters = w.shape[0], w.shape[1]
    with torch.no_grad():
        w = w.to(device=device, dtype=tdt).reshape(n_labels, n_filters, -1)
        m = m.to(device=device, dtype=tdt).reshape(n_labels, n_filters, -1)
        # (C, L_i, P) @ (C, P, L_j) -> (C, L_i, L_j)
        out = torch.bmm(m.permute(1, 0, 2), w.permute(1, 2, 0))
    return out.cpu().numpy()


def sample_fields(weight: Any, features: Any) -> Any:
    """Per-sample single-filter fields ``h_{c,j}(x)`` (METHOD.md stage 3).

    ``h[n, c, j] = sum_{p,q} W[j, c, p, q] * A(x_n)[c, p, q]``: the field on output unit
    ``j`` of the probe when only filter ``c``'s weights are kept (no bias). Batched over
    filters with one ``torch.bmm``.

    Parameters
    ----------
    weight : torch.Tensor or numpy.ndarray, shape (L, C, H, W)
    features : torch.Tensor or numpy.ndarray, shape (N, C, H, W)
        Layer outputs ``A(x)`` of N inputs.

    Returns
    -------
    torch.Tensor or numpy.ndarray, shape (N, C, L)
        A tensor (on ``features``' device, dtype promoted from the inputs) when ``features``
        is a tensor; a float64 array otherwise.
    """
    _check_layer_shapes(_shape(weight), _shape(features), "features", same_first=False)
    as_numpy = not isinstance(features, torch.Tensor)
    w = _as_tensor(weight, "weight")
    a = _as_tensor(features, "features")
    tdt = torch.float64 if as_numpy else _float_result_dtype(w, a)
    n, c = a.shape[0], a.shape[1]
    with torch.no_grad():
        w = w.to(device=a.device, dtype=tdt).reshape(w.shape[0], c, -1)
        a = a.to(dtype=tdt).reshape(n, c, -1)
        # (C, N, P) @ (C, P, L) -> (C, N, L) -> (N, C, L)
        h = torch.bmm(a.permute(1, 0, 2), w.permute(1, 2, 0)).permute(1, 0, 2).contiguous()
    return h.cpu().numpy() if as_numpy else h


def matrices_from_fields(fields: Any, labels: Any, num_labels: int,
                         sample_weight: Any = None) -> np.ndarray:
    """Filter matrices as per-label means of per-sample fields (METHOD.md stage 3).

    ``F_c[i, j]`` = (weighted) mean of ``fields[n, c, j]`` over the samples ``n`` of label
    ``i``. With ``fields = sample_fields(W, A)`` this equals
    ``filter_matrices(W, per-label means of A)``; the bootstrap uses it with resampling
    counts as weights.

    Parameters
    ----------
    fields : array or tensor, shape (N, C, L)
    labels : array-like of int, shape (N,)
        Values in ``[0, num_labels)``; every label needs positive total weight.
    num_labels : int
    sample_weight : array-like, shape (N,), optional
        Non-negative weights (e.g. bootstrap counts); default all ones.

    Returns
    -------
    numpy.ndarray, shape (C, L, L), float64
    """
    f = _as_tensor(fields, "fields")
    if f.ndim != 3 or f.shape[2] != num_labels:
        raise ValueError(
            f"fields must have shape (N, C, L) with L = num_labels = {num_labels}; "
            f"got shape {tuple(f.shape)}"
        )
    lab = _check_labels(labels, f.shape[0], num_labels)
    n, c, L = f.shape
    if sample_weight is None:
        wts = None
    else:
        wts = np.asarray(sample_weight, dtype=np.float64)
        if wts.shape != (n,) or not np.all(np.isfinite(wts)) or np.any(wts < 0):
            raise ValueError(
                f"sample_weight must be {n} finite non-negative numbers; got shape {wts.shape}"
            )
    denom = np.bincount(lab, weights=wts, minlength=num_labels)
    if np.any(denom <= 0):
        missing = np.flatnonzero(denom <= 0)[:10].tolist()
        raise ValueError(f"labels without any (weighted) sample: {missing}")
    order = np.argsort(lab, kind="stable")
    flat = f.to(device="cpu", dtype=torch.float64).reshape(n, c * L).numpy()[order]
    counts = np.bincount(lab, minlength=num_labels)
    return _means_sorted(flat, np.cumsum(counts) - counts,
                         None if wts is None else wts[order], denom, c)


def _means_sorted(flat_sorted: np.ndarray, starts: np.ndarray, weights_sorted: Any,
                  denom: np.ndarray, c: int) -> np.ndarray:
    """(C, L, L) per-label weighted means from label-sorted (N, C*L) fields.

    Every label must own at least one row (``starts`` strictly increasing). Pure numpy
    (``np.add.reduceat``): single-threaded, so it stays fast on a busy machine.
    """
    data = flat_sorted if weights_sorted is None else flat_sorted * weights_sorted[:, None]
    sums = np.add.reduceat(data, starts, axis=0)  # (L, C*L)
    L = starts.size
    means = sums / denom[:, None]
    return np.ascontiguousarray(means.reshape(L, c, L).transpose(1, 0, 2))


def _check_labels(labels: Any, n: int, num_labels: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have shape ({n},); got shape {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.equal(np.mod(lab, 1), 0)):
            raise ValueError("labels must be integers")
    lab = lab.astype(np.int64)
    if lab.size and (lab.min() < 0 or lab.max() >= num_labels):
        raise ValueError(f"labels must lie in [0, {num_labels}); got [{lab.min()}, {lab.max()}]")
    return lab


# --------------------------------------------------------------------------------------
# normalise, binarise, cluster
# --------------------------------------------------------------------------------------
def _process_block(block: np.ndarray, normalise: str, out: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalise ``block`` (n, L, L) into ``out``; return raw column means, maxima, dead.

    Dead filters (basis maximum <= 0) get an all-zero normalised matrix.
    """
    colmean = block.mean(axis=1)  # (n, L): mean over input labels i, per output unit j
    if not np.all(np.isfinite(colmean)):
        raise ValueError("filter matrices contain NaN or infinite values")
    if normalise == "column-centred":
        np.subtract(block, colmean[:, None, :], out=out)
        basis = out
    else:
        basis = block
    maxima = basis.max(axis=(1, 2))
    dead = ~(maxima > 0)
    scale = np.where(dead, 1.0, maxima).astype(out.dtype, copy=False)
    np.divide(basis, scale[:, None, None], out=out)
    if dead.any():
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
    _, _, dead = _process_block(m, normalise, out)
    return (out[0], dead[0]) if single else (out, dead)


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


def _binarise(m: np.ndarray, threshold: float, normalise: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Chunked normalise + binarise; also returns basis maxima and preferred output units."""
    c, L, _ = m.shape
    binary = np.empty((c, L, L), dtype=bool)
    dead = np.empty(c, dtype=bool)
    maxima = np.empty(c, dtype=np.float64)
    preferred = np.empty(c, dtype=np.int64)
    step = max(1, min(c, _CHUNK_ELEMENTS // (L * L)))
    buf = np.empty((step, L, L), dtype=m.dtype)
    for s in range(0, c, step):
        e = min(c, s + step)
        out = buf[: e - s]
        colmean, mx, dd = _process_block(m[s:e], normalise, out)
        np.greater(out, threshold, out=binary[s:e])
        dead[s:e] = dd
        maxima[s:e] = mx
        preferred[s:e] = colmean.argmax(axis=1)
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


# --------------------------------------------------------------------------------------
# the estimator
# --------------------------------------------------------------------------------------
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

    Attributes
    ----------
    matrices_ : numpy.ndarray, shape (C, L, L)
        Raw filter matrices ``F_c`` (rows input label, columns output unit).
    binary_ : numpy.ndarray of bool, shape (C, L, L)
        Binarised normalised matrices (all zeros for dead filters).
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

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, normalise: str = "max",
                 dtype: Any = "float64") -> None:
        self.threshold = threshold
        self.normalise = normalise
        self.dtype = dtype

    # -- scikit-learn style parameter access ------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"threshold": self.threshold, "normalise": self.normalise, "dtype": self.dtype}

    def set_params(self, **params: Any) -> "LayerSFP":
        for key, value in params.items():
            if key not in ("threshold", "normalise", "dtype"):
                raise ValueError(f"invalid parameter {key!r} for LayerSFP")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        return (f"LayerSFP(threshold={self.threshold!r}, normalise={self.normalise!r}, "
                f"dtype={self.dtype!r})")

    # -- fitting ----------------------------------------------------------------------
    def fit(self, weight: Any, label_means: Any) -> "LayerSFP":
        """Compute the filter matrices from the probe weight and per-label means, then
        analyse them (METHOD.md stage 3).

        Parameters
        ----------
        weight : array or tensor, shape (L, C, H, W)
        label_means : array or tensor, shape (L, C, H, W)

        Returns
        -------
        self
        """
        _check_threshold(self.threshold)
        _check_normalise(self.normalise)
        return self.fit_matrices(filter_matrices(weight, label_means, dtype=self.dtype))

    def fit_matrices(self, matrices: Any) -> "LayerSFP":
        """Analyse ready filter matrices ``(C, L, L)`` (normalise, binarise, cluster).

        The array is stored as ``matrices_`` without a copy when it already is a float
        numpy array.

        Returns
        -------
        self
        """
        threshold = _check_threshold(self.threshold)
        normalise = _check_normalise(self.normalise)
        m = _as_matrices(matrices)
        binary, dead, maxima, preferred = _binarise(m, threshold, normalise)
        clusters = [_greedy_unchecked(binary[c]) for c in range(m.shape[0])]
        sizes = [np.fromiter((len(k) for k in cl), dtype=np.int64, count=len(cl))
                 for cl in clusters]
        self.matrices_ = m
        self.binary_ = binary
        self.dead_ = dead
        self.max_ = maxima
        self.preferred_label_ = preferred
        self.clusters_ = clusters
        self.cluster_sizes_ = sizes
        self.num_clusters_ = np.array([len(cl) for cl in clusters], dtype=np.int64)
        self.labels_in_clusters_ = np.array([int(s.sum()) for s in sizes], dtype=np.int64)
        self.signal_ = np.array([int((s * s).sum()) for s in sizes], dtype=np.int64)
        self.ones_ = binary.sum(axis=(1, 2), dtype=np.int64)
        self.noise_ = self.ones_ - self.signal_
        if hasattr(self, "vote_fraction_"):
            del self.vote_fraction_
        return self

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
        if not hasattr(self, "binary_"):
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
        """
        self._check_fitted()
        has = self.num_clusters_ > 0
        all_sizes = (np.concatenate(self.cluster_sizes_) if self.cluster_sizes_
                     else np.zeros(0, dtype=np.int64))
        signal_all = _nanmean(self.signal_)
        noise_all = _nanmean(self.noise_)
        if math.isnan(signal_all) or math.isnan(noise_all):
            snr = math.nan
        elif noise_all > 0:
            snr = signal_all / noise_all
        else:
            snr = math.inf if signal_all > 0 else math.nan
        out: dict[str, Any] = {
            "clusters_per_filter": _nanmean(self.num_clusters_[has]),
            "clusters_per_filter_all": _nanmean(self.num_clusters_),
            "cluster_size": _nanmean(all_sizes),
            "noise_per_filter": _nanmean(self.noise_[has]),
            "noise_per_filter_all": noise_all,
            "filters_without_cluster": _nanmean(~has),
            "snr": snr,
            "signal_per_filter": _nanmean(self.signal_[has]),
            "signal_per_filter_all": signal_all,
            "ones_per_filter_all": _nanmean(self.ones_),
            "labels_in_clusters_per_filter": _nanmean(self.labels_in_clusters_[has]),
            "dead_filters": _nanmean(self.dead_),
            "num_filters": int(self.binary_.shape[0]),
            "num_labels": int(self.binary_.shape[1]),
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
        L = self.binary_.shape[1]
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


# --------------------------------------------------------------------------------------
# votes
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------
def bootstrap_summary(fields: Any, labels: Any, num_labels: int, n_boot: int, seed: int,
                      threshold: float = DEFAULT_THRESHOLD, normalise: str = "max",
                      level: float = 0.95, return_samples: bool = False
                      ) -> dict[str, tuple[float, float]] | tuple[
                          dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Percentile bootstrap intervals of the layer summary over test inputs.

    The filter matrices are per-label means of the per-sample fields (METHOD.md stage 3),
    so each resample only re-averages ``fields``; the raw features are never needed.
    Resampling is *stratified*: each resample draws, within every label, as many test
    inputs (with replacement) as the label has, so every matrix row stays defined and the
    label counts are those of the test set. Each resample's matrices are analysed with
    :class:`LayerSFP` (same ``threshold`` and ``normalise``).

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
        Also return the per-resample values (``dict[key -> ndarray (n_boot,)]``).

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
    sorted_lab = lab[order]
    high = counts[sorted_lab]  # for each sorted position: its label's sample count
    base = starts[sorted_lab]  # and the first sorted position of its label
    denom = counts.astype(np.float64)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(int(n_boot)):
        # stratified: each position draws a sample of its own label, with replacement
        draw = base + rng.integers(0, high)
        weights = np.bincount(draw, minlength=n).astype(np.float64)
        mats = _means_sorted(flat, starts, weights, denom, c)
        summ = LayerSFP(threshold=threshold, normalise=normalise).fit_matrices(mats).summary()
        for key, val in summ.items():
            if key in _SETTING_KEYS or isinstance(val, (str, bool)):
                continue
            if isinstance(val, numbers.Real):
                values.setdefault(key, []).append(float(val))
    alpha = (1.0 - float(level)) / 2.0
    intervals: dict[str, tuple[float, float]] = {}
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    for key, arr in samples.items():
        ok = arr[~np.isnan(arr)]
        if ok.size == 0:
            intervals[key] = (math.nan, math.nan)
            continue
        lo = float(np.percentile(ok, 100.0 * alpha, method="lower"))
        hi = float(np.percentile(ok, 100.0 * (1.0 - alpha), method="higher"))
        intervals[key] = (lo, hi)
    return (intervals, samples) if return_samples else intervals


# --------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------
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


def _filter_figure(matrix: Any, threshold: float, clusters: Sequence[Sequence[int]],
                   label_names: Sequence[str] | None, title: str | None, normalise: str,
                   max_ticks: int = 100):
    """Build (without saving) the two-panel figure of :func:`plot_filter_matrix`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    threshold = _check_threshold(threshold)
    normalise = _check_normalise(normalise)
    m = _as_matrices(matrix)
    if m.shape[0] != 1:
        raise ValueError(f"matrix must be one (L, L) filter matrix; got shape {np.shape(matrix)}")
    L = m.shape[1]
    if label_names is None:
        label_names = [str(i) for i in range(L)]
    if len(label_names) != L:
        raise ValueError(f"label_names has {len(label_names)} entries; expected {L}")
    norm, dead = normalise_matrices(m[0], normalise)
    binary = norm > threshold
    shown = norm
    if dead:  # no normalisation defined; show the raw matrix scaled to [-1, 1]
        peak = float(np.abs(m[0]).max())
        shown = m[0] / peak if peak > 0 else m[0]
    order = cluster_order(clusters, L)
    ix = np.ix_(order, order)
    names = [str(label_names[i]) for i in order]

    side = min(4.0 + 0.12 * L, 14.0)
    fig = Figure(figsize=(2 * side + 1.5, side + 0.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    im = axes[0].imshow(np.asarray(shown[ix], dtype=np.float64), cmap="RdBu_r", vmin=-1,
                        vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], fraction=0.046, pad=0.04)
    axes[1].imshow(binary[ix].astype(np.float64), cmap="Greys", vmin=0, vmax=1,
                   interpolation="nearest")
    axes[0].set_title("normalised" + (" (max <= 0: no clusters)" if dead else f" ({normalise})"))
    axes[1].set_title(f"binarised (> {threshold:g})")
    step = max(1, int(math.ceil(L / max(1, max_ticks))))
    ticks = list(range(0, L, step))
    fontsize = 8 if L <= 30 else 6 if L <= 60 else 4
    for ax in axes:
        ax.set_xticks(ticks)
        ax.set_xticklabels([names[t] for t in ticks], rotation=90, fontsize=fontsize)
        ax.set_yticks(ticks)
        ax.set_yticklabels([names[t] for t in ticks], fontsize=fontsize)
        ax.set_xlabel("output unit")
        ax.set_ylabel("input label")
        pos = 0
        for cl in clusters:
            k = len(cl)
            ax.add_patch(Rectangle((pos - 0.5, pos - 0.5), k, k, fill=False,
                                   edgecolor="tab:orange", linewidth=1.2))
            pos += k
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_filter_matrix(matrix: Any, threshold: float, clusters: Sequence[Sequence[int]],
                       label_names: Sequence[str] | None, path: str | os.PathLike,
                       title: str | None = None, normalise: str = "max",
                       max_ticks: int = 100) -> Path:
    """Plot one filter matrix: normalised heatmap and binarised matrix side by side.

    METHOD.md stage 3. Rows and columns are reordered so that the cluster labels come first,
    grouped by cluster (clusters appear as diagonal blocks, outlined), then the remaining
    labels. Tick labels are the (reordered) label names; at most ``max_ticks`` of them are
    drawn per axis (every k-th when L is larger). x axis: "output unit", y axis: "input
    label". Uses matplotlib's Agg canvas directly (imported lazily; no pyplot, no global
    backend change). Written atomically: saved to a temporary file in the target directory,
    then ``os.replace``; the format follows the file suffix (png when none).

    Parameters
    ----------
    matrix : array or tensor, shape (L, L)
        Raw filter matrix ``F_c``.
    threshold : float in (0, 1)
    clusters : sequence of sequences of int
        The filter's clusters (e.g. ``LayerSFP.clusters_[c]``).
    label_names : sequence of str or None
        None: label indices.
    path : str or path-like
    title : str, optional
    normalise : {"max", "column-centred"}, default "max"

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    fig = _filter_figure(matrix, threshold, clusters, label_names, title, normalise, max_ticks)
    from .files import write_with

    fmt = path.suffix.lstrip(".").lower() or "png"
    return write_with(path, lambda fh: fig.savefig(fh, format=fmt, dpi=120))
