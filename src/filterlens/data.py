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
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import glyphs
from .checks import is_int_text
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
    "imagefolder": DatasetSpec("imagefolder", 3, 224, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0, True,
                               False),
    # glyphs: rendered from the installed CJK fonts (filterlens.glyphs: its constants, cache and fonts); no flip
    "glyphs": DatasetSpec("glyphs", 1, glyphs.IMAGE_SIZE, glyphs.NUM_LABELS, (glyphs.MEAN,), (glyphs.STD,), 2, False,
                          True),
}

DEFAULT_DATA_DIRS = {
    "fashion-mnist": FASHION_MNIST_DEBIAN_DIR,
    "mnist": "data/mnist",
    "cifar10": "data/cifar10",
    "cifar100": "data/cifar100",
    "imagenet": "data/imagenet",
}


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of a named dataset; an unknown name is refused in one line."""
    if name not in DATASETS:
        raise FilterlensError(
            f"unknown dataset '{name}'{closest(name, DATASETS)}; valid: {', '.join(DATASETS)}")
    return DATASETS[name]


# ----------------------------------------------------------------------------- splits

class ArraySplit(torch.utils.data.Dataset):
    """An in-memory split: images (N, C, H, W) and int64 labels (N,).

    uint8 images are scaled to [0, 1] and, with ``mean``/``std`` (a named dataset's), normalised;
    floating-point images (a user's tensors) are used as they are, in float32.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean=None, std=None, size: int | None = None):
        if images.ndim != 4 or not (images.dtype == torch.uint8 or images.is_floating_point()):
            raise ValueError("images must be a uint8 or floating-point tensor of shape (N, C, H, W)")
        self.images = images
        self.labels = labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std is not None else None
        self.size = size  # every batch resized to size x size (None: as stored)

    def __len__(self) -> int:
        return len(self.labels)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Images as float32: uint8 scaled to [0, 1] then normalised by ``mean``/``std`` when set;
        floating-point images as they are."""
        if images.is_floating_point():
            return images.float()
        x = images.float().div_(255.0)
        if self.mean is not None:
            x = x - self.mean.to(x.device)
        if self.std is not None:
            x = x / self.std.to(x.device)
        return x

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """The same resize for every split (``--image-size``): bilinear, antialiased when shrinking."""
        if self.size is None or tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=self.size < x.shape[-1])

    def __getitem__(self, i):
        return self.resize(self.normalise(self.images[i : i + 1]))[0], int(self.labels[i])

    def subset(self, index) -> "ArraySplit":
        """The split's samples at ``index`` (images, labels), with the same normalisation and resize."""
        index = torch.as_tensor(index, dtype=torch.long)
        out = ArraySplit.__new__(ArraySplit)
        out.images, out.labels = self.images[index], self.labels[index]
        out.mean, out.std, out.size = self.mean, self.std, self.size
        return out


class DatasetSplit(torch.utils.data.Dataset):
    """A user's map-style dataset as a split: each sample as the dataset's own ``__getitem__`` (and its
    transforms) gives it, as (image, label); the image a float32 tensor (C, H, W) (a uint8 one scaled to
    [0, 1], nothing else added; an image stored H x W x C, as Hugging Face datasets give them, with 1 or 3
    channels last and neither first, is read channels first), the label an int. ``labels``: every sample's label, read
    once (:mod:`filterlens.inputs`). ``keys``: for samples that are dicts, the image's and the label's key."""

    def __init__(self, dataset, labels: torch.Tensor, keys: tuple[str, str] | None = None, which: str = "",
                 shape: tuple[int, int, int] | None = None):
        self.dataset, self.labels, self.keys = dataset, labels.long(), keys
        self.which = which  # "train" or "test", for messages
        self.shape = shape  # every image's shape (C, H, W), once known; a sample of another shape is refused

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        item = self.dataset[i]
        x, y = (item[self.keys[0]], item[self.keys[1]]) if self.keys else (item[0], item[1])
        x = torch.as_tensor(x)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if x.ndim == 2:
            x = x.unsqueeze(0)
        elif x.ndim == 3 and x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3):  # H x W x C (Hugging Face's)
            x = x.permute(2, 0, 1)
        where = f"sample {i} of the {self.which + ' ' if self.which else ''}dataset"
        if self.shape is not None and tuple(x.shape) != tuple(self.shape):
            raise FilterlensError(f"{where} has an image of shape {tuple(x.shape)}, sample 0 of the train dataset "
                                  f"{tuple(self.shape)}; every image must have one shape (C, H, W): resize them in "
                                  "the dataset's transform")
        if not bool(torch.isfinite(x).all()):
            raise FilterlensError(f"{where} holds NaN or infinite pixel values; filterlens reads finite images only")
        return x, int(y)


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


Split = ArraySplit | DatasetSplit | FolderSplit  # the splits a Data holds (each with labels, read once)


@dataclass
class Data:
    """Train and test splits of one dataset (after the label subset)."""

    name: str
    train: Split
    test: Split
    label_names: list[str]
    label_map: list[int]  # new label k is original label label_map[k]
    spec: DatasetSpec
    image_size: int
    source: str = ""
    extra: dict = field(default_factory=dict)  # more facts for describe() (glyphs: its fonts and data key)
    shape: tuple[int, int, int] | None = None  # (C, H, W) of one input, when not square (a user's data)

    @property
    def num_labels(self) -> int:
        """The number of labels L (after the label subset)."""
        return len(self.label_names)

    @property
    def in_channels(self) -> int:
        """The number of input channels (the dataset's)."""
        return self.spec.in_channels

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input as the model receives it."""
        return self.shape or (self.in_channels, self.image_size, self.image_size)

    def describe(self) -> dict:
        """The data as the result files record it: name, labels, split sizes, input shape, source and more facts."""
        return {"dataset": self.name, "num_labels": self.num_labels, "label_names": self.label_names,
                "label_map": self.label_map, "train_size": len(self.train), "test_size": len(self.test),
                "image_size": self.image_size, "in_channels": self.in_channels, "input_shape": list(self.input_shape),
                "source": self.source, **self.extra}

    def test_image(self, i: int):
        """Test sample ``i`` as a PIL image, for thumbnails: the stored bytes of an in-memory or folder dataset;
        a user's tensor scaled to its own range."""
        from PIL import Image

        split = self.test
        if isinstance(split, ArraySplit) and split.images.dtype == torch.uint8:
            arr = split.images[i].numpy()
        elif isinstance(split, FolderSplit):
            from torchvision.datasets.folder import default_loader

            return default_loader(split.samples[i][0])
        else:
            x = split.images[i] if isinstance(split, ArraySplit) else split[i][0]
            x = x.float()
            lo, hi = float(x.min()), float(x.max())
            arr = ((x - lo) / (hi - lo if hi > lo else 1.0) * 255).round().to(torch.uint8).numpy()
        if arr.shape[0] not in (1, 3):  # other channel counts: the first channel, grey
            arr = arr[:1]
        return Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))


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
            if (head == "first" and len(parts) != 2) or (head == "random" and len(parts) not in (2, 3)):
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
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and is_int_text(item) and item not in index):
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
    if not is_int_text(text):  # ASCII digits only: "²" passes str.isdigit and fails int
        raise FilterlensError(f"'{text}' in label spec '{spec}' is not an integer; give whole numbers in ASCII "
                              "digits, e.g. first:5 or random:5:0")
    return int(text)


def _check_k(k: int, n: int, spec) -> None:
    if k < 2 or k > n:
        raise FilterlensError(f"label count {k} from '{spec}' is out of range; valid: 2..{n} for this dataset")


def _relabel(labels: torch.Tensor, label_map: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep samples whose label is in ``label_map``; return (index, new labels)."""
    lookup = torch.full((int(labels.max()) + 1 if len(labels) else 1,), -1, dtype=torch.long)
    for k, old in enumerate(label_map):
        if old < len(lookup):
            lookup[old] = k
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
    located = {k: _find_idx(data_dir, s) for k, s in stems.items()}
    found = {k: p for k, p in located.items() if p is not None}
    missing = [stems[k] + "[.gz]" for k in stems if k not in found]
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
    if dataset == "glyphs":  # rendered into its own cache folder (default under ~/.cache), made when missing
        return _load_glyphs(spec, data_dir, labels, image_size)
    if data_dir is None and dataset in DEFAULT_DATA_DIRS:
        data_dir = DEFAULT_DATA_DIRS[dataset]
    if dataset in ("imagenet", "imagefolder") and data_dir is None:
        raise FilterlensError(f"dataset '{dataset}' needs --data-dir (a folder with train/ and val/ class folders)")
    path = Path(data_dir) if data_dir is not None else None
    if path is not None and path.exists() and not path.is_dir():
        raise FilterlensError(f"data directory '{path}' for {dataset} is a file, not a directory; give the folder "
                              "that holds the dataset's files")
    if path is not None and not path.is_dir() and not (download and dataset.startswith("cifar")):
        hint = " (install the Debian package dataset-fashion-mnist)" if dataset == "fashion-mnist" else ""
        raise FilterlensError(f"data directory '{path}' for {dataset} does not exist{hint}")

    if spec.in_memory:
        if dataset == "digits":
            train, test, names = _load_digits(split_seed)
        else:
            assert path is not None  # DEFAULT_DATA_DIRS names a folder for every in-memory dataset but digits
            if dataset in ("mnist", "fashion-mnist"):
                train, test, names = _load_idx_dataset(dataset, path)
            else:
                if download:
                    path.mkdir(parents=True, exist_ok=True)
                train, test, names = _load_cifar(dataset, path, download)
        chosen = parse_labels(labels, names)
        size = image_size or spec.image_size
        splits: list[Split] = []
        for x, y in (train, test):
            keep, new = _relabel(y, chosen)
            splits.append(ArraySplit(x[keep], new, spec.mean, spec.std, size if size != spec.image_size else None))
        return Data(dataset, splits[0], splits[1], [names[i] for i in chosen], chosen, spec, size,
                    source=str(path) if path else "scikit-learn")

    assert path is not None  # imagenet: a default folder; imagefolder without one was refused above
    train_s, test_s, names = _load_folder(dataset, path)
    chosen = parse_labels(labels, names)
    new_of = {old: new for new, old in enumerate(chosen)}
    size = image_size or spec.image_size
    splits = []
    for samples, is_train in ((train_s, True), (test_s, False)):
        kept = [(p, new_of[y]) for p, y in samples if y in new_of]
        splits.append(FolderSplit(path, kept, size, spec.mean, spec.std, train=is_train))
    return Data(dataset, splits[0], splits[1], [names[i] for i in chosen], chosen, spec, size, source=str(path))


def _load_glyphs(spec: DatasetSpec, data_dir, labels, image_size) -> Data:
    root = glyphs.check_cache_dir(data_dir if data_dir is not None else glyphs.default_cache_dir())
    names = glyphs.label_names()
    chosen = parse_labels(labels, names)
    size = image_size or spec.image_size  # rendered at this size, never resized
    train, test, info = glyphs.load_glyphs(root, chosen, size)
    t = torch.from_numpy
    splits = [ArraySplit(t(x), t(y), spec.mean, spec.std) for x, y in (train, test)]
    return Data("glyphs", splits[0], splits[1], [names[i] for i in chosen], chosen, spec, size, source=str(root),
                extra=info)


def check_labels_present(data: Data) -> None:
    """Refuse a split in which some label has no sample (names the labels)."""
    for split_name, split in (("train", data.train), ("test", data.test)):
        counts = torch.bincount(split.labels, minlength=data.num_labels)
        empty = [data.label_names[i] for i in range(data.num_labels) if counts[i] == 0]
        if empty:
            raise FilterlensError(
                f"the {split_name} split has no sample of label(s) {', '.join(empty)}; "
                "choose labels present in both splits")
