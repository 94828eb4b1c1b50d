"""``report.html``: one self-contained page (images embedded) built from a run's saved files; nothing recomputed.

This module reads the run and computes the values; the page is the template ``templates/report.html.j2``
(:mod:`.pages`)."""
from __future__ import annotations

from pathlib import Path

from ..claims import snr_sentence
from ..config import STAGE_ORDER
from ..errors import FilterlensError
from ..files import read_json, write_text
from ..names import (
    ACCURACY_PNG,
    AFCC,
    AFCC_PNG,
    AFCC_PRUNING,
    AFCC_THRESHOLDS,
    BOOTSTRAP,
    CLUSTERS_PNG,
    FILTERS,
    LABEL_MEANS,
    LAYERS,
    PROBES,
    REPORT,
    REPORT_READS,
    SWEEP,
    SWEEP_CLUSTERS_PNG,
    SWEEP_ERROR_PNG,
    SWEEP_JSON,
    SWEEP_SUMMARY,
    THRESHOLDS,
    THUMBNAILS,
)
from ..output import say
from ..rundir import RunDir
from .explorer import explorer_data, explorer_view
from .pages import cell, claims, image, render, table
from .plots import unit_word


def _read_csv(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


READS = REPORT_READS


def explorer_left_out(d: Path) -> str | None:
    """Why the report's unit explorer cannot be built from the run ``d`` (a file it reads is missing), or None."""
    missing = [n for n in (FILTERS, PROBES, LABEL_MEANS) if not (Path(d) / n).exists()]
    if not missing:
        return None
    return (f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from the run directory; "
            "run filterlens analyze again to have it")


def build_report(run_dir, settings_hash: str | None = None) -> Path:
    """Write ``report.html``: one self-contained file (images embedded) from the run's saved results.

    Nothing is recomputed; ``filterlens report RUN_DIR`` calls this. A file it reads that changed
    since its stage wrote it is refused (one line). ``settings_hash``: the report's key in
    ``stages.json`` (default: the hashes of the stages it reports on). A part left out of the report (the
    unit explorer without filters.csv) is said.
    """
    rd = RunDir(RunDir.validate(run_dir))
    if not rd.path.is_dir():
        raise FilterlensError(f"run directory '{rd.path}' does not exist; run filterlens analyze or filterlens run "
                              "first")
    import time

    with rd.lock("filterlens report"):
        t0 = time.perf_counter()
        res = rd.read_results()
        rd.verify(*READS)
        stages = rd.stages()
        path = write_text(rd.file(REPORT), _page(rd.path, res, stages))
        if settings_hash is None:
            settings_hash = "|".join(stages[s]["hash"] for s in STAGE_ORDER if s in stages and s != "report")
        rd.record("report", settings_hash, (REPORT,), time.perf_counter() - t0)
    left_out = explorer_left_out(rd.path)
    if left_out:
        say(f"note: the report's unit explorer is left out: {left_out}")
    return path


CLAIM_COLUMNS = ["claim", "metric", "statistic", "value", "low", "high", "n", "verdict", "detail"]


def _claims(d: Path, res: dict) -> dict | None:
    """The papers' claims this run (and its sweep) can test, with one sentence on the SNR candidates; None where
    the run was analysed without the claims table."""
    rows = list(res.get("claims") or [])
    if (d / SWEEP_JSON).exists():
        rows += read_json(d / SWEEP_JSON).get("claims") or []
    if not rows:
        return None
    rows = sorted(rows, key=lambda r: r.get("claim", 0))
    return {"sentence": snr_sentence(rows), "table": claims(rows, CLAIM_COLUMNS)}


def _explorer(d: Path, res: dict) -> dict | None:
    """The unit explorer's section: why it is left out, its data, or None (no unit in filters.csv)."""
    filters = _read_csv(d / FILTERS)
    left_out = explorer_left_out(d)
    if left_out:
        return {"left_out": left_out}
    if not filters:
        return None
    # the heatmaps' units come first in the explorer; their PNGs stay in heatmaps/, every unit in filters.csv
    data = explorer_data(d, res, filters)
    saved = read_json(d / THUMBNAILS) if (d / THUMBNAILS).exists() else {}
    data["images"] = {str(i): saved[str(i)] for i in data.pop("wanted") if str(i) in saved} \
        if isinstance(saved, dict) else {}
    return explorer_view(data)


def _csv_table(path: Path) -> dict | None:
    """The table of a CSV file of the run, None where it has none."""
    return table(_read_csv(path)) if path.exists() else None


def _page(d: Path, res: dict, stages: dict) -> str:
    """report.html (``templates/report.html.j2``) from the run's files."""
    import json
    import time

    cfg = res.get("config", {})
    env = res.get("environment", {})
    train = res.get("train") or {}
    probes = res.get("probes", {})
    sfp = res.get("sfp", {})
    summary = [("test accuracy of the trained model", train.get("test_accuracy")),
               ("layers analysed", len(res.get("layers", []))),
               ("probe mode / engine", f"{probes.get('mode')} / {probes.get('engine')} "
                                       f"({probes.get('forward_passes')} forward pass(es))"),
               ("threshold / normalise", f"{sfp.get('threshold')} / {sfp.get('normalise')}")]
    layers = _read_csv(d / LAYERS)
    afcc = None
    if (d / AFCC).exists():
        afcc = {"table": _csv_table(d / AFCC), "thresholds": _csv_table(d / AFCC_THRESHOLDS),
                "pruning": _csv_table(d / AFCC_PRUNING),
                "image": image(d / AFCC_PNG, "afcc") if (d / AFCC_PNG).exists() else None}
    sweep, sw = None, d / SWEEP
    if (sw / SWEEP_SUMMARY).exists():
        sj = read_json(sw / SWEEP_SUMMARY)
        fits = [{"fit": k, **{kk: v.get(kk) for kk in ("a", "b", "r2", "b_low", "b_high", "n")}}
                for k, v in sj.get("fits", {}).items()]
        sweep = {"per_count": table(sj.get("per_count", [])), "fits": table(fits, left=("fit",)),
                 "images": [image(sw / p, p) for p in (SWEEP_ERROR_PNG, SWEEP_CLUSTERS_PNG) if (sw / p).exists()]}
    data = res.get("data", {})
    return render(
        "report.html.j2", title=res.get("title", "filterlens report"), version=env.get("filterlens", ""),
        built=time.strftime("%Y-%m-%d %H:%M"), seed=cfg.get("seed"),
        summary=table([{"item": k, "value": v} for k, v in summary], ["item", "value"], left=("item", "value")),
        claims=_claims(d, res), layers=table(layers), unit=unit_word(layers),
        plots=[image(d / p, p) for p in (ACCURACY_PNG, CLUSTERS_PNG) if (d / p).exists()],
        explorer=_explorer(d, res), thresholds=_csv_table(d / THRESHOLDS),
        bootstrap=_csv_table(d / BOOTSTRAP), afcc=afcc, sweep=sweep,
        stages=table([{"stage": k, "seconds": v.get("seconds"), "finished": v.get("finished")}
                      for k, v in stages.items()], ["stage", "seconds", "finished"], left=("stage", "finished"))
        if stages else None,
        timings=[(k, cell(v)) for k, v in (probes.get("timings") or {}).items()],
        settings=table([{"setting": k, "value": json.dumps(v)} for k, v in cfg.items()], ["setting", "value"],
                       left=("setting", "value")),
        environment=table([{"item": k, "value": v} for k, v in env.items()], ["item", "value"],
                          left=("item", "value")),
        data=table([{"item": k, "value": json.dumps(v) if isinstance(v, list) else v} for k, v in data.items()],
                   ["item", "value"], left=("item", "value")) if data else None)
