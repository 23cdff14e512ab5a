"""Opening the exam cache: one sqlite connection per thread, WAL, migrations applied once.

What cannot be opened is a `LibraryError` naming the path and the reason (read-only, locked,
damaged, full), so every caller shows the user one line instead of a sqlite traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Iterator

import sqlite_utils

from mamview.core.cache.migrations import migrations
from mamview.core.errors import LibraryError, MamviewError

_BUSY_TIMEOUT_MS = 10_000

# sqlite result codes (extended ones start with the primary name) → what to tell the user
_DAMAGED = ("is damaged; it is only a cache: move it away and import your files again to "
            "rebuild it")
_SQLITE_REASONS = (
    ("SQLITE_READONLY", "is read-only"),
    ("SQLITE_PERM", "is read-only"),
    ("SQLITE_BUSY", "is locked by another program (is mamview running elsewhere?)"),
    ("SQLITE_LOCKED", "is locked by another program (is mamview running elsewhere?)"),
    ("SQLITE_CANTOPEN", "cannot be opened"),
    ("SQLITE_NOTADB", _DAMAGED),
    ("SQLITE_CORRUPT", _DAMAGED),
    ("SQLITE_FULL", "cannot grow: the disk is full"),
    ("SQLITE_IOERR", "cannot be read or written (input/output error)"),
)

# what callers outside the cache catch and annotate with (they never import sqlite3 or
# sqlite_utils themselves)
DatabaseError = sqlite3.Error
Database = sqlite_utils.Database

# OSError errno → what it says about a library folder
_FOLDER_REASONS = {
    errno.EROFS: "is on a read-only file system",
    errno.EACCES: "is read-only or not accessible for this user (permission denied)",
    errno.EPERM: "is read-only or not accessible for this user (operation not permitted)",
    errno.ENOSPC: "is on a full disk",
    errno.EDQUOT: "is over its disk quota",
    errno.ENOTDIR: "cannot be created: a file is in the way",
    errno.EEXIST: "cannot be created: a file is in the way",
}


def database_error(exc: sqlite3.Error, path: str | Path) -> LibraryError | None:
    """The user's message for a sqlite error that means the database file is unusable
    (read-only, locked, damaged, full); None for other errors (a bug, not the library)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if not name and isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc):
        name = "SQLITE_NOTADB"  # raised before a result code is attached
    for prefix, what in _SQLITE_REASONS:
        if name.startswith(prefix):
            return LibraryError(f"the library database {path} {what} ({exc})")
    return None


def folder_error(home: str | Path, exc: OSError) -> LibraryError:
    """The user's message for an OSError met while using the library folder `home`."""
    if isinstance(exc, MamviewError):
        return exc  # already worded for the user
    what = _FOLDER_REASONS.get(exc.errno, "cannot be used")
    where = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes)) else str(home)
    err = LibraryError(f"the library folder {home} {what}: {where}: {exc.strerror or exc}")
    err.errno = exc.errno
    return err


def connect(path: str | Path, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open the cache database at `path` (created if missing) with WAL and foreign keys on.

    The connection belongs to the calling thread; other threads must open their own.
    Raises `LibraryError` (path and reason) when the database
    cannot be opened for writing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise folder_error(path.parent, exc) from exc
    _check_writable(path)
    try:
        conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise _open_error(exc, path) from exc
    try:
        db = sqlite_utils.Database(conn)
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA foreign_keys = ON")
        # NORMAL is durable under WAL except for the last transactions on power loss;
        # the cache can be rebuilt from the files, so speed wins.
        db.execute("PRAGMA synchronous = NORMAL")
        if db.journal_mode != "wal":
            db.enable_wal()
        if migrate:
            migrations.apply(db)
    except sqlite3.Error as exc:
        conn.close()
        raise _open_error(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    return db


def connect_read_only(path: str | Path) -> sqlite_utils.Database:
    """Open an existing cache database for reading only: a library the user may read but not
    write (a read-only folder, file or file system). Never writes a byte.

    A WAL database opens read-only (`mode=ro`) only when its -shm file exists or can be
    created. Where neither holds it is read as an immutable file, which is exact then: a
    writer still open (or one that crashed) leaves its -wal and -shm behind, and one that
    closed has checkpointed everything into the file.
    Raises `LibraryError` when it is missing, unreadable or needs a schema upgrade.
    """
    path = Path(path)
    if not os.path.isfile(path):
        raise LibraryError(f"there is no library database at {path} (nothing imported yet)")
    base = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(path)))
    conn, first = None, None
    for query in ("mode=ro", "mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(f"{base}?{query}", uri=True,
                                   timeout=_BUSY_TIMEOUT_MS / 1000)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            break
        except sqlite3.Error as exc:
            first = first or exc
            if conn is not None:
                conn.close()
            conn = None
    if conn is None:
        raise _open_error(first, path) from first
    db = sqlite_utils.Database(conn)
    try:
        pending = migrations.pending(db)
    except sqlite3.Error as exc:
        conn.close()
        raise _open_error(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    if pending:
        conn.close()
        raise LibraryError(f"the library database {path} was written by an older mamview and "
                           "needs an upgrade, which a read-only library does not allow: open it "
                           "once with write access")
    return db


def _check_writable(path: Path) -> None:
    """Refuse up front what sqlite would only notice at the first write: a read-only database
    file, or a folder where its -wal and -shm files cannot be created."""
    who = "on a read-only file system" if _read_only_mount(path.parent) else "for this user"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise LibraryError(f"the library database {path} is read-only {who}")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise LibraryError(f"the library folder {path.parent} is read-only {who}, so its "
                           f"database {path.name} cannot be written")


def _read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # not there, or no statvfs (Windows)
        return False


def _open_error(exc: sqlite3.Error, path: Path) -> LibraryError:
    return database_error(exc, path) or LibraryError(
        f"the library database {path} cannot be opened: {exc}")


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A write transaction that takes the write lock up front (BEGIN IMMEDIATE).

    A deferred BEGIN that reads first and writes later fails at once with 'database is
    locked' when another connection wrote in between; IMMEDIATE waits on the busy timeout.
    """
    if db.conn.in_transaction:
        with db.atomic():  # nested: a savepoint inside the outer transaction
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.conn.rollback()
        raise
    else:
        db.conn.execute("COMMIT")


@contextlib.contextmanager
def opened(path: str | Path, *, migrate: bool = True) -> Iterator[sqlite_utils.Database]:
    """`connect(path)` for the length of a `with` block, closed on leaving it whatever
    happens (for code that opens the cache for one job, or for a thread's lifetime)."""
    db = connect(path, migrate=migrate)
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[sqlite_utils.Database]:
    """`connect_read_only(path)` for one short read, closed on leaving the `with` block
    whatever happens: threads that come and go (a DICOM association's) must not leak one."""
    db = connect_read_only(path)
    try:
        yield db
    finally:
        db.close()


def rollback_open(db: sqlite_utils.Database) -> None:
    """End a transaction that a failure left open, so the connection stays usable; a
    connection too broken to roll back is left as it is (its owner closes it)."""
    conn = getattr(db, "conn", db)
    try:
        if conn.in_transaction:
            conn.rollback()
    except sqlite3.Error:
        pass
