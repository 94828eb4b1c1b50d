"""What filterlens tells its user, through one logger, ``filterlens``.

Progress lines, tables and notes are INFO records of that logger (:func:`say`). The command line shows them on
stdout, one line each, as before (:func:`to_stdout`, for the length of a command); a Python caller sees them where
its own logging sends them: Python shows WARNING and above by default, so the library is quiet unless asked, e.g.
``logging.basicConfig(level=logging.INFO)`` or ``logging.getLogger("filterlens").setLevel(logging.INFO)`` with a
handler. Under torchrun only rank 0 speaks; :func:`quiet` silences a block (the models of a sweep).
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from .distributed import is_main

LOGGER = logging.getLogger("filterlens")


def _rank_zero_only(record: logging.LogRecord) -> bool:
    """Under torchrun, the records of rank 0 only (every rank computes the same result)."""
    return is_main()


LOGGER.addFilter(_rank_zero_only)


def say(message: str) -> None:
    """Tell the user ``message`` (an INFO record of the ``filterlens`` logger)."""
    LOGGER.info(message)


@contextmanager
def quiet():
    """Inside the block, :func:`say` records nothing (warnings still pass)."""
    before = LOGGER.level
    LOGGER.setLevel(max(logging.WARNING, before))
    try:
        yield
    finally:
        LOGGER.setLevel(before)


class _Stdout(logging.Handler):
    """Each record's message on the stdout of the moment (a test's captured stdout included)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
        except BrokenPipeError:
            raise
        except Exception:  # noqa: BLE001 - logging's own convention: a failed record does not end the program
            self.handleError(record)


@contextmanager
def to_stdout(level: int = logging.INFO):
    """For the block (one command of the command line): the logger's records at ``level`` and above on stdout,
    not passed on to the root logger; the logger as it was afterwards."""
    handler = _Stdout()
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(before[0])
        LOGGER.propagate = before[1]
