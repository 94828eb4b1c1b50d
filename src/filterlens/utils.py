"""Seeding, devices and the environment record every result carries."""
from __future__ import annotations

import logging
import os
import platform
import random
import sys
from contextlib import contextmanager

import numpy as np
import torch

log = logging.getLogger("filterlens")


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (DataLoader generators derive from it)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextmanager
def global_rng_kept():
    """Inside the block filterlens may seed Python's, NumPy's and torch's global generators (its ``seed``, and the
    random draws of torchvision transforms); on leaving, even by an exception, they are put back as the caller had
    them, so calling the library never changes a user's own random state."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def keeps_global_rng(fn):
    """Decorate a public entry point so that it leaves the global generators as it found them
    (:func:`global_rng_kept`)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with global_rng_kept():
            return fn(*args, **kwargs)

    return wrapper


def derive_seed(seed: int, k: int) -> int:
    """The seed of stream ``k`` (an epoch, a rank, a layer) of a run seeded ``seed``: every generator of
    filterlens draws from one of these, so two streams of one run never share a seed."""
    return int(seed) * 1_000_003 + int(k)


def module_modes(model: torch.nn.Module) -> dict:
    """Every module's own train/eval flag (a model in train mode may hold frozen, eval-mode parts)."""
    return {m: m.training for m in model.modules()}


def restore_modes(modes: dict) -> None:
    """Put back every module's train/eval flag that :func:`module_modes` recorded."""
    for m, flag in modes.items():
        m.training = flag


@contextmanager
def eval_mode(model: torch.nn.Module):
    """``model`` in eval mode inside the block; every module's own flag restored afterwards."""
    modes = module_modes(model)
    model.eval()
    try:
        yield model
    finally:
        restore_modes(modes)


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device of ``device``: ``auto`` is CUDA when available, else the CPU; an invalid name, or
    CUDA without a GPU, is refused in one line."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:  # pragma: no cover - message from torch
        from .errors import FilterlensError

        raise FilterlensError(f"device '{device}' is not valid; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import FilterlensError

        raise FilterlensError(f"device '{device}' asked for but no CUDA GPU is available; use --device cpu")
    return dev


def environment() -> dict:
    """Versions and machine, recorded in every result file."""
    import sklearn
    import torchvision

    from .version import __version__

    env = {
        "filterlens": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return env
