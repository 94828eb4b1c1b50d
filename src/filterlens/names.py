"""The files of a run directory, named once: every module that writes, lists, checks or reads them uses these.

A run directory (:mod:`filterlens.rundir`) holds the resolved settings, each stage's outputs (recorded with
their sha256 in ``stages.json``) and the report. ``STAGE_FILES`` says which files each stage of
``filterlens run`` must have written; ``TABLES`` names the CSV tables ``load_run`` reads; ``RUN_FILES`` is
everything a run may hold (``--overwrite`` removes only these).
"""
from __future__ import annotations

CONFIG = "config.json"
MANIFEST = "stages.json"
# stage 1
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
TRAIN_LOG = "train_log.csv"
TRAIN_SUMMARY = "train.json"
# stage 2
PROBES = "probes.pt"
LABEL_MEANS = "label_means.pt"
PROBES_JSON = "probes.json"
CACHE_DIR = "cache"
# stage 3
RESULTS = "results.json"
LAYERS = "layers.csv"
FILTERS = "filters.csv"
THRESHOLDS = "thresholds.csv"
BOOTSTRAP = "bootstrap.csv"
THUMBNAILS = "thumbnails.json"
ACCURACY_PNG = "accuracy.png"
CLUSTERS_PNG = "clusters.png"
HEATMAPS = "heatmaps"
# stage 5
AFCC = "afcc.csv"
AFCC_THRESHOLDS = "afcc_thresholds.csv"
AFCC_PRUNING = "afcc_pruning.csv"
AFCC_PNG = "afcc.png"
AFCC_MODEL = "afcc_model.pt"
AFCC_PRUNED = "afcc_pruned.pt"
# stage 4, the report
SWEEP = "sweep"
SWEEP_JSON = "sweep/sweep.json"
SWEEP_CSV = "sweep/sweep.csv"
REPORT = "report.html"
# a folder of the seeds of one recipe (filterlens run --seeds): one run directory per seed, the pooled claims
SEED_RUN = "seed-{seed}"
POOLED_JSON = "pooled_claims.json"
POOLED_CSV = "pooled_claims.csv"

PROBE_FILES = (PROBES, LABEL_MEANS, PROBES_JSON)
# the files each stage of `filterlens run` must have written (it records every file it wrote)
STAGE_FILES = {"train": (MODEL, TRAIN_SUMMARY), "probes": PROBE_FILES, "sfp": (LAYERS, FILTERS, RESULTS),
               "afcc": (AFCC,), "sweep": (SWEEP_JSON,), "report": (REPORT,)}
# the tables load_run reads, by name
TABLES = {"layers": LAYERS, "filters": FILTERS, "thresholds": THRESHOLDS, "bootstrap": BOOTSTRAP, "afcc": AFCC,
          "afcc_thresholds": AFCC_THRESHOLDS, "afcc_pruning": AFCC_PRUNING, "train_log": TRAIN_LOG,
          "sweep": SWEEP_CSV}
# the files the report reads (each verified against its checksum when a stage recorded it)
REPORT_READS = (RESULTS, LAYERS, FILTERS, THRESHOLDS, BOOTSTRAP, AFCC, AFCC_THRESHOLDS, AFCC_PRUNING, SWEEP_JSON,
                ACCURACY_PNG, CLUSTERS_PNG, AFCC_PNG, PROBES, LABEL_MEANS, THUMBNAILS)
# the files a run writes at its top level (stages.json records most of them; these names are filterlens' own in
# a folder it made, and --overwrite removes them: nothing else but what a stage recorded)
RUN_FILES = (CONFIG, CHECKPOINT, MODEL, TRAIN_LOG, TRAIN_SUMMARY, RESULTS, LAYERS, FILTERS, PROBES, LABEL_MEANS,
             PROBES_JSON, ACCURACY_PNG, CLUSTERS_PNG, THRESHOLDS, BOOTSTRAP, THUMBNAILS, MANIFEST, REPORT, AFCC,
             AFCC_PNG, AFCC_MODEL, AFCC_PRUNING, AFCC_THRESHOLDS, AFCC_PRUNED, "task.json")
# a sweep directory's own files, beside its model folders (L005-s1/, run directories)
SWEEP_FILES = ("sweep_plan.json", "sweep.csv", "sweep_counts.csv", "sweep.json", "sweep_error.png",
               "sweep_clusters.png")
