"""Why ``--threads`` exists: torch's CPU threads next to a job that keeps a core busy.

One training step (forward and backward) of ``vgg_small`` on a batch of 64 8x8 digits-sized images is timed in this
process with torch's default thread count and with 1 thread, first on a quiet machine, then while another
filterlens training with one thread runs next to it (another user's job, in a child process). Each time is the
median of ``--repeats`` blocks of steps (``torch.utils.benchmark.Timer.blocked_autorange`` per block). The ratios
are against the quiet default in the same process; the note filterlens prints
(``filterlens.utils.busy_threads_note``) is shown for the busy case.

Measured on this 2-core machine (README, "Threads"): next to the other training, 2 threads x2.4 to x6.2 slower per
step than 2 threads alone (x28 next to a longer training), 1 thread x1.25, hardly changed. Run it on an
otherwise quiet machine::

    python benchmarks/busy_threads.py [--repeats 5]

Writes ``benchmarks/results/busy_threads.json`` atomically.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

from filterlens.files import write_json
from filterlens.models import ModelSpec, build_model
from filterlens.utils import busy_cores, busy_threads_note, environment

HERE = Path(__file__).resolve().parent
# the other job: another filterlens training with one thread (a pure Python loop on the core slows the threads
# 3x; a small network's training, which wakes and sleeps with every batch, tens of times)
def other_job(folder: str) -> list[str]:
    """The command of the other job: vgg_small on digits for many epochs, one thread, into ``folder``."""
    return [sys.executable, "-m", "filterlens", "train", "--model", "vgg_small", "--epochs", "500", "--threads", "1",
            "--no-progress", "--run-dir", folder]


def step_ms(threads: int, repeats: int) -> float:
    """Median milliseconds of one training step of vgg_small (batch 64, 1x8x8) with ``threads`` torch threads."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg_small", 10, 1, 8, 1.0, None))
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    loss = torch.nn.CrossEntropyLoss()
    stmt = "loss(model(x), y).backward()"
    timer = Timer(stmt, globals={"model": model, "x": x, "y": y, "loss": loss}, num_threads=threads)
    timer.timeit(3)  # warm-up
    return 1000 * statistics.median(timer.blocked_autorange(min_run_time=0.5).median for _ in range(repeats))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "busy_threads.json"))
    args = ap.parse_args(argv)
    default = torch.get_num_threads()
    rows = []
    scratch = tempfile.TemporaryDirectory()
    for busy in (False, True):
        spinner = subprocess.Popen(other_job(scratch.name + "/other"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) if busy else None
        try:
            if spinner:
                time.sleep(8.0)  # start-up and the first epoch
            seen = busy_cores()
            note = busy_threads_note(default, seen) if busy else None
            for threads in sorted({default, 1}, reverse=True):
                rows.append({"busy_job": busy, "busy_cores_seen": seen, "threads": threads,
                             "ms_per_step": step_ms(threads, args.repeats), "note": note})
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    scratch.cleanup()
    base = rows[0]["ms_per_step"]
    print(f"vgg_small training step, batch 64, torch default {default} threads; ratio to quiet, {default} threads")
    for r in rows:
        r["ratio"] = r["ms_per_step"] / base
        print(f"  busy job {'yes' if r['busy_job'] else 'no ':3}  threads {r['threads']}  {r['ms_per_step']:8.2f} ms  "
              f"x{r['ratio']:.2f}")
    if rows[-1].get("note"):
        print(rows[-1]["note"])
    write_json(Path(args.out), {"rows": rows, "default_threads": default, "environment": environment()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
