"""``filterlens demo``: a small VGG on the embedded digits data, every stage that exists, in runs/demo/."""
from __future__ import annotations

import time
from typing import Any

from .config import Config
from .output import say

# The demo's settings (also in configs/demo.toml): 15 epochs of vgg_small on digits (~5 s on 2 cores),
# then every layer's probe from the feature cache and the single-filter analysis, 50 bootstrap resamples of the test
# images (the intervals of the papers' claims), and AFCC on the last two layers.
DEMO: dict[str, Any] = dict(dataset="digits", model="vgg_small", epochs=15, batch_size=64, lr=0.05, seed=0,
            probe_epochs=30, bootstrap=50, afcc_layers="last:2", retrain_epochs=3, random_draws=3)


def run_demo(run_dir="runs/demo", progress: bool = True, overwrite: bool = False, threads: int = 0):
    """``filterlens demo``: train vgg_small on digits into ``run_dir``, analyse every layer, run AFCC on the
    last two and write report.html; returns the training summary and the analysis. ``threads``: torch's CPU
    threads (the ``threads`` setting; 0 torch's default)."""
    from .analysis import analyze_run, print_table
    from .train import train

    cfg = Config(progress=progress, threads=threads, **DEMO).validate()
    t0 = time.perf_counter()
    say(f"filterlens demo: training {cfg.model} on {cfg.dataset} into {run_dir}")
    summary = train(cfg, run_dir, overwrite=overwrite)
    t_train = time.perf_counter() - t0
    say(f"trained: test accuracy {summary['test_accuracy']:.4f} ({t_train:.1f}s)")
    t1 = time.perf_counter()
    result = analyze_run(run_dir, overrides={"progress": progress})
    print_table(result)
    from .afcc import print_afcc, run_afcc
    from .report import build_report

    t2 = time.perf_counter()
    out = run_afcc(run_dir, progress=progress)
    print_afcc(out)
    say(f"AFCC {time.perf_counter() - t2:.1f}s")
    build_report(run_dir)
    say(f"analysis {time.perf_counter() - t1:.1f}s; total {time.perf_counter() - t0:.1f}s; "
         f"results in {run_dir}/ (report.html, layers.csv, filters.csv, afcc.csv, results.json, plots)")
    return summary, result
