"""Expected failures: each carries a one-line message for the user.

The command line prints `mamview: <message>` and exits non-zero for any `MamviewError`, without a
traceback (that needs `--debug`). Modules raise a subclass that says which area refused.
"""

from __future__ import annotations


class MamviewError(Exception):
    """An expected failure (bad input, unusable library, refused file); str() is the message."""

    exit_code = 2


class LibraryError(MamviewError, OSError):
    """The library folder or its database cannot be used (missing, read-only, full, locked)."""


class InputRefused(MamviewError, ValueError):
    """Something read from outside (a file, a header, a peer, a model file) was refused."""


class LimitExceeded(InputRefused):
    """A size, count, depth or time declared or used by an input is over its cap."""
