"""What the single-unit analysis with bootstrap replicates costs (METHOD.md stage 3, "single-filter performance"
and "SNR candidates"; ``sfp.bootstrap_summary``): the pre-batching code against the batched one, in one process,
on the same planted data, single-threaded.

The layers: VGG-16 at 1/4 width (13 layers of 16, 16, 32, 32, 64, 64, 64 and 6 x 128 units), L = 10 labels,
N = 10,000 test inputs (1,000 per label, shuffled), float64 fields as ``filterlens analyze`` passes them, 200
replicates with the accuracy (as ``analyze --bootstrap 200`` asks). A unit's fields are planted: its label means
carry 1-3 blocks of 1-4 labels at 1 over a background in [-0.3, 0.3], every input adds noise of standard
deviation 3, so the resampled means cross the threshold now and then and the replicates differ.

* ``old``: ``reference_bootstrap_summary`` of tests/test_sfp_bootstrap.py, the code before batching (commit
  64e8eef) copied there as the tests' reference: one replicate at a time, ``np.add.reduceat`` over the weighted
  fields, the per-unit Python greedy clustering and field parts;
* ``new``: ``sfp.bootstrap_summary``.

Both run after a warm-up, layer by layer, timed with ``time.perf_counter``, the new one first. Their replicates
are compared: the counts must be equal, the field parts equal to 1e-12 relative. Then the new code's memory: one
128-unit layer in a fresh process, the growth of its peak resident memory over the fields (VmHWM after a reset
of the peak, else ``ru_maxrss``).

``--large`` also times the new code alone (fresh process, with its memory) on one layer of 128 units at L = 1000
labels (10 inputs per label, N = 10,000, float32 fields: 4.8 GiB; the old code would take three float64 copies of
them, 29 GiB), 20 replicates.

``--features`` times the features route (``sfp.bootstrap_summary_from_features``: the test features and the probe
weight instead of the fields, what the probe stage keeps where it is smaller) at L = 1000 labels, N = 12,000 test
inputs (12 per label), bfloat16 features as the cache holds them, float32 weights, 20 replicates with the accuracy,
each case in a fresh process with its time and memory (the growth of the peak over the inputs, and the process'
whole peak): (a) one layer of 128 units of 2 x 2 positions (its fields would take 6.1 GB in float32, its features
12 MB), its replicates compared on its first 4 units with the fields route's on the float64 fields of the same
features; (b) the whole VGG-16 at 1/4 width on 20 x 20 inputs, 13 layers, the shapes ``filterlens layers --model
vgg16 --width-mult 0.25 --dataset glyphs --image-size 20`` lists (units x positions from 16 x 400 to 128 x 1; 1,056
units; 0.47 GB of features where the fields would take 51 GB). The features are planted: each unit's label means
carry 1-3 clusters of 1-4 labels at one position each (there the weight of their output units is 1), the weight is
uniform in [-0.3, 0.3] elsewhere, every input adds noise of standard deviation 0.5.

Usage::

    python benchmarks/sfp_bootstrap.py            # 200 replicates   -> results/sfp_bootstrap.json
    python benchmarks/sfp_bootstrap.py --quick    # 20 replicates    -> results/sfp_bootstrap_quick.json
    python benchmarks/sfp_bootstrap.py --large    # and the L = 1000 layer
    python benchmarks/sfp_bootstrap.py --features # the features route alone -> "features" in results/sfp_bootstrap.json

Exit status 1 when the replicates differ.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # single-threaded numbers (numpy's BLAS reads these when imported)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's code, even where another one is installed
sys.path.insert(0, str(HERE.parent / "tests"))
from filterlens import sfp  # noqa: E402
from test_sfp_bootstrap import COUNT_KEYS, reference_bootstrap_summary  # noqa: E402  (the old code)

RESULTS = HERE / "results"
VGG16_QUARTER = (16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128)


def planted_layer(c: int, L: int, n: int, seed: int, dtype=torch.float64):
    """(fields (N, C, L) tensor, labels (N,)): label means with 1-3 planted blocks of 1-4 labels at 1 over a
    background in [-0.3, 0.3] per unit, plus noise of standard deviation 3 per input; N/L inputs per label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(L), n // L)
    rng.shuffle(labels)
    means = rng.uniform(-0.3, 0.3, size=(c, L, L))
    for u in range(c):
        for _ in range(int(rng.integers(1, 4))):
            members = rng.choice(L, size=int(rng.integers(1, min(4, L) + 1)), replace=False)
            means[u][np.ix_(members, members)] = 1.0
    gen = torch.Generator().manual_seed(seed)
    fields = torch.empty((labels.size, c, L), dtype=dtype)
    rows = torch.from_numpy(means.transpose(1, 0, 2).copy()).to(dtype)  # (L, C, L): label i's means
    lab_t = torch.from_numpy(labels)
    step = max(1, (1 << 20) // (c * L))
    for s in range(0, labels.size, step):  # in pieces: small temporaries (the memory measurements start here)
        e = min(labels.size, s + step)
        torch.randn((e - s, c, L), generator=gen, dtype=dtype, out=fields[s:e]).mul_(3.0).add_(rows[lab_t[s:e]])
    return fields, labels


def planted_features(c: int, p: int, L: int, n: int, seed: int):
    """(features (N, C, P) bfloat16, weight (L, C, P) float32, labels (N,)): per unit 1-3 clusters of 1-4 labels,
    each at one position where their label means are 1 and the weight of their output units is 1; the label
    means 0 and the weight uniform in [-0.3, 0.3] elsewhere; noise of standard deviation 0.5 per input. N/L
    inputs per label, shuffled; generated in pieces (small temporaries)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(L), n // L)
    rng.shuffle(labels)
    means = torch.zeros((L, c, p))
    weight = torch.from_numpy(rng.uniform(-0.3, 0.3, size=(L, c, p)).astype(np.float32))
    for u in range(c):
        for _ in range(int(rng.integers(1, 4))):
            q = int(rng.integers(p))
            members = torch.from_numpy(rng.choice(L, size=int(rng.integers(1, min(4, L) + 1)), replace=False))
            means[members, u, q] = 1.0
            weight[members, u, q] = 1.0
    gen = torch.Generator().manual_seed(seed)
    features = torch.empty((labels.size, c, p), dtype=torch.bfloat16)
    lab_t = torch.from_numpy(labels)
    step = max(1, (1 << 20) // (c * p))
    for s in range(0, labels.size, step):
        e = min(labels.size, s + step)
        features[s:e] = torch.randn((e - s, c, p), generator=gen).mul_(0.5).add_(means[lab_t[s:e]])
    return features, weight, labels


def vgg16_quarter_shapes(image_size: int = 20) -> list[tuple[int, int]]:
    """(units, positions) of VGG-16 at 1/4 width on one-channel ``image_size`` inputs, from the model itself (as
    ``filterlens layers --model vgg16 --width-mult 0.25 --dataset glyphs --image-size 20`` lists them)."""
    from filterlens.models import ModelSpec, build_model, list_layers

    model = build_model(ModelSpec("vgg16", 1000, 1, image_size, 0.25))
    return [(int(l.shape[0]), int(l.shape[1]) * int(l.shape[2])) for l in list_layers(model, (1, image_size,
                                                                                              image_size))]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def start_peak() -> tuple[int, bool]:
    """The resident memory now, and whether the peak could be reset to it (Linux: ``clear_refs`` 5), so that
    :func:`peak_growth` measures from here even after larger temporaries; else the peak so far (``ru_maxrss``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmRSS") * 1024, True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False


def peak_growth(start: tuple[int, bool]) -> int:
    now = _status_kib("VmHWM") if start[1] else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return now * 1024 - start[0]


def compare(new: dict, old: dict) -> dict:
    """Per key, whether the replicates agree (counts exactly, field parts to 1e-12 relative), and the largest
    relative difference of the field parts."""
    out = {"same_keys": list(new) == list(old)}
    worst = 0.0
    for key in old:
        a, b = new[key], old[key]
        if key in COUNT_KEYS:
            ok = bool(np.array_equal(a, b, equal_nan=True))
        else:
            ok = bool(np.allclose(a, b, rtol=1e-12, atol=1e-15, equal_nan=True))
            both = np.isfinite(a) & np.isfinite(b) & (b != 0)
            if both.any():
                worst = max(worst, float(np.max(np.abs(a[both] - b[both]) / np.abs(b[both]))))
        out.setdefault("differ", [])
        if not ok:
            out["differ"].append(key)
    out["max_relative_difference_field_parts"] = worst
    out["identical"] = out["same_keys"] and not out["differ"]
    return out


def run_vgg(replicates: int, seed: int) -> dict:
    L, n = 10, 10_000
    layers = [planted_layer(c, L, n, seed + k) for k, c in enumerate(VGG16_QUARTER)]
    inputs = sum(f.numel() * f.element_size() for f, _ in layers)
    sfp.bootstrap_summary(layers[0][0], layers[0][1], L, 5, seed, accuracy=True)  # warm-up
    reference_bootstrap_summary(layers[0][0][:, :4], layers[0][1], L, 2, seed, accuracy=True)
    rows, new_samples = [], []
    for (fields, labels), c in zip(layers, VGG16_QUARTER):
        t0 = time.perf_counter()
        _, samples = sfp.bootstrap_summary(fields, labels, L, replicates, seed, return_samples=True, accuracy=True)
        rows.append({"units": c, "new_seconds": time.perf_counter() - t0})
        new_samples.append(samples)
    checks = []
    for row, (fields, labels), samples in zip(rows, layers, new_samples):
        t0 = time.perf_counter()
        _, old = reference_bootstrap_summary(fields, labels, L, replicates, seed, accuracy=True)
        row["old_seconds"] = time.perf_counter() - t0
        row["ratio"] = row["old_seconds"] / row["new_seconds"]
        checks.append(compare(samples, old))
        print(f"  {row['units']:4d} units   old {row['old_seconds']:8.2f} s   new {row['new_seconds']:6.3f} s   "
              f"x{row['ratio']:6.1f}   identical {checks[-1]['identical']}", flush=True)
    old_s, new_s = sum(r["old_seconds"] for r in rows), sum(r["new_seconds"] for r in rows)
    return {"labels": L, "inputs": n, "replicates": replicates, "units": list(VGG16_QUARTER),
            "inputs_bytes": inputs, "old_seconds": old_s, "new_seconds": new_s, "ratio": old_s / new_s,
            "layers": rows,
            "identical": all(c["identical"] for c in checks),
            "max_relative_difference_field_parts": max(c["max_relative_difference_field_parts"] for c in checks),
            "differ": sorted({k for c in checks for k in c["differ"]})}


def child(args) -> dict:
    """One layer in this (fresh) process: build its fields, warm up on a tiny layer, then time the new code and
    measure the growth of the process' peak resident memory over the inputs (:func:`start_peak`)."""
    dtype = torch.float32 if args.float32 else torch.float64
    fields, labels = planted_layer(args.units, args.labels, args.inputs, args.seed, dtype=dtype)
    tiny = np.arange(2 * args.labels) % args.labels
    sfp.bootstrap_summary(np.random.default_rng(0).normal(size=(tiny.size, 2, args.labels)), tiny, args.labels, 2, 0)
    start = start_peak()
    t0 = time.perf_counter()
    _, samples = sfp.bootstrap_summary(fields, labels, args.labels, args.replicates, args.seed,
                                       return_samples=True, accuracy=True)
    seconds = time.perf_counter() - t0
    growth = peak_growth(start)
    return {"units": args.units, "labels": args.labels, "inputs": args.inputs, "replicates": args.replicates,
            "fields_dtype": str(dtype).replace("torch.", ""), "inputs_bytes": fields.numel() * fields.element_size(),
            "new_seconds": seconds, "new_peak_growth_bytes": growth, "peak_reset": start[1],
            "clusters_per_filter_all": float(np.mean(samples["clusters_per_filter_all"])),
            "noise_per_filter_all": float(np.mean(samples["noise_per_filter_all"]))}


def child_features(args) -> dict:
    """The features route in this (fresh) process: one layer (``--units`` x ``--positions``) or, with ``--vgg``,
    every layer of VGG-16 at 1/4 width; inputs built first, a warm-up on a tiny layer, then the time and the growth
    of the peak resident memory over the inputs (:func:`start_peak`), and the process' whole peak (VmHWM)."""
    shapes = vgg16_quarter_shapes() if args.vgg else [(args.units, args.positions)]
    L, n, reps = args.labels, args.inputs, args.replicates
    layers = [planted_features(c, p, L, n, args.seed + k) for k, (c, p) in enumerate(shapes)]
    inputs = sum(a.numel() * a.element_size() + w.numel() * w.element_size() for a, w, _ in layers)
    tiny = np.arange(2 * L) % L
    sfp.bootstrap_summary_from_features(torch.randn(tiny.size, 2, 3).bfloat16(), torch.randn(L, 2, 3), tiny, L, 2, 0,
                                        accuracy=True)
    start = start_peak()
    rows, samples = [], []
    t_all = time.perf_counter()
    for (a, w, labels), (c, p) in zip(layers, shapes):
        t0 = time.perf_counter()
        _, got = sfp.bootstrap_summary_from_features(a, w, labels, L, reps, args.seed, return_samples=True,
                                                     accuracy=True)
        rows.append({"units": c, "positions": p, "seconds": time.perf_counter() - t0,
                     "clusters_per_filter_all": float(np.mean(got["clusters_per_filter_all"])),
                     "noise_per_filter_all": float(np.mean(got["noise_per_filter_all"]))})
        samples.append(got)
        print(f"  {c:4d} units x {p:3d} positions: {rows[-1]['seconds']:7.1f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t_all
    growth = peak_growth(start)
    whole = _status_kib("VmHWM") * 1024 if start[1] else None
    out = {"labels": L, "inputs": n, "replicates": reps, "features_dtype": "bfloat16", "weight_dtype": "float32",
           "units": sum(c for c, _ in shapes), "layers": rows, "inputs_bytes": inputs,
           "fields_float32_bytes": sum(n * c * L * 4 for c, _ in shapes),
           "features_bytes": sum(n * c * p * 2 for c, p in shapes), "seconds": seconds,
           "peak_growth_bytes": growth, "peak_bytes": whole, "peak_reset": start[1]}
    if not args.vgg:  # the replicates of the first units against the fields route on the float64 fields
        a, w, labels = layers[0]
        k = min(4, a.shape[1])
        fields = sfp.sample_fields(w[:, :k, :, None].double(), a[:, :k, :, None].double())
        _, want = sfp.bootstrap_summary(fields, labels, L, reps, args.seed, return_samples=True, accuracy=True)
        _, got = sfp.bootstrap_summary_from_features(a[:, :k], w[:, :k], labels, L, reps, args.seed,
                                                     return_samples=True, accuracy=True)
        # the accuracy of 4 units is not the layer's: compare it too (the same units on both sides)
        out["check_units"] = k
        out["check"] = compare(got, want)
    return out


def in_child(units: int, labels: int, inputs: int, replicates: int, seed: int, float32: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", "--units", str(units), "--labels", str(labels), "--inputs",
           str(inputs), "--replicates", str(replicates), "--seed", str(seed)] + (["--float32"] if float32 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 replicates instead of 200")
    p.add_argument("--large", action="store_true", help="also one layer of 128 units at L = 1000 (new code only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--units", type=int, default=128, help=argparse.SUPPRESS)
    p.add_argument("--labels", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--inputs", type=int, default=10_000, help=argparse.SUPPRESS)
    p.add_argument("--replicates", type=int, default=20, help=argparse.SUPPRESS)
    p.add_argument("--float32", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--features", action="store_true",
                   help="the features route alone at L = 1000: one 128-unit layer and the whole VGG-16 at 1/4 width")
    p.add_argument("--positions", type=int, default=4, help=argparse.SUPPRESS)
    p.add_argument("--vgg", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.child:
        print(json.dumps(child_features(args) if args.features else child(args)))
        return 0
    if args.features:
        return main_features(args.seed)
    replicates = 20 if args.quick else 200
    print(f"VGG-16 at 1/4 width, L = 10, N = 10,000, {replicates} replicates, one thread:", flush=True)
    vgg = run_vgg(replicates, args.seed)
    print(f"all layers: old {vgg['old_seconds']:.1f} s, new {vgg['new_seconds']:.2f} s, x{vgg['ratio']:.0f}; "
          f"replicates identical {vgg['identical']} (field parts within "
          f"{vgg['max_relative_difference_field_parts']:.1e})", flush=True)
    memory = in_child(128, 10, 10_000, replicates, args.seed, False)
    print(f"one 128-unit layer in a fresh process: new {memory['new_seconds']:.2f} s, peak "
          f"+{memory['new_peak_growth_bytes'] / 2**20:.0f} MiB over its {memory['inputs_bytes'] / 2**20:.0f} MiB "
          "of fields", flush=True)
    result = {"benchmark": "sfp_bootstrap", "what": "sfp.bootstrap_summary (accuracy on, return_samples) over "
              "every layer, the pre-batching code (tests' REFERENCE) against the batched one, one process, planted "
              "data; memory: one layer in a fresh process, growth of the peak resident memory over its fields",
              "threads": torch.get_num_threads(), "vgg16_quarter": vgg, "memory_128_units": memory}
    if args.large:
        large = in_child(128, 1000, 10_000, 20, args.seed, True)
        print(f"one layer of 128 units at L = 1000, N = 10,000, 20 replicates: new {large['new_seconds']:.1f} s, "
              f"peak +{large['new_peak_growth_bytes'] / 2**20:.0f} MiB over the "
              f"{large['inputs_bytes'] / 2**30:.1f} GiB of fields", flush=True)
        result["large"] = large
    result["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "numpy": np.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "load_average": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("sfp_bootstrap_quick.json" if args.quick else "sfp_bootstrap.json")
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"-> {out}")
    return 0 if vgg["identical"] else 1


def main_features(seed: int) -> int:
    """``--features``: the two cases of the module docstring, each in a fresh process, -> the entry ``features`` of
    results/sfp_bootstrap.json (the other entries as they were, with their own environment); exit status 1 when
    the one-layer check differs."""
    result = {"benchmark": "sfp_bootstrap --features", "what": "sfp.bootstrap_summary_from_features (accuracy on, "
              "return_samples), bfloat16 test features and float32 weights, L = 1000, N = 12,000, 20 replicates, "
              "one thread, each case in a fresh process: seconds, growth of the peak resident memory over the "
              "inputs, the process' whole peak; the one-layer replicates of 4 units against the fields route",
              "threads": 1}
    for name, flags in (("layer_128_units", ["--units", "128", "--positions", "4"]), ("vgg16_quarter_20px", ["--vgg"])):
        cmd = [sys.executable, __file__, "--child", "--features", "--labels", "1000", "--inputs", "12000",
               "--replicates", "20", "--seed", str(seed)] + flags
        print(f"{name}:", flush=True)
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        result[name] = got
        print(f"{name}: {got['units']} units, {got['seconds']:.1f} s, peak +{got['peak_growth_bytes'] / 2**20:.0f} MiB "
              f"over its {got['inputs_bytes'] / 2**20:.0f} MiB of inputs (whole process "
              f"{(got['peak_bytes'] or 0) / 2**30:.2f} GiB); its fields would take "
              f"{got['fields_float32_bytes'] / 2**30:.1f} GiB" + (f"; replicates as the fields route's: "
                                                                  f"{got['check']['identical']}" if "check" in got
                                                                  else ""), flush=True)
    result["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "numpy": np.__version__, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                             "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "sfp_bootstrap.json"
    whole = json.loads(out.read_text()) if out.exists() else {"benchmark": "sfp_bootstrap"}
    whole["features"] = result
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(whole, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"-> {out}")
    return 0 if result["layer_128_units"]["check"]["identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
