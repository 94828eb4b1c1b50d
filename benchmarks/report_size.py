"""How large report.html gets: the demo, and VGG-16 on CIFAR-100-shaped data (13 layers, 100 labels).

The second run writes synthetic CIFAR-100 files in the real python-pickle format (``paper_scale.py``'s
writer; random images, 100 labels, ``--test-images`` of them in the test split), then runs the pipeline
(``filterlens run``) with VGG-16 at full width, 1 training epoch on ``--train-images`` images, 1 probe epoch,
AFCC off: the size of its report depends on the layers, units, labels and the explorer's thumbnails, not on
how well the network is trained. Target (issue 19): the demo under 5 MB, VGG-16 / CIFAR-100 under 25 MB.

Usage::

    python benchmarks/report_size.py                      # -> results/report_size.json
    python benchmarks/report_size.py --train-images 500   # quicker
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from paper_scale import write_synthetic_cifar100  # noqa: E402  (the same writer as paper_scale.py)

RESULTS = HERE / "results"


def filterlens(*args, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "filterlens", *map(str, args)], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--test-images", type=int, default=10000, help="test split (CIFAR-100's is 10000)")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="filterlens-report-size-") as tmp:
        tmp = Path(tmp)
        seconds = filterlens("demo", "--no-progress", "--run-dir", tmp / "demo", cwd=tmp)
        rows["demo"] = {"bytes": (tmp / "demo" / "report.html").stat().st_size, "seconds": seconds,
                        "what": "filterlens demo (vgg_small on digits, 6 layers, 10 labels)"}
        data = write_synthetic_cifar100(tmp / "cifar100", args.train_images, args.test_images)
        (tmp / "vgg16.toml").write_text(f'''[data]
dataset = "cifar100"
data_dir = "{data}"
[model]
model = "vgg16"
[train]
epochs = 1
batch_size = 128
[probes]
probe_epochs = 1
[afcc]
afcc = false
''')
        seconds = filterlens("run", tmp / "vgg16.toml", "--run-dir", tmp / "vgg16", "--no-progress", cwd=tmp)
        res = json.loads((tmp / "vgg16" / "results.json").read_text())
        rows["vgg16_cifar100"] = {"bytes": (tmp / "vgg16" / "report.html").stat().st_size, "seconds": seconds,
                                  "layers": len(res["layers"]), "labels": len(res["label_names"]),
                                  "units": sum(r["units"] for r in res["layers"]),
                                  "what": f"vgg16 (full width) on synthetic CIFAR-100 files, {args.train_images} "
                                          f"train / {args.test_images} test images, 1 epoch, AFCC off"}
    targets = {"demo_under_5_MB": rows["demo"]["bytes"] < 5 * 2**20,
               "vgg16_cifar100_under_25_MB": rows["vgg16_cifar100"]["bytes"] < 25 * 2**20}
    for k, r in rows.items():
        print(f"{k:16s} report.html {r['bytes'] / 2**20:6.2f} MiB   ({r['what']}; {r['seconds']:.0f} s)")
    out = {"benchmark": "report_size", "runs": rows, "targets": targets}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "report_size.json"
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp_path, path)
    print(f"targets {targets} -> {path}")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
