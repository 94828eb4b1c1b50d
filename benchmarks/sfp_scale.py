"""Scale benchmark of filterlens.sfp (METHOD.md stage 3, single-filter performance).

Acceptance target: a whole ImageNet-shaped layer, 512 filters x 1000 labels, analysed
(normalise, binarise, greedy clusters, summary) in under 10 s on a 2-core CPU machine.

What it does:

1. times ``filter_matrices`` on a contraction of that shape (weight and per-label means
   (L, C, 2, 2)), in float64 and float32;
2. builds (C, L, L) matrices with PLANTED clusters: each live filter gets 1-4 disjoint
   random clusters of 2-8 labels as blocks of high values (0.8-1.0 x scale), below-threshold
   background (|value| <= 0.2 x scale, so <= 0.25 after normalisation), and up to 30 noise
   elements above the threshold (0.5-0.95 x scale) placed off the diagonal and never between
   two planted labels, so they cannot create, merge or split clusters; about 3% of filters
   are dead (all values negative). Every filter has its own scale (1e-2 .. 1e2);
3. times ``LayerSFP.from_matrices(...).summary()`` (default threshold 0.3, normalise "max",
   then "column-centred"), and ``binarise_matrices`` alone; then, as a stress case, uniform
   random matrices (about 70% ones: hundreds of diagonal candidates per filter);
4. checks recovery: the fraction of filters whose clusters equal the planted ones, whose
   noise count equals the planted noise count, and whose dead flag is right (for
   "column-centred", live filters only: centring revives an all-negative filter);
5. writes JSON to ``benchmarks/results/sfp_scale.json`` (``sfp_scale_quick.json`` with
   ``--quick``), atomically.

Usage::

    python benchmarks/sfp_scale.py            # 512 filters x 1000 labels
    python benchmarks/sfp_scale.py --quick    # 64 filters x 200 labels

Exit status 1 when recovery is not exact or the analysis misses the time target.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    from filterlens.sfp import LayerSFP, binarise_matrices, filter_matrices
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from filterlens.sfp import LayerSFP, binarise_matrices, filter_matrices

RESULTS = Path(__file__).resolve().parent / "results"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn, repeats: int):
    """(best wall time in s, result of the last call)."""
    best, out = math.inf, None
    for _ in range(repeats):
        out = None
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def planted_matrices(c: int, L: int, seed: int, dead_fraction: float = 0.03):
    """(matrices (C, L, L) float64, planted clusters, planted noise counts, dead flags)."""
    rng = np.random.default_rng(seed)
    mats = np.empty((c, L, L), dtype=np.float64)
    clusters, noise, dead = [], np.zeros(c, dtype=np.int64), np.zeros(c, dtype=bool)
    max_cluster = min(8, max(2, L // 8))
    for k in range(c):
        m = mats[k]
        rng.random(out=m)
        scale = 10.0 ** rng.uniform(-2, 2)
        if rng.random() < dead_fraction:
            m *= -scale  # all values in (-scale, 0]: largest element <= 0
            m -= 1e-3 * scale
            dead[k] = True
            clusters.append([])
            continue
        m *= 0.4
        m -= 0.2
        m *= scale  # background in [-0.2, 0.2] x scale
        n_cl = int(rng.integers(1, 5))
        sizes = rng.integers(2, max_cluster + 1, size=n_cl)
        labels = rng.choice(L, size=int(sizes.sum()), replace=False)
        planted = [sorted(int(i) for i in part)
                   for part in np.split(labels, np.cumsum(sizes)[:-1])]
        for members in planted:
            m[np.ix_(members, members)] = rng.uniform(0.8, 1.0, (len(members),) * 2) * scale
        in_cluster = np.zeros(L, dtype=bool)
        in_cluster[labels] = True
        positions = set()
        for _ in range(int(rng.integers(0, 31))):
            i, j = (int(v) for v in rng.integers(0, L, size=2))
            if i == j or (in_cluster[i] and in_cluster[j]):
                continue  # keep noise off the diagonal and out of every cluster pair
            positions.add((i, j))
        for i, j in positions:
            m[i, j] = rng.uniform(0.5, 0.95) * scale
        noise[k] = len(positions)
        clusters.append(sorted(planted))
    return mats, clusters, noise, dead


def recovery(est: LayerSFP, clusters, noise, dead, live_only: bool) -> dict:
    """Fractions of filters recovered exactly. ``live_only``: score only the filters that
    were planted live (column-centring turns an all-negative filter into a live one, so the
    planted "dead" truth holds for normalise="max" only)."""
    idx = np.flatnonzero(~dead) if live_only else np.arange(len(clusters))
    same_clusters = sum(est.clusters_[k] == clusters[k] for k in idx)
    out = {
        "scored_filters": int(idx.size),
        "clusters_exact": same_clusters / idx.size,
        "noise_exact": float(np.mean(est.noise_[idx] == noise[idx])),
    }
    if not live_only:
        out["dead_exact"] = float(np.mean(est.dead_ == dead))
    return out


def finite_or_none(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(finite_or_none(data), fh, indent=2, allow_nan=False)
            fh.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 filters x 200 labels")
    ap.add_argument("--filters", type=int, default=None, help="number of filters (512)")
    ap.add_argument("--labels", type=int, default=None, help="number of labels (1000)")
    ap.add_argument("--positions", type=int, default=2,
                    help="spatial side of the contraction benchmark (H = W, default 2)")
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=None,
                    help="timing repeats, best kept (default 3 full, 3 quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-s", type=float, default=10.0,
                    help="time target of the layer analysis (s), checked at full size")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)

    c = args.filters or (64 if args.quick else 512)
    L = args.labels or (200 if args.quick else 1000)
    repeats = args.repeats or 3
    out_path = args.out or RESULTS / ("sfp_scale_quick.json" if args.quick else "sfp_scale.json")
    full_size = c >= 512 and L >= 1000
    print(f"sfp_scale: {c} filters x {L} labels, threshold {args.threshold}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    times: dict[str, float] = {}
    # 1. the contraction
    rng = np.random.default_rng(args.seed)
    hw = args.positions
    weight = torch.from_numpy(rng.normal(size=(L, c, hw, hw)))
    means = torch.from_numpy(rng.normal(size=(L, c, hw, hw)))
    for dtype in ("float64", "float32"):
        t, mats = timed(lambda: filter_matrices(weight, means, dtype=dtype), repeats)
        times[f"filter_matrices_{dtype}_s"] = t
        print(f"  filter_matrices ({L},{c},{hw},{hw}) -> {mats.shape} {dtype}: {t:.3f} s, "
              f"{mats.nbytes / 2**30:.2f} GiB")
        del mats
    del weight, means

    # 2. planted matrices
    t0 = time.perf_counter()
    mats, clusters, noise, dead = planted_matrices(c, L, args.seed)
    gen_s = time.perf_counter() - t0
    n_planted = sum(len(k) for k in clusters)
    print(f"  planted matrices built in {gen_s:.1f} s: {n_planted} clusters, "
          f"{int(dead.sum())} dead filters, mean planted noise {noise.mean():.2f}")

    # 3. analysis
    results = {}
    ok = True
    for normalise in ("max", "column-centred"):
        t_bin, _ = timed(lambda: binarise_matrices(mats, args.threshold, normalise), repeats)
        est_box = {}

        def analyse():
            est_box.pop("est", None)
            est = LayerSFP(threshold=args.threshold, normalise=normalise).fit_matrices(mats)
            est_box["summary"] = est.summary()
            est_box["est"] = est

        t_all, _ = timed(analyse, repeats)
        est = est_box["est"]
        rec = recovery(est, clusters, noise, dead, live_only=normalise != "max")
        times[f"analyse_{normalise}_s"] = t_all
        times[f"binarise_{normalise}_s"] = t_bin
        met = (t_all < args.target_s) if full_size else None
        exact = all(v == 1.0 for k, v in rec.items() if k != "scored_filters")
        ok &= exact and met is not False
        results[normalise] = {"recovery": rec, "summary": est_box["summary"],
                              "analyse_s": t_all, "binarise_s": t_bin,
                              "target_met": met}
        s = est_box["summary"]
        print(f"  analyse layer, normalise={normalise!r}: {t_all:.2f} s "
              f"(normalise+binarise alone {t_bin:.2f} s); recovered clusters "
              f"{rec['clusters_exact']:.3f}, noise {rec['noise_exact']:.3f}"
              + (f", dead {rec['dead_exact']:.3f}" if "dead_exact" in rec
                 else f" (of {rec['scored_filters']} live filters)"))
        print(f"    clusters/filter {s['clusters_per_filter']:.3f} (all "
              f"{s['clusters_per_filter_all']:.3f}), cluster size {s['cluster_size']:.3f}, "
              f"noise/filter {s['noise_per_filter_all']:.2f}, without cluster "
              f"{s['filters_without_cluster']:.3f}, SNR {s['snr']:.2f}")
        del est, est_box
        gc.collect()

    # stress case: uniform random matrices (about 70% ones, ~700 diagonal candidates per
    # filter), the slow end for the greedy clustering; timing only
    np.random.default_rng(args.seed + 1).random(out=mats)
    stress = {}

    def analyse_dense():
        stress["summary"] = LayerSFP(threshold=args.threshold).fit_matrices(mats).summary()

    t_dense, _ = timed(analyse_dense, 1)
    times["analyse_dense_random_s"] = t_dense
    sd = stress["summary"]
    print(f"  stress (uniform random matrices): {t_dense:.2f} s; clusters/filter "
          f"{sd['clusters_per_filter']:.1f}, cluster size {sd['cluster_size']:.2f}")
    del mats
    gc.collect()

    # planted truth, for comparison with the recovered summary
    live = ~dead
    sizes = np.array([len(m) for k in clusters for m in k], dtype=float)
    truth = {
        "clusters_per_filter": float(np.mean([len(k) for k, d in zip(clusters, dead) if not d])),
        "cluster_size": float(sizes.mean()) if sizes.size else math.nan,
        "noise_per_filter_all": float(noise.mean()),
        "filters_without_cluster": float(1 - live.mean()),
    }
    rss = peak_rss_gib()
    t_main = times["analyse_max_s"]
    verdict = ("PASS" if ok else "FAIL")
    target_txt = (f"{t_main:.2f} s vs target {args.target_s:.0f} s" if full_size
                  else f"{t_main:.2f} s (target checked only at 512 x 1000)")
    print(f"  peak RSS {rss:.2f} GiB")
    print(f"{verdict}: whole-layer analysis {target_txt}; planted clusters recovered in "
          f"{results['max']['recovery']['clusters_exact']:.1%} of filters")

    data = {
        "benchmark": "sfp_scale",
        "filters": c,
        "labels": L,
        "contraction_shape": [L, c, hw, hw],
        "threshold": args.threshold,
        "seed": args.seed,
        "repeats": repeats,
        "quick": bool(args.quick),
        "times_s": times,
        "matrix_bytes_float64": c * L * L * 8,
        "generation_s": gen_s,
        "planted": {"num_clusters": n_planted, "dead_filters": int(dead.sum()), **truth},
        "results": results,
        "stress_dense_random": {"analyse_s": t_dense, "summary": sd},
        "target_s": args.target_s,
        "target_checked": full_size,
        "pass": ok,
        "peak_rss_gib": rss,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
    }
    write_json_atomic(out_path, data)
    print(f"  wrote {out_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
