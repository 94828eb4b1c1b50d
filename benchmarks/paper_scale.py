"""The paper's VGG-16 / CIFAR-100 analysis at full size, timed stage by stage (issue 9).

It runs ``filterlens run`` (train, probes, single-filter performance, AFCC, report) with
``configs/vgg16-cifar100.toml`` (or another CIFAR recipe, ``--config``) read as a user reads
it, on CIFAR-100 (CIFAR-10): the real python files under ``--data-dir`` when they are there,
otherwise synthetic files of the same shape that this script writes, in the same format, to a
temporary folder (50,000 train / 10,000 test RGB 32x32 images, 100 (10) labels: each label a
smooth random template, each image its template shifted, scaled and noised, so the network
has something to learn and every stage does its real amount of work).

Only the epoch counts are cut (``--epochs``, ``--probe-epochs``, ``--retrain-epochs``), and
on a small machine the image counts (``--train-images``, ``--test-images``) and the width
(``--width-mult``). From the measured run it reports, per stage:

- ``measured_s``: the stage's wall seconds in this run (``stages.json``);
- ``per_epoch_s``: training and the probes (paper mode: one forward pass of the training set
  per epoch updates every layer's FC) per epoch;
- ``projected_full_s``: the config's full recipe (200 training epochs, 200 probe epochs, the
  config's AFCC) on the full data set, projected from the measured per-epoch times (epochs
  and images scale the time linearly; the stages' fixed costs are kept as measured). With
  the defaults on a GPU the only projection is over epochs.

Baseline in the same process: one plain inference pass of the trained network over the
training set (no hooks, batch 256, the fastest of two). ``probe_epoch_over_inference`` =
(a paper-mode probe epoch) / (that pass) says what the FCs of all 13 layers and the
augmentation add to the forward pass each epoch costs anyway.

Usage::

    python benchmarks/paper_scale.py                       # on the GPU when there is one: full data, 1 training
                                                           # and 1 probe epoch, AFCC as configured
    python benchmarks/paper_scale.py --device cpu --train-images 2000 --test-images 500   # a small CPU run

Writes ``benchmarks/results/paper_scale_<device kind>.json`` (``--out`` to choose) atomically
and prints a table ready for the README.
"""
from __future__ import annotations

import argparse
import csv
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:
    import filterlens
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import filterlens

from filterlens.cli import load_toml
from filterlens.config import Config
from filterlens.errors import FilterlensError
from filterlens.files import read_json, write_json
from filterlens.loaders import make_loader
from filterlens.output import to_stdout
from filterlens.pipeline import run_pipeline
from filterlens.train import load_trained
from filterlens.utils import resolve_device

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "vgg16-cifar100.toml"
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000  # both CIFARs
# dataset -> (folder, train files, test files, meta file): the layouts torchvision's CIFAR10/100 read
CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                           "batches.meta"),
               "cifar100": ("cifar-100-python", ["train"], ["test"], "meta")}


# ----------------------------------------------------------------------------- synthetic CIFAR

def write_synthetic_cifar100(root: Path, train: int = CIFAR_TRAIN, test: int = CIFAR_TEST, seed: int = 0) -> Path:
    """Synthetic CIFAR-100 files (:func:`write_synthetic_cifar`)."""
    return write_synthetic_cifar(root, "cifar100", train, test, seed)


def write_synthetic_cifar(root: Path, dataset: str = "cifar100", train: int = CIFAR_TRAIN, test: int = CIFAR_TEST,
                          seed: int = 0) -> Path:
    """Write synthetic ``dataset`` files under ``root`` in CIFAR's python-pickle format.

    Each row of ``data`` is a 3x32x32 uint8 image as the R, G and B planes, each row-major.
    CIFAR-100: ``cifar-100-python/{train,test,meta}`` with ``fine_labels``/``coarse_labels``
    and ``fine_label_names``/``coarse_label_names``; CIFAR-10: ``cifar-10-batches-py/
    data_batch_1..5, test_batch, batches.meta`` with ``labels`` and ``label_names`` (the
    training images split over the five batches). Returns ``root`` (the ``--data-dir``).
    """
    folder, train_files, test_files, meta_file = CIFAR_FILES[dataset]
    labels = 100 if dataset == "cifar100" else 10
    rng = np.random.default_rng(seed)
    # one smooth template per label: 4x4 random colours upsampled to 32x32 plus a random stripe frequency
    coarse = rng.uniform(0, 1, size=(labels, 3, 4, 4)).astype(np.float32)
    templates = coarse.repeat(8, axis=2).repeat(8, axis=3)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    freq = rng.uniform(0.1, 0.6, size=(labels, 2)).astype(np.float32)
    stripes = 0.5 + 0.5 * np.sin(freq[:, 0, None, None] * xx + freq[:, 1, None, None] * yy)
    templates = 0.6 * templates + 0.4 * stripes[:, None]

    def split(n: int, which: str) -> dict:
        y = np.arange(n) % labels
        rng.shuffle(y)
        out = np.empty((n, 3, 32, 32), dtype=np.uint8)
        for s in range(0, n, 5000):  # in chunks: bounded float32 memory
            ys = y[s : s + 5000]
            imgs = templates[ys]
            shift = rng.integers(-3, 4, size=(len(ys), 2))
            for i, (dy, dx) in enumerate(shift):
                imgs[i] = np.roll(imgs[i], (int(dy), int(dx)), axis=(1, 2))
            imgs = imgs * rng.uniform(0.7, 1.3, size=(len(ys), 1, 1, 1)) + rng.normal(0, 0.25, size=imgs.shape)
            out[s : s + 5000] = np.clip(imgs * 255, 0, 255).astype(np.uint8)
        return {"y": y, "x": out.reshape(n, 3 * 32 * 32)}

    def batch(part: dict, which: str) -> dict:
        y, n = part["y"], len(part["y"])
        d = {b"filenames": [f"{which}_{i}.png".encode() for i in range(n)], b"batch_label": which.encode(),
             b"data": part["x"]}
        if dataset == "cifar100":
            d.update({b"fine_labels": y.tolist(), b"coarse_labels": (y // 5).tolist()})
        else:
            d[b"labels"] = y.tolist()
        return d

    base = root / folder
    base.mkdir(parents=True, exist_ok=True)
    for files, n in ((train_files, train), (test_files, test)):
        part = split(n, files[0])
        bounds = np.linspace(0, n, len(files) + 1).astype(int)
        for f, a, z in zip(files, bounds[:-1], bounds[1:]):
            with open(base / f, "wb") as fh:
                pickle.dump(batch({"y": part["y"][a:z], "x": part["x"][a:z]}, f), fh, protocol=4)
    meta = ({b"fine_label_names": [f"synthetic_{i:03d}".encode() for i in range(labels)],
             b"coarse_label_names": [f"group_{i:02d}".encode() for i in range(20)]} if dataset == "cifar100" else
            {b"label_names": [f"synthetic_{i}".encode() for i in range(labels)], b"num_cases_per_batch": train // 5})
    with open(base / meta_file, "wb") as fh:
        pickle.dump(meta, fh, protocol=4)
    return root


def has_cifar(data_dir: Path | None, dataset: str) -> bool:
    folder, train_files, test_files, meta_file = CIFAR_FILES[dataset]
    return data_dir is not None and all((data_dir / folder / f).is_file()
                                        for f in train_files + test_files + [meta_file])


# ----------------------------------------------------------------------------- the baseline

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def inference_pass(model, data, device) -> float:
    """Seconds of one plain inference pass over the training set (batch 256, no hooks)."""
    model.eval()
    _sync(device)
    t0 = time.perf_counter()
    for x, _ in make_loader(data, "train", 256, device=device):
        model(x)
    _sync(device)
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- the run

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=CONFIG, help="the recipe (default configs/vgg16-cifar100.toml)")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="folder holding cifar-100-python/ (default: the config's; synthetic files when absent)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ap.add_argument("--train-images", type=int, default=0, help="training images (0: all 50,000)")
    ap.add_argument("--test-images", type=int, default=0, help="test images (0: all 10,000)")
    ap.add_argument("--width-mult", type=float, default=None, help="VGG width multiplier (default: the config's, 1)")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs run (the projection uses the config's)")
    ap.add_argument("--probe-epochs", type=int, default=1, help="probe epochs run (the projection uses the config's)")
    ap.add_argument("--retrain-epochs", type=int, default=None,
                    help="AFCC masked-retraining epochs run (default: the config's, 3)")
    ap.add_argument("--random-draws", type=int, default=None, help="AFCC random-control draws (default: the config's)")
    ap.add_argument("--no-afcc", action="store_true", help="skip AFCC")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network for training")
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    ap.add_argument("--run-dir", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output (default results/paper_scale_<device>.json)")
    args = ap.parse_args(argv)
    for name in ("train_images", "test_images", "epochs", "probe_epochs", "retrain_epochs"):
        if getattr(args, name) is None:
            continue
        if getattr(args, name) < 0 or (name.endswith("epochs") and getattr(args, name) < 1):
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid; use "
                     + ("an integer >= 1" if name.endswith("epochs") else "an integer >= 0 (0: all)"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = resolve_device(args.device)
        full = Config.from_dict(load_toml(args.config), source=str(args.config))
    except FilterlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if full.dataset not in CIFAR_FILES:
        print(f"error: {args.config} uses dataset '{full.dataset}'; paper_scale times the CIFAR recipes "
              f"(dataset cifar10 or cifar100)", file=sys.stderr)
        return 2
    pretty = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[full.dataset]
    echo = print
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="filterlens-paper-scale-") as tmp:
        tmp = Path(tmp)
        data_dir = args.data_dir or (Path(full.data_dir) if full.data_dir else None)
        synthetic = not has_cifar(data_dir, full.dataset)
        if synthetic:
            t0 = time.perf_counter()
            n_train = args.train_images or CIFAR_TRAIN
            n_test = args.test_images or CIFAR_TEST
            data_dir = write_synthetic_cifar(tmp / full.dataset, full.dataset, n_train, n_test)
            echo(f"synthetic {pretty}-shaped data: {n_train} train / {n_test} test images written in "
                 f"{time.perf_counter() - t0:.1f}s ({data_dir})")
        over = dict(data_dir=str(data_dir), device=args.device, epochs=args.epochs, probe_epochs=args.probe_epochs,
                    retrain_epochs=args.retrain_epochs or full.retrain_epochs, train_samples=args.train_images,
                    test_samples=args.test_images, afcc=full.afcc and not args.no_afcc, num_labels="",
                    progress=False, compile=args.compile or full.compile)
        if args.width_mult is not None:
            over["width_mult"] = args.width_mult
        if args.random_draws is not None:
            over["random_draws"] = args.random_draws
        if args.num_workers is not None:
            over["num_workers"] = args.num_workers
        try:
            cfg = full.replace(**over)
        except FilterlensError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        run_dir = args.run_dir or tmp / "run"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
        echo(f"paper_scale: {cfg.model} x{cfg.width_mult:g} on {'synthetic ' if synthetic else ''}{pretty}, "
             f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
             f"epochs {cfg.epochs}/{full.epochs}, probe epochs {cfg.probe_epochs}/{full.probe_epochs}, "
             f"AFCC retrain epochs {cfg.retrain_epochs}/{full.retrain_epochs}")
        with to_stdout():  # the stages' own lines, as filterlens run prints them
            stages = run_pipeline(cfg, run_dir, overwrite=True)

        rd = Path(run_dir)
        train_summary = read_json(rd / "train.json")
        probes_meta = read_json(rd / "probes.json")
        results = read_json(rd / "results.json")
        with open(rd / "layers.csv", newline="") as fh:
            layer_accuracy = {r["layer"]: float(r["accuracy"]) for r in csv.DictReader(fh)}
        model, _, data, _ = load_trained(rd, device=device)
        inference_pass(model, data, device)  # warm-up: cuDNN / oneDNN choose their kernels
        floor = min(inference_pass(model, data, device) for _ in range(2))

    n_train, n_test = len(data.train), len(data.test)
    image_scale = CIFAR_TRAIN / n_train  # time per epoch is linear in the training images
    epochs_run = [h["seconds"] for h in train_summary["history"]]
    train_epoch = sum(epochs_run) / len(epochs_run)
    tm = probes_meta.get("timings", {})
    probe_train = tm.get("probe_train_s", 0.0)
    probe_epoch = probe_train / cfg.probe_epochs
    probes_fixed = stages["probes"]["seconds"] - probe_train
    # the stages' times (stages.json also records config.json, with no time)
    seconds = {k: v["seconds"] for k, v in stages.items() if v.get("seconds") is not None}
    rows = {
        "train": {"measured_s": seconds["train"], "per_epoch_s": train_epoch,
                  "images_per_s": n_train / train_epoch,
                  "projected_full_s": (seconds["train"] - sum(epochs_run)) + train_epoch * image_scale * full.epochs},
        "probes": {"measured_s": seconds["probes"], "per_epoch_s": probe_epoch, "images_per_s": n_train / probe_epoch,
                   "projected_full_s": probes_fixed * image_scale + probe_epoch * image_scale * full.probe_epochs},
        "sfp": {"measured_s": seconds["sfp"], "projected_full_s": seconds["sfp"]},
    }
    if "afcc" in seconds:
        # masked retraining dominates AFCC: scaled with its epochs and the images (an approximation)
        rows["afcc"] = {"measured_s": seconds["afcc"], "projected_full_s": seconds["afcc"] * image_scale
                        * full.retrain_epochs / cfg.retrain_epochs,
                        "timings": results.get("afcc", {}).get("timings")}
    rows["report"] = {"measured_s": seconds["report"], "projected_full_s": seconds["report"]}
    total_projected = sum(r["projected_full_s"] for r in rows.values())
    result = {
        "benchmark": "paper_scale",
        "device": str(device), "device_name": name, "synthetic_data": synthetic,
        "stages": rows,
        "inference_pass_s": floor,
        "probe_epoch_over_inference": probe_epoch / floor,
        "projected_full_total_s": total_projected,
        "layer_accuracy": layer_accuracy,
        "test_accuracy": train_summary["test_accuracy"],
        "settings": {"config": str(args.config.relative_to(ROOT)) if args.config.is_relative_to(ROOT)
                     else str(args.config), "model": cfg.model, "width_mult": cfg.width_mult,
                     "train_images": n_train, "test_images": n_test, "epochs": cfg.epochs,
                     "probe_epochs": cfg.probe_epochs, "probe_mode": cfg.probe_mode,
                     "probe_engine": probes_meta.get("engine"), "retrain_epochs": cfg.retrain_epochs,
                     "random_draws": cfg.random_draws, "afcc": cfg.afcc, "amp": cfg.amp, "compile": cfg.compile,
                     "full_epochs": full.epochs, "full_probe_epochs": full.probe_epochs,
                     "full_retrain_epochs": full.retrain_epochs, "full_train_images": CIFAR_TRAIN,
                     "dataset": full.dataset,
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                     "python": platform.python_version(), "platform": platform.platform(),
                     "filterlens": getattr(filterlens, "__version__", None)},
        "notes": ["measured_s come from this run; projected_full_s scale the per-epoch times linearly to the "
                  "config's epochs and to 50,000 training images, and keep the other costs as measured",
                  "AFCC's projection scales its whole time with its retraining epochs and images (retraining "
                  "dominates it); evaluation passes in it make the projection a slight overestimate"],
        "total_benchmark_s": time.perf_counter() - t_start,
    }
    out = args.out or RESULTS / f"paper_scale_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)

    echo("")
    echo("| stage | measured here | per epoch | projected: full recipe |")
    echo("|---|---|---|---|")
    for stage, r in rows.items():
        per = f"{r['per_epoch_s']:.1f} s ({r['images_per_s']:.0f} img/s)" if "per_epoch_s" in r else ""
        echo(f"| {stage} | {r['measured_s']:.1f} s | {per} | {_hms(r['projected_full_s'])} |")
    echo(f"| total | {sum(seconds.values()):.1f} s | | {_hms(total_projected)} |")
    echo(f"inference pass over the {n_train} training images: {floor:.2f} s; a probe epoch is "
         f"{probe_epoch / floor:.2f} x that")
    echo(f"written {out}")
    return 0


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


if __name__ == "__main__":
    sys.exit(main())
