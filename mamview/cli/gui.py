"""Commands of the gui area: `gui` (also what a bare `mamview` runs) and `demo`.

A bare `mamview` opens the reading window on the user's library; `mamview gui` does the same
with options; `mamview demo` opens it on the synthetic demo cohort while that is written,
imported and scored (`--no-gui`: the console version). `mamview bench gui`, which measures the
window, is registered with the other benchmarks (`mamview.cli.bench`).
"""

from __future__ import annotations

import argparse
import os
import sys

from mamview.cli.common import CliError, drive, ensure_library, print_summary
from mamview.core.paths import Library


def register(sub: argparse._SubParsersAction, parser: argparse.ArgumentParser) -> None:
    """Add this area's commands to `sub`; make the window what a bare `mamview` (`parser`,
    the top level) runs."""
    parser.set_defaults(func=cmd_gui, device=None)

    s = sub.add_parser("gui", help="open the reading window on the library (the default)")
    s.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=None,
                   help="inference device for this session (default: from Settings)")
    s.add_argument("--patient", metavar="ID", help="open on this woman (PatientID)")
    s.add_argument("--layout", choices=("4up", "8up", "timeline"), default=None,
                   help="hanging to start with (default 4up)")
    s.set_defaults(func=cmd_gui)

    s = sub.add_parser("demo", help="generate the synthetic demo cohort into the library, "
                                    "open the window and score it live")
    s.add_argument("--patients", type=int, default=20)
    s.add_argument("--size", choices=("small", "full"), default="small")
    s.add_argument("--no-gui", action="store_true",
                   help="console only: write and import the cohort, print a summary")
    s.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=None)
    s.set_defaults(func=cmd_demo)


def _need_display() -> None:
    if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            or os.environ.get("QT_QPA_PLATFORM")):
        raise CliError("no display: run on a desktop, set QT_QPA_PLATFORM=offscreen, or use "
                           "the console commands (`mamview --help`)")


def _window_visible() -> bool:
    """Whether a window opened now would be seen (a real display, not Qt's offscreen one)."""
    if os.environ.get("QT_QPA_PLATFORM", "").split(":")[0] in ("offscreen", "minimal"):
        return False
    return not sys.platform.startswith("linux") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cmd_gui(args, lib: Library) -> int:
    """Open the reading window (what a bare `mamview` runs)."""
    _need_display()
    # an unusable library is refused by `run` itself: on stderr and, on a screen, in a dialog,
    # since a window opened from the desktop has no terminal to read
    from mamview.qt.app import run

    return run(lib, device=getattr(args, "device", None), patient=getattr(args, "patient", None),
               layout=getattr(args, "layout", None))


def cmd_demo(args, lib: Library) -> int:
    """The demo cohort in the window, scored live; the console demo without a display."""
    if args.patients < 1:
        raise CliError("--patients must be at least 1")
    if not args.no_gui and not _window_visible():
        print("No display to open a window on: running the console demo "
              "(use --no-gui to say so).", file=sys.stderr)
    elif not args.no_gui:
        ensure_library(lib)
        out = lib.home / "demo-cohort"
        if out.exists() and any(out.iterdir()) and not (out / ".mamview-demo-cohort").exists():
            raise CliError(f"{out} exists and is not a demo cohort; move it away first")
        from mamview.qt.app import run

        return run(lib, demo=True, device=args.device, patients=args.patients, size=args.size)
    return _demo_console(args, lib)


def _demo_console(args, lib: Library) -> int:
    from mamview.core.demo_data import generate_cohort
    from mamview.core.ingest import run_import

    ensure_library(lib)
    out = lib.home / "demo-cohort"
    if not (out / "images.csv").exists():
        print(f"Generating a synthetic demo cohort of {args.patients} women in {out} …")
        try:
            generate_cohort(out, n_patients=args.patients, size=args.size, seed=0)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    # the patient folders only: the ground-truth CSVs beside them are not images to report
    summary = drive(run_import(lib, sorted(p for p in out.iterdir() if p.is_dir())))
    print_summary(summary)
    print("\nSynthetic data, not patients. Try `mamview patients` and `mamview exams DEMO0001`.")
    return 0
