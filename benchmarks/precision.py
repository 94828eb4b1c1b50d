"""bfloat16 against float32: step times of training and of the capture pass, in one process.

For each network of the converged studies (VGG-16 at 1/4 width, resnet20, vit_tiny_cifar; Fashion-MNIST's
1 x 28 x 28 inputs, 10 labels) it times, with ``torch.utils.benchmark.Timer`` (warm-up, then
``blocked_autorange``), on random inputs of one mini-batch:

* a training step (forward, cross-entropy, backward, SGD step) at batch 128, in float32 and in the precision
  ``filterlens.precision.for_training`` chooses for it on this machine (bfloat16 autocast with channels-last
  maps where the CPU has bfloat16 units and convolutions dominate);
* a capture step (the forward pass under ``torch.no_grad`` with every block hooked, as
  :class:`filterlens.capture.Capture` runs it) at batch 256, in float32 and in ``for_inference``'s choice,
  and, for the record, every combination (bfloat16 alone, channels-last alone).

It prints each ratio float32 / chosen and writes ``benchmarks/results/precision.json``. Run it on a quiet
machine; ``--threads`` sets torch's threads (default: all cores).

Usage::

    python benchmarks/precision.py [--threads N] [--quick]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

try:
    import filterlens  # noqa: F401
except ImportError:  # a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from filterlens.capture import Capture
from filterlens.files import write_json
from filterlens.models import ModelSpec, build_model, list_layers
from filterlens.precision import FLOAT32, Precision, cpu_has_bf16, for_inference, for_training

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = (("vgg16", 0.25), ("resnet20", 1.0), ("vit_tiny_cifar", 1.0))
SHAPE = (1, 28, 28)


def _model(name: str, width: float):
    torch.manual_seed(0)
    return build_model(ModelSpec(name, 10, SHAPE[0], SHAPE[1], width, None))


def train_step_seconds(name: str, width: float, precision: Precision, min_run: float) -> float:
    """Median seconds of one training step at batch 128 in ``precision``."""
    model = _model(name, width).train()
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = precision.batch(torch.randn(128, *SHAPE)), torch.randint(0, 10, (128,))

    def step():
        with precision.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Timer("step()", globals={"step": step}).blocked_autorange(min_run_time=min_run).median


def capture_step_seconds(name: str, width: float, precision: Precision, min_run: float) -> float:
    """Median seconds of one capture step (every block hooked) at batch 256 in ``precision``."""
    model = _model(name, width).eval()
    layers = list_layers(model, SHAPE)
    x = torch.randn(256, *SHAPE)
    with Capture(model, layers, precision=precision) as cap:
        return Timer("cap.forward(x)", globals={"cap": cap, "x": x}).blocked_autorange(min_run_time=min_run).median


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--quick", action="store_true", help="shorter timings (0.5 s per case instead of 3 s)")
    ap.add_argument("--out", default=str(RESULTS / "precision.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    min_run = 0.5 if args.quick else 3.0
    out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
                       "cpu_has_bf16": cpu_has_bf16(), "torch": torch.__version__},
           "networks": {}}
    if not cpu_has_bf16():
        print("note: this CPU has no bfloat16 units; the chosen precision is float32 everywhere")
    for name, width in NETWORKS:
        model = _model(name, width)
        train_p = for_training("cpu", True, model, SHAPE)
        infer_p = for_inference("cpu", True, model)
        row = {"train_precision": train_p.record(), "capture_precision": infer_p.record()}
        t32 = train_step_seconds(name, width, FLOAT32, min_run)
        tch = train_step_seconds(name, width, train_p, min_run) if train_p.reduced else t32
        row.update(train_float32_s=t32, train_chosen_s=tch, train_speedup=t32 / tch)
        # the bfloat16 training step even where it is not chosen, so the rule can be checked
        bf = Precision("bfloat16", "cpu", any(isinstance(m, torch.nn.Conv2d) for m in model.modules()))
        row["train_bfloat16_s"] = tch if train_p.reduced else train_step_seconds(name, width, bf, min_run)
        row["train_bfloat16_speedup"] = t32 / row["train_bfloat16_s"]
        c32 = capture_step_seconds(name, width, FLOAT32, min_run)
        variants = {"bfloat16": Precision("bfloat16", "cpu", False),
                    "channels_last": Precision("float32", "cpu", True),
                    "bfloat16+channels_last": Precision("bfloat16", "cpu", True)}
        row["capture_float32_s"] = c32
        for key, p in variants.items():
            row[f"capture_{key}_speedup"] = c32 / capture_step_seconds(name, width, p, min_run)
        cch = capture_step_seconds(name, width, infer_p, min_run) if infer_p.reduced else c32
        row.update(capture_chosen_s=cch, capture_speedup=c32 / cch)
        out["networks"][name] = row
        print(f"{name:15s} train: float32 {t32 * 1e3:7.1f} ms, {train_p.name:8s} {tch * 1e3:7.1f} ms "
              f"(x{t32 / tch:.2f}; bfloat16 would be x{row['train_bfloat16_speedup']:.2f})   capture: float32 "
              f"{c32 * 1e3:7.1f} ms, {infer_p.name}{'+cl' if infer_p.channels_last else ''} {cch * 1e3:7.1f} ms "
              f"(x{c32 / cch:.2f})", flush=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
