"""The run directory: its config, its files, and progress display.

A run directory holds ``config.json`` (the resolved settings) and every file a
stage writes. A directory that already holds a run with different settings is
refused unless ``overwrite`` is given, so nothing is silently mixed or lost.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from .config import Config
from .errors import FilterlensError
from .files import read_json, write_json

# files a run may write; --overwrite removes only these
RUN_FILES = ("config.json", "checkpoint.pt", "model.pt", "train_log.csv", "train.json", "results.json",
             "layers.csv", "filters.csv", "probes.pt", "label_means.pt", "probes.json", "accuracy.png", "clusters.png",
             "thresholds.csv", "bootstrap.csv", "heatmaps", "cache", "stages.json",
             "report.html", "afcc.csv", "afcc.png", "afcc_model.pt", "afcc_pruning.csv", "afcc_thresholds.csv",
             "afcc_pruned.pt", "sweep")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    def read_json(self, name: str):
        try:
            return read_json(self.path / name)
        except ValueError:
            raise FilterlensError(f"'{self.path / name}' is not valid JSON (damaged?); remove it or use --overwrite") from None

    def remove(self, name: str) -> None:
        from .distributed import check_write

        p = self.path / name
        check_write(p)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    def check(self, cfg: Config, overwrite: bool = False, stage: str = "train") -> bool:
        """Refuse (without writing anything) a directory holding a run with other ``stage`` settings.

        Returns True when the directory holds a run with the same ``stage`` settings.
        """
        if self.path.exists() and not self.path.is_dir():
            raise FilterlensError(f"run directory '{self.path}' exists and is not a directory")
        if not self.exists("config.json"):
            return False
        try:
            old = Config.from_dict(self.read_json("config.json"))
        except FilterlensError:
            old = None
        if old is not None and old.stage_hash(stage) == cfg.stage_hash(stage):
            return True
        if not overwrite:
            diff = _differences(old, cfg, stage) if old else ["unreadable config.json"]
            raise FilterlensError(
                f"run directory '{self.path}' holds a run with another config ({'; '.join(diff[:3])}); "
                "use --overwrite to replace it or choose another --run-dir")
        return False

    def claim(self, cfg: Config, overwrite: bool = False, stage: str = "train") -> None:
        """Make ``path`` this run's directory (after :meth:`check`); with ``overwrite`` remove the old run's files.

        Call it only once the new settings have been validated, so a refused command damages nothing.
        """
        from .distributed import check_write

        check_write(self.path)
        same = self.check(cfg, overwrite, stage)
        if overwrite and not same:
            for name in RUN_FILES:
                self.remove(name)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.exists("config.json"):
            try:
                if self.read_json("config.json") == json.loads(json.dumps(cfg.to_dict())):
                    return  # unchanged: leave the file alone
            except FilterlensError:
                pass
        write_json(self.file("config.json"), cfg.to_dict())


def _differences(old: Config, new: Config, stage: str) -> list[str]:
    from .config import STAGES, fields

    upto = STAGES[: STAGES.index(stage) + 1]
    out = []
    for f in fields(Config):
        if f.metadata["stage"] in upto and getattr(old, f.name) != getattr(new, f.name):
            out.append(f"{f.name}: {getattr(old, f.name)!r} there, {getattr(new, f.name)!r} now")
    return out or ["settings differ"]


def progress_bar(iterable, show: bool = True, **kw):
    """A tqdm bar when ``show`` and stderr is a terminal; the plain iterable otherwise."""
    if not show or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kw)


# ----------------------------------------------------------------------------- the pipeline

PIPELINE = ("train", "probes", "sfp", "afcc", "sweep", "report")


def _checksum(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stage_done(rd: RunDir, stages: dict, name: str, h: str, outputs: tuple[str, ...], echo=print) -> bool:
    """True when the stage ran with these settings and its outputs are there, unaltered (sha256)."""
    rec = stages.get(name)
    if not rec or rec.get("hash") != h or not all(rd.exists(o) for o in outputs):
        return False
    sums = rec.get("sha256", {})
    for o in outputs:
        if sums.get(o) != _checksum(rd.file(o)):
            echo(f"note: {o} does not match its checksum (truncated or altered); recomputing stage {name}")
            return False
    return True


def run_pipeline(cfg: Config, run_dir, from_stage: str | None = None, overwrite: bool = False,
                 echo=print) -> dict:
    """Train (or load), analyse every layer, AFCC, the optional sweep, and the report, into ``run_dir``.

    Each stage's outputs are keyed by the hash of the settings it depends on
    (:meth:`Config.stage_hash`): a stage whose hash and outputs are already there is
    skipped, and everything after a recomputed stage is recomputed. ``from_stage``
    forces that stage and the later ones. Returns the per-stage record (``stages.json``).
    """
    import time

    if from_stage is not None and from_stage not in PIPELINE:
        from .errors import closest

        raise FilterlensError(f"unknown stage '{from_stage}'{closest(from_stage, PIPELINE)}; valid: "
                              f"{', '.join(PIPELINE)}")
    cfg.validate()
    rd = RunDir(run_dir)
    rd.check(cfg, overwrite=overwrite, stage="train")
    stages = rd.read_json("stages.json") if rd.exists("stages.json") else {}
    forced = False
    timeline = {}

    outputs_of = {}

    def should_run(name, h, outputs):
        nonlocal forced
        outputs_of[name] = outputs
        if from_stage == name:
            forced = True
        if forced or not _stage_done(rd, stages, name, h, outputs, echo):
            forced = True  # every later stage follows
            return True
        return False

    def record(name, h, t0):
        stages[name] = {"hash": h, "seconds": time.perf_counter() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "sha256": {o: _checksum(rd.file(o)) for o in outputs_of.get(name, ())}}
        write_json(rd.file("stages.json"), stages)
        timeline[name] = stages[name]["seconds"]

    # 1. train
    h = cfg.stage_hash("train")
    if should_run("train", h, ("model.pt", "train.json")):
        t0 = time.perf_counter()
        echo("== stage train")
        from .train import train

        train(cfg, rd.path, resume=rd.exists("checkpoint.pt"), overwrite=overwrite or from_stage == "train",
              echo=echo)
        record("train", h, t0)
    else:
        timeline["train"] = None

    # 2. probes
    model = data = None
    h = cfg.stage_hash("probes")
    needs_fields = cfg.bootstrap > 0 and not _has_fields(rd)
    if should_run("probes", h, ("probes.pt", "label_means.pt", "probes.json")) or needs_fields:
        forced = True
        t0 = time.perf_counter()
        echo("== stage probes")
        from . import analyze as an
        from .train import load_trained

        model, _, data, _ = load_trained(rd.path)
        pr = an.probe_stage(model, data, cfg, echo=echo)
        an.save_probe_result(pr, rd.path, data.describe(), h)
        record("probes", h, t0)
    else:
        timeline["probes"] = None

    # 3. single-filter performance
    h = cfg.stage_hash("sfp")
    if should_run("sfp", h, ("layers.csv", "filters.csv", "results.json")):
        t0 = time.perf_counter()
        echo("== stage sfp")
        from . import analyze as an

        pr, data_meta = an.load_probe_result(rd.path)
        result = an.sfp_stage(pr, data_meta, cfg)
        result.meta["train"] = {k: v for k, v in rd.read_json("train.json").items() if k != "history"}
        result.probes = None  # stage 2's files are already written
        result.save(rd.path)
        record("sfp", h, t0)
    else:
        timeline["sfp"] = None
    rd.claim(cfg, stage="train")  # stages 2-3 accepted these settings: config.json now records them

    # 4. AFCC
    h = cfg.stage_hash("afcc")
    if cfg.afcc:
        if should_run("afcc", h, ("afcc.csv",)):
            t0 = time.perf_counter()
            echo("== stage afcc")
            from . import afcc

            afcc.run_afcc(rd.path, layers=cfg.afcc_layers, retrain_epochs=cfg.retrain_epochs,
                          retrain_lr=cfg.retrain_lr, threshold=cfg.threshold, seed=cfg.seed,
                          progress=cfg.progress, echo=echo, thresholds=cfg.afcc_thresholds,
                          random_draws=cfg.random_draws)
            record("afcc", h, t0)
        else:
            timeline["afcc"] = None

    # 5. the label-count sweep (optional)
    h = cfg.stage_hash("sweep")
    if cfg.num_labels:
        if should_run("sweep", h, ("sweep/sweep.json",)):
            t0 = time.perf_counter()
            echo("== stage sweep")
            from .sweep import run_sweep

            run_sweep(cfg.replace(labels="all"), rd.file("sweep"), cfg.num_labels, cfg.subsets, cfg.sweep_layers,
                      echo=echo)
            record("sweep", h, t0)
        else:
            timeline["sweep"] = None

    # 6. the report
    h = "|".join(stages.get(s, {}).get("hash", "") for s in PIPELINE[:-1])
    if should_run("report", h, ("report.html",)):
        t0 = time.perf_counter()
        from .report import build_report

        build_report(rd.path)
        record("report", h, t0)
    else:
        timeline["report"] = None

    total = sum(v for v in timeline.values() if v)
    parts = ", ".join(f"{k} {v:.1f}s" if v is not None else f"{k} cached" for k, v in timeline.items())
    echo(f"done in {total:.1f}s ({parts}); report: {rd.file('report.html')}")
    return stages


def _has_fields(rd: RunDir) -> bool:
    if not rd.exists("label_means.pt"):
        return False
    import torch

    return "fields" in torch.load(rd.file("label_means.pt"), map_location="cpu", weights_only=True)
