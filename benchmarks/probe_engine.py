"""Benchmark of the capture engine and the probes (METHOD.md stage 2; DESIGN.md "The capture engine").

On one frozen network and one data set, in ONE process, it times:

(a) the NAIVE way, written here as the baseline: for each layer separately, every epoch a
    forward pass through the frozen layers up to it (a :class:`~filterlens.capture.Capture`
    on that single layer, which stops right after it), training that layer's bias-free FC;
    cost ~ layers x epochs x forward passes. Run twice:
    - ``naive`` (no augmentation): the ``fast`` recipe (:meth:`ProbeRecipe.fast`) and epochs of
      (c); every epoch is a fresh shuffle in mini-batches of the recipe's batch size (100).
      The permutations are drawn exactly as ``fast`` mode draws them (one permutation per epoch
      from a generator seeded by ``seed``, the same for every layer), so naive and fast see the same batches
      and differ only in where the features come from: float32 computed on the fly (naive)
      vs the float16 cache cast to float32 per batch (fast);
    - ``naive_aug`` (augmentation on): the authors' recipe (:meth:`ProbeRecipe.paper`) with the
      epochs of (b), the same loader (same seed, order and augmentation) as ``paper`` mode.
    Both use the same :class:`ProbeSet` class (same initial weights, optimiser, schedule).
(b) ``paper`` mode: ``train_probes`` with ``probe_mode="paper"`` (stream: one forward pass per
    epoch updates every layer's probe);
(c) ``fast`` mode: ``train_probes`` with ``probe_mode="fast"`` (one capture pass into the
    cache, bfloat16 where the CPU has bfloat16 units, else float16; every probe trained from it);
    its capture / probe-training / evaluation split (``ProbeResult.timings``) is reported, the
    probe-training share on its own;
(d) the floor: one inference pass of the full frozen network over train+test (no hooks,
    ``torch.no_grad``, batch 256 like the capture); the fastest of two runs (one before,
    one after the other modes; an untimed floor pass first warms every batch shape), which
    makes ``fast_over_floor`` conservative;
(e) the probes' steps in parts (:func:`probe_step_parts`): their products, their row gathers and their
    optimiser updates, each alone; their sum is the least time fast mode's probe training can take with torch's
    kernels, so ``1 + sum / floor`` is the least ``fast_over_floor`` can be (the capture is a forward pass too).

The benchmark's process (and each memory subprocess) has glibc keep freed blocks, as the command line does
(``filterlens.memory.keep_freed_memory``; ``settings.allocator`` says what it got).

Memory (each measurement in its own subprocess, after the timings, because peak RSS only
grows within a process): the baseline is the resident set (VmRSS) right before
``train_probes`` (python + torch + filterlens imported, data loaded, model built, and every
code path run once on one batch: the first torch optimiser imports torch._dynamo, ~150-200
MiB of code that is no feature memory; the peak over the cold baseline, before that, is
reported too as ``cache_peak_over_bound_cold``), the peak is VmHWM after it (reset through
/proc/self/clear_refs right after the baseline where the kernel allows; else ru_maxrss).
Reported peaks are peak - baseline.
- cache mode (``fast``): ``cache_peak_over_bound`` = (peak - baseline) / (actual cache bytes
  (float16 features + int64 labels, train+test) + model (parameters and buffers) + one
  capture batch (the float32 input batch of 256 and the float32 features of every selected
  layer for it)). Target <= 1.5. The model is also inside the baseline, so its term is slack.
- stream mode (``paper``, 1 epoch): run with N and 2N training samples (``--stream-samples``,
  N = 10000 also in ``--quick``: one cheap epoch, and a large N keeps allocator noise small);
  ``stream_peak_growth`` = (peak - baseline at 2N) / (peak - baseline at N), reported.
  The target "does not grow with the number of samples" is checked as
  ``stream_growth_over_feature_bytes`` = (peak at 2N - peak at N, both over their baselines)
  / (float16 feature bytes of the N added samples): 0 for an engine whose memory does not
  depend on the samples, about 1 for one that keeps their features; target <= 0.05 (a few
  MiB of allocator noise on a peak of ~40 MiB moves the plain ratio by ~10%).

Targets (issue 4): naive/fast >= 10 (10 epochs, 13 layers), naive_aug/paper >= 5 (13 layers),
fast/floor <= 3, every layer's fast accuracy within 0.5 points of naive, the memory bounds.

Network: ``vgg16`` at ``--width-mult`` (default 1/2: VGG-16's 13 convs and pools with 32 to
256 filters; ``--model vgg16_slim`` is the 1/8-width variant), trained briefly with
``filterlens.train.train`` on a Fashion-MNIST subset (Debian's idx files; scikit-learn's
digits when they are absent). The trained model is cached in a temporary directory keyed by
the training settings and reused by later runs; every timing comes from this one run.

Timing on a shared machine: each mode records its wall and process-CPU seconds and the share
of the machine's CPU that other processes used meanwhile (``runs``); the full run first waits
(up to ``--wait-quiet`` seconds in all) for the machine to be quiet. torch's OpenMP threads
slow down many-fold when another process takes a core, so on a busy machine run with
``--threads 1`` and read ``cpu_time_ratios`` too.

Usage::

    python benchmarks/probe_engine.py            # full: 10000/10000 samples, 13 layers, 10 epochs (paper: 3)
    python benchmarks/probe_engine.py --quick    # reduced: 3000/1000 samples, 3 epochs (paper: 2), about 2 min
    python benchmarks/probe_engine.py --device cuda   # the same on a GPU; writes probe_engine_cuda.json

Writes ``benchmarks/results/probe_engine.json`` (``probe_engine_quick.json`` with
``--quick``; ``probe_engine_cuda[_quick].json`` on CUDA) atomically. Exit status 0 (1 with
``--strict`` when a target fails; 2 for a device that is not valid or not there).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import filterlens
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import filterlens

from filterlens.capture import Capture, CaptureLayer, FeatureCache, LabelMeanSink, pooled_shape
from filterlens.config import Config, parse_bytes, parse_pool
from filterlens.data import FASHION_MNIST_DEBIAN_DIR
from filterlens.errors import FilterlensError
from filterlens.loaders import Feed, make_loader
from filterlens.memory import keep_freed_memory, peak_bytes, reset_peak, resident_bytes
from filterlens.models import build_model, list_layers, load_checkpoint, select_layers
from filterlens.precision import for_inference
from filterlens.probes import ProbeEval, ProbeRecipe, ProbeSet, train_probes
from filterlens.train import load_data_for, model_spec_for, train
from filterlens.utils import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"
CAPTURE_BATCH = 256  # train_probes' capture/test batch size; the floor uses the same
TARGETS = {"naive_over_fast": (">=", 15.0), "naive_aug_over_paper": (">=", 5.0), "fast_over_floor": ("<=", 1.5),
           "fast_vs_naive_max_abs_diff_points": ("<=", 0.5), "cache_peak_over_bound": ("<=", 1.5),
           "stream_growth_over_feature_bytes": ("<=", 0.05)}


# ----------------------------------------------------------------------------- memory helpers

def mib(b) -> float:
    return b / 2**20


# ----------------------------------------------------------------------------- device

def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


# ----------------------------------------------------------------------------- CPU contention

def _proc_stat() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Meter:
    """Wall and process-CPU seconds of a block, and the share of the machine's CPU other processes used."""

    def __enter__(self):
        gc.collect()
        self._stat, self._cpu, self._t = _proc_stat(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._t
        self.cpu = _own_cpu() - self._cpu
        end = _proc_stat()
        self.others_share = None
        if self._stat and end and end[1] > self._stat[1]:
            hz = os.sysconf("SC_CLK_TCK")
            busy, total = (end[0] - self._stat[0]) / hz, (end[1] - self._stat[1]) / hz
            self.others_share = max(0.0, busy - self.cpu) / total

    def record(self) -> dict:
        return {"wall_s": self.wall, "cpu_s": self.cpu, "others_cpu_share": self.others_share}


def others_share(window: float = 1.0) -> float | None:
    """Share of the machine's CPU used by other processes over ``window`` seconds (we sleep meanwhile)."""
    with Meter() as m:
        time.sleep(window)
    return m.others_share


def wait_quiet(max_wait: float, limit: float = 0.10, echo=print) -> dict:
    """Wait (up to ``max_wait`` s) until other processes use under ``limit`` of the CPU."""
    t0, share = time.perf_counter(), others_share(0.5)
    while share is not None and share > limit and time.perf_counter() - t0 < max_wait:
        share = others_share(2.0)
    waited = time.perf_counter() - t0
    if share is not None and share > limit:
        echo(f"  (machine busy: other processes use {100 * share:.0f}% of the CPU; measuring anyway)")
    return {"waited_s": waited, "others_cpu_share_before": share}


# ----------------------------------------------------------------------------- setup

def pick_dataset(requested: str) -> str:
    if requested != "auto":
        return requested
    d = Path(FASHION_MNIST_DEBIAN_DIR)
    if d.is_dir() and any(d.glob("train-images-idx3-ubyte*")):
        return "fashion-mnist"
    return "digits"


def train_config(args) -> Config:
    return Config(dataset=args.dataset, model=args.model, width_mult=args.width_mult, epochs=args.train_epochs,
                  train_samples=args.train_samples, test_samples=args.test_samples, seed=args.seed,
                  device=str(args.device), progress=False, layers=args.layers)


def trained_model(args, echo):
    """Train (or reuse) the backbone in a temporary run directory keyed by the training settings."""
    cfg = train_config(args)
    run_dir = Path(tempfile.gettempdir()) / f"filterlens-bench-probe-engine-{cfg.stage_hash('train')}"
    done = (run_dir / "model.pt").exists() and (run_dir / "train.json").exists()
    t0 = time.perf_counter()
    summary = train(cfg, run_dir, overwrite=not done, progress=False)
    return run_dir, summary, time.perf_counter() - t0, done


def load_model(run_dir: Path, cfg: Config, device="cpu"):
    data = load_data_for(cfg)
    spec = model_spec_for(cfg, data)
    model = build_model(spec)
    load_checkpoint(run_dir / "model.pt", model, spec)
    model.to(device).eval()
    return model, data


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


# ----------------------------------------------------------------------------- the modes

@torch.no_grad()
def floor_pass(model, data, device) -> None:
    """(d): one inference pass of the full network over train+test, no hooks, batch 256, in the precision the
    engine's capture runs in (filterlens.precision: bfloat16 with channels-last maps where the CPU has it)."""
    model.eval()
    prec = for_inference(device, True, model)
    with prec.running(model), prec.autocast():
        for split in ("train", "test"):
            for x, _ in make_loader(data, split, CAPTURE_BATCH, device=device):
                model(prec.batch(x))


def engine_mode(model, layers, data, cfg: Config, device):
    """(b) or (c): filterlens.probes.train_probes."""
    return train_probes(model, layers, Feed(data, device, seed=cfg.seed), cfg, cache_dir=None, progress=False)


def warm_up(model, layers, data, cfg: Config, device) -> None:
    """Run every code path once on one batch (oneDNN kernels; the optimiser's first use imports
    torch._dynamo, about 150 MiB of modules), so no timed mode or memory peak pays for it."""
    pool = parse_pool(cfg.probe_pool)
    x, y = next(iter(make_loader(data, "train", CAPTURE_BATCH, device=device)))
    prec = for_inference(device, True, model)
    with torch.no_grad(), prec.running(model), prec.autocast():
        model.eval()(prec.batch(x))
    with Capture(model, layers, pool, prec) as cap:
        feats = cap.forward(x)
        cls = cap.layers
    for recipe in (ProbeRecipe.fast(1), ProbeRecipe.paper(1)):
        probes = ProbeSet(cls, data.num_labels, recipe, device=device)
        probes.step_all(feats, y)
        probes.end_epoch()
        ev = ProbeEval(probes)
        ev.update(feats, y)
        LabelMeanSink(cls, data.num_labels, device=device).update(feats, y)
    del feats, probes, ev
    gc.collect()
    sync(device)


def naive_mode(model, layers, data, cfg: Config, recipe: ProbeRecipe, same_perm_as_fast: bool, device) -> dict:
    """(a): every layer on its own; every epoch a forward pass through the frozen layers up to it.

    ``same_perm_as_fast``: draw each epoch's order from a generator seeded by ``cfg.seed``,
    the same sequence for every layer, as fast mode does (no augmentation); otherwise use
    the training loader of paper mode (same seed, order and augmentation).
    """
    pool = parse_pool(cfg.probe_pool)
    cls = [CaptureLayer(l, pooled_shape(l.shape, pool)) for l in layers]
    # the same initial weights as train_probes
    probes = ProbeSet(cls, data.num_labels, recipe, seed=cfg.seed, device=device)
    split = data.train
    n_train, n_test = len(data.train), len(data.test)
    loader = make_loader(data, "train", recipe.batch_size, train=True, seed=cfg.seed, device=device,
                         augment=recipe.augment)
    test_loader = make_loader(data, "test", CAPTURE_BATCH, device=device)
    acc, per_layer_s, passes = {}, {}, 0
    for l, cl in zip(layers, cls):
        gen = torch.Generator().manual_seed(cfg.seed)
        one = probes.subset(cl.name)  # this layer's FC alone: same initial weights, its own optimiser
        t0 = time.perf_counter()
        with Capture(model, [l], pool, for_inference(device, True, model)) as cap:  # stops right after layer l
            for epoch in range(recipe.epochs):
                if same_perm_as_fast:
                    perm = torch.randperm(n_train, generator=gen)
                    # as the loaders do: the uint8/float images move to the device, then normalise
                    batches = ((split.normalise(split.images[idx].to(device, non_blocking=True)),
                                split.labels[idx].to(device, non_blocking=True))
                               for idx in perm.split(recipe.batch_size))
                else:
                    loader.set_epoch(epoch)
                    batches = loader
                for x, y in batches:
                    one.step(cl.name, cap.forward(x)[cl.name], y)
                one.end_epoch()
                passes += 1
            fc, correct = one.fcs[cl.name], 0
            with torch.no_grad():
                for x, y in test_loader:
                    f = cap.forward(x)[cl.name]
                    correct += (fc(f.reshape(len(f), -1).float()).argmax(1) == y).sum().item()
            passes += 1
        acc[cl.name] = correct / max(n_test, 1)  # .item() above waited for the device
        per_layer_s[cl.name] = time.perf_counter() - t0
    return {"accuracy": acc, "per_layer_s": per_layer_s,
            "partial_forward_passes": passes, "recipe": recipe}


@torch.no_grad()
def probe_step_parts(cap_layers, num_labels: int, rows: int, recipe: ProbeRecipe, device, dtype) -> dict[str, float]:
    """Seconds that fast mode's probe training spends at least in each of the three parts of its steps that
    move the most bytes, each timed alone with the engine's own calls for one epoch of ``rows`` samples in batches
    of the recipe's size, times the epochs:

    - ``products``: every step's two products per layer (logits, gradient; what ``ProbeSet.step_all``
      multiplies, in ``dtype``, the type the engine recorded as its ``probe_products``), one batch read again
      and again (from the CPU's caches);
    - ``gathers``: every step's rows gathered from a cache of ``rows`` samples in ``dtype`` into the reused
      batch (``train_from_cache``'s ``index_select``), in one epoch's shuffled order;
    - ``optimiser``: every step's update of all the probes' weights (a :class:`ProbeSet`'s own optimiser,
      fused where torch has it), the gradients already written.

    No softmax, labels or Python between them: a lower bound, so ``1 + sum / floor`` is the least
    ``fast_over_floor`` can be with torch's kernels and the engine's design (the capture pass is a forward pass
    too)."""
    bs, width = recipe.batch_size, sum(cl.features for cl in cap_layers)
    steps = -(-rows // bs)

    batch = torch.randn(bs, width, device=device).to(dtype)
    views, a = [], 0
    for cl in cap_layers:
        views.append(batch[:, a:a + cl.features])
        a += cl.features
    weights = [torch.randn(num_labels, cl.features, device=device).to(dtype) for cl in cap_layers]
    p = torch.randn(bs, num_labels, device=device).to(dtype)

    def products():
        for _ in range(steps):
            for x, w in zip(views, weights):
                torch.mm(x, w.T)
                torch.mm(p.T, x)

    cache = torch.empty((rows, width), dtype=dtype, device=device).fill_(1)  # pages touched before the clock
    batches = torch.randperm(rows, generator=torch.Generator().manual_seed(0)).to(device).split(bs)

    def gathers():
        for idx in batches:
            torch.index_select(cache, 0, idx, out=batch[: len(idx)])

    probes = ProbeSet(cap_layers, num_labels, recipe, device=device)
    probes._flat_grad.normal_()

    def optimiser():
        for _ in range(steps):
            probes.opt.step()

    seconds = {}
    for name, epoch in (("products", products), ("gathers", gathers), ("optimiser", optimiser)):
        epoch()  # kernels chosen and memory touched before the clock starts
        sync(device)
        t0 = time.perf_counter()
        epoch()
        sync(device)
        seconds[name] = (time.perf_counter() - t0) * recipe.epochs
    return seconds


# ----------------------------------------------------------------------------- memory workers

def memory_worker(spec: dict) -> dict:
    """Run in a subprocess: one train_probes call, baseline and peak resident memory around it."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    cfg = Config.from_dict(spec["config"])
    model, data = load_model(Path(spec["run_dir"]), cfg, device)
    layers = select_layers(list_layers(model, (data.in_channels, data.image_size, data.image_size)), cfg.layers)
    gc.collect()
    cold = resident_bytes()
    warm_up(model, layers, data, cfg, device)
    baseline = resident_bytes()
    reset_ok = reset_peak()
    hwm_before = peak_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res = train_probes(model, layers, Feed(data, device, seed=cfg.seed), cfg, cache_dir=None, progress=False)
    sync(device)
    peak = peak_bytes()
    gpu_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    pool = parse_pool(cfg.probe_pool)
    cls = [CaptureLayer(l, pooled_shape(l.shape, pool)) for l in layers]
    n = len(data.train) + len(data.test)
    cache = FeatureCache.nbytes(cls, n) + 8 * n  # float16 features + int64 labels
    batch = 4 * CAPTURE_BATCH * (data.in_channels * data.image_size ** 2 + sum(cl.features for cl in cls))
    return {"engine": res.engine, "mode": res.mode, "train_samples": len(data.train), "test_samples": len(data.test),
            "cold_baseline_bytes": cold, "baseline_bytes": baseline, "peak_bytes": peak,
            "peak_over_baseline_bytes": peak - baseline,
            "hwm_reset": reset_ok, "hwm_at_baseline_bytes": hwm_before,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cache_bytes": cache if res.engine == "memory" else 0, "model_bytes": model_bytes(model),
            "engine_plan": res.engine_plan,
            "batch_bytes": batch, "timings": res.timings, "device": str(device), "gpu_peak_bytes": gpu_peak}


def run_worker(spec: dict, echo) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- output

def scale_case(args) -> int:
    """``--scale`` (issue 18): the same frozen network, a cache budget of a quarter of what its features need.

    Times, in this one process, ``train_probes`` with each engine at ``--scale-epochs`` (default 30):
    ``memory`` (a budget that fits, the reference), ``groups``, ``disk``, ``auto`` (the quarter budget:
    which engine it chose, from its own measurements) and ``stream``; the largest difference in any
    layer's accuracy against memory (0: identical); then how auto's time grows with the budget (a half,
    a quarter, an eighth) and with the number of samples (half of them); last, in a subprocess, auto's peak
    memory over (budget + model + one capture batch). Targets: auto within 2x of memory, at least 5x
    faster than streaming, peak <= 1.5x.
    """
    echo = print
    device = torch.device(args.device)
    run_dir, summary, _, _ = trained_model(args, lambda s: None)
    base = train_config(args).replace(probe_mode="fast", probe_epochs=args.scale_epochs)
    model, data = load_model(run_dir, base, device)
    layers = select_layers(list_layers(model, (data.in_channels, data.image_size, data.image_size)), args.layers)
    cls = [CaptureLayer(l, pooled_shape(l.shape, parse_pool(base.probe_pool), l.unit_kind)) for l in layers]
    n = len(data.train) + len(data.test)
    need = FeatureCache.nbytes(cls, n)
    quarter = need // 4
    echo(f"scale case: {args.model} x{args.width_mult:g}, {len(data.train)} train / {len(data.test)} test, "
         f"{len(layers)} layers, features {mib(need):.0f} MiB, budget {mib(quarter):.0f} MiB (a quarter), "
         f"{args.scale_epochs} probe epochs, {torch.get_num_threads()} threads")
    warm_up(model, layers, data, base, device)
    runs, results = {}, {}
    scratch = Path(tempfile.mkdtemp(prefix="filterlens-scale-"))

    def run(key, cfg, subset=None):
        quiet = wait_quiet(args.wait_quiet or 0)
        d = data
        if subset is not None:  # the first half of the samples
            import copy

            d = copy.copy(data)
            d.train, d.test = data.train.subset(torch.arange(subset[0])), data.test.subset(torch.arange(subset[1]))
        try:
            with Meter() as m:
                res = train_probes(model, layers, Feed(d, device, seed=cfg.seed), cfg, cache_dir=scratch / key,
                                   progress=False)
                sync(device)
        except FilterlensError as exc:  # e.g. groups when one layer alone is over the budget
            runs[key] = {"refused": str(exc)}
            echo(f"  {key:<22}   refused: {exc}")
            return None
        runs[key] = {**m.record(), **quiet, "engine": res.engine, "plan": res.engine_plan}
        results[key] = res
        echo(f"  {key:<22} {m.wall:8.1f} s   engine {res.engine:<7} ({res.note[:110]})")
        return res

    try:
        run("memory", base.replace(engine="memory", cache_budget=str(2 * need)))
        run("groups", base.replace(engine="groups", cache_budget=str(quarter)))
        run("disk", base.replace(engine="disk", cache_budget=str(quarter)))
        run("auto", base.replace(engine="auto", cache_budget=str(quarter)))
        run("stream", base.replace(engine="stream", cache_budget=str(quarter)))
        for frac in (2, 8):
            run(f"auto_budget_1/{frac}", base.replace(engine="auto", cache_budget=str(need // frac)))
        run("auto_half_samples", base.replace(engine="auto", cache_budget=str(quarter // 2)),
            subset=(len(data.train) // 2, len(data.test) // 2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    ref = {r.name: r.accuracy for r in results["memory"].layers}
    diff = {k: max(abs(r.accuracy - ref[r.name]) for r in results[k].layers)
            for k in ("groups", "disk", "auto", "stream") if k in results}
    wall = {k: v["wall_s"] for k, v in runs.items() if "wall_s" in v}
    echo("memory: auto in a subprocess ...")
    mem = run_worker({"run_dir": str(run_dir),
                      "config": base.replace(engine="auto", cache_budget=str(quarter)).to_dict(),
                      "threads": args.threads, "device": str(device)}, echo)
    batch = mem["batch_bytes"]
    peak_ratio = mem["peak_over_baseline_bytes"] / (quarter + mem["model_bytes"] + batch)
    ratios = {"auto_over_memory": wall["auto"] / wall["memory"], "stream_over_auto": wall["stream"] / wall["auto"],
              "auto_peak_over_bound": peak_ratio}
    targets = {"auto_over_memory": ratios["auto_over_memory"] <= 2.0,
               "stream_over_auto": ratios["stream_over_auto"] >= 5.0,
               "auto_peak_over_bound": peak_ratio <= 1.5}
    echo(f"auto chose {runs['auto']['engine']}: auto / memory {ratios['auto_over_memory']:.2f} (target <= 2), "
         f"stream / auto {ratios['stream_over_auto']:.2f} (target >= 5), peak / (budget + model + batch) "
         f"{peak_ratio:.2f} (target <= 1.5); largest accuracy difference against memory: "
         + ", ".join(f"{k} {v:.4f}" for k, v in diff.items()))
    out = args.out
    write_json_atomic(out, {"benchmark": "probe_engine --scale", "model": args.model, "width_mult": args.width_mult,
                            "train_samples": len(data.train), "test_samples": len(data.test), "layers": len(layers),
                            "feature_bytes": need, "budget_bytes": quarter, "probe_epochs": args.scale_epochs,
                            "threads": torch.get_num_threads(), "runs": runs, "max_accuracy_diff_vs_memory": diff,
                            "ratios": ratios, "targets_met": targets, "auto_memory_worker": mem,
                            "what": "train_probes wall time per engine (capture, probe training, evaluation); the "
                                    "backbone's training is not included"})
    echo(f"-> {out}")
    return 0 if all(targets.values()) or not args.strict else 1


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verdict(key: str, value) -> str:
    if value is None:
        return "n/a"
    op, bound = TARGETS[key]
    ok = value >= bound if op == ">=" else value <= bound
    return "PASS" if ok else "FAIL"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="reduced run (about 2 min): 3000/1000 samples, 3 epochs, paper 2 epochs")
    ap.add_argument("--train-samples", type=int, default=None, help="training samples (full 10000, quick 3000)")
    ap.add_argument("--test-samples", type=int, default=None, help="test samples (full 10000, quick 1000)")
    ap.add_argument("--epochs", type=int, default=None, help="probe epochs of fast and naive (full 10, quick 3)")
    ap.add_argument("--paper-epochs", type=int, default=None,
                    help="probe epochs of paper and naive-with-augmentation (full 3, quick 2)")
    ap.add_argument("--model", default="vgg16", help="13-layer VGG to probe (vgg16; vgg16_slim is 1/8 width)")
    ap.add_argument("--width-mult", type=float, default=0.5, help="width multiplier of --model (0.5)")
    ap.add_argument("--train-epochs", type=int, default=2, help="backbone training epochs (2)")
    ap.add_argument("--layers", default="all", help="layers to probe (filterlens syntax; default all 13)")
    ap.add_argument("--dataset", default="auto", help="auto (Fashion-MNIST, digits when absent), fashion-mnist, digits")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu",
                    help="where the network and probes run: cpu (default), cuda, cuda:N or auto (cuda when there "
                         "is a GPU); on CUDA the default output is probe_engine_cuda[_quick].json")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--wait-quiet", type=float, default=None,
                    help="seconds, in all, to wait before the timed modes for other processes to leave the CPU "
                         "(full 120, quick 0)")
    ap.add_argument("--stream-samples", type=int, default=10000,
                    help="stream-mode memory check: N and 2N training samples (10000)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    ap.add_argument("--strict", action="store_true", help="exit status 1 when a target fails")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    ap.add_argument("--scale", action="store_true",
                    help="the scale case instead: a cache budget of a quarter of what the features need, every engine "
                         "against the all-in-memory cache (-> probe_engine_scale*.json)")
    ap.add_argument("--scale-epochs", type=int, default=30, help="probe epochs of the scale case (30, fast's default)")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    q = args.quick
    for name, full, quick in (("train_samples", 10000, 3000), ("test_samples", 10000, 1000), ("epochs", 10, 3),
                              ("paper_epochs", 3, 2)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if q else 120.0
    try:
        args.device = resolve_device(args.device)
        if args.device.type == "cuda":
            count = torch.cuda.device_count()
            if args.device.index is None:  # record which GPU: "cuda" -> "cuda:N", the current one
                args.device = torch.device("cuda", torch.cuda.current_device())
            elif args.device.index >= count:
                raise FilterlensError(f"device '{args.device}' asked for but this machine has {count} CUDA GPU(s)")
    except FilterlensError as exc:
        print(f"probe_engine: {exc}", file=sys.stderr)  # one line, no traceback
        raise SystemExit(2) from None
    args.dataset = pick_dataset(args.dataset)
    if args.out is None:
        tag = "_cuda" if args.device.type == "cuda" else ""
        kind = "_scale" if args.scale else ""
        args.out = RESULTS / (f"probe_engine{kind}{tag}_quick.json" if q else f"probe_engine{kind}{tag}.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    allocator = keep_freed_memory()  # as the command line does, in this process and in the memory workers
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale:
        return scale_case(args)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    echo = print
    device = args.device
    echo(f"probe_engine benchmark ({'quick' if args.quick else 'full'}) on {device} ({device_name(device)}): "
         f"{args.model} x{args.width_mult:g} on {args.dataset}, "
         f"{args.train_samples} train / {args.test_samples} test samples, layers {args.layers}, "
         f"fast/naive {args.epochs} epochs, paper/naive-aug {args.paper_epochs} epochs; "
         f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
         f"load average {load_start[0]:.2f}")

    # the frozen network
    run_dir, summary, train_s, reused = trained_model(args, lambda s: None)
    echo(f"backbone: {'reused' if reused else 'trained'} in {train_s:.1f}s, test accuracy "
         f"{summary['test_accuracy']:.4f} ({run_dir})")
    base = train_config(args)
    model, data = load_model(run_dir, base, device)
    all_layers = list_layers(model, (data.in_channels, data.image_size, data.image_size))
    layers = select_layers(all_layers, args.layers)
    cfg_fast = base.replace(probe_mode="fast", probe_epochs=args.epochs)
    cfg_paper = base.replace(probe_mode="paper", probe_epochs=args.paper_epochs)
    recipe_fast, recipe_paper = ProbeRecipe.from_config(cfg_fast), ProbeRecipe.from_config(cfg_paper)
    cap_layers = [CaptureLayer(l, pooled_shape(l.shape, parse_pool(cfg_fast.probe_pool))) for l in layers]

    warm_up(model, layers, data, cfg_fast, device)
    floor_pass(model, data, device)  # untimed: every batch shape of the data once (oneDNN primitives, page faults)
    runs: dict[str, dict] = {}

    wait_left = [args.wait_quiet]

    def timed(key: str, label: str, fn):
        quiet = wait_quiet(wait_left[0], echo=echo)
        wait_left[0] = max(0.0, wait_left[0] - quiet["waited_s"])
        torch.manual_seed(args.seed)
        sync(device)  # nothing queued from before is timed
        with Meter() as m:
            out = fn()
            sync(device)  # on CUDA: the mode's queued work is done before the clock stops
        runs[key] = {**m.record(), **quiet}
        other = "?" if m.others_share is None else f"{100 * m.others_share:.0f}%"
        echo(f"{label:<16}{m.wall:8.2f}s wall {m.cpu:8.2f}s cpu  (other processes: {other} of the CPU)")
        return out

    timed("floor_1", "(d) floor", lambda: floor_pass(model, data, device))
    fast = timed("fast", "(c) fast", lambda: engine_mode(model, layers, data, cfg_fast, device))
    if fast.engine != "memory":
        raise SystemExit(f"fast mode did not use the cache ({fast.note}); raise the cache budget")
    echo(f"    timings: {({k: round(v, 2) for k, v in fast.timings.items()})}")
    paper = timed("paper", "(b) paper", lambda: engine_mode(model, layers, data, cfg_paper, device))
    echo(f"    timings: {({k: round(v, 2) for k, v in paper.timings.items()})}")
    naive = timed("naive", "(a) naive", lambda: naive_mode(model, layers, data, cfg_fast, recipe_fast, True, device))
    naive_aug = timed("naive_aug", "(a) naive_aug",
                      lambda: naive_mode(model, layers, data, cfg_paper, recipe_paper, False, device))
    timed("floor_2", "(d) floor again", lambda: floor_pass(model, data, device))
    arithmetic = getattr(torch, fast.precision["probe_products"])  # the type fast mode multiplied in
    parts = timed("step_parts", "probe step parts", lambda: probe_step_parts(
        cap_layers, data.num_labels, len(data.train), recipe_fast, device, arithmetic))
    parts_sum = sum(parts.values())
    floor_key = min(("floor_1", "floor_2"), key=lambda k: runs[k]["wall_s"])
    runs["floor"] = dict(runs[floor_key], run=floor_key)
    timing_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_mid = os.getloadavg()
    sec = {k: runs[k]["wall_s"] for k in ("naive", "naive_aug", "paper", "fast", "floor")}
    cpu = {k: runs[k]["cpu_s"] for k in ("naive", "naive_aug", "paper", "fast", "floor")}

    names = [l.name for l in layers]
    acc = {"naive": [naive["accuracy"][n] for n in names],
           "fast": [next(r.accuracy for r in fast.layers if r.name == n) for n in names],
           "naive_aug": [naive_aug["accuracy"][n] for n in names],
           "paper": [next(r.accuracy for r in paper.layers if r.name == n) for n in names]}
    diff_fast = max(abs(a - b) for a, b in zip(acc["fast"], acc["naive"])) * 100
    diff_paper = max(abs(a - b) for a, b in zip(acc["paper"], acc["naive_aug"])) * 100

    ratios = {"naive_over_fast": sec["naive"] / sec["fast"], "naive_aug_over_paper": sec["naive_aug"] / sec["paper"],
              "fast_over_floor": sec["fast"] / sec["floor"]}
    cpu_ratios = {"naive_over_fast": cpu["naive"] / cpu["fast"],
                  "naive_aug_over_paper": cpu["naive_aug"] / cpu["paper"],
                  "fast_over_floor": cpu["fast"] / cpu["floor"]}
    share = fast.timings.get("probe_train_s", 0.0) / sec["fast"]
    capture_over_floor = fast.timings.get("capture_s", 0.0) / sec["floor"]

    # memory, each in its own subprocess (after the timings, so they do not disturb them)
    memory = None
    if not args.no_memory:
        echo("memory: subprocesses (cache mode; stream mode at N and 2N training samples) ...")
        cache_cfg = cfg_fast.replace(probe_epochs=1)
        m_cache = run_worker({"run_dir": str(run_dir), "config": cache_cfg.to_dict(), "threads": args.threads,
                              "device": str(device)}, echo)
        n1, n2 = args.stream_samples, 2 * args.stream_samples
        stream = [run_worker({"run_dir": str(run_dir), "config": cfg_paper.replace(probe_epochs=1, train_samples=n)
                              .to_dict(), "threads": args.threads, "device": str(device)}, echo) for n in (n1, n2)]
        bound = m_cache["cache_bytes"] + m_cache["model_bytes"] + m_cache["batch_bytes"]
        added = FeatureCache.nbytes(cap_layers, stream[1]["train_samples"] - stream[0]["train_samples"])
        memory = {
            "method": "each measurement in its own subprocess; baseline = VmRSS right before train_probes "
                      "(python, torch, filterlens imported, data loaded, model built, every code path run once on "
                      "one batch: the optimiser's first use imports torch._dynamo, ~150 MiB, see cold_baseline_bytes); "
                      "peak = VmHWM after it, "
                      "reset to the baseline through /proc/self/clear_refs when hwm_reset is true; reported "
                      "peaks are peak - baseline. Cache mode: fast, 1 probe epoch; stream mode: paper, 1 epoch. "
                      "On CUDA each worker also records gpu_peak_bytes (torch.cuda.max_memory_allocated over "
                      "train_probes, reset right before it); the targets stay on host memory.",
            "cache_mode": m_cache,
            "cache_bound_bytes": bound,
            "cache_peak_over_bound": m_cache["peak_over_baseline_bytes"] / bound,
            "cache_peak_over_bound_cold": (m_cache["peak_bytes"] - m_cache["cold_baseline_bytes"]) / bound,
            "stream_mode": {f"train_samples_{s['train_samples']}": s for s in stream},
            "stream_peak_growth": stream[1]["peak_over_baseline_bytes"] / max(stream[0]["peak_over_baseline_bytes"], 1),
            "stream_absolute_peak_growth": stream[1]["peak_bytes"] / max(stream[0]["peak_bytes"], 1),
            "stream_added_feature_bytes": added,
            "stream_growth_over_feature_bytes": (stream[1]["peak_over_baseline_bytes"] - stream[0][
                "peak_over_baseline_bytes"]) / added if added else None,  # None: the data set has < 2N samples
            "timing_process_ru_maxrss_bytes": timing_peak,
        }
        if m_cache["engine"] != "cache" or any(s["engine"] != "stream" for s in stream):
            memory["warning"] = "a memory worker did not use the expected engine"

    checks = {**ratios, "fast_vs_naive_max_abs_diff_points": diff_fast,
              "cache_peak_over_bound": memory["cache_peak_over_bound"] if memory else None,
              "stream_growth_over_feature_bytes": memory["stream_growth_over_feature_bytes"] if memory else None}
    full_shape = len(layers) == 13
    conditions = {"naive_over_fast": args.epochs == 10 and full_shape, "naive_aug_over_paper": full_shape}
    targets = {}
    for key, value in checks.items():
        op, bound = TARGETS[key]
        v = verdict(key, value)
        note = "" if conditions.get(key, True) else " (indicative: the target is defined for 13 layers" + (
            ", 10 epochs)" if key == "naive_over_fast" else ")")
        targets[key] = {"value": value, "target": f"{op} {bound}", "result": v, "note": note.strip(" ()")}
        if key in cpu_ratios:
            targets[key].update(cpu_time_value=cpu_ratios[key], cpu_time_result=verdict(key, cpu_ratios[key]))

    load_end = os.getloadavg()
    result = {
        "benchmark": "probe_engine",
        "quick": args.quick,
        "seconds": sec,
        **ratios,
        "cpu_seconds": cpu,
        "cpu_time_ratios": cpu_ratios,
        "runs": runs,
        "fast_probe_train_share": share,
        "fast_over_floor_each_floor_run": [sec["fast"] / runs["floor_1"]["wall_s"],
                                           sec["fast"] / runs["floor_2"]["wall_s"]],
        "fast_capture_over_floor": capture_over_floor,
        "fast_without_probe_train_over_floor": (sec["fast"] - fast.timings.get("probe_train_s", 0.0)) / sec["floor"],
        "probe_products_s": parts["products"],
        "probe_step_parts_s": parts,
        "fast_over_floor_least": 1 + parts_sum / sec["floor"],
        "fast_timings": fast.timings,
        "paper_timings": paper.timings,
        "fast_vs_naive_max_abs_diff_points": diff_fast,
        "paper_vs_naive_aug_max_abs_diff_points": diff_paper,
        "cache_peak_over_bound": checks["cache_peak_over_bound"],
        "stream_peak_growth": memory["stream_peak_growth"] if memory else None,
        "stream_growth_over_feature_bytes": checks["stream_growth_over_feature_bytes"],
        "memory": memory,
        "accuracy": {"layers": names, **acc},
        "naive_per_layer_s": {"naive": naive["per_layer_s"], "naive_aug": naive_aug["per_layer_s"]},
        "forward_passes": {"fast": fast.forward_passes, "paper": paper.forward_passes,
                           "naive_partial": naive["partial_forward_passes"],
                           "naive_aug_partial": naive_aug["partial_forward_passes"]},
        "targets": targets,
        "settings": {
            "dataset": args.dataset, "train_samples": len(data.train), "test_samples": len(data.test),
            "model": args.model, "width_mult": args.width_mult, "layers": names, "num_layers": len(names),
            "features_per_layer": [cl.features for cl in fast.layers],
            "backbone_train_epochs": args.train_epochs, "backbone_test_accuracy": summary["test_accuracy"],
            "fast_epochs": args.epochs, "naive_epochs": args.epochs, "paper_epochs": args.paper_epochs,
            "naive_aug_epochs": args.paper_epochs, "recipe_fast": vars(recipe_fast), "recipe_paper": vars(recipe_paper),
            "probe_batch_size": recipe_fast.batch_size, "capture_batch_size": CAPTURE_BATCH,
            "cache_budget": cfg_fast.cache_budget, "cache_budget_bytes": parse_bytes(cfg_fast.cache_budget),
            "fast_engine": fast.engine, "paper_engine": paper.engine,
            "device": str(device), "device_name": device_name(device),
            "seed": args.seed, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "filterlens": getattr(filterlens, "__version__", None),
            "load_average_start_mid_end": [load_start[0], load_mid[0], load_end[0]], "wait_quiet_s": args.wait_quiet,
            "allocator": allocator,
        },
        "notes": [
            "fast trains from the cache (bfloat16 where the CPU has bfloat16 units, multiplied as it is; else float16 "
            "cast to float32 per batch); naive trains on the features computed on the fly in the same precision; "
            "naive uses the same per-epoch permutations as fast, so their accuracies differ only through the cache's "
            "rounding (and floating-point order).",
            "probe_step_parts_s: the parts of fast's probe steps that move the most bytes, each alone with the "
            "engine's calls (products: two per layer and step, one batch read again and again; gathers: the rows "
            "of each batch from a cache of the training set's size; optimiser: the fused update of every probe): "
            "fast_over_floor_least = 1 + their sum / floor is the least fast_over_floor can be with torch's kernels "
            "and the engine's design. probe_products_s is the first of them.",
            "naive_aug uses paper mode's loader (same order and augmentation) and initial weights, so its accuracies "
            "should match paper's up to floating-point order.",
            "paper and naive_aug run fewer epochs than fast and naive to keep the run short; both sides of each ratio "
            "use the same epochs, and each side's cost is per epoch linear, so the ratios do not depend on it much.",
            "the floor is the faster of two runs (before and after the other modes): fast_over_floor is conservative.",
            "seconds are wall-clock; runs.<mode>.others_cpu_share is the share of the machine's CPU that OTHER "
            "processes used during that mode (0 = quiet). On a shared 2-core machine torch's OpenMP threads slow down "
            "badly when another process takes a core, so compare a ratio only when both of its modes ran quiet; "
            "cpu_time_ratios (process CPU seconds) are a cross-check.",
        ] + (["on CUDA (settings.device) every timed mode ends with torch.cuda.synchronize inside its clock; "
              "the backbone is the same cached one (training device is not part of its key)."]
             if device.type == "cuda" else []),
        "total_benchmark_s": time.perf_counter() - t_start,
    }
    write_json_atomic(args.out, result)

    # readable table
    echo("")
    echo(f"{'mode':<34}{'seconds':>9}{'cpu s':>9}{'others':>8}")
    for label, key in (("(a) naive, no augmentation", "naive"), ("(a) naive, augmentation", "naive_aug"),
                       ("(b) paper (stream)", "paper"), ("(c) fast (cache)", "fast"),
                       ("(d) floor (1 inference pass)", "floor")):
        o = runs[key]["others_cpu_share"]
        echo(f"{label:<34}{sec[key]:>9.2f}{cpu[key]:>9.2f}{'?' if o is None else f'{100 * o:.0f}%':>8}")
    echo("ratios (wall / cpu time): " + ", ".join(f"{k} {ratios[k]:.2f} / {cpu_ratios[k]:.2f}" for k in ratios))
    ft = fast.timings
    echo(f"fast split: capture {ft.get('capture_s', 0):.2f}s ({capture_over_floor:.2f} x floor), probe training "
         f"{ft.get('probe_train_s', 0):.2f}s ({100 * share:.0f}% of fast), eval {ft.get('eval_s', 0):.2f}s")
    echo("probe steps in parts: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items())
         + f" ({parts_sum / sec['floor']:.2f} x floor): fast/floor is at least {1 + parts_sum / sec['floor']:.2f} "
         "with torch's kernels")
    echo("")
    echo(f"{'layer':<13}{'features':>9}{'naive':>8}{'fast':>8}{'naive_aug':>10}{'paper':>8}")
    for i, n in enumerate(names):
        echo(f"{n:<13}{result['settings']['features_per_layer'][i]:>9}{acc['naive'][i]:>8.4f}{acc['fast'][i]:>8.4f}"
             f"{acc['naive_aug'][i]:>10.4f}{acc['paper'][i]:>8.4f}")
    echo(f"max |fast - naive| = {diff_fast:.2f} points; max |paper - naive_aug| = {diff_paper:.2f} points")
    if memory:
        mc = memory["cache_mode"]
        echo(f"memory (peak - baseline): cache mode {mib(mc['peak_over_baseline_bytes']):.0f} MiB vs bound "
             f"{mib(memory['cache_bound_bytes']):.0f} MiB (cache {mib(mc['cache_bytes']):.0f} + model "
             f"{mib(mc['model_bytes']):.1f} + batch {mib(mc['batch_bytes']):.1f}); stream mode "
             + ", ".join(f"{s['train_samples']} samples {mib(s['peak_over_baseline_bytes']):.0f} MiB"
                         for s in memory["stream_mode"].values())
             + f" (ratio {memory['stream_peak_growth']:.3f}; growth = "
               + ("n/a" if memory["stream_growth_over_feature_bytes"] is None else
                  f"{memory['stream_growth_over_feature_bytes']:.3f} x the added samples' feature bytes)"))
        echo(f"  (from the cold baseline, before the first optimiser imported torch._dynamo: cache mode "
             f"{mib(mc['peak_bytes'] - mc['cold_baseline_bytes']):.0f} MiB, "
             f"{memory['cache_peak_over_bound_cold']:.2f} x bound)")
        if device.type == "cuda":
            echo(f"  GPU peak (max_memory_allocated during train_probes): cache mode "
                 f"{mib(mc['gpu_peak_bytes']):.0f} MiB; stream mode "
                 + ", ".join(f"{s['train_samples']} samples {mib(s['gpu_peak_bytes']):.0f} MiB"
                             for s in memory["stream_mode"].values()))
    echo("")
    failed = False
    for key, t in targets.items():
        v = t["value"]
        vs = "n/a" if v is None else f"{v:.3f}"
        cpu_part = (f"  [cpu time: {t['cpu_time_value']:.3f} {t['cpu_time_result']}]" if "cpu_time_value" in t else "")
        echo(f"{t['result']:<5} {key:<36} {vs:>9}  target {t['target']}{cpu_part}"
             f"{'  (' + t['note'] + ')' if t['note'] else ''}")
        failed |= t["result"] == "FAIL"
    echo(f"wrote {args.out} (total {result['total_benchmark_s']:.0f}s)")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
