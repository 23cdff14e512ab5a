"""What every command area shares: the user-facing error, terminal-safe text, opening the
library and its database, progress bars for imports, and the import summary."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mamview.core import paths
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


def note(message: str) -> None:
    """A `mamview: note: …` line on stderr (terminal-safe)."""
    print(f"mamview: note: {term(message)}", file=sys.stderr)


def print_json(obj) -> None:
    """`obj` as indented JSON on stdout (the encoder escapes what came from files)."""
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def ensure_library(lib: paths.Library) -> paths.Library:
    """`lib` with its folders created; `LibraryError` saying why when that is not possible."""
    from mamview.core.cache.db import folder_error

    try:
        return lib.ensure()
    except OSError as exc:
        raise folder_error(lib.home, exc) from exc


def open_db(lib: paths.Library, *, reading: bool = False):
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
    note(f"the library {lib.home} is read-only for this user: showing it as it is, "
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


def patient_keys(db, patient_id: str | None) -> list[str] | None:
    """Cache keys of the woman with this PatientID (None: everyone); CliError if unknown."""
    from mamview.core.cache import reads

    if not patient_id:
        return None
    keys = reads.find_patient_keys(db, patient_id)
    if not keys:
        raise CliError(f"no patient with ID {patient_id!r} in the library")
    return keys


def drive(gen, *, quiet: bool = False):
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


def print_summary(summary) -> None:
    """What an import did, in a few lines (skipped files counted by reason)."""
    t = summary.totals
    print(
        f"Imported {summary.files_seen} files in {summary.seconds:.1f} s: "
        f"{summary.added} new images, {summary.updated} re-read, {summary.unchanged} unchanged."
    )
    print(
        f"Library: {t.get('patients', 0)} patients, {t.get('exams', 0)} exams, "
        f"{t.get('images', 0)} images."
    )
    if summary.objects:
        print(f"Filed {summary.objects} other study objects (CAD SR, presentation states, key "
              "objects, …) with their exams.")
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
