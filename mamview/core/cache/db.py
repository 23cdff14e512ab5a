"""Opening the exam cache: one sqlite connection per thread, WAL, migrations applied once."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import sqlite_utils

from mamview.core.cache.migrations import migrations

_BUSY_TIMEOUT_MS = 10_000


def connect(path: str | Path, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open the cache database at `path` (created if missing) with WAL and foreign keys on.

    The connection belongs to the calling thread; other threads must open their own
    (see `ThreadLocalDatabase`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_MS / 1000)
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
    return db


class ThreadLocalDatabase:
    """Hands each thread its own connection to one database file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite_utils.Database] = []
        connect(self.path).close()  # apply migrations once, up front

    def get(self) -> sqlite_utils.Database:
        """This thread's connection."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.path, migrate=False)
            self._local.db = db
            with self._lock:
                self._all.append(db)
        return db

    def close(self) -> None:
        """Close every connection opened through this object."""
        with self._lock:
            for db in self._all:
                try:
                    db.close()
                except sqlite3.ProgrammingError:
                    pass  # opened in another thread; sqlite refuses, the OS reclaims it
            self._all.clear()


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
