"""The files of a run directory, named once: every module that writes, lists, checks or reads them uses these.

A run directory (:mod:`filterlens.rundir`) holds the resolved settings, each stage's outputs (recorded with
their sha256 in ``stages.json``) and the report. ``STAGE_FILES`` says which files each stage of
``filterlens run`` must have written; ``TABLES`` names the CSV tables ``load_run`` reads; ``RUN_FILES`` is
everything a run may hold (``--overwrite`` removes only these). The other folders filterlens makes (a sweep
directory, a folder of seeds, the disk engine's cache folder, the output of ``filterlens compare``) have their fixed
names here too. No other module writes one of these names as a literal (``tests/test_names.py``).
"""
from __future__ import annotations

CONFIG = "config.json"
MANIFEST = "stages.json"
# in every folder filterlens makes (run, sweep, cache, compare, glyphs, seeds): its marker (filterlens.folders.mark)
MARK = ".filterlens"
# a run directory's lock while a command works in it, and who holds it (filterlens.rundir.RunDir.lock)
LOCK = ".filterlens.lock"
LOCK_INFO = ".filterlens.lock.json"
# the log of an internal error, beside the run (filterlens.cli; a temporary file where there is no run directory)
ERROR_LOG_PREFIX = "filterlens-error-"
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
# the disk engine's own folder inside --cache-dir (or inside a run's cache/; filterlens.engine.cache_home)
CACHE_FOLDER = "filterlens-cache"
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
# a sweep directory (filterlens sweep, or a run's sweep/ folder; filterlens.sweep): the plan, written first, the
# tables, the summary and the plots of every finished task, beside its model folders (L005-s1/, run directories)
SWEEP_PLAN = "sweep_plan.json"
SWEEP_TABLE = "sweep.csv"
SWEEP_COUNTS = "sweep_counts.csv"
SWEEP_SUMMARY = "sweep.json"
SWEEP_ERROR_PNG = "sweep_error.png"
SWEEP_CLUSTERS_PNG = "sweep_clusters.png"
# a sweep task's run directory: written last, its presence means the task is done (filterlens.sweep)
TASK = "task.json"
# stage 4, the report
SWEEP = "sweep"
SWEEP_JSON = f"{SWEEP}/{SWEEP_SUMMARY}"
SWEEP_CSV = f"{SWEEP}/{SWEEP_TABLE}"
REPORT = "report.html"
# a folder of the seeds of one recipe (filterlens run --seeds): one run directory per seed, the pooled claims
SEED_PREFIX = "seed-"
SEED_RUN = SEED_PREFIX + "{seed}"
POOLED_JSON = "pooled_claims.json"
POOLED_CSV = "pooled_claims.csv"
# the output folder of filterlens compare (filterlens.report.compare; its per-metric figures are named in its
# METRICS and SWEEP_METRICS)
COMPARE_HTML = "compare.html"
COMPARE_CSV = "compare.csv"
COMPARE_SWEEPS = "compare_sweeps.csv"
COMPARE_CLAIMS = "compare_claims.csv"
COMPARE_POOLED_CSV = "compare_pooled.csv"
COMPARE_POOLED_JSON = "compare_pooled.json"

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
             AFCC_PNG, AFCC_MODEL, AFCC_PRUNING, AFCC_THRESHOLDS, AFCC_PRUNED, TASK)
# a sweep directory's own files, beside its model folders (L005-s1/, run directories)
SWEEP_FILES = (SWEEP_PLAN, SWEEP_TABLE, SWEEP_COUNTS, SWEEP_SUMMARY, SWEEP_ERROR_PNG, SWEEP_CLUSTERS_PNG)
# the folders filterlens makes inside its own (a run's heatmaps, disk cache and sweep; the cache's own folder)
OWN_SUBFOLDERS = (HEATMAPS, CACHE_DIR, SWEEP, CACHE_FOLDER)
