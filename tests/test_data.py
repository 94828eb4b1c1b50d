"""Tests of filterlens.data: the on-disk formats users have (CIFAR pickles, idx, image folders),
the embedded digits split, label subsets, the batch augmentation and the in-memory loader.

Expected values come from what the tests wrote (pixel arrays, labels, names) or from the
format and dataset descriptions cited in conftest.py, never from the module's own output.
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (
    CIFAR10_NAMES,
    CIFAR100_NAMES,
    FASHION_NAMES,
    FOLDER_COLOURS,
    idx_bytes,
    make_idx_arrays,
    write_idx,
    write_idx_dataset,
)
from filterlens.data import ArraySplit, load_data, parse_labels
from filterlens.errors import FilterlensError
from filterlens.loaders import ArrayLoader, augment_batch, make_loader


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ================================================================================ CIFAR-10/100

def test_cifar10_round_trips_pixels_labels_and_names(cifar10_dir):
    root, w = cifar10_dir
    data = load_data("cifar10", data_dir=root)
    assert data.label_names == CIFAR10_NAMES
    assert data.label_map == list(range(10))
    assert data.num_labels == 10 and data.in_channels == 3 and data.image_size == 32
    assert tuple(data.train.images.shape) == (50, 3, 32, 32)
    assert tuple(data.test.images.shape) == (20, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8
    # every image, in file order (batches 1..5), pixel for pixel
    np.testing.assert_array_equal(_np(data.train.images), w["train_images"])
    np.testing.assert_array_equal(_np(data.train.labels), w["train_labels"])
    np.testing.assert_array_equal(_np(data.test.images), w["test_images"])
    np.testing.assert_array_equal(_np(data.test.labels), w["test_labels"])


def test_cifar10_channel_order_is_rgb_planes(cifar10_dir):
    """A row's first 1024 bytes are the red plane: byte 1024*c + 32*y + x is pixel (c, y, x)."""
    root, w = cifar10_dir
    data = load_data("cifar10", data_dir=root)
    img = w["test_images"][7]
    row = np.concatenate([img[0].ravel(), img[1].ravel(), img[2].ravel()])
    for c, y, x in [(0, 0, 0), (1, 0, 0), (2, 31, 31), (0, 5, 7), (2, 7, 5), (1, 31, 0)]:
        assert int(data.test.images[7, c, y, x]) == int(row[1024 * c + 32 * y + x])


def test_cifar10_first_k_relabels_and_keeps_order(cifar10_dir):
    root, w = cifar10_dir
    data = load_data("cifar10", data_dir=root, labels="first:3")
    assert data.label_names == ["airplane", "automobile", "bird"]
    assert data.label_map == [0, 1, 2]
    keep = w["train_labels"] < 3
    np.testing.assert_array_equal(_np(data.train.images), w["train_images"][keep])
    np.testing.assert_array_equal(_np(data.train.labels), w["train_labels"][keep])
    assert len(data.test) == int((w["test_labels"] < 3).sum())


def test_cifar10_explicit_names_relabel_in_the_order_given(cifar10_dir):
    root, w = cifar10_dir
    data = load_data("cifar10", data_dir=root, labels="cat,airplane,ship")
    assert data.label_names == ["cat", "airplane", "ship"]
    assert data.label_map == [3, 0, 8]
    new_of = {3: 0, 0: 1, 8: 2}
    for split in ("train", "test"):
        keep = np.isin(w[f"{split}_labels"], list(new_of))
        ds = getattr(data, split)
        np.testing.assert_array_equal(_np(ds.images), w[f"{split}_images"][keep])
        np.testing.assert_array_equal(_np(ds.labels), [new_of[int(y)] for y in w[f"{split}_labels"][keep]])


def test_cifar10_indices_and_names_mix(cifar10_dir):
    root, _ = cifar10_dir
    data = load_data("cifar10", data_dir=root, labels=["truck", 1])
    assert data.label_names == ["truck", "automobile"]
    assert data.label_map == [9, 1]


def test_cifar10_random_subset_is_seeded_and_relabelled(cifar10_dir):
    root, w = cifar10_dir
    a = load_data("cifar10", data_dir=root, labels="random:4:7")
    b = load_data("cifar10", data_dir=root, labels="random:4:7")
    assert a.label_map == b.label_map
    assert len(a.label_map) == 4 and len(set(a.label_map)) == 4
    assert all(0 <= i < 10 for i in a.label_map)
    assert a.label_map == sorted(a.label_map)  # ascending for random (module docstring)
    assert a.label_names == [CIFAR10_NAMES[i] for i in a.label_map]
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    # relabelled to 0..3: each kept image's new label points back at its written label
    original = {w["train_images"][i].tobytes(): int(w["train_labels"][i]) for i in range(len(w["train_labels"]))}
    assert len(a.train) == 4 * 5
    for img, y in zip(_np(a.train.images), _np(a.train.labels)):
        assert a.label_map[int(y)] == original[img.tobytes()]
    # the seed matters: ten seeds do not all give the same subset
    maps = {tuple(load_data("cifar10", data_dir=root, labels=f"random:4:{s}").label_map) for s in range(10)}
    assert len(maps) > 1


def test_cifar100_round_trip_uses_fine_labels(cifar100_dir):
    root, w = cifar100_dir
    data = load_data("cifar100", data_dir=root)
    assert data.label_names == CIFAR100_NAMES
    assert tuple(data.train.images.shape) == (200, 3, 32, 32)
    assert tuple(data.test.images.shape) == (100, 3, 32, 32)
    np.testing.assert_array_equal(_np(data.train.images), w["train_images"])
    np.testing.assert_array_equal(_np(data.train.labels), w["train_labels"])  # fine, not coarse
    np.testing.assert_array_equal(_np(data.test.images), w["test_images"])
    np.testing.assert_array_equal(_np(data.test.labels), w["test_labels"])


def test_cifar100_subset_by_names(cifar100_dir):
    root, w = cifar100_dir
    data = load_data("cifar100", data_dir=root, labels="worm,apple,tiger")
    assert data.label_names == ["worm", "apple", "tiger"]
    assert data.label_map == [99, 0, CIFAR100_NAMES.index("tiger")]
    assert len(data.train) == 6 and len(data.test) == 3
    keep = np.isin(w["train_labels"], data.label_map)
    np.testing.assert_array_equal(_np(data.train.images), w["train_images"][keep])
    np.testing.assert_array_equal([data.label_map[int(y)] for y in _np(data.train.labels)],
                                  w["train_labels"][keep])


def test_cifar_missing_files_named(tmp_path, cifar10_dir):
    root, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FilterlensError, match="data_batch_3"):
        load_data("cifar10", data_dir=root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FilterlensError, match="cifar-100-python"):
        load_data("cifar100", data_dir=empty)


def test_cifar_damaged_pickle_is_a_user_error(cifar10_dir):
    root, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02not a pickle at all")
    with pytest.raises(FilterlensError, match="test_batch"):
        load_data("cifar10", data_dir=root)


# ================================================================================ image folders

def test_imagefolder_classes_sorted_and_batches(imagefolder_dir):
    data = load_data("imagefolder", data_dir=imagefolder_dir, image_size=32)
    assert data.label_names == ["apple", "mango", "zebra"]  # sorted, hidden folder ignored
    assert data.num_labels == 3 and data.image_size == 32
    assert len(data.train) == 9 and len(data.test) == 6
    loader = make_loader(data, "test", batch_size=4)
    x, y = next(iter(loader))
    assert tuple(x.shape) == (4, 3, 32, 32) and x.dtype == torch.float32
    assert tuple(y.shape) == (4,)
    xt, yt = next(iter(make_loader(data, "train", batch_size=5, train=True, seed=0)))
    assert tuple(xt.shape) == (5, 3, 32, 32)
    # all images come out: every test image exactly once
    seen = torch.cat([yb for _, yb in make_loader(data, "test", batch_size=4)])
    assert sorted(seen.tolist()) == [0, 0, 1, 1, 2, 2]


def test_imagefolder_pixels_match_the_class_colour(imagefolder_dir):
    """Each class is one solid colour, so resize/crop keep it and ImageNet normalisation gives
    (colour / 255 - mean) / std (mean/std: torchvision's ImageNet statistics)."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    data = load_data("imagefolder", data_dir=imagefolder_dir, image_size=32)
    for split, train in (("test", False), ("train", True)):
        for x, y in make_loader(data, split, batch_size=4, train=train, seed=3):
            for img, label in zip(x, y):
                colour = torch.tensor(FOLDER_COLOURS[data.label_names[int(label)]], dtype=torch.float32)
                want = (colour.view(3, 1, 1) / 255 - mean) / std
                torch.testing.assert_close(img, want.expand(3, 32, 32), atol=2 / 255 / 0.224, rtol=0)


def test_imagefolder_subset(imagefolder_dir):
    data = load_data("imagefolder", data_dir=imagefolder_dir, image_size=32, labels="zebra,apple")
    assert data.label_names == ["zebra", "apple"]
    assert data.label_map == [2, 0]  # positions in the sorted class list apple, mango, zebra
    assert len(data.train) == 6 and len(data.test) == 4
    xs, ys = zip(*make_loader(data, "test", batch_size=2))
    x, y = torch.cat(xs), torch.cat(ys)
    red = x[:, 0].mean(dim=(1, 2)) > x[:, 1].mean(dim=(1, 2))  # zebra is red, apple green
    assert torch.equal(red, y == 0)
    with pytest.raises(FilterlensError, match="pear"):
        load_data("imagefolder", data_dir=imagefolder_dir, image_size=32, labels="zebra,pear")


def test_imagefolder_without_val_is_a_user_error(imagefolder_dir):
    import shutil

    shutil.rmtree(imagefolder_dir / "val")
    with pytest.raises(FilterlensError, match="val"):
        load_data("imagefolder", data_dir=imagefolder_dir, image_size=32)


# ================================================================================ idx files

@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_round_trip(tmp_path, name, layout, gz):
    arrays = make_idx_arrays()
    sub = {"torchvision": ("FashionMNIST" if name == "fashion-mnist" else "MNIST") + "/raw", "flat": ""}[layout]
    write_idx_dataset(tmp_path / sub if sub else tmp_path, arrays, gz)
    data = load_data(name, data_dir=tmp_path)
    assert data.label_names == (FASHION_NAMES if name == "fashion-mnist" else [str(i) for i in range(10)])
    assert data.in_channels == 1 and data.image_size == 28
    assert tuple(data.train.images.shape) == (30, 1, 28, 28)
    np.testing.assert_array_equal(_np(data.train.images)[:, 0], arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(_np(data.train.labels), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(_np(data.test.images)[:, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(_np(data.test.labels), arrays["t10k-labels-idx1-ubyte"])


def test_idx_subset_relabels(tmp_path):
    arrays = make_idx_arrays()
    write_idx_dataset(tmp_path, arrays, gz=True)
    data = load_data("fashion-mnist", data_dir=tmp_path, labels="Bag,Trouser")
    assert data.label_names == ["Bag", "Trouser"] and data.label_map == [8, 1]
    ys = arrays["train-labels-idx1-ubyte"]
    keep = np.isin(ys, [8, 1])
    np.testing.assert_array_equal(_np(data.train.images)[:, 0], arrays["train-images-idx3-ubyte"][keep])
    np.testing.assert_array_equal(_np(data.train.labels), np.where(ys[keep] == 8, 0, 1))


def test_idx_missing_files_named(tmp_path):
    arrays = make_idx_arrays()
    del arrays["t10k-labels-idx1-ubyte"]
    write_idx_dataset(tmp_path, arrays, gz=False)
    with pytest.raises(FilterlensError, match="t10k-labels-idx1-ubyte") as exc:
        load_data("fashion-mnist", data_dir=tmp_path)
    assert "dataset-fashion-mnist" in str(exc.value)
    assert "train-images" not in str(exc.value)  # only the missing one is named


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_idx_truncated_values_is_a_user_error(tmp_path, gz):
    arrays = make_idx_arrays()
    write_idx_dataset(tmp_path, arrays, gz)
    raw = idx_bytes(arrays["train-images-idx3-ubyte"])[:-100]  # the header says 30 images; fewer follow
    target = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    target.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(FilterlensError, match="truncated"):
        load_data("mnist", data_dir=tmp_path)


def test_idx_wrong_magic_is_a_user_error(tmp_path):
    arrays = make_idx_arrays()
    write_idx_dataset(tmp_path, arrays, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 this is a zip file, not idx")
    with pytest.raises(FilterlensError, match="train-labels-idx1-ubyte"):
        load_data("mnist", data_dir=tmp_path)


def test_idx_truncated_header_is_a_user_error(tmp_path):
    arrays = make_idx_arrays()
    write_idx_dataset(tmp_path, arrays, gz=False)
    # magic says 3 dimensions (12 header bytes follow); the file ends after the first one
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"])[:8])
    with pytest.raises(FilterlensError, match="train-images-idx3-ubyte"):
        load_data("mnist", data_dir=tmp_path)


def test_idx_cut_gzip_is_a_user_error(tmp_path):
    arrays = make_idx_arrays()
    path = write_idx(tmp_path / "train-images-idx3-ubyte", arrays.pop("train-images-idx3-ubyte"), gz=True)
    write_idx_dataset(tmp_path, arrays, gz=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FilterlensError, match="train-images-idx3-ubyte"):
        load_data("mnist", data_dir=tmp_path)


def test_missing_data_dir_is_a_user_error(tmp_path):
    with pytest.raises(FilterlensError, match="nowhere"):
        load_data("mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(FilterlensError, match="imagefolder"):
        load_data("imagefolder")


# ================================================================================ digits

def test_digits_split_fixed_stratified_complete_and_disjoint():
    from sklearn.datasets import load_digits

    a, b = load_data("digits"), load_data("digits")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.train.labels, b.train.labels)
    assert a.label_names == [str(i) for i in range(10)]
    assert tuple(a.train.images.shape[1:]) == (1, 8, 8) and a.train.images.dtype == torch.uint8
    n_train, n_test = len(a.train), len(a.test)
    assert n_train + n_test == 1797
    assert 0.1 * 1797 < n_test < 0.5 * 1797

    # digits pixels are integers 0..16 stored as uint8 0..255: 0 -> 0 and 16 -> 255, monotone
    both = torch.cat([a.train.images, a.test.images]).numpy().astype(np.float64)
    assert both.min() == 0 and both.max() == 255
    back = np.round(both * 16 / 255)
    np.testing.assert_allclose(back * 255 / 16, both, atol=0.5)  # every stored value is one of the 17 levels
    # train + test is the whole dataset with multiplicity (so the two are disjoint): compare
    # the multisets of (pixels, label) rows
    d = load_digits()
    ours = np.concatenate([back.reshape(1797, 64),
                           np.concatenate([a.train.labels.numpy(), a.test.labels.numpy()])[:, None]], axis=1)
    theirs = np.concatenate([d.data, d.target[:, None]], axis=1)
    ours = ours[np.lexsort(ours.T[::-1])]
    theirs = theirs[np.lexsort(theirs.T[::-1])]
    np.testing.assert_array_equal(ours, theirs)

    # stratified: each label's share of the test split is the overall share (to within 1 sample)
    frac = n_test / 1797
    total = np.bincount(d.target, minlength=10)
    test_counts = np.bincount(a.test.labels.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - frac * total) <= 1), (test_counts, frac * total)


def test_digits_normalisation_centres_the_training_data():
    """Per-dataset normalisation: the normalised training pixels have mean ~0 and std ~1."""
    data = load_data("digits")
    x = torch.cat([xb for xb, _ in make_loader(data, "train", batch_size=500)])
    assert abs(float(x.mean())) < 0.02
    assert abs(float(x.std()) - 1.0) < 0.02


def test_sample_limits_are_seeded_subsets():
    full = load_data("digits")
    a = load_data("digits", train_samples=100, test_samples=50)
    b = load_data("digits", train_samples=100, test_samples=50)
    assert len(a.train) == 100 and len(a.test) == 50
    assert torch.equal(a.train.images, b.train.images)
    rows = {img.tobytes() for img in full.train.images.numpy()}
    assert all(img.tobytes() in rows for img in a.train.images.numpy())


# ================================================================================ augment_batch

def _batch(n=64, c=2, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) + 0.5  # strictly positive: padding zeros are visible


def test_augment_identity_without_padding_or_flip():
    x = _batch()
    out = augment_batch(x, padding=0, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_augment_outputs_are_windows_of_the_padded_input(p):
    x = _batch(n=64, h=6, w=5)
    out = augment_batch(x, padding=p, flip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = F.pad(x, (p, p, p, p))
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 5])]
        assert hits, f"sample {i} is no window of its padded input"
        offsets.append(hits[0])
    # random crops: many different offsets, including both extremes in each direction
    assert len(set(offsets)) >= min(10, (2 * p + 1) ** 2 - 1)
    dys = {o[0] for o in offsets}
    dxs = {o[1] for o in offsets}
    assert {0, 2 * p} <= dys and {0, 2 * p} <= dxs


def test_augment_flip_flips_some_and_keeps_others():
    x = _batch(n=64)
    out = augment_batch(x, padding=0, flip=True, generator=torch.Generator().manual_seed(2))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54  # about half (p of leaving this range for Binomial(64, 1/2) < 1e-6)


def test_augment_crop_and_flip_together():
    x = _batch(n=32, h=4, w=4)
    p = 1
    out = augment_batch(x, padding=p, flip=True, generator=torch.Generator().manual_seed(3))
    padded = F.pad(x, (p, p, p, p))
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], wdw) or torch.equal(out[i], wdw.flip(-1)) for wdw in windows)


def test_augment_same_generator_state_same_output():
    x = _batch()
    a = augment_batch(x, 2, True, torch.Generator().manual_seed(9))
    b = augment_batch(x, 2, True, torch.Generator().manual_seed(9))
    c = augment_batch(x, 2, True, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ================================================================================ ArrayLoader

def _id_split(n=37):
    """Random images; each label is the sample's index, so batches show which samples they hold."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    return ArraySplit(images, torch.arange(n), (0.0,), (1.0,))


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    batches = list(loader)
    return batches, torch.cat([y for _, y in batches])


def test_array_loader_is_reproducible_per_seed_and_epoch():
    split = _id_split()
    a = ArrayLoader(split, 8, shuffle=True, augment=True, padding=1, flip=True, seed=5)
    b = ArrayLoader(split, 8, shuffle=True, augment=True, padding=1, flip=True, seed=5)
    ba, ya = _epoch(a, 3)
    bb, yb = _epoch(b, 3)
    assert len(ba) == len(bb) == len(a) == 5
    for (xa, la), (xb, lb) in zip(ba, bb):
        assert torch.equal(xa, xb) and torch.equal(la, lb)
    _, y_next = _epoch(a, 4)
    assert not torch.equal(ya, y_next)  # a new epoch, a new order
    c = ArrayLoader(split, 8, shuffle=True, seed=6)
    _, yc = _epoch(c, 3)
    assert not torch.equal(ya, yc)  # another seed, another order


def test_array_loader_covers_every_sample_once_per_epoch():
    split = _id_split(37)
    loader = ArrayLoader(split, 10, shuffle=True, seed=1)
    for epoch in range(3):
        batches, ys = _epoch(loader, epoch)
        assert sorted(ys.tolist()) == list(range(37))
        assert [len(y) for _, y in batches] == [10, 10, 10, 7]
        for x, y in batches:  # images travel with their labels, normalised by (x/255 - 0) / 1
            torch.testing.assert_close(x, split.images[y].float() / 255)


def test_array_loader_without_shuffle_keeps_order():
    split = _id_split(12)
    _, ys = _epoch(ArrayLoader(split, 5), 0)
    assert ys.tolist() == list(range(12))


def test_array_loader_drop_last():
    loader = ArrayLoader(_id_split(37), 10, shuffle=True, drop_last=True)
    batches, ys = _epoch(loader, 0)
    assert len(batches) == len(loader) == 3 and len(ys) == 30


@pytest.mark.parametrize("n", [36, 37])
def test_array_loader_two_ranks_cover_all_samples(n):
    split = _id_split(n)
    per_rank = []
    for rank in range(2):
        loader = ArrayLoader(split, 4, shuffle=True, seed=2, rank=rank, world_size=2)
        batches, ys = _epoch(loader, 1)
        assert len(batches) == len(loader)
        per_rank.append(ys.tolist())
    assert len(per_rank[0]) == len(per_rank[1]) == -(-n // 2)  # equal shares, as DistributedSampler
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(n))
    assert len(set(per_rank[0]) & set(per_rank[1])) == (n % 2)  # only the padding sample repeats


def test_make_loader_train_shuffles_and_augments_digits():
    """train=True: a shuffled permutation of the split; augmented samples are windows of the
    padded input (padding with zeros after normalisation or with black before it)."""
    data = load_data("digits")
    (x0, y0), = list(make_loader(data, "train", 2000, train=False))
    shuffled = make_loader(data, "train", 2000, train=True, seed=0)
    shuffled.set_epoch(0)
    (_, ys), = list(shuffled)
    assert sorted(ys.tolist()) == sorted(y0.tolist()) and not torch.equal(ys, y0)

    (x1, y1), = list(make_loader(data, "train", 2000, train=False, augment=True))  # same order, augmented
    assert torch.equal(y1, y0) and x1.shape == x0.shape
    assert not torch.equal(x1, x0)
    black = float(data.train.normalise(torch.zeros(1, 1, 1, 1, dtype=torch.uint8)))
    changed = 0
    for i in range(0, len(x0), 7):
        found = False
        for p in range(1, 5):
            for fill in (0.0, black):
                padded = F.pad(x0[i], (p, p, p, p), value=fill)
                if any(torch.equal(x1[i], padded[:, dy : dy + 8, dx : dx + 8])
                       for dy in range(2 * p + 1) for dx in range(2 * p + 1)):
                    found = True
                    break
            if found:
                break
        assert found, f"augmented sample {i} is no padded window of the original"
        changed += not torch.equal(x1[i], x0[i])
    assert changed > 0


# ================================================================================ parse_labels

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_parse_labels_forms():
    assert parse_labels(None, NAMES) == list(range(10))
    assert parse_labels("all", NAMES) == list(range(10))
    assert parse_labels("first:2", NAMES) == [0, 1]
    assert parse_labels("first:10", NAMES) == list(range(10))
    assert parse_labels("dog,cat", NAMES) == [5, 3]
    assert parse_labels("9, 0", NAMES) == [9, 0]
    assert parse_labels([4, "ship"], NAMES) == [4, 8]
    r = parse_labels("random:3:11", NAMES)
    assert r == parse_labels("random:3:11", NAMES) and len(set(r)) == 3


def test_parse_labels_digit_names_are_names():
    """For digits the names are "0".."9": "3" means the label named 3 (also index 3)."""
    names = [str(i) for i in range(10)]
    assert parse_labels("3,7", names) == [3, 7]


@pytest.mark.parametrize("spec,needles", [
    ("first:1", ["first:1", "2..10"]),
    ("first:0", ["first:0", "2..10"]),
    ("first:11", ["first:11", "2..10"]),
    ("random:11:0", ["random:11:0", "2..10"]),
    ("random:1:3", ["random:1:3"]),
    ("cat", ["cat", "2..10"]),  # a single label is K = 1
    ("cat,dog,cat", ["cat", "twice"]),
    ("3,3", ["3", "twice"]),
    ("cat,bird,3", ["cat", "twice"]),  # index 3 is cat
    ("cat,dgo", ["dgo", "did you mean 'dog'"]),
    ("airplan,ship", ["airplan", "did you mean 'airplane'"]),
    ("cat,10", ["10", "0..9"]),
    ("cat,-1", ["-1", "0..9"]),
    ("first:x", ["x"]),
    ("first:3:4", ["first:3:4"]),
])
def test_parse_labels_errors(spec, needles):
    with pytest.raises(FilterlensError) as exc:
        parse_labels(spec, NAMES)
    msg = str(exc.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_image_size_resizes_every_split_the_same_way():
    """--image-size N: train and test batches both come out N x N (the test split with the same transform as the
    training split without augmentation), so ImageNet-form models run on small datasets."""
    from filterlens.data import load_data
    from filterlens.loaders import make_loader

    data = load_data("digits", image_size=32)
    assert data.image_size == 32
    for split, train in (("train", True), ("test", False)):
        x, _ = next(iter(make_loader(data, split, 16, train=train)))
        assert x.shape == (16, 1, 32, 32)
    native = load_data("digits")
    a = next(iter(make_loader(native, "test", 4)))[0]
    b = next(iter(make_loader(data, "test", 4)))[0]
    # the same images, upsampled: the mean of each image is kept by bilinear interpolation (up to the borders)
    assert torch.allclose(a.mean((1, 2, 3)), b.mean((1, 2, 3)), atol=0.05)
    assert data.test[0][0].shape == (1, 32, 32)
