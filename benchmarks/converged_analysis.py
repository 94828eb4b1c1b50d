"""The whole analysis of the committed converged networks, stage by stage, before and after: two code
versions back to back on one machine.

For each network (``--networks``, default ``vgg16,resnet20``: ``configs/converged/fashion-mnist-NAME.toml``
with ``checkpoints/converged/fashion-mnist-NAME.pt``) and each code version it runs, as a subprocess,

    filterlens run CONFIG --checkpoint CHECKPOINT --epochs 0 --run-dir TMP --no-progress

(probes on all 60,000 + 10,000 Fashion-MNIST images, single-unit analysis with the config's 200 bootstrap
replicates, AFCC with its 5 random draws, the report), and reads each stage's wall time from the line
``done in ... (train ..s, probes ..s, sfp ..s, afcc ..s, report ..s)`` that ``filterlens run`` prints. The old
version is a git revision of this repository (``--old``, default the main branch's last commit before the fast
path, 64e8eef), exported with ``git archive`` into a temporary folder and run from there; the new one is this
checkout's ``src``. Versions alternate per network (old, new), so both see the same machine. Every layer's
accuracy and the claims' verdicts of both runs are kept, to show what the fast path changed.

Writes ``benchmarks/results/converged_analysis.json`` and prints the ratios. Run it alone on the machine
(``--threads`` sets OMP_NUM_THREADS of the runs; default all cores). Fashion-MNIST must be installed (Debian's
dataset-fashion-mnist).

Usage::

    python benchmarks/converged_analysis.py [--networks vgg16,resnet20] [--old REV] [--skip-old]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
OLD_DEFAULT = "64e8eef"
TARGETS_MIN = {"vgg16": 10.0, "resnet20": 6.0}  # issue 28: the whole analysis, minutes


def export(rev: str, into: Path) -> Path:
    """The ``src`` folder of revision ``rev`` of this repository, exported into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def stage_times(output: str) -> dict:
    """Each stage's seconds from ``filterlens run``'s last line."""
    m = re.search(r"done in ([\d.]+)s \((.*?)\); report", output)
    if not m:
        return {}
    out = {"total_s": float(m.group(1))}
    for part in m.group(2).split(", "):
        name, _, value = part.partition(" ")
        if value.endswith("s") and value[:-1].replace(".", "", 1).isdigit():
            out[f"{name}_s"] = float(value[:-1])
    return out


def analyse(src: Path, name: str, run_dir: Path, threads: int) -> dict:
    """One ``filterlens run`` of network ``name`` with the code in ``src``; its stage times, layer accuracies,
    claims and precision."""
    env = dict(os.environ, PYTHONPATH=str(src), MPLBACKEND="Agg", CI="true")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "filterlens", "run", str(REPO / f"configs/converged/fashion-mnist-{name}.toml"),
           "--checkpoint", str(REPO / f"checkpoints/converged/fashion-mnist-{name}.pt"), "--epochs", "0",
           "--run-dir", str(run_dir), "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} with {src} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    layers = {r["layer"]: r["accuracy"] for r in results.get("layers", [])}
    claims = [{k: c.get(k) for k in ("claim", "metric", "statistic", "low", "high", "verdict")}
              for c in results.get("claims", [])]
    precision = (results.get("probes") or {}).get("precision")
    return {"wall_s": wall, "stages": stage_times(proc.stdout), "layer_accuracy": layers, "claims": claims,
            "precision": precision}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", default="vgg16,resnet20")
    ap.add_argument("--old", default=OLD_DEFAULT, help="git revision of the code to compare with")
    ap.add_argument("--skip-old", action="store_true", help="time only this checkout (no comparison)")
    ap.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the runs (0: all cores)")
    ap.add_argument("--out", default=str(RESULTS / "converged_analysis.json"))
    args = ap.parse_args(argv)
    out = {"old": args.old, "new": "working tree", "threads": args.threads or os.cpu_count(), "networks": {}}
    tmp = Path(tempfile.mkdtemp(prefix="fl-converged-"))
    try:
        old_src = None if args.skip_old else export(args.old, tmp / "old")
        for name in args.networks.split(","):
            row = {}
            for version, src in (("old", old_src), ("new", REPO / "src")):
                if src is None:
                    continue
                print(f"{name}: {version} code ...", flush=True)
                row[version] = analyse(src, name, tmp / f"{version}-{name}", args.threads)
                shutil.rmtree(tmp / f"{version}-{name}", ignore_errors=True)
                print(f"  {row[version]['stages']}", flush=True)
            new = row["new"]["stages"]
            row["target_minutes"] = TARGETS_MIN.get(name)
            row["new_minutes"] = new.get("total_s", row["new"]["wall_s"]) / 60
            if "old" in row:
                old = row["old"]["stages"]
                row["speedup"] = {k: old[k] / new[k] for k in old if k in new and new[k] > 0}
                row["accuracy_change"] = {k: row["new"]["layer_accuracy"][k] - v
                                          for k, v in row["old"]["layer_accuracy"].items()
                                          if k in row["new"]["layer_accuracy"]}
                same = [a["verdict"] == b["verdict"] for a, b in zip(row["old"]["claims"], row["new"]["claims"])]
                row["verdicts_unchanged"] = all(same) and len(row["old"]["claims"]) == len(row["new"]["claims"])
                print(f"{name}: old {old.get('total_s', 0) / 60:.1f} min, new {row['new_minutes']:.1f} min "
                      f"(target <= {row['target_minutes']} min); speed-up per stage "
                      + ", ".join(f"{k[:-2]} x{v:.1f}" for k, v in row["speedup"].items())
                      + f"; verdicts unchanged: {row['verdicts_unchanged']}", flush=True)
            out["networks"][name] = row
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(REPO / "src"))
    from filterlens.files import write_json

    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
