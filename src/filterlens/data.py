"""Datasets by name, label subsets, transforms and loaders.

Every dataset comes back as a :class:`Data`: a train and a test split, the label
names (after the subset), the mapping to the original label indices, and the
image geometry. Small datasets (digits, MNIST, Fashion-MNIST, CIFAR) are held in
memory as uint8 tensors and batched without a per-sample Python transform;
folder datasets (ImageNet, any class-per-folder tree) stream from disk through
torchvision's ``ImageFolder`` and a ``DataLoader``.

Label subsets (``labels=``): ``None``/``"all"``, ``"first:K"``, ``"random:K:SEED"``
or an explicit list of names or indices (``"cat,dog,ship"`` or ``"3,5,7"``). The
selected labels are relabelled to ``0..K-1`` in the order given (ascending for
``first``/``random``); :attr:`Data.label_map` keeps the original indices.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FilterlensError, closest

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot"]


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a named dataset (no files needed)."""

    name: str
    in_channels: int
    image_size: int
    num_labels: int | None  # None: read from the folder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random-crop padding of the training augmentation
    flip: bool  # horizontal flip in the training augmentation
    in_memory: bool


DATASETS: dict[str, DatasetSpec] = {
    # digits: 8x8; flips would turn a 2 into something else, so no flip; 1-pixel crop padding
    "digits": DatasetSpec("digits", 1, 8, 10, (0.3053,), (0.3759,), 1, False, True),
    "mnist": DatasetSpec("mnist", 1, 28, 10, (0.1307,), (0.3081,), 2, False, True),
    "fashion-mnist": DatasetSpec("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), 2, True, True),
    "cifar10": DatasetSpec("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, True),
    "cifar100": DatasetSpec("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True, True),
    "imagenet": DatasetSpec("imagenet", 3, 224, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True, False),
    "imagefolder": DatasetSpec("imagefolder", 3, 224, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True, False),
}

DEFAULT_DATA_DIRS = {
    "fashion-mnist": FASHION_MNIST_DEBIAN_DIR,
    "mnist": "data/mnist",
    "cifar10": "data/cifar10",
    "cifar100": "data/cifar100",
    "imagenet": "data/imagenet",
}


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise FilterlensError(
            f"unknown dataset '{name}'{closest(name, DATASETS)}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------- splits

class ArraySplit(torch.utils.data.Dataset):
    """An in-memory split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, size: int | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor of shape (N, C, H, W)")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.size = size  # every batch resized to size x size (None: as stored)

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float().div_(255.0)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """The same resize for every split (``--image-size``): bilinear, antialiased when shrinking."""
        if self.size is None or tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=self.size < x.shape[-1])

    def __getitem__(self, i):
        return self.resize(self.normalise(self.images[i : i + 1]))[0], int(self.labels[i])

    def subset(self, index) -> "ArraySplit":
        index = torch.as_tensor(index, dtype=torch.long)
        out = ArraySplit.__new__(ArraySplit)
        out.images, out.labels = self.images[index], self.labels[index]
        out.mean, out.std, out.size = self.mean, self.std, self.size
        return out


class FolderSplit(torch.utils.data.Dataset):
    """A class-per-folder split read lazily through torchvision's ImageFolder."""

    def __init__(self, folder, samples: list[tuple[str, int]], image_size: int, mean, std, train: bool):
        from torchvision import transforms as T

        self.folder = folder
        self.samples = samples
        self.labels = torch.tensor([y for _, y in samples], dtype=torch.long)
        resize = int(round(image_size * 256 / 224))
        norm = T.Normalize(mean, std)
        self.eval_transform = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), norm])
        self.train_transform = T.Compose(
            [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        self.augment = train

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from torchvision.datasets.folder import default_loader

        path, y = self.samples[i]
        try:
            img = default_loader(path)
            img.load()
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: truncated, corrupt or not an image
            raise FilterlensError(f"image '{path}' cannot be read ({type(exc).__name__}: {exc}); remove or replace "
                                  "the file") from None
        tf = self.train_transform if self.augment else self.eval_transform
        return tf(img), y


@dataclass
class Data:
    """Train and test splits of one dataset (after the label subset)."""

    name: str
    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    label_names: list[str]
    label_map: list[int]  # new label k is original label label_map[k]
    spec: DatasetSpec
    image_size: int
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    def describe(self) -> dict:
        return {"dataset": self.name, "num_labels": self.num_labels, "label_names": self.label_names,
                "label_map": self.label_map, "train_size": len(self.train), "test_size": len(self.test),
                "image_size": self.image_size, "in_channels": self.in_channels, "source": self.source}


# ----------------------------------------------------------------------------- label subsets

def parse_labels(spec, label_names: Sequence[str]) -> list[int]:
    """Resolve a label-subset spec to a list of original label indices.

    >>> parse_labels("first:3", ["a", "b", "c", "d"])
    [0, 1, 2]
    """
    n = len(label_names)
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", "all")):
        return list(range(n))
    if isinstance(spec, str):
        text = spec.strip()
        head = text.split(":", 1)[0]
        if head in ("first", "random"):
            parts = text.split(":")
            want = 2 if head == "first" else (2, 3)
            if (head == "first" and len(parts) != 2) or (head == "random" and len(parts) not in want):
                raise FilterlensError(
                    f"label spec '{spec}' is malformed; use first:K, random:K:SEED or a list of names/indices")
            k = _parse_int(parts[1], spec)
            _check_k(k, n, spec)
            if head == "first":
                return list(range(k))
            seed = _parse_int(parts[2], spec) if len(parts) == 3 else 0
            if seed < 0:
                raise FilterlensError(f"seed {seed} in label spec '{spec}' is negative; use random:K:SEED with "
                                      "SEED >= 0")
            rng = np.random.default_rng(seed)
            return sorted(int(i) for i in rng.choice(n, size=k, replace=False))
        items = [t.strip() for t in text.split(",") if t.strip()]
    else:
        items = list(spec)
    index = {name: i for i, name in enumerate(label_names)}
    chosen = []
    for item in items:
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.lstrip("-").isdigit()
                                                   and item not in index):
            i = int(item)
            if not 0 <= i < n:
                raise FilterlensError(f"label index {i} is out of range; valid: 0..{n - 1}")
        elif item in index:
            i = index[item]
        else:
            shown = ", ".join(label_names[:12]) + (", ..." if n > 12 else "")
            raise FilterlensError(f"unknown label '{item}'{closest(item, label_names)}; valid: {shown} or 0..{n - 1}")
        if i in chosen:
            raise FilterlensError(f"label '{item}' is listed twice in '{spec}'; each label may appear once")
        chosen.append(i)
    _check_k(len(chosen), n, spec)
    return chosen


def _parse_int(text, spec) -> int:
    try:
        return int(text)
    except ValueError:
        raise FilterlensError(f"'{text}' in label spec '{spec}' is not an integer") from None


def _check_k(k: int, n: int, spec) -> None:
    if k < 2 or k > n:
        raise FilterlensError(f"label count {k} from '{spec}' is out of range; valid: 2..{n} for this dataset")


def _relabel(labels: torch.Tensor, label_map: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep samples whose label is in ``label_map``; return (index, new labels)."""
    lookup = torch.full((int(labels.max()) + 1 if len(labels) else 1,), -1, dtype=torch.long)
    for new, old in enumerate(label_map):
        if old < len(lookup):
            lookup[old] = new
    new = lookup[labels.long()]
    keep = torch.nonzero(new >= 0).flatten()
    return keep, new[keep]


# ----------------------------------------------------------------------------- readers

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, OSError, gzip.BadGzipFile) as exc:
        raise FilterlensError(f"{path} cannot be read ({type(exc).__name__}: {exc}); the file is damaged or cut "
                              "short, replace it") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise FilterlensError(f"{path} is not an idx file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if len(data) < 4 + 4 * ndim:
        raise FilterlensError(f"{path} is truncated inside its header ({len(data)} bytes)")
    if dtype_code != 0x08:
        raise FilterlensError(f"{path}: idx type 0x{dtype_code:02x} not supported; expected unsigned byte (0x08)")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise FilterlensError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path | None:
    for sub in ("", "raw", "FashionMNIST/raw", "MNIST/raw"):
        for suffix in ("", ".gz"):
            p = data_dir / sub / (stem + suffix)
            if p.is_file():
                return p
    return None


def _load_idx_dataset(name: str, data_dir: Path):
    stems = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    found = {k: _find_idx(data_dir, s) for k, s in stems.items()}
    missing = [stems[k] + "[.gz]" for k, p in found.items() if p is None]
    if missing:
        hint = (" (install the Debian package dataset-fashion-mnist: apt-get install dataset-fashion-mnist)"
                if name == "fashion-mnist" else "")
        raise FilterlensError(f"data directory '{data_dir}' lacks {', '.join(missing)} for {name}{hint}")
    arrays = {k: _read_idx(p) for k, p in found.items()}
    out = []
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if len(x) != len(y):
            raise FilterlensError(f"{name} {split}: {len(x)} images but {len(y)} labels in '{data_dir}'")
        out.append((torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    names = FASHION_LABELS if name == "fashion-mnist" else [str(i) for i in range(10)]
    return out[0], out[1], names


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's files only: dicts, lists, bytes and NumPy arrays; any other global (code a
    crafted file could run) is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR file")


def _load_cifar(name: str, data_dir: Path, download: bool):
    """Read the CIFAR python-pickle format (as torchvision's CIFAR10/100 store it)."""
    folder, train_files, test_files, meta_file, label_key, names_key = (
        ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
         b"labels", b"label_names") if name == "cifar10" else
        ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"))
    if download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            cls(str(data_dir), train=True, download=True)  # verifies checksums after download
        except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
            raise FilterlensError(f"downloading {name} from {cls.url} failed ({type(exc).__name__}: "
                                  f"{str(exc)[:120]}); without internet, fetch {cls.filename} elsewhere and unpack it "
                                  f"into '{data_dir}' (giving {folder}/), then run without --download") from None
    base = data_dir / folder
    missing = [f for f in train_files + test_files + [meta_file] if not (base / f).is_file()]
    if missing:
        raise FilterlensError(
            f"data directory '{data_dir}' lacks {folder}/{', '.join(missing)} for {name}; pass --data-dir "
            f"to the folder holding {folder}/ or --download to fetch it")

    def unpickle(path):
        try:
            with open(path, "rb") as fh:
                return _CifarUnpickler(fh, encoding="bytes").load()
        except Exception as exc:  # noqa: BLE001 - whatever the bytes are, one line naming the file
            raise FilterlensError(f"{path} is not a CIFAR pickle file ({type(exc).__name__}: "
                                  f"{str(exc)[:100]})") from None

    def read(files):
        xs, ys = [], []
        for f in files:
            d = unpickle(base / f)
            key = label_key if isinstance(d, dict) and label_key in d else b"labels"
            if not isinstance(d, dict) or b"data" not in d or key not in d:
                have = ", ".join(repr(k) for k in list(d)[:5]) if isinstance(d, dict) else type(d).__name__
                raise FilterlensError(f"{base / f} is not a CIFAR batch: it lacks the keys b'data' and "
                                      f"{label_key!r} (it has {have or 'nothing'}); replace the file")
            try:
                x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                y = np.asarray(d[key], dtype=np.int64).reshape(-1)
            except (ValueError, TypeError) as exc:
                raise FilterlensError(f"{base / f} is not a CIFAR batch: its data is not N x 3072 bytes with N labels "
                                      f"({exc})") from None
            if len(x) != len(y):
                raise FilterlensError(f"{base / f} has {len(x)} images but {len(y)} labels; replace the file")
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    meta = unpickle(base / meta_file)
    if not isinstance(meta, dict) or names_key not in meta:
        raise FilterlensError(f"{base / meta_file} is not CIFAR's meta file: it lacks {names_key!r}; replace the file")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return read(train_files), read(test_files), names


def _load_digits(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    # A fixed, seeded, stratified split (not the run seed: every run sees the same test set).
    idx_train, idx_test = train_test_split(np.arange(len(d.target)), test_size=0.25, random_state=seed,
                                           stratify=d.target)
    t = torch.from_numpy
    return ((t(images[idx_train]), t(d.target[idx_train].astype(np.int64))),
            (t(images[idx_test]), t(d.target[idx_test].astype(np.int64))), [str(i) for i in range(10)])


def _folder_classes(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _folder_samples(root: Path, classes: list[str]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    class_to_idx = {c: i for i, c in enumerate(classes)}
    present = set(_folder_classes(root))
    absent = [c for c in classes if c not in present]
    if absent:
        raise FilterlensError(f"'{root}' lacks the class folder(s) {', '.join(absent[:5])} found in the train split")
    return make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def _load_folder(name: str, data_dir: Path):
    train_dir = data_dir / "train"
    test_dir = next((data_dir / s for s in ("val", "test") if (data_dir / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise FilterlensError(
            f"data directory '{data_dir}' lacks train/ and val/ (or test/) class-per-folder subdirectories for {name}")
    classes = _folder_classes(train_dir)
    if len(classes) < 2:
        raise FilterlensError(f"'{train_dir}' has {len(classes)} class folder(s); need at least 2")
    return _folder_samples(train_dir, classes), _folder_samples(test_dir, classes), classes


# ----------------------------------------------------------------------------- entry point

def load_data(dataset: str = "digits", data_dir=None, labels=None, download: bool = False,
              image_size: int | None = None, split_seed: int = 0, train_samples: int = 0,
              test_samples: int = 0) -> Data:
    """Load a dataset by name, apply the label subset, return train/test splits.

    Parameters
    ----------
    dataset : one of :data:`DATASETS`.
    data_dir : folder with the files (defaults: Debian's Fashion-MNIST path, ``data/<name>``).
    labels : label-subset spec, see the module docstring.
    download : let torchvision download CIFAR when the files are absent.
    image_size : input size: every split resized to this (default: the dataset's own; folder datasets 224).
    split_seed : seed of digits' fixed train/test split.
    train_samples, test_samples : keep a seeded random subset of this many samples (0: all).
    """
    _check_load_args(dataset, data_dir, labels, download, image_size, split_seed, train_samples, test_samples)
    data = _load_data(dataset, data_dir, labels, download, image_size, split_seed)
    data.train = _limit(data.train, train_samples, split_seed)
    data.test = _limit(data.test, test_samples, split_seed + 1)
    return data


def _check_load_args(dataset, data_dir, labels, download, image_size, split_seed, train_samples,
                     test_samples) -> None:
    """The types :func:`load_data` takes, refused in one line before anything is read."""
    from .checks import of_type, path_arg

    of_type(dataset, str, "dataset", f"a dataset name: {', '.join(DATASETS)}")
    if data_dir is not None:
        path_arg(data_dir, "data folder")
    if labels is not None and not isinstance(labels, str):
        of_type(labels, (list, tuple), "labels", "a label spec (all, first:K, random:K:SEED, '3,5,7') or a list of "
                                              "label names or indices")
    of_type(download, bool, "download", "True or False")
    if image_size is not None:
        of_type(image_size, int, "image_size", "an int (pixels) or None")
    for name, value in (("split_seed", split_seed), ("train_samples", train_samples), ("test_samples", test_samples)):
        of_type(value, int, name, "an int >= 0")
        if value < 0:
            raise FilterlensError(f"{name} = {value} is negative; give an int >= 0")


def _limit(split, n: int, seed: int):
    if not n or n >= len(split):
        return split
    keep = torch.sort(torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]).values
    if isinstance(split, ArraySplit):
        return split.subset(keep)
    split.samples = [split.samples[i] for i in keep.tolist()]
    split.labels = split.labels[keep]
    return split


def _load_data(dataset, data_dir, labels, download, image_size, split_seed) -> Data:
    spec = dataset_spec(dataset)
    if data_dir is None and dataset in DEFAULT_DATA_DIRS:
        data_dir = DEFAULT_DATA_DIRS[dataset]
    if dataset in ("imagenet", "imagefolder") and data_dir is None:
        raise FilterlensError(f"dataset '{dataset}' needs --data-dir (a folder with train/ and val/ class folders)")
    path = Path(data_dir) if data_dir is not None else None
    if path is not None and not path.is_dir() and not (download and dataset.startswith("cifar")):
        hint = " (install the Debian package dataset-fashion-mnist)" if dataset == "fashion-mnist" else ""
        raise FilterlensError(f"data directory '{path}' for {dataset} does not exist{hint}")

    if spec.in_memory:
        if dataset == "digits":
            train, test, names = _load_digits(split_seed)
        elif dataset in ("mnist", "fashion-mnist"):
            train, test, names = _load_idx_dataset(dataset, path)
        else:
            if download:
                path.mkdir(parents=True, exist_ok=True)
            train, test, names = _load_cifar(dataset, path, download)
        chosen = parse_labels(labels, names)
        size = image_size or spec.image_size
        splits = []
        for x, y in (train, test):
            keep, new = _relabel(y, chosen)
            splits.append(ArraySplit(x[keep], new, spec.mean, spec.std, size if size != spec.image_size else None))
        return Data(dataset, splits[0], splits[1], [names[i] for i in chosen], chosen, spec, size,
                    source=str(path) if path else "scikit-learn")

    train_s, test_s, names = _load_folder(dataset, path)
    chosen = parse_labels(labels, names)
    new_of = {old: new for new, old in enumerate(chosen)}
    size = image_size or spec.image_size
    splits = []
    for samples, is_train in ((train_s, True), (test_s, False)):
        kept = [(p, new_of[y]) for p, y in samples if y in new_of]
        splits.append(FolderSplit(path, kept, size, spec.mean, spec.std, train=is_train))
    return Data(dataset, splits[0], splits[1], [names[i] for i in chosen], chosen, spec, size, source=str(path))


def check_labels_present(data: Data) -> None:
    """Refuse a split in which some label has no sample (names the labels)."""
    for split_name, split in (("train", data.train), ("test", data.test)):
        counts = torch.bincount(split.labels, minlength=data.num_labels)
        empty = [data.label_names[i] for i in range(data.num_labels) if counts[i] == 0]
        if empty:
            raise FilterlensError(
                f"the {split_name} split has no sample of label(s) {', '.join(empty)}; choose labels present in both splits")


# ----------------------------------------------------------------------------- loaders

def augment_batch(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once."""
    n, c, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).to(x.device)  # (n, h)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).to(x.device)  # (n, w)
        bidx = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        cidx = torch.arange(c, device=x.device).view(1, c, 1, 1)
        x = padded[bidx, cidx, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    return x


class ArrayLoader:
    """Batches of an :class:`ArraySplit` without per-sample Python work.

    Order and augmentation are drawn from a generator seeded by ``(seed, epoch)``:
    call :meth:`set_epoch` before each epoch and a resumed run sees exactly the same
    batches. ``rank``/``world_size`` shard the samples as DistributedSampler does: rank r
    takes every N-th sample of the epoch's order from the r-th on, so the ranks' batches of
    one step together are the single-process batch of N times their size; ``pad`` repeats
    the first samples so every rank has as many (for training); ``pad=False`` gives each
    sample to exactly one rank (for evaluation, where counts are summed over the ranks).
    """

    def __init__(self, split: ArraySplit, batch_size: int, shuffle: bool = False, augment: bool = False,
                 padding: int = 0, flip: bool = False, seed: int = 0, device="cpu", drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, pad: bool = True):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.augment, self.padding, self.flip = augment, padding, flip
        self.seed, self.epoch, self.device, self.drop_last = seed, 0, torch.device(device), drop_last
        self.rank, self.world_size, self.pad = rank, world_size, pad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self, gen) -> torch.Tensor:
        n = len(self.split)
        idx = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            if self.pad:
                per = -(-n // self.world_size)
                idx = torch.cat([idx, idx[: per * self.world_size - n]])  # pad like DistributedSampler
            idx = idx[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self._indices(torch.Generator().manual_seed(0))) if self.world_size > 1 else len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = self._indices(gen)
        for start in range(0, len(idx), self.batch_size):
            b = idx[start : start + self.batch_size]
            if self.drop_last and len(b) < self.batch_size:
                break
            x = self.split.images[b].to(self.device, non_blocking=True)
            x = self.split.normalise(x)
            if self.augment:  # at the stored resolution, then resized like the test split
                x = augment_batch(x, self.padding, self.flip, gen)
            yield self.split.resize(x), self.split.labels[b].to(self.device, non_blocking=True)


class FolderLoader:
    """A DataLoader over a :class:`FolderSplit` with the same interface as :class:`ArrayLoader`."""

    def __init__(self, split: FolderSplit, batch_size: int, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, device="cpu", num_workers: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, pad: bool = True):
        import copy

        self.split = copy.copy(split)
        self.split.augment = augment
        self.seed, self.epoch, self.device = seed, 0, torch.device(device)
        self.batch_size, self.shuffle, self.num_workers, self.drop_last = batch_size, shuffle, num_workers, drop_last
        self.rank, self.world_size, self.pad = rank, world_size, pad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _loader(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        sampler = None
        if self.world_size > 1 and not self.pad and not self.shuffle:  # evaluation: each sample on one rank
            sampler = range(self.rank, len(self.split), self.world_size)
        elif self.world_size > 1:
            sampler = torch.utils.data.DistributedSampler(self.split, self.world_size, self.rank,
                                                          shuffle=self.shuffle, seed=self.seed)
            sampler.set_epoch(self.epoch)
        return torch.utils.data.DataLoader(
            self.split, batch_size=self.batch_size, shuffle=self.shuffle and sampler is None, sampler=sampler,
            num_workers=self.num_workers, generator=gen, drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False)

    def __len__(self) -> int:
        return len(self._loader())

    def __iter__(self):
        torch.manual_seed(self.seed * 1_000_003 + self.epoch)  # the transforms draw from the global RNG
        try:
            for x, y in self._loader():
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except FilterlensError as exc:  # from a worker process, the message carries the worker's traceback
            raise FilterlensError(str(exc).strip().splitlines()[-1].removeprefix("filterlens.errors.FilterlensError: ")
                                  ) from None


def shard_indices(n: int, rank: int = 0, world_size: int = 1, pad: bool = True) -> torch.Tensor:
    """The samples of ``rank`` in an unshuffled pass (what an unshuffled loader of that rank yields, in order)."""
    idx = torch.arange(n)
    if world_size > 1:
        if pad:
            per = -(-n // world_size)
            idx = torch.cat([idx, idx[: per * world_size - n]])
        idx = idx[rank::world_size]
    return idx


def batches_in_order(data: Data, split: str, order: torch.Tensor, batch_size: int, device="cpu",
                     augment: bool = False, seed: int = 0, epoch: int = 0, num_workers: int = 0):
    """Mini-batches of ``split`` holding exactly the samples ``order``, ``batch_size`` at a time, in that order
    (the probes' streaming engine walks the same permutation the feature cache's rows are read in)."""
    import copy

    ds = data.train if split == "train" else data.test
    device = torch.device(device)
    if isinstance(ds, ArraySplit):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        for b in order.split(batch_size):
            x = ds.normalise(ds.images[b].to(device, non_blocking=True))
            if augment:
                x = augment_batch(x, data.spec.crop_padding, data.spec.flip, gen)
            yield ds.resize(x), ds.labels[b].to(device, non_blocking=True)
        return
    folder = copy.copy(ds)
    folder.augment = augment
    torch.manual_seed(seed * 1_000_003 + epoch)  # the folder transforms draw from the global RNG
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, sampler=order.tolist(),
                                         num_workers=num_workers, pin_memory=device.type == "cuda")
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def make_loader(data: Data, split: str, batch_size: int, train: bool = False, seed: int = 0, device="cpu",
                augment: bool | None = None, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                pad: bool = True):
    """A loader over ``data.train`` or ``data.test``.

    ``train=True`` shuffles and (unless ``augment=False``) applies the training augmentation.
    ``rank``/``world_size``/``pad``: this rank's shard (see :class:`ArrayLoader`).
    """
    ds = data.train if split == "train" else data.test
    aug = train if augment is None else augment
    if isinstance(ds, ArraySplit):
        return ArrayLoader(ds, batch_size, shuffle=train, augment=aug, padding=data.spec.crop_padding,
                           flip=data.spec.flip, seed=seed, device=device, rank=rank, world_size=world_size, pad=pad)
    return FolderLoader(ds, batch_size, shuffle=train, augment=aug, seed=seed, device=device,
                        num_workers=num_workers, rank=rank, world_size=world_size, pad=pad)
