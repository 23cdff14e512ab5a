"""Commands of the gui area: `gui` (also what a bare `mamview` runs) and `demo`.

A bare `mamview` opens the reading window on the user's library; `mamview gui` does the same
with options; `mamview demo` opens it on the synthetic demo cohort while that is written,
imported and scored (`--no-gui`: the console version). `mamview bench gui`, which measures the
window, is registered with the other benchmarks (`mamview.cli.bench`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

from mamview.cli.common import (EXIT_INTERRUPTED, CliError, drive, ensure_library, open_db,
                                print_summary)
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
                                    "open the window and score it live (no display: the "
                                    "console demo)")
    s.add_argument("--patients", type=int, default=20, metavar="N",
                   help="women in the cohort when it is first written (default 20; an existing "
                   "demo cohort in the library is reused as it is)")
    s.add_argument("--size", choices=("small", "full"), default="small",
                   help="image matrix: small (about 512 rows, fast) or full (detector size); "
                   "default small")
    s.add_argument("--no-gui", action="store_true",
                   help="console only (also what runs without a display): write, import and "
                   "score the cohort with the demo model, then print each woman's trajectory")
    s.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=None,
                   help="inference device (default: from Settings in the window, cpu on the "
                   "console)")
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
    """Write (once), import and score the demo cohort with the demo model, then print each of
    its women's trajectory. Resumable like `mamview score`: a rerun skips what is done."""
    from mamview.cli.analytics import print_trajectory_tables
    from mamview.cli.scoring import print_score_run, score_exams
    from mamview.core.cache import reads
    from mamview.core.demo_data import generate_cohort
    from mamview.core.ingest import run_import
    from mamview.core.models import registry
    from mamview.core.models.errors import ModelUnavailable

    ensure_library(lib)
    out = lib.home / "demo-cohort"
    if not (out / "images.csv").exists():
        print(f"Generating a synthetic demo cohort of {args.patients} women in {out} …")
        try:
            generate_cohort(out, n_patients=args.patients, size=args.size, seed=0)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    else:
        print(f"Using the demo cohort already in {out}.")
    # the patient folders only: the ground-truth CSVs beside them are not images to report
    summary = drive(run_import(lib, sorted(p for p in out.iterdir() if p.is_dir())))
    print_summary(summary)
    print()
    try:
        entry = registry.resolve(lib, "demo")
    except ModelUnavailable as exc:
        raise CliError(f"{exc}: the cohort is imported but not scored") from exc
    ids = _cohort_patient_ids(out)
    db = open_db(lib)
    try:
        # the demo women only: a library may hold real women too
        keys = [k for pid in ids for k in reads.find_patient_keys(db, pid)]
        shown = reads.choose_model(lib, None, db)
    finally:
        db.close()
    run = score_exams(lib, entry, keys, device=args.device or "cpu")
    if run.interrupted:
        return EXIT_INTERRUPTED
    print_score_run(run, entry, include_out_of_domain=False)
    print_trajectory_tables(lib, entry.model_id, entry.label or registry.DEMO_LABEL,
                            patient_ids=ids)
    model_opt = "" if shown and shown.model_id == entry.model_id else f" --model {entry.model_id}"
    print(f"\nSynthetic data, not patients. Try `mamview trajectory {ids[0]}{model_opt}` "
          "and `mamview patients`.")
    return 1 if run.failed else 0


def _cohort_patient_ids(out: Path) -> list[str]:
    """The PatientIDs of the demo cohort in `out` (from its outcomes.csv, one row a woman)."""
    with open(out / "outcomes.csv", newline="", encoding="utf-8") as f:
        return [row["patient_id"] for row in csv.DictReader(f)]
