"""The process' peak resident memory over a stretch of work (a pipeline stage, a benchmark case), and the C
allocator's handling of freed blocks (:func:`keep_freed_memory`).

Linux keeps the peak as ``VmHWM`` in ``/proc/self/status`` and lets a process reset it to its current size
(``clear_refs`` 5, kernels >= 4.0), so a stage's peak is measured from the stage's start even after an earlier
stage peaked higher. Elsewhere the peak is the whole process' so far (``ru_maxrss``), and :func:`reset_peak`
says so by returning False.
"""
from __future__ import annotations

import ctypes
import os
import platform
import resource
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_ABOVE = 64 * 2**20  # blocks up to this size come from the heap, not each from a fresh mapping
KEEP_FREED = 256 * 2**20  # freed memory at the heap's top kept for the next blocks up to this size
_USER_CHOICE = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES", "LD_PRELOAD")
_allocator: str | None = None


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the process' peak resident memory to its current size; False where the system does not allow it
    (then :func:`peak_bytes` is the peak since the process started)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def resident_bytes() -> int:
    """The process' resident memory now, in bytes (``VmRSS``; where the system has no such record, its peak)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else peak_bytes()


def peak_bytes() -> int:
    """The process' peak resident memory in bytes: since the last :func:`reset_peak` that succeeded, else since
    it started."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB


def keep_freed_memory() -> str:
    """Have glibc's allocator keep freed blocks of up to 64 MiB for reuse instead of returning them to the system;
    returns what the process' allocator does now (recorded with every result, :func:`filterlens.utils.environment`).

    torch takes every tensor from the C allocator, and glibc by default maps each block above its threshold
    afresh and returns freed memory at the heap's top at once: a forward pass on the CPU then faults in the pages
    of every batch's activations again (tens of MiB per layer). Measured on this project's 2-core machine, one
    inference pass of the engine benchmark's network over 20,000 images took 5.2-5.5 s with glibc's defaults and
    3.4-3.8 s with these two settings (README, "Memory"). The cost: up to 256 MiB of freed memory stays with the
    process. The command line calls it at its start; a Python caller may call it once (it changes the whole
    process, for good). Where the user chose the allocator's settings (glibc's ``MALLOC_*_`` variables,
    ``GLIBC_TUNABLES``) or another allocator (``LD_PRELOAD``), and off glibc, nothing changes."""
    global _allocator
    if _allocator is not None:
        return _allocator
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        _allocator = "system default (not glibc)"
    elif any(os.environ.get(k) for k in _USER_CHOICE):
        _allocator = "as the environment sets it (" + ", ".join(k for k in _USER_CHOICE if os.environ.get(k)) + ")"
    else:
        libc = ctypes.CDLL(None)
        # both or neither: each one alone turns off glibc's own adjustment of the other (slower than the defaults)
        if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_ABOVE):
            _allocator = "glibc defaults (mallopt refused)"
        else:
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED)  # glibc takes any trim threshold
            _allocator = (f"glibc, freed blocks kept (blocks up to {MMAP_ABOVE >> 20} MiB reused, "
                          f"up to {KEEP_FREED >> 20} MiB kept)")
    return _allocator


def allocator() -> str:
    """What the process' allocator does: :func:`keep_freed_memory`'s answer once it ran, else its defaults."""
    if _allocator is not None:
        return _allocator
    return "glibc defaults" if platform.libc_ver()[0] == "glibc" else "system default"
