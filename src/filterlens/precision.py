"""The arithmetic a stage runs in: bfloat16 autocast (and channels-last maps) where the hardware has it.

``amp`` (a setting, on by default) asks for mixed precision; what it gives depends on the device:

* CUDA: bfloat16 autocast (float16 on GPUs without bfloat16), channels-last maps for convolutions.
* A CPU with bfloat16 units (x86 with AMX-BF16 or AVX512-BF16, Arm with BF16; found at run time from the
  CPU's flags, :func:`cpu_has_bf16`): bfloat16 autocast with channels-last maps for every inference (the capture
  pass, evaluations); for training only where convolutions hold most of the network's multiply-adds (measured
  once with ``torch.utils.flop_counter`` on one input), because there autocast pays (VGG-16 and resnet20: 2.3x
  and 2.5x per training step on this project's machine), while on a vision transformer of width 128 the casts
  of its many small matrix products cost more than they save (0.7x). ``benchmarks/precision.py`` measures it.
* Any other CPU, or ``amp`` off: float32.

The choice is a :class:`Precision`; every stage records ``Precision.record()`` in its result files.
``FILTERLENS_CPU_BF16=0`` (or ``1``) overrides the CPU detection (tests force both paths with it).
"""
from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn

#: the environment variable that forces the CPU bfloat16 detection on (1) or off (0)
CPU_BF16_ENV = "FILTERLENS_CPU_BF16"
#: CPU training runs in bfloat16 only when convolutions hold at least this share of the forward's multiply-adds
CONV_SHARE_FOR_BF16_TRAINING = 0.5
_X86_FLAGS = ("amx_bf16", "avx512_bf16")


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AMX-BF16 or AVX512-BF16 on x86, BF16 on Arm).

    ``FILTERLENS_CPU_BF16=1`` or ``0`` overrides the detection.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return any(f in flags for f in _X86_FLAGS)


def conv_share(model: nn.Module, input_shape) -> float:
    """The share of one forward pass's multiply-adds (one input of ``input_shape``, (C, H, W)) spent in
    convolutions, counted by ``torch.utils.flop_counter``; 0 when nothing could be counted. The model's
    train/eval mode is restored and nothing is kept."""
    from torch.utils.flop_counter import FlopCounterMode

    from .utils import eval_mode

    try:
        device = next(model.parameters()).device
    except StopIteration:
        return 0.0
    counter = FlopCounterMode(display=False)
    try:
        with eval_mode(model), torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape, device=device))
    except Exception:  # noqa: BLE001 - a model the counter cannot follow is trained in float32
        return 0.0
    ops = counter.get_flop_counts().get("Global", {})
    total = sum(ops.values())
    conv = sum(v for k, v in ops.items() if "convolution" in str(k))
    return conv / total if total else 0.0


def has_conv(model: nn.Module) -> bool:
    """Whether any module of ``model`` is a 2-d convolution (channels-last maps can only help those)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@dataclass(frozen=True)
class Precision:
    """The arithmetic of one stage: ``name`` (``float32``, ``bfloat16`` or ``float16`` autocast) on
    ``device_type``, with channels-last maps or not, and why."""

    name: str = "float32"
    device_type: str = "cpu"
    channels_last: bool = False
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for float32."""
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.name)

    @property
    def reduced(self) -> bool:
        """True for bfloat16 or float16 autocast, False for float32."""
        return self.dtype is not None

    def autocast(self):
        """A context in which the network's forward runs in this precision."""
        if self.dtype is None:
            return torch.autocast(self.device_type, enabled=False) if self.device_type in ("cpu", "cuda") \
                else contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        """An input batch in the memory layout this precision runs the network in."""
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @contextlib.contextmanager
    def running(self, model: nn.Module):
        """``model`` ready to run in this precision inside the block: with channels-last maps, its parameters and
        buffers are channels-last copies while inside, and the very tensors it had are put back on leaving (also
        when something raised), so the caller's model ends exactly as it was, its hooks fire as usual."""
        if not self.channels_last:
            yield model
            return
        params = [(p, p.data) for p in model.parameters()]
        buffers = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
        try:
            model.to(memory_format=torch.channels_last)
            yield model
        finally:
            for p, data in params:
                p.data = data
            for m, name, b in buffers:
                m._buffers[name] = b

    def record(self) -> dict:
        """What the result files say about it."""
        return {"precision": self.name, "channels_last": self.channels_last, "reason": self.reason}


FLOAT32 = Precision()


def _reduced_dtype(device: torch.device) -> str | None:
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bfloat16"
    return None


def for_inference(device, amp: bool, model: nn.Module | None = None) -> Precision:
    """The precision of a forward pass without gradients (capture, evaluation) on ``device``."""
    device = torch.device(device)
    if not amp:
        return Precision("float32", device.type, False, "amp off")
    name = _reduced_dtype(device)
    if name is None:
        return Precision("float32", device.type, False, "no bfloat16 units on this CPU")
    cl = model is not None and has_conv(model)
    return Precision(name, device.type, cl, f"{name} autocast on {'CUDA' if device.type == 'cuda' else 'this CPU'}")


def for_training(device, amp: bool, model: nn.Module, input_shape) -> Precision:
    """The precision of training ``model`` on ``device`` (see the module docstring for the rule)."""
    device = torch.device(device)
    if not amp:
        return Precision("float32", device.type, False, "amp off")
    name = _reduced_dtype(device)
    if name is None:
        return Precision("float32", device.type, False, "no bfloat16 units on this CPU")
    if device.type == "cuda":
        return Precision(name, "cuda", True, f"{name} autocast on CUDA")
    share = conv_share(model, input_shape)
    if share < CONV_SHARE_FOR_BF16_TRAINING:
        return Precision("float32", "cpu", False, f"convolutions hold {share:.0%} of the multiply-adds (< "
                                                  f"{CONV_SHARE_FOR_BF16_TRAINING:.0%}): float32 trains faster")
    return Precision(name, "cpu", has_conv(model), f"bfloat16 autocast on this CPU (convolutions hold {share:.0%} "
                                                    "of the multiply-adds)")
