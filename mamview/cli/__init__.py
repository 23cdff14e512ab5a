"""Command line: `mamview [--debug] [--home DIR] COMMAND …`.

One module per area registers its commands (`library`, `models`, `analytics`, `net`, `gui`,
`bench`); `common` holds what they share and `errors` the top-level handler. Commands import
what they need when they run, so `mamview --version` stays fast, the headless commands work
without a display, and nothing here imports torch.

Every failure ends in one line on stderr (`mamview: …`), a traceback only with `--debug` (or
MAMVIEW_DEBUG=1). Exit status: 0 done; 1 partly done (`import` of a missing path, a failed exam)
or an internal error (a bug: please report it with the `--debug` traceback); 2 an expected
failure (`MamviewError`: bad input, unusable library, refused file) or an OS error naming its
path; 130 interrupted (Ctrl-C); 141 the reader of our output went away (`mamview … | head`).
Text that comes from DICOM files or model files is shown through `term`, so control characters
cannot drive the terminal; `--json` output is escaped by the JSON encoder.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from mamview import __version__
from mamview.cli import analytics, bench, errors, gui, library, models, net
from mamview.core import paths

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="mamview",
        description="Serial screening mammograms beside an image-based 5-year risk trajectory.",
    )
    p.add_argument("--version", action="version", version=f"mamview {__version__}")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of a failure (also MAMVIEW_DEBUG=1)")
    p.add_argument("--home", metavar="DIR",
                   help="library folder (default: $MAMVIEW_HOME or the platform's data folder)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    library.register(sub)
    models.register(sub)
    analytics.register(sub)
    net.register(sub)
    gui.register(sub, p)  # also what a bare `mamview` runs
    bench.register(sub)
    _accept_debug_anywhere(p)
    return p


def _accept_debug_anywhere(parser: argparse.ArgumentParser) -> None:
    """`mamview import X --debug` works as well as `mamview --debug import X` (at every level:
    `mamview bench import --debug` too)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sp in action.choices.values():
            try:
                sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
            except argparse.ArgumentError:
                pass  # the command has a --debug of its own
            _accept_debug_anywhere(sp)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mamview` console script; returns the exit status (see the module
    docstring). Every exception ends here as one line on stderr; `--debug` adds the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = errors.debug_requested(argv)
    lib = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        lib = paths.library(args.home)
        status = args.func(args, lib) or 0
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return status
    except SystemExit:
        raise  # argparse's usage errors and --help, or a command's own exit
    except BaseException as exc:  # native panics are BaseExceptions too
        return errors.exit_status(exc, lib, debug)
