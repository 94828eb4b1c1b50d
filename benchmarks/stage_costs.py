"""What one whole analysis costs, stage by stage: wall seconds and peak resident memory, as the run records them.

Runs (or, when the run directory is already complete, only reads)

    filterlens run --config CONFIG [--checkpoint FILE --epochs 0] --run-dir RUN_DIR --no-progress

in a subprocess and copies each stage's ``seconds`` and ``peak_memory_bytes`` from the run's ``stages.json``
(each stage's peak measured from its own start: ``filterlens.memory``), with the process' own peak
(``ru_maxrss`` of the child), the command, the thread count and the environment, into one JSON entry. Used for
the analysis of a 1,000-label glyph network (issue 29)::

    python benchmarks/stage_costs.py --config configs/glyphs/glyphs-1000.toml \\
        --checkpoint checkpoints/glyphs/glyphs-L1000-s1.pt --run-dir runs/glyphs/L1000 \\
        --out benchmarks/results/stage_costs-glyphs-1000.json

Stages already done in RUN_DIR keep the seconds and memory they recorded when they ran (a resumed run is the
sum of its sessions); ``ran_now`` lists the stages this call ran. Time it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_costs(run_dir: Path) -> dict:
    """Each recorded stage's seconds and peak memory (bytes, and GiB for reading) from ``stages.json``."""
    stages = json.loads((run_dir / "stages.json").read_text())
    out = {}
    for name, rec in stages.items():
        if name == "config":
            continue
        peak = rec.get("peak_memory_bytes")
        out[name] = {"seconds": rec.get("seconds"), "peak_memory_bytes": peak,
                     "peak_memory_gib": round(peak / 2**30, 3) if peak else None,
                     "peak_memory_scope": rec.get("peak_memory_scope"), "finished": rec.get("finished")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--checkpoint", default=None, help="trained weights: analyse them (--epochs 0) without training")
    ap.add_argument("--threads", type=int, default=0, help="torch's CPU threads in the run (0: its default)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "filterlens", "run", "--config", args.config, "--run-dir", str(args.run_dir),
           "--no-progress"]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint, "--epochs", "0"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    before = json.loads((args.run_dir / "stages.json").read_text()) if (args.run_dir / "stages.json").exists() else {}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        return proc.returncode
    costs = stage_costs(args.run_dir)
    ran_now = [s for s in costs if before.get(s, {}).get("finished") != costs[s]["finished"]]
    entry = {
        "benchmark": "stage_costs",
        "command": " ".join(cmd[1:]),
        "threads": args.threads or None,
        "wall_s_this_call": wall,
        "ran_now": ran_now,
        "child_peak_memory_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "stages": costs,
        "results": _results(args.run_dir),
        "machine": {"cpu_count": os.cpu_count(), "platform": sys.platform},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=2))
    tmp.replace(args.out)
    for name, c in costs.items():
        secs = f"{c['seconds']:.1f} s" if c["seconds"] is not None else "-"
        mem = f"{c['peak_memory_gib']:.2f} GiB" if c["peak_memory_gib"] else "-"
        print(f"{name:8s} {secs:>12s} {mem:>12s}{'  (ran now)' if name in ran_now else ''}")
    print(f"wrote {args.out}")
    return 0


def _results(run_dir: Path) -> dict:
    """The run's environment and precision (from results.json), so the entry says what it measured."""
    path = run_dir / "results.json"
    if not path.exists():
        return {}
    res = json.loads(path.read_text())
    probes = res.get("probes") or {}
    return {"environment": res.get("environment"), "probe_precision": probes.get("precision"),
            "layers": len(res.get("layers") or []), "labels": len(res.get("label_names") or [])}


if __name__ == "__main__":
    sys.exit(main())
