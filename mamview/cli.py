"""Command line: `mamview [--debug] [--home DIR] COMMAND …`.

GUI commands import the Qt layer lazily so the headless commands work without a display.

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
import importlib
import io
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from mamview import __version__
from mamview.core import paths
from mamview.core.cache.db import DatabaseError
from mamview.core.errors import LibraryError, MamviewError
from mamview.core.safety import printable

EXIT_PARTIAL = 1
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for `yes | head`


class CliError(MamviewError):
    """A user-facing error of a command: printed without a traceback, exit status 2."""


def term(value: object) -> str:
    """`value` as text safe for a terminal: control characters escaped (`safety.printable`),
    undecodable bytes of file names (surrogate escapes) shown as \\udcXX rather than failing."""
    return printable(value)


def ensure_library(lib: paths.Library) -> paths.Library:
    """`lib` with its folders created; `LibraryError` saying why when that is not possible."""
    from mamview.core.cache.db import folder_error

    try:
        return lib.ensure()
    except OSError as exc:
        raise folder_error(lib.home, exc) from exc


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _open_db(lib: paths.Library, *, reading: bool = False):
    """The library's database. `reading` commands also work on a library this user may read
    but not write (opened read-only, with a note on stderr); others get its `LibraryError`."""
    from mamview.core.cache import db as cache_db

    try:
        ensure_library(lib)
        return cache_db.connect(lib.database)
    except LibraryError as exc:
        if not reading or _writable(lib):
            raise  # not a read-only library: damaged, locked, or a command that must write
        if _file_in_the_way(lib.home):
            raise  # its message says it all
        if not os.path.isfile(lib.database):
            raise LibraryError(f"{exc}; there is no library database at {lib.database} "
                               "to read") from exc
    db = cache_db.connect_read_only(lib.database)
    _note(f"the library {lib.home} is read-only for this user: showing it as it is, "
          "without updates")
    return db


def _file_in_the_way(home: Path) -> bool:
    """Whether the library folder, or the nearest of its parents that exists, is no folder."""
    p = Path(os.path.abspath(home))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return not os.path.isdir(p)


def _writable(lib: paths.Library) -> bool:
    """Whether this user may write the library folder and its database (if there is one)."""
    home_ok = os.access(lib.home, os.W_OK | os.X_OK)
    return home_ok and (not os.path.exists(lib.database) or os.access(lib.database, os.W_OK))


def _note(message: str) -> None:
    print(f"mamview: note: {term(message)}", file=sys.stderr)


def _patient_keys(db, patient_id: str | None) -> list[str] | None:
    """Cache keys of the woman with this PatientID (None: everyone); CliError if unknown."""
    from mamview.core.cache import reads

    if not patient_id:
        return None
    keys = reads.find_patient_keys(db, patient_id)
    if not keys:
        raise CliError(f"no patient with ID {patient_id!r} in the library")
    return keys


def _drive(gen, *, quiet: bool = False):
    """Run an import-style event generator with a tqdm bar per phase; return its result."""
    from tqdm import tqdm

    from mamview.core.ingest import Progress

    bars: dict[str, tqdm] = {}
    labels = {"indexing": "Indexing headers", "previews": "Making previews"}
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            if quiet or not isinstance(ev, Progress) or ev.phase not in labels:
                continue
            bar = bars.get(ev.phase)
            if bar is None:
                bar = bars[ev.phase] = tqdm(
                    total=ev.total, desc=labels[ev.phase], unit="file", file=sys.stderr,
                    leave=True, dynamic_ncols=True,
                )
            bar.update(ev.done - bar.n)
    finally:
        for bar in bars.values():
            bar.close()


def _print_summary(summary) -> None:
    t = summary.totals
    print(
        f"Imported {summary.files_seen} files in {summary.seconds:.1f} s: "
        f"{summary.added} new images, {summary.updated} re-read, {summary.unchanged} unchanged."
    )
    print(
        f"Library: {t.get('patients', 0)} patients, {t.get('exams', 0)} exams, "
        f"{t.get('images', 0)} images."
    )
    if summary.previews or summary.preview_failures:
        print(f"Previews made: {summary.previews}")
    skipped = {k: v for k, v in summary.skipped.items() if v}
    if skipped:
        print(f"Skipped {sum(skipped.values())} files:")
        for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:6d}  {reason}")
        print("Run `mamview problems` for the list of files and reasons.")
    if summary.missing:
        print(f"{summary.missing} indexed files are missing on disk (see `mamview problems`).")


# ---------------------------------------------------------------- commands


def cmd_import(args, lib: paths.Library) -> int:
    """Import what exists; a path that does not is named on stderr and the exit status is 1."""
    from mamview.core.ingest import run_import

    # checked here, not from the summary, so the exit status does not hang on a reason's wording
    missing = [p for p in args.paths if not os.path.exists(os.path.expanduser(p))]
    ensure_library(lib)
    try:
        summary = _drive(
            run_import(lib, args.paths, make_previews=not args.no_previews), quiet=args.json
        )
    except KeyboardInterrupt:
        print("\nImport interrupted; what was indexed is kept. Run the same command again "
              "to complete it.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        _print_json(summary.as_dict())
    else:
        _print_summary(summary)
    for p in missing:
        print(f"mamview: not found: {term(p)} (no such file or folder)", file=sys.stderr)
    return EXIT_PARTIAL if missing else 0


def cmd_demo_data(args, lib: paths.Library) -> int:
    from tqdm import tqdm

    from mamview.core.demo_data import generate_cohort

    with tqdm(total=None, desc="Writing demo cohort", unit="image", file=sys.stderr,
              disable=args.json) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = generate_cohort(
                Path(args.out), n_patients=args.patients, size=args.size, seed=args.seed,
                progress=progress,
            )
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(summary).items()}
    if args.json:
        _print_json(info)
    else:
        print(f"Wrote {summary.images} images of {summary.exams} exams for "
              f"{summary.patients} women to {args.out}")
    return 0


def cmd_patients(args, lib: paths.Library) -> int:
    from mamview.core.cache import reads

    db = _open_db(lib, reading=True)
    rows = reads.list_patients(db)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("The library is empty. Import files with `mamview import PATH` "
              "or load the demo with `mamview demo`.")
        return 0
    print(f"{'Patient ID':<16} {'Name':<24} {'Birth':<10} {'Exams':>5}  First       Last")
    for r in rows:
        print(f"{term(r['patient_id']):<16} {term(r['name'])[:24]:<24} "
              f"{term(r['birth_date']):<10} {r['exams']:>5}  "
              f"{term(r['first_exam'] or '-'):<10}  {term(r['last_exam'] or '-')}")
    return 0


def cmd_exams(args, lib: paths.Library) -> int:
    """List exams with their views and, per exam, the score state of the shown model
    (current | stale | pending | unscorable) with the stored score's model identity."""
    from mamview.core.cache import reads

    db = _open_db(lib, reading=True)
    exams = reads.list_exams(db, _patient_keys(db, args.patient))
    model = reads.choose_model(lib, args.model, db)
    states = reads.current_scores(db, [e["exam_key"] for e in exams], model) if model else {}
    if args.json:
        for e in exams:
            e["images"] = [
                {k: im[k] for k in ("label", "laterality", "laterality_source", "view",
                                    "view_source", "view_modifiers", "is_standard",
                                    "presentation_intent", "missing", "decode_error",
                                    "sop_instance_uid", "path")}
                for im in e["images"]
            ]
            s = states.get(e["exam_key"])
            e["score"] = s.as_dict() if s else {"state": "pending"}
            e["model"] = model.identity() if model else None
        _print_json(exams)
        return 0
    for e in exams:
        labels = " ".join(im["label"] + ("*" if not im["is_standard"] else "")
                          for im in e["images"])
        state = "complete" if e["complete"] else e["incomplete_reason"]
        s = states.get(e["exam_key"])
        score = "" if s is None else f"  {_score_word(s)}"
        print(term(f"{e['patient_id']:<16} {e['exam_date'] or '(no date)':<10}  "
                   f"{len(e['images']):2d} images  {labels:<32} {state}{score}"))
    return 0


def _score_word(s) -> str:
    """One exam's score in a few words: '5-yr 2.1%', 'stale (recomputing: …)', 'pending'."""
    if s.five_year_percent is not None:
        return f"5-yr {s.five_year_percent:.1f}%"
    if s.state == "stale":
        return f"stale ({s.reason})"
    return s.state.value if s.state != "unscorable" else "not scorable"


def cmd_problems(args, lib: paths.Library) -> int:
    from mamview.core.cache import reads

    db = _open_db(lib, reading=True)
    rows = reads.list_problems(db)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("No problems recorded.")
    for r in rows:
        print(f"{term(r['reason']):<22} {term(r['path'])}")
        if r["detail"]:
            print(f"{'':<22} {term(r['detail'])}")
    return 0


def cmd_models(args, lib: paths.Library) -> int:
    from mamview.core.models import registry

    if args.action == "install":
        from mamview.core.models.snapshots import convert_release

        if not args.path:
            raise CliError("models install needs the path of the release folder or zip")
        models = ensure_library(lib).models
        # every refusal is a MamviewError worded by the model area: the top-level handler prints it
        out = convert_release(args.path, models)
        print(f"Installed Mirai into {term(out)}")
        return 0
    entries = registry.list_models(lib)
    if args.json:
        _print_json([vars(e) for e in entries])
        return 0
    for e in entries:
        state = "available" if e.available else f"unavailable: {e.reason}"
        # names and labels come from model files someone downloaded
        print(f"{term(e.model_id):<6} {term(e.name):<34} {term(state)}")
        if e.available and e.label:
            print(f"{'':<6} {term(e.label)}")
        if args.action == "info" and e.available:
            print(f"{'':<6} folder: {term(e.folder)}")
            text = (e.folder / "config.json").read_text(errors="replace")
            print("\n".join(term(line) for line in text.splitlines()))
    return 0


def cmd_check(args, lib: paths.Library) -> int:
    from mamview.core import firstrun
    from mamview.core import settings

    results = firstrun.run_checks(lib, device_preference=settings.load(lib.settings_file).device)
    if args.json:
        _print_json([vars(r) for r in results])
    else:
        print(f"Library: {lib.home}")
        print(firstrun.format_results(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_bench(args, lib: paths.Library) -> int:
    from mamview.bench import library as bench

    return bench.main(args, lib)


# ---------------------------------------------------------------- parser


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

    s = sub.add_parser("import", help="index DICOM files, folders or DICOMDIRs into the library")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--no-previews", action="store_true", help="index headers only")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("demo-data", help="write a synthetic cohort of serial mammograms")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--patients", type=int, default=20)
    s.add_argument("--size", choices=("small", "full"), default="small")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("patients", help="list the women in the library")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_patients)

    s = sub.add_parser("exams", help="list exams (of one woman, or all) with their views")
    s.add_argument("patient", nargs="?", metavar="PATIENT", help="PatientID")
    s.add_argument("--model", default=None,
                   help="whose scores to report (default: the settings' model, else the best installed)")
    s.add_argument("--json", action="store_true", help="print as JSON (with each exam's score state)")
    s.set_defaults(func=cmd_exams)

    s = sub.add_parser("problems", help="list files that were skipped, and why")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_problems)

    s = sub.add_parser("models", help="list, install or describe risk models")
    s.add_argument("action", choices=("list", "install", "info"))
    s.add_argument("path", nargs="?", metavar="PATH", help="release folder or zip (install)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("check", help="first-run checks: library folder, free disk, GPU or CPU")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("bench", help="measure performance figures")
    bsub = s.add_subparsers(dest="bench", metavar="WHAT", required=True)
    b = bsub.add_parser("import", help="header indexing and preview generation rates")
    b.add_argument("--patients", type=int, default=6)
    b.add_argument("--size", choices=("small", "full"), default="full")
    b.add_argument("--work", metavar="DIR", help="folder for the generated cohort (kept)")
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b = bsub.add_parser("infer", help="seconds per exam on CPU (and GPU where present)")
    b.add_argument("--height", type=int, default=2048)
    b.add_argument("--width", type=int, default=1664)
    b.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 on CPU; 1 8 32 on GPU)")
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    s.set_defaults(func=cmd_bench)

    # each area registers its own commands, so they can grow without touching this file
    for name in _EXTENSIONS:
        importlib.import_module(name).register(sub, bsub, p)
    _accept_debug_anywhere([sub, bsub])
    return p


def _accept_debug_anywhere(groups: list[argparse._SubParsersAction]) -> None:
    """`mamview import X --debug` works as well as `mamview --debug import X`."""
    for group in groups:
        for sp in group.choices.values():
            try:
                sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
            except argparse.ArgumentError:
                pass  # the command has a --debug of its own


_EXTENSIONS = ("mamview.cli_gui", "mamview.cli_net", "mamview.cli_analytics")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mamview` console script; returns the exit status (see the module
    docstring). Every exception ends here as one line on stderr; `--debug` adds the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MAMVIEW_DEBUG", "") not in ("", "0")
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
    except BrokenPipeError as exc:
        if _stdout_gone():
            return _broken_pipe()
        return _report(exc, lib, debug)  # some other pipe or socket: a real failure
    except BaseException as exc:  # native panics are BaseExceptions too
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


if __name__ == "__main__":
    sys.exit(main())
