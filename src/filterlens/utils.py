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
def global_state_kept():
    """Inside the block filterlens may seed Python's, NumPy's and torch's global generators (its ``seed``, and the
    random draws of torchvision transforms) and set torch's CPU thread count (the ``threads`` setting); on leaving,
    even by an exception, they are put back as the caller had them, so calling the library never changes a user's
    own random state or threads."""
    py, npy = random.getstate(), np.random.get_state()
    threads = torch.get_num_threads()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)


def keeps_global_state(fn):
    """Decorate a public entry point so that it leaves the global generators and torch's thread count as it found
    them (:func:`global_state_kept`)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with global_state_kept():
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


def use_threads(threads: int, device: torch.device | None = None) -> int:
    """Set torch's CPU threads to ``threads`` (the ``threads`` setting; 0 leaves torch's choice, one per core);
    returns the count in use. Inside a :func:`keeps_global_state` entry point the caller's count comes back. For
    work on the CPU, logs :func:`busy_threads_note` (once per process) when other processes hold the cores."""
    global _busy_noted
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(int(threads))
    if not _busy_noted and (device is None or torch.device(device).type == "cpu"):
        _busy_noted = True
        note = busy_threads_note(threads)
        if note:
            log.warning(note)
    return torch.get_num_threads()


_busy_noted = False  # the busy-cores note is said once per process


def busy_cores(samples: int = 3, gap: float = 0.02) -> int | None:
    """How many cores other processes keep busy now: the kernel's count of runnable tasks (``/proc/loadavg``),
    less this process, the smallest of ``samples`` readings ``gap`` seconds apart (a passing process is not a busy
    core); None where the count cannot be read (not Linux)."""
    import time

    seen = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as fh:
                seen.append(int(fh.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < samples:
            time.sleep(gap)
    return max(0, min(seen))


def busy_threads_note(threads: int, busy: int | None = None) -> str | None:
    """One line when torch's CPU threads (``threads``, 0: torch's count) outnumber the cores that other processes
    leave free (``busy``, default :func:`busy_cores`), else None. A thread that waits on a core another job holds
    stalls every operation: a small network trained with 2 threads next to one busy job on 2 cores ran 45x slower
    than with 1 thread (README, "Threads")."""
    busy = busy_cores() if busy is None else busy
    if busy is None:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    used = threads or torch.get_num_threads()
    free = max(1, cores - busy)
    if used <= free:
        return None
    return (f"note: {used} CPU threads, but other processes keep {busy} of the {cores} cores busy: threads that share "
            f"a core with another job wait on each other (many times slower); --threads {free} uses the free cores")


def environment() -> dict:
    """Versions and machine, recorded in every result file."""
    import sklearn
    import torchvision

    from . import memory
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
        "threads": torch.get_num_threads(),  # CPU threads in use (sums over threads differ in the last bits)
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "allocator": memory.allocator(),  # the command line keeps freed blocks (filterlens.memory)
    }
    return env
