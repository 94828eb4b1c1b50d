"""Stage 4: error against the number of labels, with a linear fit (METHOD.md).

For each label count L in a list and R seeded label subsets per count (the full
label set only once), the architecture is trained on the subset with the same
recipe, its test error recorded, and stages 2-3 run on its last conv layer (and
any other layers asked for). The maximal error rate at L is the largest error over
its subsets (mean and min are reported too); ``error = a + b*L`` is fitted by least
squares to the maximal and to the mean errors, with R^2 and a 95% interval for b.

Each trained model and its results live in their own folder of the sweep
directory (``L005-s1/``); a finished folder (``task.json``) is skipped when the
sweep is started again. ``jobs`` spreads the folders over processes on one
machine; ``shard=(i, n)`` runs every n-th task starting at i, so n machines (a
SLURM array, torchrun ranks) share a sweep, and ``merge`` combines the folders.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import claims
from .checks import is_int_text
from .claims import fit_line
from .config import Config, ProbeSettings
from .errors import FilterlensError
from .files import read_json, write_csv, write_json
from .folders import make_dirs, mark
from .names import CHECKPOINT, SWEEP_COUNTS, SWEEP_PLAN, SWEEP_SUMMARY, SWEEP_TABLE, TASK
from .output import quiet, say
from .rundir import check_sweep_folder
from .utils import keeps_global_state

SWEEP_COLUMNS = ["num_labels", "subset", "labels", "error", "last_layer_accuracy", "clusters_per_filter",
                 "cluster_size", "noise_per_filter", "snr", "snr_median", "snr_field", "layer", "seconds", "converged"]
# the last layer's metrics each model records, and their means per label count (claim 4 reads them)
LAST_LAYER_KEYS = ("clusters_per_filter", "cluster_size", "noise_per_filter", "snr", "snr_median", "snr_field")


@dataclass(frozen=True)
class SweepTask:
    """One model of the label-count study: a label count, the subset's number and its labels."""

    num_labels: int
    subset: int  # 1-based index among the subsets of this label count
    labels: tuple[int, ...]  # original label indices, ascending

    @property
    def folder(self) -> str:
        """The task's folder in the sweep directory: ``L005-s1`` for 5 labels, subset 1."""
        return f"L{self.num_labels:03d}-s{self.subset}"


def parse_counts(text, total: int | None = None) -> list[int]:
    """``"3,5,10"`` -> [3, 5, 10]: at least two distinct counts (a line is fitted through them), each in
    2..total (``total`` None: not checked against a dataset yet)."""
    if not isinstance(text, str):
        raise FilterlensError(f"label counts {text!r} is a {type(text).__name__}; give a string of two or more "
                              "counts, e.g. '3,5,10'")
    counts = []
    for tok in text.split(","):
        tok = tok.strip()
        if not tok:
            continue
        if not (is_int_text(tok) and tok.isdigit()):  # ASCII digits only: "²" passes str.isdigit and fails int
            raise FilterlensError(f"label count '{tok}' in '{text}' is not a positive integer in ASCII digits; give "
                                  "e.g. 3,5,10")
        k = int(tok)
        if not 2 <= k <= (total or k):
            raise FilterlensError(f"label count {k} is out of range; valid: 2..{total} for this dataset")
        if k not in counts:
            counts.append(k)
    if not counts:
        raise FilterlensError(f"the label-count list '{text}' is empty; give two or more counts, e.g. 3,5,10")
    if len(counts) < 2:
        raise FilterlensError(f"the label-count list '{text}' has one distinct count; the fit of error against the "
                              "number of labels needs two or more, e.g. 3,5,10")
    return sorted(counts)


def draw_subsets(total: int, counts: list[int], subsets: int, seed: int) -> list[SweepTask]:
    """R distinct seeded subsets per count (fewer when fewer exist); the full label set only once."""
    if subsets < 1:
        raise FilterlensError(f"subsets = {subsets} must be >= 1")
    tasks = []
    for k in counts:
        if k == total:
            tasks.append(SweepTask(k, 1, tuple(range(total))))
            continue
        rng = np.random.default_rng([seed, k])
        want = min(subsets, math.comb(total, k))
        seen: list[tuple[int, ...]] = []
        while len(seen) < want:
            pick = tuple(sorted(int(i) for i in rng.choice(total, size=k, replace=False)))
            if pick not in seen:
                seen.append(pick)
        tasks += [SweepTask(k, r + 1, s) for r, s in enumerate(seen)]
    return tasks


def _run_task(args) -> dict:
    """Train one subset and analyse its layers; write ``task.json`` last (its presence means done)."""
    cfg_dict, folder, task, sweep_layers, progress, threads = args
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .analysis import analyze
    from .train import load_trained, train

    run_dir = Path(folder)
    done = run_dir / TASK
    cfg = Config.from_dict(cfg_dict)
    if done.exists():
        try:
            old = read_json(done)
            if old.get("hash") == cfg.stage_hash("sfp"):
                return old
        except ValueError:
            pass  # damaged: redo
    t0 = time.perf_counter()
    with quiet():  # the sweep says one line per model; its models' own lines stay unsaid
        summary = train(cfg, run_dir, resume=(run_dir / CHECKPOINT).exists(), progress=progress)
        model, cfg, data, _ = load_trained(run_dir)
        result = analyze(model, data, config=cfg.replace(layers=sweep_layers), progress=progress)
    result.save(run_dir)
    last = result.layers[-1]
    row = {"num_labels": task.num_labels, "subset": task.subset, "labels": " ".join(map(str, task.labels)),
           "label_names": " | ".join(data.label_names), "error": 1.0 - summary["test_accuracy"],
           "last_layer_accuracy": last["accuracy"], "layer": last["layer"], "layers": result.layers.to_dicts(),
           "seconds": time.perf_counter() - t0, "hash": cfg.stage_hash("sfp"),
           "data_key": data.describe().get("data_key"),  # rendered data (glyphs): the fonts and settings
           "converged": summary.get("convergence", {}).get("converged")}  # train.convergence's rule
    for k in LAST_LAYER_KEYS:
        row[k] = last.get(k)
    write_json(done, row)
    return row


@keeps_global_state
def run_sweep(cfg: Config, sweep_dir, counts: str, subsets: int = 3, sweep_layers: str = "-1", jobs: int = 1,
              shard: tuple[int, int] = (0, 1), merge_only: bool = False) -> dict | None:
    """Run (this shard of) the label-count study into ``sweep_dir``; merge when every task is done."""
    from .checks import of_type
    from .data import load_data

    of_type(cfg, Config, "cfg", "a filterlens.config.Config")
    cfg.validate()
    of_type(jobs, int, "jobs", "an int >= 1")
    if jobs < 1:
        raise FilterlensError(f"jobs = {jobs} must be >= 1")
    if not (isinstance(shard, tuple) and len(shard) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in shard)):
        raise FilterlensError(f"shard {shard!r} is invalid; give (i, n), two ints with 0 <= i < n")
    parse_counts(counts)  # before the data is read: at least two distinct counts
    sweep_dir = check_sweep_folder(sweep_dir, merge_only)
    full = load_data(cfg.dataset, cfg.data_dir, "all", cfg.download, cfg.image_size)
    total = full.num_labels
    if cfg.labels not in ("all", "", None):
        raise FilterlensError(f"labels = '{cfg.labels}' cannot be combined with a sweep; the sweep draws the "
                              "label subsets itself (--num-labels, --subsets)")
    _check_layers(cfg, full, sweep_layers)
    tasks = draw_subsets(total, parse_counts(counts, total), subsets, cfg.seed)
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise FilterlensError(f"shard {i}/{n} is invalid; use i/n with 0 <= i < n")
    mine = tasks[i::n]
    plan = {"counts": counts, "subsets": subsets, "layers": sweep_layers, "seed": cfg.seed, "total_labels": total,
            "config": cfg.to_dict(), "tasks": [t.folder for t in tasks]}
    plan_path = sweep_dir / SWEEP_PLAN
    if plan_path.exists():
        old = read_json(plan_path)
        if old.get("tasks") != plan["tasks"] or old.get("config", {}).get("model") != cfg.model:
            raise FilterlensError(f"sweep directory '{sweep_dir}' holds another sweep (tasks or model differ); "
                                  "choose another --run-dir")
    make_dirs(sweep_dir)
    mark(sweep_dir, "sweep")
    write_json(plan_path, plan)
    if not merge_only:
        _run_tasks(cfg, sweep_dir, mine, len(tasks), sweep_layers, jobs)
    missing = [t.folder for t in tasks if not (sweep_dir / t.folder / TASK).exists()]
    if missing:
        say(f"sweep: {len(missing)} model(s) not done yet ({', '.join(missing[:4])}...); run the other shards, "
             "then filterlens sweep --merge")
        return None
    return merge(sweep_dir)


def _run_tasks(cfg: Config, sweep_dir: Path, mine: list, models: int, sweep_layers: str, jobs: int) -> None:
    """Train and analyse this shard's models not done yet, in ``jobs`` processes (each with its share of the
    cores unless ``threads`` is set), saying each model's error as it finishes."""
    work = []
    for t in mine:
        tcfg = cfg.replace(labels=",".join(map(str, t.labels)), progress=cfg.progress and jobs == 1)
        work.append((tcfg.to_dict(), str(sweep_dir / t.folder), t, sweep_layers, cfg.progress and jobs == 1,
                     cfg.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0)))
    todo = [w for w in work if not (Path(w[1]) / TASK).exists()]
    say(f"sweep: {models} models in all, {len(mine)} in this shard, {len(mine) - len(todo)} already done")
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(jobs, len(todo)), initializer=_worker_signals) as pool:
            for row in pool.imap_unordered(_run_task, work):
                say(f"  L={row['num_labels']:>4} subset {row['subset']}: error {row['error']:.4f}")
    else:
        for w in work:
            row = _run_task(w)
            say(f"  L={row['num_labels']:>4} subset {row['subset']}: error {row['error']:.4f}"
                 f"  ({row['seconds']:.1f}s)")


def _worker_signals() -> None:
    """In a worker of ``sweep --jobs N``: Ctrl-C is the parent's to handle (it stops the pool), and the worker ends
    with its parent, however the parent ends (SIGTERM from the parent's pool, or Linux's parent-death signal)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            if os.getppid() == 1:  # the parent already died before the signal was set
                os._exit(1)
        except (OSError, AttributeError):
            pass


def _check_layers(cfg: ProbeSettings, data, sweep_layers: str) -> None:
    """The layer selection of every model of the sweep, checked on the architecture before anything is trained."""
    from .models import ModelSpec, build_model, resolve_layers

    model = build_model(ModelSpec(cfg.model, data.num_labels, data.in_channels, data.image_size, cfg.width_mult,
                                  cfg.vgg_cfg))
    resolve_layers(model, data.input_shape, sweep_layers, cfg.tokens)


def merge(sweep_dir) -> dict:
    """Combine every finished task of a sweep into sweep.csv, sweep.json, the fits and the plots."""
    sweep_dir = Path(sweep_dir)
    plan_path = sweep_dir / SWEEP_PLAN
    if not plan_path.exists():
        raise FilterlensError(f"'{sweep_dir}' is not a sweep directory (no sweep_plan.json)")
    plan = read_json(plan_path)
    rows, missing = [], []
    for folder in plan["tasks"]:
        p = sweep_dir / folder / TASK
        if p.exists():
            rows.append(read_json(p))
        else:
            missing.append(folder)
    if missing:
        raise FilterlensError(f"sweep '{sweep_dir}' lacks {len(missing)} finished model(s): {', '.join(missing[:5])}")
    keys: dict[str, str] = {}
    for folder, r in zip(plan["tasks"], rows):
        if r.get("data_key") is not None:
            keys.setdefault(r["data_key"], folder)
    if len(keys) > 1:
        (k1, f1), (k2, f2) = list(keys.items())[:2]
        raise FilterlensError(f"sweep '{sweep_dir}' mixes models trained on different renderings of the data: {f1} "
                              f"has data key {k1}, {f2} has {k2} (other fonts or render settings); run every shard "
                              "with the same fonts")
    rows.sort(key=lambda r: (r["num_labels"], r["subset"]))
    per_count = []
    for k in sorted({r["num_labels"] for r in rows}):
        errs = [r["error"] for r in rows if r["num_labels"] == k]
        sel = [r for r in rows if r["num_labels"] == k]
        per_count.append({"num_labels": k, "subsets": len(errs), "max_error": max(errs),
                          "mean_error": float(np.mean(errs)), "min_error": min(errs),
                          **{f"mean_{key}": _nanmean([r.get(key) for r in sel])
                             for key in ("last_layer_accuracy", *LAST_LAYER_KEYS)}})
    xs = [c["num_labels"] for c in per_count]
    fits = {"max_error": fit_line(xs, [c["max_error"] for c in per_count]),
            "mean_error": fit_line(xs, [c["mean_error"] for c in per_count])}
    write_csv(sweep_dir / SWEEP_TABLE, rows, SWEEP_COLUMNS)
    write_csv(sweep_dir / SWEEP_COUNTS, per_count)
    out = {"version": 1, "plan": plan, "data_key": next(iter(keys), None), "per_count": per_count, "fits": fits,
           "rows": [{k: v for k, v in r.items() if k != "layers"} for r in rows],
           "seconds": float(sum(r.get("seconds", 0.0) for r in rows)),
           "claims": claims.sweep_claims(per_count, rows)}  # claims 4-5, one point per trained model
    write_json(sweep_dir / SWEEP_SUMMARY, out)
    from .report import plot_sweep

    plot_sweep(per_count, fits, rows, sweep_dir)
    for name in ("max_error", "mean_error"):
        f = fits[name]
        say(f"fit {name}: error = {f['a']:.4f} + {f['b']:.5f} * L   (R^2 {f['r2']:.3f}, 95% CI of b "
             f"[{f['b_low']:.5f}, {f['b_high']:.5f}])")
    for line in claims.format_table(out["claims"]):
        say(line)
    return out


def _nanmean(values) -> float:
    vals = []
    for v in values:
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            vals.append(v)
    return float(np.mean(vals)) if vals else math.nan


def print_sweep(out: dict) -> None:
    """Print the sweep's table: per label count, the errors (max, mean, min), the last layer's accuracy,
    clusters per filter, cluster size and SNR."""
    say(f"{'L':>5}{'subsets':>9}{'max err':>9}{'mean err':>10}{'min err':>9}{'last acc':>10}{'clus/f':>8}"
         f"{'size':>7}{'SNR':>7}")
    for c in out["per_count"]:
        say(f"{c['num_labels']:>5}{c['subsets']:>9}{c['max_error']:>9.4f}{c['mean_error']:>10.4f}"
             f"{c['min_error']:>9.4f}{c['mean_last_layer_accuracy']:>10.4f}{c['mean_clusters_per_filter']:>8.2f}"
             f"{c['mean_cluster_size']:>7.2f}{c['mean_snr']:>7.2f}")
