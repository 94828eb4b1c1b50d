"""Have the layer accuracies settled? The same trained network analysed at two probe budgets.

    python benchmarks/probe_settling.py RUN_A RUN_B [--out benchmarks/results/probe_settling-NAME.json]

RUN_A and RUN_B are run directories of the same trained model analysed with different ``probe_epochs``
(e.g. ``filterlens analyze --run-dir RUN_B --probe-epochs 60`` on a copy of RUN_A), RUN_A with
``--bootstrap N``. For every layer it prints both accuracies, their difference and the width of RUN_A's 95%
bootstrap interval of the accuracy (over test images), and says the accuracies have settled when every
difference is smaller than that interval's half-width. Writes the rows as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from filterlens import load_run  # noqa: E402


def compare(a: Path, b: Path) -> dict:
    ra, rb = load_run(a), load_run(b)
    ea, eb = ra.config.get("probe_epochs"), rb.config.get("probe_epochs")
    boot = {r["layer"]: r for r in ra.table("bootstrap") if r["metric"] == "accuracy"}
    acc_b = {str(r["layer"]): r["accuracy"] for r in rb.results["layers"]}
    rows = []
    for r in ra.results["layers"]:
        name = str(r["layer"])
        iv = boot.get(name) or boot.get(r["layer"])
        half = (iv["high"] - iv["low"]) / 2 if iv else float("nan")
        diff = acc_b[name] - r["accuracy"]
        rows.append({"layer": name, f"accuracy_{ea}": r["accuracy"], f"accuracy_{eb}": acc_b[name], "difference": diff,
                     "bootstrap_half_width": half, "settled": abs(diff) < half})
    return {"run_a": str(a), "run_b": str(b), "probe_epochs": [ea, eb], "rows": rows,
            "settled": all(r["settled"] for r in rows),
            "max_abs_difference": max(abs(r["difference"]) for r in rows),
            "min_half_width": min(r["bootstrap_half_width"] for r in rows)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    out = compare(Path(args.run_a), Path(args.run_b))
    ea, eb = out["probe_epochs"]
    print(f"{'layer':<14}{f'acc@{ea}':>10}{f'acc@{eb}':>10}{'diff':>9}{'CI half':>9}  settled")
    for r in out["rows"]:
        print(f"{r['layer']:<14}{r[f'accuracy_{ea}']:>10.4f}{r[f'accuracy_{eb}']:>10.4f}{r['difference']:>9.4f}"
              f"{r['bootstrap_half_width']:>9.4f}  {'yes' if r['settled'] else 'NO'}")
    print(f"settled: {out['settled']} (largest |difference| {out['max_abs_difference']:.4f}, smallest 95% half-width "
          f"{out['min_half_width']:.4f})")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
