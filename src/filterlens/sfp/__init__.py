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
cluster size, noise per filter, the fraction of filters without a cluster and the SNR candidates of
METHOD.md ("SNR candidates": ``snr``, ``snr_median``, ``snr_field``, with their parts).

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
from .bootstrap import (
                        bootstrap_summary,
                        bootstrap_summary_from_features,
                        correct_from_features,
                        correct_from_fields,
                        resample_counts,
)
from .clusters import (
                        binarise_matrices,
                        cluster_order,
                        clusters_from_labels,
                        greedy_cluster_labels,
                        greedy_clusters,
                        normalise_matrices,
                        top_samples,
)
from .layer import LayerSFP, UnitSFP, analyze_layer, analyze_unit, threshold_sweep, vote_fractions
from .matrices import (
                        DEFAULT_THRESHOLD,
                        NORMALISE_CHOICES,
                        SUMMARY_KEYS,
                        NotFittedError,
                        filter_matrices,
                        matrices_from_fields,
                        sample_fields,
)

__all__ = [
    "NORMALISE_CHOICES",
    "DEFAULT_THRESHOLD",
    "SUMMARY_KEYS",
    "NotFittedError",
    "LayerSFP",
    "UnitSFP",
    "analyze_layer",
    "analyze_unit",
    "bootstrap_summary",
    "bootstrap_summary_from_features",
    "correct_from_features",
    "correct_from_fields",
    "resample_counts",
    "binarise_matrices",
    "cluster_order",
    "clusters_from_labels",
    "filter_matrices",
    "greedy_cluster_labels",
    "greedy_clusters",
    "matrices_from_fields",
    "normalise_matrices",
    "sample_fields",
    "threshold_sweep",
    "top_samples",
    "vote_fractions",
]
