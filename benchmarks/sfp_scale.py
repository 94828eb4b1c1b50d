"""What single-unit performance costs a user at ImageNet's shape: ``sfp.analyze_layer`` from probe weights and
label means to the summary (METHOD.md stage 3), timed in a fresh process, with its peak memory.

The layer: 512 units x 1000 labels (VGG-16's last layer on ImageNet), float32 inputs of shape
(L, C, 4, 4) as ``probes.pt`` and ``label_means.pt`` hold them with ``--probe-pool 4x4``. The
matrices are PLANTED through the inputs themselves, so the result can be checked: a unit's
matrix is ``F_c = M_c W_c^T`` (M_c, W_c: L x 16), and position k of a live unit carries one
cluster (1-4 disjoint clusters of 2-8 labels: ``M[i, c, k] = W[j, c, k] = 1`` for i, j in the
cluster, so the block is all ones), 4 positions carry a background below the threshold, and up
to 8 positions each one noise element of 0.6 at (a, b), a outside every cluster (a row without a
diagonal one cannot join a cluster); every unit has its own scale (1e-2 .. 1e2); 3% of the units
are dead (every element negative).

Each case runs in its own fresh process (nothing cached, nothing preallocated): the inputs are
built first, then ``analyze_layer(weight, means).summary()`` is timed and the growth of the
process' peak resident memory over the inputs is read (``ru_maxrss``). Cases:

* ``planted``: the layer above, threshold 0.3, normalise "max" (the target: under 2 s and under 1 GiB);
* ``planted, column-centred``;
* ``dense random`` (not a target): uniform random inputs, about 70% of each matrix above the
  threshold, hundreds of diagonal candidates per unit: the greedy clustering's worst case.

Usage::

    python benchmarks/sfp_scale.py            # 512 units x 1000 labels -> results/sfp_scale.json
    python benchmarks/sfp_scale.py --quick    # 64 units x 200 labels   -> results/sfp_scale_quick.json

Exit status 1 when the planted clusters are not recovered exactly or the planted case misses a target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from filterlens import sfp
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from filterlens import sfp

RESULTS = Path(__file__).resolve().parent / "results"
POSITIONS = 16  # 4 x 4


def planted_inputs(c: int, L: int, seed: int, dead_fraction: float = 0.03):
    """(weight, means) float32 (L, C, 4, 4) with planted clusters, and the truth: clusters, noise counts, dead."""
    rng = np.random.default_rng(seed)
    W = np.zeros((L, c, POSITIONS), dtype=np.float32)
    M = np.zeros((L, c, POSITIONS), dtype=np.float32)
    clusters, noise, dead = [], np.zeros(c, dtype=np.int64), np.zeros(c, dtype=bool)
    max_cluster = min(8, max(2, L // 8))
    for u in range(c):
        scale = np.float32(10.0 ** rng.uniform(-2, 2))
        if rng.random() < dead_fraction:  # every element of F_c negative
            M[:, u, 0] = 1.0
            W[:, u, 0] = -scale * rng.uniform(0.1, 1.0, L)
            dead[u] = True
            clusters.append([])
            continue
        n_cl = int(rng.integers(1, 5))
        sizes = rng.integers(2, max_cluster + 1, size=n_cl)
        labels = rng.choice(L, size=int(sizes.sum()), replace=False)
        planted = [sorted(int(i) for i in part) for part in np.split(labels, np.cumsum(sizes)[:-1])]
        for k, members in enumerate(planted):  # positions 0..3: one cluster each, a block of ones
            M[members, u, k] = 1.0
            W[members, u, k] = scale
        for k in range(4, 8):  # a background of at most 4 x 0.1 x 0.1 = 0.04 (x scale)
            M[:, u, k] = rng.uniform(-0.1, 0.1, L)
            W[:, u, k] = rng.uniform(-0.1, 0.1, L) * scale
        outside = np.setdiff1d(np.arange(L), labels)
        n_noise = int(rng.integers(0, 9))
        rows = rng.choice(outside, size=n_noise, replace=False)
        for k, a in zip(range(8, 8 + n_noise), rows):  # one element 0.6 at (a, b): a row with no diagonal one
            b = int(rng.integers(0, L))
            while b == a:
                b = int(rng.integers(0, L))
            M[a, u, k] = 0.6
            W[b, u, k] = scale
        noise[u] = n_noise
        clusters.append(sorted(planted))
    shape = (L, c, 4, 4)
    return torch.from_numpy(W.reshape(shape)), torch.from_numpy(M.reshape(shape)), clusters, noise, dead


def child(args) -> dict:
    """One case in this (fresh) process: build the inputs, time the analysis, measure the peak memory."""
    torch.set_num_threads(args.threads)
    if args.case == "dense":
        g = torch.Generator().manual_seed(args.seed)
        W = torch.rand(args.labels, args.units, 4, 4, generator=g)
        M = torch.rand(args.labels, args.units, 4, 4, generator=g)
        truth = None
    else:
        W, M, *truth = planted_inputs(args.units, args.labels, args.seed)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    est = sfp.analyze_layer(W, M, threshold=0.3, normalise=args.normalise)
    summary = est.summary()
    seconds = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    out = {"case": args.case, "normalise": args.normalise, "units": args.units, "labels": args.labels,
           "seconds": seconds, "peak_growth_bytes": peak, "inputs_bytes": W.nbytes + M.nbytes,
           "kept_matrices": hasattr(est, "matrices_"), "summary": {k: v for k, v in summary.items()
                                                                  if isinstance(v, (int, float, str))}}
    if truth is not None:
        clusters, noise, dead = truth
        live = np.flatnonzero(~dead) if args.normalise == "column-centred" else np.arange(args.units)
        out["recovery"] = {"scored_units": int(live.size),
                           "clusters_exact": float(np.mean([est.clusters_[u] == clusters[u] for u in live])),
                           "noise_exact": float(np.mean(est.noise_[live] == noise[live]))}
        if args.normalise == "max":
            out["recovery"]["dead_exact"] = float(np.mean(est.dead_ == dead))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="64 units x 200 labels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", default="planted", help=argparse.SUPPRESS)
    p.add_argument("--normalise", default="max", help=argparse.SUPPRESS)
    p.add_argument("--units", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--labels", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    units, labels = (64, 200) if args.quick else (512, 1000)
    rows = []
    for case, normalise in (("planted", "max"), ("planted", "column-centred"), ("dense", "max")):
        cmd = [sys.executable, __file__, "--child", "--case", case, "--normalise", normalise, "--units", str(units),
               "--labels", str(labels), "--seed", str(args.seed), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        rec = row.get("recovery", {})
        print(f"{case:8s} {normalise:15s} {row['seconds']:6.2f} s   peak +{row['peak_growth_bytes'] / 2**30:5.2f} GiB"
              f"   (inputs {row['inputs_bytes'] / 2**20:.0f} MiB; clusters/unit "
              f"{row['summary']['clusters_per_filter_all']:.2f}, "
              f"noise/unit {row['summary']['noise_per_filter_all']:.1f})"
              + (f"   recovered: clusters {rec['clusters_exact']:.3f}, noise {rec['noise_exact']:.3f}" if rec else ""))
    target = rows[0]
    ok_time, ok_mem = target["seconds"] < 2.0, target["peak_growth_bytes"] < 2**30
    recovered = all(v == 1.0 for r in rows for k, v in r.get("recovery", {}).items() if k != "scored_units")
    result = {"benchmark": "sfp_scale", "what": "sfp.analyze_layer from probe weights and label means to the "
              "summary, each case in a fresh process; peak = growth of the peak resident memory over the inputs",
              "units": units, "labels": labels, "threads": args.threads, "cases": rows,
              "targets": {"seconds_below_2": ok_time, "peak_below_1_gib": ok_mem, "recovered_exactly": recovered},
              "environment": {"python": platform.python_version(), "torch": torch.__version__,
                              "cpu_count": os.cpu_count(), "platform": platform.platform()}}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("sfp_scale_quick.json" if args.quick else "sfp_scale.json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"targets (planted, max): under 2 s {ok_time}, under 1 GiB {ok_mem}; exact recovery {recovered}; -> {out}")
    return 0 if (ok_time and ok_mem and recovered) else 1


if __name__ == "__main__":
    raise SystemExit(main())
