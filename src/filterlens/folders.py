"""Folders filterlens makes, and how it knows them: a marker file, ``.filterlens``.

Every folder filterlens makes for its own use (a run directory, a sweep directory, the disk engine's
cache folder, the output of ``filterlens compare``, the glyphs dataset's rendered images) holds ``.filterlens`` (JSON:
``made_by``, ``kind``, ``version``); :func:`kind_of` reads it.
A folder without the marker is recognised as an earlier filterlens left it: a run directory by its
``config.json`` (a JSON object naming ``dataset`` and ``model``, which every filterlens wrote first) or its
``stages.json``; a sweep directory by its ``sweep_plan.json`` (a JSON object listing ``tasks``). Anything
else that is not empty is the user's, and filterlens neither writes into it nor deletes from it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import FilterlensError
from .files import write_json
from .names import CONFIG, LOCK, LOCK_INFO, MANIFEST, MARK, OWN_SUBFOLDERS, SWEEP_PLAN

KINDS = ("run", "sweep", "cache", "compare", "glyphs", "seeds")  # glyphs: the rendered images of filterlens.glyphs;
# seeds: the runs of one recipe over seeds (filterlens run --seeds), one run directory per seed inside
LOCK_FILES = (LOCK, LOCK_INFO)  # a run directory's lock (filterlens.rundir)
# the disk engine's files in its folder: <key>.{train,test}.{f16,labels}, <key>.means.pt, <key>.json, <key>.lock
CACHE_FILE = re.compile(r"^[0-9a-f]{24}\.(train\.f16|train\.labels|test\.f16|test\.labels|means\.pt|json|lock)$")
# the temporary files of files._atomic: ".NAME.<8 characters of tempfile's alphabet>.tmp"
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
# the marker's own temporary file: a command killed while marking the folder leaves it beside the lock
_MARK_TEMPORARY = re.compile(r"^\." + re.escape(MARK) + r"\.[a-z0-9_]{8}\.tmp$")


def is_temporary(name: str) -> bool:
    """A temporary file filterlens writes (and renames) beside ``NAME``."""
    return bool(_TEMPORARY.match(name))


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def read_mark(folder) -> dict | None:
    """The marker of a folder filterlens made, or None."""
    data = _json(Path(folder) / MARK)
    if isinstance(data, dict) and data.get("made_by") == "filterlens" and data.get("kind") in KINDS:
        return data
    return None


def mark(folder, kind: str, private: bool = False, **extra) -> None:
    """Mark ``folder`` as filterlens' own (kept as it is when already marked so). ``private``: written by any
    process (see :func:`filterlens.files.write_bytes`)."""
    old = read_mark(folder)
    if old is not None and old["kind"] == kind and all(old.get(k) == v for k, v in extra.items()):
        return
    from .version import __version__

    write_json(Path(folder) / MARK, {**(old or {}), "made_by": "filterlens", "version": __version__, **extra,
                                     "kind": kind}, private=private)


def kind_of(folder) -> str:
    """``missing``, ``file``, ``empty``, a marked kind (``run``, ``sweep``, ``cache``), a recognised one of an
    earlier filterlens (``run``, ``sweep``), or ``foreign`` (a folder holding files filterlens did not write)."""
    p = Path(folder)
    if not p.exists():
        return "missing"
    if not p.is_dir():
        return "file"
    found = read_mark(p)
    if found is not None:
        return found["kind"]
    if all(e.name in LOCK_FILES or _MARK_TEMPORARY.match(e.name) for e in p.iterdir()):
        return "empty"  # nothing but the lock (and the half-written marker) of a command that is making it
    config = _json(p / CONFIG)
    if isinstance(config, dict) and "dataset" in config and "model" in config:
        return "run"
    stages = _json(p / MANIFEST)
    if isinstance(stages, dict) and stages and all(isinstance(v, dict) and "sha256" in v for v in stages.values()):
        return "run"
    plan = _json(p / SWEEP_PLAN)
    if isinstance(plan, dict) and isinstance(plan.get("tasks"), list):
        return "sweep"
    return "foreign"


def links_in(folder) -> list[Path]:
    """The symbolic links under ``folder`` (itself not followed into any link) that lead to a folder, or that
    dangle where filterlens makes a folder of its own: filterlens would write or delete through them."""
    import os

    root = Path(folder)
    found: list[Path] = []
    if not root.is_dir():
        return found
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(top) / name
            if p.is_symlink() and (p.is_dir() or (not p.exists() and name in OWN_SUBFOLDERS)):
                found.append(p)
    return sorted(found)


def check_links(folder, what: str = "folder") -> None:
    """Refuse (one line, before any work) a folder filterlens owns that holds a link to a folder (:func:`links_in`):
    filterlens never writes or deletes through a link out of the folder it owns."""
    import os

    found = links_in(folder)
    if found:
        link = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise FilterlensError(f"'{link}' in the {what} '{folder}' is a link to '{os.path.realpath(link)}'{more}; "
                              "filterlens never writes or deletes through a link out of a folder it made: remove "
                              "the link (the folder filterlens makes there is its own) or choose another folder")


def some_files(folder, limit: int = 4) -> tuple[list[str], bool]:
    """Up to ``limit`` paths (relative, files first found) under ``folder``, and whether there are more."""
    root = Path(folder)
    out: list[str] = []
    for p in sorted(root.rglob("*")):
        if p.is_file() or (p.is_dir() and not any(p.iterdir())):
            if len(out) == limit:
                return out, True
            out.append(str(p.relative_to(root)))
    return out, False


def named(paths: list[str], more: bool = False) -> str:
    """``paths`` joined by commas, with ``, ...`` when there are ``more``: a list for a one-line message."""
    return ", ".join(paths) + (", ..." if more else "")


def make_dirs(path) -> list[Path]:
    """Create ``path`` and its missing parents; returns the folders created, outermost first."""
    p = Path(path).absolute()
    missing = []
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        made.append(d)
    return made


def remove_empty(folders) -> None:
    """Remove each of ``folders`` (innermost first) that is empty; leave the others."""
    for d in sorted((Path(f) for f in folders), key=lambda f: len(f.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
