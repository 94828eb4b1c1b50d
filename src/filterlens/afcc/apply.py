"""AFCC in memory: :func:`apply` dilutes a model by its units' cluster connections (METHOD.md stage 5).

``filterlens.afcc.apply(model, analysis, **settings)`` takes the model and the :class:`Analysis` of
``filterlens.analyze`` (its probe weights and label means give the clusters; its data, or the ``train``/
``test`` given, the retraining and the accuracies) and returns an :class:`~.result.AfccResult`. For a
range of consecutive analysed layers ``l_1 < ... < l_b``: the clusters of every layer at the threshold,
the masks of the diluted network (:mod:`.diluted`), accuracy before, masked and after masked retraining
(:mod:`.retrain`), ``random_draws`` random controls trained the same way (draw k seeded seed+k; mean and
sd reported), the same at the extra thresholds of the accuracy-against-dilution curve, and the physical
removal (:mod:`.removal`) with its cost (:mod:`.cost`). Every setting is a field of
:class:`~filterlens.config.Config` (the analysis' own, with ``settings`` over them): one default each,
the same from Python and from ``filterlens afcc``.

The frozen part of the network in front of the first trainable module is computed once and cached
(float32, exact) when augmentation is off and it fits the ``cache_budget``; otherwise every retraining
step streams through the whole diluted network.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import sfp
from ..capture import pooled_shape
from ..config import AfccSettings, Config, ProbeSettings, parse_bytes, parse_pool, parse_thresholds
from ..data import Data
from ..errors import FilterlensError
from ..inputs import as_data
from ..loaders import Feed
from ..models import list_layers, select_layers
from ..output import say
from ..precision import for_inference
from ..progress import progress_bar
from ..utils import keeps_global_state, resolve_device, seed_everything, use_threads
from .cost import count_macs, measure_latency
from .diluted import _check_consecutive, _first_trainable, apply_masks, build_diluted, make_masks, trainable_parameters
from .masks import random_masks
from .removal import prune, prune_support
from .result import AfccResult, total_dilution
from .retrain import TensorLoader, accuracy, retrain


def choose_layers(all_layers, spec, analysed: set):
    """The layers AFCC masks: ``spec`` (empty: the deepest analysed layer) among the analysed, consecutive."""
    have = [l for l in all_layers if l.name in analysed]
    if not have:
        raise FilterlensError("the analysis holds no layer of this model; analyse it again (filterlens analyze)")
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return [have[-1]]
    chosen = select_layers(all_layers, spec)
    missing = [l.name for l in chosen if l.name not in analysed]
    if missing:
        raise FilterlensError(f"layer '{missing[0]}' was not analysed (the analysis has "
                              f"{', '.join(l.name for l in have)}); choose among those or analyse again with "
                              "--layers including it")
    _check_consecutive(chosen, all_layers)
    return chosen


@keeps_global_state
def apply(model: torch.nn.Module, analysis, train=None, test=None, *, labels=None, config: Config | None = None,
          device=None, progress: bool | None = None, **settings) -> AfccResult:
    """AFCC of ``model`` by the clusters of ``analysis`` (see the module docstring).

    ``train``/``test`` (anything :func:`filterlens.analyze` takes): the data to retrain and measure on
    (default: the analysis' own). ``settings``: fields of :class:`Config` over the analysis' settings
    (``afcc_layers``, ``threshold``, ``retrain_epochs``, ``retrain_lr``, ``random_draws``,
    ``afcc_thresholds``, ``seed``, ...). The model is not modified.
    """
    cfg, data = _checked(model, analysis, (train, test, labels), config, settings)
    device = resolve_device(str(device) if device is not None else cfg.device)
    t_start = time.perf_counter()
    plan = _Plan(model, analysis, data, cfg, device)
    seed_everything(cfg.seed)
    show = cfg.progress if progress is None else progress
    main_clusters = plan.clusters_at(plan.threshold)
    trainable = trainable_parameters(plan.net0, make_masks(plan.net0, main_clusters))
    ctx = _Context(plan.net0, trainable, Feed(data, device, seed=cfg.seed, num_workers=cfg.num_workers), cfg, show)
    t0 = time.perf_counter()
    acc_before = ctx.accuracy(plan.net0)
    chosen = _variant(plan.net0, main_clusters, ctx, cfg, show)  # the main threshold's
    t_main = time.perf_counter() - t0
    accs = {"before": acc_before, "masked": chosen.afcc.acc_masked, "retrained": chosen.afcc.acc_retrained,
            "random_masked": chosen.random_mean("masked"), "random_retrained": chosen.random_mean("retrained"),
            "random_retrained_sd": chosen.random_sd("retrained"),
            "random_retrained_draws": chosen.random_accuracies("retrained"),
            "random_masked_draws": chosen.random_accuracies("masked"), "random_draws": cfg.random_draws,
            "probe": plan.probe_accuracy}
    t0 = time.perf_counter()
    curve = []
    for t in sorted(set(parse_thresholds(cfg.afcc_thresholds)) | {plan.threshold}):
        clusters = main_clusters if t == plan.threshold else plan.clusters_at(t)
        v = chosen if t == plan.threshold else _variant(plan.net0, clusters, ctx, cfg, show)
        curve.append({**_curve_row(t, v, clusters[plan.names[-1]], acc_before, cfg.random_draws),
                      "main": t == plan.threshold})
    t_curve = time.perf_counter() - t0
    t0 = time.perf_counter()
    removal = _removal(plan, chosen, ctx, accs, cfg, device)
    t_prune = time.perf_counter() - t0
    settings_used = {k: getattr(cfg, k) for k in ("retrain_epochs", "retrain_lr", "retrain_momentum",
                                                  "retrain_weight_decay", "retrain_batch_size", "retrain_augment",
                                                  "seed", "random_draws", "afcc_thresholds", "afcc_layers")}
    return AfccResult(
        layers=plan.names, threshold=plan.threshold, masks=chosen.afcc.masks, accuracy=accs, thresholds=curve,
        model=chosen.afcc.net, masked_model=chosen.afcc.masked_net, pruned_model=removal["net"],
        pruned=removal["info"], pruning_rows=removal["rows"],
        retrain=_retraining_record(cfg, ctx, chosen, trainable),
        analysis={"threshold": float(analysis.meta.get("sfp", {}).get("threshold", cfg.threshold)),
                  "normalise": cfg.normalise, "probe_pool": cfg.probe_pool, "probe_mode": cfg.probe_mode,
                  "sfp_hash": cfg.stage_hash("sfp")},
        settings=settings_used,
        timings={"main_s": t_main, "thresholds_s": t_curve, "pruning_s": t_prune,
                 "total_s": time.perf_counter() - t_start},
        meta={"spec": plan.spec, "data": data.describe(), "config": cfg.to_dict(),
              "title": f"AFCC: {analysis.meta.get('title', '')}, {plan.names[0]}"
                       + (f"..{plan.names[-1]}" if len(plan.names) > 1 else "")},
        pruned_masks=removal["masks"])


def _checked(model, analysis, given: tuple, config: Config | None, settings: dict) -> tuple[Config, Data]:
    """:func:`apply`'s inputs checked before any work (one line each): the model, the analysis (with its probe
    weights), the settings over the analysis' own, and the data (``given``: train, test and labels, or the
    analysis' own), paired with the model and the analysis (:func:`~filterlens.analysis.check_pair`). The
    settings' thread count is taken (the Python door restores the caller's)."""
    from ..analysis import check_pair, with_settings

    if not isinstance(model, torch.nn.Module):
        raise FilterlensError(f"model is a {type(model).__name__}; give the torch.nn.Module the analysis was made of")
    if not all(hasattr(analysis, k) for k in ("probes", "layers", "meta")):
        raise FilterlensError(f"analysis is a {type(analysis).__name__}; give what filterlens.analyze returned (or "
                              "filterlens.analysis.Analysis.load(run_dir))")
    cfg = with_settings(config or analysis.config, settings)
    use_threads(cfg.threads)
    if analysis.probes is None:
        raise FilterlensError("the analysis holds no probe weights and label means; load it with "
                              "Analysis.load(run_dir) from a run directory that has them")
    train, test, labels = given
    data = as_data(train, test, labels) if train is not None else getattr(analysis, "data", None)
    if data is None:
        raise FilterlensError("the analysis holds no data (it was loaded from a run directory); give train and test")
    check_pair(model, analysis, data)  # the weights it analysed, one score per label, its labels
    return cfg, data


def _retraining_record(cfg: AfccSettings, ctx: _Context, chosen: _Variant, trainable) -> dict:
    """How the diluted networks were retrained (results.json's ``afcc.retraining``): the settings, what is frozen
    and trained, the engine and precision, and the main and random variants' per-epoch histories."""
    return {"epochs": cfg.retrain_epochs, "lr": cfg.retrain_lr, "momentum": cfg.retrain_momentum,
            "weight_decay": cfg.retrain_weight_decay, "batch_size": cfg.retrain_batch_size,
            "augment": cfg.retrain_augment, "seed": cfg.seed, "random_draws": cfg.random_draws, "optimizer": "sgd",
            "nesterov": False, "schedule": "constant",
            "batch_norm": "eval mode: running statistics frozen; affine parameters of masked blocks trained",
            "masks": "re-applied (weight.mul_(mask)) after every optimiser step", "trainable": trainable,
            "engine": ctx.engine, "engine_note": ctx.note, "history": chosen.afcc.history,
            "precision": ctx.precision.record(), "random_history": chosen.random[0].history}


def check_between(net) -> None:
    """Refuse, in one line, a range of a diluted network whose consecutive layers no conv (or Linear) joins."""
    names = net.info["layers"]
    for prev, cur in zip(names, names[1:]):
        if cur not in net.info["convs"] and cur not in (net.info.get("linears") or {}):
            nodes = {prev, cur} & set(net.info.get("nodes") or {})
            what = (f"no one Linear reads the nodes of '{prev}' and makes those of '{cur}'" if len(nodes) == 2
                    else f"'{prev}' and '{cur}' are not both conv layers nor both FC node layers" if nodes
                    else f"its conv feeding '{cur}' cannot be located")
            raise FilterlensError(f"masks between '{prev}' and '{cur}' are not supported for this model ({what}; "
                                  "supported: filterlens VGG, torchvision VGG-BN, consecutive hidden FC layers); use "
                                  f"--afcc-layers {names[-1]} for the FC mask only")


def check_range(model, layers, num_labels: int, input_size, cfg: ProbeSettings) -> None:
    """Before any work: the AFCC range ``layers`` (:class:`~filterlens.models.Layer`, consecutive) can be masked
    on ``model`` (its initial weights will do): a diluted network is built on it and :func:`check_between` asked."""
    if len(layers) < 2:
        return
    b = layers[-1]
    shape = pooled_shape(b.shape, parse_pool(cfg.probe_pool), b.unit_kind)
    check_between(build_diluted(model, [l.name for l in layers], torch.zeros(num_labels, *shape), input_size,
                                cfg.probe_pool, tokens=cfg.tokens))


class _Plan:
    """The layers AFCC masks, the diluted network built on them, and their clusters at any threshold."""

    def __init__(self, model, analysis, data, cfg: AfccSettings, device):
        probes = analysis.probes
        weights = {r.name: r.weight for r in probes.layers}
        means = {r.name: r.label_means for r in probes.layers}
        self.input_size, self.normalise = data.input_shape, cfg.normalise
        self.threshold = cfg.threshold
        model.to(device)
        all_layers = list_layers(model, self.input_size, "blocks", list(weights), cfg.tokens)
        chosen = choose_layers(all_layers, cfg.afcc_layers, set(weights))
        self.names = [l.name for l in chosen]
        b = self.names[-1]
        if tuple(weights[b].shape[0:1]) != (data.num_labels,):
            raise FilterlensError(f"the analysis has {weights[b].shape[0]} labels but the data {data.num_labels}; give "
                                  "the data the analysis was made on")
        self.spec = analysis.meta.get("spec")
        self.net0 = build_diluted(model, self.names, weights[b], self.input_size, cfg.probe_pool, self.spec, cfg.tokens)
        check_between(self.net0)
        self.weights, self.means = weights, means
        self.probe_accuracy = next((r.get("accuracy") for r in analysis.layers if r["layer"] == b), None)

    def clusters_at(self, t: float) -> dict:
        return {n: sfp.analyze_layer(self.weights[n].double(), self.means[n], threshold=t,
                                     normalise=self.normalise).clusters_ for n in self.names}


class _Context:
    """Batches for one AFCC: train/test at the first trainable trunk position, cached when possible."""

    def __init__(self, net, names, feed: Feed, cfg: AfccSettings, progress):
        self.feed, self.cfg = feed, cfg
        self.start = _first_trainable(net, names)
        # the frozen trunk's passes (the cache, the whole network's accuracies) in bfloat16 where the CPU has it;
        # the retraining itself in float32 (precision.py)
        self.precision = for_inference(feed.device, cfg.amp, net)
        self.test_full = feed.test
        n = len(feed.data.train) + len(feed.data.test)
        with torch.no_grad():
            x0, _ = next(iter(feed.test_batches(1)))
            per = net.prefix(x0, self.start).numel()
        need, budget = 4 * per * n, parse_bytes(cfg.cache_budget)
        self.engine = "cache"
        if cfg.retrain_augment:
            self.engine, self.note = "stream", "augmentation on: every retraining step streams through the network"
        elif need > budget:
            self.engine = "stream"
            self.note = (f"activation cache would need {need / 2**20:.0f} MiB > cache budget {budget / 2**20:.0f} MiB; "
                         "streaming")
        else:
            self.note = f"frozen trunk[:{self.start}] computed once and cached (float32, {need / 2**20:.1f} MiB)"
        if self.engine == "cache":
            self.train_x, self.train_y = self._cache(net, feed.train, "train", progress)
            self.test_x, self.test_y = self._cache(net, feed.test, "test", progress)
        else:
            say(f"note: {self.note}")

    def _cache(self, net, loader, split, progress):
        hs, ys = [], []
        p = self.precision
        with torch.no_grad(), p.running(net), p.autocast():
            for x, y in progress_bar(loader, progress, desc=f"cache {split}"):
                hs.append(net.prefix(p.batch(x), self.start).float().contiguous())
                ys.append(y)
        return torch.cat(hs), torch.cat(ys)

    def train_loader(self):
        if self.engine == "cache":
            return (TensorLoader(self.train_x, self.train_y, self.cfg.retrain_batch_size, True, self.cfg.seed),
                    self.start)
        return self.feed.shuffled(self.cfg.retrain_batch_size, self.cfg.retrain_augment), 0

    def accuracy(self, net) -> float:
        if self.engine == "cache":
            return accuracy(net, TensorLoader(self.test_x, self.test_y, 1024, False), self.start, self.precision)
        return accuracy(net, self.test_full, 0, self.precision)

    def accuracy_full(self, net) -> float:
        return accuracy(net, self.test_full, 0, self.precision)


@dataclass
class _Draw:
    """One set of masks applied to a copy of the network: its accuracy masked and after retraining, the retraining's
    history, and the networks (kept for the cluster masks and the first random draw only)."""

    masks: list
    acc_masked: float
    acc_retrained: float
    history: list
    masked_net: Any = None
    net: Any = None


@dataclass
class _Variant:
    """The cluster masks of one threshold (``afcc``) and ``random`` draws of the control: per unit the same number of
    kept connections, placed at random."""

    afcc: _Draw
    random: list[_Draw]

    def random_accuracies(self, what: str) -> list[float]:
        """Every random draw's accuracy ``masked`` or ``retrained``."""
        return [getattr(d, f"acc_{what}") for d in self.random]

    def random_mean(self, what: str) -> float:
        """The random draws' mean accuracy ``masked`` or ``retrained``."""
        return statistics.fmean(self.random_accuracies(what))

    def random_sd(self, what: str) -> float | None:
        """The random draws' standard deviation of the accuracy ``masked`` or ``retrained`` (None for one draw)."""
        vals = self.random_accuracies(what)
        return statistics.stdev(vals) if len(vals) > 1 else None


def _variant(net0, clusters, ctx: _Context, cfg: AfccSettings, progress) -> _Variant:
    """Masks from ``clusters``; accuracy masked and retrained; the same for ``random_draws`` random controls.

    Random draw k places the connections with seed ``seed + k``; every draw is retrained with the same data
    order (``seed``). The networks are kept for the cluster masks and for the first random draw.
    """
    masks = make_masks(net0, clusters)

    def draw(mk, keep: bool) -> _Draw:
        net = apply_masks(copy.deepcopy(net0), mk)
        acc_masked = ctx.accuracy(net)
        masked_net = copy.deepcopy(net) if keep else None
        history: list = []
        if cfg.retrain_epochs > 0:
            loader, start = ctx.train_loader()
            history = retrain(net, mk, loader, cfg.retrain_epochs, cfg.retrain_lr, cfg.retrain_momentum,
                              cfg.retrain_weight_decay, start, cfg.seed, progress)
        acc_retrained = ctx.accuracy(net) if cfg.retrain_epochs > 0 else acc_masked
        return _Draw(mk, acc_masked, acc_retrained, history, masked_net, net if keep else None)

    afcc = draw(masks, keep=True)  # first, then the draws in order, as the results have always been made
    return _Variant(afcc, [draw(random_masks(masks, cfg.seed + k), keep=k == 0) for k in range(cfg.random_draws)])


def _curve_row(t: float, v: _Variant, deepest_clusters, acc_before: float, draws: int) -> dict:
    masks = v.afcc.masks
    return {"threshold": t, "dilution": total_dilution(masks), "fc_dilution": total_dilution(masks, "fc"),
            "conv_dilution": total_dilution(masks, "conv"),
            "linear_dilution": total_dilution(masks, "linear"), "acc_before": acc_before,
            "acc_masked": v.afcc.acc_masked, "acc_retrained": v.afcc.acc_retrained,
            "acc_random_masked": v.random_mean("masked"), "acc_random_retrained": v.random_mean("retrained"),
            "acc_random_retrained_sd": v.random_sd("retrained"),
            "acc_random_retrained_draws": " ".join(f"{a:.4f}" for a in v.random_accuracies("retrained")),
            "random_draws": draws,
            "filters_without_cluster": sum(1 for c in deepest_clusters if not c) / max(len(deepest_clusters), 1)}


def _removal(plan: _Plan, chosen: _Variant, ctx: _Context, accs: dict, cfg: AfccSettings, device) -> dict:
    """Physical removal of the units whose outgoing connections are all masked, with its cost."""
    from .export import MASK_NOTE

    ok, reason = prune_support(plan.net0)
    info: dict = {"supported": ok, "note": MASK_NOTE}
    if not ok:
        info["reason"] = f"not supported: {reason}"
        return {"net": None, "masks": [], "rows": [], "info": info}
    size = plan.input_size
    try:
        pruned0, _, filt = prune(chosen.afcc.masked_net, chosen.afcc.masks)
        pruned_net, pruned_masks, _ = prune(chosen.afcc.net, chosen.afcc.masks)
    except FilterlensError as exc:  # the dependency graph refused (a residual reader): the masks stand, no removal
        info.update(supported=False,
                    reason=f"not supported: {str(exc).removeprefix('physical removal is not supported here: ')}")
        return {"net": None, "masks": [], "rows": [], "info": info}
    x = torch.randn(8, *size, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    with torch.no_grad():
        diff = float((chosen.afcc.masked_net(x) - pruned0(x)).abs().max())
    acc_pruned = ctx.accuracy_full(pruned0)
    acc_pruned_retrained = ctx.accuracy_full(pruned_net) if cfg.retrain_epochs > 0 else acc_pruned
    models = {"original": plan.net0, "masked": chosen.afcc.masked_net, "pruned": pruned0}
    lat = measure_latency(models, size, cfg.latency_batch, cfg.latency_repeats, seed=cfg.seed)
    cost = {k: count_macs(m, size) for k, m in models.items()}
    acc_of = {"original": accs["before"], "masked": accs["masked"], "pruned": acc_pruned}
    notes = {"original": "backbone up to the layer + probe FC, dense, unmasked",
             "masked": "same dense shapes, masked weights are zeros (no speed-up)",
             "pruned": "units with all outgoing weights masked physically removed"}
    rows = [{"model": k, **cost[k], "latency_ms": lat[k]["median_ms"], "latency_p25_ms": lat[k]["p25_ms"],
             "latency_p75_ms": lat[k]["p75_ms"], "accuracy": acc_of[k], "note": notes[k]} for k in models]
    rows.append({"model": "pruned_retrained", **count_macs(pruned_net, size), "latency_ms": lat["pruned"]["median_ms"],
                 "latency_p25_ms": lat["pruned"]["p25_ms"], "latency_p75_ms": lat["pruned"]["p75_ms"],
                 "accuracy": acc_pruned_retrained,
                 "note": "the pruned structure made from the retrained masked network (same shapes as pruned; latency "
                         "is the pruned one's)"})
    info.update({
        "filters": filt, **{k: {**cost[k], "latency_ms": lat[k]["median_ms"]} for k in models},
        "accuracy": {"original": accs["before"], "masked": accs["masked"], "pruned": acc_pruned,
                     "retrained_masked": accs["retrained"], "pruned_retrained": acc_pruned_retrained},
        "params_ratio": cost["pruned"]["params"] / max(cost["original"]["params"], 1),
        "macs_ratio": cost["pruned"]["macs"] / max(cost["original"]["macs"], 1),
        "speedup": lat["pruned"]["ratio_to_first"],
        "speedup_of_medians": lat["original"]["median_ms"] / max(lat["pruned"]["median_ms"], 1e-12),
        "max_abs_diff_masked_vs_pruned": diff,
        "latency": {"device": "cpu", "batch": cfg.latency_batch, "repeats": cfg.latency_repeats,
                    "threads": lat["original"]["threads"],
                    "statistic": "median ms; speedup = median over repeats of original/pruned time in the same repeat",
                    "detail": lat}})
    return {"net": pruned_net, "masks": pruned_masks, "rows": rows, "info": info}
