"""One probe training step with torch's fused optimiser update against the multi-tensor (foreach) one.

A probe step (``filterlens.probes.ProbeSet.step_all``) is two products with the batch (logits, gradient) and the
optimiser's per-element update of the whole L x D weight. At batch 100 the products cost about 4 x 100 x L x D
operations on the bfloat16 units, the update about 15 memory-bound passes over L x D floats (Adam's foreach update
reads and writes the weight, its gradient and both moments once per operation), so on wide probes with many labels
the update, not the arithmetic, sets the step's time: profiled (py-spy) on the glyph study's 1,000-label VGG-16,
Adam's update was 62% of the probe stage. torch's fused kernel makes one pass.

Each case times ``step_all`` of one layer's probe on a random batch of bfloat16 features (the cache's type on this
CPU), with ``fused`` and with ``foreach``, in this process, one thread (``torch.utils.benchmark.Timer``: the median
of ``--repeats`` blocked measurements). The ratio foreach / fused is the speed-up; ``max_weight_difference`` is the
largest difference between the two probes' weights after the same 20 steps from the same start (float rounding).

    python benchmarks/probe_step.py [--repeats 5]

Writes ``benchmarks/results/probe_step.json`` atomically.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from filterlens.capture import CaptureLayer
from filterlens.files import write_json
from filterlens.models import Layer
from filterlens.probe_results import ProbeRecipe
from filterlens.probes import ProbeSet
from filterlens.utils import environment

HERE = Path(__file__).resolve().parent
# (what, features D = C x H x W, labels L, optimiser): the first conv layers of VGG-16 at 1/4 width on 20 x 20 glyphs
# (16 x 20 x 20) and on Fashion-MNIST at 32 x 32 (16 x 32 x 32), its last conv layer (128 x 1 x 1), Fashion's
# 10 labels and the glyph study's 1,000
CASES = [("glyphs conv1, L=1000, fast (Adam)", (16, 20, 20), 1000, "fast"),
         ("glyphs conv1, L=1000, paper (SGD)", (16, 20, 20), 1000, "paper"),
         ("glyphs last conv, L=1000, fast (Adam)", (128, 1, 1), 1000, "fast"),
         ("fashion conv1, L=10, fast (Adam)", (16, 32, 32), 10, "fast"),
         ("fashion last conv, L=10, fast (Adam)", (128, 2, 2), 10, "fast")]
BATCH = 100


def _probe(shape: tuple[int, int, int], labels: int, mode: str, fused: bool) -> ProbeSet:
    layer = CaptureLayer(Layer(0, "layer", shape[0], shape), shape)
    recipe = ProbeRecipe.fast(epochs=1) if mode == "fast" else ProbeRecipe.paper(epochs=1, augment=False)
    probes = ProbeSet([layer], labels, recipe, seed=0)
    if not fused:  # the same optimiser with the multi-tensor update filterlens used before
        params = [fc.weight for fc in probes.fcs.values()]
        kind = type(probes.opt)
        probes.opt = kind(params, **{**probes.opt.defaults, "fused": None, "foreach": True})
    return probes


def step_ms(shape, labels: int, mode: str, fused: bool, repeats: int) -> float:
    """Median milliseconds of one ``step_all`` on a batch of 100 bfloat16 feature vectors, one thread."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, *shape, generator=g).to(torch.bfloat16)
    y = torch.randint(0, labels, (BATCH,), generator=g)
    probes = _probe(shape, labels, mode, fused)
    timer = Timer("probes.step_all({'layer': x}, y)", globals={"probes": probes, "x": x, "y": y}, num_threads=1)
    timer.timeit(3)
    return 1000 * statistics.median(timer.blocked_autorange(min_run_time=0.5).median for _ in range(repeats))


def weight_difference(shape, labels: int, mode: str) -> float:
    """The largest difference between the fused and the foreach probe's weights after the same 20 steps."""
    out = []
    for fused in (True, False):
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(1)
        probes = _probe(shape, labels, mode, fused)
        for _ in range(20):
            x = torch.randn(BATCH, *shape, generator=g).to(torch.bfloat16)
            probes.step_all({"layer": x}, torch.randint(0, labels, (BATCH,), generator=g))
        out.append(probes.fcs["layer"].weight.detach().clone())
    return float((out[0] - out[1]).abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "probe_step.json"))
    args = ap.parse_args(argv)
    rows = []
    for what, shape, labels, mode in CASES:
        fused = step_ms(shape, labels, mode, True, args.repeats)
        foreach = step_ms(shape, labels, mode, False, args.repeats)
        row = {"case": what, "features": shape[0] * shape[1] * shape[2], "labels": labels, "mode": mode,
               "fused_ms": round(fused, 3), "foreach_ms": round(foreach, 3),
               "speedup": round(foreach / fused, 2), "max_weight_difference": weight_difference(shape, labels, mode)}
        rows.append(row)
        print(f"{what:40s} fused {fused:8.3f} ms  foreach {foreach:8.3f} ms  x{foreach / fused:.2f}  "
              f"max |w diff| {row['max_weight_difference']:.1e}")
    write_json(Path(args.out), {"benchmark": "probe_step", "batch": BATCH, "threads": 1, "rows": rows,
                                "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
