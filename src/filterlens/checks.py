"""Argument checks at the entry of every public function: a wrong type is one clear line (FilterlensError),
never an AttributeError or TypeError from deep inside."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import FilterlensError


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def path_arg(value, what: str = "path") -> Path:
    """``value`` as a Path: a str or an os.PathLike, not empty."""
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise FilterlensError(f"{what} {_shown(value)} is a {type(value).__name__}; give a folder path (a str or "
                              "pathlib.Path), e.g. 'runs/mine'")
    if str(value).strip() == "":
        raise FilterlensError(f"{what} '{value}' is empty; give a folder path, e.g. runs/mine")
    return Path(value)


def of_type(value, types, what: str, valid: str):
    """``value`` when it is an instance of ``types`` (bools are not ints), else one line naming both."""
    kinds = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise FilterlensError(f"{what} {_shown(value)} is a {type(value).__name__}; give {valid}")
    return value
