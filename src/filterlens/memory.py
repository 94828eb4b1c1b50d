"""The process' peak resident memory over a stretch of work (a pipeline stage, a benchmark case).

Linux keeps the peak as ``VmHWM`` in ``/proc/self/status`` and lets a process reset it to its current size
(``clear_refs`` 5, kernels >= 4.0), so a stage's peak is measured from the stage's start even after an earlier
stage peaked higher. Elsewhere the peak is the whole process' so far (``ru_maxrss``), and :func:`reset_peak`
says so by returning False.
"""
from __future__ import annotations

import resource
import sys


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
