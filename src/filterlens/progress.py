"""Progress display: a tqdm bar on every long loop when stderr is a terminal, nothing otherwise."""
from __future__ import annotations

import sys


def progress_bar(iterable, show: bool = True, **kw):
    """A tqdm bar when ``show`` and stderr is a terminal; the plain iterable otherwise."""
    if not show or not sys.stderr.isatty():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kw)
