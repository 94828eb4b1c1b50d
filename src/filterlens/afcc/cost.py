"""What a diluted network costs: parameters, multiply-accumulates and latency, by PyTorch's own tools.

* MACs: :class:`torch.utils.flop_counter.FlopCounterMode` (one MAC = 2 FLOPs), for ONE input;
  every operation it knows (convolutions, matrix products, attention) is counted; batch
  norm, activations and pooling are not. ``macs_nonzero`` counts each conv's and linear
  layer's MACs of its weights that are not exactly zero (output positions x nonzero weights):
  what a sparse kernel could reach.
* Latency: :class:`torch.utils.benchmark.Timer` (it sets and restores the thread count), on the
  CPU, under inference mode, after a warm-up; a timed block is as many calls as last about 5 ms
  (one call for slower models); the models are interleaved (alternating order) in every repeat so they share the
  machine's conditions, and the speed-up is the median over repeats of the paired ratio
  (first model's time / this model's time in the same repeat), which stays stable when the
  machine's load drifts.
"""
from __future__ import annotations

import copy
import logging
import statistics

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(net: nn.Module, input_size) -> dict:
    """Parameters and multiply-accumulates of ``net`` for ONE input of ``input_size`` (C, H, W).

    ``params``: parameters of the modules that ran (a hooked trunk's unused head is not counted),
    ``params_nonzero`` those not exactly zero; ``macs``: the flop counter's total / 2; ``macs_nonzero``:
    each conv's and linear layer's MACs scaled by its share of nonzero weights (output positions x
    nonzero weights, read by a forward hook on the layer itself: the flop counter's attribution to
    modules is unreliable when a trunk stops the forward pass with an exception). The network's
    train/eval mode is restored.
    """
    ran: dict[int, nn.Module] = {}
    nonzero_macs = [0]

    def seen(module, inputs, output):
        ran[id(module)] = module
        if isinstance(module, (nn.Conv2d, nn.Linear)) and torch.is_tensor(output):
            per_weight = output.numel() // output.shape[1 if isinstance(module, nn.Conv2d) else -1]
            nonzero_macs[0] += int(per_weight) * int(torch.count_nonzero(module.weight))

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
    params = nonzero = 0
    for module in ran.values():
        for p in module.parameters(recurse=False):
            params += p.numel()
            nonzero += int(torch.count_nonzero(p))
    return {"params": params, "params_nonzero": nonzero, "macs": counter.get_total_flops() // 2,
            "macs_nonzero": nonzero_macs[0]}


def measure_latency(models: dict, input_size, batch: int = 64, repeats: int = 30, block_s: float = 0.005,
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
        # warm-up, then as many calls per timed block as make it last about block_s (one call for slow models)
        number = {}
        for k, t in timers.items():
            t.timeit(2)
            per_call = t.timeit(3).mean
            number[k] = max(1, int(block_s / max(per_call, 1e-9)))
        times: dict[str, list[float]] = {k: [] for k in names}
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
