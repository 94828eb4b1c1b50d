"""Stages 2 and 3 on a trained model: layer accuracies, then every unit's clusters, noise and SNR.

``filterlens.analyze(model, train, test, **settings)`` (this module's :func:`analyze`) is the library entry point: any
``nn.Module`` and any data :mod:`filterlens.inputs` accepts (tensors, arrays, a torch Dataset or DataLoader, a
torchvision dataset, or a named dataset's :class:`~filterlens.data.Data`). It returns an :class:`Analysis`: the
tables, the stage-2 arrays (:class:`~filterlens.probe_results.ProbeResult`), the fitted unit analyses,
one unit on demand (:meth:`Analysis.unit`), its figures (:meth:`Analysis.plot`) and
:meth:`Analysis.save`, which writes a run directory every command reads. ``analyze_run(run_dir)`` does
the same for a run directory written by ``filterlens train``.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import claims, sfp
from . import distributed as dist_
from .config import DEFAULT_THRESHOLD, Config, Hashed, ProbeSettings, SfpSettings, parse_heatmaps, parse_thresholds
from .data import Data, check_labels_present
from .errors import FilterlensError, closest
from .files import remove_file, write_csv, write_json
from .fingerprint import weights_fingerprint
from .folders import LOCK_FILES, MARK, kind_of
from .inputs import as_data
from .loaders import Feed
from .models import resolve_layers
from .models.contract import check_model
from .names import (
    BOOTSTRAP,
    CONFIG,
    FILTERS,
    HEATMAPS,
    LAYERS,
    MANIFEST,
    MODEL,
    PROBE_FILES,
    RESULTS,
    THRESHOLDS,
    THUMBNAILS,
    TRAIN_SUMMARY,
)
from .output import say
from .probe_results import ProbeResult
from .probes import train_probes
from .records import ClaimRecord, LayerRecord, Table, UnitRecord
from .report.explorer import explorer_data, thumbnails
from .report.plots import layer_figures, plot_filter_matrix, plot_layers
from .results import UnitView, unit_view
from .rundir import HEATMAP, RunDir
from .utils import environment, keeps_global_state, resolve_device, seed_everything, use_threads

RESULTS_VERSION = 1
LAYER_COLUMNS = LayerRecord.columns()  # layers.csv
# the layer metrics that thresholds.csv gives at every extra threshold and bootstrap.csv intervals of (after the
# accuracy): the summary METHOD.md requires (sfp.SUMMARY_KEYS) and signal_per_filter_all, the SNR's numerator, in
# layers.csv's order
LAYER_METRICS = [k for k in LAYER_COLUMNS if k in sfp.SUMMARY_KEYS or k == "signal_per_filter_all"]
FILTER_COLUMNS = UnitRecord.columns()  # one row per unit (filter, head or node); the file keeps its name, filters.csv


class Analysis:
    """What :func:`analyze` returns and :func:`load_run` reads back: one row per layer (``layers``, a
    :class:`~filterlens.records.Table` of :class:`~filterlens.records.LayerRecord`), one per unit (``units``:
    filter, head or node, :class:`~filterlens.records.UnitRecord`), the papers' claims (``claims``), the stage-2
    arrays (``probes``), every layer's fitted single-unit analysis (``sfp``: layer name -> ``sfp.LayerSFP``; empty
    when read back), the settings and records (``meta``), in memory the data it was computed on (``data``) and,
    when read from a run directory, its ``path`` and every table the run holds (:meth:`table`)."""

    def __init__(self, layers, units, probes: ProbeResult | None, sfp_layers: dict, meta: dict,
                 data: Data | None = None, files=None):
        self.layers = Table(LayerRecord, layers)
        self.units = Table(UnitRecord, units)
        self.probes = probes
        self.sfp = sfp_layers  # layer name -> fitted sfp.LayerSFP
        self.meta = meta
        self.data = data
        self._files = files  # results.RunFiles of the run directory it was read from, or None

    @property
    def path(self) -> Path | None:
        """The run directory this analysis was read from (None for one made in memory and not read back)."""
        return self._files.path if self._files is not None else None

    @property
    def config(self) -> Config:
        """The settings the analysis ran with (a :class:`~filterlens.config.Config`, read from ``meta``)."""
        return Config.from_dict(self.meta["config"], stored=True)

    @property
    def filters(self) -> Table:
        """``units`` by its name from before units beyond filters existed (filters.csv keeps that name)."""
        return self.units

    @property
    def claims(self) -> Table:
        """The papers' claims as this analysis can test them (:mod:`filterlens.claims`): one
        :class:`~filterlens.records.ClaimRecord` per claim and metric."""
        return Table(ClaimRecord, self.meta.get("claims") or [])

    @property
    def results(self) -> dict:
        """results.json as this analysis writes it (read back: as the run holds it, later stages' entries
        included)."""
        if self._files is not None:
            return self._files.results
        return {"version": RESULTS_VERSION, **self.meta, "layers": self.layers.to_dicts()}

    def tables(self) -> list[str]:
        """The tables :meth:`table` gives: layers, units, claims and, read from a run directory, every table file
        the run holds (``afcc``, ``bootstrap``, ``thresholds``, ...)."""
        names = ["layers", "units", "claims"]
        present = self._files.tables() if self._files is not None else []
        return names + [n for n in present if n not in names and n != "filters"]

    def table(self, name: str = "layers") -> list:
        """The table ``name`` (:meth:`tables`; ``filters`` is ``units``): layers, units and claims as typed
        records; another table of a run directory as dicts read from its file, checked against the checksum its
        stage recorded."""
        if name == "layers":
            return self.layers
        if name in ("units", "filters"):
            return self.units
        if name == "claims":
            return self.claims
        if self._files is None or name not in self.tables():
            raise FilterlensError(f"unknown table {name!r}; valid: {', '.join(self.tables())} (or filters, the "
                                  "same as units)" + ("" if self._files is not None else
                                                       "; a saved run has its AFCC and interval tables too"))
        return self._files.table(name)

    def to_frame(self, table: str = "layers"):
        """The table ``table`` (:meth:`table`; default ``layers``) as a pandas DataFrame."""
        rows = self.table(table)
        if isinstance(rows, Table):
            return rows.to_frame()
        import pandas as pd

        return pd.DataFrame(rows)

    def unit(self, layer: str, index: int) -> UnitView:
        """One unit (filter, head or node): its matrix (raw, normalised, binarised), clusters, noise and top test
        images."""
        names = [r.layer for r in self.layers]
        if not isinstance(layer, str):
            raise FilterlensError(f"layer {layer!r} is a {type(layer).__name__}; give the name of an analysed layer "
                                  f"(a str): {', '.join(names)}")
        if layer not in names:
            raise FilterlensError(f"layer {layer!r} was not analysed{closest(str(layer), names)}; analysed: "
                                  f"{', '.join(names)}")
        if self.probes is None:
            raise FilterlensError("this analysis holds no probe weights (its run directory has no "
                                  f"{' or '.join(PROBE_FILES)}); analyse the model again to see one unit")
        r = self.probes.layer(layer)
        sfp_meta = self.meta.get("sfp", {})
        return unit_view(layer, index, r.unit_kind, r.weight, r.label_means,
                         (r.top_values, r.top_indices) if r.top_indices is not None else None,
                         float(sfp_meta.get("threshold", DEFAULT_THRESHOLD)), sfp_meta.get("normalise", "max"),
                         int(self.meta.get("config", {}).get("top_images", 8)), self.meta.get("label_names", []))

    def plot(self) -> dict:
        """The analysis' figures (matplotlib), by the file name ``save`` gives them: accuracy.png, clusters.png."""
        return layer_figures(self.layers, title=self.meta.get("title", ""))

    def _repr_html_(self) -> str:
        cols = ["layer", "units", "accuracy", "clusters_per_filter", "cluster_size", "noise_per_filter",
                "filters_without_cluster", "snr"]
        out = html_table(self.layers, cols, caption=self.meta.get("title", "filterlens analysis"))
        if self.claims:
            out += html_table(self.claims, ["claim", "metric", "statistic", "value", "low", "high", "verdict"],
                              caption="the papers' claims")
        return out

    def __repr__(self) -> str:
        return f"<filterlens Analysis: {self.meta.get('title', '')}, {len(self.layers)} layer(s)>"

    def save(self, directory, overwrite: bool = False) -> list[str]:
        """Write the analysis as a run directory (``filterlens report``, ``compare`` and, when its model and data
        can be rebuilt, ``afcc`` read it): the stage-2 files, the tables, the figures, the heatmaps, the thumbnails
        and results.json (last), each recorded with its checksum; returns the file names written.

        A folder that already holds a run takes the analysis of that run's own model (its weights' fingerprint
        and labels, :func:`check_pair`'s record) and no other: saving another model's analysis there is refused
        unless ``overwrite=True``, which replaces that run (every file filterlens wrote there), as ``--overwrite``
        does on the command line."""
        from .checks import of_type
        from .rundir import remove_owned

        of_type(overwrite, bool, "overwrite", "True or False")
        rd = RunDir(RunDir.validate(directory))
        cfg = self.config
        with rd.lock("filterlens analysis.save"):
            other = self._other_run(rd)
            if other and not overwrite:
                raise FilterlensError(f"'{rd.path}' holds a run of {other}, not of the model this analysis was made "
                                      "of; save(..., overwrite=True) replaces that run, or choose another folder")
            if other:
                remove_owned(rd.path, keep=set(LOCK_FILES) | {MARK})
            if not rd.exists(CONFIG):
                rd.claim(cfg, stage="train")
            if self.probes is not None:
                rd.record("probes", cfg.stage_hash("probes"),
                          [str(p.relative_to(rd.path)) for p in self.probes.save(rd.path, cfg.stage_hash("probes"))],
                          self.probes.timings.get("stage_s"))
            files = self.write(rd.path)
            rd.record("sfp", cfg.stage_hash("sfp"), files, self.meta["timings"].get("sfp_s"))
        return files

    def _other_run(self, rd: RunDir) -> str | None:
        """What ``rd`` holds when it is a run of another model than this analysis' (None: no run yet, or a run of
        the same weights and labels)."""
        if kind_of(rd.path) != "run" or not any(rd.exists(n) for n in (CONFIG, MODEL, RESULTS, MANIFEST)):
            return None
        mine, names = self.meta.get("model_fingerprint"), list(self.meta.get("label_names") or [])
        theirs, their_names, what = None, None, "another model"
        if rd.exists(MODEL):
            from .models import read_checkpoint

            rd.verify(MODEL)
            state = read_checkpoint(rd.file(MODEL))
            theirs, what = weights_fingerprint(state["model"]), f"the model in {MODEL}"
            their_names = state.get("label_names")
        elif rd.exists(RESULTS):
            res = rd.read_results()
            theirs, their_names = res.get("model_fingerprint"), res.get("label_names")
            what = f"another analysis ({res.get('title', '?')})"
        if not (mine and theirs and mine == theirs):
            return what
        if their_names is not None and list(their_names) != names:
            return f"{what} with other labels"
        return None

    def write(self, directory) -> list[str]:
        """Stage 3's files in ``directory`` (tables, figures, heatmaps, thumbnails, results.json last); returns
        their names relative to it."""
        d = Path(directory)
        written = [write_csv(d / LAYERS, self.layers, LAYER_COLUMNS),
                   write_csv(d / FILTERS, self.units, FILTER_COLUMNS)]
        # a new analysis replaces results.json whole: later stages (AFCC) add their entries again
        results = {"version": RESULTS_VERSION, **self.meta, "layers": self.layers.to_dicts()}
        for name in (THRESHOLDS, BOOTSTRAP, THUMBNAILS):  # from an earlier analysis with other settings
            remove_file(d / name)
        if self.meta.get("thresholds"):
            written.append(write_csv(d / THRESHOLDS, self.meta["thresholds"]))
        if self.meta.get("bootstrap"):
            written.append(write_csv(d / BOOTSTRAP, self.meta["bootstrap"]["intervals"]))
        written += plot_layers(self.layers, d, title=self.meta.get("title", ""))
        heat = self.heatmaps(d)
        written += heat
        results["heatmaps"] = [str(p.relative_to(d)) for p in heat]
        if self.data is not None and all((d / f).exists() for f in PROBE_FILES):
            wanted = explorer_data(d, results, self.units)["wanted"]
            written.append(write_json(d / THUMBNAILS, thumbnails(self.data, wanted)))
        written.append(write_json(d / RESULTS, results))
        return [str(Path(p).relative_to(d)) for p in written]

    def heatmaps(self, directory) -> list[Path]:
        """PNG heatmaps (raw normalised and binarised, labels reordered by cluster) of chosen filters."""
        if not self.sfp:
            return []
        # parsed as the config's check read it: auto or none with spaces around is auto or none
        spec = parse_heatmaps(self.meta.get("config", {}).get("heatmaps", "auto"))
        if spec == "none":
            return []
        names = list(self.sfp)
        picks: list[tuple[str, int]] = []
        if isinstance(spec, str):  # auto
            for name in dict.fromkeys([names[0], names[len(names) // 2], names[-1]]):
                est = self.sfp[name]
                order = np.argsort(-np.asarray(est.signal_), kind="stable")[:3]
                picks += [(name, int(c)) for c in order]
        else:  # checked against the analysed layers before any work (check_heatmaps)
            picks = spec
        labels = self.meta.get("label_names")
        folder = Path(directory) / HEATMAPS
        if folder.is_dir():  # drop the previous analysis' pictures (they may show other filters or thresholds), not
            for old in folder.glob("*.png"):  # the user's: only filterlens' names, <layer>-filter3.png
                if HEATMAP.match(old.name):
                    remove_file(old)
        out = []
        for layer, c in picks:
            est = self.sfp[layer]
            kind = next((r.get("unit_kind", "filter") for r in self.layers if r["layer"] == layer), "filter")
            path = Path(directory) / HEATMAPS / f"{layer}-{kind}{c}.png"
            plot_filter_matrix(est.matrix(c), est.threshold, est.clusters_[c], labels, path,
                               title=f"{layer} {kind} {c}", normalise=est.normalise)
            out.append(path)
        return out

    @classmethod
    def load(cls, directory) -> "Analysis":
        """The analysis of a run directory (written by :meth:`save`, ``filterlens analyze`` or ``run``), every file
        checked against the checksum its stage recorded; the stage-2 arrays with it when they are there.
        ``filterlens.load_run`` is this."""
        from .results import RunFiles

        files = RunFiles(directory)  # the checks of filterlens report: checksums, the shapes of results and tables
        tables = files.read_tables()  # layers.csv and every other table unchanged since their stages wrote them
        units = tables["filters"] if "filters" in tables else files.table("filters")  # absent: refused in one line
        probes = ProbeResult.load(files.path) if all((files.path / f).exists() for f in PROBE_FILES) else None
        meta = {k: v for k, v in files.results.items() if k not in ("layers", "version")}
        return cls(files.results.get("layers", []), units, probes, {}, meta, files=files)


def load_run(directory) -> Analysis:
    """A run directory read back (``filterlens.load_run``): its :class:`Analysis`, every file checked against the
    checksum its stage recorded, as ``filterlens report`` checks it."""
    return Analysis.load(directory)


def html_table(rows: list[dict], columns: list[str], caption: str = "") -> str:
    """A small HTML table of ``rows`` (what a notebook shows for an analysis, a unit or an AFCC result)."""
    import html

    def cell(v):
        if isinstance(v, float):
            return "nan" if v != v else f"{v:.4g}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@keeps_global_state
def analyze(model: torch.nn.Module, train, test=None, *, labels=None, config: Config | None = None, device=None,
            cache_dir=None, progress: bool | None = None, **settings) -> Analysis:
    """Layer accuracies (stage 2) and single-unit performance (stage 3) of ``model`` on ``train``/``test``.

    ``train``, ``test``: tensors or arrays ``(images, labels)``, a torch ``Dataset`` or ``DataLoader``, a
    torchvision dataset (its transforms used as they are), or a named dataset's :class:`Data` alone
    (:mod:`filterlens.inputs`). ``labels``: the label names (default: the dataset's ``classes``, else the
    indices). ``settings`` are fields of :class:`~filterlens.config.Config` over ``config``, as Python values
    (``layers=["features.3", -1]`` or a predicate ``layers=lambda layer: layer.unit_kind == "head"``,
    ``thresholds=[0.2, 0.3]``, ``probe_pool=(4, 4)``, ``cache_budget=2**30``, ``heatmaps=[("features.3", 12)]``)
    or as the command line writes them (``layers="last:3"``, ``probe_pool="4x4"``). The model is not modified;
    its train/eval mode is restored.
    """
    if not isinstance(model, torch.nn.Module):
        raise FilterlensError(f"model is a {type(model).__name__}; give a torch.nn.Module")
    if next(model.parameters(), None) is None:
        raise FilterlensError("the model has no parameters; give a trained torch.nn.Module")
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise FilterlensError(f"cache_dir is a {type(cache_dir).__name__} ({cache_dir!r}); give a folder path (str or "
                              "pathlib.Path), or None for a temporary one")
    data = as_data(train, test, labels)
    cfg = with_settings(config, _layer_choice(model, data, settings))
    use_threads(cfg.threads)
    check_model(model, data.input_shape, data.num_labels, "the model", cfg.layers, cfg.tokens)  # one dry forward
    pr = probe_stage(model, data, cfg, device=device, cache_dir=cache_dir, progress=progress,
                     keep_fields=cfg.bootstrap > 0, heatmaps=cfg.heatmaps)
    result = sfp_stage(pr, data.describe(), cfg)
    result.data = data
    # the settings record what was analysed: the model by its class (the command line cannot rebuild it), the data by
    # its name ("python": your own)
    result.meta["config"].update(dataset=data.name, model=type(model).__name__)
    where = "your data" if data.name == "python" else data.name
    result.meta["title"] = f"{type(model).__name__} on {where} ({data.num_labels} labels)"
    return result


def check_pair(model: torch.nn.Module, analysis, data: Data | None = None, what: str = "the model") -> None:
    """Refuse (one line) a model and an analysis that do not belong together: the analysis records the fingerprint
    of the weights it analysed (:func:`filterlens.fingerprint.weights_fingerprint`) and its labels; the model's
    weights must have that fingerprint, its output one score per label, and ``data`` (when given) those labels.
    Every call that pairs a model with an analysis (``afcc.apply``, ``filterlens afcc``) checks it first."""
    meta = analysis.meta
    names = [str(n) for n in (meta.get("label_names") or [])]
    recorded = meta.get("model_fingerprint")
    if recorded and weights_fingerprint(model) != recorded:
        raise FilterlensError(f"{what} is not the model this analysis was made of: its weights differ (fingerprint "
                              f"{weights_fingerprint(model)[:12]}, the analysis recorded {str(recorded)[:12]}); give "
                              "the model it analysed, or analyse this one (filterlens.analyze)")
    if data is None:
        return
    outputs = check_model(model, data.input_shape, None, what, layers=None)
    if names and outputs != len(names):
        raise FilterlensError(f"{what} gives {outputs} class scores per input but the analysis has {len(names)} "
                              "labels; give the model the analysis was made of")
    if names and data.num_labels != len(names):
        raise FilterlensError(f"the data has {data.num_labels} labels but the analysis {len(names)}; give the data "
                              "the analysis was made on")
    given = [str(n) for n in data.label_names]
    if names and given != names and given != [str(i) for i in range(len(given))]:
        shown = ", ".join(n for n, m in zip(given, names) if n != m)
        raise FilterlensError(f"the data's labels are not the analysis' (they differ at {shown[:80]}); give the data "
                              "the analysis was made on, with its label names")


def with_settings(config: Config | None, settings: dict) -> Config:
    """``config`` (default: the defaults) with ``settings`` over it, every one checked (one line). Settings may be
    Python values (lists of layer names, floats, (H, W) pools, sizes in bytes: :func:`~filterlens.config.python_values`)
    or the command line's strings."""
    from .config import python_values

    if config is not None and not isinstance(config, Config):
        raise FilterlensError(f"config is a {type(config).__name__}; give a filterlens.config.Config (or the settings "
                              "as keyword arguments)")
    base = config or Config()
    names = list(base.to_dict())
    for k in settings:
        if k not in names:
            raise FilterlensError(f"unknown setting '{k}'{closest(k, names)}; the settings are the fields of "
                                  "filterlens.config.Config")
    settings = python_values(settings)
    return base.replace(**settings) if settings else base.validate()


def _layer_choice(model: torch.nn.Module, data: Data, settings: dict) -> dict:
    """A callable ``layers`` (a predicate on :class:`~filterlens.models.Layer`, e.g. ``lambda l: l.unit_kind ==
    "head"``) replaced by the names of the model's layers it picks (in the settings' ``tokens``)."""
    pick = settings.get("layers")
    if not callable(pick):
        return settings
    from .models import list_layers

    chosen = [l.name for l in list_layers(model, data.input_shape, tokens=settings.get("tokens", "all")) if pick(l)]
    if not chosen:
        raise FilterlensError("the layers callable picked no layer of the model; filterlens layers lists them")
    return {**settings, "layers": chosen}


@keeps_global_state
def probe_stage(model: torch.nn.Module, data: Data, cfg: ProbeSettings, device=None, cache_dir=None,
                progress: bool | None = None, keep_fields: bool = False, heatmaps: str = "none") -> ProbeResult:
    """Stage 2: select the layers, build the batches once (:class:`~filterlens.loaders.Feed`) and train every
    layer's FC probe (one capture pass). Two of stage 3's settings reach it from the caller: ``keep_fields``
    (keep what the bootstrap resamples: ``bootstrap > 0``) and ``heatmaps`` (checked against the layers before
    any work)."""
    check_labels_present(data)
    seed_everything(cfg.seed)
    if device is None:  # under torchrun: this rank's device
        device = dist_.setup(cfg.device) or resolve_device(cfg.device)
    else:
        device = resolve_device(str(device))
    use_threads(cfg.threads, device)
    model.to(device)
    show = cfg.progress if progress is None else progress
    t0 = time.perf_counter()
    layers = resolve_layers(model, data.input_shape, cfg.layers, cfg.tokens)
    check_heatmaps(heatmaps, layers)
    cache_dir = cache_dir if cache_dir is not None else cfg.cache_dir  # checked by train_probes before any work
    feed = Feed(data, device, seed=cfg.seed, num_workers=cfg.num_workers, rank=dist_.rank(),
                world_size=dist_.world_size())
    pr = train_probes(model, layers, feed, cfg, cache_dir=cache_dir, progress=show, keep_fields=keep_fields)
    pr.model_fingerprint = weights_fingerprint(model)  # what was analysed: every pairing call checks it
    pr.timings["stage_s"] = time.perf_counter() - t0
    return pr


def check_heatmaps(spec: str, layers) -> None:
    """Refuse, before any work, heatmaps (``LAYER:UNIT,...``) of layers not analysed or units out of range."""
    picks = parse_heatmaps(spec)
    if isinstance(picks, str):
        return
    by_name = {l.name: l for l in layers}
    for layer, unit in picks:
        if layer not in by_name:
            raise FilterlensError(f"heatmap '{layer}:{unit}' names a layer that is not analysed"
                                  f"{closest(layer, by_name)}; analysed layers: {', '.join(by_name)}")
        if unit >= by_name[layer].units:
            raise FilterlensError(f"heatmap '{layer}:{unit}': layer '{layer}' has {by_name[layer].units} units "
                                  f"(0..{by_name[layer].units - 1})")


@keeps_global_state
def sfp_stage(pr: ProbeResult, data_meta: dict, cfg: SfpSettings) -> Analysis:
    """Stage 3 from stage 2's outputs: every filter's matrix, clusters, noise; every layer's SNR. It works at
    ``cfg.threads`` (the count the result's environment records) and gives the caller's count back."""
    use_threads(cfg.threads)
    t0 = time.perf_counter()
    rows, filter_rows, fitted, sweep_rows, boot_rows = [], [], {}, [], []
    replicates: dict[str, list] = {}
    thresholds = parse_thresholds(cfg.thresholds)
    label_names = data_meta["label_names"]
    n_test = float(pr.label_counts.sum())
    for r in pr.layers:
        est = sfp.analyze_layer(r.weight.double(), r.label_means, threshold=cfg.threshold, normalise=cfg.normalise)
        fitted[r.name] = est
        votes = r.votes.numpy()
        pref = np.asarray(est.preferred_label_)
        frac = votes[np.arange(len(pref)), pref] / max(n_test, 1.0)
        row = {"layer": r.name, "index": r.index, "unit_kind": r.unit_kind, "units": r.units, "features": r.features,
               "accuracy": r.accuracy, "train_accuracy": r.train_accuracy}
        summary = est.summary()
        row.update({k: summary[k] for k in LAYER_COLUMNS if k in summary})
        row["vote_fraction"] = float(frac.mean())
        rows.append(row)
        if thresholds:
            for srow in est.summaries(thresholds):
                sweep_rows.append({"layer": r.name, **{k: srow[k] for k in ["threshold"] + LAYER_METRICS if k in srow}})
        if cfg.bootstrap > 0:
            boot_rows += _bootstrap_layer(r, pr, cfg, {**summary, **row}, replicates)
        for fr, vf in zip(est.filter_table(r.name, label_names), frac):
            filter_rows.append(UnitRecord.from_dict({
                "unit": fr["filter"], "unit_kind": r.unit_kind, "vote_fraction": float(vf),
                **{k: fr[k] for k in FILTER_COLUMNS if k in fr and k != "vote_fraction"}}))
    t_sfp = time.perf_counter() - t0
    meta = {
        "config": cfg.to_dict(),
        "environment": environment(),
        "data": data_meta,
        "label_names": label_names,
        "label_map": data_meta.get("label_map"),
        "probes": {"mode": pr.mode, "engine": pr.engine, "engine_choice": pr.engine_plan, "recipe": asdict(pr.recipe),
                   "note": pr.note,
                   "forward_passes": pr.forward_passes, "timings": pr.timings,
                   "pool": cfg.probe_pool, "augment": pr.recipe.augment, "precision": pr.precision},
        "sfp": {"threshold": cfg.threshold, "normalise": cfg.normalise},
        "model_fingerprint": pr.model_fingerprint or None,
        "timings": {"probes_s": pr.timings.get("stage_s", pr.timings.get("total_s")), "sfp_s": t_sfp},
        "title": f"{cfg.model} on {data_meta.get('dataset', '?')} ({len(label_names)} labels)",
        "thresholds": sweep_rows,
        "bootstrap": {"n": cfg.bootstrap, "level": 0.95, "intervals": boot_rows,
                      "inputs": {r.name: r.bootstrap_input for r in pr.layers}} if cfg.bootstrap else None,
        # claims 1-3 (depth trends): replicate b of every layer is the same resample of the test images
        "claims": claims.depth_claims(rows, {k: np.stack(v, axis=1) for k, v in replicates.items()
                                             if len(v) == len(rows)} or None),
    }
    return Analysis(rows, filter_rows, pr, fitted, meta)


def _bootstrap_layer(r, pr: ProbeResult, cfg: SfpSettings, estimates: dict, replicates: dict) -> list[dict]:
    """One layer's bootstrap (``cfg.bootstrap`` stratified resamples of the test images, the same in every layer):
    its rows of bootstrap.csv, and each metric's replicates appended to ``replicates[metric]`` (a list per
    layer). It reads whichever input the probe stage kept for the layer: the per-sample fields, or the test
    features with the probe weight (the same replicates, ``sfp.bootstrap_summary_from_features``)."""
    settings: dict[str, Any] = dict(threshold=cfg.threshold, normalise=cfg.normalise, return_samples=True,
                                    accuracy=True)
    labels, num_labels = pr.test_labels.numpy() if pr.test_labels is not None else None, int(r.weight.shape[0])
    if r.fields is not None:
        fields = [r.fields, *(r.extra_fields or [])]  # probe b mod K in replicate b (probe_seeds)
        out = sfp.bootstrap_summary(fields if len(fields) > 1 else r.fields, labels, num_labels, cfg.bootstrap,
                                    cfg.seed, **settings)
    elif r.test_features is not None:
        weights = [r.weight, *(r.extra_weights or [])]  # probe b mod K in replicate b (probe_seeds)
        out = sfp.bootstrap_summary_from_features(r.test_features, weights if len(weights) > 1 else r.weight,
                                                  labels, num_labels, cfg.bootstrap, cfg.seed, **settings)
    else:
        raise FilterlensError("bootstrap needs the per-sample test fields or test features; rerun the probes stage "
                              f"with bootstrap = {cfg.bootstrap}")
    assert isinstance(out, tuple)  # return_samples: (intervals, samples)
    intervals, samples = out
    for key, values in samples.items():
        replicates.setdefault(key, []).append(values)
    return [{"layer": r.name, "metric": key, "estimate": estimates.get(key), "low": intervals[key][0],
             "high": intervals[key][1]} for key in ["accuracy", *LAYER_METRICS] if key in intervals]


@keeps_global_state
def analyze_run(run_dir, overrides: dict | None = None) -> Analysis:
    """Analyse the trained model of ``run_dir`` and write the results there.

    Every setting and input is checked before any work; the run directory is locked for the
    command. Under torchrun every rank computes its shard and the same global result; rank 0 writes it.
    """
    from .checks import of_type
    from .train import load_trained

    rd = RunDir(RunDir.validate(run_dir))
    of_type(overrides, (dict, type(None)), "overrides", "a dict of settings, e.g. {'threshold': 0.4}")
    if not rd.path.is_dir():
        raise FilterlensError(f"'{rd.path}' is not a trained run directory; run filterlens train --run-dir first")
    with rd.lock("filterlens analyze"):
        # every input and setting is checked before any work: a refused analysis writes nothing
        model, cfg, data, _ = load_trained(run_dir)  # config.json and model.pt checked against their records
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        rd.check(cfg, stage="train")  # what claim() checks below, once the analysis succeeded
        use_threads(cfg.threads)
        train_summary = read_train_summary(rd)
        device = dist_.setup(cfg.device)
        pr = probe_stage(model, data, cfg, device=device, cache_dir=cfg.cache_dir or rd.file("cache"),
                         keep_fields=cfg.bootstrap > 0, heatmaps=cfg.heatmaps)
        result = sfp_stage(pr, data.describe(), cfg)
        result.meta["processes"] = dist_.world_size()
        result.data = data
        if dist_.is_main():
            rd.claim(cfg, stage="train")  # config.json changes only once the analysis succeeded
            rd.record("probes", cfg.stage_hash("probes"),
                      [str(p.relative_to(rd.path)) for p in pr.save(rd.path, cfg.stage_hash("probes"))],
                      pr.timings.get("stage_s"))
            write_sfp_result(rd, cfg, result, train_summary)
        dist_.barrier()
    return result


def read_train_summary(rd: RunDir) -> dict | None:
    """The training summary of the run (train.json, checked against its record; without its history), or None
    when the run has none."""
    if not rd.exists(TRAIN_SUMMARY):
        return None
    rd.verify(TRAIN_SUMMARY)
    train = rd.read_json(TRAIN_SUMMARY)
    return {k: v for k, v in train.items() if k != "history"} if isinstance(train, dict) else None


def write_sfp_result(rd: RunDir, cfg: Hashed, result: Analysis, train_summary: dict | None = None) -> list[str]:
    """Stage 3's files in the run directory (with the training summary, read here unless given), recorded in
    stages.json."""
    if rd.exists(TRAIN_SUMMARY):
        result.meta["train"] = train_summary if train_summary is not None else read_train_summary(rd)
    files = result.write(rd.path)
    rd.record("sfp", cfg.stage_hash("sfp"), files, result.meta["timings"].get("sfp_s"))
    return files


def print_table(result: Analysis) -> None:
    """The layer table, as the CLI prints it."""
    pr = result.meta["probes"]
    say(f"{result.meta['title']}; probes: {pr['mode']} mode, {pr['engine']} engine, "
         f"{pr['forward_passes']} forward pass(es); threshold {result.meta['sfp']['threshold']}")
    kinds = {r.get("unit_kind", "filter") for r in result.layers}
    head = f"{next(iter(kinds))}s" if len(kinds) == 1 else "units"
    u = head[0]
    width = max([14] + [len(r["layer"]) + 2 for r in result.layers])
    mixed = len(kinds) > 1  # a kind column: the claims below are per kind
    say(f"{'layer':<{width}}{'kind    ' if mixed else ''}{head:>8}{'features':>9}{'acc':>8}{'clus/' + u:>8}{'size':>6}"
         f"{'noise/' + u:>9}{'no-clus':>8}{'SNR':>8}")
    for r in result.layers:
        kind = f"{r.get('unit_kind', 'filter'):<8}" if mixed else ""
        say(f"{r['layer']:<{width}}{kind}{r['units']:>8}{r['features']:>9}{r['accuracy']:>8.4f}"
             f"{_fmt(r.get('clusters_per_filter')):>8}{_fmt(r.get('cluster_size')):>6}"
             f"{_fmt(r.get('noise_per_filter')):>9}{_fmt(r.get('filters_without_cluster')):>8}"
             f"{_fmt(r.get('snr')):>8}")
    for line in claims.format_table(result.meta.get("claims") or []):
        say(line)


def _fmt(v) -> str:
    if v is None:
        return "-"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf"
    return f"{v:.2f}"
