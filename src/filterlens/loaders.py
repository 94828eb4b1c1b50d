"""Batches: the loaders of every split, and the :class:`Feed` one analysis reads from.

A :class:`~filterlens.data.Data` holds the splits; this module turns them into mini-batches.
In-memory splits (:class:`~filterlens.data.ArraySplit`) are batched without per-sample Python work
(:class:`ArrayLoader`, augmentation on whole batches); any other split (an image folder, a user's
dataset) goes through a ``torch.utils.data.DataLoader`` (:class:`DatasetLoader`). Every order and
every augmentation is drawn from generators seeded by (seed, epoch), so a resumed run sees the
same batches. Under torchrun each rank reads its shard (:func:`shard_indices`).

A :class:`Feed` is built once where the data comes in (``analyze``, ``afcc.apply``) and handed
down: the probes, the engine and AFCC read their batches from it and build no loader of their own.
"""
from __future__ import annotations

import copy
from typing import Iterator

import torch
import torch.nn.functional as F

from .data import ArraySplit, Data
from .errors import FilterlensError
from .utils import derive_seed


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
        """The epoch whose order and augmentation the next iteration draws (seeded by (seed, epoch))."""
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
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
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


class DatasetLoader:
    """A ``DataLoader`` over any map-style split (an image folder, a user's dataset), with the interface of
    :class:`ArrayLoader`. A split with an ``augment`` switch (:class:`~filterlens.data.FolderSplit`) gets it
    set on a copy; a user's dataset is read with its own transforms, as it is."""

    def __init__(self, split, batch_size: int, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, device="cpu", num_workers: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1, pad: bool = True):
        self.split = split
        if hasattr(split, "augment"):
            self.split = copy.copy(split)
            self.split.augment = augment
        self.seed, self.epoch, self.device = seed, 0, torch.device(device)
        self.batch_size, self.shuffle, self.num_workers, self.drop_last = batch_size, shuffle, num_workers, drop_last
        self.rank, self.world_size, self.pad = rank, world_size, pad

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shuffle the next iteration draws (seeded by (seed, epoch))."""
        self.epoch = epoch

    def _loader(self, sampler=None):
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        if sampler is not None:
            pass
        elif self.world_size > 1 and not self.pad and not self.shuffle:  # evaluation: each sample on one rank
            sampler = range(self.rank, len(self.split), self.world_size)
        elif self.world_size > 1:
            sampler = torch.utils.data.DistributedSampler(self.split, self.world_size, self.rank,
                                                          shuffle=self.shuffle, seed=self.seed)
            sampler.set_epoch(self.epoch)
        return torch.utils.data.DataLoader(
            self.split, batch_size=self.batch_size, shuffle=self.shuffle and sampler is None, sampler=sampler,
            num_workers=self.num_workers, generator=gen, drop_last=self.drop_last,
            pin_memory=self.device.type == "cuda", persistent_workers=False, collate_fn=_collate)

    def __len__(self) -> int:
        return len(self._loader())

    def __iter__(self):
        return self._batches(self._loader())

    def in_order(self, order: torch.Tensor):
        """Batches holding exactly the samples ``order``, in that order."""
        return self._batches(self._loader(order.tolist()))

    def _batches(self, loader):
        torch.manual_seed(derive_seed(self.seed, self.epoch))  # torchvision transforms draw from the global RNG
        try:
            for x, y in loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except FilterlensError as exc:  # from a worker process, the message carries the worker's traceback
            raise FilterlensError(str(exc).strip().splitlines()[-1].removeprefix("filterlens.errors.FilterlensError: ")
                                  ) from None


def _collate(batch):
    """Stack a batch of (image tensor, int label) samples (what every split's ``__getitem__`` returns)."""
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.as_tensor(ys, dtype=torch.long)


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
    ds = data.train if split == "train" else data.test
    device = torch.device(device)
    if isinstance(ds, ArraySplit):
        gen = torch.Generator().manual_seed(derive_seed(seed, epoch))
        for b in order.split(batch_size):
            x = ds.normalise(ds.images[b].to(device, non_blocking=True))
            if augment:
                x = augment_batch(x, data.spec.crop_padding, data.spec.flip, gen)
            yield ds.resize(x), ds.labels[b].to(device, non_blocking=True)
        return
    loader = DatasetLoader(ds, batch_size, augment=augment, seed=seed, device=device, num_workers=num_workers)
    loader.set_epoch(epoch)
    yield from loader.in_order(order)


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
    return DatasetLoader(ds, batch_size, shuffle=train, augment=aug, seed=seed, device=device,
                        num_workers=num_workers, rank=rank, world_size=world_size, pad=pad)


class Feed:
    """Every batch one analysis reads, built once where the data comes in and handed down.

    ``train``: this rank's training samples, unshuffled, no augmentation (padded to equal length under
    torchrun), the capture pass's order; ``test``: this rank's test samples, unshuffled, each on one rank.
    :meth:`ordered` yields training batches in a given order (the streaming engine walks the cache's
    permutation); :meth:`shuffled` is a training loader (AFCC's retraining). ``test_index``: the global
    index of each test sample this rank reads, in order.
    """

    def __init__(self, data: Data, device="cpu", seed: int = 0, num_workers: int = 0, rank: int = 0,
                 world_size: int = 1, batch_size: int = 256):
        self.data, self.device, self.seed, self.num_workers = data, torch.device(device), seed, num_workers
        self.rank, self.world_size = rank, world_size
        self.train = make_loader(data, "train", batch_size, device=self.device, augment=False,
                                 num_workers=num_workers, rank=rank, world_size=world_size)
        self.test = make_loader(data, "test", batch_size, device=self.device, num_workers=num_workers, rank=rank,
                                world_size=world_size, pad=False)
        self.train_index = shard_indices(len(data.train), rank, world_size, pad=True)
        self.test_index = shard_indices(len(data.test), rank, world_size, pad=False)

    @property
    def num_labels(self) -> int:
        """The number of labels L of the data."""
        return self.data.num_labels

    @property
    def n_train(self) -> int:
        """Training samples this rank reads (padded under torchrun)."""
        return len(self.train_index)

    @property
    def n_test(self) -> int:
        """Test samples this rank reads (each test sample on exactly one rank)."""
        return len(self.test_index)

    def describe(self) -> dict:
        """The data as the result files record it (:meth:`filterlens.data.Data.describe`)."""
        return self.data.describe()

    def ordered(self, order: torch.Tensor, batch_size: int, augment: bool = False, epoch: int = 0):
        """Training batches holding exactly the samples ``order`` (global indices), in that order."""
        return batches_in_order(self.data, "train", order, batch_size, self.device, augment, self.seed, epoch,
                                self.num_workers)

    def shuffled(self, batch_size: int, augment: bool = False, seed: int | None = None):
        """A shuffled training loader (re-seeded each epoch through ``set_epoch``)."""
        return make_loader(self.data, "train", batch_size, train=True, seed=self.seed if seed is None else seed,
                           device=self.device, augment=augment, num_workers=self.num_workers)

    def test_batches(self, batch_size: int):
        """The test split in batches of ``batch_size`` (single process)."""
        return make_loader(self.data, "test", batch_size, device=self.device, num_workers=self.num_workers)
