"""Hostile input, table-driven, through the real command line (``python -m filterlens`` in a subprocess).

Every row of ``CASES`` is one command of one subcommand (train, analyze, layers, sweep, run, report,
afcc, demo) given a bad number, a bad name, a bad file or a damaged run directory. For every row:

- the exit status is the expected one (2 for a user error; 0 where the right answer is to recompute);
- a refusal is exactly ONE line on stderr starting ``filterlens: error:`` that names the bad value
  (or the setting, where the value is printed in another form, e.g. 1e308 -> 1e+308);
- no ``Traceback`` anywhere in stdout or stderr;
- a refused command changes nothing: every file of the case's folder (the run directory copied into
  it, the TOML, the dataset files) has the same sha256 before and after, and no file or folder is
  added (no lock file: the copied run directory's ``.filterlens.lock`` is removed before the command).

A row failing here means the product misbehaves on that input: keep its expectation.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    TINY_TRAIN_ARGS,
    assert_user_error,
    cifar_row,
    cli_env,
    copy_run,
    flip_a_weight_bit,
    idx_bytes,
    make_idx_arrays,
    run_cli,
    tiny_toml,
)

pytestmark = pytest.mark.slow  # about 3 CPU-minutes: `make test-slow`, a step of .ci/run

TOML = tiny_toml(probe_epochs=2)

TIMEOUT = 120  # seconds per command: every command here is refused early or is tiny


def tree(d: Path) -> dict[str, str]:
    """Every file and folder under ``d`` (relative path -> sha256 of a file's bytes, "folder" for a folder)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(d.rglob("*"))}


# ------------------------------------------------------------------------------ module fixture

@pytest.fixture(scope="module")
def analysed_run(tmp_path_factory) -> Path:
    """A finished ``filterlens run`` of TOML: vgg_tiny on digits, 2 training epochs, 2 probe epochs, stages
    train, probes, sfp and report (no AFCC). Read-only: every case works on a copy."""
    base = tmp_path_factory.mktemp("hostile-analysed")
    (base / "tiny.toml").write_text(TOML)
    rc, out, err = run_cli("run", base / "tiny.toml", "--run-dir", base / "run", "--no-progress", cwd=base)
    assert rc == 0, f"making the analysed run failed:\n{out}\n{err}"
    return base / "run"


# ------------------------------------------------------------------------------ setup helpers
# A setup is called with the case's folder (``ws``); the run directory, when the case has one, is ws/"run".

Setup = Callable[[Path], None]


def write(rel: str, data: bytes | str) -> Setup:
    def run(ws: Path) -> None:
        p = ws / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            p.write_text(data, encoding="utf-8")
        else:
            p.write_bytes(data)
    return run


def delete(rel: str) -> Setup:
    def run(ws: Path) -> None:
        (ws / rel).unlink()
    return run


def truncate(rel: str, keep: float = 0.5) -> Setup:
    def run(ws: Path) -> None:
        p = ws / rel
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * keep)])
    return run


def mkdir(rel: str) -> Setup:
    def run(ws: Path) -> None:
        (ws / rel).mkdir(parents=True, exist_ok=True)
    return run


def both(*setups: Setup) -> Setup:
    def run(ws: Path) -> None:
        for setup in setups:
            setup(ws)
    return run


def copy_dir(src: str, dst: str) -> Setup:
    def run(ws: Path) -> None:
        copy_run(ws / src, ws / dst)
    return run


def damaged_checkpoint(ws: Path) -> None:
    """An unfinished training whose checkpoint.pt was cut short (a disk failure, a copy interrupted): the final
    model.pt and train.json are gone, checkpoint.pt is half of a real checkpoint."""
    run = ws / "run"
    data = (run / "model.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    (run / "model.pt").unlink()
    (run / "train.json").unlink()


GARBAGE = bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8))  # not UTF-8, not a pickle
NOT_UTF8 = 'dataset = "digits"\nlabels = "caf\xe9"\n'.encode("latin-1")


def other_state_dict(rel: str) -> Setup:
    """A plain state_dict of another architecture (a 2-layer MLP)."""
    def run(ws: Path) -> None:
        import torch

        torch.save({"0.weight": torch.zeros(32, 64), "0.bias": torch.zeros(32), "2.weight": torch.zeros(10, 32),
                    "2.bias": torch.zeros(10)}, ws / rel)
    return run


# CIFAR-10 in the real layout (see conftest): 5 train batches of 10 images, a test batch of 20, meta.

def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def cifar(damage: Callable[[Path], None] | None = None) -> Setup:
    def run(ws: Path) -> None:
        rng = np.random.default_rng(3)
        base = ws / "cifar" / "cifar-10-batches-py"
        base.mkdir(parents=True)
        for name, n in [(f"data_batch_{b}", 10) for b in range(1, 6)] + [("test_batch", 20)]:
            labels = [int(v) for v in np.resize(rng.permutation(10), n)]
            imgs = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
            _pickle(base / name, {b"batch_label": name.encode(), b"labels": labels,
                                  b"data": np.stack([cifar_row(im) for im in imgs]),
                                  b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]})
        _pickle(base / "batches.meta", {b"num_cases_per_batch": 10, b"num_vis": 3072,
                                        b"label_names": [f"label{i}".encode() for i in range(10)]})
        if damage:
            damage(base)
    return run


def _drop_data_key(base: Path) -> None:
    with open(base / "data_batch_3", "rb") as fh:
        d = pickle.load(fh)
    del d[b"data"]
    _pickle(base / "data_batch_3", d)


def _truncate_pickle(base: Path) -> None:
    p = base / "data_batch_2"
    p.write_bytes(p.read_bytes()[:1500])


def _non_dict_pickle(base: Path) -> None:
    _pickle(base / "test_batch", [1, 2, 3])


def _wrong_row_length(base: Path) -> None:
    with open(base / "data_batch_4", "rb") as fh:
        d = pickle.load(fh)
    d[b"data"] = d[b"data"][:, :1000]
    _pickle(base / "data_batch_4", d)


def idx(damage: Callable[[Path], None]) -> Setup:
    def run(ws: Path) -> None:
        folder = ws / "fm"
        folder.mkdir()
        for stem, arr in make_idx_arrays().items():
            (folder / stem).write_bytes(idx_bytes(arr))
        damage(folder)
    return run


def _cut_idx(folder: Path) -> None:
    p = folder / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:5000])  # the header says 30 images of 28x28


def _idx_count_mismatch(folder: Path) -> None:
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, dtype=np.uint8)))  # 20 images, 7 labels


def imagefolder(bad_name: str, bad_bytes: Callable[[], bytes]) -> Setup:
    """train/ and val/ with 3 classes of small PNGs, plus one bad file in train/apple."""
    def run(ws: Path) -> None:
        from PIL import Image

        root = ws / "folders"
        for split, count in (("train", 3), ("val", 2)):
            for cls, colour in (("apple", (10, 240, 20)), ("mango", (30, 40, 230)), ("zebra", (250, 10, 10))):
                d = root / split / cls
                d.mkdir(parents=True)
                for i in range(count):
                    Image.new("RGB", (20 + i, 18 + i), colour).save(d / f"{cls}_{i}.png")
        (root / "train" / "apple" / bad_name).write_bytes(bad_bytes())
    return run


def _truncated_jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[: len(data) // 3]


# issue 32: links out of a folder filterlens owns, files it reads back, a user's model that breaks the contract

MINE = ("features.0-filter1.png", "features.1-filter0.png", "notes.txt")  # the user's files, named like filterlens'


def link_dir(rel: str, target: str = "mine") -> Setup:
    """ws/rel (a folder filterlens made, or none yet) replaced by a link to the user's folder ws/target."""
    def run(ws: Path) -> None:
        t = ws / target
        t.mkdir(exist_ok=True)
        for name in MINE:
            (t / name).write_bytes(b"mine: " + name.encode())
        p = ws / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(t, target_is_directory=True)
    return run


def dangling(rel: str) -> Setup:
    def run(ws: Path) -> None:
        p = ws / rel
        if p.is_dir():
            shutil.rmtree(p)
        p.symlink_to(ws / "nowhere", target_is_directory=True)
    return run


def link_file(rel: str, target: str = "mine.json") -> Setup:
    """ws/rel (a file filterlens wrote) replaced by a link to the user's file ws/target."""
    def run(ws: Path) -> None:
        (ws / target).write_text('{"mine": "keep me"}\n')
        p = ws / rel
        p.unlink(missing_ok=True)
        p.symlink_to(ws / target)
    return run


def mine_kept(target: str = "mine") -> tuple:
    return tuple(f"{target}/{name}" for name in MINE)


def flip_tensor_byte(rel: str) -> Setup:
    """One bit of the largest tensor stored in a torch file flipped (the file still loads)."""
    def run(ws: Path) -> None:
        flip_a_weight_bit(ws / rel)
    return run


def edit_json(rel: str, **changes) -> Setup:
    def run(ws: Path) -> None:
        p = ws / rel
        d = json.loads(p.read_text())
        d.update(changes)
        p.write_text(json.dumps(d, indent=2) + "\n")
    return run


def reformat_json(rel: str) -> Setup:
    """The same JSON written differently (the content a reader parses is unchanged, the bytes are not)."""
    def run(ws: Path) -> None:
        p = ws / rel
        p.write_text(json.dumps(json.loads(p.read_text())))
    return run


def flipped_checkpoint(ws: Path) -> None:
    """An unfinished training whose checkpoint.pt has one flipped bit in its weights."""
    run = ws / "run"
    shutil.copy(run / "model.pt", run / "checkpoint.pt")
    flip_tensor_byte("run/checkpoint.pt")(ws)
    (run / "model.pt").unlink()
    (run / "train.json").unlink()


def seeds_folder_with_link(ws: Path) -> None:
    write("run/.filterlens", '{"made_by": "filterlens", "kind": "seeds", "version": "0"}')(ws)
    link_dir("run/seed-0")(ws)


def sweep_folder_with_link(ws: Path) -> None:
    write("run/.filterlens", '{"made_by": "filterlens", "kind": "sweep", "version": "0"}')(ws)
    write("run/sweep_plan.json", '{"tasks": ["L003-s1", "L005-s1"], "config": {"model": "vgg_tiny"}}')(ws)
    link_dir("run/L003-s1")(ws)


ZOO = """
import sys
import torch
import torch.nn as nn


def net(num_labels=10, in_channels=1, outputs=None):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, outputs or num_labels))


class Wrap(nn.Module):
    def __init__(self, inner, how):
        super().__init__()
        self.inner, self.how = inner, how

    def forward(self, x):
        y = self.inner(x)
        if self.how == "exit":
            sys.exit(4)
        return {"dict": {"logits": y}, "tuple": (y, y), "list": [y], "3d": y[:, None], "none": None}[self.how]


def dictout(num_labels=10, in_channels=1):
    return Wrap(net(num_labels, in_channels), "dict")


def tupleout(num_labels=10, in_channels=1):
    return Wrap(net(num_labels, in_channels), "tuple")


def listout(num_labels=10, in_channels=1):
    return Wrap(net(num_labels, in_channels), "list")


def threed(num_labels=10, in_channels=1):
    return Wrap(net(num_labels, in_channels), "3d")


def noneout(num_labels=10, in_channels=1):
    return Wrap(net(num_labels, in_channels), "none")


def forward_exits(num_labels=10, in_channels=1):
    return Wrap(net(num_labels, in_channels), "exit")


def three(num_labels=10, in_channels=1):
    return net(num_labels, in_channels, outputs=3)


def nolayer(num_labels=10, in_channels=1, image_size=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_labels))


def meta(num_labels=10, in_channels=1):
    with torch.device("meta"):
        return net(num_labels, in_channels)


def double(num_labels=10, in_channels=1):
    return net(num_labels, in_channels).double()


def half(num_labels=10, in_channels=1):
    return net(num_labels, in_channels).half()


def exits(num_labels=10):
    sys.exit(3)


def exits_quietly(num_labels=10):
    sys.exit(0)


def rgb_only(num_labels=10):
    return net(num_labels, 3)
"""


def zoo(ws: Path) -> None:
    (ws / "zoo.py").write_text(ZOO)
    (ws / "exits_on_import.py").write_text("import sys\nsys.exit(2)\n\ndef make(num_labels=10):\n    pass\n")


def toml_with(extra: str) -> Setup:
    """tiny.toml (a valid config) with one more line: the bad value under test."""
    return write("bad.toml", TOML.replace("[afcc]", extra + "\n[afcc]"))


# ------------------------------------------------------------------------------ the table

@dataclass
class Case:
    id: str
    argv: list           # "{ws}" is the case's folder, "{run}" its run directory, "{toml}" a valid TOML
    needles: tuple = ()  # substrings of the error line
    setup: Setup | None = None
    base: str | None = None  # None (no run yet), "trained" (tiny_run) or "analysed" (analysed_run), copied to {run}
    rc: int = 2
    same_tree: bool = True   # a refusal changes no file of the case's folder
    timeout: float = TIMEOUT
    stdout: tuple = ()       # substrings of stdout, where the command succeeds (rc 0)
    kept: tuple = ()         # files of the case's folder that stay as they are whatever the outcome (the user's)


RUN = "{run}"
HOME = str(Path.home())
# train a fresh run: the bad flag comes last and overrides these
TR = ["train", "--run-dir", RUN, "--no-progress", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1"]
AN = ["analyze", "--run-dir", RUN, "--no-progress", "--probe-epochs", "1"]
# (the cheapest AFCC where a bad row is wrongly accepted; a flag given again later wins)
AF = ["afcc", "--run-dir", RUN, "--no-progress", "--retrain-epochs", "0", "--random-draws", "1", "--thresholds", ""]
SW = ["sweep", "--run-dir", RUN, "--no-progress", "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "1",
      "--num-labels", "3,5", "--subsets", "1", "--probe-epochs", "1"]
RU = ["run", "{toml}", "--run-dir", RUN, "--no-progress"]
LA = ["layers", "--model", "vgg_tiny", "--dataset", "digits"]


def T(id, *flags, needles=(), **kw):
    return Case(f"train-{id}", TR + list(flags), tuple(needles), **kw)


def A(id, *flags, needles=(), base="analysed", **kw):
    return Case(f"analyze-{id}", AN + list(flags), tuple(needles), base=base, **kw)


def F(id, *flags, needles=(), base="analysed", **kw):
    return Case(f"afcc-{id}", AF + list(flags), tuple(needles), base=base, **kw)


def S(id, *flags, needles=(), **kw):
    return Case(f"sweep-{id}", SW + list(flags), tuple(needles), **kw)


def R(id, *flags, needles=(), **kw):
    return Case(f"run-{id}", RU + list(flags), tuple(needles), **kw)


def L(id, *flags, needles=(), **kw):
    return Case(f"layers-{id}", LA + list(flags), tuple(needles), **kw)


CASES = [
    # ================================================================ bad numbers: train
    T("epochs-nan", "--epochs", "nan", needles=["--epochs", "nan"]),
    T("epochs-1e9", "--epochs", "1e9", needles=["--epochs", "1e9"]),
    T("epochs-negative", "--epochs", "-1", needles=["epochs", "-1"]),
    T("epochs-text", "--epochs", "ten", needles=["--epochs", "ten"]),
    T("batch-size-0", "--batch-size", "0", needles=["batch_size", "0"]),
    T("lr-nan", "--lr", "nan", needles=["lr", "nan"]),
    T("lr-minus-inf", "--lr=-inf", needles=["lr", "-inf"]),
    T("lr-1e400", "--lr", "1e400", needles=["lr"]),
    T("lr-text", "--lr", "fast", needles=["--lr", "fast"]),
    T("momentum-1", "--momentum", "1", needles=["momentum", "1"]),
    T("gamma-0", "--schedule", "step", "--gamma", "0", needles=["gamma", "0"]),
    T("step-epochs-1e9", "--schedule", "step", "--step-epochs", "1e9", needles=["--step-epochs", "1e9"]),
    T("seed-negative", "--seed", "-1", needles=["seed", "-1"]),
    T("image-size-100000", "--image-size", "100000", needles=["image_size", "100000"]),
    T("width-mult-1e6", "--width-mult", "1e6", needles=["width_mult"]),
    T("num-workers-negative", "--num-workers", "-1", needles=["num_workers", "-1"]),
    T("num-workers-1000", "--num-workers", "1000", needles=["num_workers", "1000"]),
    T("test-samples-text", "--test-samples", "10k", needles=["--test-samples", "10k"]),
    # ================================================================ bad numbers: analyze
    A("probe-lr-1e308", "--probe-lr", "1e308", needles=["probe_lr"]),
    A("probe-epochs-text", "--probe-epochs", "two", needles=["--probe-epochs", "two"]),
    A("cache-budget-nan", "--cache-budget", "nan", needles=["nan"]),
    A("cache-budget-inf", "--cache-budget", "inf", needles=["inf"]),
    A("cache-budget-1e400", "--cache-budget", "1e400", needles=["1e400"]),
    A("cache-budget-0", "--cache-budget", "0", needles=["cache budget", "'0'"]),
    A("cache-budget-negative", "--cache-budget=-5", needles=["-5"]),
    A("cache-budget-12Q", "--cache-budget", "12Q", needles=["12Q"]),
    A("cache-budget-empty", "--cache-budget", "", needles=["--cache-budget", "is empty"]),
    A("threshold-0", "--threshold", "0", needles=["threshold", "0"]),
    A("threshold-1", "--threshold", "1", needles=["threshold", "1"]),
    A("threshold-1.5", "--threshold", "1.5", needles=["threshold", "1.5"]),
    A("threshold-nan", "--threshold", "nan", needles=["threshold", "nan"]),
    A("bootstrap-negative", "--bootstrap", "-1", needles=["bootstrap", "-1"]),
    # ================================================================ bad numbers: afcc
    F("retrain-epochs-negative", "--retrain-epochs", "-1", needles=["retrain_epochs", "-1"]),
    F("retrain-epochs-1e9", "--retrain-epochs", "1e9", needles=["--retrain-epochs", "1e9"]),
    F("retrain-lr-0", "--retrain-lr", "0", needles=["retrain_lr", "0"]),
    F("random-draws-0", "--random-draws", "0", needles=["random_draws", "0"]),
    # ================================================================ bad numbers: sweep, run, layers
    S("subsets-0", "--subsets", "0", needles=["subsets", "0"]),
    S("jobs-0", "--jobs", "0", needles=["jobs", "0"]),
    S("epochs-nan", "--epochs", "nan", needles=["--epochs", "nan"]),
    S("num-labels-too-many", "--num-labels", "3,50", needles=["50"]),
    L("width-mult-1e6", "--width-mult", "1e6", needles=["width_mult"]),
    L("image-size-100000", "--image-size", "100000", needles=["image_size", "100000"]),
    L("image-size-text", "--image-size", "big", needles=["--image-size", "big"]),
    # ================================================================ bad names
    T("dataset-unknown", "--dataset", "svhn", needles=["svhn"]),
    T("model-unknown", "--model", "resnet9000", needles=["resnet9000"]),
    T("labels-first-0", "--labels", "first:0", needles=["first:0"]),
    T("labels-first-1000", "--labels", "first:1000", needles=["first:1000"]),
    T("labels-random-x", "--labels", "random:x", needles=["random:x"]),
    T("labels-duplicate", "--labels", "3,5,3", needles=["3,5,3"]),
    T("device-gpu", "--device", "gpu", needles=["gpu"]),
    T("device-cuda-x", "--device", "cuda:x", needles=["cuda:x"]),
    T("schedule-unknown", "--schedule", "linear", needles=["linear"]),
    L("model-unknown", "--model", "nosuchnet", needles=["nosuchnet"]),
    L("vgg-cfg-text", "--model", "vgg", "--vgg-cfg", "16,x,M", needles=["x"]),
    A("layers-last-0", "--layers", "last:0", needles=["last:0"]),
    A("layers-99", "--layers", "99", needles=["99"]),
    A("layers-minus-99", "--layers=-99", needles=["-99"]),
    A("layers-unknown-name", "--layers", "features.42", needles=["features.42"]),
    A("heatmaps-no-colon", "--heatmaps", "features.1", needles=["features.1"]),
    A("heatmaps-unknown-layer", "--heatmaps", "conv9:0", needles=["conv9"]),
    A("heatmaps-unit-out-of-range", "--heatmaps", "features.1:16", needles=["features.1:16"]),
    A("probe-pool-0x4", "--probe-pool", "0x4", needles=["0x4"]),
    A("probe-pool-max-0", "--probe-pool", "max:0", needles=["max:0"]),
    A("probe-pool-abc", "--probe-pool", "abc", needles=["abc"]),
    A("probe-mode-unknown", "--probe-mode", "slow", needles=["slow"]),
    A("normalise-unknown", "--normalise", "l7", needles=["l7"]),
    F("layers-last-0", "--layers", "last:0", needles=["last:0"]),
    R("from-nosuch", "--from", "nosuch", needles=["nosuch"]),
    S("shard-3-of-2", "--shard", "3/2", needles=["3/2"]),
    S("sweep-layers-unknown", "--sweep-layers", "features.9", needles=["features.9"]),
    # ================================================================ bad TOML configs
    Case("run-config-binary", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("bad.toml",),
         setup=write("bad.toml", GARBAGE)),
    Case("run-config-not-utf8", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("bad.toml", "UTF-8"),
         setup=write("bad.toml", NOT_UTF8)),
    Case("run-config-directory", ["run", "{ws}/conf.d", "--run-dir", RUN, "--no-progress"], ("conf.d", "directory"),
         setup=mkdir("conf.d")),
    Case("run-config-missing", ["run", "{ws}/missing.toml", "--run-dir", RUN, "--no-progress"], ("missing.toml",)),
    Case("run-config-empty-path", ["run", "", "--run-dir", RUN, "--no-progress", "--epochs", "1", "--probe-epochs", "1",
                                   "--no-afcc"], ("''", "empty")),
    Case("run-config-invalid-toml", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("bad.toml", "TOML"),
         setup=write("bad.toml", "[train]\nepochs = = 2\n")),
    Case("run-config-unknown-key", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("epochz",),
         setup=write("bad.toml", TOML + "epochz = 3\n")),
    Case("run-config-string-epochs", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("epochs", "two"),
         setup=write("bad.toml", '[data]\ndataset = "digits"\n[train]\nepochs = "two"\n')),
    Case("run-config-float-epochs", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("epochs", "2.5"),
         setup=write("bad.toml", '[train]\nepochs = 2.5\n')),
    Case("run-config-nan-lr", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("lr", "nan"),
         setup=write("bad.toml", '[train]\nlr = nan\n')),
    Case("run-config-unknown-table", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("trainn",),
         setup=write("bad.toml", '[trainn]\nepochs = 2\n')),
    Case("train-config-wrong-type", TR + ["--config", "{ws}/bad.toml"], ("batch_size", "many"),
         setup=write("bad.toml", '[train]\nbatch_size = "many"\n')),
    Case("train-config-directory", TR + ["--config", "{ws}"], ("directory",)),
    Case("analyze-config-unknown-key", AN + ["--config", "{ws}/bad.toml"], ("probe_epochz",), base="analysed",
         setup=write("bad.toml", '[probes]\nprobe_epochz = 2\n')),
    Case("analyze-config-wrong-type", AN[:-2] + ["--config", "{ws}/bad.toml"], ("probe_epochs", "two"),
         base="analysed", setup=write("bad.toml", '[probes]\nprobe_epochs = "two"\n')),
    Case("sweep-config-invalid-toml", SW + ["--config", "{ws}/bad.toml"], ("bad.toml",),
         setup=write("bad.toml", "subsets = [\n")),
    # ================================================================ bad run-directory paths
    Case("train-run-dir-under-file", TR[:2] + ["{ws}/afile/run"] + TR[3:], ("afile",),
         setup=write("afile", "precious")),
    Case("train-run-dir-is-file", TR[:2] + ["{ws}/afile"] + TR[3:], ("afile",), setup=write("afile", "precious")),
    Case("train-run-dir-in-proc", TR[:2] + ["/proc/filterlens-hostile"] + TR[3:], ("/proc/filterlens-hostile",)),
    Case("train-run-dir-empty", TR[:2] + [""] + TR[3:], ("''", "empty")),
    Case("analyze-run-dir-missing", ["analyze", "--run-dir", "{ws}/nosuch", "--no-progress"], ("nosuch",)),
    Case("afcc-run-dir-in-proc", ["afcc", "--run-dir", "/proc/self", "--no-progress"], ("/proc/self",)),
    Case("report-run-dir-missing", ["report", "{ws}/nosuch"], ("nosuch",)),
    Case("demo-run-dir-empty", ["demo", "--run-dir", "", "--no-progress"], ("''", "empty")),
    Case("demo-run-dir-under-file", ["demo", "--run-dir", "{ws}/afile/demo", "--no-progress"], ("afile",),
         setup=write("afile", "precious")),
    Case("demo-run-dir-in-proc", ["demo", "--run-dir", "/proc/filterlens-demo", "--no-progress"],
         ("/proc/filterlens-demo",)),
    Case("demo-over-another-run", ["demo", "--run-dir", RUN, "--no-progress"], ("--overwrite",), base="analysed"),
    # ================================================================ bad checkpoints
    T("checkpoint-missing", "--checkpoint", "{ws}/absent.pt", needles=["absent.pt"]),
    T("checkpoint-garbage", "--checkpoint", "{ws}/junk.pt", needles=["junk.pt"], setup=write("junk.pt", GARBAGE)),
    T("checkpoint-other-architecture", "--checkpoint", "{ws}/mlp.pt", needles=["mlp.pt"],
      setup=other_state_dict("mlp.pt")),
    # ================================================================ bad dataset files
    T("cifar-missing-data-key", "--dataset", "cifar10", "--data-dir", "{ws}/cifar", needles=["data_batch_3", "data"],
      setup=cifar(_drop_data_key)),
    T("cifar-truncated-pickle", "--dataset", "cifar10", "--data-dir", "{ws}/cifar", needles=["data_batch_2"],
      setup=cifar(_truncate_pickle)),
    T("cifar-non-dict-pickle", "--dataset", "cifar10", "--data-dir", "{ws}/cifar", needles=["test_batch"],
      setup=cifar(_non_dict_pickle)),
    T("cifar-wrong-row-length", "--dataset", "cifar10", "--data-dir", "{ws}/cifar", needles=["data_batch_4"],
      setup=cifar(_wrong_row_length)),
    T("idx-cut-short", "--dataset", "fashion-mnist", "--data-dir", "{ws}/fm", needles=["train-images-idx3-ubyte"],
      setup=idx(_cut_idx)),
    T("idx-count-mismatch", "--dataset", "fashion-mnist", "--data-dir", "{ws}/fm", needles=["test", "7 labels"],
      setup=idx(_idx_count_mismatch)),
    # read lazily: may only be detected while training; then one line, exit 2, but files may have been written
    T("imagefolder-truncated-jpeg", "--dataset", "imagefolder", "--data-dir", "{ws}/folders", "--image-size", "16",
      needles=["broken.jpg"], setup=imagefolder("broken.jpg", _truncated_jpeg), same_tree=False),
    T("imagefolder-text-as-jpeg", "--dataset", "imagefolder", "--data-dir", "{ws}/folders", "--image-size", "16",
      needles=["notes.jpg"], setup=imagefolder("notes.jpg", lambda: b"these are my notes, not a picture\n" * 20),
      same_tree=False),
    # ================================================================ damaged run directories
    A("stages-empty-list", needles=["stages.json"], setup=write("run/stages.json", "[]")),
    A("stages-garbage", needles=["stages.json"], setup=write("run/stages.json", GARBAGE)),
    F("stages-empty-list", needles=["stages.json"], setup=write("run/stages.json", "[]")),
    F("stages-garbage", needles=["stages.json"], setup=write("run/stages.json", GARBAGE)),
    Case("report-stages-empty-list", ["report", RUN], ("stages.json",), base="analysed",
         setup=write("run/stages.json", "[]")),
    Case("report-stages-train-is-number", ["report", RUN], ("stages.json",), base="analysed",
         setup=write("run/stages.json", '{"train": 5}')),
    Case("report-results-truncated", ["report", RUN], ("results.json",), base="analysed",
         setup=truncate("run/results.json")),
    Case("report-results-garbage", ["report", RUN], ("results.json",), base="analysed",
         setup=write("run/results.json", GARBAGE)),
    Case("report-results-list", ["report", RUN], ("results.json",), base="analysed",
         setup=write("run/results.json", "[]")),
    Case("report-results-version-7", ["report", RUN], ("results.json",), base="analysed",
         setup=write("run/results.json", '{"version": 7}')),
    Case("report-no-results", ["report", RUN], ("results.json",), base="trained"),
    F("results-truncated", needles=["results.json"], setup=truncate("run/results.json")),
    A("config-garbage", needles=["config.json"], setup=write("run/config.json", GARBAGE)),
    A("config-list", needles=["config.json"], setup=write("run/config.json", "[]")),
    A("model-truncated", needles=["model.pt"], setup=truncate("run/model.pt")),
    A("model-missing", needles=["model.pt"], setup=delete("run/model.pt")),
    F("probes-deleted", needles=["probes.pt"], setup=delete("run/probes.pt")),
    F("never-analysed", needles=["analyze"], base="trained"),
    Case("run-over-garbage-config-json", RU, ("config.json",), base="analysed",
         setup=write("run/config.json", GARBAGE)),
    # the right answer here is to recompute (exit 0); few rows, they train again
    R("stages-empty-list-recomputes", base="analysed", setup=write("run/stages.json", "[]"), rc=0),
    R("stages-garbage-recomputes", base="analysed", setup=write("run/stages.json", GARBAGE), rc=0),
    # ================================================================ issue 24: files filterlens did not write
    T("run-dir-holds-user-files", needles=["results.json", "heatmaps/mine.png", "not a run directory"],
      setup=both(write("run/results.json", '{"mine": 1}'), write("run/heatmaps/mine.png", b"my picture"))),
    T("run-dir-holds-user-files-overwrite", "--overwrite", needles=["results.json", "heatmaps/mine.png"],
      setup=both(write("run/results.json", '{"mine": 1}'), write("run/heatmaps/mine.png", b"my picture"))),
    Case("train-run-dir-root", TR[:2] + ["/"] + TR[3:], ("'/'", "root")),
    Case("train-run-dir-home", TR[:2] + [HOME] + TR[3:], (HOME, "home")),
    Case("run-run-dir-root", ["run", "{toml}", "--run-dir", "/", "--no-progress"], ("'/'", "root")),
    Case("demo-run-dir-home", ["demo", "--run-dir", HOME, "--no-progress"], (HOME, "home")),
    Case("run-into-user-folder", RU, ("notes.txt", "not a run directory"), setup=write("run/notes.txt", "mine")),
    Case("demo-into-user-folder", ["demo", "--run-dir", RUN, "--no-progress"], ("notes.txt",),
         setup=write("run/notes.txt", "mine")),
    Case("analyze-user-folder", AN, ("data.csv", "not a run directory"), setup=write("run/data.csv", "1,2\n")),
    Case("afcc-user-folder", AF, ("data.csv", "not a run directory"), setup=write("run/data.csv", "1,2\n")),
    Case("report-user-folder", ["report", RUN], ("results.json", "not a run directory"),
         setup=write("run/results.json", '{"version": 1, "layers": []}')),
    Case("report-sweep-folder", ["report", RUN], ("sweep directory",),
         setup=write("run/sweep_plan.json", '{"tasks": ["L003-s1"], "config": {"model": "vgg_tiny"}}')),
    A("cache-dir-is-the-run-dir", "--engine", "disk", "--cache-dir", RUN, needles=["cache directory", "run directory"]),
    A("cache-dir-is-another-run", "--engine", "disk", "--cache-dir", "{ws}/other",
      needles=["cache directory", "run directory"], setup=copy_dir("run", "other")),
    A("cache-folder-not-made-by-filterlens", "--engine", "disk", "--cache-dir", "{ws}/c",
      needles=["filterlens-cache", "mine.txt"], setup=write("c/filterlens-cache/mine.txt", "mine")),
    A("refused-setting-under-missing-cache-dir", "--engine", "disk", "--cache-dir", "{ws}/no/such/cache",
      "--probe-lr", "-1", needles=["probe_lr"]),
    # ================================================================ issue 24: wrong exit codes, unclear lines
    T("labels-random-negative-seed", "--labels", "random:3:-1", needles=["random:3:-1", "seed"]),
    A("engine-groups-budget-below-one-layer", "--engine", "groups", "--cache-budget", "1K",
      needles=["features.0", "KiB", "1.0 KiB"]),
    L("vgg-cfg-pools-in-a-row", "--model", "vgg", "--vgg-cfg", "16,M,M,M,M,M", "--dataset", "cifar10",
      needles=["16,M,M,M,M,M", "M"]),
    L("vgg-cfg-pool-first", "--model", "vgg", "--vgg-cfg", "M,16", needles=["M,16"]),
    S("num-labels-one-distinct", "--num-labels", "3,3", needles=["3,3", "two"]),
    S("num-labels-one", "--num-labels", "5", needles=["'5'", "two"]),
    S("num-labels-empty", "--num-labels", "", needles=["''", "num-labels"]),
    Case("sweep-merge-missing-folder", SW + ["--merge"], ("--merge", "sweep")),
    Case("sweep-merge-run-folder", SW + ["--merge"], ("sweep",), base="trained"),
    Case("sweep-into-user-folder", SW, ("notes.txt",), setup=write("run/notes.txt", "mine")),
    Case("train-damaged-checkpoint", ["train", "--run-dir", RUN, *TINY_TRAIN_ARGS],
         ("checkpoint.pt", "damaged", "--overwrite"), base="trained", setup=damaged_checkpoint),
    Case("train-resume-damaged-checkpoint", ["train", "--run-dir", RUN, *TINY_TRAIN_ARGS, "--resume"],
         ("checkpoint.pt", "damaged", "--overwrite"), base="trained", setup=damaged_checkpoint),
    R("damaged-checkpoint-trains-again", base="analysed", setup=damaged_checkpoint, rc=0),
    Case("compare-out-user-folder", ["compare", RUN, "--out", "{ws}/out"], ("notes.txt", "--out"), base="analysed",
         setup=write("out/notes.txt", "mine")),
    Case("compare-out-is-a-run", ["compare", RUN, "--out", "{ws}/other"], ("other", "--out"), base="analysed",
         setup=copy_dir("run", "other")),
    # ================================================================ issue 32, item 1: links out of owned folders
    Case("train-overwrite-heatmaps-link", TR + ["--overwrite", "--seed", "1"], ("heatmaps", "link"), base="analysed",
         setup=link_dir("run/heatmaps"), kept=mine_kept()),
    A("heatmaps-link", needles=["heatmaps", "link"], setup=link_dir("run/heatmaps"), kept=mine_kept()),
    A("heatmaps-link-explicit", "--heatmaps", "features.1:0", needles=["heatmaps", "link"],
      setup=link_dir("run/heatmaps"), kept=mine_kept()),
    A("heatmaps-dangling-link", needles=["heatmaps", "link"], setup=dangling("run/heatmaps")),
    A("cache-folder-link", "--engine", "disk", "--cache-budget", "64K", needles=["cache", "link"],
      setup=link_dir("run/cache"), kept=mine_kept()),
    A("cache-home-link", "--engine", "disk", "--cache-budget", "64K", "--cache-dir", "{ws}/c",
      needles=["filterlens-cache", "link"], setup=both(mkdir("c"), link_dir("c/filterlens-cache")), kept=mine_kept()),
    F("heatmaps-link", needles=["heatmaps", "link"], setup=link_dir("run/heatmaps"), kept=mine_kept()),
    R("heatmaps-link", needles=["heatmaps", "link"], base="analysed", setup=link_dir("run/heatmaps"),
      kept=mine_kept()),
    R("overwrite-heatmaps-link", "--overwrite", "--seed", "3", needles=["heatmaps", "link"], base="analysed",
      setup=link_dir("run/heatmaps"), kept=mine_kept()),
    Case("report-heatmaps-link", ["report", RUN], ("heatmaps", "link"), base="analysed",
         setup=link_dir("run/heatmaps"), kept=mine_kept()),
    Case("train-overwrite-sweep-link", TR + ["--overwrite", "--seed", "1"], ("sweep", "link"), base="trained",
         setup=link_dir("run/sweep"), kept=mine_kept()),
    Case("demo-heatmaps-link", ["demo", "--run-dir", RUN, "--no-progress", "--overwrite"], ("heatmaps", "link"),
         base="analysed", setup=link_dir("run/heatmaps"), kept=mine_kept()),
    Case("sweep-task-folder-link", SW, ("L003-s1", "link"), setup=sweep_folder_with_link, kept=mine_kept()),
    Case("run-seeds-folder-link", RU + ["--seeds", "0,1"], ("seed-0", "link"), setup=seeds_folder_with_link,
         kept=mine_kept()),
    A("results-json-link-is-replaced", needles=(), setup=link_file("run/results.json"), rc=0, kept=("mine.json",)),
    A("layers-csv-link-is-replaced", needles=(), setup=link_file("run/layers.csv"), rc=0, kept=("mine.json",)),
    # ================================================================ item 4: every file read back is checked
    A("config-json-edited", needles=["config.json", "changed"], setup=edit_json("run/config.json", labels="first:3")),
    A("config-json-reformatted", needles=["config.json", "changed"], setup=reformat_json("run/config.json")),
    F("config-json-edited", needles=["config.json", "changed"], setup=edit_json("run/config.json", epochs=7)),
    Case("train-config-json-edited", ["train", "--run-dir", RUN, *TINY_TRAIN_ARGS], ("config.json", "changed"),
         base="trained", setup=edit_json("run/config.json", lr=0.5)),
    R("config-json-edited", needles=["config.json", "changed"], base="analysed",
      setup=edit_json("run/config.json", batch_size=32)),
    A("train-json-edited", needles=["train.json", "changed"], setup=edit_json("run/train.json", test_accuracy=1.0)),
    A("train-json-garbage", needles=["train.json"], setup=write("run/train.json", GARBAGE)),
    A("model-flipped-byte", needles=["model.pt"], setup=flip_tensor_byte("run/model.pt")),
    Case("train-resume-flipped-checkpoint", ["train", "--run-dir", RUN, *TINY_TRAIN_ARGS, "--resume"],
         ("checkpoint.pt", "sha256"), base="trained", setup=flipped_checkpoint),
    T("checkpoint-flipped-byte", "--checkpoint", "{ws}/m.pt", needles=["m.pt", "damaged"], base="trained",
      setup=both(copy_dir("run", "src"), lambda ws: shutil.copy(ws / "src" / "model.pt", ws / "m.pt"),
                 flip_tensor_byte("m.pt"))),
    F("probes-json-edited", needles=["probes.json"], setup=edit_json("run/probes.json", engine="disk")),
    Case("report-layers-csv-edited", ["report", RUN], ("layers.csv",), base="analysed",
         setup=write("run/layers.csv", "layer,accuracy\nfeatures.0,0.99\n")),
    # ================================================================ item 5: empty values, zero counts
    T("labels-empty", "--labels", "", needles=["labels", "''", "empty"]),
    T("checkpoint-empty", "--checkpoint", "", needles=["checkpoint", "''", "empty"]),
    T("data-dir-empty", "--data-dir", "", needles=["data_dir", "''", "empty"]),
    T("weights-empty", "--weights", "", needles=["weights", "''", "empty"]),
    T("model-empty", "--model", "", needles=["model", "''", "empty"]),
    T("dataset-empty", "--dataset", "", needles=["dataset", "''", "empty"]),
    T("device-empty", "--device", "", needles=["device", "''", "empty"]),
    T("cache-dir-empty", "--cache-dir", "", needles=["cache_dir", "''", "empty"]),
    T("vgg-cfg-empty", "--model", "vgg", "--vgg-cfg", "", needles=["vgg_cfg", "''", "empty"]),
    T("labels-blank", "--labels", "  ", needles=["labels", "empty"]),
    T("optimizer-empty", "--optimizer", "", needles=["--optimizer", "''"]),
    T("config-empty", "--config", "", needles=["''", "empty"]),
    T("epochs-empty", "--epochs", "", needles=["--epochs", "''"]),
    Case("train-labels-empty-existing-run", TR + ["--labels", ""], ("labels", "''", "empty"), base="trained"),
    A("layers-empty", "--layers", "", needles=["layers", "''", "empty"]),
    A("probe-pool-empty", "--probe-pool", "", needles=["probe_pool", "''", "empty"]),
    A("heatmaps-empty", "--heatmaps", "", needles=["heatmaps", "''", "empty"]),
    A("tokens-empty", "--tokens", "", needles=["--tokens", "''"]),
    A("engine-empty", "--engine", "", needles=["--engine", "''"]),
    A("device-empty", "--device", "", needles=["device", "''", "empty"]),
    A("cache-dir-empty", "--cache-dir", "", needles=["cache_dir", "''", "empty"]),
    A("probe-epochs-0", "--probe-epochs", "0", needles=["probe_epochs", "0"]),
    A("probe-batch-size-0", "--probe-batch-size", "0", needles=["probe_batch_size", "0"]),
    A("probe-seeds-0", "--probe-seeds", "0", needles=["probe_seeds", "0"]),
    A("probe-pool-0x0", "--probe-pool", "0x0", needles=["0x0"]),
    F("retrain-batch-size-0", "--retrain-batch-size", "0", needles=["retrain_batch_size", "0"]),
    F("latency-repeats-0", "--latency-repeats", "0", needles=["latency_repeats", "0"]),
    F("latency-batch-0", "--latency-batch", "0", needles=["latency_batch", "0"]),
    F("seed-empty", "--seed", "", needles=["--seed", "''"]),
    S("sweep-layers-empty", "--sweep-layers", "", needles=["sweep_layers", "''", "empty"]),
    S("shard-empty", "--shard", "", needles=["shard", "''"]),
    S("shard-0-of-0", "--shard", "0/0", needles=["shard", "0/0"]),
    S("probe-epochs-0", "--probe-epochs", "0", needles=["probe_epochs", "0"]),
    S("num-labels-zero", "--num-labels", "0,3", needles=["0"]),
    S("jobs-empty", "--jobs", "", needles=["--jobs", "''"]),
    R("from-empty", "--from", "", needles=["''"]),
    R("seeds-empty", "--seeds", "", needles=["seeds", "''", "empty"]),
    R("labels-empty", "--labels", "", needles=["labels", "''", "empty"]),
    R("checkpoint-empty", "--checkpoint", "", needles=["checkpoint", "''", "empty"]),
    R("heatmaps-empty", "--heatmaps", "", needles=["heatmaps", "''", "empty"]),
    R("probe-epochs-0", "--probe-epochs", "0", needles=["probe_epochs", "0"]),
    L("model-empty", "--model", "", needles=["model", "''", "empty"]),
    L("dataset-empty", "--dataset", "", needles=["dataset", "''", "empty"]),
    L("data-dir-empty", "--data-dir", "", needles=["data_dir", "''", "empty"]),
    L("layers-empty", "--layers", "", needles=["layers", "''", "empty"]),
    L("vgg-cfg-empty", "--model", "vgg", "--vgg-cfg", "", needles=["vgg_cfg", "''", "empty"]),
    Case("compare-out-empty", ["compare", RUN, "--out", ""], ("''",), base="analysed"),
    Case("compare-input-empty", ["compare", "", "--out", "{ws}/out"], ("''",)),
    Case("run-toml-labels-empty", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("labels", "empty"),
         setup=toml_with('labels = ""')),
    Case("run-toml-checkpoint-empty", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"],
         ("checkpoint", "empty"), setup=toml_with('checkpoint = ""')),
    Case("run-toml-layers-blank", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("layers", "empty"),
         setup=toml_with('layers = " "')),
    Case("analyze-toml-heatmaps-empty", AN + ["--config", "{ws}/bad.toml"], ("heatmaps", "empty"), base="analysed",
         setup=write("bad.toml", '[sfp]\nheatmaps = ""\n')),
    # ================================================================ item 6: integers in other digits
    T("epochs-superscript", "--epochs", "\u00b2", needles=["--epochs", "\u00b2"]),
    T("epochs-arabic-indic", "--epochs", "\u0661\u0662", needles=["--epochs", "\u0661\u0662"]),
    T("batch-size-superscript", "--batch-size", "\u00b2", needles=["--batch-size", "\u00b2"]),
    T("seed-fullwidth", "--seed", "\uff11", needles=["--seed", "\uff11"]),
    T("labels-first-superscript", "--labels", "first:\u00b2", needles=["first:\u00b2"]),
    T("labels-random-superscript", "--labels", "random:\u00b2:1", needles=["random:\u00b2:1"]),
    T("labels-random-seed-superscript", "--labels", "random:3:\u00b2", needles=["random:3:\u00b2"]),
    T("labels-list-superscript", "--labels", "1,\u00b2", needles=["\u00b2"]),
    T("labels-list-arabic-indic", "--labels", "1,\u0663", needles=["\u0663"]),
    T("device-cuda-superscript", "--device", "cuda:\u00b2", needles=["cuda:\u00b2"]),
    T("image-size-superscript", "--image-size", "\u00b2", needles=["--image-size", "\u00b2"]),
    A("layers-superscript", "--layers", "\u00b2", needles=["\u00b2"]),
    A("layers-minus-superscript", "--layers=-\u00b2", needles=["-\u00b2"]),
    A("layers-last-superscript", "--layers", "last:\u00b2", needles=["last:\u00b2"]),
    A("layers-arabic-indic", "--layers", "\u0660", needles=["\u0660"]),
    A("heatmaps-unit-superscript", "--heatmaps", "features.1:\u00b2", needles=["features.1:\u00b2"]),
    A("heatmaps-unit-arabic-indic", "--heatmaps", "features.1:\u0661", needles=["features.1:\u0661"]),
    A("probe-pool-max-superscript", "--probe-pool", "max:\u00b2", needles=["max:\u00b2"]),
    A("probe-pool-size-superscript", "--probe-pool", "\u00b2x4", needles=["\u00b2x4"]),
    A("probe-epochs-superscript", "--probe-epochs", "\u00b2", needles=["--probe-epochs", "\u00b2"]),
    A("bootstrap-arabic-indic", "--bootstrap", "\u0665", needles=["--bootstrap", "\u0665"]),
    F("layers-superscript", "--layers", "\u00b2", needles=["\u00b2"]),
    F("layers-last-superscript", "--layers", "last:\u00b2", needles=["last:\u00b2"]),
    F("random-draws-superscript", "--random-draws", "\u00b2", needles=["--random-draws", "\u00b2"]),
    S("num-labels-superscript", "--num-labels", "3,\u00b2", needles=["\u00b2"]),
    S("num-labels-arabic-indic", "--num-labels", "3,\u0665", needles=["\u0665"]),
    S("sweep-layers-superscript", "--sweep-layers", "\u00b2", needles=["\u00b2"]),
    S("shard-superscript", "--shard", "\u00b2/4", needles=["\u00b2/4"]),
    S("jobs-superscript", "--jobs", "\u00b2", needles=["--jobs", "\u00b2"]),
    S("subsets-superscript", "--subsets", "\u00b2", needles=["--subsets", "\u00b2"]),
    R("seeds-superscript", "--seeds", "0,\u00b2", needles=["\u00b2"]),
    L("vgg-cfg-superscript", "--model", "vgg", "--vgg-cfg", "16,\u00b2,M", needles=["\u00b2"]),
    L("vgg-cfg-arabic-indic", "--model", "vgg", "--vgg-cfg", "\u0661\u0666,M", needles=["\u0661\u0666"]),
    L("layers-superscript", "--layers", "\u00b2", needles=["\u00b2"]),
    L("image-size-superscript", "--image-size", "\u00b2", needles=["--image-size", "\u00b2"]),
    Case("run-toml-heatmaps-superscript", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"],
         ("\u00b2",), setup=toml_with('heatmaps = "features.1:\u00b2"')),
    Case("run-toml-num-labels-superscript", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"],
         ("\u00b2",), setup=toml_with('num_labels = "3,\u00b2"')),
    Case("run-toml-afcc-layers-superscript", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"],
         ("\u00b2",), setup=write("bad.toml", TOML.replace("afcc = false", 'afcc = true\nafcc_layers = "\u00b2"'))),
    # ================================================================ item 7: a user's model that breaks the contract
    T("user-model-returns-dict", "--model", "zoo.py:dictout", needles=["zoo.py:dictout", "dict"], setup=zoo),
    T("user-model-returns-tuple", "--model", "zoo.py:tupleout", needles=["zoo.py:tupleout", "tuple"], setup=zoo),
    T("user-model-returns-list", "--model", "zoo.py:listout", needles=["zoo.py:listout", "list"], setup=zoo),
    T("user-model-returns-3d", "--model", "zoo.py:threed", needles=["zoo.py:threed", "(2, 1, 10)"], setup=zoo),
    T("user-model-returns-none", "--model", "zoo.py:noneout", needles=["zoo.py:noneout", "NoneType"], setup=zoo),
    T("user-model-three-outputs", "--model", "zoo.py:three", needles=["3 class scores", "10 labels"], setup=zoo),
    T("user-model-no-layer", "--model", "zoo.py:nolayer", needles=["zoo.py:nolayer", "no layer"], setup=zoo),
    T("user-model-meta-device", "--model", "zoo.py:meta", needles=["zoo.py:meta", "meta device"], setup=zoo),
    T("user-model-float64", "--model", "zoo.py:double", needles=["zoo.py:double", "float64"], setup=zoo),
    T("user-model-float16", "--model", "zoo.py:half", needles=["zoo.py:half", "float16"], setup=zoo),
    T("user-model-factory-exits", "--model", "zoo.py:exits", needles=["zoo.py:exits", "SystemExit"], setup=zoo),
    T("user-model-factory-exits-0", "--model", "zoo.py:exits_quietly", needles=["exits_quietly", "SystemExit"],
      setup=zoo),
    T("user-model-forward-exits", "--model", "zoo.py:forward_exits", needles=["forward_exits", "SystemExit"],
      setup=zoo),
    T("user-model-exits-on-import", "--model", "exits_on_import.py:make", needles=["exits_on_import.py",
                                                                                  "SystemExit"], setup=zoo),
    T("user-model-wrong-channels", "--model", "zoo.py:rgb_only", needles=["zoo.py:rgb_only", "RuntimeError"],
      setup=zoo),
    T("user-model-file-is-a-folder", "--model", "{ws}/zoo.d.py:make", needles=["zoo.d.py", "directory"],
      setup=mkdir("zoo.d.py")),
    L("user-model-returns-dict", "--model", "zoo.py:dictout", needles=["dict"], setup=zoo),
    L("user-model-three-outputs", "--model", "zoo.py:three", needles=["3 class scores"], setup=zoo),
    Case("run-user-model-returns-tuple", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("tuple",),
         setup=both(zoo, write("bad.toml", TOML.replace('"vgg_tiny"', '"zoo.py:tupleout"')))),
    # ================================================================ item 9: a training that diverges
    T("lr-explodes", "--lr", "10", needles=["diverged", "--lr"]),
    T("lr-explodes-two-epochs", "--lr", "10", "--epochs", "2", "--momentum", "0.99", needles=["diverged"]),
    Case("run-lr-explodes", ["run", "{ws}/bad.toml", "--run-dir", RUN, "--no-progress"], ("diverged",),
         setup=write("bad.toml", TOML.replace("seed = 0", "seed = 0\nlr = 10.0"))),
    # ================================================================ item 10: messages
    T("vgg-cfg-with-vgg-tiny", "--vgg-cfg", "16,M", needles=["--vgg-cfg", "vgg_tiny"]),
    L("vgg-cfg-with-vgg16", "--model", "vgg16", "--vgg-cfg", "16,M", needles=["--vgg-cfg", "vgg16"]),
    T("warmup-longer-than-training", "--warmup-epochs", "3", needles=["warmup", "3"]),
    T("warmup-as-long-as-training", "--epochs", "2", "--warmup-epochs", "2", needles=["warmup", "2"]),
    T("resume-with-overwrite", "--resume", "--overwrite", needles=["--resume", "--overwrite"]),
    T("gamma-with-cosine", "--gamma", "0.5", needles=["--gamma", "cosine"]),
    T("step-epochs-with-constant", "--schedule", "constant", "--step-epochs", "3", needles=["--step-epochs",
                                                                                        "constant"]),
    T("momentum-with-adamw", "--optimizer", "adamw", "--momentum", "0.5", needles=["--momentum", "adamw"]),
    T("checkpoint-is-a-folder", "--checkpoint", "{ws}/ckpt", needles=["ckpt", "directory"], setup=mkdir("ckpt")),
    T("data-dir-is-a-file", "--dataset", "fashion-mnist", "--data-dir", "{ws}/afile", needles=["afile", "a file"],
      setup=write("afile", "precious")),
    T("cifar-data-dir-is-a-file", "--dataset", "cifar10", "--data-dir", "{ws}/afile", needles=["afile", "a file"],
      setup=write("afile", "precious")),
    L("data-dir-is-a-file", "--dataset", "imagefolder", "--data-dir", "{ws}/afile", needles=["afile", "a file"],
      setup=write("afile", "precious")),
    Case("train-bad-labels-existing-run", TR + ["--labels", "first:1000"], ("first:1000",), base="trained"),
    Case("train-duplicate-labels-existing-run", TR + ["--labels", "3,5,3"], ("3,5,3",), base="trained"),
    Case("train-unknown-label-existing-run", TR + ["--labels", "zebra"], ("zebra",), base="trained"),
    Case("train-missing-checkpoint-existing-run", TR + ["--checkpoint", "{ws}/absent.pt"], ("absent.pt",),
         base="trained"),
    Case("train-unknown-model-existing-run", TR + ["--model", "resnet9000"], ("resnet9000",), base="trained"),
    Case("train-warmup-existing-run", TR + ["--warmup-epochs", "5"], ("warmup",), base="trained"),
    R("bad-labels-existing-run", "--labels", "first:1000", needles=["first:1000"], base="analysed"),
    R("unknown-layer-existing-run", "--layers", "features.42", needles=["features.42"], base="analysed"),
    Case("report-without-filters-csv", ["report", RUN], (), base="analysed", setup=delete("run/filters.csv"), rc=0,
         stdout=("explorer", "left out", "filters.csv")),
]


def test_the_table_is_big_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    assert len(CASES) >= 300
    assert {c.argv[0] for c in CASES} == {"train", "analyze", "layers", "sweep", "run", "report", "afcc", "demo",
                                          "compare"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, request, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "tiny.toml").write_text(TOML)
    run = ws / "run"
    if case.base == "trained":
        copy_run(request.getfixturevalue("tiny_run"), run)
    elif case.base == "analysed":
        copy_run(request.getfixturevalue("analysed_run"), run)
    (run / ".filterlens.lock").unlink(missing_ok=True)  # a lock file made by a refused command shows
    if case.setup:
        case.setup(ws)
    argv = [a.format(ws=ws, run=run, toml=ws / "tiny.toml") for a in case.argv]
    before = tree(ws)
    try:
        rc, out, err = run_cli(*argv, cwd=ws, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`filterlens {' '.join(argv)}` still running after {case.timeout} s (a refusal is expected)")
    assert "Traceback" not in out + err, f"traceback in output:\n{out}\n{err}"
    after = tree(ws)
    for rel in case.kept:
        assert after.get(rel) == before.get(rel) and before.get(rel) is not None, f"{rel} changed"
    if case.rc == 0:
        assert rc == 0, f"exit status {rc}, expected 0\nstdout:\n{out[-3000:]}\nstderr:\n{err}"
        stages = json.loads((run / "stages.json").read_text())
        assert isinstance(stages, dict) and "sfp" in stages, stages
        for needle in case.stdout:
            assert needle in out, f"{needle!r} not in stdout:\n{out[-3000:]}"
        return
    if case.rc == 2:
        assert_user_error(rc, out, err, *case.needles)
    else:
        assert rc == case.rc, f"exit status {rc}, expected {case.rc}\n{out}\n{err}"
    if case.same_tree:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert after == before, f"a refused command changed files: {changed}"


# ------------------------------------------------------------------------------ issue 24: the disk engine
# Its cache owns a folder of its own inside --cache-dir (made and marked by filterlens), deletes only what it
# wrote, and verifies what it reuses (checksums written with its completion marker).

DISK = ["--engine", "disk", "--probe-epochs", "2", "--cache-budget", "64K"]


def _accuracies(run: Path) -> list[float]:
    lines = (run / "layers.csv").read_text().splitlines()
    head = lines[0].split(",")
    return [float(line.split(",")[head.index("accuracy")]) for line in lines[1:]]


def _recorded_as_good(run: Path) -> bool:
    stages = json.loads((run / "stages.json").read_text())
    want = stages.get("sfp", {}).get("sha256", {}).get("layers.csv")
    return want == hashlib.sha256((run / "layers.csv").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def memory_accuracies(tiny_run, tmp_path_factory) -> list[float]:
    """The layer accuracies of the memory engine on the shared tiny run (the disk engine must give these)."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("memory") / "run")
    rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", "--engine", "memory", "--probe-epochs", "2",
                           cwd=run.parent)
    assert rc == 0, err
    return _accuracies(run)


def test_disk_engine_keeps_the_users_files_in_its_cache_dir(tiny_run, memory_accuracies, tmp_path):
    """Item 1: `--cache-dir u` with the user's train.json and test.labels: both were deleted, and u itself."""
    u, empty = tmp_path / "u", tmp_path / "empty"
    u.mkdir()
    empty.mkdir()
    (u / "train.json").write_text('{"mine":1}\n')
    (u / "test.labels").write_text("keep\n")
    before = tree(u)
    for i, cache in enumerate((u, empty, tmp_path / "no" / "deep" / "cache")):
        run = copy_run(tiny_run, tmp_path / f"w{i}")
        rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", *DISK, "--cache-dir", cache, cwd=tmp_path)
        assert rc == 0, err
        assert "disk" in out and _accuracies(run) == memory_accuracies
    assert tree(u) == before and empty.is_dir() and list(empty.iterdir()) == []
    assert not (tmp_path / "no").exists()  # item 7: the folders it made for the cache are gone with it


# kill points: (name, Python run before the command; it kills the process with SIGKILL at that point)
KILL_POINTS = {
    # during the capture of the training split (its second batch)
    "train-capture": "patch(capture.FeatureCache, 'update', lambda n, *a, **k: n == 2)",
    # during the capture of the test split (the first batch written to a cache of another size)
    "test-capture": "sizes = []\n"
                    "patch(capture.FeatureCache, 'update', lambda n, self, *a, **k: sizes.append(self.num_samples) "
                    "or len(set(sizes)) > 1)",
    # both splits captured, nothing written after: no checksum, no completion marker
    "after-fill": "patch(probes, 'capture_pass', lambda n, *a, **k: False, after=lambda n: n == 2)",
    # while the probes train from the complete cache (second epoch)
    "training": "patch(probes.ProbeSet, 'end_epoch', lambda n, *a, **k: n == 2)",
    # probes trained, the first result file about to be renamed into place
    "writing-results": "patch(os, 'replace', lambda n, src, dst, *a, **k: str(dst).endswith('probes.pt'))",
}

KILLER = """
import os, signal, sys
from filterlens import capture, probes

def patch(owner, name, before, after=None):
    real, calls = getattr(owner, name), [0]
    def wrapper(*args, **kw):
        calls[0] += 1
        if before(calls[0], *args, **kw):
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kw)
        if after is not None and after(calls[0]):
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(owner, name, wrapper)

exec(sys.argv[1])
from filterlens.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _kill_at(point: str, args: list, cwd: Path) -> int:
    env = cli_env()
    proc = subprocess.run([sys.executable, "-c", KILLER, KILL_POINTS[point], *map(str, args)], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode


def _damage(cache: Path, how: str) -> list[str]:
    """Damage what the killed command left in its cache folder; returns the files damaged."""
    done = []
    for f in sorted(p for p in cache.rglob("*") if p.is_file()):
        if how == "features" and f.suffix == ".f16" and f.stat().st_size > 4096:
            with open(f, "r+b") as fh:  # float16 30000s from byte 4096 on (the header stays valid)
                fh.seek(4096)
                fh.write(np.full((f.stat().st_size - 4096) // 2, 30000, dtype=np.float16).tobytes())
            done.append(f.name)
        elif how == "header" and f.suffix == ".f16":
            with open(f, "r+b") as fh:
                fh.write(b"\xff" * 32)
            done.append(f.name)
        elif how == "labels-and-marker" and (f.suffix == ".labels"
                                             or (f.suffix == ".json" and f.name != "stages.json")):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            done.append(f.name)
    return done


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_disk_engine_killed_then_damaged_never_records_wrong_numbers(point, tiny_run, memory_accuracies, tmp_path):
    """Acceptance: `analyze --engine disk` killed (SIGKILL) at five points of its fill and training, its cache then
    damaged in three ways: the next analyze ends with the memory engine's accuracies, or one line and exit 2;
    never wrong numbers recorded as good."""
    killed = tmp_path / "killed"
    killed.mkdir()
    run, cache = killed / "run", killed / "cache"
    copy_run(tiny_run, run)
    args = ["analyze", "--run-dir", run, "--no-progress", *DISK, "--cache-dir", cache]
    assert _kill_at(point, args, killed) == -9, point
    cached = any(p.suffix == ".f16" for p in cache.rglob("*"))
    # the cache is deleted once the probes are trained, before their results are written
    assert cached == (point != "writing-results"), (point, sorted(cache.rglob("*")))
    for how in ("features", "header", "labels-and-marker"):
        ws = tmp_path / how
        copy_run(killed, ws)
        damaged = _damage(ws / "cache", how)
        rc, out, err = run_cli("analyze", "--run-dir", ws / "run", "--no-progress", *DISK, "--cache-dir",
                               ws / "cache", cwd=ws)
        assert "Traceback" not in out + err, err
        if rc == 2:
            assert_user_error(rc, out, err, "cache")
            assert not (ws / "run" / "layers.csv").exists() or not _recorded_as_good(ws / "run")
            continue
        assert rc == 0, f"{point}/{how} (damaged {damaged}): exit {rc}\n{out}\n{err}"
        assert _accuracies(ws / "run") == memory_accuracies, (point, how, damaged, out)
        assert _recorded_as_good(ws / "run")
        if damaged and point == "training":  # a complete cache was damaged: it says so
            assert "rebuilt" in out, (point, how, out)
        assert not any(p.suffix == ".f16" for p in (ws / "cache").rglob("*"))  # gone once the probes trained


def test_two_commands_sharing_a_cache_dir(tiny_run, memory_accuracies, tmp_path):
    """Two analyses at once with the same --cache-dir: the same model and data (the same cache), and other layers
    (another cache). Each ends with the memory engine's accuracies or one line saying the cache is in use; the
    folder keeps the user's file and nothing of filterlens' once both are done."""
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("mine\n")
    runs = [copy_run(tiny_run, tmp_path / f"r{i}") for i in range(3)]
    extra = [[], [], ["--layers", "last:1"]]
    procs = [subprocess.Popen([sys.executable, "-m", "filterlens", "analyze", "--run-dir", str(r), "--no-progress",
                               *DISK, "--cache-dir", str(shared), *x], cwd=tmp_path, env=cli_env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r, x in zip(runs, extra)]
    results = [(p.wait(timeout=TIMEOUT), p.stdout.read(), p.stderr.read()) for p in procs]
    ok = 0
    for run, x, (rc, out, err) in zip(runs, extra, results):
        assert "Traceback" not in out + err, err
        if rc == 2:
            assert_user_error(rc, out, err, "in use")
            continue
        assert rc == 0, err
        ok += 1
        assert _accuracies(run) == (memory_accuracies[-1:] if x else memory_accuracies)
    assert ok >= 2
    assert sorted(p.name for p in shared.iterdir()) == ["keep.txt"]


def test_afcc_on_a_torchvision_vit_does_not_throw_its_work_away(tmp_path):
    """Item 14: afcc on torchvision's ViT refused only after its work (physical removal of heads packed in an
    nn.MultiheadAttention is not supported). The masks, retraining and controls are written; removal is reported
    as not supported."""
    run = tmp_path / "vit"
    rc, out, err = run_cli("train", "--run-dir", run, "--dataset", "digits", "--model", "vit_b_16", "--image-size",
                           "16", "--epochs", "0", "--train-samples", "40", "--test-samples", "40", "--no-progress",
                           cwd=tmp_path, timeout=300)
    assert rc == 0, err
    rc, out, err = run_cli("analyze", "--run-dir", run, "--no-progress", "--probe-epochs", "1", "--layers", "last:1",
                           cwd=tmp_path, timeout=300)
    assert rc == 0, err
    rc, out, err = run_cli("afcc", "--run-dir", run, "--no-progress", "--retrain-epochs", "0", "--random-draws", "1",
                           "--thresholds", "", cwd=tmp_path, timeout=300)
    assert rc == 0, err
    res = json.loads((run / "results.json").read_text())
    assert res["afcc_pruned"]["supported"] is False and "MultiheadAttention" in res["afcc_pruned"]["reason"]
    assert (run / "afcc.csv").exists() and not (run / "afcc_pruned.pt").exists()


# ------------------------------------------------------------------------------ issue 32: links, signals, pipes

def test_a_linked_cache_file_is_replaced_never_written_through(tiny_run, memory_accuracies, tmp_path):
    """Item 1: a complete disk cache (an analysis killed while its probes trained) whose feature file and lock are
    then replaced by links to the user's files. The next analysis rebuilds the cache in files of its own: the
    user's files keep every byte, the numbers are the memory engine's."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    copy_run(tiny_run, run)
    args = ["analyze", "--run-dir", run, "--no-progress", *DISK, "--cache-dir", cache]
    assert _kill_at("training", args, tmp_path) == -9
    home = cache / "filterlens-cache"
    features = sorted(home.glob("*.train.f16"))
    assert features, sorted(home.iterdir())
    mine = {"mine.bin": bytes(range(256)) * 64, "mine.lock": b"my lock notes\n"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    features[0].unlink()
    features[0].symlink_to(tmp_path / "mine.bin")
    lock = features[0].with_name(features[0].name.split(".")[0] + ".lock")
    lock.unlink(missing_ok=True)
    lock.symlink_to(tmp_path / "mine.lock")
    rc, out, err = run_cli(*args, cwd=tmp_path)
    assert rc == 0 and "Traceback" not in out + err, err
    assert "rebuilt" in out and "link" in out, out
    assert _accuracies(run) == memory_accuracies and _recorded_as_good(run)
    for name, data in mine.items():
        assert (tmp_path / name).read_bytes() == data, name


def _children(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pids) -> list[int]:
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_sigterm_stops_a_sweep_and_its_workers(tmp_path):
    """Item 9: SIGTERM to `sweep --jobs 2` ends it and its worker processes at once: nothing is written after it
    ended, no traceback (BrokenPipeError included), one line, exit 143."""
    import signal
    import time

    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "filterlens", "sweep", "--run-dir", str(sweep), "--no-progress",
                             "--dataset", "digits", "--model", "vgg_tiny", "--epochs", "200", "--num-labels", "3,5",
                             "--subsets", "2", "--probe-epochs", "1", "--jobs", "2"], cwd=tmp_path, env=cli_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not list(sweep.glob("L*-s*/train_log.csv")):  # the workers train
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    assert list(sweep.glob("L*-s*/train_log.csv")), "no worker started training"
    workers = _children(proc.pid)
    assert workers
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    time.sleep(3)
    assert _alive(workers) == [], "workers still running after the sweep ended"
    before = tree(sweep)
    time.sleep(5)
    assert tree(sweep) == before, "files written after the sweep ended"
    assert "Traceback" not in out + err and "BrokenPipe" not in err, err
    assert proc.returncode == 143, (proc.returncode, err)
    assert err.strip().splitlines() == [err.strip()] and "terminated" in err, err


def test_output_read_by_head_ends_quietly(tiny_run, tmp_path):
    """Item 9: `filterlens analyze ... | head -1`: the reader goes after the first line; the command ends without a
    word (no internal error, no error log in the run), as a command whose pipe closed ends (exit 141)."""
    run = copy_run(tiny_run, tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-m", "filterlens", "analyze", "--run-dir", str(run), "--no-progress",
                             "--probe-epochs", "1"], cwd=tmp_path, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    assert first
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=TIMEOUT)
    assert err == "", err
    assert proc.returncode == 141, proc.returncode
    assert not list(run.glob("filterlens-error-*.log"))
    assert not (run / ".filterlens.lock.json").exists()
