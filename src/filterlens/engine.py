"""How the probes get their features (DESIGN.md, "The capture engine"): memory, layer groups, disk or streaming.

* ``memory``: one capture pass caches every selected layer's float16 features (host, or the GPU when
  they fit half its free memory); every probe trains from the cache.
* ``groups``: the layers are packed into the fewest groups whose caches fit the budget (first fit,
  largest layer first); one capture pass per group (each stops after its group's deepest layer),
  the group's probes trained from its cache, which is then freed.
* ``disk``: the cache memory-mapped in a folder of its own, ``filterlens-cache`` inside the cache
  directory (made and marked by filterlens; :class:`DiskCache`), filled once, read back row by row in
  the shared order. Its files are named by a key of the model, layers, data and rows; a completion
  marker written last holds the sha256 of every file, so an interrupted fill is never read as complete,
  and a resumed analysis reuses a complete cache only once its checksums match (a damaged one is
  rebuilt, with one line saying so). One command at a time per key (a lock file). Once the probes are
  trained it deletes its own files, then its folder and the folders it made for it when nothing else
  is left in them; it never deletes anything else, and refuses a cache directory that is a run or
  sweep directory or a ``filterlens-cache`` folder holding files it did not write.
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
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from .capture import Capture, CaptureLayer, FeatureCache
from .errors import FilterlensError
from .files import read_json, remove_file, sha256_file, write_bytes, write_json
from .folders import (
    CACHE_FILE,
    is_temporary,
    kind_of,
    make_dirs,
    mark,
    named,
    read_mark,
    remove_empty,
)
from .names import CACHE_FOLDER, MARK
from .output import say

if TYPE_CHECKING:
    from filelock import BaseFileLock

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
        """The plan as plain data for results.json: engine, layer names per group, capture passes, note, estimates."""
        return {"engine": self.engine, "groups": [[cl.name for cl in g] for g in self.groups],
                "capture_passes": len(self.groups) if self.engine != "stream" else None, "note": self.note,
                "estimates": self.estimates, "cache_dir": str(self.cache_dir) if self.cache_dir else None}


@dataclass(frozen=True)
class Workload:
    """What the probe stage will ask of its features: their size (``need``, bytes of the float16 or bfloat16
    cache), the samples they hold (``rows``: training and test), the probes' ``epochs`` over the ``train_rows``
    training samples, and whether augmentation changes the features every epoch."""

    need: int
    rows: int
    epochs: int
    train_rows: int
    augment: bool = False


@dataclass(frozen=True)
class Forward:
    """What ``auto`` measures to choose an engine: the model's forward pass up to ``layers`` (read at ``pool``, in
    ``precision``) on batches of ``loader``, and ``train_cost(group)``, the estimated seconds of training a
    group's probes (every engine trains them: a group's set of probes has its own per-step overhead, so more
    groups cost more)."""

    model: torch.nn.Module
    pool: Any
    loader: Any
    train_cost: Callable | None = None
    precision: Any = None


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


def forward_seconds(model, layers: Sequence[CaptureLayer], pool, loader, batches: int = 2, precision=None) -> float:
    """Seconds per sample of a capture pass over ``layers`` (stopping after the deepest), from a few batches
    after one warm-up batch, in ``precision`` (default float32)."""
    with Capture(model, [cl.layer for cl in layers], pool, *([precision] if precision is not None else [])) as cap:
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
    """(write, read) bytes per second where ``directory`` will be: a scratch file in its nearest existing folder
    (nothing is created for it), written, flushed, dropped from the page cache where the OS allows, read back,
    removed."""
    import tempfile

    block = np.random.default_rng(0).integers(0, 255, 8 * 2**20, dtype=np.uint8).tobytes()
    fd, name = tempfile.mkstemp(prefix=".speed.", suffix=".tmp", dir=_existing(directory))
    path = Path(name)
    try:
        t0 = time.perf_counter()
        with os.fdopen(fd, "wb") as fh:
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


def cache_key(model: torch.nn.Module, layers: Sequence[CaptureLayer], data_description: dict, rows,
              tag: str) -> str:
    """What a disk cache holds: the weights, the layers and their shapes, the data, the rows (rank shard)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps({"layers": [[cl.name, list(cl.shape), cl.layer.layout, cl.layer.tokens] for cl in layers],
                         "data": data_description, "rows": rows, "tag": tag}, sort_keys=True).encode())
    return h.hexdigest()[:24]


def cache_home(cache_dir) -> Path | None:
    """The disk cache's own folder inside the user's ``cache_dir`` (``filterlens-cache``), checked before any work:
    ``cache_dir`` is a folder path that is not a run or sweep directory, and a ``filterlens-cache`` folder already
    in it is filterlens' and holds nothing else. None when no cache directory is given."""
    if cache_dir is None:
        return None
    from .rundir import RunDir

    root = RunDir.validate(cache_dir, "cache directory", own_folder=False)
    kind = kind_of(root)
    if kind in ("run", "sweep"):
        raise FilterlensError(f"cache directory '{root}' is a {kind} directory; give the disk cache another "
                              f"--cache-dir (it makes a folder '{CACHE_FOLDER}' of its own there)")
    home = root if kind == "cache" else root / CACHE_FOLDER
    check_home(home)
    return home


def check_home(home: Path) -> None:
    """Refuse a cache folder that filterlens did not make, or that holds files the disk cache did not write."""
    if home.is_symlink():
        raise FilterlensError(f"the disk cache's folder '{home}' is a link to '{os.path.realpath(home)}'; filterlens "
                              "never writes or deletes through a link: remove the link or choose another --cache-dir")
    if not home.exists():
        return
    if not home.is_dir():
        raise FilterlensError(f"'{home}' is a file, not the disk cache's folder; remove it or choose another "
                              "--cache-dir")
    foreign = sorted(p.name for p in home.iterdir()
                     if not (CACHE_FILE.match(p.name) or p.name == MARK or is_temporary(p.name)) or p.is_dir())
    found = read_mark(home)
    if foreign or found is None or found["kind"] != "cache":
        what = f"holds files filterlens did not write ({named(foreign[:4], len(foreign) > 4)})" if foreign else \
            "was not made by filterlens"
        raise FilterlensError(f"the disk cache's folder '{home}' {what}; remove them or choose another --cache-dir")


class DiskCache:
    """The half-precision (float16 or bfloat16) features of one group of layers on disk: ``<key>.train.f16`` and
    ``.labels``, the same for ``test``, the label means (``<key>.means.pt``) and, written last, the completion marker
    ``<key>.json`` with every file's sha256. ``<key>.lock`` keeps a second command off the same cache while this one
    uses it.

    :meth:`open` makes (or checks) the folder, takes the lock and opens the files: a complete cache whose
    checksums match is reused; a damaged one is rebuilt, saying so. :meth:`finish` after the
    fill; :meth:`remove` once the probes are trained (also the folder when nothing else is left, and the folders
    made for it); :meth:`release` when interrupted (the files stay for the next run).
    """

    SPLITS = ("train", "test")

    def __init__(self, home: Path, layers: Sequence[CaptureLayer], rows: dict, key: str,
                 dtype: torch.dtype = torch.float16):
        self.home, self.layers, self.rows, self.key = Path(home), list(layers), dict(rows), key
        self.dtype = dtype
        self.caches: dict[str, FeatureCache] = {}
        self.means: dict | None = None
        self._lock: BaseFileLock | None = None

    def _names(self) -> list[str]:
        return [f"{self.key}.{s}.{x}" for s in self.SPLITS for x in ("f16", "labels")] + [f"{self.key}.means.pt"]

    def _marker(self) -> Path:
        return self.home / f"{self.key}.json"

    def open(self) -> bool:
        """True when a complete, intact cache is reused (``caches`` and ``means`` read from it); False when the
        caches are to be filled."""
        self._make_home()
        self._take_lock()
        why = self._damage()
        if why is None:
            try:
                self.caches = {s: FeatureCache.open(self.layers, self.rows[s], self.home, f"{self.key}.{s}",
                                                    self.dtype) for s in self.SPLITS}
                self.means = torch.load(self.home / f"{self.key}.means.pt", map_location="cpu", weights_only=True)
                return True
            except Exception as exc:  # noqa: BLE001 - whatever the reason, the cache is filled again
                why = f"it cannot be read ({type(exc).__name__})"
        if why:
            say(f"note: the disk cache in {self.home} was damaged after it was written ({why}); it is rebuilt")
        for name in self._names() + [self._marker().name]:  # a link among them is replaced, its target untouched
            remove_file(self.home / name)
        self.caches = {s: FeatureCache(self.layers, self.rows[s], self.home, f"{self.key}.{s}", dtype=self.dtype)
                       for s in self.SPLITS}
        return False

    def _damage(self) -> str | None:
        """None when a complete cache is there and every file matches its checksum; "" when no fill completed;
        else what is wrong."""
        marker = self._marker()
        if not marker.exists():
            return ""
        try:
            done = read_json(marker)
        except FilterlensError:
            return "its completion marker is not valid JSON"
        total = sum(cl.features for cl in self.layers)
        if not (isinstance(done, dict) and done.get("key") == self.key and done.get("rows") == self.rows
                and done.get("features") == total and done.get("dtype", "float16") == _dtype_name(self.dtype)
                and isinstance(done.get("sha256"), dict)):
            return "its completion marker does not describe this cache"
        for name in self._names():
            path = self.home / name
            if path.is_symlink():
                return f"{name} is a link, not the cache's own file"
            if not path.is_file():
                return f"{name} is missing"
            if sha256_file(path) != done["sha256"].get(name):
                return f"{name} differs from its checksum"
        return None

    def finish(self, means: dict) -> None:
        """After the fill: flush the memory maps, save the label means, then the marker with every checksum."""
        import io

        for cache in self.caches.values():
            cache.flush()
        buf = io.BytesIO()
        torch.save(means, buf)
        write_bytes(self.home / f"{self.key}.means.pt", buf.getvalue(), private=True)
        sums = {name: sha256_file(self.home / name) for name in self._names()}
        total = sum(cl.features for cl in self.layers)
        write_json(self._marker(), {"key": self.key, "rows": self.rows, "features": total, "sha256": sums,
                                    "dtype": _dtype_name(self.dtype), "complete": True}, private=True)

    def release(self) -> None:
        """Let go of the cache, keeping its files (an interrupted analysis reuses a complete one)."""
        self.caches = {}
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def remove(self) -> None:
        """Delete this cache's files; then the folder, and the folders made for it, when nothing else is left."""
        self.caches = {}
        for name in self._names() + [self._marker().name]:
            remove_file(self.home / name)
        if self._lock is not None:
            remove_file(self.home / f"{self.key}.lock")
        self.release()
        _tidy(self.home)

    def _make_home(self) -> None:
        """The cache's folder, made under a temporary name with its marker inside, then renamed into place (so it
        never exists unmarked); the folders made for it are recorded in the marker."""
        import shutil
        import tempfile

        if self.home.is_dir():
            check_home(self.home)
            return
        made = make_dirs(self.home.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_FOLDER}.", suffix=".tmp", dir=self.home.parent))
        mark(tmp, "cache", private=True, made=[str(m) for m in made])
        try:
            os.rename(tmp, self.home)
        except OSError:  # another command made it first
            shutil.rmtree(tmp, ignore_errors=True)
            check_home(self.home)

    def _take_lock(self) -> None:
        from filelock import FileLock, Timeout

        if (self.home / f"{self.key}.lock").is_symlink():  # never opened through a link: replaced
            remove_file(self.home / f"{self.key}.lock")
        lock = self._lock = FileLock(str(self.home / f"{self.key}.lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            self._lock = None
            raise FilterlensError(f"the disk cache of this model and data in '{self.home}' is in use by another "
                                  "filterlens command; wait for it to finish, or choose another --cache-dir") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tidy(home: Path) -> None:
    """Remove the cache folder once only its marker is left in it, then the folders filterlens made for it."""
    try:
        if any(p.name != MARK for p in home.iterdir()):
            return
    except FileNotFoundError:
        return
    made = (read_mark(home) or {}).get("made") or []
    remove_file(home / MARK)
    try:
        home.rmdir()
    except OSError:  # another command put its files here meanwhile: the folder stays, marked again
        mark(home, "cache", private=True, made=made)
        return
    remove_empty(made)


def bound_resident(cache: FeatureCache, budget: int) -> FeatureCache:
    """A disk cache hands its pages back every quarter budget, so the process stays near the budget."""
    cache.release_every = max(budget // 4, 1 << 20)
    return cache


def size_text(nbytes: float) -> str:
    """A size for messages, never rounded to a contradiction: 11.6 KiB, 3.0 MiB, 2.5 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def plan_engine(layers: Sequence[CaptureLayer], want: str, budget: int, work: Workload, device: torch.device,
                cache_dir: Path | None, forward: Forward) -> EnginePlan:
    """Choose the engine (see the module docstring) for ``work`` on ``layers``; ``want`` is the ``engine`` setting,
    ``budget`` the cache budget in bytes; ``forward`` is measured only when ``auto`` must choose by time."""
    need, rows = work.need, work.rows
    if want not in ENGINES:
        raise FilterlensError(f"engine '{want}' is invalid; valid: {', '.join(ENGINES)}")
    size_note = f"features {size_text(need)}, cache budget {size_text(budget)}"
    if work.augment:
        if want not in ("auto", "stream"):
            raise FilterlensError(f"engine '{want}' caches features, but probe augmentation changes them every epoch; "
                                  "use --engine stream (or auto), or --no-probe-augment")
        return EnginePlan("stream", [list(layers)], note="augmentation on: features change every epoch, so probes "
                                                          "are streamed (one forward pass per epoch)")
    fits = need <= budget
    if want == "memory" or (want == "auto" and fits):
        if not fits:
            raise FilterlensError(f"engine memory needs {size_text(need)} of feature cache, over the cache budget "
                                  f"{size_text(budget)}; raise --cache-budget or use --engine auto, groups, disk or "
                                  "stream")
        plan = EnginePlan("memory", [list(layers)], note=f"all layers cached in memory ({size_note})")
        if device.type == "cuda" and need + 8 * rows < torch.cuda.mem_get_info(device)[0] // 2:
            plan.cache_device = device
            plan.note = f"feature cache ({size_text(need)}) kept on {device}"
        return plan
    groups = group_layers(layers, rows, budget)
    if want == "groups":
        if groups is None:
            big = max(layers, key=lambda cl: cl.features)
            raise FilterlensError(f"engine groups: layer '{big.name}' alone needs "
                                  f"{size_text(FeatureCache.nbytes([big], rows))}, over the cache budget "
                                  f"{size_text(budget)}; raise --cache-budget or use --engine disk or stream")
        return EnginePlan("groups", groups, note=f"{len(groups)} layer groups, one capture pass each ({size_note})")
    if want == "stream":
        return EnginePlan("stream", [list(layers)], note=f"streaming: one forward pass per epoch ({size_note})")
    if cache_dir is None:  # disk, or auto over budget
        raise FilterlensError("engine disk needs a cache directory (--cache-dir)")
    if want == "disk":
        _check_disk_room(cache_dir, need)
        return EnginePlan("disk", [list(layers)], cache_dir, note=f"cache on disk in {cache_dir} ({size_note})")
    return _fastest(layers, groups, work, cache_dir, forward, size_note)


def _fastest(layers: Sequence[CaptureLayer], groups: list | None, work: Workload, cache_dir: Path, fw: Forward,
             size_note: str) -> EnginePlan:
    """``auto`` over the cache budget: the engine of the least estimated time (stream, groups where the layers
    make groups, disk where it has room), from the measured forward throughput of the layers (and of each group),
    the disk's measured speed and ``train_cost``; the estimates are kept in the plan."""
    need, rows, epochs, train_rows = work.need, work.rows, work.epochs, work.train_rows
    cost = fw.train_cost or (lambda group: 0.0)
    full = forward_seconds(fw.model, layers, fw.pool, fw.loader, precision=fw.precision)
    train_all = cost(list(layers))
    est = {"stream_s": (epochs * train_rows + (rows - train_rows)) * full + train_all, "forward_s_per_sample": full,
           "probe_training_s": train_all}
    if groups is not None:
        per = [forward_seconds(fw.model, g, fw.pool, fw.loader, precision=fw.precision)
               if g[-1].name != layers[-1].name else full
               for g in groups]
        est["groups_s"] = rows * sum(per) + sum(cost(g) for g in groups)
    free = shutil.disk_usage(_existing(cache_dir)).free
    if free > 1.1 * need:
        write, read = disk_speed(cache_dir)
        est.update(disk_s=rows * full + need / write + epochs * need * train_rows / rows / read + train_all,
                   disk_write_bytes_per_s=write, disk_read_bytes_per_s=read)
    options = {k[:-2]: v for k, v in est.items() if k in ("stream_s", "groups_s", "disk_s")}
    best = min(options, key=options.__getitem__)
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(options.items(), key=lambda kv: kv[1]))
    note = f"engine {best} chosen by estimated time ({parts}; {size_note})"
    if best == "groups":
        assert groups is not None  # groups_s is estimated only when the layers make groups
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
        raise FilterlensError(f"engine disk needs {size_text(need)} in '{cache_dir}', which has {size_text(free)} "
                              "free; choose another --cache-dir or --engine")
