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


def for_exams(db: sqlite_utils.Database, exam_keys: Iterable[str], model_id: str | None = None
              ) -> dict[str, dict]:
    """The newest score per exam (optionally of one model)."""
    out: dict[str, dict] = {}
    for ek in exam_keys:
        sql = "SELECT * FROM scores WHERE exam_key = ?"
        args: list = [ek]
        if model_id:
            sql += " AND model_id = ?"
            args.append(model_id)
        rows = list(db.query(sql + " ORDER BY computed_at DESC, score_id DESC LIMIT 1", args))
        if rows:
            out[ek] = _decode(rows[0])
    return out


def _decode(row: dict) -> dict:
    row = dict(row)
    row["input_uids"] = json.loads(row["input_uids"])
    row["risk"] = json.loads(row["risk"])
    return row
