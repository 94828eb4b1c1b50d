"""The unit matrices of a layer (METHOD.md stage 3): settings, input checks, the contraction, fields.

``F_c[i, j] = sum_p W[j, c, p] * M[i, c, p]`` from the probe weight ``W`` and the per-label mean maps
``M``; per-sample fields ``h_{c,j}(x)`` and matrices as their per-label means (the bootstrap's input).
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

#: Default binarisation threshold (METHOD.md stage 3, item 2), defined once in filterlens.config.
from ..config import DEFAULT_THRESHOLD as DEFAULT_THRESHOLD

NORMALISE_CHOICES = ("max", "column-centred")
#: The summary keys METHOD.md stage 3 items 5-6 require (``LayerSFP.summary`` has more).
SUMMARY_KEYS = (
    "clusters_per_filter",
    "clusters_per_filter_all",
    "cluster_size",
    "noise_per_filter",
    "noise_per_filter_all",
    "filters_without_cluster",
    "snr",
    "snr_median",
    "snr_field",
)
# Summary entries that are settings or fixed sizes, not estimates (skipped by the bootstrap).
_SETTING_KEYS = ("threshold", "normalise", "num_filters", "num_labels")

# Work arrays of the per-filter pipeline are processed in chunks of about this many elements
# (16 Mi elements = 128 MiB in float64), so that normalisation never doubles the memory.
_CHUNK_ELEMENTS = 1 << 22


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
    return contract(_as_tensor(weight, "weight"), _as_tensor(label_means, "label_means"), dt)


def contract(w: torch.Tensor, m: torch.Tensor, dt: np.dtype) -> np.ndarray:
    """The matrices of the units in ``w`` and ``m`` (both (L, c, ...), checked by the caller): ``(c, L, L)``
    in ``dt``, one batched matrix product over the units (on the inputs' device, then to the host)."""
    device = w.device if w.device.type != "cpu" else m.device
    tdt = _torch_dtype(dt)
    n_labels, n_units = w.shape[0], w.shape[1]
    with torch.no_grad():
        w = w.to(device=device, dtype=tdt).reshape(n_labels, n_units, -1)
        m = m.to(device=device, dtype=tdt).reshape(n_labels, n_units, -1)
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
