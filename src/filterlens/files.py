"""Atomic file writes: write to a temporary file in the same directory, then rename.

A reader (or an interrupted run) therefore sees either the old file or the new
one, never a half-written one.

No write or delete goes through a link inside a folder filterlens owns (a folder holding its marker,
``.filterlens``): :func:`check_no_link` refuses a path whose way down from such a folder passes a symbolic
link (``heatmaps/`` replaced by a link to the user's pictures), so nothing outside the folder is written or
deleted. A link in the last place of the path is replaced, never followed: the rename of a write puts the file
in the link's place, and :func:`remove_file` unlinks the link itself, leaving its target as it is.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import FilterlensError
from .names import MARK  # the marker of a folder filterlens made (filterlens.folders)

TMP_SUFFIX = ".tmp"  # temporary files are ".NAME.<random>.tmp" beside NAME


def link_inside(path) -> Path | None:
    """The first symbolic link among the folders of ``path`` that lies inside a folder filterlens owns (one with
    its marker above the link), or None. The link is looked for between the folder and ``path``'s parent; a link
    in the last place of ``path`` is the caller's to replace."""
    p = Path(path).absolute()
    link = None
    for d in p.parents:
        if link is not None and (d / MARK).is_file():
            return link
        if link is None and d.is_symlink():
            link = d
    return None


def check_no_link(path, doing: str = "write") -> Path:
    """``path`` unless a symbolic link inside a folder filterlens owns lies on its way (:func:`link_inside`):
    then one line naming the link and where it leads; nothing is written or deleted through it."""
    link = link_inside(path)
    if link is not None:
        raise FilterlensError(f"'{link}' is a link to '{os.path.realpath(link)}'; filterlens does not {doing} "
                              f"through a link inside a folder it made ('{path}'): remove the link (the folder "
                              "filterlens makes there is its own) or choose another folder")
    return Path(path)


def remove_file(path) -> bool:
    """Delete the file ``path`` (a link: the link itself, never its target), refused through a link inside a
    folder filterlens owns (:func:`check_no_link`); returns whether something was deleted."""
    p = check_no_link(path, "delete")
    if p.is_symlink() or p.is_file():
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        return True
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_with(path, write: Callable[[Any], None]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, then rename it to ``path``."""
    return _atomic(path, write)


def _atomic(path, write: Callable[[Any], None], mode: str = "wb", private: bool = False) -> Path:
    from .distributed import check_write

    path = Path(path)
    if not private:
        check_write(path)  # under torchrun only rank 0 writes
    check_no_link(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path


def write_bytes(path, data: bytes, private: bool = False) -> Path:
    """``data`` into ``path`` (a temporary file, then a rename). ``private``: a file of this process' own (the disk
    cache of one rank under torchrun), written by any rank; results are written by rank 0 only."""
    return _atomic(path, lambda fh: fh.write(data), private=private)


def write_text(path, text: str) -> Path:
    """``text`` into ``path`` as UTF-8, atomically (:func:`write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"))


def _jsonable(obj):
    """Make numpy/torch scalars, paths and non-finite floats JSON-safe."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def write_json(path, obj, private: bool = False) -> Path:
    """``obj`` into ``path`` as indented JSON, atomically; NumPy and torch values, paths and non-finite floats made
    JSON-safe. ``private``: as for :func:`write_bytes`."""
    return write_bytes(path, (json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n").encode("utf-8"), private)


def read_json(path):
    """The parsed JSON file; a file that is not UTF-8 JSON is one line naming it (FilterlensError)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise FilterlensError(f"'{path}' is not valid JSON ({why}); the file is damaged or cut short") from None
    except IsADirectoryError:
        raise FilterlensError(f"'{path}' is a directory, not a JSON file") from None


def sha256_file(path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_csv(path, rows: Iterable[Mapping], columns: list[str] | None = None) -> Path:
    """``rows`` into ``path`` as CSV, atomically: ``columns`` (default: every key in first-seen order), floats to
    6 significant digits, None as an empty cell."""
    rows = list(rows)
    if columns is None:
        columns = []
        for row in rows:
            for key in row:
                if key not in columns:
                    columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    return write_text(path, buf.getvalue())


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _csv_value(v.item())
    return v


class _RecordingWriter:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports a full disk as a
    RuntimeError of its own, and the OSError it swallowed is what says what happened."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data):
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        return self.fh.flush()


def torch_save(path, obj) -> Path:
    """``torch.save(obj)`` into ``path``, atomically; a failed write raises its own OSError (a full disk says so)."""
    import torch

    def write(fh):
        out = _RecordingWriter(fh)
        try:  # torch.save writes to any object with write and flush (its documentation); its annotation says IO[bytes]
            torch.save(obj, out)  # type: ignore[arg-type]
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise

    return _atomic(path, write)
