"""Import: find DICOM files, index their headers into the cache, then make display previews.

`run_import` is a generator of events (progress, problems) that returns an `ImportSummary`, so
the CLI can drive a progress bar and the GUI can run it in a worker and relay the events.
It is idempotent: unchanged files are skipped, changed files are re-read, deleted files are
marked missing. It never writes to the user's files. An interrupted run leaves whole batches
committed; the next run completes the rest.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generator, Iterable

from mamview.core import safety
from mamview.core.cache import reads, writes
from mamview.core.cache.db import Database, connect
from mamview.core.dicom import headers
from mamview.core.domain import ImageHeader, Problem, StudyObject
from mamview.core.errors import MamviewError
from mamview.core.paths import Library

log = logging.getLogger(__name__)

BATCH_SIZE = 256
PREVIEW_HEIGHT = 1024
PREVIEW_PIPELINE_VERSION = 1
# A preview's temp file lives while one PNG is encoded (well under a second); one this old was
# left by a killed import, never by a concurrent writer.
ORPHAN_TEMP_AGE_S = 600

# Problem reasons of the search for files (no file of these is ever opened)
NOT_FOUND = "not found"
UNREADABLE_FOLDER = "unreadable folder"
UNUSABLE_NAME = "unusable file name"
PREVIEW_NOT_WRITTEN = "preview not written"
DISPLAY_NOTE = "shown differently"  # e.g. an implausible window replaced by the image's range

_swept: set[Path] = set()  # previews folders cleaned of orphan temp files by this process


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
    objects: int = 0  # study members filed (CAD SR, presentation states, key objects, …)
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

    Nothing is opened except DICOMDIRs named in `paths` (regular files only). A path that does
    not exist, a folder that cannot be listed, a DICOMDIR that cannot be read or names a file
    outside its folder, and a file name that the cache cannot store are Problems, not errors.
    """
    found: set[str] = set()
    problems: list[Problem] = []
    for p in paths:
        path = Path(p).expanduser().absolute()
        try:
            info = path.stat()
        except OSError as exc:
            missing = isinstance(exc, (FileNotFoundError, NotADirectoryError))
            problems.append(Problem(shown_path(str(path)), NOT_FOUND if missing else headers.UNREADABLE_FILE,
                                    "no such file or folder" if missing else (exc.strerror or str(exc))))
            continue
        path = path.resolve()
        if stat.S_ISDIR(info.st_mode):
            _walk(path, found, problems)
        elif path.name.upper() == "DICOMDIR":
            _add_dicomdir(path, found, problems)
        else:
            found.add(str(path))  # a special file is refused by the header scan, unopened
    usable = []
    for f in sorted(found):
        if storable(f):
            usable.append(f)
        else:
            problems.append(Problem(shown_path(f), UNUSABLE_NAME,
                                    "the file name is not valid UTF-8; rename the file to import it"))
    return usable, problems


def _walk(root: Path, found: set[str], problems: list[Problem]) -> None:
    """Add the files under `root`; a folder that cannot be listed is a Problem.

    Folders are listed through directory fds (os.fwalk) where the platform has them, so a
    tree nested deeper than PATH_MAX is still listed and its files are recorded by name.
    """
    def unreadable(exc: OSError, path: str | None = None) -> None:
        detail = exc.strerror or str(exc)
        if exc.errno == errno.ENAMETOOLONG:
            detail += ": the folder is nested deeper than the system's path limit; its files cannot be read"
        problems.append(Problem(shown_path(path or str(exc.filename or root)), UNREADABLE_FOLDER, detail))

    def add(folder: str, files: list[str]) -> None:
        for name in files:
            if name.upper() == "DICOMDIR" or name.startswith("."):
                continue  # DICOMDIR is an index: the files it names are in the walk
            found.add(os.path.join(folder, name))

    if not hasattr(os, "fwalk"):
        for folder, dirs, files in os.walk(root, onerror=unreadable):
            # hidden files and folders (.DS_Store, .git, our cohort marker) are not exams
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            add(folder, files)
        return
    try:
        for folder, dirs, files, dir_fd in os.fwalk(root):
            dirs[:] = _enterable(folder, dirs, dir_fd, unreadable)
            add(folder, files)
    except OSError as exc:  # the root, or a listing that failed midway (a damaged disc)
        unreadable(exc, str(root) if exc.filename in (None, str(root)) else None)


def _enterable(folder: str, dirs: list[str], dir_fd: int, unreadable) -> list[str]:
    """The subfolders of `folder` the walk can enter, sorted; others are reported with their
    full path (fwalk's own error names only the last component). Hidden folders and links to
    folders are left out, as os.walk does."""
    keep = []
    for name in sorted(d for d in dirs if not d.startswith(".")):
        try:
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                continue
            os.close(os.open(name, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), dir_fd=dir_fd))
        except OSError as exc:
            unreadable(exc, os.path.join(folder, name))
            continue
        keep.append(name)
    return keep


def _add_dicomdir(path: Path, found: set[str], problems: list[Problem]) -> None:
    """Add the files a DICOMDIR names inside its folder; refused references are Problems."""
    try:
        files, refused = headers.dicomdir_entries(path)
    except (ValueError, OSError) as exc:
        problems.append(Problem(shown_path(str(path)), headers.UNREADABLE_DICOMDIR,
                                f"{exc}; import its folder instead"))
        return
    found.update(str(f.resolve()) for f in files)  # inside the media: checked with links resolved
    problems.extend(refused)


def storable(path: str) -> bool:
    """True when `path` can be stored in the cache (sqlite TEXT is UTF-8) and opened again from
    the stored text: names that are not valid in the file system encoding decode to lone
    surrogates (surrogateescape), which cannot be stored."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_path(path: str) -> str:
    """`path` as storable text: undecodable bytes of a file name are shown as \\xNN escapes."""
    if storable(path):
        return path
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def run_import(
    lib: Library,
    paths: Iterable[str | os.PathLike],
    *,
    make_previews: bool = True,
    cancel: threading.Event | None = None,
    db: Database | None = None,
) -> Generator[Event, None, ImportSummary]:
    """Index `paths` into the library's cache, yielding events; returns the summary."""
    t0 = time.perf_counter()
    lib.ensure()
    if lib.previews not in _swept:  # leftovers are a dead process's: once per process is enough
        remove_orphan_temp_files(lib)
        _swept.add(lib.previews)
    own_db = db is None
    db = db or connect(lib.database)
    summary = ImportSummary()
    try:
        yield Progress("finding", 0, 0)
        roots = [Path(p).expanduser().absolute() for p in paths]
        files, walk_problems = find_files(roots)
        writes.replace_walk_problems(db, [shown_path(str(r)) for r in roots], walk_problems)
        summary.files_seen = len(files)
        for prob in walk_problems:
            summary.skipped[prob.reason] += 1
            yield ProblemFound(prob)

        yield from _index(db, files, summary, cancel)
        summary.missing = _notice_deleted(db, roots, set(files))
        if make_previews and not _cancelled(cancel):
            yield from generate_previews(lib, db, summary=summary, cancel=cancel)
        summary.totals = reads.counts(db)
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
    db: Database,
    files: list[str],
    summary: ImportSummary,
    cancel: threading.Event | None,
) -> Generator[Event, None, None]:
    known = reads.known_files(db)
    back_again: list[str] = []
    batch_headers: list[ImageHeader | StudyObject] = []
    batch_problems: list[Problem] = []
    problem_stats: dict[str, tuple[int, int]] = {}
    duplicates: list[Problem] = []

    def flush():
        result = writes.write_batch(db, batch_headers, batch_problems, problem_stats)
        summary.added += result.added
        summary.updated += result.updated
        summary.objects += result.objects
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
            prob = Problem(path, headers.UNREADABLE_FILE, exc.strerror or str(exc))
            batch_problems.append(prob)  # recorded, and looked at again next time
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
    writes.set_missing(db, back_again, missing=False)


def _notice_deleted(db: Database, roots: list[Path], seen: set[str]) -> int:
    """Mark indexed files under the imported roots that no longer exist."""
    prefixes = []
    for r in roots:
        r = r.resolve() if r.exists() else r.absolute()
        prefixes.append(str(r) + (os.sep if r.is_dir() else ""))
    gone = []
    for path in reads.indexed_paths(db):
        if path in seen or not any(path == p or path.startswith(p) for p in prefixes):
            continue
        if not os.path.exists(path):
            gone.append(path)
    writes.set_missing(db, gone, missing=True)
    return reads.missing_image_count(db)


def preview_name(sop_uid: str) -> str:
    """The preview's path relative to the previews folder: a hash of the UID, sharded by its
    first two hex digits to keep folders small. No character of the UID reaches the name."""
    name = safety.hashed_name(sop_uid, ".png")
    return f"{name[:2]}/{name}"


def preview_file(lib: Library, sop_uid: str) -> Path:
    """Where the preview PNG of an image is written (InputRefused if it were outside the library)."""
    return safety.inside(lib.previews, lib.previews / preview_name(sop_uid))


def stored_preview(lib: Library, file: str) -> Path | None:
    """The preview file a `previews` row names (its `file` column, relative to the previews
    folder, older rows included), or None if that would lie outside the previews folder."""
    try:
        return safety.inside(lib.previews, lib.previews / file)
    except MamviewError:
        return None


def remove_orphan_temp_files(lib: Library, min_age_s: float = ORPHAN_TEMP_AGE_S) -> int:
    """Delete preview temp files (`*.tmp`) a killed import left behind; returns how many.

    Only files older than `min_age_s` go: a concurrent import's temp file is younger.
    """
    removed = 0
    cutoff = time.time() - min_age_s
    try:
        shards = [e for e in os.scandir(lib.previews) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return 0
    for shard in shards:
        try:
            entries = list(os.scandir(shard.path))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith(".tmp"):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode) and info.st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError as exc:
                log.warning("could not remove %s: %s", entry.path, exc)
    return removed


def _write_preview(lib: Library, sop_uid: str, array) -> str:
    """Write the preview PNG of `sop_uid`; returns its name relative to the previews folder."""
    from mamview.core import previews

    rel = preview_name(sop_uid)
    out = preview_file(lib, sop_uid)
    out.parent.mkdir(mode=safety.PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    previews.save_png(array, out)
    return rel


def generate_previews(
    lib: Library,
    db: Database,
    *,
    first_patient: str | None = None,
    summary: ImportSummary | None = None,
    cancel: threading.Event | None = None,
    reduced: bool = True,
) -> Generator[Event, None, None]:
    """Make the missing or stale display previews, most needed first."""
    from mamview.core import previews  # decoders load only when previews are made
    from mamview.core.dicom.pixels import PixelDecodeError

    todo = reads.images_needing_previews(db, PREVIEW_PIPELINE_VERSION, first_patient)
    total = len(todo)
    for i, row in enumerate(todo, 1):
        if _cancelled(cancel):
            return
        try:
            pv = previews.make_preview(row["path"], target_height=PREVIEW_HEIGHT, reduced=reduced)
        except (PixelDecodeError, MamviewError, OSError, ValueError) as exc:
            message = str(exc) or type(exc).__name__
            writes.record_decode_error(db, row["sop_instance_uid"], row["path"], message)
            if summary is not None:
                summary.preview_failures += 1
                summary.skipped["corrupt pixel data"] += 1
            yield ProblemFound(Problem(row["path"], "corrupt pixel data", message))
            continue
        try:
            rel = _write_preview(lib, row["sop_instance_uid"], pv.array)
        except (MamviewError, OSError, ValueError) as exc:
            # the disk, not the image: this image only, tried again at the next import
            message = f"{type(exc).__name__}: {exc}"
            writes.record_problem(db, row["path"], PREVIEW_NOT_WRITTEN, message)
            if summary is not None:
                summary.preview_failures += 1
                summary.skipped[PREVIEW_NOT_WRITTEN] += 1
            yield ProblemFound(Problem(row["path"], PREVIEW_NOT_WRITTEN, message))
            continue
        writes.save_preview_row(
            db,
            {
                "sop_instance_uid": row["sop_instance_uid"],
                "file": rel,
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
            solved=(row["path"], PREVIEW_NOT_WRITTEN),
        )
        if pv.note:
            # shown, but not as the file asked (e.g. its window missed the image): say so
            writes.record_problem(db, row["path"], DISPLAY_NOTE, pv.note)
            yield ProblemFound(Problem(row["path"], DISPLAY_NOTE, pv.note))
        else:
            writes.clear_problem(db, row["path"], DISPLAY_NOTE)
        if summary is not None:
            summary.previews += 1
        yield Progress("previews", i, total)
