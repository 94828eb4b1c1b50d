"""The one-pass activation engine (DESIGN.md "The capture engine").

:class:`Capture` is a context manager that puts forward hooks on the selected
layers of a frozen model. Inside it, :meth:`Capture.forward` runs one batch
through the model, stops right after the deepest selected layer (nothing
after it is computed), and returns every selected layer's output, detached,
copied (VGG's ReLU is in-place) and, when asked, adaptively max-pooled
(``probe_pool``). On exit the hooks it added, and only those, are removed and
the caller's train/eval mode is restored, also when something raised.

Sinks consume those outputs batch by batch, so memory grows with the batch,
not with the dataset:

* :class:`LabelMeanSink`: per-label float64 sums and counts of every layer's
  (pooled) map; stage 3 needs only these.
* :class:`FeatureCache`: float16 features of every sample, in memory or
  memory-mapped on disk.
* streaming: the caller hands each batch straight to the probes
  (:mod:`filterlens.probes`).
"""
from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import FilterlensError
from .hooks import Tap, run, taps
from .models import Layer
from .models.units import reader
from .precision import FLOAT32, Precision
from .utils import module_modes, restore_modes


def pooled_shape(shape: Sequence[int], pool, unit_kind: str = "filter") -> tuple[int, int, int]:
    """The (C, H, W) a layer's FC sees under ``probe_pool`` (see :func:`filterlens.config.parse_pool`); heads
    and nodes are never pooled (their positions are tokens x d_head, or tokens: the ``tokens`` option reduces
    them)."""
    c, h, w = (int(s) for s in shape)
    if pool is None or unit_kind in ("head", "node"):
        return c, h, w
    kind, arg = pool
    if kind == "size":
        return c, min(h, arg[0]), min(w, arg[1])
    # ("max", N): the largest map, shrinking H and W together, with C*H*W <= N
    if c * h * w <= arg:
        return c, h, w
    s = max(1, int(math.floor(math.sqrt(arg / c))))
    return c, min(h, s), min(w, s)


@dataclass
class CaptureLayer:
    """A selected layer as the probes see it: its model layer and the (pooled) FC input shape."""

    layer: Layer
    shape: tuple[int, int, int]

    @property
    def name(self) -> str:
        """The layer's module path."""
        return self.layer.name

    @property
    def features(self) -> int:
        """The FC's input size: C x H x W of the (pooled) shape."""
        return int(np.prod(self.shape))


class Capture:
    """Hooks on ``layers`` of ``model``; use as ``with Capture(model, layers) as cap: cap.forward(x)``.

    Parameters
    ----------
    model : the frozen network (never modified; put in eval mode while inside).
    layers : :class:`~filterlens.models.Layer` objects from ``list_layers``.
    pool : parsed ``probe_pool`` (None, ("size", (H, W)) or ("max", N)).
    precision : the arithmetic of the forward pass (:mod:`filterlens.precision`; default float32). With
        channels-last maps, ``model``'s tensors are channels-last copies inside the block and its own tensors
        are put back on leaving.
        The captured maps come back in float32, or in the autocast dtype when that is bfloat16 (the values the
        network computed; half the bytes to move).
    """

    def __init__(self, model: nn.Module, layers: Sequence[Layer], pool=None, precision: Precision = FLOAT32):
        if not layers:
            raise FilterlensError("no layer selected for capture; select at least one layer")
        names = dict(model.named_modules())
        for l in layers:
            if l.hook_module not in names:
                raise FilterlensError(f"layer '{l.name}' is not a module of this model")
        self.model = model
        self.precision = precision
        self.layers = [CaptureLayer(l, pooled_shape(l.shape, pool, l.unit_kind)) for l in layers]
        self.pool = pool
        self._handles: list = []
        self._stack: ExitStack | None = None
        self._out: dict[str, torch.Tensor] = {}
        self._deepest = max(layers, key=lambda l: l.index).name
        self._was_training: dict | None = None

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> "Capture":
        self._was_training = module_modes(self.model)
        self.model.eval()
        self._stack = ExitStack()
        try:
            self._stack.enter_context(self.precision.running(self.model))  # channels-last while inside
            self._handles = self._stack.enter_context(
                taps(self.model, {cl.name: self._tap(cl) for cl in self.layers}, stop=self._deepest))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._stack is not None:
            self._stack.close()  # the hooks this capture added, and only those
            self._stack = None
        self._handles = []
        self._out.clear()
        if self._was_training is not None:
            restore_modes(self._was_training)
            self._was_training = None

    def _tap(self, cl: CaptureLayer) -> Tap:
        """The layer's units read as :mod:`filterlens.models.units` says, detached, copied (in-place ops later in
        the network must not change them) or pooled, in float32."""
        name, target = cl.name, cl.shape[1:]
        pre, read = reader(cl.layer.layout, cl.layer.units, cl.layer.tokens)
        keep = torch.bfloat16 if self.precision.dtype == torch.bfloat16 else torch.float32

        def record(*args):
            x = read(*args)
            if x is None:
                raise FilterlensError(f"layer '{name}' gives no 4-D map; only 4-D maps, attention heads and nodes "
                                      "(N x F or N x T x F) can be analysed")
            x = x.detach()
            if tuple(x.shape[2:]) != target:
                x = F.adaptive_max_pool2d(x, target)  # a new tensor
            elif x.dtype == keep:  # a copy that in-place ops later in the network cannot change
                x = x.clone(memory_format=torch.contiguous_format)
            self._out[name] = x.to(keep, memory_format=torch.contiguous_format)

        return Tap(cl.layer.hook_module, record, pre)

    # -- work ----------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every selected layer's (pooled) output for the batch ``x``, (N, C, H, W), contiguous, in float32 (or
        bfloat16 under bfloat16 autocast)."""
        if not self._handles:
            raise RuntimeError("Capture.forward called outside its 'with' block")
        self._out = {}
        # no_grad rather than inference_mode: the captured tensors feed the probes' autograd
        # in streaming mode, which inference tensors cannot do; either way nothing is attached
        # to a graph of the frozen network.
        with torch.no_grad(), self.precision.autocast():
            run(self.model, self.precision.batch(x))
        out, self._out = self._out, {}
        return out


def num_hooks(model: nn.Module) -> int:
    """Total forward hooks registered on ``model``'s modules (tests check none is left behind)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class LabelMeanSink:
    """Per-label float64 sums and counts of every layer's map: stage 3's only input from the data."""

    def __init__(self, layers: Sequence[CaptureLayer], num_labels: int, device="cpu"):
        self.num_labels = num_labels
        self.sums = {cl.name: torch.zeros((num_labels, *cl.shape), dtype=torch.float64, device=device)
                     for cl in layers}
        self.counts = torch.zeros(num_labels, dtype=torch.float64, device=device)

    def update(self, feats: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        """Add one batch: per layer, the batch's per-label sums as one float32 matrix product (one-hot labels x
        maps: the maps are read once, nothing scattered), then added to the float64 totals (a batch's float32
        sums are exact to about 1e-7 of their size; the totals over batches keep float64)."""
        onehot = torch.zeros((self.num_labels, len(y)), dtype=torch.float32, device=y.device)
        onehot[y, torch.arange(len(y), device=y.device)] = 1.0
        for name, f in feats.items():
            total = self.sums[name]
            part = torch.mm(onehot.to(f.device), f.reshape(len(y), -1).float())
            total.view(self.num_labels, -1).add_(part.to(total.device))
        self.counts += torch.bincount(y, minlength=self.num_labels).double().to(self.counts.device)

    def means(self) -> dict[str, torch.Tensor]:
        """Per layer, the per-label mean maps, (L, C, H, W) in float64 (a label without samples: zeros)."""
        c = self.counts.clamp_min(1).view(-1, 1, 1, 1)
        return {name: s / c for name, s in self.sums.items()}

    def all_reduce(self) -> None:
        """Sum over processes (torch.distributed), so every rank holds the global sums."""
        from . import distributed as dist_

        for s in self.sums.values():
            dist_.all_reduce_(s)
        dist_.all_reduce_(self.counts)


class FeatureCache:
    """Half-precision features of every sample for each layer, in memory (host or GPU) or memory-mapped on disk.

    All layers share one (N, sum of features) array (``data``; the file ``{prefix}.f16`` when
    memory-mapped); ``features[name]`` is the layer's (N, F) column block of it, a view. One
    row gather then fetches a mini-batch of every layer at once. ``device``: where ``data`` and
    ``labels`` live (default the host; a GPU keeps captured features where the probes train).
    ``dtype``: float16 (default) or bfloat16 (where the probes compute in bfloat16: its matrix products run
    on the CPU's bfloat16 units straight from the cache; on disk its bits are stored as uint16).
    """

    DTYPES = (torch.float16, torch.bfloat16)

    def __init__(self, layers: Sequence[CaptureLayer], num_samples: int, directory: Path | None = None,
                 prefix: str = "train", device=None, _mode: str = "w+", dtype: torch.dtype = torch.float16):
        if dtype not in self.DTYPES:
            raise ValueError(f"a feature cache holds float16 or bfloat16, not {dtype}")
        self.dtype = dtype
        device = torch.device(device or "cpu")
        if directory is not None and device.type != "cpu":
            raise ValueError("a memory-mapped feature cache lives on the host; give directory or device, not both")
        self.num_samples = num_samples
        self.directory = directory
        self._filled = 0
        self.offsets: dict[str, tuple[int, int]] = {}
        total = 0
        for cl in layers:
            self.offsets[cl.name] = (total, total + cl.features)
            total += cl.features
        if directory is None:
            self.data = torch.empty((num_samples, total), dtype=dtype, device=device)
            self.labels = torch.empty(num_samples, dtype=torch.long, device=device)
        else:  # {prefix}.f16 (the features) and {prefix}.labels (int64), both .npy memory maps
            directory.mkdir(parents=True, exist_ok=True)
            bits = np.float16 if dtype == torch.float16 else np.uint16  # numpy has no bfloat16: its bits
            self._maps = [np.lib.format.open_memmap(directory / f"{prefix}.f16", mode=_mode, dtype=bits,
                                                    shape=(num_samples, total)),
                          np.lib.format.open_memmap(directory / f"{prefix}.labels", mode=_mode, dtype=np.int64,
                                                    shape=(num_samples,))]
            if _mode == "r+":
                for arr, want in zip(self._maps, ((num_samples, total), (num_samples,))):
                    if arr.shape != want:
                        raise ValueError(f"cache file has shape {arr.shape}, expected {want}")
                self._filled = num_samples
            self.data, self.labels = (torch.from_numpy(a) for a in self._maps)
            if dtype == torch.bfloat16:
                self.data = self.data.view(torch.bfloat16)
        self.features: dict[str, torch.Tensor] = {name: self.data[:, a:b] for name, (a, b) in self.offsets.items()}

    @classmethod
    def open(cls, layers: Sequence[CaptureLayer], num_samples: int, directory: Path, prefix: str,
             dtype: torch.dtype = torch.float16) -> "FeatureCache":
        """A complete memory-mapped cache written earlier (the caller checked its completion marker)."""
        return cls(layers, num_samples, directory, prefix, _mode="r+", dtype=dtype)

    def flush(self) -> None:
        """Write a memory-mapped cache's pages to its files."""
        for arr in getattr(self, "_maps", []):
            arr.flush()

    #: a memory-mapped cache hands back its resident pages every this many bytes read or written (None: never),
    #: so the process' memory stays near the budget however large the file (the OS keeps them in its page cache)
    release_every: int | None = None

    def touch(self, nbytes: int) -> None:
        """Count bytes read or written through the memory map; past ``release_every``, drop its resident pages."""
        if self.release_every is None or not hasattr(self, "_maps"):
            return
        self._touched = getattr(self, "_touched", 0) + nbytes
        if self._touched >= self.release_every:
            import mmap

            for arr in self._maps:
                arr.flush()
                if hasattr(arr, "_mmap") and hasattr(arr._mmap, "madvise"):
                    arr._mmap.madvise(mmap.MADV_DONTNEED)
            self._touched = 0

    @staticmethod
    def nbytes(layers: Sequence[CaptureLayer], num_samples: int) -> int:
        """Bytes a cache of ``layers`` for ``num_samples`` samples takes: 2 per feature (half precision)."""
        return 2 * num_samples * sum(cl.features for cl in layers)

    def update(self, feats: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        """Append one batch: per layer its features (n, ...) as n rows of its column block, and the
        labels (n,); more rows than the cache was sized for is an error."""
        n = len(y)
        a, b = self._filled, self._filled + n
        if b > self.num_samples:
            raise RuntimeError("more samples than the cache was sized for")
        for name, f in feats.items():  # halved where it was computed, then moved (if at all)
            self.features[name][a:b] = f.reshape(n, -1).to(self.dtype).to(self.data.device)
        self.labels[a:b] = y.to(self.labels.device)
        self._filled = b
        self.touch(2 * n * self.data.shape[1])

    @property
    def complete(self) -> bool:
        """True when every one of ``num_samples`` rows has been written."""
        return self._filled == self.num_samples


def capture_pass(capture: Capture, loader: Iterable, sinks: Sequence, progress=None) -> int:
    """One pass of ``loader`` through the hooked model, every batch sent to every sink. Returns samples seen."""
    seen = 0
    it = progress(loader) if progress else loader
    for x, y in it:
        feats = capture.forward(x)
        for sink in sinks:
            sink.update(feats, y)
        seen += len(y)
    return seen
