"""A user's data as a :class:`~filterlens.data.Data`: the one door through which any dataset comes in.

:func:`as_data` takes, for the train and for the test split, any of

* a pair ``(images, labels)`` of torch tensors or NumPy arrays: images (N, C, H, W) or (N, H, W);
  floating point used as it is, uint8 scaled to [0, 1]; labels N integers;
* a map-style ``torch.utils.data.Dataset`` whose samples are ``(image, label)`` (a ``TensorDataset``,
  a torchvision dataset with a ``ToTensor`` transform, your own) or dicts with an image key
  (``image``, ``img``, ``pixel_values``) and a label key (``label``, ``labels``): read with its own
  transforms, as they are;
* a ``DataLoader`` over such a dataset: its dataset is read, in filterlens' own order and batches;
* a :class:`~filterlens.data.Data` (a named dataset from :func:`filterlens.data.load_data`), alone.

Labels are integers 0..L-1. Their names come from ``labels=``, else from the dataset's ``classes``,
else they are the label indices. The input shape is read from the first sample. Anything else is
refused with one :class:`~filterlens.errors.FilterlensError` naming what was given and what is accepted.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .data import ArraySplit, Data, DatasetSpec, DatasetSplit
from .errors import FilterlensError

ACCEPTED = ("a pair (images, labels) of tensors or NumPy arrays, a map-style torch Dataset of (image, label) "
            "samples, a DataLoader over one, or a filterlens Data (alone)")
IMAGE_KEYS = ("image", "img", "pixel_values")
LABEL_KEYS = ("label", "labels")


def as_data(train: Any, test: Any = None, labels: Sequence[str] | None = None, name: str = "python") -> Data:
    """``train`` and ``test`` (see the module docstring) as one :class:`Data`."""
    if isinstance(train, Data):
        if test is not None:
            raise FilterlensError("a filterlens Data already holds both splits; pass it alone (test=None)")
        if labels is not None:
            raise FilterlensError("labels= names the labels of your own data; a named dataset's Data has its names "
                                  "(choose a subset with load_data(..., labels=...))")
        return train
    first = _split(train, "train")
    if test is None:
        raise FilterlensError(f"test data is missing; give the train and the test split, each {ACCEPTED}")
    splits = [first, _split(test, "test")]
    shapes = [_first_shape(s, w) for s, w in zip(splits, ("train", "test"))]
    if shapes[0] != shapes[1]:
        raise FilterlensError(f"train images have shape {shapes[0]} but test images {shapes[1]}; both splits must "
                              "give inputs of one shape (C, H, W)")
    for split in splits:  # a dataset's samples are read lazily: each one is checked when it is read
        if isinstance(split, DatasetSplit):
            split.shape = shapes[0]
    names = _label_names(labels, [train, test], splits)
    for split, which in zip(splits, ("train", "test")):
        bad = split.labels[(split.labels < 0) | (split.labels >= len(names))]
        if len(bad):
            raise FilterlensError(f"{which} label {int(bad[0])} is outside 0..{len(names) - 1} ({len(names)} label "
                                  "names); labels must be integers 0..L-1")
    c, h, w = shapes[0]
    spec = DatasetSpec(name, c, h, len(names), (), (), 0, False, False)
    return Data(name, splits[0], splits[1], list(names), list(range(len(names))), spec, h,
                source=f"{type(train).__name__} / {type(test).__name__}", shape=(c, h, w))


def _split(obj: Any, which: str):
    """One split: an in-memory :class:`ArraySplit` for tensors and arrays, else a :class:`DatasetSplit`."""
    if isinstance(obj, torch.utils.data.DataLoader):
        if isinstance(obj.dataset, torch.utils.data.IterableDataset):
            raise FilterlensError(f"the {which} DataLoader reads an IterableDataset; filterlens reads every sample by "
                                  "index (twice: capture and test pass): give a map-style Dataset")
        obj = obj.dataset
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and _is_array(obj[0]) and isinstance(obj[1], (list, tuple)):
        obj = (obj[0], _label_list(obj[1], which))  # labels as a Python list
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(_is_array(a) for a in obj):
        return _array_split(obj[0], obj[1], which)
    if isinstance(obj, torch.utils.data.IterableDataset):
        raise FilterlensError(f"the {which} data is an IterableDataset; give a map-style Dataset (samples read by "
                              "index)")
    if isinstance(obj, torch.utils.data.Dataset) or (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")
                                                     and not isinstance(obj, (str, bytes, dict, tuple, list))
                                                     and not _is_array(obj)):
        return _dataset_split(obj, which)
    raise FilterlensError(f"the {which} data is {_what(obj)}; give {ACCEPTED}")


def _is_array(a) -> bool:
    return isinstance(a, (torch.Tensor, np.ndarray))


def _what(obj) -> str:
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(type(a).__name__ for a in obj[:3])
        return f"a {type(obj).__name__} of {len(obj)} ({inner}{', ...' if len(obj) > 3 else ''})"
    return f"a {type(obj).__module__}.{type(obj).__name__}" if type(obj).__module__ != "builtins" else \
        f"a {type(obj).__name__} ({obj!r:.40})"


def _label_list(values, which: str) -> np.ndarray:
    """Labels given as a Python list: integers, else one line naming the first that is not."""
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise FilterlensError(f"{which} label {v!r:.40} is a {type(v).__name__}; labels must be integers 0..L-1 "
                                  "(give the names with labels=[...])")
    return np.asarray(values, dtype=np.int64)


def _array_split(images, labels, which: str) -> ArraySplit:
    if isinstance(labels, np.ndarray) and labels.dtype.kind not in "iub":
        first = labels.reshape(-1)[0] if labels.size else None
        raise FilterlensError(f"{which} labels are a NumPy array of {labels.dtype} ({first!r:.40}, ...); labels must "
                              "be integers 0..L-1 (give the names with labels=[...])")
    if isinstance(images, np.ndarray) and images.dtype.kind not in "uif":
        raise FilterlensError(f"{which} images are a NumPy array of {images.dtype}; give floating-point images or "
                              "uint8")
    x = torch.as_tensor(images) if isinstance(images, np.ndarray) else images
    y = torch.as_tensor(labels) if isinstance(labels, np.ndarray) else labels
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise FilterlensError(f"{which} images have shape {tuple(x.shape)}; expected (N, C, H, W) or (N, H, W)")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise FilterlensError(f"{which} images are {x.dtype}; give floating-point images (used as they are) or uint8 "
                              "(scaled to [0, 1])")
    if y.ndim != 1 or len(y) != len(x):
        raise FilterlensError(f"{which} labels have shape {tuple(y.shape)} for {len(x)} images; give one integer "
                              "label per image")
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise FilterlensError(f"{which} labels are {y.dtype}; give integers 0..L-1")
    if len(x) == 0:
        raise FilterlensError(f"the {which} split is empty; give at least one sample of every label")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise FilterlensError(f"{which} images hold NaN or infinite values")
    return ArraySplit(x.detach().cpu(), y.detach().cpu().long())


def _dataset_split(ds, which: str) -> DatasetSplit:
    n = len(ds)
    if n == 0:
        raise FilterlensError(f"the {which} dataset is empty; give at least one sample of every label")
    try:
        first = ds[0]
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming what it raised
        raise FilterlensError(f"reading sample 0 of the {which} dataset raised {type(exc).__name__}: "
                              f"{str(exc)[:120]}") from None
    keys = _keys(first, which)
    image = first[keys[0]] if keys else first[0]
    if not _is_array(image):
        hint = " (add torchvision.transforms.ToTensor() to its transform)" if type(image).__module__.startswith("PIL") \
            else ""
        raise FilterlensError(f"sample 0 of the {which} dataset has a {type(image).__name__} image; filterlens needs a "
                              f"tensor (C, H, W){hint}")
    labels = _labels_of(ds, n, keys, which)
    return DatasetSplit(ds, labels, keys, which)


def _keys(sample, which: str) -> tuple[str, str] | None:
    if isinstance(sample, dict):
        image = next((k for k in IMAGE_KEYS if k in sample), None)
        label = next((k for k in LABEL_KEYS if k in sample), None)
        if image is None or label is None:
            raise FilterlensError(f"the {which} dataset's samples are dicts with keys {sorted(sample)[:6]}; filterlens "
                                  f"reads an image key ({', '.join(IMAGE_KEYS)}) and a label key "
                                  f"({', '.join(LABEL_KEYS)})")
        return image, label
    if isinstance(sample, (tuple, list)) and len(sample) >= 2:
        return None
    raise FilterlensError(f"the {which} dataset's samples are {_what(sample)}; filterlens reads (image, label) pairs")


def _labels_of(ds, n: int, keys, which: str) -> torch.Tensor:
    """Every sample's label: from the dataset's own record when it keeps one (``targets``, a TensorDataset's
    last tensor, a Subset's indices into those), else read sample by sample once."""
    found = _recorded_labels(ds)
    if found is None or len(found) != n:
        values = []
        for i in range(n):
            item = ds[i]
            values.append(item[keys[1]] if keys else item[1])
        found = values
    out = []
    for v in _flat(found):
        v = v.item() if hasattr(v, "item") else v
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise FilterlensError(f"the {which} dataset has a label {v!r:.40} ({type(v).__name__}); labels must be "
                                  "integers 0..L-1")
        out.append(int(v))
    return torch.tensor(out, dtype=torch.long)


def _recorded_labels(ds):
    if isinstance(ds, torch.utils.data.TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[1]
    if isinstance(ds, torch.utils.data.Subset):
        inner = _recorded_labels(ds.dataset)
        return None if inner is None else [inner[i] for i in ds.indices]
    for attr in ("targets", "labels"):
        v = getattr(ds, attr, None)
        if isinstance(v, (list, tuple, np.ndarray, torch.Tensor)):
            return v
    return None


def _flat(values):
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _first_shape(split, which: str) -> tuple[int, int, int]:
    x = split.images[0] if isinstance(split, ArraySplit) else split[0][0]
    if x.ndim != 3:
        raise FilterlensError(f"{which} images have shape {tuple(x.shape)}; expected (C, H, W) or (H, W)")
    c, h, w = (int(v) for v in x.shape)
    return c, h, w


def _label_names(labels, objs, splits) -> list[str]:
    if labels is not None:
        if isinstance(labels, str) or not all(isinstance(n, (str, int)) for n in labels):
            raise FilterlensError(f"labels= must be a list of label names (strings), one per label, not {labels!r:.60}")
        names = [str(n) for n in labels]
        if len(set(names)) != len(names):
            raise FilterlensError("labels= names a label twice; give each label once")
    else:
        base = objs[0].dataset if isinstance(objs[0], torch.utils.data.DataLoader) else objs[0]
        while isinstance(base, torch.utils.data.Subset):
            base = base.dataset
        classes = getattr(base, "classes", None)
        count = int(max(int(s.labels.max()) for s in splits)) + 1
        names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and len(classes) >= count \
            else [str(i) for i in range(count)]
    if len(names) < 2:
        raise FilterlensError(f"the data has {len(names)} label(s); the method needs at least 2")
    return names
