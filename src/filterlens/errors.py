"""The one exception type that means "the user asked for something invalid".

The CLI turns it into one line on stderr and exit status 2 (no traceback); the
library raises it (a ``ValueError`` subclass) so Python callers can catch it too.
"""


class FilterlensError(ValueError):
    """A user mistake: a bad name, value, file or directory.

    The message names the bad value and what would be valid, on one line.
    """


class Diverged(FilterlensError):
    """A training diverged: its loss became NaN or infinite, or exploded (``filterlens.train.loss_limit``)."""


def closest(name, valid):
    """Return ``" (did you mean 'x'?)"`` for the closest valid name, or ``""``."""
    import difflib

    match = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
