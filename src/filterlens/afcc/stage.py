"""AFCC on an analysed run directory (``filterlens afcc`` and the afcc stage of ``filterlens run``).

For a range of consecutive analysed layers ``l_1 < ... < l_b``: the clusters of every layer at
the threshold (:mod:`filterlens.sfp`), the masks (:mod:`.masks`) of the diluted network
(:mod:`.diluted`), accuracy before, masked and after masked retraining (:mod:`.retrain`),
``random_draws`` random controls trained the same way (draw k seeded seed+k; mean and sd
reported: one draw's accuracy varies by several points with its placement), the same at the
extra thresholds of the accuracy-against-dilution curve, the physical removal (:mod:`.removal`)
with its cost (:mod:`.cost`), and the files (:mod:`.export`, CSV tables, ``afcc.png``, the
``afcc`` and ``afcc_pruned`` entries of ``results.json``).

The frozen part of the network in front of the first trainable module is computed once and
cached (float32, exact) when augmentation is off and it fits the run's ``cache_budget``;
otherwise every retraining step streams through the whole diluted network.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Sequence

import torch

from .. import sfp
from ..config import Config, parse_bytes, parse_thresholds
from ..data import make_loader
from ..errors import FilterlensError
from ..files import write_csv, write_json
from ..models import list_layers, select_layers
from ..progress import progress_bar
from ..report.plots import plot_afcc
from ..rundir import RunDir
from ..train import load_trained
from ..utils import environment, resolve_device, seed_everything
from .cost import count_macs, measure_latency
from .diluted import _check_consecutive, _first_trainable, apply_masks, build_diluted, make_masks, trainable_parameters
from .export import FORMAT_VERSION, MASK_NOTE, save
from .masks import connections, random_masks
from .removal import prune, prune_support
from .retrain import TensorLoader, accuracy, retrain

AFCC_COLUMNS = ["layer", "kind", "prev_layer", "param", "threshold", "dilution", "kept", "total",
                "connections_kept", "connections_total", "filters", "filters_without_connection",
                "acc_before", "acc_masked", "acc_retrained", "acc_random_masked", "acc_random_retrained",
                "acc_random_retrained_sd", "random_draws", "probe_accuracy"]
THRESHOLD_COLUMNS = ["threshold", "dilution", "fc_dilution", "conv_dilution", "acc_before", "acc_masked",
                     "acc_retrained", "acc_random_masked", "acc_random_retrained", "acc_random_retrained_sd",
                     "acc_random_retrained_draws", "random_draws", "filters_without_cluster"]
PRUNING_COLUMNS = ["model", "params", "params_nonzero", "macs", "macs_nonzero", "latency_ms", "latency_p25_ms",
                   "latency_p75_ms", "accuracy", "note"]


def choose_layers(all_layers, spec, analysed: set):
    have = [l for l in all_layers if l.name in analysed]
    if not have:
        raise FilterlensError("probes.pt holds no layer of this run's model; run filterlens analyze --run-dir DIR again")
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        return [have[-1]]
    chosen = select_layers(all_layers, spec)
    missing = [l.name for l in chosen if l.name not in analysed]
    if missing:
        raise FilterlensError(f"layer '{missing[0]}' was not analysed (probes.pt has {', '.join(l.name for l in have)}); "
                              "choose among those or run filterlens analyze --layers including it")
    _check_consecutive(chosen, all_layers)
    return chosen


class _Context:
    """Data for one AFCC run: train/test batches at the first trainable trunk position (cached when possible)."""

    def __init__(self, net, names, data, device, batch_size, augment, seed, budget, progress, echo):
        self.data, self.device, self.batch_size, self.augment, self.seed = data, device, batch_size, augment, seed
        self.start = _first_trainable(net, names)
        test = make_loader(data, "test", 256, device=device)
        self.test_full = test
        n = len(data.train) + len(data.test)
        with torch.no_grad():
            x0, _ = next(iter(make_loader(data, "test", 1, device=device)))
            per = net.prefix(x0, self.start).numel()
        need = 4 * per * n
        self.engine = "cache"
        if augment:
            self.engine, self.note = "stream", "augmentation on: every retraining step streams through the network"
        elif need > budget:
            self.engine = "stream"
            self.note = (f"activation cache would need {need / 2**20:.0f} MiB > cache budget {budget / 2**20:.0f} MiB; "
                         "streaming")
        else:
            self.note = (f"frozen trunk[:{self.start}] computed once and cached (float32, {need / 2**20:.1f} MiB)")
        if self.engine == "cache":
            def cache(split):
                hs, ys = [], []
                loader = make_loader(data, split, 256, device=device)
                with torch.no_grad():
                    for x, y in progress_bar(loader, progress, desc=f"cache {split}"):
                        hs.append(net.prefix(x, self.start).float())
                        ys.append(y)
                return torch.cat(hs), torch.cat(ys)

            self.train_x, self.train_y = cache("train")
            self.test_x, self.test_y = cache("test")
        else:
            echo(f"note: {self.note}")

    def train_loader(self):
        if self.engine == "cache":
            return TensorLoader(self.train_x, self.train_y, self.batch_size, True, self.seed), self.start
        return make_loader(self.data, "train", self.batch_size, train=True, seed=self.seed, device=self.device,
                           augment=self.augment), 0

    def accuracy(self, net) -> float:
        if self.engine == "cache":
            return accuracy(net, TensorLoader(self.test_x, self.test_y, 1024, False), self.start)
        return accuracy(net, self.test_full, 0)

    def accuracy_full(self, net) -> float:
        return accuracy(net, self.test_full, 0)


def _variant(net0, clusters, ctx, settings, progress) -> dict:
    """Masks from ``clusters``; accuracy masked and retrained; the same for ``random_draws`` random controls.

    Random draw k places the connections with seed ``seed + k``; every draw is retrained with
    the same data order (``seed``). ``acc_random_*`` are the means over the draws (the spread is
    in ``acc_random_*_draws``); ``random_masks``/``random_net`` are the first draw's.
    """
    masks = make_masks(net0, clusters)
    out = {"masks": masks}
    draws = [("", masks)] + [(f"random{k}_", random_masks(masks, settings["seed"] + k))
                             for k in range(settings["random_draws"])]
    for tag, mk in draws:
        net = apply_masks(copy.deepcopy(net0), mk)
        out[f"acc_{tag}masked"] = ctx.accuracy(net)
        out[f"{tag}masked_net"] = copy.deepcopy(net) if tag in ("", "random0_") else None
        if settings["epochs"] > 0:
            loader, start = ctx.train_loader()
            out[f"{tag}history"] = retrain(net, mk, loader, settings["epochs"], settings["lr"], settings["momentum"],
                                           settings["weight_decay"], start, settings["seed"], progress)
            out[f"acc_{tag}retrained"] = ctx.accuracy(net)
        else:
            out[f"{tag}history"] = []
            out[f"acc_{tag}retrained"] = out[f"acc_{tag}masked"]
        out[f"{tag}net"] = net if tag in ("", "random0_") else None
        out[f"{tag}masks"] = mk
    n = settings["random_draws"]
    for what in ("masked", "retrained"):
        vals = [out[f"acc_random{k}_{what}"] for k in range(n)]
        out[f"acc_random_{what}_draws"] = vals
        out[f"acc_random_{what}"] = statistics.fmean(vals)
        out[f"acc_random_{what}_sd"] = statistics.stdev(vals) if n > 1 else None
    out["random_masks"], out["random_history"] = out["random0_masks"], out["random0_history"]
    return out


def _sfp_hash(acfg: dict, cfg) -> str | None:
    try:
        return Config.from_dict({k: v for k, v in acfg.items() if k in cfg.to_dict()}).stage_hash("sfp")
    except FilterlensError:
        return None


def _total_dilution(masks, kind=None):
    sel = [m for m in masks if kind is None or m.kind == kind]
    if not sel:
        return None
    total = sum(m.total for m in sel)
    return (total - sum(m.kept for m in sel)) / total


def run_afcc(run_dir, layers=None, retrain_epochs: int = 3, retrain_lr: float = 0.01, threshold: float | None = None,
             seed: int = 0, progress: bool = False, echo=print, thresholds: str | Sequence[float] = "0.2,0.3,0.4",
             momentum: float = 0.9, weight_decay: float = 0.0, batch_size: int = 100, augment: bool = False,
             latency_repeats: int = 30, latency_batch: int = 64, latency_threads: int | None = None,
             random_draws: int = 1, settings_hash: str | None = None) -> dict:
    """AFCC on an analysed run directory (``filterlens afcc``); returns what it writes to results.json.

    ``layers``: None (the deepest analysed layer: FC mask only), ``last:N``, indices or names of
    consecutive analysed layers (conv masks between each pair plus the deepest one's FC mask).
    ``threshold``: clusters' binarisation threshold (default: the analysis'). ``thresholds``:
    the extra thresholds of the accuracy-against-dilution curve. Writes ``afcc.csv`` (one row
    per masked tensor), ``afcc_thresholds.csv``, ``afcc_pruning.csv``, ``afcc.png``,
    ``afcc_model.pt`` (the retrained masked network, :func:`save`), ``afcc_pruned.pt`` (the
    physically smaller network made from it, when supported) and the ``afcc`` and
    ``afcc_pruned`` entries of ``results.json`` (other keys kept).
    """
    t_start = time.perf_counter()
    layer_text = ",".join(map(str, layers)) if isinstance(layers, (list, tuple)) else (layers or "-1")
    sweep_text = thresholds if isinstance(thresholds, str) else ",".join(str(t) for t in thresholds)
    # every setting through Config: types, intervals and syntax in one place
    Config(retrain_epochs=retrain_epochs, retrain_lr=retrain_lr, random_draws=random_draws, seed=seed,
           afcc_thresholds=sweep_text, afcc_layers=str(layer_text),
           **({} if threshold is None else {"threshold": threshold})).validate()
    sweep = parse_thresholds(sweep_text)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FilterlensError(f"retrain batch size {batch_size!r} must be an integer >= 1")

    rd = RunDir(RunDir.validate(run_dir))
    if not rd.path.is_dir():
        raise FilterlensError(f"run directory '{rd.path}' does not exist; train and analyse a run first")
    with rd.lock("filterlens afcc"):
        for name in ("probes.pt", "label_means.pt", "results.json"):
            if not rd.exists(name):
                raise FilterlensError(f"'{rd.path}' has not been analysed (no {name}); run filterlens analyze --run-dir "
                                      f"{rd.path} first")
        rd.verify("probes.pt", "label_means.pt", "results.json")
        results = rd.read_results()
        model, cfg, data, spec = load_trained(rd.path)
        acfg = results.get("config") or cfg.to_dict()
        analysis_threshold = float(acfg.get("threshold", cfg.threshold))
        normalise = acfg.get("normalise", cfg.normalise)
        pool = acfg.get("probe_pool", cfg.probe_pool)
        t_main = analysis_threshold if threshold is None else threshold
        seed_everything(seed)
        device = resolve_device(cfg.device)
        model.to(device)
        try:
            probes = torch.load(rd.file("probes.pt"), map_location="cpu", weights_only=True)
            means = torch.load(rd.file("label_means.pt"), map_location="cpu", weights_only=True)["means"]
        except Exception as exc:  # noqa: BLE001
            raise FilterlensError(f"probes.pt/label_means.pt in '{rd.path}' cannot be read ({type(exc).__name__}); run "
                                  f"filterlens analyze --run-dir {rd.path} again") from None
        input_size = (data.in_channels, data.image_size, data.image_size)
        analysed_names = [n for n in probes if n in means]
        tokens = acfg.get("tokens", "all")
        all_layers = list_layers(model, input_size, "blocks", analysed_names, tokens)
        chosen = choose_layers(all_layers, layers, set(probes) & set(means))
        names = [l.name for l in chosen]
        b = names[-1]
        probe_acc = {r["layer"]: r.get("accuracy") for r in results.get("layers", [])}
        net0 = build_diluted(model, names, probes[b], input_size, pool, spec, tokens)
        if len(names) > 1:
            for prev, cur in zip(names, names[1:]):
                if cur not in net0.info["convs"]:
                    raise FilterlensError(f"conv masks between '{prev}' and '{cur}' are not supported for model "
                                          f"'{spec.model}' (its conv feeding '{cur}' cannot be located; supported: filterlens "
                                          f"VGG, torchvision VGG-BN); use --layers {b} for the FC mask only")

        def clusters_at(t):
            out = {}
            for n in names:
                if tuple(probes[n].shape) != tuple(means[n].shape):
                    raise FilterlensError(f"probes.pt and label_means.pt disagree for layer '{n}'; run filterlens analyze "
                                          "again")
                out[n] = sfp.analyze_layer(probes[n].double(), means[n], threshold=t, normalise=normalise).clusters_
            return out

        settings = {"epochs": retrain_epochs, "lr": float(retrain_lr), "momentum": float(momentum),
                    "weight_decay": float(weight_decay), "batch_size": int(batch_size), "augment": bool(augment),
                    "seed": int(seed), "random_draws": int(random_draws)}
        main_clusters = clusters_at(t_main)
        trainable = trainable_parameters(net0, make_masks(net0, main_clusters))
        budget = parse_bytes(acfg.get("cache_budget", cfg.cache_budget))
        ctx = _Context(net0, trainable, data, device, batch_size, augment, seed, budget, progress, echo)
        t0 = time.perf_counter()
        acc_before = ctx.accuracy(net0)
        main = _variant(net0, main_clusters, ctx, settings, progress)
        t_main_s = time.perf_counter() - t0
        accs = {"before": acc_before, "masked": main["acc_masked"], "retrained": main["acc_retrained"],
                "random_masked": main["acc_random_masked"], "random_retrained": main["acc_random_retrained"],
                "random_retrained_sd": main["acc_random_retrained_sd"],
                "random_retrained_draws": main["acc_random_retrained_draws"],
                "random_masked_draws": main["acc_random_masked_draws"], "random_draws": random_draws,
                "probe": probe_acc.get(b)}

        rows = []
        for m in main["masks"]:
            conn = connections(m.mask)
            per_filter = conn.any(0) if m.kind == "fc" else conn.any(1)
            rows.append({"layer": m.layer, "kind": m.kind, "prev_layer": m.prev or "", "param": m.param, "threshold": t_main,
                         "dilution": m.dilution, "kept": m.kept, "total": m.total, "connections_kept": int(conn.sum()),
                         "connections_total": int(conn.numel()), "filters": int(per_filter.numel()),
                         "filters_without_connection": int((~per_filter).sum()),
                         "acc_before": acc_before, "acc_masked": accs["masked"], "acc_retrained": accs["retrained"],
                         "acc_random_masked": accs["random_masked"], "acc_random_retrained": accs["random_retrained"],
                         "acc_random_retrained_sd": accs["random_retrained_sd"], "random_draws": random_draws,
                         "probe_accuracy": probe_acc.get(b)})

        def sweep_row(t, v, clusters):
            return {"threshold": t, "dilution": _total_dilution(v["masks"]),
                    "fc_dilution": _total_dilution(v["masks"], "fc"),
                    "conv_dilution": _total_dilution(v["masks"], "conv"), "acc_before": acc_before,
                    "acc_masked": v["acc_masked"], "acc_retrained": v["acc_retrained"],
                    "acc_random_masked": v["acc_random_masked"], "acc_random_retrained": v["acc_random_retrained"],
                    "acc_random_retrained_sd": v["acc_random_retrained_sd"],
                    "acc_random_retrained_draws": " ".join(f"{a:.4f}" for a in v["acc_random_retrained_draws"]),
                    "random_draws": random_draws,
                    "filters_without_cluster": sum(1 for c in clusters[b] if not c) / max(len(clusters[b]), 1)}

        t0 = time.perf_counter()
        sweep_rows = []
        for t in sorted(set(sweep) | {t_main}):
            if t == t_main:
                sweep_rows.append({**sweep_row(t, main, main_clusters), "main": True})
                continue
            cl = clusters_at(t)
            v = _variant(net0, cl, ctx, settings, progress)
            sweep_rows.append({**sweep_row(t, v, cl), "main": False})
            del v
        t_sweep_s = time.perf_counter() - t0

        # ---- physical removal
        t0 = time.perf_counter()
        ok, reason = prune_support(net0)
        pruned_info: dict = {"supported": ok, "note": MASK_NOTE}
        pruning_rows = []
        pruned_net = None
        if ok:
            try:  # a removal that fails after the work (a traced residual reader) is reported, not a refusal
                pruned0, _, filt = prune(main["masked_net"], main["masks"])
                pruned_net, pruned_masks, _ = prune(main["net"], main["masks"])
            except FilterlensError as exc:
                ok, reason, pruned_net = False, str(exc).removeprefix("physical removal is not supported here: "), None
            pruned_info["supported"] = ok
        if ok:
            x = torch.randn(8, *input_size, generator=torch.Generator().manual_seed(seed)).to(device)
            with torch.no_grad():
                diff = float((main["masked_net"](x) - pruned0(x)).abs().max())
            acc_pruned = ctx.accuracy_full(pruned0)
            acc_pruned_retrained = ctx.accuracy_full(pruned_net) if retrain_epochs > 0 else acc_pruned
            models = {"original": net0, "masked": main["masked_net"], "pruned": pruned0}
            lat = measure_latency(models, input_size, latency_batch, latency_repeats, seed=seed, threads=latency_threads)
            cost = {k: count_macs(m, input_size) for k, m in models.items()}
            acc_of = {"original": acc_before, "masked": accs["masked"], "pruned": acc_pruned}
            notes = {"original": "backbone up to the layer + probe FC, dense, unmasked",
                     "masked": "same dense shapes, masked weights are zeros (no speed-up)",
                     "pruned": "filters with all outgoing weights masked physically removed"}
            for k in models:
                pruning_rows.append({"model": k, **cost[k], "latency_ms": lat[k]["median_ms"],
                                     "latency_p25_ms": lat[k]["p25_ms"], "latency_p75_ms": lat[k]["p75_ms"],
                                     "accuracy": acc_of[k], "note": notes[k]})
            pruning_rows.append({"model": "pruned_retrained", **count_macs(pruned_net, input_size),
                                 "latency_ms": lat["pruned"]["median_ms"], "latency_p25_ms": lat["pruned"]["p25_ms"],
                                 "latency_p75_ms": lat["pruned"]["p75_ms"], "accuracy": acc_pruned_retrained,
                                 "note": "the pruned structure made from the retrained masked network (same shapes as "
                                         "pruned; latency is the pruned one's)"})
            pruned_info.update({
                "filters": filt,
                "original": {**cost["original"], "latency_ms": lat["original"]["median_ms"]},
                "masked": {**cost["masked"], "latency_ms": lat["masked"]["median_ms"]},
                "pruned": {**cost["pruned"], "latency_ms": lat["pruned"]["median_ms"]},
                "accuracy": {"original": acc_before, "masked": accs["masked"], "pruned": acc_pruned,
                             "retrained_masked": accs["retrained"], "pruned_retrained": acc_pruned_retrained},
                "params_ratio": cost["pruned"]["params"] / max(cost["original"]["params"], 1),
                "macs_ratio": cost["pruned"]["macs"] / max(cost["original"]["macs"], 1),
                "speedup": lat["pruned"]["ratio_to_first"],
                "speedup_of_medians": lat["original"]["median_ms"] / max(lat["pruned"]["median_ms"], 1e-12),
                "max_abs_diff_masked_vs_pruned": diff,
                "latency": {"device": "cpu", "batch": latency_batch, "repeats": latency_repeats,
                            "threads": lat["original"]["threads"],
                            "statistic": "median ms; speedup = median over repeats of original/pruned time in the "
                                         "same repeat",
                            "detail": lat},
            })
        else:
            pruned_info.update({"reason": f"not supported: {reason}"})
        t_prune_s = time.perf_counter() - t0

        # ---- files
        config = {**acfg, "afcc": {"layers": names, "threshold": t_main, "thresholds": sweep, **settings,
                                   "normalise": normalise, "probe_pool": pool}}
        meta = {"spec": spec, "config": config, "accuracy": accs, "threshold": t_main,
                "retrained": retrain_epochs > 0, "data": data.describe()}
        save(rd.file("afcc_model.pt"), main["net"], main["masks"], meta)
        files = ["afcc.csv", "afcc_thresholds.csv", "afcc.png", "afcc_model.pt"]
        if pruned_net is not None:
            save(rd.file("afcc_pruned.pt"), pruned_net, pruned_masks, meta)
            write_csv(rd.file("afcc_pruning.csv"), pruning_rows, PRUNING_COLUMNS)
            files += ["afcc_pruned.pt", "afcc_pruning.csv"]
        write_csv(rd.file("afcc.csv"), rows, AFCC_COLUMNS)
        write_csv(rd.file("afcc_thresholds.csv"), sweep_rows, THRESHOLD_COLUMNS + ["main"])
        title = f"AFCC: {spec.model} on {data.name}, {names[0]}" + (f"..{b}" if len(names) > 1 else "")
        plot_afcc(sweep_rows, rd.file("afcc.png"), title=title, acc_before=acc_before)
        afcc = {
            "version": FORMAT_VERSION,
            "layers": names,
            "kind": "fc" if len(names) == 1 else "conv+fc",
            "threshold": t_main,
            "analysis": {"threshold": analysis_threshold, "normalise": normalise, "probe_pool": pool,
                         "probe_mode": acfg.get("probe_mode"), "sfp_hash": _sfp_hash(acfg, cfg)},
            "masked": rows,
            "dilution": {m.key: m.dilution for m in main["masks"]},
            "dilution_total": _total_dilution(main["masks"]),
            "fc_dilution": _total_dilution(main["masks"], "fc"),
            "accuracy": accs,
            "afcc_beats_random": (accs["retrained"] >= accs["random_retrained"]),
            "retrain": {**settings, "optimizer": "sgd", "nesterov": False, "schedule": "constant",
                        "batch_norm": "eval mode: running statistics frozen; affine parameters of masked blocks trained",
                        "masks": "re-applied (weight.mul_(mask)) after every optimiser step",
                        "trainable": trainable, "engine": ctx.engine, "engine_note": ctx.note,
                        "history": main["history"], "random_history": main["random_history"]},
            "random_control": "per filter the same number of kept connections (FC: output units; conv: input filters), "
                              f"placed at random; {random_draws} draw(s), draw k from torch.Generator seeded {seed}+k; "
                              "acc_random_* are means over the draws",
            "thresholds": sweep_rows,
            "note": MASK_NOTE,
            "files": files,
            "timings": {"main_s": t_main_s, "thresholds_s": t_sweep_s, "pruning_s": t_prune_s,
                        "total_s": time.perf_counter() - t_start},
            "environment": environment(),
        }
        if pruned_net is None:  # an earlier AFCC's removal does not describe this one
            for stale in ("afcc_pruned.pt", "afcc_pruning.csv"):
                if rd.exists(stale):
                    rd.remove(stale)
        results = rd.read_results()  # re-read (verified): keep every other key as it is now
        results["afcc"] = afcc
        results["afcc_pruned"] = pruned_info
        write_json(rd.file("results.json"), results)
        rd.record("afcc", settings_hash or _standalone_hash(cfg, layer_text, retrain_epochs, retrain_lr, random_draws,
                                                            sweep_text, seed, threshold, augment),
                  files + ["results.json"], time.perf_counter() - t_start)
        return {**afcc, "pruned": pruned_info, "run_dir": str(rd.path)}


def _standalone_hash(cfg: Config, layers, epochs, lr, draws, thresholds, seed, threshold, augment) -> str:
    """The settings hash ``filterlens run`` would give this AFCC (so a later run finds it done), or a hash
    of its own where settings outside the config differ (another seed, threshold, augmentation)."""
    acfg = cfg.replace(afcc_layers=str(layers), retrain_epochs=epochs, retrain_lr=float(lr), random_draws=draws,
                       afcc_thresholds=thresholds)
    h = acfg.stage_hash("afcc")
    if seed == cfg.seed and threshold in (None, cfg.threshold) and not augment:
        return h
    import hashlib

    return "custom-" + hashlib.sha256(f"{h}|{seed}|{threshold}|{augment}".encode()).hexdigest()[:16]


def print_afcc(out: dict, echo=print) -> None:
    """The short table the CLI prints."""
    a = out["accuracy"]
    echo(f"AFCC on {', '.join(out['layers'])} at threshold {out['threshold']:g}; retraining: "
         f"{out['retrain']['epochs']} epoch(s), lr {out['retrain']['lr']:g} ({out['retrain']['engine']})")
    echo(f"{'layer':<16}{'kind':<6}{'dilution':>9}{'kept':>10}{'total':>10}{'no-conn units':>17}")
    for r in out["masked"]:
        echo(f"{r['layer']:<16}{r['kind']:<6}{r['dilution']:>9.4f}{r['kept']:>10}{r['total']:>10}"
             f"{r['filters_without_connection']:>17}")
    n = a.get("random_draws", 1)
    spread = f" ± {a['random_retrained_sd']:.4f} (sd of {n} draws)" if n > 1 else ""
    echo(f"accuracy: before {a['before']:.4f}  masked {a['masked']:.4f}  retrained {a['retrained']:.4f}  |  random"
         f"{' (mean)' if n > 1 else ''}: masked {a['random_masked']:.4f}  retrained {a['random_retrained']:.4f}{spread}")
    p = out.get("pruned") or {}
    if p.get("supported"):
        f = "; ".join(f"{k} {v['filters_before']}->{v['filters_after']}" for k, v in p["filters"].items())
        echo(f"physical removal: units {f}; params {p['original']['params']} -> {p['pruned']['params']}; MACs "
             f"{p['original']['macs']} -> {p['pruned']['macs']}; CPU latency (batch {p['latency']['batch']}) "
             f"{p['original']['latency_ms']:.2f} -> {p['pruned']['latency_ms']:.2f} ms (paired speed-up "
             f"x{p['speedup']:.2f}); accuracy pruned "
             f"{p['accuracy']['pruned']:.4f}, from retrained {p['accuracy']['pruned_retrained']:.4f}")
    else:
        echo(f"physical removal: {p.get('reason', 'not supported')}")
    echo(f"{'threshold':>9}{'dilution':>10}{'AFCC':>8}{'random':>8}   (accuracy after retraining)")
    for r in out["thresholds"]:
        echo(f"{r['threshold']:>9g}{r['dilution']:>10.4f}{r['acc_retrained']:>8.4f}{r['acc_random_retrained']:>8.4f}")
    echo(f"files in {out.get('run_dir', '.')}: {', '.join(out['files'])} (results.json: afcc, afcc_pruned)")


