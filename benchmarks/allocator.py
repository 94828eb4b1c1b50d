"""What keeping freed blocks (``filterlens.memory.keep_freed_memory``, which the command line calls) does to a
forward pass on the CPU.

The setting is process-wide and cannot be taken back, so each case runs in a fresh subprocess, the two cases
alternating (``--rounds`` of each): ``default`` (glibc's own thresholds) and ``keep``. In each, one network
(``vgg16`` at ``--width-mult``, random weights: the allocator does not care what the weights are) runs
``--passes`` inference passes over ``--images`` random 28 x 28 images in batches of 256, in the precision the
engine's capture uses (``filterlens.precision.for_inference``: bfloat16 with channels-last maps where the CPU
has it), as ``benchmarks/probe_engine.py``'s floor does. Each pass's seconds and minor page faults
(``getrusage``) are recorded; the ratio is the median pass of ``default`` over the median pass of ``keep``.

Run it alone on the machine::

    python benchmarks/allocator.py [--images 10000] [--passes 3] [--rounds 2]

Writes ``benchmarks/results/allocator.json`` atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("default", "keep")


def worker(case: str, images: int, passes: int, width_mult: float, threads: int) -> dict:
    """One case in this (fresh) process: the setting or not, then the passes, each timed and its faults counted."""
    from filterlens import memory

    allocator = memory.keep_freed_memory() if case == "keep" else memory.allocator()
    import torch

    from filterlens.models import ModelSpec, build_model
    from filterlens.precision import for_inference

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg16", 10, 1, 28, width_mult, None)).eval()
    x = torch.randn(images, 1, 28, 28)
    prec = for_inference(torch.device("cpu"), True, model)
    seconds, faults = [], []
    with torch.no_grad(), prec.running(model), prec.autocast():
        for _ in range(passes):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            for s in range(0, images, 256):
                model(prec.batch(x[s : s + 256]))
            seconds.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"case": case, "allocator": allocator, "seconds": seconds, "page_faults": faults,
            "threads": torch.get_num_threads(), "precision": prec.record()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--width-mult", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=str(HERE / "results" / "allocator.json"))
    ap.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.images, args.passes, args.width_mult, args.threads)))
        return 0

    from filterlens import memory
    from filterlens.files import write_json
    from filterlens.utils import environment

    env = {k: v for k, v in os.environ.items() if k not in memory._USER_CHOICE}  # glibc's defaults for "default"
    runs: dict[str, list[dict]] = {c: [] for c in CASES}
    for r in range(args.rounds):
        for case in CASES:
            cmd = [sys.executable, __file__, "--worker", case, "--images", str(args.images), "--passes",
                   str(args.passes), "--width-mult", str(args.width_mult), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
            run = json.loads(out.stdout.strip().splitlines()[-1])
            runs[case].append(run)
            print(f"round {r + 1} {case:<8} passes " + ", ".join(f"{s:.2f}s" for s in run["seconds"])
                  + "  page faults " + ", ".join(str(f) for f in run["page_faults"]), flush=True)
    summary = {}
    for case in CASES:
        secs = [s for run in runs[case] for s in run["seconds"]]
        faults = [f for run in runs[case] for f in run["page_faults"]]
        summary[case] = {"median_pass_s": statistics.median(secs), "min_pass_s": min(secs), "max_pass_s": max(secs),
                         "median_page_faults_per_pass": statistics.median(faults),
                         "allocator": runs[case][0]["allocator"]}
    ratio = summary["default"]["median_pass_s"] / summary["keep"]["median_pass_s"]
    print(f"median pass: default {summary['default']['median_pass_s']:.2f}s "
          f"({summary['default']['median_page_faults_per_pass']:.0f} page faults), keep "
          f"{summary['keep']['median_pass_s']:.2f}s ({summary['keep']['median_page_faults_per_pass']:.0f}): "
          f"default / keep = {ratio:.2f}")
    write_json(args.out, {"benchmark": "allocator", "default_over_keep": ratio, "summary": summary, "runs": runs,
                          "settings": {"images": args.images, "passes": args.passes, "rounds": args.rounds,
                                       "model": "vgg16", "width_mult": args.width_mult, "batch": 256,
                                       "threads": args.threads or "torch's default"},
                          "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
