"""Import: find DICOM files, index their headers into the cache, then make display previews.

`run_import` is a generator of events (progress, problems) that returns an `ImportSummary`, so
the CLI can drive a progress bar and the GUI can run it in a worker and relay the events.
It is idempotent: unchanged files are skipped, changed files are re-read, deleted files are
marked missing. It never writes to the user's files. An interrupted run leaves whole batches
committed; the next run completes the rest.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Iterable

import sqlite_utils

from mamview.core.cache import store
from mamview.core.cache.db import connect
from mamview.core.dicom import headers
from mamview.core.domain import ImageHeader, Problem
from mamview.core.paths import Library

BATCH_SIZE = 256
PREVIEW_HEIGHT = 1024
PREVIEW_PIPELINE_VERSION = 1


@dataclass(frozen=True)
class Progress:
    """`done` of `total` items of a phase ('finding', 'indexing', 'previews')."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ProblemFound:
    """A file was skipped (or an image could not be decoded)."""

    problem: Problem


@dataclass
class ImportSummary:
    """What an import did, and what the cache holds afterwards."""

    files_seen: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason → count, this run
    missing: int = 0  # indexed files that have disappeared
    previews: int = 0
    preview_failures: int = 0
    seconds: float = 0.0
    totals: dict = field(default_factory=dict)  # patients, exams, images… in the cache

    def as_dict(self) -> dict:
        """JSON-friendly form."""
        d = dict(self.__dict__)
        d["skipped"] = {k: v for k, v in self.skipped.items() if v}
        return d


Event = Progress | ProblemFound


def find_files(paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[Problem]]:
    """Expand files, folders (recursively) and DICOMDIRs into a sorted list of absolute paths.

    A path that does not exist is returned as a Problem instead of raising.
    """
    found: set[str] = set()
    problems: list[Problem] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            problems.append(Problem(str(path), "not found", "no such file or folder"))
            continue
        path = path.resolve()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                # hidden files and folders (.DS_Store, .git, our cohort marker) are not exams
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in files:
                    if name.upper() == "DICOMDIR" or name.startswith("."):
                        continue  # DICOMDIR is an index: the files it names are in the walk
                    found.add(os.path.join(root, name))
        elif path.name.upper() == "DICOMDIR":
            try:
                found.update(str(f.resolve()) for f in headers.dicomdir_files(path))
            except (ValueError, OSError) as exc:
                problems.append(Problem(str(path), "unreadable DICOMDIR", str(exc)))
        else:
            found.add(str(path))
    return sorted(found), problems


def run_import(
    lib: Library,
    paths: Iterable[str | os.PathLike],
    *,
    make_previews: bool = True,
    cancel: threading.Event | None = None,
    db: sqlite_utils.Database | None = None,
) -> Generator[Event, None, ImportSummary]:
    """Index `paths` into the library's cache, yielding events; returns the summary."""
    t0 = time.perf_counter()
    lib.ensure()
    own_db = db is None
    db = db or connect(lib.database)
    summary = ImportSummary()
    try:
        yield Progress("finding", 0, 0)
        roots = [Path(p).expanduser() for p in paths]
        files, not_found = find_files(roots)
        summary.files_seen = len(files)
        for prob in not_found:
            summary.skipped[prob.reason] += 1
            yield ProblemFound(prob)

        yield from _index(db, files, summary, cancel)
        summary.missing = _notice_deleted(db, roots, set(files))
        if make_previews and not _cancelled(cancel):
            yield from generate_previews(lib, db, summary=summary, cancel=cancel)
        summary.totals = store.counts(db)
        summary.seconds = time.perf_counter() - t0
        return summary
    finally:
        if own_db:
            db.close()


def drain(gen):
    """Run an import-style generator (events, then a return value) to its end; return the value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def _index(
    db: sqlite_utils.Database,
    files: list[str],
    summary: ImportSummary,
    cancel: threading.Event | None,
) -> Generator[Event, None, None]:
    known = store.known_files(db)
    back_again: list[str] = []
    batch_headers: list[ImageHeader] = []
    batch_problems: list[Problem] = []
    problem_stats: dict[str, tuple[int, int]] = {}
    duplicates: list[Problem] = []

    def flush():
        result = store.write_batch(db, batch_headers, batch_problems, problem_stats)
        summary.added += result.added
        summary.updated += result.updated
        if result.duplicates:
            summary.skipped["duplicate"] += len(result.duplicates)
        duplicates.extend(result.duplicates)
        batch_headers.clear()
        batch_problems.clear()
        problem_stats.clear()

    total = len(files)
    for i, path in enumerate(files, 1):
        if _cancelled(cancel):
            break
        try:
            st = os.stat(path)
            stat = (st.st_size, st.st_mtime_ns)
        except OSError as exc:
            prob = Problem(path, "unreadable file", str(exc))
            summary.skipped[prob.reason] += 1
            yield ProblemFound(prob)
            continue
        if known.get(path) == stat:
            summary.unchanged += 1
            back_again.append(path)
        else:
            result = headers.read_header(path)
            if isinstance(result, Problem):
                batch_problems.append(result)
                problem_stats[path] = stat
                summary.skipped[result.reason] += 1
                yield ProblemFound(result)
            else:
                batch_headers.append(result)
        if len(batch_headers) + len(batch_problems) >= BATCH_SIZE:
            flush()
        if i % 64 == 0 or i == total:
            yield Progress("indexing", i, total)
    if batch_headers or batch_problems:
        flush()
    for prob in duplicates:
        yield ProblemFound(prob)
    store.set_missing(db, back_again, missing=False)


def _notice_deleted(db: sqlite_utils.Database, roots: list[Path], seen: set[str]) -> int:
    """Mark indexed files under the imported roots that no longer exist."""
    prefixes = []
    for r in roots:
        r = r.resolve() if r.exists() else r.absolute()
        prefixes.append(str(r) + (os.sep if r.is_dir() else ""))
    gone = []
    for (path,) in db.execute("SELECT path FROM files"):
        if path in seen or not any(path == p or path.startswith(p) for p in prefixes):
            continue
        if not os.path.exists(path):
            gone.append(path)
    store.set_missing(db, gone, missing=True)
    return db.execute("SELECT count(*) FROM images WHERE missing").fetchone()[0]


def preview_file(lib: Library, sop_uid: str) -> Path:
    """Where the preview PNG of an image lives (sharded to keep folders small)."""
    shard = hashlib.sha1(sop_uid.encode()).hexdigest()[:2]
    return lib.previews / shard / f"{sop_uid}.png"


def generate_previews(
    lib: Library,
    db: sqlite_utils.Database,
    *,
    first_patient: str | None = None,
    summary: ImportSummary | None = None,
    cancel: threading.Event | None = None,
    reduced: bool = True,
) -> Generator[Event, None, None]:
    """Make the missing or stale display previews, most needed first."""
    from mamview.core import previews  # decoders load only when previews are made
    from mamview.core.dicom.pixels import PixelDecodeError

    todo = store.images_needing_previews(db, PREVIEW_PIPELINE_VERSION, first_patient)
    total = len(todo)
    for i, row in enumerate(todo, 1):
        if _cancelled(cancel):
            return
        try:
            pv = previews.make_preview(row["path"], target_height=PREVIEW_HEIGHT, reduced=reduced)
        except (PixelDecodeError, OSError, ValueError) as exc:
            message = str(exc) or type(exc).__name__
            store.record_decode_error(db, row["sop_instance_uid"], row["path"], message)
            if summary is not None:
                summary.preview_failures += 1
                summary.skipped["corrupt pixel data"] += 1
            yield ProblemFound(Problem(row["path"], "corrupt pixel data", message))
            continue
        out = preview_file(lib, row["sop_instance_uid"])
        out.parent.mkdir(parents=True, exist_ok=True)
        previews.save_png(pv.array, out)
        store.save_preview_row(
            db,
            {
                "sop_instance_uid": row["sop_instance_uid"],
                "file": str(out.relative_to(lib.previews)),
                "width": int(pv.array.shape[1]),
                "height": int(pv.array.shape[0]),
                "flip_lr": int(pv.flip_lr),
                "flip_ud": int(pv.flip_ud),
                "orientation_source": str(pv.orientation_source),
                "reduce_factor": int(pv.reduce_factor),
                "source_size": row["size"],
                "source_mtime_ns": row["mtime_ns"],
                "pipeline_version": PREVIEW_PIPELINE_VERSION,
            },
        )
        if summary is not None:
            summary.previews += 1
        yield Progress("previews", i, total)
