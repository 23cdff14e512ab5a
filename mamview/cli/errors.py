"""The top-level handler: every exception that reaches `main` ends as one line on stderr and
an exit status (see `mamview.cli`); `--debug` adds the traceback."""

from __future__ import annotations

import io
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from mamview.cli.common import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, term
from mamview.core import paths
from mamview.core.cache.db import DatabaseError
from mamview.core.errors import LibraryError, MamviewError


def debug_requested(argv: Sequence[str]) -> bool:
    """`--debug` anywhere on the command line, or MAMVIEW_DEBUG set to something but 0."""
    return "--debug" in argv or os.environ.get("MAMVIEW_DEBUG", "") not in ("", "0")


def exit_status(exc: BaseException, lib: paths.Library | None, debug: bool) -> int:
    """Say what `exc` means (unless it is our reader going away) and return the exit status."""
    if isinstance(exc, BrokenPipeError) and _stdout_gone():
        return _broken_pipe()
    # some other pipe or socket is a real failure, like everything else
    return _report(exc, lib, debug)


def _report(exc: BaseException, lib: paths.Library | None, debug: bool) -> int:
    """Print one line for `exc` (and its traceback when debugging); return the exit status."""
    message, status = _describe(exc, lib)
    try:
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        elif status == EXIT_INTERNAL and not isinstance(exc, MamviewError):
            message += " (run with --debug for the traceback)"
        print(f"mamview: {term(message)}", file=sys.stderr)
        sys.stderr.flush()
    except OSError:
        pass  # stderr is gone too: the exit status is all that is left to say it
    return status


def _describe(exc: BaseException, lib: paths.Library | None) -> tuple[str, int]:
    """The one-line message and exit status for an exception that reached `main`."""
    from mamview.core.cache.db import database_error, folder_error

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, MamviewError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        if lib is not None and _under(exc.filename, lib.home):
            return str(folder_error(lib.home, exc)), LibraryError.exit_code
        return _os_message(exc), 2
    if isinstance(exc, DatabaseError) and lib is not None:
        err = database_error(exc, lib.database)
        if err is not None:
            return str(err), err.exit_code
    return f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL


def _os_message(exc: OSError) -> str:
    """`path: reason` for an OSError (both paths of a rename); its text when it names none."""
    names = [os.fsdecode(f) for f in (exc.filename, exc.filename2) if isinstance(f, (str, bytes))]
    if not names or not exc.strerror:
        return str(exc)
    return f"{' -> '.join(names)}: {exc.strerror}"


def _under(filename, home: Path) -> bool:
    """Whether an OSError's file name lies in the library folder (or is it)."""
    if not isinstance(filename, (str, bytes)):
        return False
    target = Path(os.path.abspath(os.fsdecode(filename)))
    base = Path(os.path.abspath(home))
    return target == base or base in target.parents


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone away (poll reports an error on the write end of a pipe
    whose reader closed); True where that cannot be asked."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return True


def _broken_pipe() -> int:
    """The reader of stdout went away (`mamview patients | head`): end quietly.

    The Python docs' recipe (signal module, "Note on SIGPIPE"): point stdout at /dev/null so
    the interpreter's last flush at exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # stdout is not a file descriptor (called in-process): nothing to redirect
    return EXIT_BROKEN_PIPE
