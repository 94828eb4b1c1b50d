"""Stages 2 and 3 on a trained model: layer accuracies, then every filter's clusters, noise and SNR.

``analyze(model, data, cfg)`` is the library entry point; ``analyze_run(run_dir)``
does the same for a run directory written by ``filterlens train`` and writes
``layers.csv``, ``filters.csv``, ``results.json``, ``probes.pt`` (every layer's FC
weight, (L, C, H, W)), ``label_means.pt`` (per-label mean maps of the test set)
and the plots.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist_
from . import sfp
from .config import Config, parse_heatmaps, parse_thresholds
from .data import Data, check_labels_present
from .errors import FilterlensError, closest
from .files import read_json, torch_save, write_csv, write_json
from .models import resolve_layers
from .probes import ProbeResult, train_probes
from .report.plots import plot_filter_matrix, plot_layers
from .folders import make_dirs, mark
from .rundir import HEATMAP, RunDir
from .utils import environment, resolve_device, seed_everything

RESULTS_VERSION = 1
LAYER_COLUMNS = ["layer", "index", "unit_kind", "units", "features", "accuracy", "train_accuracy",
                 "clusters_per_filter", "clusters_per_filter_all", "cluster_size", "noise_per_filter",
                 "noise_per_filter_all", "filters_without_cluster", "signal_per_filter_all", "snr",
                 "vote_fraction"]
SUMMARY_KEYS = ["clusters_per_filter", "clusters_per_filter_all", "cluster_size", "noise_per_filter",
                "noise_per_filter_all", "filters_without_cluster", "signal_per_filter_all", "snr"]
FILTER_COLUMNS = ["layer", "unit", "unit_kind", "num_clusters", "clusters", "signal", "noise", "preferred_label",
                  "vote_fraction"]  # one row per unit (filter or head); the file keeps its name, filters.csv


class Analysis:
    """The result of :func:`analyze`: one row per layer, one per filter, and the raw arrays."""

    def __init__(self, layers: list[dict], filters: list[dict], probes: ProbeResult | None, sfp_layers: dict,
                 meta: dict):
        self.layers = layers
        self.filters = filters
        self.probes = probes
        self.sfp = sfp_layers  # layer name -> fitted sfp.LayerSFP
        self.meta = meta

    def to_frame(self, table: str = "layers"):
        import pandas as pd

        return pd.DataFrame(self.layers if table == "layers" else self.filters)

    def save(self, directory) -> list[str]:
        """Write the tables, plots, heatmaps and results.json (last) into ``directory``; returns the file names
        (relative to it) that were written."""
        d = RunDir.validate(directory)
        RunDir(d).check_folder()  # a folder filterlens made, or a new or empty one: nothing of the user's is replaced
        make_dirs(d)
        mark(d, "run")
        written = [write_csv(d / "layers.csv", self.layers, LAYER_COLUMNS),
                   write_csv(d / "filters.csv", self.filters, FILTER_COLUMNS)]
        if self.probes is not None:
            written += save_probe_result(self.probes, d, self.meta.get("data", {}),
                                         Config.from_dict(self.meta["config"]).stage_hash("probes"))
        # a new analysis replaces results.json whole: later stages (AFCC) add their entries again
        results = {"version": RESULTS_VERSION, **self.meta, "layers": self.layers}
        for name in ("thresholds.csv", "bootstrap.csv"):
            if (d / name).exists():  # from an earlier analysis with other settings
                (d / name).unlink()
        if self.meta.get("thresholds"):
            written.append(write_csv(d / "thresholds.csv", self.meta["thresholds"]))
        if self.meta.get("bootstrap"):
            written.append(write_csv(d / "bootstrap.csv", self.meta["bootstrap"]["intervals"]))
        written += self.plot(d)
        heat = self.heatmaps(d)
        written += heat
        results["heatmaps"] = [str(p.relative_to(d)) for p in heat]
        written.append(write_json(d / "results.json", results))
        return [str(Path(p).relative_to(d)) for p in written]

    def plot(self, directory) -> list[Path]:
        return plot_layers(self.layers, Path(directory), title=self.meta.get("title", ""))

    def heatmaps(self, directory) -> list[Path]:
        """PNG heatmaps (raw normalised and binarised, labels reordered by cluster) of chosen filters."""
        spec = self.meta.get("config", {}).get("heatmaps", "auto")
        if spec == "none" or not self.sfp:
            return []
        names = list(self.sfp)
        picks: list[tuple[str, int]] = []
        if spec == "auto":
            for name in dict.fromkeys([names[0], names[len(names) // 2], names[-1]]):
                est = self.sfp[name]
                order = np.argsort(-np.asarray(est.signal_), kind="stable")[:3]
                picks += [(name, int(c)) for c in order]
        else:  # checked against the analysed layers before any work (check_heatmaps)
            picks = parse_heatmaps(spec)
        labels = self.meta.get("label_names")
        folder = Path(directory) / "heatmaps"
        if folder.is_dir():  # drop the previous analysis' pictures (they may show other filters or thresholds), not
            for old in folder.glob("*.png"):  # the user's: only filterlens' names, <layer>-filter3.png
                if HEATMAP.match(old.name):
                    old.unlink()
        out = []
        for layer, c in picks:
            est = self.sfp[layer]
            kind = next((r.get("unit_kind", "filter") for r in self.layers if r["layer"] == layer), "filter")
            path = Path(directory) / "heatmaps" / f"{layer}-{kind}{c}.png"
            plot_filter_matrix(est.matrix(c), est.threshold, est.clusters_[c], labels, path,
                               title=f"{layer} {kind} {c}", normalise=est.normalise)
            out.append(path)
        return out

    @classmethod
    def load(cls, directory) -> "Analysis":
        import csv

        from .results import load_run

        run = load_run(directory)  # the checks of filterlens report: checksums, shapes
        meta = dict(run.results)
        return cls(meta.pop("layers", []), run.table("filters"), None, {}, meta)


def analyze(model: torch.nn.Module, data: Data, cfg: Config | None = None, device=None, cache_dir=None,
            progress: bool | None = None, echo=print, **settings) -> Analysis:
    """Layer accuracies (stage 2) and single-filter performance (stage 3) of ``model`` on ``data``.

    ``settings`` override fields of ``cfg`` (e.g. ``layers="last:3"``, ``threshold=0.4``).
    The model is not modified; its train/eval mode is restored.
    """
    check_analysis_inputs(model, data, cfg)
    cfg = (cfg or Config()).replace(**settings) if settings else (cfg or Config())
    cfg.validate()
    pr = probe_stage(model, data, cfg, device=device, cache_dir=cache_dir, progress=progress, echo=echo)
    return sfp_stage(pr, data.describe(), cfg)


def check_analysis_inputs(model, data, cfg) -> None:
    """The types :func:`analyze` takes, refused in one line before any work."""
    from .checks import of_type

    of_type(model, torch.nn.Module, "model", "a torch.nn.Module (the network to analyse)")
    of_type(data, Data, "data", "a filterlens.data.Data (e.g. load_data('digits'))")
    of_type(cfg, (Config, type(None)), "cfg", "a filterlens.config.Config or None (settings may also be keywords)")


def probe_stage(model: torch.nn.Module, data: Data, cfg: Config, device=None, cache_dir=None,
                progress: bool | None = None, echo=print) -> ProbeResult:
    """Stage 2: select the layers and train every layer's FC probe (one capture pass)."""
    check_labels_present(data)
    seed_everything(cfg.seed)
    if device is None:  # under torchrun: this rank's device
        device = dist_.setup(cfg.device) or resolve_device(cfg.device)
    else:
        device = resolve_device(str(device))
    model.to(device)
    show = cfg.progress if progress is None else progress
    t0 = time.perf_counter()
    layers = resolve_layers(model, (data.in_channels, data.image_size, data.image_size), cfg.layers, cfg.tokens)
    check_heatmaps(cfg.heatmaps, layers)
    cache_dir = cache_dir if cache_dir is not None else cfg.cache_dir  # checked by train_probes before any work
    pr = train_probes(model, layers, data, cfg, device=device, cache_dir=cache_dir, progress=show, echo=echo,
                      keep_fields=cfg.bootstrap > 0)
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
            raise FilterlensError(f"heatmap '{layer}:{unit}' names a layer that is not analysed{closest(layer, by_name)}; "
                                  f"analysed layers: {', '.join(by_name)}")
        if unit >= by_name[layer].filters:
            raise FilterlensError(f"heatmap '{layer}:{unit}': layer '{layer}' has {by_name[layer].filters} units "
                                  f"(0..{by_name[layer].filters - 1})")


def sfp_stage(pr: ProbeResult, data_meta: dict, cfg: Config) -> Analysis:
    """Stage 3 from stage 2's outputs: every filter's matrix, clusters, noise; every layer's SNR."""
    t0 = time.perf_counter()
    rows, filter_rows, fitted, sweep_rows, boot_rows = [], [], {}, [], []
    thresholds = parse_thresholds(cfg.thresholds)
    label_names = data_meta["label_names"]
    n_test = float(pr.label_counts.sum())
    for r in pr.layers:
        est = sfp.analyze_layer(r.weight.double(), r.label_means, threshold=cfg.threshold, normalise=cfg.normalise)
        fitted[r.name] = est
        votes = r.votes.numpy()
        pref = np.asarray(est.preferred_label_)
        frac = votes[np.arange(len(pref)), pref] / max(n_test, 1.0)
        row = {"layer": r.name, "index": r.index, "unit_kind": r.unit_kind, "units": r.filters, "features": r.features,
               "accuracy": r.accuracy, "train_accuracy": r.train_accuracy}
        summary = est.summary()
        row.update({k: summary[k] for k in LAYER_COLUMNS if k in summary})
        row["vote_fraction"] = float(frac.mean())
        rows.append(row)
        if thresholds:
            for srow in est.summaries(thresholds):
                sweep_rows.append({"layer": r.name, **{k: srow[k] for k in ["threshold"] + SUMMARY_KEYS if k in srow}})
        if cfg.bootstrap > 0:
            if r.fields is None:
                from .errors import FilterlensError

                raise FilterlensError("bootstrap needs the per-sample test fields; rerun the probes stage with "
                                      f"bootstrap = {cfg.bootstrap}")
            intervals = sfp.bootstrap_summary(r.fields.double().numpy(), pr.test_labels.numpy(),
                                              len(label_names), cfg.bootstrap, cfg.seed, threshold=cfg.threshold,
                                              normalise=cfg.normalise)
            for key in SUMMARY_KEYS:
                if key in intervals:
                    lo, hi = intervals[key]
                    boot_rows.append({"layer": r.name, "metric": key, "estimate": row.get(key, summary.get(key)),
                                      "low": lo, "high": hi})
        for fr, vf in zip(est.filter_table(r.name, label_names), frac):
            fr["unit"] = fr.pop("filter")
            fr["unit_kind"] = r.unit_kind
            fr["vote_fraction"] = float(vf)
            filter_rows.append(fr)
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
                   "pool": cfg.probe_pool, "augment": pr.recipe.augment},
        "sfp": {"threshold": cfg.threshold, "normalise": cfg.normalise},
        "timings": {"probes_s": pr.timings.get("stage_s", pr.timings.get("total_s")), "sfp_s": t_sfp},
        "title": f"{cfg.model} on {data_meta.get('dataset', '?')} ({len(label_names)} labels)",
        "thresholds": sweep_rows,
        "bootstrap": {"n": cfg.bootstrap, "level": 0.95, "intervals": boot_rows} if cfg.bootstrap else None,
    }
    return Analysis(rows, filter_rows, pr, fitted, meta)


def save_probe_result(pr: ProbeResult, directory, data_meta: dict, hash_: str = "") -> list[Path]:
    """Stage 2's outputs: probes.pt (FC weights), label_means.pt (means, counts, votes[, fields]), probes.json."""
    d = Path(directory)
    written = [torch_save(d / "probes.pt", {r.name: r.weight for r in pr.layers})]
    blob = {"means": {r.name: r.label_means for r in pr.layers}, "counts": pr.label_counts,
            "votes": {r.name: r.votes for r in pr.layers}}
    if pr.layers and pr.layers[0].fields is not None:
        blob["fields"] = {r.name: r.fields for r in pr.layers}
        blob["test_labels"] = pr.test_labels
    if pr.layers and pr.layers[0].top_indices is not None:
        blob["top"] = {r.name: {"values": r.top_values, "indices": r.top_indices} for r in pr.layers}
    written.append(torch_save(d / "label_means.pt", blob))
    written.append(write_json(d / "probes.json", {
        "hash": hash_, "mode": pr.mode, "engine": pr.engine, "engine_choice": pr.engine_plan,
        "recipe": asdict(pr.recipe), "note": pr.note,
        "forward_passes": pr.forward_passes, "timings": pr.timings, "data": data_meta,
        "layers": [{"name": r.name, "index": r.index, "filters": r.filters, "unit_kind": r.unit_kind,
                    "shape": list(r.shape),
                    "layer_shape": list(r.layer_shape), "features": r.features, "accuracy": r.accuracy,
                    "train_accuracy": r.train_accuracy} for r in pr.layers]}))
    return written


def load_probe_result(directory) -> tuple[ProbeResult, dict]:
    """Read stage 2's outputs back (see :func:`save_probe_result`); returns (result, data_meta)."""
    from .probes import LayerProbeResult, ProbeRecipe

    d = Path(directory)
    RunDir(d).verify(*PROBE_FILES)
    meta = read_json(d / "probes.json")
    try:
        weights = torch.load(d / "probes.pt", map_location="cpu", weights_only=True)
        blob = torch.load(d / "label_means.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
        raise FilterlensError(f"probes.pt/label_means.pt in '{d}' cannot be read ({type(exc).__name__}); run the "
                              "probes stage again (filterlens analyze, or filterlens run --from probes)") from None
    fields = blob.get("fields")
    layers = [LayerProbeResult(m["name"], m["index"], m["filters"], tuple(m["shape"]), tuple(m["layer_shape"]),
                               m["features"], m["accuracy"], m["train_accuracy"], weights[m["name"]],
                               blob["means"][m["name"]], blob["votes"][m["name"]],
                               fields[m["name"]] if fields is not None else None, m.get("unit_kind", "filter"),
                               *_saved_top(blob, m["name"]))
              for m in meta["layers"]]
    pr = ProbeResult(layers, meta["mode"], meta["engine"], ProbeRecipe(**meta["recipe"]), blob["counts"],
                     meta["timings"], meta["forward_passes"], meta["note"], blob.get("test_labels"),
                     meta.get("engine_choice"))
    return pr, meta["data"]


PROBE_FILES = ("probes.pt", "label_means.pt", "probes.json")


def _saved_top(blob: dict, name: str):
    top = (blob.get("top") or {}).get(name)
    return (top["values"], top["indices"]) if top else (None, None)


def analyze_run(run_dir, overrides: dict | None = None, echo=print) -> Analysis:
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
        model, cfg, data, _ = load_trained(run_dir)
        if overrides:
            cfg = cfg.replace(**overrides)
        cfg.validate()
        device = dist_.setup(cfg.device)
        if not dist_.is_main():
            echo = _silent
        pr = probe_stage(model, data, cfg, device=device, echo=echo, cache_dir=cfg.cache_dir or rd.file("cache"))
        result = sfp_stage(pr, data.describe(), cfg)
        result.meta["processes"] = dist_.world_size()
        if dist_.is_main():
            rd.claim(cfg, stage="train")  # config.json changes only once the analysis succeeded
            result.probes = None
            rd.record("probes", cfg.stage_hash("probes"),
                      [str(p.relative_to(rd.path)) for p in save_probe_result(pr, rd.path, data.describe(),
                                                                              cfg.stage_hash("probes"))],
                      pr.timings.get("stage_s"))
            write_sfp_result(rd, cfg, result)
            result.probes = pr
        dist_.barrier()
    return result


def write_sfp_result(rd: RunDir, cfg: Config, result: Analysis) -> list[str]:
    """Stage 3's files in the run directory (with the training summary), recorded in stages.json."""
    if rd.exists("train.json"):
        rd.verify("train.json")
        train = rd.read_json("train.json")
        result.meta["train"] = {k: v for k, v in train.items() if k != "history"} if isinstance(train, dict) else None
    files = result.save(rd.path)
    rd.record("sfp", cfg.stage_hash("sfp"), files, result.meta["timings"].get("sfp_s"))
    return files


def _silent(*args, **kwargs) -> None:
    """The echo of ranks other than 0."""


def print_table(result: Analysis, echo=print) -> None:
    """The layer table, as the CLI prints it."""
    pr = result.meta["probes"]
    echo(f"{result.meta['title']}; probes: {pr['mode']} mode, {pr['engine']} engine, "
         f"{pr['forward_passes']} forward pass(es); threshold {result.meta['sfp']['threshold']}")
    kind = {r.get("unit_kind", "filter") for r in result.layers}
    head = "heads" if kind == {"head"} else "filters" if kind == {"filter"} else "units"
    u = head[0]
    width = max([14] + [len(r["layer"]) + 2 for r in result.layers])
    echo(f"{'layer':<{width}}{head:>8}{'features':>9}{'acc':>8}{'clus/' + u:>8}{'size':>6}{'noise/' + u:>9}"
         f"{'no-clus':>8}{'SNR':>8}")
    for r in result.layers:
        echo(f"{r['layer']:<{width}}{r['units']:>8}{r['features']:>9}{r['accuracy']:>8.4f}"
             f"{_fmt(r.get('clusters_per_filter')):>8}{_fmt(r.get('cluster_size')):>6}"
             f"{_fmt(r.get('noise_per_filter')):>9}{_fmt(r.get('filters_without_cluster')):>8}"
             f"{_fmt(r.get('snr')):>8}")


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
