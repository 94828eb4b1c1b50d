"""``filterlens compare``: the papers' figures across runs and sweeps, from their saved files; nothing recomputed.

* every layer metric (accuracy, SNR, noise per unit, cluster size, clusters per unit, units without a
  cluster) against the **relative depth** of the layer (its position among the run's analysed layers
  divided by their number, so a 13-layer VGG and a 9-stage EfficientNet share one axis), one line per
  run, with the 95% bootstrap band where the run has ``bootstrap.csv``;
* the maximal and the mean error against the number of labels, one line per sweep with its
  least-squares fit (``sweep.json``);
* the papers' claims as each run and sweep tested them (``claims`` of results.json and sweep.json);
* the claims pooled over the seeds of a recipe: runs whose every setting but the seed is equal (the same
  :meth:`~filterlens.config.Config.recipe_hash`) are one recipe, and their claims are pooled
  (:func:`filterlens.claims.pooled_claims`) into ``compare_pooled.csv`` and ``compare_pooled.json`` (schema:
  ``pooled.schema.json``), near the top of compare.html and in the terminal; runs of different recipes are
  never pooled unless ``pool=True`` (``--pool``) asks for it, and then the settings they differ in are said;
* ``compare.csv`` (one row per run and layer), ``compare_sweeps.csv`` (one row per sweep and label
  count), ``compare_claims.csv`` (one row per run or sweep and claim row) and ``compare.html`` (one
  self-contained page: images embedded, no external resource).

A folder of the seeds of one recipe (``filterlens run --seeds``) stands for its runs.

Every input is checked before anything is written; a bad one is one line naming it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..claims import format_pooled, snr_sentence
from ..errors import FilterlensError
from ..files import read_json, write_csv, write_json, write_text
from ..folders import is_temporary, kind_of, make_dirs, mark, named, some_files
from ..names import (
    BOOTSTRAP,
    COMPARE_CLAIMS,
    COMPARE_CSV,
    COMPARE_HTML,
    COMPARE_POOLED_CSV,
    COMPARE_POOLED_JSON,
    COMPARE_SWEEPS,
    LAYERS,
    RESULTS,
    SEED_PREFIX,
    SWEEP_JSON,
    SWEEP_SUMMARY,
)
from ..output import say
from ..rundir import RunDir
from .html import _read_csv
from .pages import claims, image, render, table
from .plots import _new_figure, _values, save_figure, unit_word

# (column of layers.csv, its name in the figures, the y-axis label, the file name)
METRICS = (
    ("accuracy", "layer accuracy", "test accuracy of the layer's FC", "depth_accuracy.png"),
    ("snr", "SNR", "SNR (mean signal / mean noise elements per unit)", "depth_snr.png"),
    ("snr_median", "SNR (median per unit)", "median over units with a cluster of signal / max(noise, 1)",
     "depth_snr_median.png"),
    ("snr_field", "SNR (fields)", "mean block field / mean positive field outside the blocks", "depth_snr_field.png"),
    ("noise_per_filter", "noise per unit", "noise elements per unit (units with a cluster)", "depth_noise.png"),
    ("cluster_size", "cluster size", "mean cluster size (labels)", "depth_cluster_size.png"),
    ("clusters_per_filter", "clusters per unit", "clusters per unit (units with a cluster)", "depth_clusters.png"),
    ("filters_without_cluster", "units without a cluster", "fraction of units without a cluster",
     "depth_no_cluster.png"),
)
SWEEP_METRICS = (("max_error", "maximal error", "sweep_max_error.png"),
                 ("mean_error", "mean error", "sweep_mean_error.png"))
# the columns a run's layers.csv must have (the other SNR candidates are newer: an older run's lines leave them out)
REQUIRED = ("accuracy", "snr", "noise_per_filter", "cluster_size", "clusters_per_filter", "filters_without_cluster")
CSV_COLUMNS = ["run", "model", "dataset", "num_labels", "unit_kind", "layer", "position", "relative_depth",
               *(m[0] for m in METRICS)]
SWEEP_COLUMNS = ["sweep", "num_labels", "max_error", "mean_error", "min_error"]
CLAIM_COLUMNS = ["run", "claim", "metric", "unit_kind", "statistic", "value", "low", "high", "n", "verdict"]
POOLED_COLUMNS = ["recipe", "runs", "claim", "metric", "unit_kind", "statistic", "value", "low", "high", "n",
                  "seeds_holds", "seeds_fails", "seeds_unclear", "verdict"]
OUTPUTS = (COMPARE_HTML, COMPARE_CSV, COMPARE_SWEEPS, COMPARE_CLAIMS, COMPARE_POOLED_CSV, COMPARE_POOLED_JSON,
           *(m[3] for m in METRICS),
           *(m[2] for m in SWEEP_METRICS))
_VALID = ("a finished run directory (results.json and layers.csv: filterlens run or analyze) or a finished sweep "
          "directory (sweep.json or sweep/sweep.json: filterlens sweep, or filterlens run with num_labels)")


@dataclass
class _Run:
    path: Path
    model: str
    dataset: str
    num_labels: int
    unit_kind: str
    rows: list[dict]  # layers.csv, with position and relative_depth added
    bands: dict = field(default_factory=dict)  # metric -> (lows, highs), one per layer
    label: str = ""
    res: dict = field(default_factory=dict)
    recipe: str = ""  # Config.recipe_hash of its settings (recipe_groups)
    seed: int = 0

    @property
    def data_key(self):
        return (self.res.get("data") or {}).get("data_key")


@dataclass
class _Sweep:
    path: Path  # the folder that holds sweep.json
    model: str
    dataset: str
    per_count: list[dict]
    fits: dict
    label: str = ""
    claims: list = field(default_factory=list)  # claims 4-5 of sweep.json
    data_key: str | None = None  # rendered data (glyphs): the fonts and settings


def build_compare(dirs, out, pool: bool = False) -> Path:
    """Compare finished runs and sweeps: write the figures, ``compare.csv``, ``compare_sweeps.csv``, the claims
    pooled over the seeds of each recipe and ``compare.html`` into ``out``; returns the path of ``compare.html``.

    ``dirs``: run directories (``filterlens run`` / ``analyze``), folders of seeds (``filterlens run --seeds``)
    and sweep directories (``filterlens sweep``); a run directory holding a sweep under ``sweep/`` counts as
    both. ``pool``: pool the claims of every run given, even of different recipes (the differences are said).
    The pooled tables are said (:func:`filterlens.output.say`). Every input and ``out`` are checked before
    anything is written (FilterlensError, one line).
    """
    dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else dirs
    if isinstance(dirs, (bytes, int, float, bool)) or not hasattr(dirs, "__iter__"):
        raise FilterlensError(f"directories {dirs!r} is a {type(dirs).__name__}; give a list of run or sweep "
                              "directories")
    dirs = list(dirs)
    if not dirs:
        raise FilterlensError(f"no directory to compare; give one or more: {_VALID}")
    out = RunDir.validate(out, "output directory")
    runs, sweeps, seen = _read_inputs(_expand_seeds(dirs))
    if out.resolve() in seen:
        raise FilterlensError(f"output directory '{out}' is one of the inputs; choose another --out")
    _check_out(out)
    _check_data_keys(runs + sweeps)
    _unique_labels(runs)
    _unique_labels(sweeps)

    groups = recipe_groups(runs, pool)
    make_dirs(out)
    mark(out, "compare")
    written = []
    pooled = [_pooled(g) for g in groups]
    written.append(write_csv(out / COMPARE_POOLED_CSV, [{"recipe": g["recipe"], "runs": " ".join(g["runs"]), **row}
                                                          for g in pooled for row in g["rows"]], POOLED_COLUMNS))
    written.append(write_json(out / COMPARE_POOLED_JSON, {"version": 1, "groups": pooled}))
    for g in pooled:
        say(g["note"])
        for line in format_pooled(g["rows"], g["seeds"]):
            say(line)
    if runs:
        written += [_depth_figure(runs, metric, name, ylabel, out / png) for metric, name, ylabel, png in METRICS]
    written.append(write_csv(out / COMPARE_CSV, [r for run in runs for r in _csv_rows(run)], CSV_COLUMNS))
    written.append(write_csv(out / COMPARE_CLAIMS, _claim_rows(runs, sweeps), CLAIM_COLUMNS))
    if sweeps:
        written += [_sweep_figure(sweeps, key, name, out / png) for key, name, png in SWEEP_METRICS]
        written.append(write_csv(out / COMPARE_SWEEPS, [
            {"sweep": str(s.path), **{k: c.get(k) for k in SWEEP_COLUMNS[1:]}} for s in sweeps for c in s.per_count],
            SWEEP_COLUMNS))
    page = write_text(out / COMPARE_HTML, _page(runs, sweeps, [p for p in written if p.suffix == ".png"], pooled))
    for name in OUTPUTS:  # an earlier compare's files that this one does not replace would mislead
        stale = out / name
        if stale not in written and stale != page and stale.is_file():
            stale.unlink()
    return page


def _read_inputs(dirs: list) -> tuple[list, list, dict[Path, Path]]:
    """The runs and sweeps of the input directories, each read through its checks, and the directories by their
    resolved paths; an input that is empty, missing, given twice or neither a finished run nor a sweep is refused
    in one line."""
    from ..checks import path_arg

    runs, sweeps = [], []
    seen: dict[Path, Path] = {}
    for d in dirs:
        p = path_arg(d, "input directory") if str(d).strip() else Path(str(d))
        if not str(d).strip():
            raise FilterlensError(f"input directory '' is empty; give {_VALID}")
        if not p.is_dir():
            what = "does not exist" if not p.exists() else "is not a directory"
            raise FilterlensError(f"input '{p}' {what}; give {_VALID}")
        key = p.resolve()
        if key in seen:
            raise FilterlensError(f"input '{p}' is given twice (also as '{seen[key]}'); give each directory once")
        seen[key] = p
        found, sweep = _read_run(p), _read_sweep(p)
        if not found and sweep is None:
            raise FilterlensError(f"input '{p}' is neither a finished run nor a finished sweep; give {_VALID}")
        runs += found
        sweeps += [sweep] if sweep else []
    return runs, sweeps, seen


def _expand_seeds(dirs: list) -> list:
    """A folder of seeds (``filterlens run --seeds``) stands for its ``seed-N`` run directories, in seed order."""
    out = []
    for d in dirs:
        p = Path(str(d))
        if str(d).strip() and p.is_dir() and kind_of(p) == "seeds":
            found = sorted((q for q in p.iterdir() if q.is_dir() and q.name.startswith(SEED_PREFIX)
                            and q.name[len(SEED_PREFIX):].isdigit()), key=lambda q: int(q.name[len(SEED_PREFIX):]))
            if not found:
                raise FilterlensError(f"folder of seeds '{p}' holds no seed-N run yet; "
                                      "run filterlens run --seeds first")
            out += found
        else:
            out.append(d)
    return out


def recipe_groups(runs: list, pool: bool = False) -> list[list]:
    """The runs of each recipe (every setting but the seed equal: :meth:`Config.recipe_hash`) that has two or more
    runs of distinct seeds; with ``pool`` every run in one group. Runs of one recipe with a seed in common are not
    pooled (one is a rerun of the other, not another seed): a note says so."""
    from ..config import Config

    by: dict[str, list] = {}
    for r in runs:
        cfg = Config.from_dict(r.res.get("config") or {}, source=f"{r.path}/{RESULTS}")
        r.recipe, r.seed = cfg.recipe_hash(), cfg.seed
        by.setdefault(r.recipe, []).append(r)
    if pool and len(runs) > 1:
        return [list(runs)]
    groups = []
    for g in (g for g in by.values() if len(g) > 1):
        seeds = [r.seed for r in g]
        if len(set(seeds)) != len(seeds):
            twice = next(s for s in seeds if seeds.count(s) > 1)
            say(f"note: {', '.join(str(r.path) for r in g if r.seed == twice)} are one recipe with the same seed "
                f"{twice} (reruns, not other seeds): their claims are not pooled")
            continue
        groups.append(g)
    return groups


def _pooled(group: list) -> dict:
    """The pooled claims of one group of runs, with a sentence on what makes them one recipe."""
    from ..claims import pooled_claims
    from ..config import Config

    rows = pooled_claims([{"claims": r.res.get("claims") or [], "afcc": r.res.get("afcc")} for r in group])
    recipes = {r.recipe for r in group}
    if len(recipes) == 1:
        note = (f"{len(group)} runs share a recipe (every setting but the seed equal; recipe {group[0].recipe}): "
                f"their claims are pooled over seeds {', '.join(str(r.seed) for r in group)}")
    else:
        cfgs = [Config.from_dict(r.res.get("config") or {}).to_dict() for r in group]
        differ = sorted(k for k in cfgs[0] if k != "seed" and len({repr(c.get(k)) for c in cfgs}) > 1)
        note = (f"{len(group)} runs of {len(recipes)} recipes pooled as asked (--pool); they differ in "
                f"{', '.join(differ[:8])}{', ...' if len(differ) > 8 else ''}")
    return {"recipe": group[0].recipe if len(recipes) == 1 else "mixed", "runs": [str(r.path) for r in group],
            "seeds": [r.seed for r in group], "note": note, "rows": rows}


def _check_out(out: Path) -> None:
    """The output folder is new, empty, or one compare made (marked, or holding only compare's files: an earlier
    filterlens); compare never writes into a folder holding the user's files."""
    kind = kind_of(out)
    if kind in ("missing", "empty", "compare"):
        return
    if kind == "foreign" and all(p.is_file() and (p.name in OUTPUTS or is_temporary(p.name)) for p in out.iterdir()):
        return
    files, more = some_files(out)
    raise FilterlensError(f"output directory '{out}' holds files filterlens compare did not write "
                          f"({named(files, more)}); choose a new or empty folder for --out")


# ------------------------------------------------------------------------------ reading the inputs

def _read_run(p: Path) -> list[_Run]:
    """The finished run in ``p`` ([] when it holds no results.json), one line per unit kind where its layers mix
    kinds (heads and MLP nodes: each kind's layers with their own relative depth); a damaged one is refused."""
    rd = RunDir(p)
    if not rd.exists(RESULTS):
        return []
    res = rd.read_results()
    if not rd.file(LAYERS).is_file():
        raise FilterlensError(f"input '{p}' holds results.json but no layers.csv, so it is not a finished run; "
                              "run filterlens analyze (or filterlens run) on it again")
    rd.verify(LAYERS, BOOTSTRAP)
    rows = _csv_file(rd.file(LAYERS))
    if not rows or any(m not in rows[0] for m in REQUIRED):
        missing = [m for m in REQUIRED if not rows or m not in rows[0]]
        raise FilterlensError(f"'{rd.file(LAYERS)}' is damaged or from another filterlens: no "
                              f"{'layer rows' if not rows else 'column ' + ', '.join(missing)}")
    cfg, data = res.get("config", {}), res.get("data", {})
    labels = res.get("label_names") or []
    boot = _csv_file(rd.file(BOOTSTRAP))
    out = []
    for kind in dict.fromkeys(r.get("unit_kind") or "filter" for r in rows):
        mine = [r for r in rows if (r.get("unit_kind") or "filter") == kind]
        n = len(mine)
        for i, r in enumerate(mine):
            r["position"], r["relative_depth"] = i + 1, (i + 1) / n
        out.append(_Run(p, str(cfg.get("model", "?")), str(data.get("dataset", cfg.get("dataset", "?"))),
                        len(labels) or int(data.get("num_labels") or 0), unit_word(mine), mine, _bands(boot, mine),
                        res=res))
    return out


def _csv_file(path: Path) -> list[dict]:
    """The rows of a CSV file of the run ([] when absent); one that cannot be read as CSV is one line naming it."""
    import csv

    try:
        return _read_csv(path)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FilterlensError(f"'{path}' is damaged: it cannot be read as CSV ({exc})") from None


def _bands(boot: list[dict], rows: list[dict]) -> dict:
    """metric -> (lows, highs) along the run's layers, from bootstrap.csv (NaN where it has no row)."""
    by = {(b.get("layer"), b.get("metric")): b for b in boot}
    bands = {}
    for metric, *_ in METRICS:
        picked = [by.get((r["layer"], metric), {}) for r in rows]
        if any(picked):
            bands[metric] = (_values(picked, "low"), _values(picked, "high"))
    return bands


def _read_sweep(p: Path) -> _Sweep | None:
    """The finished sweep in ``p`` (``sweep/sweep.json`` of a run, or ``sweep.json`` of filterlens sweep)."""
    for rel in (SWEEP_JSON, SWEEP_SUMMARY):
        if (p / rel).is_file():
            break
    else:
        return None
    RunDir(p).verify(rel)
    path = p / rel
    sj = read_json(path)
    ok = (isinstance(sj, dict) and sj.get("version") == 1 and isinstance(sj.get("per_count"), list)
          and isinstance(sj.get("fits", {}), dict) and sj["per_count"]
          and all(isinstance(c, dict) and all(_number(c.get(k)) for k in SWEEP_COLUMNS[1:]) for c in sj["per_count"]))
    if not ok:
        raise FilterlensError(f"'{path}' is damaged or from another filterlens: it must hold version 1 and per_count, "
                              "one entry per label count with num_labels, max_error, mean_error and min_error; run "
                              "filterlens sweep --merge on it again")
    cfg = (sj.get("plan") or {}).get("config") or {}
    claims = sj.get("claims") if isinstance(sj.get("claims"), list) else []
    return _Sweep(path.parent, str(cfg.get("model", "?")), str(cfg.get("dataset", "?")),
                  sorted(sj["per_count"], key=lambda c: c["num_labels"]), sj.get("fits") or {},
                  claims=[c for c in claims if isinstance(c, dict)], data_key=sj.get("data_key"))


def _check_data_keys(items) -> None:
    """Refuse inputs of one dataset rendered from other fonts or settings (their data keys differ)."""
    seen: dict[str, _Run | _Sweep] = {}
    for it in items:
        if it.data_key is None:
            continue
        first = seen.setdefault(it.dataset, it)
        if first.data_key != it.data_key:
            raise FilterlensError(f"inputs '{first.path}' and '{it.path}' used different renderings of {it.dataset} "
                                  f"(data keys {first.data_key} and {it.data_key}: other fonts or render settings); "
                                  "compare runs of one data key")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unique_labels(items) -> None:
    """Each line's legend label; the directory is added where two would read the same."""
    for it in items:
        if isinstance(it, _Run):
            it.label = f"{it.model} on {it.dataset} ({it.num_labels} labels, {it.unit_kind}s)"
        else:
            it.label = f"{it.model} on {it.dataset} (sweep)"
    names = [it.label for it in items]
    for it in items:
        if names.count(it.label) > 1:
            it.label += f" [{it.path}]"


def _claim_rows(runs: list[_Run], sweeps: list[_Sweep]) -> list[dict]:
    """One row per run (or sweep) and claim row: claims 1-3 and 6 of each run's results.json, 4-5 of each
    sweep's sweep.json (a run analysed before the claims existed has none)."""
    items = list({str(r.path): r.res.get("claims") for r in runs}.items()) + [(str(s.path), s.claims) for s in sweeps]
    return [{"run": where, **c} for where, rows in items for c in (rows if isinstance(rows, list) else [])
            if isinstance(c, dict)]


def _csv_rows(run: _Run) -> list[dict]:
    return [{**r, "run": str(run.path), "model": run.model, "dataset": run.dataset, "num_labels": run.num_labels,
             "unit_kind": r.get("unit_kind") or run.unit_kind} for r in run.rows]


# ------------------------------------------------------------------------------ figures

def _depth_figure(runs: list[_Run], metric: str, name: str, ylabel: str, path: Path) -> Path:
    fig, ax = _new_figure((7.5, 4.5))
    banded = False
    for run in runs:
        x = [r["relative_depth"] for r in run.rows]
        line, = ax.plot(x, _values(run.rows, metric), "o-", ms=4, label=run.label)
        if metric in run.bands:
            low, high = run.bands[metric]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
            banded = True
    if metric in ("accuracy", "filters_without_cluster"):
        ax.set_ylim(0, 1.02)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("relative depth (layer position / number of analysed layers)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{name} against relative depth" + (" (shaded: 95% bootstrap interval)" if banded else ""),
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def _fit(fits: dict, key: str) -> dict | None:
    f = fits.get(key) or {}
    return f if all(_number(f.get(k)) and math.isfinite(f[k]) for k in ("a", "b")) else None


def _sweep_figure(sweeps: list[_Sweep], key: str, name: str, path: Path) -> Path:
    import numpy as np

    fig, ax = _new_figure((7.5, 4.5))
    for s in sweeps:
        xs = np.array([c["num_labels"] for c in s.per_count], dtype=float)
        line, = ax.plot(xs, [c[key] for c in s.per_count], "o-", label=s.label)
        f = _fit(s.fits, key)
        if f is not None:
            r2 = f"{f['r2']:.2f}" if _number(f.get("r2")) else "n/a"
            grid = np.linspace(xs.min(), xs.max(), 50)
            sign = "+" if f["b"] >= 0 else "-"
            ax.plot(grid, f["a"] + f["b"] * grid, "--", color=line.get_color(),
                    label=f"fit {f['a']:.3f} {sign} {abs(f['b']):.4f} L (R² {r2})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of labels L")
    ax.set_ylabel(f"{name} (test error rate)")
    ax.set_title(f"{name} against the number of labels, least-squares fit dashed", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


# ------------------------------------------------------------------------------ the page

def _page(runs: list[_Run], sweeps: list[_Sweep], pngs: list[Path], pooled: list[dict] | None = None) -> str:
    """compare.html (``templates/compare.html.j2``) from the runs, the sweeps, the figures and the pooled claims."""
    import time

    pooled_view = []
    for g in pooled or []:
        rows = [{**row, "each seed": ", ".join(f"{s}: {v:.4g} ({vd})" for s, v, vd in zip(
            g["seeds"], row.get("per_seed", []), row.get("per_seed_verdicts", [])))} for row in g["rows"]]
        pooled_view.append({"note": g["note"], "claims": claims(rows, [
            "claim", "metric", "statistic", "value", "low", "high", "n", "seeds_holds", "seeds_fails", "seeds_unclear",
            "verdict", "each seed"])})
    runs_table = table([{"run": str(r.path), "line": r.label, "model": r.model, "dataset": r.dataset,
                         "labels": r.num_labels, "units": r.unit_kind, "layers": len(r.rows),
                         "test accuracy": (r.res.get("train") or {}).get("test_accuracy"),
                         "threshold": (r.res.get("sfp") or {}).get("threshold"),
                         "bootstrap": "yes" if r.bands else "no"} for r in runs],
                       left=("run", "line", "model", "dataset", "units", "bootstrap")) if runs else None
    fits = table([{"sweep": str(s.path), "line": s.label, "fit": key,
                   **{k: (s.fits.get(key) or {}).get(k) for k in ("a", "b", "r2", "b_low", "b_high", "n")}}
                  for s in sweeps for key, *_ in SWEEP_METRICS], left=("sweep", "line", "fit")) if sweeps else None
    section = None
    if runs or sweeps:
        own = {id(r): [c for c in r.res.get("claims") or [] if c.get("unit_kind") in (None, r.unit_kind)]
               for r in runs}  # a run split by unit kind: each line its own kind's claims
        rows = _claim_rows(runs, sweeps)
        section = {"sentences": [f"{r.label}: {snr_sentence(own[id(r)])}" for r in runs if snr_sentence(own[id(r)])],
                   "table": claims(rows, ["run", *CLAIM_COLUMNS[1:], "detail"]) if rows else None}
    every = {"n": sum(len(r.rows) for r in runs),
             "table": table([row for r in runs for row in _csv_rows(r)], CSV_COLUMNS,
                            left=("run", "model", "dataset", "unit_kind", "layer"))} if runs else None
    return render("compare.html.j2", title="filterlens compare", runs=len(runs), sweeps=len(sweeps),
                  built=time.strftime("%Y-%m-%d %H:%M"), pooled=pooled_view, runs_table=runs_table, fits=fits,
                  claims=section, figures=[image(p, p.stem) for p in pngs], every=every,
                  files=", ".join(p.name for p in pngs))
