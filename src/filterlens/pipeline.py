"""``filterlens run``: the whole pipeline from one config, every stage keyed by its settings.

Stages (``PIPELINE``): train, probes, sfp, afcc, sweep, report. A stage's outputs are keyed
by the hash of the settings it depends on (:meth:`filterlens.config.Config.stage_hash`) and
by a sha256 of every output (``stages.json``): a stage whose hash and outputs are there,
unaltered, is skipped; everything after a recomputed stage is recomputed.
"""
from __future__ import annotations

import time

from . import distributed as dist_
from . import memory
from .config import STAGE_ORDER, Config
from .errors import Diverged, FilterlensError, closest
from .names import (
    CHECKPOINT,
    CONFIG,
    LABEL_MEANS,
    MANIFEST,
    POOLED_CSV,
    POOLED_JSON,
    PROBES_JSON,
    REPORT,
    SEED_RUN,
    STAGE_FILES,
    SWEEP_CSV,
    SWEEP_JSON,
)
from .output import say
from .rundir import RunDir

PIPELINE = STAGE_ORDER


def parse_seeds(text) -> list[int]:
    """``"0,1,2"`` (or a list of ints) -> [0, 1, 2]: distinct integers >= 0, at least one."""
    from .checks import parse_int

    items = list(text) if isinstance(text, (list, tuple)) else [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise FilterlensError(f"seeds '{text}' is empty; give one or more seeds, e.g. 0,1,2")
    seeds = [parse_int(t, f"seed '{t}' in '{text}'", low=0) for t in items]
    if len(set(seeds)) != len(seeds):
        raise FilterlensError(f"seeds '{text}' repeat a seed; give each seed once, e.g. 0,1,2")
    return seeds


def run_seeds(cfg: Config, run_dir, seeds, from_stage: str | None = None, overwrite: bool = False) -> dict:
    """``cfg`` once per seed, each a whole run (:func:`run_pipeline`) in ``run_dir/seed-N``, then the papers'
    claims pooled over the seeds (:func:`filterlens.claims.pooled_claims`), written to ``pooled_claims.json`` and
    ``.csv`` in ``run_dir`` and printed. Every seed's run resumes as any run does: run the same command again after
    an interruption and the finished seeds are skipped (nothing read or written). ``{seed}`` in ``checkpoint``
    names each seed's own weights. Returns the pooled result."""
    from .checks import of_type
    from .folders import make_dirs, mark, read_mark
    from .rundir import check_seeds_folder

    of_type(cfg, Config, "cfg", "a filterlens.config.Config")
    seeds = parse_seeds(seeds)
    cfg.validate()
    root = check_seeds_folder(run_dir)
    recipe = cfg.recipe_hash()
    found = read_mark(root)
    if found is not None and found.get("recipe") not in (None, recipe) and not overwrite:
        raise FilterlensError(f"'{root}' holds the seeds of another recipe (settings other than the seed differ); "
                              "use --overwrite to replace its runs or choose another --run-dir")
    runs = [root / SEED_RUN.format(seed=s) for s in seeds]
    for s, path in zip(seeds, runs):  # every seed's folder checked before any work
        RunDir(RunDir.validate(path)).check(cfg.replace(seed=s), overwrite=overwrite, stage="train")
    make_dirs(root)
    mark(root, "seeds", recipe=recipe)
    for s, path in zip(seeds, runs):
        say(f"==== seed {s} ({path})")
        run_pipeline(cfg.replace(seed=s), path, from_stage=from_stage, overwrite=overwrite)
    return pool_seed_runs(root, seeds, runs)


def pool_seed_runs(root, seeds: list[int], runs: list) -> dict:
    """The claims pooled over finished runs of one recipe (their results.json read through the checked reader),
    written into the seeds folder ``root`` and printed."""
    from . import claims
    from .files import write_csv, write_json
    from .results import RunFiles

    results = [RunFiles(r).results for r in runs]
    rows = claims.pooled_claims([{"claims": r.get("claims") or [], "afcc": r.get("afcc")} for r in results])
    out = {"recipe": results[0].get("config", {}) and Config.from_dict(results[0]["config"], stored=True).recipe_hash(),
           "seeds": seeds, "runs": [str(r) for r in runs], "pooled": rows,
           "per_seed": {str(s): r.get("claims") or [] for s, r in zip(seeds, results)}}
    write_json(root / POOLED_JSON, out)
    flat = [{**{k: v for k, v in row.items() if k not in ("per_seed", "per_seed_verdicts")},
             **{f"seed_{s}": v for s, v in zip(seeds, row["per_seed"])},
             **{f"seed_{s}_verdict": v for s, v in zip(seeds, row["per_seed_verdicts"])}} for row in rows]
    write_csv(root / POOLED_CSV, flat)
    for line in claims.format_pooled(rows, seeds):
        say(line)
    say(f"pooled claims of {len(seeds)} seeds: {root / POOLED_JSON}")
    return out


def run_pipeline(cfg: Config, run_dir, from_stage: str | None = None, overwrite: bool = False) -> dict:
    """Train (or load), analyse every layer, AFCC, the optional sweep, and the report, into ``run_dir``.

    Each stage's outputs are keyed by the hash of the settings it depends on
    (:meth:`Config.stage_hash`) and by their sha256 (``stages.json``): a stage whose hash matches
    and whose files are there, unchanged, is skipped (nothing read, nothing written); a stage
    with a changed or missing file is run again, and so is everything after a stage that runs.
    ``from_stage`` forces that stage and the later ones. Returns the per-stage records.
    """
    from .checks import of_type
    from .folders import remove_empty
    from .rundir import remove_owned

    of_type(cfg, Config, "cfg", "a filterlens.config.Config")
    if from_stage is not None and (not isinstance(from_stage, str) or from_stage not in PIPELINE):
        raise FilterlensError(f"unknown stage '{from_stage}'{closest(from_stage, PIPELINE)}; valid: "
                              f"{', '.join(PIPELINE)}")
    cfg.validate()
    RunDir.validate(run_dir)
    rd = RunDir(run_dir)
    wanted = [s for s in PIPELINE if (s != "afcc" or cfg.afcc) and (s != "sweep" or cfg.num_labels)]
    try:
        rd.check(cfg, overwrite=overwrite, stage="train")
    except FilterlensError:  # a bad value is reported as itself, not as "another config"
        if rd.exists(CONFIG) and not rd.manifest_damaged() and not rd.changed([CONFIG]):
            _check_before_work(cfg, wanted)
        raise
    hashes = hashes_of(cfg)
    made = not rd.path.is_dir()
    if made:  # a new run: everything is checked before the directory is made
        _check_before_work(cfg, wanted)
    timeline = dict.fromkeys(wanted)
    try:
        _stages(rd, cfg, wanted, hashes, from_stage, overwrite, timeline)
    except Diverged:
        if made:  # the training diverged in a new run directory: nothing of it stays
            remove_owned(rd.path)
            remove_empty([rd.path])
        raise
    if not timeline:
        return rd.stages()
    total = sum(v for v in timeline.values() if v)
    parts = ", ".join(f"{k} {v:.1f}s" if v is not None else f"{k} cached" for k, v in timeline.items())
    say(f"done in {total:.1f}s ({parts}); report: {rd.file(REPORT)}")
    return rd.stages()


def _stages(rd: RunDir, cfg: Config, wanted: list[str], hashes: dict, from_stage, overwrite: bool,
            timeline: dict) -> None:
    """The stages of :func:`run_pipeline` that are not done, under the run directory's lock; ``timeline`` gets each
    stage's seconds (it is emptied when nothing was to do)."""
    with rd.lock("filterlens run"):
        plan, damaged = _plan(rd, wanted, hashes, from_stage, cfg)
        if not plan:
            say(f"done in 0.0s ({', '.join(f'{k} cached' for k in wanted)}; nothing read or written); report: "
                 f"{rd.file(REPORT)}")
            timeline.clear()
            return
        _check_before_work(cfg, plan)
        for name in damaged:  # never read, never kept: their stage writes them again
            rd.remove(name)
        for stage in plan:
            t0 = time.perf_counter()
            if stage != "report":
                say(f"== stage {stage}")
            from_start = memory.reset_peak()
            _RUN[stage](rd, cfg, overwrite or from_stage == "train")
            timeline[stage] = time.perf_counter() - t0
            if dist_.is_main():
                rd.note_peak_memory(stage, memory.peak_bytes(), "stage" if from_start else "process")
            if stage == "sfp":
                rd.claim(cfg, stage="train")  # stages 2-3 accepted these settings: config.json records them


def hashes_of(cfg: Config) -> dict[str, str]:
    """The settings hash of every stage `filterlens run` would run with ``cfg`` (the report: of the others)."""
    wanted = [s for s in PIPELINE if (s != "afcc" or cfg.afcc) and (s != "sweep" or cfg.num_labels)]
    hashes = {s: cfg.stage_hash(s) for s in wanted if s != "report"}
    hashes["report"] = "|".join(hashes[s] for s in wanted if s != "report")
    return hashes


def _plan(rd: RunDir, wanted: list[str], hashes: dict, from_stage: str | None, cfg: Config
          ) -> tuple[list[str], list[str]]:
    """The stages to run (from the first one that is forced, has other settings, or has a changed or missing
    file, to the end) and the changed files, which the caller removes once everything is checked."""
    stages = rd.stages(say_damage=True)
    if rd.manifest_damaged():  # nothing it vouched for is trusted: it goes, and every stage runs
        return wanted, [MANIFEST]
    for i, stage in enumerate(wanted):
        rec = stages.get(stage)
        if from_stage == stage or not rec or rec["hash"] != hashes[stage]:
            return wanted[i:], []
        bad = rd.changed(sorted(set(rec["sha256"]) | set(STAGE_FILES[stage])), stages)
        if bad:
            shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
            say(f"note: {shown} changed or missing since stage {stage} wrote it (checksum); it is not trusted: "
                 f"stage {stage} and the later ones run again")
            return wanted[i:], [b for b in bad if rd.exists(b)]
        if stage == "probes" and cfg.bootstrap > 0 and not _has_bootstrap_inputs(rd):
            return wanted[i:], []
    return [], []


def _check_before_work(cfg: Config, plan: list[str]) -> None:
    """What can only be checked against the model and data (layer selections, heatmaps) is checked before any
    stage runs, on the architecture with its initial weights."""
    if not set(plan) & {"train", "probes", "sfp", "afcc", "sweep"}:
        return
    from .analysis import check_heatmaps
    from .models import list_layers, resolve_layers
    from .train import load_data_for, make_model

    data = load_data_for(cfg)
    model, _ = make_model(cfg.replace(checkpoint=None, weights=None), data)
    size = data.input_shape
    if "train" in plan:
        from .models.contract import check_model
        from .train import check_schedule

        check_schedule(cfg, -(-len(data.train) // max(cfg.batch_size, 1)))
        check_model(model, size, data.num_labels, f"model '{cfg.model}'", layers=None)
    analysed = resolve_layers(model, size, cfg.layers, cfg.tokens)
    layers = list_layers(model, size, "blocks", [l.name for l in analysed], cfg.tokens)
    check_heatmaps(cfg.heatmaps, analysed)
    if cfg.afcc:
        from .afcc.apply import check_range, choose_layers

        check_range(model, choose_layers(layers, cfg.afcc_layers, {l.name for l in analysed}), data.num_labels, size,
                    cfg)
    if "sweep" in plan:
        from .data import dataset_spec
        from .sweep import parse_counts

        parse_counts(cfg.num_labels, dataset_spec(cfg.dataset).num_labels)


def _train(rd: RunDir, cfg: Config, fresh: bool) -> None:
    from .train import checkpoint_damage, train

    damage = checkpoint_damage(rd) if rd.exists(CHECKPOINT) and not fresh else None
    if damage:  # nothing to resume from: the training starts again (and writes a new checkpoint)
        say(f"note: {rd.file(CHECKPOINT)} is damaged ({damage}); it cannot be resumed: training starts again")
        fresh = True
    train(cfg, rd.path, resume=rd.exists(CHECKPOINT) and not fresh, overwrite=fresh)


def _probes(rd: RunDir, cfg: Config, fresh: bool) -> None:
    from . import analysis as an
    from .train import load_trained

    model, _, data, _ = load_trained(rd.path)
    pr = an.probe_stage(model, data, cfg, cache_dir=cfg.cache_dir or rd.file("cache"), keep_fields=cfg.bootstrap > 0,
                        heatmaps=cfg.heatmaps)
    files = pr.save(rd.path, cfg.stage_hash("probes"))
    rd.record("probes", cfg.stage_hash("probes"), [str(p.relative_to(rd.path)) for p in files],
              pr.timings.get("stage_s"))


def _sfp(rd: RunDir, cfg: Config, fresh: bool) -> None:
    from . import analysis as an
    from .probe_results import ProbeResult
    from .train import load_data_for

    pr = ProbeResult.load(rd.path)
    result = an.sfp_stage(pr, pr.data, cfg)
    result.data = load_data_for(cfg)  # the test images of the report's thumbnails
    an.write_sfp_result(rd, cfg, result)
    an.print_table(result)  # the layer table and the claims it can test


def _afcc(rd: RunDir, cfg: Config, fresh: bool) -> None:
    from . import afcc
    from .claims import format_table

    overrides = {f: getattr(cfg, f) for f in ("afcc_layers", "retrain_epochs", "retrain_lr", "retrain_momentum",
                                              "retrain_weight_decay", "retrain_batch_size", "retrain_augment",
                                              "random_draws", "afcc_thresholds", "latency_batch", "latency_repeats")}
    out = afcc.run_afcc(rd.path, overrides, progress=cfg.progress, settings_hash=cfg.stage_hash("afcc"))
    for line in format_table(out.get("claims", [])):
        say(line)


def _sweep(rd: RunDir, cfg: Config, fresh: bool) -> None:
    from .sweep import run_sweep

    t0 = time.perf_counter()
    run_sweep(cfg.replace(labels="all"), rd.file("sweep"), cfg.num_labels, cfg.subsets, cfg.sweep_layers)
    rd.record("sweep", cfg.stage_hash("sweep"), (SWEEP_JSON, SWEEP_CSV), time.perf_counter() - t0)


def _report(rd: RunDir, cfg: Config, fresh: bool) -> None:
    from .report import build_report

    build_report(rd.path, settings_hash=hashes_of(cfg)["report"])


_RUN = {"train": _train, "probes": _probes, "sfp": _sfp, "afcc": _afcc, "sweep": _sweep, "report": _report}


def _has_bootstrap_inputs(rd: RunDir) -> bool:
    """Whether stage 2 kept what the bootstrap needs, every layer's per-sample fields or its test features
    (probes.json says so: ``bootstrap_inputs_kept``, or ``fields_kept`` from a filterlens that kept only fields;
    without torch)."""
    if not rd.exists(LABEL_MEANS) or not rd.exists(PROBES_JSON):
        return False
    try:
        meta = rd.read_json(PROBES_JSON)
    except FilterlensError:
        return False
    for key in ("bootstrap_inputs_kept", "fields_kept"):
        if isinstance(meta, dict) and key in meta:
            return bool(meta[key])
    import torch  # a run of an earlier filterlens: look inside

    return "fields" in torch.load(rd.file(LABEL_MEANS), map_location="cpu", weights_only=True)
