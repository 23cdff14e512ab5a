"""The scores table: every computed risk with its provenance, keyed so a score is reused only
when the model and the exact input images are unchanged."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Iterable, Sequence

import sqlite_utils

from mamview.core.cache.db import write_transaction


def cache_key(identity, inputs: Sequence[tuple[str, int, int]]) -> str:
    """Key of a score: model id, weights, calibrator, preprocessing and each input image's
    (SOP UID, size, mtime). Any change in one of them means a new computation."""
    h = hashlib.sha256()
    for part in (identity.model_id, identity.version, identity.weights_sha256,
                 identity.calibrator_sha256, identity.preprocessing_version):
        h.update(str(part).encode() + b"\0")
    for uid, size, mtime in inputs:
        h.update(f"{uid}:{size}:{mtime}".encode() + b"\0")
    return h.hexdigest()


def lookup(db: sqlite_utils.Database, key: str) -> dict | None:
    """The stored score with this cache key, or None."""
    rows = list(db.query("SELECT * FROM scores WHERE cache_key = ?", [key]))
    return _decode(rows[0]) if rows else None


def save(db: sqlite_utils.Database, rows: Iterable[dict]) -> None:
    """Store computed (or unscorable) results in one transaction."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with write_transaction(db):
        for r in rows:
            row = dict(r)
            row.setdefault("computed_at", now)
            row["input_uids"] = json.dumps(list(row.get("input_uids", [])))
            row["risk"] = json.dumps([float(x) for x in row.get("risk", [])])
            db["scores"].upsert(row, pk="cache_key")


def unscorable_key(identity, images: Iterable[tuple[str, int, int]]) -> str:
    """Key of an 'unscorable' result: the model and every image of the exam (SOP UID, size,
    mtime), so an exam is looked at again when one of its files is added, removed or replaced."""
    return cache_key(identity, sorted(images)) + ":unscorable"


def for_exams(db: sqlite_utils.Database, exam_keys: Iterable[str], model=None) -> dict[str, dict]:
    """The *current* stored score row per exam (ok or unscorable) of `model` (a ModelRef, a
    model id, or None for the newest model per exam). A stored score whose key no longer
    matches (model or input changed) is left out: see `reads.current_scores` for its state."""
    from mamview.core.cache import reads

    return {ek: row for ek, (_, row) in reads.evaluate(db, list(exam_keys), model).items()
            if row is not None}


def rows_by_key(db: sqlite_utils.Database, keys: Sequence[str]) -> dict[str, dict]:
    """Stored rows by cache key (decoded), in chunks of 500 keys per query."""
    out: dict[str, dict] = {}
    for chunk in _chunks(list(dict.fromkeys(keys))):
        marks = ",".join("?" * len(chunk))
        for row in db.query(f"SELECT * FROM scores WHERE cache_key IN ({marks})", chunk):
            out[row["cache_key"]] = _decode(row)
    return out


def newest_per_exam(db: sqlite_utils.Database, exam_keys: Sequence[str],
                    model_id: str | None = None) -> dict[str, dict]:
    """The newest stored row per exam (of `model_id` when given), decoded."""
    out: dict[str, dict] = {}
    for chunk in _chunks(list(dict.fromkeys(exam_keys))):
        marks = ",".join("?" * len(chunk))
        sql = f"SELECT * FROM scores WHERE exam_key IN ({marks})"
        args: list = list(chunk)
        if model_id:
            sql += " AND model_id = ?"
            args.append(model_id)
        for row in db.query(sql + " ORDER BY computed_at, score_id", args):
            out[row["exam_key"]] = row  # ascending order: the last one seen is the newest
    return {k: _decode(v) for k, v in out.items()}


def model_with_most_scores(db: sqlite_utils.Database, exam_keys: Sequence[str] | None = None
                           ) -> str | None:
    """The model id with computed scores for most exams (of `exam_keys`, else the library);
    ties go to the newest score."""
    sql = "SELECT model_id FROM scores WHERE status = 'ok'"
    args: list = []
    if exam_keys is not None:
        if not exam_keys:
            return None
        marks = ",".join("?" * len(exam_keys))
        sql += f" AND exam_key IN ({marks})"
        args = list(exam_keys)
    row = db.execute(sql + " GROUP BY model_id ORDER BY count(DISTINCT exam_key) DESC, "
                     "max(computed_at) DESC LIMIT 1", args).fetchone()
    return row[0] if row else None


def _chunks(items: list, size: int = 500):
    # SQLite caps the number of bound parameters (999 in old builds)
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _decode(row: dict) -> dict:
    row = dict(row)
    row["input_uids"] = json.loads(row["input_uids"])
    row["risk"] = json.loads(row["risk"])
    return row
