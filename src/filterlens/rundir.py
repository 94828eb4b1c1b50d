"""The run directory: its path, its config, its lock, and the checksums of what its stages wrote.

A run directory holds ``config.json`` (the resolved settings) and every file a stage writes.

* **Path**: checked before any work (:meth:`RunDir.validate`): a str or path, not empty, not under a
  file, a directory if it exists, neither the filesystem root nor the home folder.
* **Ownership** (:meth:`RunDir.check_folder`): a run directory is a folder filterlens made (marked with
  ``.filterlens``, see :mod:`filterlens.folders`; one of an earlier filterlens is known by its
  ``config.json``) or an empty one; any other folder is refused in one line naming files in it.
  ``overwrite`` deletes only what filterlens wrote there (:func:`owned`): the files its stages recorded and
  the names filterlens gives its files; the user's other files stay.
* **Config**: a directory that already holds a run with different settings is refused unless
  ``overwrite`` is given (:meth:`RunDir.check`), so nothing is silently mixed or lost.
* **One command at a time** (:meth:`RunDir.lock`): a lock file (the ``filelock`` package, an
  OS-level lock, so a lock left by a killed process does not block the next command) with the
  holder's process id beside it; a second command is refused in one line naming that process.
  Once the lock is held, temporary files a killed command left behind are removed. A command refused
  under the lock leaves no lock file (nor a folder) that it made.
* **Checksums** (``stages.json``, :meth:`RunDir.record`): every stage records the settings hash
  it ran with and the sha256 of every file it wrote. A recorded file whose content changed since
  is never trusted (:meth:`RunDir.changed`, :meth:`RunDir.verify`) and never re-blessed: its
  stage is run again.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from .checks import path_arg
from .config import STAGE_ORDER, Config
from .errors import FilterlensError
from .files import read_json, remove_file, sha256_file, write_json
from .folders import (
    CACHE_FILE,
    check_links,
    is_temporary,
    kind_of,
    make_dirs,
    mark,
    named,
    remove_empty,
    some_files,
)
from .names import (
    CACHE_DIR,
    CACHE_FOLDER,
    CONFIG,
    ERROR_LOG_PREFIX,
    HEATMAPS,
    LOCK,
    LOCK_INFO,
    MANIFEST,
    MARK,
    RESULTS,
    RUN_FILES,
    SWEEP,
    SWEEP_FILES,
)
from .output import say

HEATMAP = re.compile(r"^.+-(filter|head|node)\d+\.png$")  # heatmaps/<layer>-filter3.png: analyze draws these
CONFIG_RECORD = "config"  # the record of config.json in stages.json (not a stage: claim writes it)

# the folders filterlens makes that are neither run nor sweep directories
_OTHER_KINDS = {"cache": "the disk engine's cache folder", "compare": "the output folder of filterlens compare",
                "glyphs": "the glyphs dataset's cache folder",
                "seeds": "a folder of the runs of one recipe over seeds (filterlens run --seeds)"}
# run directories this process holds the lock of (nested lock() calls)
_held: dict[Path, int] = {}
# the entries of results.json and the JSON types they must have (None: the entry may be null)
_RESULT_KEYS: dict[str, type | tuple[type, ...]] = {
                "config": dict, "environment": dict, "data": dict, "probes": dict, "sfp": dict, "timings": dict,
                "layers": list, "label_names": list, "thresholds": list, "heatmaps": list, "title": str,
                "train": (dict, type(None)), "bootstrap": (dict, type(None)), "afcc": (dict, type(None)),
                "afcc_pruned": (dict, type(None)), "claims": list}


class RunDir:
    """One run directory (see the module docstring): its files, config, lock and the checksums of what its
    stages wrote."""

    def __init__(self, path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        """The path of the file ``name`` in the run directory."""
        return self.path / name

    def exists(self, name: str) -> bool:
        """Whether the run directory holds ``name``."""
        return (self.path / name).exists()

    def read_json(self, name: str):
        """The JSON file ``name`` of the run directory, parsed (a damaged file is refused in one line)."""
        return read_json(self.path / name)

    def remove(self, name: str) -> None:
        """Remove the file ``name`` (filterlens' own: a recorded output, a checkpoint)."""
        from .distributed import check_write

        p = self.path / name
        check_write(p)
        remove_file(p)

    # ------------------------------------------------------------------ the path
    @staticmethod
    def validate(path, what: str = "run directory", own_folder: bool = True) -> Path:
        """Refuse, before any work, a path that cannot be a run directory (one line). ``own_folder``: the path is a
        folder filterlens writes into as its own, so neither the filesystem root nor the home folder."""
        p = path_arg(path, what)
        if p.exists() and not p.is_dir():
            raise FilterlensError(f"{what} '{p}' exists and is not a directory; choose another path")
        parent = p.absolute()
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise FilterlensError(f"{what} '{p}' lies under '{parent}', which is a file, not a directory")
        if str(parent.resolve()).startswith(("/proc", "/sys")) or not os.access(parent, os.W_OK | os.X_OK):
            raise FilterlensError(f"{what} '{p}' cannot be created or written: '{parent}' is not writable; "
                                  "choose a folder you can write to")
        if own_folder:
            real = p.resolve()
            if real == Path(real.anchor):
                raise FilterlensError(f"{what} '{p}' is the filesystem root; give a folder of its own, e.g. runs/mine")
            if real == Path.home().resolve():
                raise FilterlensError(f"{what} '{p}' is your home folder; give a folder of its own, e.g. "
                                      "~/runs/mine")
        return p

    def check_folder(self) -> str:
        """Refuse (one line, before any work) a folder that is neither a run directory filterlens made nor empty;
        returns its kind (``run``, ``missing`` or ``empty``)."""
        kind = kind_of(self.path)
        if kind in ("run", "missing", "empty"):
            check_links(self.path, "run directory")
            return kind
        if kind == "sweep":
            raise FilterlensError(f"'{self.path}' is a sweep directory (filterlens sweep), not a run directory; give "
                                  "one of its model folders (e.g. L003-s1) or a run directory")
        if kind in _OTHER_KINDS:
            raise FilterlensError(f"'{self.path}' is {_OTHER_KINDS[kind]}, not a run directory; give a run directory")
        files, more = some_files(self.path)
        raise FilterlensError(f"'{self.path}' is not a run directory: it holds files filterlens did not write "
                              f"({named(files, more)}); choose a new or empty folder (filterlens writes only into "
                              "folders it made)")

    # ------------------------------------------------------------------ the config
    def check(self, cfg: Config, overwrite: bool = False, stage: str = "train") -> bool:
        """Refuse (without writing anything) a directory holding a run with other ``stage`` settings.

        Returns True when the directory holds a run with the same ``stage`` settings.
        """
        self.validate(self.path)
        self.check_folder()
        if not self.exists(CONFIG):
            return False
        if not overwrite and not self.manifest_damaged():  # (a damaged stages.json: filterlens run recomputes)
            self.verify(CONFIG)
        try:
            old = Config.from_dict(self.read_json(CONFIG), source=str(self.file(CONFIG)), stored=True)
        except FilterlensError:
            old = None
        if old is not None and old.stage_hash(stage) == cfg.stage_hash(stage):
            return True
        if not overwrite:
            diff = _differences(old, cfg, stage) if old else ["its config.json is unreadable"]
            raise FilterlensError(
                f"run directory '{self.path}' holds a run with another config ({'; '.join(diff[:3])}); "
                "use --overwrite to replace it or choose another --run-dir")
        return False

    def claim(self, cfg: Config, overwrite: bool = False, stage: str = "train") -> None:
        """Make ``path`` this run's directory (after :meth:`check`); with ``overwrite`` remove the old run's files.

        Call it only once the new settings have been validated, so a refused command damages nothing.
        """
        from .distributed import check_write

        check_write(self.path)
        same = self.check(cfg, overwrite, stage)
        if overwrite and not same:
            remove_owned(self.path, keep={LOCK, LOCK_INFO, MARK})
        make_dirs(self.path)
        mark(self.path, "run")
        if self.exists(CONFIG):
            try:
                if self.read_json(CONFIG) == json.loads(json.dumps(cfg.to_dict())):
                    self.record_config()  # unchanged: leave the file alone (recorded, if it was not yet)
                    return
            except FilterlensError:
                pass
        write_json(self.file(CONFIG), cfg.to_dict())
        self.record_config()

    def record_config(self) -> None:
        """Record config.json's sha256 in stages.json (under ``config``): every reader then checks it, so an edited
        config.json is never trusted. A damaged stages.json is left as it is (nothing it vouched for is trusted)."""
        if self.manifest_damaged() or not self.exists(CONFIG):
            return
        stages = self.stages()
        want = sha256_file(self.file(CONFIG))
        if stages.get(CONFIG_RECORD, {}).get("sha256", {}).get(CONFIG) == want:
            return
        stages[CONFIG_RECORD] = {"hash": "config", "seconds": None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                 "sha256": {CONFIG: want}}
        write_json(self.file(MANIFEST), stages)

    # ------------------------------------------------------------------ one command at a time
    @contextmanager
    def lock(self, command: str = "filterlens"):
        """Hold the run directory for one command (nested calls in the same process are free).

        Creates the directory. Under torchrun only rank 0 locks (every rank works on the same
        directory). On entry, temporary files left by a killed command are removed.
        """
        key = self.path.absolute()
        if key in _held or os.environ.get("RANK", "0") != "0":
            _held[key] = _held.get(key, 0) + 1
            try:
                yield self
            finally:
                _held[key] -= 1
                if not _held[key]:
                    del _held[key]
            return
        from filelock import FileLock, Timeout

        self.validate(self.path)
        self.check_folder()
        made = make_dirs(self.path)
        if self.file(LOCK).is_symlink():  # never opened through a link: replaced by a lock file of its own
            remove_file(self.file(LOCK))
        fresh = not self.exists(LOCK)
        lock = FileLock(str(self.file(LOCK)), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise FilterlensError(f"run directory '{self.path}' is in use by {self._holder()}; wait for it to "
                                  "finish, or choose another --run-dir") from None
        _held[key] = 1
        refused = False
        try:
            write_json(self.file(LOCK_INFO), {"pid": os.getpid(), "command": command,
                                              "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
            self.remove_temporary_files()
            yield self
        except FilterlensError:
            refused = True
            raise
        finally:
            del _held[key]
            self.file(LOCK_INFO).unlink(missing_ok=True)
            if refused and fresh:  # a refused command leaves nothing it made
                self.file(LOCK).unlink(missing_ok=True)
            lock.release()
            if refused:
                remove_empty(made)

    def _holder(self) -> str:
        try:
            info = read_json(self.file(LOCK_INFO))
            return f"process {int(info['pid'])} ('{info.get('command', '?')}', since {info.get('since', '?')})"
        except (FilterlensError, OSError, KeyError, TypeError, ValueError):
            return "another process"

    def remove_temporary_files(self) -> list[Path]:
        """Remove the temporary files (``.NAME.*.tmp``) a killed command left anywhere in the directory."""
        gone = []
        for top, _, names in os.walk(self.path, followlinks=False):
            for name in names:
                p = Path(top) / name
                if is_temporary(name) and (p.is_file() or p.is_symlink()) and remove_file(p):
                    gone.append(p)
        return gone

    def read_results(self) -> dict:
        """``results.json``, verified against its checksum and checked for the shape filterlens writes."""
        if not self.exists(RESULTS):
            raise FilterlensError(f"'{self.path}' holds no results.json; run filterlens analyze (or filterlens run) "
                                  "first")
        self.verify(RESULTS)
        res = self.read_json(RESULTS)
        where = f"'{self.file(RESULTS)}' is damaged"
        if not isinstance(res, dict):
            raise FilterlensError(f"{where}: it holds a {type(res).__name__}, not the object filterlens writes")
        if res.get("version") != 1:
            raise FilterlensError(f"{where} or from another filterlens: format version {res.get('version')!r}, this "
                                  "filterlens reads 1")
        for key, kinds in _RESULT_KEYS.items():
            if key in res and not isinstance(res[key], kinds):
                raise FilterlensError(f"{where}: '{key}' is a {type(res[key]).__name__}")
        if not all(isinstance(r, dict) and isinstance(r.get("layer"), str) for r in res.get("layers", [])):
            raise FilterlensError(f"{where}: 'layers' must list one object per layer, each with its name ('layer', "
                                  "a string)")
        if not all(isinstance(n, str) for n in res.get("label_names", [])):
            raise FilterlensError(f"{where}: 'label_names' must list strings")
        return res

    # ------------------------------------------------------------------ checksums of the stages' outputs
    def stages(self, strict: bool = False, say_damage: bool = False) -> dict:
        """The records of ``stages.json``. A damaged file (not JSON, wrong shape) is refused in one line when
        ``strict`` (nothing it vouches for can be checked), else counts as no record (``filterlens run``
        then runs every stage again, and says so with ``say_damage``)."""
        if not self.exists(MANIFEST):
            return {}
        try:
            data = self.read_json(MANIFEST)
        except FilterlensError as exc:
            data, why = None, str(exc)
        else:
            why = "not a mapping of stage records"
        if isinstance(data, dict) and all(_valid_record(v) for v in data.values()):
            return data
        if strict:
            raise FilterlensError(f"'{self.file(MANIFEST)}' is damaged ({why}): the checksums of this run cannot be "
                                  "checked, so none of its files is trusted; filterlens run recomputes them (or train "
                                  "again with --overwrite)")
        if say_damage:
            say(f"note: {self.file(MANIFEST)} is damaged ({why}); no output of this run is trusted, every "
                 "stage runs again")
        return {}

    def manifest_damaged(self) -> bool:
        """``stages.json`` exists but is not a valid set of records."""
        try:
            self.stages(strict=True)
        except FilterlensError:
            return True
        return False

    def changed(self, outputs, stages: dict | None = None) -> list[str]:
        """The ``outputs`` that are missing, never recorded, or whose content differs from their record."""
        stages = self.stages() if stages is None else stages
        recorded = _recorded(stages)
        bad = []
        for name in outputs:
            if not self.exists(name) or name not in recorded or sha256_file(self.file(name)) != recorded[name]:
                bad.append(name)
        return bad

    def verify(self, *names: str) -> None:
        """Refuse to read a recorded file whose content changed since its stage wrote it (one line).

        A file no stage recorded (a run directory from an earlier filterlens) is read as it is; a damaged
        ``stages.json`` is refused.
        """
        stages = self.stages(strict=True)
        recorded = _recorded(stages)
        for name in names:
            if name in recorded and self.exists(name) and sha256_file(self.file(name)) != recorded[name]:
                stage = next(s for s, r in stages.items() if name in r.get("sha256", {}))
                if stage == CONFIG_RECORD:
                    raise FilterlensError(f"'{self.file(name)}' changed since filterlens wrote it (its sha256 differs "
                                          "from stages.json); the settings of this run are not trusted: start it "
                                          "again with --overwrite (filterlens train or run), or choose another "
                                          "--run-dir")
                raise FilterlensError(f"'{self.file(name)}' changed since stage {stage} wrote it (its sha256 differs "
                                      f"from stages.json); it is not trusted: run that stage again (filterlens run "
                                      f"--from {stage}, or the command that wrote it)")

    def note_peak_memory(self, stage: str, peak: int, scope: str) -> None:
        """Add the peak resident memory of the command while ``stage`` ran (``scope``: ``"stage"`` when measured
        from the stage's start, ``"process"`` when the system only keeps the process' peak) to the stage's record
        in stages.json; nothing when the stage left no record."""
        stages = self.stages()
        if stage not in stages or not _valid_record(stages[stage]):
            return
        stages[stage].update({"peak_memory_bytes": int(peak), "peak_memory_scope": scope})
        write_json(self.file(MANIFEST), stages)

    def record(self, stage: str, settings_hash: str, outputs, seconds: float | None = None) -> dict:
        """Record that ``stage`` ran with ``settings_hash`` and wrote ``outputs`` (their sha256).

        A later stage that had recorded one of these files is no longer done (its record goes);
        an earlier one that shares a file (``results.json``: sfp writes it, AFCC adds its entry)
        keeps its record with the new checksum, since this stage read and extended that file.
        """
        stages = self.stages()
        sums = {o: sha256_file(self.file(o)) for o in outputs}
        mine = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
        for other in list(stages):
            shared = set(stages[other].get("sha256", {})) & set(sums)
            if other == stage or not shared:
                continue
            if other in STAGE_ORDER and STAGE_ORDER.index(other) < mine:
                stages[other]["sha256"].update({o: sums[o] for o in shared})
            else:
                del stages[other]
        stages[stage] = {"hash": settings_hash, "seconds": seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                         "sha256": sums}
        write_json(self.file(MANIFEST), stages)
        mark(self.path, "run")  # a run directory of an earlier filterlens is marked once a stage writes into it
        return stages


def _valid_record(rec) -> bool:
    return (isinstance(rec, dict) and isinstance(rec.get("hash"), str) and isinstance(rec.get("sha256"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in rec["sha256"].items()))


def _recorded(stages: dict) -> dict[str, str]:
    out = {}
    for rec in stages.values():
        out.update(rec.get("sha256", {}))
    return out


def _differences(old: Config, new: Config, stage: str) -> list[str]:
    from .config import STAGES, fields

    upto = STAGES[: STAGES.index(stage) + 1]
    out = []
    for f in fields(Config):
        if f.metadata["stage"] in upto and getattr(old, f.name) != getattr(new, f.name):
            out.append(f"{f.name}: {getattr(old, f.name)!r} there, {getattr(new, f.name)!r} now")
    return out or ["settings differ"]


# ---------------------------------------------------------------------- what in a folder filterlens wrote

def owned(folder) -> list[Path]:
    """The files under ``folder`` that filterlens wrote, by the folder's kind (:func:`filterlens.folders.kind_of`):
    in a run directory the files its stages recorded and the names filterlens gives its files (top-level
    outputs, heatmaps, temporary files, the disk cache's folder, a sweep under ``sweep/``); in a sweep directory
    its tables, plots and plan and its model folders' own files; in a cache folder the cache's files. Nothing in a
    folder of another kind."""
    root = Path(folder)
    kind = kind_of(root)
    if kind == "cache":
        return [p for p in root.iterdir() if p.is_file() and (CACHE_FILE.match(p.name) or p.name == MARK
                                                              or is_temporary(p.name))]
    if kind == "sweep":
        out = [p for p in root.iterdir() if p.is_file() and (p.name in SWEEP_FILES or p.name == MARK
                                                             or is_temporary(p.name))]
        for p in root.iterdir():
            if p.is_dir() and not p.is_symlink() and re.fullmatch(r"L\d+-s\d+", p.name):
                out += owned(p)
        return out
    if kind != "run":
        return []
    rd = RunDir(root)
    recorded = {} if rd.manifest_damaged() else _recorded(rd.stages())
    out = []
    for p in root.iterdir():
        name = p.name
        if p.is_file() and (name in recorded or name in RUN_FILES or name in (MARK, LOCK, LOCK_INFO)
                            or is_temporary(name) or re.fullmatch(re.escape(ERROR_LOG_PREFIX) + r".*\.log", name)):
            out.append(p)
        elif p.is_symlink():  # a link to a folder is never entered (check_links refuses it before any work)
            continue
        elif p.is_dir() and name == HEATMAPS:
            out += [f for f in p.iterdir() if f.is_file() and (f"{HEATMAPS}/{f.name}" in recorded
                                                               or HEATMAP.match(f.name) or is_temporary(f.name))]
        elif p.is_dir() and name in (CACHE_DIR, SWEEP):
            inner = p / CACHE_FOLDER if name == CACHE_DIR else p
            out += owned(inner) if inner.is_dir() and not inner.is_symlink() else []
            out += [f for f in p.iterdir() if f.is_file() and (f"{name}/{f.name}" in recorded or is_temporary(f.name))]
    return out


def remove_owned(folder, keep=()) -> None:
    """Delete what filterlens wrote in ``folder`` (:func:`owned`) but the names in ``keep``, then the folders that
    this left empty; the user's files stay."""
    from .distributed import check_write

    root = Path(folder)
    emptied = set()
    for p in owned(root):
        if p.parent == root and p.name in keep:
            continue
        check_write(p)
        remove_file(p)
        d = p.parent
        while d != root and root in d.parents:
            emptied.add(d)
            d = d.parent
    remove_empty(emptied)


def check_seeds_folder(path) -> Path:
    """Refuse (before any work) a folder for ``filterlens run --seeds`` that is neither a seeds folder filterlens
    made nor new or empty."""
    p = RunDir.validate(path, "seeds folder")
    kind = kind_of(p)
    if kind in ("seeds", "missing", "empty"):
        check_links(p, "seeds folder")
        return p
    if kind == "run" or kind in _OTHER_KINDS:
        what = "a run directory" if kind == "run" else _OTHER_KINDS[kind]
        raise FilterlensError(f"'{p}' is {what}, not a folder of seeds; give the runs of --seeds a folder of their own")
    files, more = some_files(p)
    raise FilterlensError(f"'{p}' is not a folder of seeds: it holds files filterlens did not write "
                          f"({named(files, more)}); choose a new or empty folder")


def check_sweep_folder(path, merge_only: bool = False) -> Path:
    """Refuse (before any work) a sweep directory that is not a sweep filterlens made, nor new or empty; with
    ``merge_only`` it must hold a sweep already."""
    p = RunDir.validate(path, "sweep directory")
    kind = kind_of(p)
    if kind == "sweep":
        check_links(p, "sweep directory")
        return p
    if kind in ("missing", "empty"):
        if merge_only:
            raise FilterlensError(f"sweep directory '{p}' {'does not exist' if kind == 'missing' else 'is empty'}: "
                                  "there is nothing to --merge; start the sweep with filterlens sweep (without "
                                  "--merge) first")
        return p
    if kind == "run" or kind in _OTHER_KINDS:
        what = "a run directory" if kind == "run" else _OTHER_KINDS[kind]
        raise FilterlensError(f"'{p}' is {what}, not a sweep directory; give the sweep its own folder")
    files, more = some_files(p)
    raise FilterlensError(f"'{p}' is not a sweep directory: it holds files filterlens did not write "
                          f"({named(files, more)}); choose a new or empty folder")
