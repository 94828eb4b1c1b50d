"""``filterlens run``: the whole pipeline from one config, every stage keyed by its settings.

Stages (``PIPELINE``): train, probes, sfp, afcc, sweep, report. A stage's outputs are keyed
by the hash of the settings it depends on (:meth:`filterlens.config.Config.stage_hash`) and
by a sha256 of every output (``stages.json``): a stage whose hash and outputs are there,
unaltered, is skipped; everything after a recomputed stage is recomputed.
"""
from __future__ import annotations

from pathlib import Path

from .config import Config
from .errors import FilterlensError
from .files import write_json
from .rundir import RunDir


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
