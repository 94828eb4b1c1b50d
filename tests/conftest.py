"""Shared fixtures: the real CLI as a subprocess, and small dataset files written in the
formats users have on disk (CIFAR python pickles, MNIST idx files, class-per-folder trees).

Every file written here follows the published format description, not filterlens' reader:
- CIFAR-10/100 "python version" (https://www.cs.toronto.edu/~kriz/cifar.html): each batch is
  a pickled dict; b"data" is a uint8 array (N, 3072) whose row holds the red, then green,
  then blue 32x32 plane, each in row-major order; b"labels" (CIFAR-10) or b"fine_labels" /
  b"coarse_labels" (CIFAR-100) are lists of ints; the meta file holds b"label_names"
  (CIFAR-10) or b"fine_label_names"/b"coarse_label_names" (CIFAR-100). The originals were
  written by Python 2's cPickle (protocol 2) with str keys, which Python 3 reads back as bytes.
- idx (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08: unsigned byte),
  the number of dimensions, each dimension as a big-endian uint32, then the values.
"""
from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's fine label names, in the order of the real meta file (alphabetical)
CIFAR100_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel "
    "can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion "
    "lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree "
    "pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
    "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table "
    "tank telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman "
    "worm").split()
assert len(CIFAR100_NAMES) == 100
# Zalando's Fashion-MNIST README, label 0..9
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"]


# ------------------------------------------------------------------------------ the real CLI

def cli_env() -> dict:
    """A CI-like environment: CI=true, no colours, the repository's src importable."""
    env = dict(os.environ)
    env["CI"] = "true"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("FILTERLENS_LOGLEVEL", None)
    env["NO_COLOR"] = "1"
    # one intra-op thread per process: the suite runs two test workers on two cores (pytest -n 2),
    # and oversubscribed OpenMP threads make torch an order of magnitude slower
    env["OMP_NUM_THREADS"] = "1"
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cli(*args, cwd=None, timeout: float = 600) -> tuple[int, str, str]:
    """Run ``python -m filterlens ARGS`` as a real subprocess without stdin."""
    proc = subprocess.run([sys.executable, "-m", "filterlens", *map(str, args)], cwd=cwd, env=cli_env(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(name="run_cli")
def run_cli_fixture(tmp_path):
    """``run_cli(*args)`` running in ``tmp_path`` (so nothing lands in the repository)."""

    def run(*args, cwd=None, timeout: float = 600):
        return run_cli(*args, cwd=cwd or tmp_path, timeout=timeout)

    return run


def assert_user_error(rc: int, out: str, err: str, *needles: str) -> str:
    """Exit 2, exactly one line on stderr starting ``filterlens: error:``, naming ``needles``,
    and no traceback anywhere. Returns the message line."""
    assert "Traceback" not in out + err, f"traceback in output:\n{out}\n{err}"
    assert rc == 2, f"exit status {rc}, expected 2\nstdout:\n{out}\nstderr:\n{err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("filterlens: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in the message: {lines[0]}"
    return lines[0]


# ------------------------------------------------------------------------------ trained run

def flip_a_weight_bit(path: Path) -> None:
    """One bit flipped in the middle of the largest tensor a torch file stores (the file still loads: only a
    digest tells)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def tiny_toml(model: str = "vgg_tiny", epochs="2", probe_epochs: int = 3, extra: str = "") -> str:
    """A small, fast `filterlens run` config: digits, a few epochs, AFCC off (AFCC has its own tests).
    ``epochs`` may be "{epochs}" to leave a placeholder for str.format."""
    return (f'[data]\ndataset = "digits"\n[model]\nmodel = "{model}"\n[train]\nepochs = {epochs}\nseed = 0\n'
            f"[probes]\nprobe_epochs = {probe_epochs}\n{extra}[afcc]\nafcc = false\n")


TINY_TRAIN_ARGS = ["--dataset", "digits", "--model", "vgg_tiny", "--epochs", "2", "--seed", "0", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run directory: vgg_tiny on digits, 2 epochs, trained by the real CLI.

    Shared by several tests: treat it as read-only (copy it with ``copy_run`` to modify)."""
    path = tmp_path_factory.mktemp("tiny") / "run"
    rc, out, err = run_cli("train", *TINY_TRAIN_ARGS, "--run-dir", path, cwd=path.parent)
    assert rc == 0, f"training the shared tiny run failed:\n{out}\n{err}"
    (path.parent / "stdout.txt").write_text(out)
    (path.parent / "stderr.txt").write_text(err)
    return path


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------ CIFAR pickles

def cifar_row(image_chw: np.ndarray) -> np.ndarray:
    """One CIFAR row from a (3, 32, 32) image: the R plane, the G plane, the B plane, each row-major."""
    assert image_chw.shape == (3, 32, 32)
    return np.concatenate([image_chw[0].ravel(), image_chw[1].ravel(), image_chw[2].ravel()]).astype(np.uint8)


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _images_for(labels, rng) -> np.ndarray:
    """Random images (N, 3, 32, 32): known pixel values, distinct with overwhelming probability."""
    return rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)


@pytest.fixture
def cifar10_dir(tmp_path):
    """A CIFAR-10 folder in the real layout: 5 train batches of 10 images (one per label, in a
    shuffled label order) and a test batch of 20. Returns (root, written) where written holds the
    images (N, 3, 32, 32) and labels in file order."""
    rng = np.random.default_rng(1234)
    root = tmp_path / "cifar10"
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train_imgs, train_labels = [], []
    for b in range(1, 6):
        labels = [int(v) for v in rng.permutation(10)]
        imgs = _images_for(labels, rng)
        _pickle(base / f"data_batch_{b}", {
            b"batch_label": f"training batch {b} of 5".encode(),
            b"labels": labels,
            b"data": np.stack([cifar_row(im) for im in imgs]),
            b"filenames": [f"img_{b}_{i}.png".encode() for i in range(len(labels))],
        })
        train_imgs.append(imgs)
        train_labels += labels
    test_labels = [int(v) for v in np.concatenate([rng.permutation(10), rng.permutation(10)])]
    test_imgs = _images_for(test_labels, rng)
    _pickle(base / "test_batch", {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": test_labels,
        b"data": np.stack([cifar_row(im) for im in test_imgs]),
        b"filenames": [f"test_{i}.png".encode() for i in range(len(test_labels))],
    })
    _pickle(base / "batches.meta", {b"num_cases_per_batch": 10, b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                     b"num_vis": 3072})
    written = {"train_images": np.concatenate(train_imgs), "train_labels": np.array(train_labels),
               "test_images": test_imgs, "test_labels": np.array(test_labels)}
    return root, written


@pytest.fixture
def cifar100_dir(tmp_path):
    """A CIFAR-100 folder in the real layout: 2 train images and 1 test image per fine label."""
    rng = np.random.default_rng(99)
    root = tmp_path / "cifar100"
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    coarse_of = [i // 5 for i in range(100)]  # any fixed fine -> coarse map; the reader must ignore it
    written = {}
    for split, per_label in (("train", 2), ("test", 1)):
        labels = [int(v) for v in rng.permutation(np.repeat(np.arange(100), per_label))]
        imgs = _images_for(labels, rng)
        _pickle(base / split, {
            b"filenames": [f"{split}_{i}.png".encode() for i in range(len(labels))],
            b"batch_label": f"{split}ing batch 1 of 1".encode(),
            b"fine_labels": labels,
            b"coarse_labels": [coarse_of[y] for y in labels],
            b"data": np.stack([cifar_row(im) for im in imgs]),
        })
        written[f"{split}_images"], written[f"{split}_labels"] = imgs, np.array(labels)
    _pickle(base / "meta", {b"fine_label_names": [n.encode() for n in CIFAR100_NAMES],
                            b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]})
    return root, written


# ------------------------------------------------------------------------------ idx files

def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


def make_idx_arrays(n_train=30, n_test=20, size=28, seed=5):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) * 7 % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3 % 10).astype(np.uint8),
    }


def write_idx_dataset(folder: Path, arrays: dict, gz: bool) -> Path:
    for stem, arr in arrays.items():
        write_idx(folder / stem, arr, gz)
    return folder


# ------------------------------------------------------------------------------ image folders

FOLDER_COLOURS = {"zebra": (250, 10, 10), "apple": (10, 240, 20), "mango": (30, 40, 230)}


@pytest.fixture
def imagefolder_dir(tmp_path):
    """train/<class>/*.png and val/<class>/*.png, every image of a class one solid colour."""
    from PIL import Image

    root = tmp_path / "folders"
    for split, count in (("train", 3), ("val", 2)):
        for cls, colour in FOLDER_COLOURS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                size = (40 + 3 * i, 36 + 2 * i)  # not square, not the target size
                Image.new("RGB", size, colour).save(d / f"{cls}_{i}.png")
    (root / "train" / ".hidden").mkdir()  # not a class
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny networks run fastest on one intra-op thread (and the suite may share its 2 cores);
    results do not depend on the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------ random models, synthetic data

SIZE, LABELS = 32, 10


def synthetic_data(n_train=120, n_test=60, seed=0, size=SIZE, channels=3):
    """Random images with labels 0..9 in the in-memory format (a few hundred samples, every label in both splits)."""
    import torch

    from filterlens.data import DATASETS, ArraySplit, Data

    g = torch.Generator().manual_seed(seed)
    spec = DATASETS["cifar10"]

    def split(n):
        x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
        return ArraySplit(x, torch.arange(n) % LABELS, spec.mean[:channels], spec.std[:channels])

    return Data("synthetic", split(n_train), split(n_test), [str(i) for i in range(LABELS)], list(range(LABELS)),
                spec, size)


def brute_force_matrices(model, layer, W, data):
    """Every unit's matrix by brute-force silencing: zero every FC weight but unit c's, run the FC on the test
    set's captured units, average by label. Returns (the captured units (N, U, A, B), matrices (U, L, L))."""
    import torch

    from filterlens.capture import Capture
    from filterlens.precision import for_inference

    with Capture(model, [layer], precision=for_inference("cpu", True, model)) as cap:  # as the analysis captured
        feats, ys = [], []
        for start in range(0, len(data.test), 50):
            idx = torch.arange(start, min(start + 50, len(data.test)))
            x = data.test.resize(data.test.normalise(data.test.images[idx]))
            feats.append(cap.forward(x)[layer.name].double())
            ys.append(data.test.labels[idx])
    A, y = torch.cat(feats), torch.cat(ys)
    L, C = W.shape[0], W.shape[1]
    brute = np.zeros((C, L, L))
    for c in range(C):
        silenced = torch.zeros_like(W)
        silenced[:, c] = W[:, c]
        logits = A.flatten(1) @ silenced.flatten(1).T  # the FC with every weight but unit c's zeroed
        for i in range(L):
            brute[c, i] = logits[y == i].mean(0).numpy()
    return A, brute


# ------------------------------------------------------------------------------ the forward pass as filterlens runs it

def as_filterlens_runs(model, device: str = "cpu"):
    """A context in which ``model`` computes as filterlens' capture computes it (filterlens.precision: bfloat16
    autocast with channels-last maps on a CPU with bfloat16 units, float32 elsewhere), under no_grad; it yields
    the Precision (``p.batch(x)`` lays an input out as the capture does). Brute-force checks of stage 2-3 numbers
    compute their maps in it, so that they test the arithmetic of the stages, not the precision of the network."""
    from contextlib import ExitStack

    import torch

    from filterlens.precision import for_inference

    p = for_inference(device, True, model)
    stack = ExitStack()
    stack.enter_context(torch.no_grad())
    stack.enter_context(p.running(model))
    stack.enter_context(p.autocast())

    class _Ctx:
        def __enter__(self):
            stack.__enter__()
            return p

        def __exit__(self, *exc):
            return stack.__exit__(*exc)

    return _Ctx()


@contextmanager
def said(into: list | None = None):
    """What filterlens says inside the block (the ``filterlens`` logger's records, :mod:`filterlens.output`), as a
    list of lines filled as they come (``into``, or a new list)."""
    import logging

    from filterlens.output import LOGGER

    lines: list[str] = [] if into is None else into

    class _Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler, before = _Collect(), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(before)
