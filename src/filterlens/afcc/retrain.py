"""Masked retraining of the diluted network (METHOD.md stage 5).

The masked convs, the batch-norm affine parameters of their blocks and the FC are trained
with SGD, the masks re-applied (``weight.mul_(mask)``) after EVERY optimiser step; every
other parameter is frozen (``requires_grad=False``). Choices the papers leave open (recorded in
the results): momentum 0.9 (no Nesterov), weight decay 0, constant learning rate 0.01,
mini-batch 100, 3 epochs, augmentation off, seeded. Batch norm stays in EVAL mode: its
running statistics were estimated on the unmasked network, and updating them on a few epochs
of masked activations would change layers the masks did not touch.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import FilterlensError
from ..progress import progress_bar
from ..utils import derive_seed
from .diluted import trainable_parameters
from .masks import LayerMask


class TensorLoader:
    """Mini-batches of ready tensors (e.g. cached activations), shuffled by a generator seeded by (seed, epoch)."""

    def __init__(self, x, y, batch_size: int = 100, shuffle: bool = True, seed: int = 0):
        self.x, self.y, self.batch_size, self.shuffle, self.seed, self.epoch = x, y, int(batch_size), shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose shuffle the next iteration uses (the order is seeded by (seed, epoch))."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, self.epoch)))
        else:
            idx = torch.arange(n)
        for s in range(0, n, self.batch_size):
            b = idx[s : s + self.batch_size].to(self.x.device)
            yield self.x[b], self.y[b]


def retrain(net, masks: Sequence[LayerMask], loader, epochs: int = 3, lr: float = 0.01, momentum: float = 0.9,
            weight_decay: float = 0.0, start: int = 0, seed: int = 0, progress: bool = False) -> list[dict]:
    """Masked retraining, in place (METHOD.md stage 5): returns the per-epoch history.

    Only :func:`trainable_parameters` are updated (SGD with ``momentum``, ``weight_decay``,
    constant ``lr``, cross-entropy); all other parameters have ``requires_grad=False`` during
    the call (the caller's flags are restored afterwards). The masks are re-applied
    (``weight.mul_(mask)`` under no_grad) after EVERY optimiser step, so every masked weight is
    exactly 0.0 throughout. The network stays in EVAL mode: batch norm uses its frozen running
    statistics (its affine parameters in the masked blocks still train). ``loader`` yields
    (input at trunk position ``start``, label) batches and is re-iterated each epoch
    (``set_epoch`` is called when it has one).
    """
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise FilterlensError(f"retrain epochs {epochs!r} is invalid; use an integer >= 0")
    if not lr > 0:
        raise FilterlensError(f"retrain learning rate {lr!r} is invalid; use a number > 0")
    names = trainable_parameters(net, masks)
    params = dict(net.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    pairs = [(params[m.param], m.mask.reshape(params[m.param].shape).to(params[m.param].device, params[m.param].dtype))
             for m in masks]
    history = []
    was_training = net.training
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        opt = torch.optim.SGD([params[n] for n in names], lr=lr, momentum=momentum, weight_decay=weight_decay)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p, m in pairs:
                p.mul_(m)
        net.eval()  # batch norm: frozen running statistics (documented choice)
        for epoch in range(int(epochs)):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            loss_sum, correct, total = 0.0, 0, 0
            for x, y in progress_bar(loader, progress, desc=f"retrain epoch {epoch + 1}/{epochs}"):
                out = net(x, start=start)
                loss = F.cross_entropy(out, y)
                if not torch.isfinite(loss):
                    raise FilterlensError(f"retraining loss became {loss.item()} in epoch {epoch + 1}; lower the "
                                          f"retrain learning rate (now {lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for p, m in pairs:
                        p.mul_(m)
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(1) == y).sum().item()
                total += len(y)
            history.append({"epoch": epoch + 1, "loss": loss_sum / max(total, 1),
                            "train_accuracy": correct / max(total, 1)})
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        net.train(was_training)
    return history


def accuracy(net, loader, start: int = 0, precision=None) -> float:
    """Test accuracy of ``net`` in eval mode on (input at trunk position ``start``, label) batches, its forward
    pass in ``precision`` (:mod:`filterlens.precision`; default float32)."""
    from ..precision import FLOAT32

    precision = precision or FLOAT32
    was = net.training
    net.eval()
    correct = total = 0
    try:
        with torch.no_grad(), precision.running(net), precision.autocast():
            for x, y in loader:
                correct += (net(precision.batch(x), start=start).argmax(1) == y).sum().item()
                total += len(y)
    finally:
        net.train(was)
    return correct / max(total, 1)

