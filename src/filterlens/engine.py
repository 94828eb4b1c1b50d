"""How the probes get their features (DESIGN.md, "The capture engine"): memory, layer groups, disk or streaming.

* ``memory``: one capture pass caches every selected layer's float16 features (host, or the GPU when
  they fit half its free memory); every probe trains from the cache.
* ``groups``: the layers are packed into the fewest groups whose caches fit the budget (first fit,
  largest layer first); one capture pass per group (each stops after its group's deepest layer),
  the group's probes trained from its cache, which is then freed.
* ``disk``: the cache memory-mapped in a directory, filled once (``{prefix}.f16`` plus a marker
  written only once the fill is complete, so an interrupted fill is never read as complete; a
  resumed analysis with the same model, layers and data reuses a complete one), read back row by
  row in the shared order; removed once the probes are trained.
* ``stream``: one forward pass per probe epoch that updates every probe (augmentation forces it).

Whichever cache is used, a layer's probe starts from the same weights and sees the same mini-batches
in the same order, so memory, groups and disk give identical probe weights; streaming differs only
by the cache's float16 rounding. ``auto`` takes ``memory`` when the cache fits the budget, else the
cheapest of groups, disk and stream by a cost estimate from throughputs measured at the start of the
run (the network's forward pass on a few batches per group, the disk's write and read speed on a
scratch file): passes x forward time, against one pass plus writing and reading the cache every
epoch, against one pass per epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .capture import Capture, CaptureLayer, FeatureCache
from .errors import FilterlensError
from .files import TMP_SUFFIX, read_json, write_json

ENGINES = ("auto", "memory", "groups", "disk", "stream")


@dataclass
class EnginePlan:
    """The engine a probe stage runs, the layer groups (one capture pass each) and why."""

    engine: str  # memory | groups | disk | stream
    groups: list[list[CaptureLayer]]
    cache_dir: Path | None = None
    cache_device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    note: str = ""
    estimates: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"engine": self.engine, "groups": [[cl.name for cl in g] for g in self.groups],
                "capture_passes": len(self.groups) if self.engine != "stream" else None, "note": self.note,
                "estimates": self.estimates, "cache_dir": str(self.cache_dir) if self.cache_dir else None}


def group_layers(layers: Sequence[CaptureLayer], rows: int, budget: int) -> list[list[CaptureLayer]] | None:
    """The fewest groups (first fit, largest first) whose float16 caches of ``rows`` samples fit ``budget``,
    each in forward order, the groups ordered by their deepest layer; None when one layer alone is too big."""
    size = {cl.name: FeatureCache.nbytes([cl], rows) for cl in layers}
    if any(s > budget for s in size.values()):
        return None
    bins: list[list[CaptureLayer]] = []
    room: list[int] = []
    for cl in sorted(layers, key=lambda c: -size[c.name]):
        for i, free in enumerate(room):
            if size[cl.name] <= free:
                bins[i].append(cl)
                room[i] -= size[cl.name]
                break
        else:
            bins.append([cl])
            room.append(budget - size[cl.name])
    order = {cl.name: i for i, cl in enumerate(layers)}
    groups = [sorted(b, key=lambda c: order[c.name]) for b in bins]
    return sorted(groups, key=lambda g: order[g[-1].name])


def forward_seconds(model, layers: Sequence[CaptureLayer], pool, loader, batches: int = 2) -> float:
    """Seconds per sample of a capture pass over ``layers`` (stopping after the deepest), from a few batches
    after one warm-up batch."""
    with Capture(model, [cl.layer for cl in layers], pool) as cap:
        seen, spent = 0, 0.0
        for i, (x, y) in enumerate(loader):
            t0 = time.perf_counter()
            cap.forward(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            if i > 0:
                spent += time.perf_counter() - t0
                seen += len(y)
            if i >= batches:
                break
    return spent / max(seen, 1) if seen else 0.0


def disk_speed(directory: Path, nbytes: int = 64 * 2**20) -> tuple[float, float]:
    """(write, read) bytes per second of ``directory``: a scratch file written, flushed, dropped from the page
    cache where the OS allows, read back, removed."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f".speed{os.getpid()}{TMP_SUFFIX}"
    block = np.random.default_rng(0).integers(0, 255, 8 * 2**20, dtype=np.uint8).tobytes()
    try:
        t0 = time.perf_counter()
        with open(path, "wb") as fh:
            for _ in range(max(1, nbytes // len(block))):
                fh.write(block)
            fh.flush()
            os.fsync(fh.fileno())
        write = nbytes / max(time.perf_counter() - t0, 1e-9)
        fd = os.open(path, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            while os.read(fd, len(block)):
                pass
            read = nbytes / max(time.perf_counter() - t0, 1e-9)
        finally:
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
    return write, read


def cache_key(model: torch.nn.Module, layers: Sequence[CaptureLayer], data_description: dict, rows: int,
              tag: str) -> str:
    """What a disk cache holds: the weights, the layers and their shapes, the data, the rows (rank shard)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({"layers": [[cl.name, list(cl.shape), cl.layer.layout, cl.layer.tokens] for cl in layers],
                         "data": data_description, "rows": rows, "tag": tag}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def open_disk_cache(layers: Sequence[CaptureLayer], rows: int, directory: Path, prefix: str,
                    key: str) -> tuple[FeatureCache, bool]:
    """A memory-mapped cache in ``directory``; (cache, complete): complete only when its marker says a fill
    with the same ``key`` finished (an interrupted fill has no marker and is filled again)."""
    marker = directory / f"{prefix}.json"
    total = sum(cl.features for cl in layers)
    if marker.exists() and (directory / f"{prefix}.f16").exists():
        try:
            done = read_json(marker)
        except FilterlensError:
            done = {}
        if done.get("key") == key and done.get("rows") == rows and done.get("features") == total:
            return FeatureCache.open(layers, rows, directory, prefix), True
    marker.unlink(missing_ok=True)
    return FeatureCache(layers, rows, directory, prefix), False


def bound_resident(cache: FeatureCache, budget: int) -> FeatureCache:
    """A disk cache hands its pages back every quarter budget, so the process stays near the budget."""
    cache.release_every = max(budget // 4, 1 << 20)
    return cache


def finish_disk_cache(cache: FeatureCache, directory: Path, prefix: str, key: str) -> None:
    """Flush the memory map, then write the marker that makes the cache complete."""
    cache.flush()
    write_json(directory / f"{prefix}.json", {"key": key, "rows": cache.num_samples,
                                              "features": int(cache.data.shape[1]), "complete": True})


def remove_disk_cache(directory: Path | None, prefixes: Sequence[str]) -> None:
    if directory is None:
        return
    for prefix in prefixes:
        for suffix in (".f16", ".labels", ".json"):
            (directory / f"{prefix}{suffix}").unlink(missing_ok=True)
    try:
        directory.rmdir()  # only when nothing else is left in it
    except OSError:
        pass


def plan_engine(model, layers: Sequence[CaptureLayer], pool, want: str, need: int, budget: int, rows: int,
                epochs: int, train_rows: int, augment: bool, device: torch.device, cache_dir: Path | None,
                loader, train_cost=None) -> EnginePlan:
    """Choose the engine (see the module docstring); ``want`` is the ``engine`` setting. ``train_cost(group)``:
    the estimated seconds of training a group's probes (every engine trains them: a group's set of probes has
    its own per-step overhead, so more groups cost more)."""
    if want not in ENGINES:
        raise FilterlensError(f"engine '{want}' is invalid; valid: {', '.join(ENGINES)}")
    mib = 2**20
    size_note = f"features {need / mib:.0f} MiB, cache budget {budget / mib:.0f} MiB"
    if augment:
        if want not in ("auto", "stream"):
            raise FilterlensError(f"engine '{want}' caches features, but probe augmentation changes them every epoch; "
                                  "use --engine stream (or auto), or --no-probe-augment")
        return EnginePlan("stream", [list(layers)], note="augmentation on: features change every epoch, so probes "
                                                          "are streamed (one forward pass per epoch)")
    fits = need <= budget
    if want == "memory" or (want == "auto" and fits):
        if not fits:
            raise FilterlensError(f"engine memory needs {need / mib:.0f} MiB of feature cache, over the cache budget "
                                  f"{budget / mib:.0f} MiB; raise --cache-budget or use --engine auto, groups, disk or "
                                  "stream")
        plan = EnginePlan("memory", [list(layers)], note=f"all layers cached in memory ({size_note})")
        if device.type == "cuda" and need + 8 * rows < torch.cuda.mem_get_info(device)[0] // 2:
            plan.cache_device = device
            plan.note = f"feature cache ({need / mib:.0f} MiB) kept on {device}"
        return plan
    groups = group_layers(layers, rows, budget)
    if want == "groups":
        if groups is None:
            big = max(layers, key=lambda cl: cl.features)
            raise FilterlensError(f"engine groups: layer '{big.name}' alone needs "
                                  f"{FeatureCache.nbytes([big], rows) / mib:.0f} MiB, over the cache budget "
                                  f"{budget / mib:.0f} MiB; raise --cache-budget or use --engine disk or stream")
        return EnginePlan("groups", groups, note=f"{len(groups)} layer groups, one capture pass each ({size_note})")
    if want in ("disk", "auto") and cache_dir is None:
        raise FilterlensError("engine disk needs a cache directory (--cache-dir)")
    if want == "disk":
        _check_disk_room(cache_dir, need)
        return EnginePlan("disk", [list(layers)], cache_dir, note=f"cache on disk in {cache_dir} ({size_note})")
    if want == "stream":
        return EnginePlan("stream", [list(layers)], note=f"streaming: one forward pass per epoch ({size_note})")
    # auto, over budget: estimate every option from measured throughputs
    cost = train_cost or (lambda group: 0.0)
    full = forward_seconds(model, layers, pool, loader)
    train_all = cost(list(layers))
    est = {"stream_s": (epochs * train_rows + (rows - train_rows)) * full + train_all, "forward_s_per_sample": full,
           "probe_training_s": train_all}
    if groups is not None:
        per = [forward_seconds(model, g, pool, loader) if g[-1].name != layers[-1].name else full for g in groups]
        est["groups_s"] = rows * sum(per) + sum(cost(g) for g in groups)
    free = shutil.disk_usage(_existing(cache_dir)).free
    if free > 1.1 * need:
        write, read = disk_speed(cache_dir)
        est.update(disk_s=rows * full + need / write + epochs * need * train_rows / rows / read + train_all,
                   disk_write_bytes_per_s=write, disk_read_bytes_per_s=read)
    options = {k[:-2]: v for k, v in est.items() if k in ("stream_s", "groups_s", "disk_s")}
    best = min(options, key=options.get)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(options.items(), key=lambda kv: kv[1]))
    note = f"engine {best} chosen by estimated time ({parts}; {size_note})"
    if best == "groups":
        return EnginePlan("groups", groups, note=note, estimates=est)
    if best == "disk":
        return EnginePlan("disk", [list(layers)], cache_dir, note=note, estimates=est)
    return EnginePlan("stream", [list(layers)], note=note, estimates=est)


def _existing(path: Path) -> Path:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return p


def _check_disk_room(cache_dir: Path, need: int) -> None:
    free = shutil.disk_usage(_existing(cache_dir)).free
    if free < need:
        raise FilterlensError(f"engine disk needs {need / 2**30:.1f} GiB in '{cache_dir}', which has "
                              f"{free / 2**30:.1f} GiB free; choose another --cache-dir or --engine")
