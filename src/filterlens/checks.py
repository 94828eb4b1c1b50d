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


_INTEGER = __import__("re").compile(r"[+-]?[0-9]+")


def is_int_text(text) -> bool:
    """Whether ``text`` is an integer as a user types one: ASCII digits with an optional sign (``"12"``, ``"-1"``;
    not ``"²"``, ``"١٢"``, ``"1.0"`` or ``""``, which ``str.isdigit`` or ``int`` would take or half-take)."""
    return isinstance(text, str) and _INTEGER.fullmatch(text.strip()) is not None


def parse_int(value, what: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` (an int, or text of ASCII digits with an optional sign) as an int within [low, high]; anything
    else is one line naming ``what`` and what would be valid. The one rule for every integer a user types."""
    if isinstance(value, bool) or not (isinstance(value, int) or is_int_text(value)):
        span = _span(low, high)
        raise FilterlensError(f"{what} is not an integer; give whole numbers in ASCII digits{span}")
    n = int(value.strip()) if isinstance(value, str) else int(value)
    if (low is not None and n < low) or (high is not None and n > high):
        raise FilterlensError(f"{what} = {n} is out of range; give an integer{_span(low, high)}")
    return n


def _span(low, high) -> str:
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" >= {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def int_flag(text: str) -> int:
    """An integer flag of the command line (argparse's ``type``): :func:`parse_int`'s rule, so ``"²"`` or
    ``"١٢"`` (which ``int`` takes or half-takes) is refused in argparse's one line naming the flag."""
    import argparse

    if not is_int_text(text):
        shown = "''" if str(text).strip() == "" else repr(text)
        raise argparse.ArgumentTypeError(f"{shown} is not an integer; give whole numbers in ASCII digits, e.g. 3")
    return int(text.strip())


def not_empty(value, what: str, valid: str):
    """``value`` unless it is an empty (or blank) string: an empty value is one line, never read as the default."""
    if isinstance(value, str) and value.strip() == "":
        raise FilterlensError(f"{what} '{value}' is empty; give {valid} (or leave it out for the default)")
    return value
