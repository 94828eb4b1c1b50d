"""Stage 2: the accuracy of every layer (METHOD.md).

For each selected layer a NEW bias-free ``Linear(C*H*W -> L)`` is trained on the
frozen layer's (optionally pooled) output with cross-entropy; its test accuracy
is the layer's accuracy. Two modes:

``fast`` (default)
    One capture pass over train and test caches every layer's float16 features
    (:class:`~filterlens.capture.FeatureCache`); every probe is then trained from
    the cache: Adam, lr 1e-2 with cosine decay to 0, mini-batch 100, no weight
    decay, ``probe_epochs`` (default 30) epochs; each epoch one permutation of the samples
    shared by all layers, every mini-batch a step of every layer's FC
    (:func:`train_from_cache`). If the cache would exceed
    ``cache_budget`` (or augmentation is on) it streams instead, and says so.
``paper``
    The authors' recipe: SGD lr 0.01, momentum 0.975, Nesterov, weight decay
    1e-3, lr x0.975 after every epoch, mini-batch 100, training augmentation on,
    200 epochs unless ``probe_epochs`` says otherwise. Every epoch is ONE forward
    pass of the frozen network that updates all layers' probes together.

Either way the test pass also accumulates the per-label mean maps (stage 3's
input) and, per filter, how often each output unit wins its single-filter field.
For the bootstrap it keeps, per layer, the smaller of its two possible inputs
(:func:`bootstrap_input`): the per-sample single-unit fields or the test features.
"""
from __future__ import annotations

import math
import shutil
import time
import zlib
from pathlib import Path
from typing import Collection, Sequence

import torch
import torch.nn as nn

from . import distributed as dist_
from .capture import Capture, CaptureLayer, FeatureCache, LabelMeanSink, capture_pass, pooled_shape
from .config import ProbeSettings, parse_bytes, parse_pool
from .engine import (
    CACHE_FOLDER,
    DiskCache,
    EnginePlan,
    Forward,
    Workload,
    bound_resident,
    cache_home,
    cache_key,
    plan_engine,
)
from .models import Layer
from .output import say
from .precision import FLOAT32, for_inference
from .probe_results import LayerProbeResult, ProbeRecipe, ProbeResult
from .progress import progress_bar
from .utils import derive_seed

#: the seed stream of the probes of other seeds (probe_seeds > 1): probe k's weights and sample order derive from it
PROBE_SEED_STREAM = 7_000
#: bytes per value of the per-sample fields the bootstrap can read (float32)
FIELD_BYTES = 4
#: the device types whose probe optimiser runs its update as one fused kernel (torch's fused Adam and SGD)
FUSED_DEVICES = ("cpu", "cuda")


def optimiser_kernel(device) -> str:
    """How the probes' optimiser updates the weights on ``device``: ``fused`` (one kernel per step, on the devices
    of FUSED_DEVICES) or ``foreach`` (a kernel per operation); recorded in probes.json's ``precision``."""
    return "fused" if torch.device(device).type in FUSED_DEVICES else "foreach"


def bootstrap_input(shape: Sequence[int], num_labels: int, feature_bytes: int) -> str:
    """Which input of the bootstrap (:mod:`filterlens.sfp.bootstrap`) the probe stage keeps for a layer whose FC
    sees ``shape`` = (C, ...) (P positions per unit): ``"features"``, the test features as the cache holds them
    (``N C P feature_bytes`` bytes), when they are smaller than the per-sample fields (``N C L FIELD_BYTES``
    bytes, float32); else ``"fields"`` (a tie too). With bfloat16 or float16 features: features when P < 2 L."""
    c = int(shape[0])
    p = math.prod(int(s) for s in shape[1:])
    return "features" if c * p * int(feature_bytes) < c * int(num_labels) * FIELD_BYTES else "fields"


class ProbeSet:
    """One bias-free FC per layer; one optimiser and one learning-rate schedule over all of them.

    All layers step together (:meth:`step_all`, one batch, each layer on its own features),
    so a single multi-tensor optimiser call updates every FC; the per-element arithmetic is
    the same as one optimiser per layer. To train one layer on its own, use :meth:`subset`.
    """

    def __init__(self, layers: Sequence[CaptureLayer], num_labels: int, recipe: ProbeRecipe, seed: int = 0,
                 device="cpu"):
        self.layers = list(layers)
        self.recipe = recipe
        self.num_labels = num_labels
        self.fcs: dict[str, nn.Linear] = {}
        for cl in self.layers:
            fc = nn.Linear(cl.features, num_labels, bias=False)
            bound = 1.0 / math.sqrt(cl.features)
            # each layer's own generator: a probe starts from the same weights whichever layers share its set
            gen = torch.Generator().manual_seed(derive_seed(seed, zlib.crc32(cl.name.encode())))
            with torch.no_grad():
                fc.weight.uniform_(-bound, bound, generator=gen)
            fc.to(device)
            self.fcs[cl.name] = fc
        self._build_optimiser()

    def _build_optimiser(self) -> None:
        recipe = self.recipe
        # every weight and every gradient is a view of one flat buffer: under torchrun one all-reduce averages the
        # gradients, and bfloat16 products convert every weight and every gradient in one call each (step_all)
        self._flat_weight = torch.cat([fc.weight.detach().reshape(-1) for fc in self.fcs.values()])
        self._flat_grad = torch.zeros_like(self._flat_weight)
        self._grad_bf16: torch.Tensor | None = None  # the bfloat16 products' gradients, allocated at first use
        self._spans: list[tuple[int, int]] = []
        start = 0
        for fc in self.fcs.values():
            end = start + fc.weight.numel()
            fc.weight = nn.Parameter(self._flat_weight[start:end].view_as(fc.weight))
            fc.weight.grad = self._flat_grad[start:end].view_as(fc.weight)
            self._spans.append((start, end))
            start = end
        params = [fc.weight for fc in self.fcs.values()]
        self.opt: torch.optim.Optimizer
        self.sched: torch.optim.lr_scheduler.LRScheduler
        # the optimiser's update in one fused kernel per step where torch has it (CPU and CUDA): the same update
        # to float rounding, 2.4x (Adam) and 1.8x (SGD) faster on a 1,000 x 6,400 probe, where the per-element
        # update of a wide probe costs more than its batch's products (benchmarks/probe_step.py)
        fused = optimiser_kernel(params[0].device) == "fused"
        if recipe.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                                       nesterov=recipe.nesterov and recipe.momentum > 0,
                                       weight_decay=recipe.weight_decay, foreach=not fused, fused=fused or None)
        else:
            self.opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=not fused,
                                        fused=fused or None)
        if recipe.lr_decay.startswith("exp:"):
            self.sched = torch.optim.lr_scheduler.ExponentialLR(self.opt, float(recipe.lr_decay[4:]))
        else:
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(recipe.epochs, 1))

    def subset(self, name: str) -> "ProbeSet":
        """A set of just ``name``'s FC (a copy, same current weights) with a fresh optimiser and schedule."""
        w = self.fcs[name].weight
        one = ProbeSet([cl for cl in self.layers if cl.name == name], self.num_labels, self.recipe, device=w.device)
        with torch.no_grad():
            one.fcs[name].weight.copy_(w)
        return one

    def step(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimisation step of ``name``'s FC on the batch ``(x, y)`` (a set of that one layer)."""
        self.step_all({name: x}, y)

    @torch.no_grad()
    def step_all(self, feats: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        """One step of every layer's FC, each on its own layer's features of the same batch.

        The gradient of each FC's mean cross-entropy is written out (softmax minus one-hot,
        times the inputs) rather than taken by autograd: the same numbers, without building a
        graph per layer thousands of times per epoch. The softmax of all layers is one call.
        Features may be column views of one batch (row stride larger than their width).
        bfloat16 features (a bfloat16 cache, or a bfloat16 capture streamed) are multiplied in
        bfloat16 with float32 accumulation (the CPU's bfloat16 units); the weights, the softmax and
        the optimiser stay float32. Other features are multiplied in float32.
        """
        if feats.keys() != self.fcs.keys():
            raise ValueError(f"step_all needs features of every layer of the set ({', '.join(self.fcs)}), "
                             f"got {', '.join(feats)}; use subset() to train one layer alone")
        n = len(y)
        xs = []
        for x in feats.values():
            x = x.reshape(n, -1)
            xs.append(x if x.dtype in (torch.float32, torch.bfloat16) else x.float())
        L, ws = self.num_labels, [fc.weight for fc in self.fcs.values()]
        bf16 = all(x.dtype == torch.bfloat16 for x in xs)
        if bf16:  # products on the bfloat16 units: every float32 weight converted in one call
            wb = self._flat_weight.to(torch.bfloat16)
            ws = [wb[a:z].view(L, -1) for a, z in self._spans]
        logits = torch.empty((len(ws), n, L), device=ws[0].device)
        for k, (x, w) in enumerate(zip(xs, ws)):
            if x.dtype == torch.bfloat16:  # a bfloat16 layer among float32 ones converts its own weight
                logits[k] = torch.mm(x, w.T if bf16 else w.T.to(torch.bfloat16))
            else:
                torch.mm(x, w.T, out=logits[k])
        target = torch.zeros((n, L), device=logits.device)
        target[torch.arange(n, device=target.device), y] = 1.0 / n
        p = torch.softmax(logits, dim=2).div_(n).sub_(target)  # d(mean cross-entropy)/d(logits)
        if bf16:  # every gradient into one bfloat16 buffer, then one conversion into the float32 gradients
            if self._grad_bf16 is None:
                self._grad_bf16 = torch.empty_like(self._flat_grad, dtype=torch.bfloat16)
            pb = p.to(torch.bfloat16)
            for k, (x, (a, z)) in enumerate(zip(xs, self._spans)):
                torch.mm(pb[k].T, x, out=self._grad_bf16[a:z].view(L, -1))
            self._flat_grad.copy_(self._grad_bf16)
        else:
            for k, (x, w) in enumerate(zip(xs, ws)):
                assert w.grad is not None  # a view of _flat_grad since __init__ (nothing here sets it to None)
                if x.dtype == torch.bfloat16:
                    w.grad.copy_(torch.mm(p[k].T.to(torch.bfloat16), x))
                else:
                    torch.mm(p[k].T, x, out=w.grad)
        dist_.all_reduce_(self._flat_grad, average=True)  # under torchrun: the global batch's gradient
        self.opt.step()

    def end_epoch(self) -> None:
        """Step the learning-rate schedule (cosine or exponential) at the end of an epoch."""
        self.sched.step()

    def weight(self, name: str) -> torch.Tensor:
        """The FC weight as (L, C, H, W): the layout stage 3 contracts with the label means."""
        cl = next(c for c in self.layers if c.name == name)
        return self.fcs[name].weight.detach().cpu().reshape(-1, *cl.shape).clone()


class ProbeEval:
    """Accumulates test accuracy; per unit, how often each output unit wins its field; and per unit and
    output unit, the ``top_k`` test images with the largest field (the filter explorer's thumbnails:
    found in the test pass already made, no pass of their own).

    ``test_index``: the global test index of each sample this process sees, in order (default 0, 1, ...).
    For the bootstrap: ``keep_fields`` (True: every layer; or the names of some) keeps those layers' per-sample
    fields in float32, ``keep_features`` those layers' test features in ``feature_dtype`` (as a cache holds
    them), and the test labels with them.
    """

    def __init__(self, probes: ProbeSet, keep_fields: bool | Collection[str] = False, top_k: int = 0,
                 test_index: torch.Tensor | None = None, keep_features: Collection[str] = (),
                 feature_dtype: torch.dtype = torch.float16):
        self.probes = probes
        names = [cl.name for cl in probes.layers]
        self.fields_of = set(names if keep_fields is True else (keep_fields or ()))
        self.features_of = set(keep_features)
        self.keep_labels = bool(self.fields_of or self.features_of)  # the test labels, with either
        self.feature_dtype = feature_dtype
        self.top_k, self.test_index, self._seen = int(top_k), test_index, 0
        self.top: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.fields: dict[str, list[torch.Tensor]] = {cl.name: [] for cl in probes.layers}
        self.features: dict[str, list[torch.Tensor]] = {cl.name: [] for cl in probes.layers}
        self.labels: list[torch.Tensor] = []
        self.correct = {cl.name: 0 for cl in probes.layers}
        self.total = 0
        L = next(iter(probes.fcs.values())).out_features
        self.votes = {cl.name: torch.zeros(cl.shape[0], L, dtype=torch.long) for cl in probes.layers}
        self._w = {cl.name: probes.fcs[cl.name].weight.detach().reshape(L, cl.shape[0], -1) for cl in probes.layers}

    @torch.no_grad()
    def update(self, feats: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        """One batch of every layer (the sink of a capture pass)."""
        for name, x in feats.items():
            self.update_layer(name, x, y, self._seen)
        self.count(y)

    def count(self, y: torch.Tensor) -> None:
        """The labels of the samples just evaluated in every layer (after their :meth:`update_layer` calls)."""
        self._seen += len(y)
        self.total += len(y)
        if self.keep_labels:
            self.labels.append(y.cpu())

    @torch.no_grad()
    def update_layer(self, name: str, x: torch.Tensor, y: torch.Tensor, start: int) -> None:
        """Rows ``start .. start+len(x)`` of this process' test samples in one layer: the single-unit fields
        h[n, c, j] = sum_s W[j, c, s] x[n, c, s] in float32, the probe's logits as their sum over units (the
        probe is bias-free), the winning output unit of every unit, the fields or features kept for the
        bootstrap, the top images. Call :meth:`count` once every layer has seen the rows."""
        n = len(x)
        if name in self.features_of:  # a copy (the rows may be a view of a cache that is deleted later)
            self.features[name].append(x.to("cpu", self.feature_dtype, memory_format=torch.contiguous_format,
                                            copy=True))
        x = x.reshape(n, x.shape[1], -1)
        w = self._w[name]
        # (C, n, S) @ (C, S, L) -> (C, n, L): one batched product, float32; every reduction below runs along
        # the last or first axis of this layout (no transposed copy of the fields)
        fields = torch.bmm(x.float().transpose(0, 1), w.permute(1, 2, 0))
        self.correct[name] += int((fields.sum(0).argmax(1) == y).sum().item())
        winner = fields.argmax(2)  # (C, n): the output unit each unit's field makes win, per sample
        self.votes[name].scatter_add_(1, winner.cpu(), torch.ones_like(winner, device="cpu"))
        if name in self.fields_of:
            self.fields[name].append(fields.transpose(0, 1).to("cpu", torch.float32,
                                                               memory_format=torch.contiguous_format))
        if self.top_k:
            self._update_top(name, fields, start)

    def _update_top(self, name: str, fields: torch.Tensor, start: int) -> None:
        """Merge these rows' fields (C, n, L) into the running top k per (unit, output unit): the rows' own top k
        first, then the top k of those and the ones kept."""
        n = fields.shape[1]
        local = torch.arange(start, start + n)
        index = (self.test_index[local] if self.test_index is not None else local).to(fields.device)
        vals, pos = fields.topk(min(self.top_k, n), dim=1)  # (C, k, L)
        vals, idx = vals.transpose(1, 2), index[pos].transpose(1, 2)  # (C, L, k)
        if name in self.top:
            old_v, old_i = self.top[name]
            vals, idx = torch.cat([old_v, vals], 2), torch.cat([old_i.to(idx.device), idx], 2)
            best, pos = vals.topk(min(self.top_k, vals.shape[2]), dim=2)
            vals, idx = best, idx.gather(2, pos)
        self.top[name] = (vals.contiguous(), idx.contiguous())

    def all_reduce(self) -> None:
        """Under torchrun (each rank saw its shard of the test set): sum the counts and votes, and
        gather the per-sample fields, features and labels (rank after rank) on every rank."""
        if not dist_.active():
            return
        for name, (v, i) in self.top.items():  # every rank's top k, then the top k of them
            vals = dist_.all_gather_cat(v.cpu().unsqueeze(0)).permute(1, 2, 0, 3).flatten(2)
            idx = dist_.all_gather_cat(i.cpu().unsqueeze(0)).permute(1, 2, 0, 3).flatten(2)
            best, pos = vals.topk(min(self.top_k, vals.shape[2]), dim=2)
            self.top[name] = (best, idx.gather(2, pos))
        names = list(self.correct)
        sums = dist_.all_reduce_sum([self.correct[n] for n in names] + [self.total])
        self.correct = {n: int(v) for n, v in zip(names, sums[:-1])}
        self.total = int(sums[-1])
        for v in self.votes.values():
            dist_.all_reduce_(v)
        if self.keep_labels:
            self.fields = {n: [dist_.all_gather_cat(torch.cat(f))] if f else [] for n, f in self.fields.items()}
            self.features = {n: [dist_.all_gather_cat(torch.cat(f))] if f else [] for n, f in self.features.items()}
            self.labels = [dist_.all_gather_cat(torch.cat(self.labels))]

    def accuracy(self) -> dict[str, float]:
        """Per layer, the test accuracy of its FC: correct / samples seen."""
        return {n: c / max(self.total, 1) for n, c in self.correct.items()}


def train_probes(model: nn.Module, layers: Sequence[Layer], feed, cfg: ProbeSettings, cache_dir: Path | None = None,
                 progress: bool = True, keep_fields: bool = False) -> ProbeResult:
    """Train every selected layer's probe; return accuracies, weights, label means and votes.

    ``cfg`` supplies ``probe_mode``, ``probe_epochs``, ``probe_lr``, ``probe_batch_size``,
    ``probe_weight_decay``, ``probe_pool``, ``probe_augment``, ``cache_budget``, ``engine`` and
    ``seed``; ``feed`` (:class:`~filterlens.loaders.Feed`) every batch of this rank, on the model's device;
    ``cache_dir`` is where the disk engine keeps its cache (a temporary directory when None). Under torchrun every rank
    captures and trains on its shard (``probe_batch_size / N`` per rank and step, gradients averaged), and every rank
    returns the same, global, result.
    ``keep_fields``: keep, for the bootstrap, every layer's per-sample test fields or its test features
    (:func:`bootstrap_input`: the smaller of the two) with the test labels.
    """
    import tempfile

    device = feed.device
    recipe = ProbeRecipe.from_config(cfg)
    precision = for_inference(device, cfg.amp, model)  # the capture's forward pass (precision.py)
    # the probes' products in bfloat16 from a bfloat16 cache where the CPU has bfloat16 units; else float32 from
    # a float16 cache (a GPU's float32 products are fast enough)
    arithmetic = torch.bfloat16 if precision.dtype == torch.bfloat16 and device.type == "cpu" else torch.float32
    cache_dtype = torch.bfloat16 if arithmetic == torch.bfloat16 else torch.float16
    batch = dist_.per_rank_batch(recipe.batch_size, "probe_batch_size")
    pool = parse_pool(cfg.probe_pool)
    t_all = time.perf_counter()
    cls = [CaptureLayer(l, pooled_shape(l.shape, pool, l.unit_kind)) for l in layers]
    # this rank's samples: the training shard padded to equal length, the test shard not
    n_train, n_test = feed.n_train, feed.n_test
    need = FeatureCache.nbytes(cls, n_train + n_test)
    scratch, home = None, cache_home(cache_dir)  # the disk cache's own folder inside cache_dir (checked here)
    if home is None and cfg.engine in ("auto", "disk") and need > parse_bytes(cfg.cache_budget):
        scratch = Path(tempfile.mkdtemp(prefix="filterlens-cache-"))
        home = scratch / CACHE_FOLDER
    try:
        work = Workload(need, n_train + n_test, recipe.epochs, n_train, recipe.augment)
        forward = Forward(model, pool, feed.train, lambda group: _training_seconds(
            group, feed.num_labels, recipe, batch, n_train, device, arithmetic), precision)
        plan = plan_engine(cls, cfg.engine, parse_bytes(cfg.cache_budget), work, device, home, forward)
        say(f"note: {plan.note}")
        keep = ({cl.name: bootstrap_input(cl.shape, feed.num_labels, cache_dtype.itemsize) for cl in cls}
                if keep_fields else {})
        run = _Run(model, pool, feed, cfg, recipe, batch, progress, keep, precision, cache_dtype)
        if plan.engine == "stream":
            parts = [run.stream(cls)]
        else:
            parts = [run.cached(group, plan) for group in plan.groups]
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    results, counts, timings, test_labels = _merge(parts, cls, keep)
    timings["total_s"] = time.perf_counter() - t_all
    passes = plan.record()["capture_passes"] or recipe.epochs + 1
    record = {**precision.record(), "cache": _name(cache_dtype), "probe_products": _name(arithmetic),
              "probe_update": optimiser_kernel(feed.device)}
    return ProbeResult(results, cfg.probe_mode, plan.engine, recipe, counts, timings, passes, plan.note, test_labels,
                       plan.record(), feed.describe(), record)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _training_seconds(group: list[CaptureLayer], num_labels: int, recipe: ProbeRecipe, batch: int, rows: int,
                      device, dtype: torch.dtype = torch.float32) -> float:
    """Estimated seconds to train a group's probes: a few timed steps of its set on random features."""
    probes = ProbeSet(group, num_labels, recipe, device=device)
    x = {cl.name: torch.randn(batch, cl.features, device=device).to(dtype) for cl in group}
    y = torch.arange(batch, device=device) % num_labels
    probes.step_all(x, y)  # warm-up
    t0 = time.perf_counter()
    for _ in range(3):
        probes.step_all(x, y)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / 3 * recipe.epochs * -(-rows // batch)


class _Run:
    """One probe stage's settings, and the two ways a group of layers is trained: from a cache, or streamed."""

    def __init__(self, model, pool, feed, cfg, recipe, batch, progress, keep: dict[str, str],
                 precision=FLOAT32, cache_dtype=torch.float16):
        self.model, self.pool, self.feed, self.cfg, self.recipe = model, pool, feed, cfg, recipe
        self.precision, self.cache_dtype = precision, cache_dtype
        self.device, self.batch, self.progress = feed.device, batch, progress
        # per layer, the bootstrap's input the test pass keeps ({} without a bootstrap): fields or features
        self.fields_of = [name for name, kind in keep.items() if kind == "fields"]
        self.features_of = [name for name, kind in keep.items() if kind == "features"]
        self.rank, self.world = feed.rank, feed.world_size

    def _bar(self, desc):
        return lambda it: progress_bar(it, self.progress, desc=desc)

    def _eval(self, probes: ProbeSet) -> ProbeEval:
        """The first probe's evaluation: the test features it keeps serve the probes of other seeds too."""
        return ProbeEval(probes, keep_fields=self.fields_of, top_k=self.cfg.top_images,
                         test_index=self.feed.test_index, keep_features=self.features_of,
                         feature_dtype=self.cache_dtype)

    def cached(self, group: list[CaptureLayer], plan: EnginePlan) -> dict:
        """One capture pass of ``group`` into a cache (memory or disk), its probes trained from it. A disk cache
        is deleted once the probes are trained; an interrupted run leaves it for the next (engine.DiskCache)."""
        n_train, n_test = self.feed.n_train, self.feed.n_test
        disk = None
        if plan.engine == "disk":
            tag = f"-rank{self.rank}" if self.world > 1 else ""
            rows = {"train": n_train, "test": n_test}
            key = cache_key(self.model, group, self.feed.describe(), rows, tag + _name(self.cache_dtype))
            assert plan.cache_dir is not None  # plan_engine gives the disk engine its folder
            disk = DiskCache(plan.cache_dir, group, rows, key, dtype=self.cache_dtype)
        try:
            out = self._from_cache(group, plan, n_train, n_test, disk)
        except BaseException:
            if disk is not None:
                disk.release()
            raise
        if disk is not None:
            disk.remove()
        return out

    def _from_cache(self, group, plan, n_train, n_test, disk) -> dict:
        L, timings = self.feed.num_labels, {}
        probes = ProbeSet(group, L, self.recipe, seed=self.cfg.seed, device=self.device)
        means = LabelMeanSink(group, L, device=self.device)
        ev = self._eval(probes)
        t0 = time.perf_counter()
        fresh = disk is None or not disk.open()
        if disk is not None:
            caches = {s: bound_resident(c, parse_bytes(self.cfg.cache_budget)) for s, c in disk.caches.items()}
        else:
            caches = {s: FeatureCache(group, n, None, s, device=plan.cache_device, dtype=self.cache_dtype)
                      for s, n in (("train", n_train), ("test", n_test))}
        if fresh:
            with Capture(self.model, [cl.layer for cl in group], self.pool, self.precision) as cap:
                capture_pass(cap, self.feed.train, [caches["train"]], progress=self._bar("capture train"))
                # the label means from the float32 maps, as the other engines compute them
                capture_pass(cap, self.feed.test, [caches["test"], means], progress=self._bar("capture test"))
            if disk is not None:
                disk.finish({"sums": means.sums, "counts": means.counts})
        else:  # a complete, verified disk cache of an interrupted analysis: its label means were saved with it
            means.sums = {k: v.to(self.device) for k, v in disk.means["sums"].items()}
            means.counts = disk.means["counts"].to(self.device)
        timings["capture_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        seed = self.cfg.seed if self.world == 1 else derive_seed(self.cfg.seed, self.rank)
        train_from_cache(probes, caches["train"], self.recipe, seed, self.device, batch_size=self.batch,
                         progress=self._bar("probe epochs (cache)"))
        extra = []
        for k in range(1, self.cfg.probe_seeds):  # the same layers from other seeds: weights and sample order
            other = ProbeSet(group, L, self.recipe, seed=derive_seed(self.cfg.seed, PROBE_SEED_STREAM + k),
                             device=self.device)
            train_from_cache(other, caches["train"], self.recipe, derive_seed(seed, PROBE_SEED_STREAM + k),
                             self.device, batch_size=self.batch, progress=self._bar(f"probe seed {k + 1} (cache)"))
            extra.append(ProbeEval(other, keep_fields=self.fields_of))
        total = len(self.feed.data.train)
        real = dist_.shard_size(total, pad=False)  # the padded rows repeat other ranks' samples
        correct = dist_.all_reduce_sum(_cached_correct(probes, caches["train"], real, self.device))
        train_acc = {name: c / max(total, 1) for name, c in zip(probes.fcs, correct)}
        timings["probe_train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        test = caches["test"]
        labels = test.labels.to(self.device)
        for cl in group:  # layer by layer, each in chunks of rows sized to its own width
            rows = _chunk_rows(cl.features, 32 * 2**20)
            for s in range(0, n_test, rows):
                y = labels[s : s + rows]
                x = test.features[cl.name][s : s + rows].to(self.device).reshape(len(y), *cl.shape)
                for e in (ev, *extra):
                    e.update_layer(cl.name, x, y, s)
                test.touch(2 * len(y) * cl.features)
        for e in (ev, *extra):
            e.count(labels)
        timings["eval_s"] = time.perf_counter() - t0
        return {"probes": probes, "means": means, "ev": ev, "train_acc": train_acc, "timings": timings,
                "extra": extra}

    def stream(self, cls: list[CaptureLayer]) -> dict:
        """Every probe updated from one forward pass per epoch (augmentation allowed), then one test pass."""
        L, timings = self.feed.num_labels, {}
        probes = ProbeSet(cls, L, self.recipe, seed=self.cfg.seed, device=self.device)
        means = LabelMeanSink(cls, L, device=self.device)
        ev = self._eval(probes)
        t0 = time.perf_counter()
        # the same mini-batches in the same order as a cache's rows are read (train_from_cache): this rank's
        # samples in an unshuffled pass, permuted each epoch by a generator seeded as there
        local = self.feed.train_index
        gen = torch.Generator().manual_seed(self.cfg.seed if self.world == 1 else derive_seed(self.cfg.seed, self.rank))
        # probes of other seeds (probe_seeds > 1) start from other weights and step on the same batches
        others = [ProbeSet(cls, L, self.recipe, seed=derive_seed(self.cfg.seed, PROBE_SEED_STREAM + k),
                           device=self.device) for k in range(1, self.cfg.probe_seeds)]
        with Capture(self.model, [cl.layer for cl in cls], self.pool, self.precision) as cap:
            for epoch in progress_bar(range(self.recipe.epochs), self.progress, desc="probe epochs (stream)"):
                order = local[torch.randperm(len(local), generator=gen)]
                for x, y in self.feed.ordered(order, self.batch, self.recipe.augment, epoch):
                    feats = cap.forward(x)
                    for p in (probes, *others):
                        p.step_all(feats, y)
                for p in (probes, *others):
                    p.end_epoch()
            timings["probe_train_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            extra = [ProbeEval(p, keep_fields=self.fields_of) for p in others]
            capture_pass(cap, self.feed.test, [means, ev, *extra], progress=self._bar("test pass"))
            timings["eval_s"] = time.perf_counter() - t0
        return {"probes": probes, "means": means, "ev": ev, "train_acc": dict.fromkeys(probes.fcs), "timings": timings,
                "extra": extra}


def _top(ev: ProbeEval, name: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if name not in ev.top:
        return None, None
    values, indices = ev.top[name]
    return values.cpu(), indices.cpu().to(torch.int32)


def _merge(parts: list[dict], cls: list[CaptureLayer], keep: dict[str, str]):
    """The layers' results from the groups' parts, in layer order; label counts and test labels from the first.
    ``keep``: per layer, the bootstrap's input kept (``"fields"`` or ``"features"``; {} for none). With the
    features, the probes of other seeds bring their weights (the features are the same)."""
    by_layer: dict[str, tuple] = {}
    timings: dict[str, float] = {}
    for part in parts:
        part["means"].all_reduce()
        part["ev"].all_reduce()
        for e in part.get("extra", []):
            e.all_reduce()
        acc, label_means = part["ev"].accuracy(), part["means"].means()
        for name in part["probes"].fcs:
            by_layer[name] = (part, acc[name], label_means[name])
        for k, v in part["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
    results = []
    for cl in cls:
        part, acc, means = by_layer[cl.name]
        ev = part["ev"]
        extra = part.get("extra", [])
        fields, features = keep.get(cl.name) == "fields", keep.get(cl.name) == "features"
        results.append(LayerProbeResult(
            cl.name, cl.layer.index, cl.shape[0], cl.shape, cl.layer.shape, cl.features, acc,
            part["train_acc"][cl.name], part["probes"].weight(cl.name), means.cpu(), ev.votes[cl.name],
            torch.cat(ev.fields[cl.name]) if fields else None, cl.layer.unit_kind, *_top(ev, cl.name),
            [torch.cat(e.fields[cl.name]) for e in extra] if fields and extra else None,
            [e.accuracy()[cl.name] for e in extra] if extra else None,
            torch.cat(ev.features[cl.name]) if features else None,
            [e.probes.weight(cl.name) for e in extra] if features and extra else None))
    first = parts[0]
    return (results, first["means"].counts.cpu(), timings,
            torch.cat(first["ev"].labels) if keep else None)


def train_from_cache(probes: ProbeSet, cache: FeatureCache, recipe: ProbeRecipe, seed: int, device,
                     batch_size: int | None = None, progress=None) -> None:
    """Train every layer's FC from the cached features, all layers on each mini-batch.

    Each epoch draws one permutation of the samples (generator seeded by ``seed``) that all
    layers share; every mini-batch is one row gather from the float16 cache (all layers are
    columns of one array) into a preallocated float32 buffer (fresh large tensors per batch
    cost more than the arithmetic on CPU), then every layer takes one step on its columns.
    The cache is read where it lives (``train_probes`` puts it on the GPU when it fits); a host
    cache feeding a GPU is gathered into pinned memory, then copied up. A bfloat16 cache on the
    device of the probes feeds its gathered rows to the products directly (no float32 copy).
    """
    device = torch.device(device)
    n, bs = cache.num_samples, batch_size or recipe.batch_size
    data, labels = cache.data, cache.labels
    host = data.device.type == "cpu" and device.type != "cpu"
    direct = data.dtype == torch.bfloat16 and not host  # bfloat16 rows feed the products as they are
    buf = None if direct else torch.empty((bs, data.shape[1]), device=device)
    # the gathered float16 rows land in a reused buffer too (pinned when they go on to a GPU)
    staging = torch.empty((bs, data.shape[1]), dtype=data.dtype, device=data.device)
    if host:
        staging = staging.pin_memory()
    cols = {name: cache.offsets[name] for name in probes.fcs}
    gen = torch.Generator().manual_seed(seed)
    epochs = range(recipe.epochs)
    for _ in (progress(epochs) if progress else epochs):
        perm = torch.randperm(n, generator=gen)
        for idx in perm.split(bs):
            st = staging[: len(idx)]
            idx = idx.to(data.device)
            torch.index_select(data, 0, idx, out=st)
            cache.touch(st.numel() * 2)
            if buf is None:  # direct
                b = st
            else:
                b = buf[: len(idx)]
                b.copy_(st)  # blocking: the staging buffer is reused by the next batch
            probes.step_all({name: b[:, a:z] for name, (a, z) in cols.items()},
                            labels.index_select(0, idx.to(labels.device)).to(device))
        probes.end_epoch()


def _chunk_rows(features: int, budget: int = 8 * 2**20) -> int:
    """Rows per evaluation chunk so its float32 copy of the cache stays near ``budget`` bytes."""
    return max(1, budget // (4 * max(features, 1)))


@torch.no_grad()
def _cached_correct(probes: ProbeSet, cache: FeatureCache, n: int, device) -> list[int]:
    """How many of the first ``n`` cached samples each layer's FC classifies correctly (one pass, in
    chunks of rows holding every layer's columns), in the order of ``probes.fcs``."""
    correct = dict.fromkeys(probes.fcs, 0)
    rows = _chunk_rows(cache.data.shape[1])
    for s in range(0, n, rows):
        x = cache.data[s : min(s + rows, n)].to(device, torch.float32)
        cache.touch(x.numel() * 2)
        y = cache.labels[s : min(s + rows, n)].to(device)
        for name, fc in probes.fcs.items():
            a, z = cache.offsets[name]
            correct[name] += (fc(x[:, a:z]).argmax(1) == y).sum().item()
    return list(correct.values())
