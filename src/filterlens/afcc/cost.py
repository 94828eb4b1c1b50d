"""What a diluted network costs: parameters, multiply-accumulates and latency, by PyTorch's own tools.

* MACs: :class:`torch.utils.flop_counter.FlopCounterMode` (one MAC = 2 FLOPs), for ONE input;
  every operation it knows (convolutions, matrix products, attention) is counted; batch
  norm, activations and pooling are not. ``macs_nonzero`` scales each conv's and linear
  layer's MACs by the share of its weights that are not exactly zero (every weight takes part
  in the same number of MACs): what a sparse kernel could reach.
* Latency: :class:`torch.utils.benchmark.Timer` (it sets and restores the thread count), on the
  CPU, under inference mode, after a warm-up that also picks how many calls make one timed
  block; the models are interleaved (alternating order) in every repeat so they share the
  machine's conditions, and the speed-up is the median over repeats of the paired ratio
  (first model's time / this model's time in the same repeat), which stays stable when the
  machine's load drifts.
"""
from __future__ import annotations

import copy
import statistics

import logging

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(net: nn.Module, input_size) -> dict:
    """Parameters and multiply-accumulates of ``net`` for ONE input of ``input_size`` (C, H, W).

    ``params``: parameters of the modules that ran (a hooked trunk's unused head is not
    counted), ``params_nonzero`` those not exactly zero; ``macs`` and ``macs_nonzero`` as in
    the module docstring. The network's train/eval mode is restored.
    """
    ran: dict[int, nn.Module] = {}

    def seen(module, inputs, output):
        ran[id(module)] = module

    was = net.training
    net.eval()
    handle = torch.nn.modules.module.register_module_forward_hook(seen)
    counter = FlopCounterMode(display=False)
    try:
        device = next(net.parameters()).device
        with torch.no_grad(), counter:
            net(torch.zeros(1, *input_size, device=device))
    finally:
        handle.remove()
        net.train(was)
    root = type(net).__name__
    per_module = counter.get_flop_counts()
    macs_nonzero = 0.0
    for name, module in net.named_modules():
        flops = per_module.get(f"{root}.{name}" if name else root)
        if not flops or list(module.children()) or getattr(module, "weight", None) is None:
            continue
        w = module.weight
        macs_nonzero += sum(flops.values()) / 2 * int(torch.count_nonzero(w)) / max(w.numel(), 1)
    params = nonzero = 0
    for module in ran.values():
        for p in module.parameters(recurse=False):
            params += p.numel()
            nonzero += int(torch.count_nonzero(p))
    return {"params": params, "params_nonzero": nonzero, "macs": counter.get_total_flops() // 2,
            "macs_nonzero": int(round(macs_nonzero))}


def measure_latency(models: dict, input_size, batch: int = 64, repeats: int = 30, warmup_s: float = 0.2,
                    seed: int = 0, threads: int | None = None) -> dict:
    """Inference latency (ms per batch of ``batch`` random inputs) of each model, on the CPU.

    Copies of the models are moved to the CPU in eval mode. Per model: median, min, 25th/75th
    percentiles over ``repeats`` timed blocks, and ``ratio_to_first`` (see the module
    docstring). ``threads``: intra-op threads during the measurement (default: torch's current
    setting).
    """
    x = torch.randn(batch, *input_size, generator=torch.Generator().manual_seed(seed))
    used = int(threads) if threads else torch.get_num_threads()
    Timer = _timer()
    timers = {k: Timer("model(x)", globals={"model": copy.deepcopy(m).cpu().eval(), "x": x}, num_threads=used)
              for k, m in models.items()}
    names = list(timers)
    with torch.inference_mode():
        # warm-up: blocked_autorange picks how many calls one timed block needs
        number = {k: max(1, int(t.blocked_autorange(min_run_time=warmup_s).number_per_run)) for k, t in timers.items()}
        times = {k: [] for k in names}
        for r in range(repeats):
            for k in (names if r % 2 == 0 else names[::-1]):
                times[k].append(timers[k].timeit(number[k]).mean)
    out = {}
    first = times[names[0]]
    for k, ts in times.items():
        ms = sorted(t * 1000 for t in ts)
        q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
        out[k] = {"median_ms": statistics.median(ms), "min_ms": ms[0], "p25_ms": q[0], "p75_ms": q[2],
                  "ratio_to_first": statistics.median(a / b for a, b in zip(first, ts)), "batch": batch,
                  "repeats": repeats, "threads": used, "calls_per_block": number[k]}
    return out


def _timer():
    """torch.utils.benchmark.Timer, imported on first use without the warning its import prints on machines
    with a CUDA_HOME but no CUDA runtime (it concerns building extensions, which filterlens never does)."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        log.setLevel(level)
    return Timer
