"""filterlens.memory: the allocator setting that keeps freed blocks, observed from outside (resident memory)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from filterlens import memory

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

# page faults of the median warm forward pass of a small convolutional network, in a fresh process: its maps of
# 40 MiB lie above the largest threshold glibc sets on its own (32 MiB on 64-bit: such blocks are always mapped
# afresh with its defaults) and under the one keep_freed_memory sets (64 MiB)
_FAULTS = """
import resource, sys, torch
from filterlens import memory
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    print(memory.keep_freed_memory(), file=sys.stderr)
nn = torch.nn
net = nn.Sequential(nn.Conv2d(3, 40, 3, padding=1), nn.ReLU(), nn.Conv2d(40, 40, 3, padding=1), nn.ReLU())
x = torch.randn(16, 3, 128, 128)
faults = []
with torch.no_grad():
    for _ in range(3):
        net(x)
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        net(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[2])  # the median pass: the heap may still grow once (2,048 faults in one pass, seen)
"""


def _faults_per_pass(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in memory._USER_CHOICE}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_kept_freed_blocks_spare_every_pass_its_page_faults():
    """With glibc's defaults every forward pass faults its 40 MiB maps' pages in again (about 10,000 faults a map);
    with the freed blocks kept, the median warm pass faults none (a pass where the heap still grows once faulted
    2,048 pages under CI's two workers). Either setting alone leaves the faults (checked by hand)."""
    assert _faults_per_pass("default") > 10000
    assert _faults_per_pass("keep") < 500


def test_the_users_own_allocator_settings_stand(monkeypatch):
    """Where the environment sets glibc's allocator (or preloads another), nothing is called and the record says
    so; a second call answers the same without calling anything either."""
    monkeypatch.setattr(memory, "_allocator", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")

    def refuse(*a, **k):
        raise AssertionError("mallopt called although the user set the allocator")

    monkeypatch.setattr(memory.ctypes, "CDLL", refuse)
    said = memory.keep_freed_memory()
    if GLIBC:
        assert said == "as the environment sets it (MALLOC_TRIM_THRESHOLD_)"
    assert memory.keep_freed_memory() == said == memory.allocator()
