"""Every write to the cache: images, exams, patients, files seen, problems, previews and scores.

Writers take a whole batch in one transaction so readers (WAL) never see a half-written batch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import sqlite_utils

from mamview.core.cache.db import write_transaction
from mamview.core.cache.keys import exam_key, exam_key_of, iso_date, patient_key, patient_key_of
from mamview.core.domain import ImageHeader, Problem, StudyObject


def _image_row(h: ImageHeader) -> dict:
    return {
        "sop_instance_uid": h.sop_instance_uid,
        "exam_key": exam_key(h),
        "patient_key": patient_key(h),
        "path": h.path,
        "size": h.size,
        "mtime_ns": h.mtime_ns,
        "missing": 0,
        "study_uid": h.study_instance_uid,
        "series_uid": h.series_instance_uid,
        "sop_class_uid": h.sop_class_uid,
        "transfer_syntax_uid": h.transfer_syntax_uid,
        "modality": h.modality,
        "manufacturer": h.manufacturer,
        "manufacturer_model": h.manufacturer_model,
        "study_time": h.study_time,
        "patient_birth_date": h.patient_birth_date,
        "patient_name": h.patient_name,
        "series_description": h.series_description,
        "laterality": h.laterality.value,
        "laterality_source": h.laterality.source.value,
        "laterality_detail": h.laterality.detail,
        "view": h.view.value,
        "view_source": h.view.source.value,
        "view_detail": h.view.detail,
        "view_modifiers": json.dumps(list(h.view_modifiers)),
        "is_standard": int(h.is_standard_view),
        "presentation_intent": h.presentation_intent.value,
        "patient_orientation": json.dumps(list(h.patient_orientation)),
        "rows": h.rows,
        "columns": h.columns,
        "bits_stored": h.bits_stored,
        "photometric": h.photometric,
        "window_presets": json.dumps([dataclasses.asdict(w) for w in h.window_presets]),
        "pixel_spacing": json.dumps(list(h.pixel_spacing)) if h.pixel_spacing else "",
        "breast_implant_present": h.breast_implant_present,
        "lossy_compression": h.lossy_compression,
        "domain": h.domain,
        "burned_in_annotation": h.burned_in_annotation,
        "acquisition_date": iso_date(h.acquisition_date),
        "acquisition_time": h.acquisition_time,
        "content_date": iso_date(h.content_date),
        "content_time": h.content_time,
        "instance_number": h.instance_number,
        "decode_error": "",
    }


@dataclass
class BatchResult:
    """What one `write_batch` call changed."""

    added: int = 0
    updated: int = 0
    problems: int = 0
    objects: int = 0  # study members (CAD SR, presentation states, …) filed
    duplicates: list[Problem] = dataclasses.field(default_factory=list)


def write_batch(
    db: sqlite_utils.Database,
    headers: Iterable[ImageHeader | StudyObject],
    problems: Iterable[Problem],
    problem_stats: dict[str, tuple[int, int]] | None = None,
) -> BatchResult:
    """Index a batch of scanned files in one transaction.

    `problem_stats` maps a problem file's path to (size, mtime_ns) so that an unchanged bad
    file is not read again. A SOP Instance UID already indexed from another existing file is
    recorded as a 'duplicate' problem; one whose old file has gone is treated as moved.
    """
    result = BatchResult()
    problem_stats = problem_stats or {}
    with write_transaction(db):
        for h in headers:
            if isinstance(h, StudyObject):
                _write_object(db, h)
                result.objects += 1
                continue
            outcome = _write_image(db, h)
            if isinstance(outcome, Problem):
                _write_problem(db, outcome, h.size, h.mtime_ns)
                result.duplicates.append(outcome)
            elif outcome == "added":
                result.added += 1
            else:
                result.updated += 1
        for p in problems:
            size, mtime_ns = problem_stats.get(p.path, (-1, -1))
            _write_problem(db, p, size, mtime_ns)
            result.problems += 1
    return result


def _write_image(db: sqlite_utils.Database, h: ImageHeader) -> str | Problem:
    row = _image_row(h)
    # the same path may have held another instance before it changed on disk
    old_at_path = db.execute(
        "SELECT sop_instance_uid FROM images WHERE path = ?", [h.path]
    ).fetchone()
    if old_at_path and old_at_path[0] != h.sop_instance_uid:
        _delete_images(db, [old_at_path[0]])
    same_uid = db.execute(
        "SELECT path, missing, exam_key FROM images WHERE sop_instance_uid = ?",
        [h.sop_instance_uid],
    ).fetchone()
    if same_uid and same_uid[0] != h.path and not same_uid[1]:
        return Problem(h.path, "duplicate", f"same SOP Instance UID as {same_uid[0]}")
    db.execute("DELETE FROM study_objects WHERE path = ?", [h.path])  # was a member before

    pkey = row["patient_key"]
    db.execute(
        "INSERT INTO patients (patient_key, patient_id, issuer, name, birth_date) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(patient_key) DO UPDATE SET "
        "name = CASE WHEN excluded.name != '' THEN excluded.name ELSE name END, "
        "birth_date = CASE WHEN excluded.birth_date != '' THEN excluded.birth_date ELSE birth_date END",
        [pkey, h.patient_id.strip(), h.issuer_of_patient_id.strip(), h.patient_name,
         h.patient_birth_date],
    )
    ekey = row["exam_key"]
    existing = db.execute(
        "SELECT study_uids, accession_numbers FROM exams WHERE exam_key = ?", [ekey]
    ).fetchone()
    if existing is None:
        db.execute(
            "INSERT INTO exams (exam_key, patient_key, exam_date, study_uids, accession_numbers, "
            "description) VALUES (?, ?, ?, ?, ?, ?)",
            [ekey, pkey, iso_date(h.study_date) or iso_date(h.content_date),
             json.dumps([h.study_instance_uid]),
             json.dumps([h.accession_number] if h.accession_number else []),
             h.study_description],
        )
    else:
        studies, accessions = json.loads(existing[0]), json.loads(existing[1])
        changed = False
        if h.study_instance_uid not in studies:
            studies = sorted(studies + [h.study_instance_uid])
            changed = True
        if h.accession_number and h.accession_number not in accessions:
            accessions = sorted(accessions + [h.accession_number])
            changed = True
        if changed:
            db.execute(
                "UPDATE exams SET study_uids = ?, accession_numbers = ? WHERE exam_key = ?",
                [json.dumps(studies), json.dumps(accessions), ekey],
            )
    verb = "updated" if same_uid else "added"
    db["images"].upsert(row, pk="sop_instance_uid")
    if same_uid and same_uid[2] != ekey:
        _drop_empty_exams(db, [same_uid[2]])
    db.execute(
        "INSERT OR REPLACE INTO files (path, size, mtime_ns, outcome, sop_instance_uid) "
        "VALUES (?, ?, ?, 'image', ?)",
        [h.path, h.size, h.mtime_ns, h.sop_instance_uid],
    )
    db.execute("DELETE FROM problems WHERE path = ?", [h.path])
    return verb


def _write_object(db: sqlite_utils.Database, o: StudyObject) -> None:
    """File a study member under its exam (the key its images have or will have)."""
    old_image = db.execute("SELECT sop_instance_uid FROM images WHERE path = ?", [o.path]).fetchone()
    if old_image:
        _delete_images(db, [old_image[0]])  # the file changed from an image into an object
    db.execute("DELETE FROM study_objects WHERE path = ? AND sop_instance_uid != ?",
               [o.path, o.sop_instance_uid])
    pkey = patient_key_of(o.issuer_of_patient_id, o.patient_id, o.study_instance_uid)
    db["study_objects"].upsert({
        "sop_instance_uid": o.sop_instance_uid,
        "exam_key": exam_key_of(pkey, o.study_date, o.content_date, o.study_instance_uid),
        "patient_key": pkey, "study_uid": o.study_instance_uid,
        "series_uid": o.series_instance_uid, "sop_class_uid": o.sop_class_uid, "kind": o.kind,
        "modality": o.modality, "manufacturer": o.manufacturer, "path": o.path,
        "size": o.size, "mtime_ns": o.mtime_ns, "missing": 0,
    }, pk="sop_instance_uid")
    db.execute(
        "INSERT OR REPLACE INTO files (path, size, mtime_ns, outcome, sop_instance_uid) "
        "VALUES (?, ?, ?, 'object', ?)",
        [o.path, o.size, o.mtime_ns, o.sop_instance_uid],
    )
    db.execute("DELETE FROM problems WHERE path = ?", [o.path])


def _write_problem(db: sqlite_utils.Database, p: Problem, size: int, mtime_ns: int) -> None:
    old = db.execute("SELECT sop_instance_uid FROM images WHERE path = ?", [p.path]).fetchone()
    if old and p.reason != "duplicate":
        _delete_images(db, [old[0]])  # the file changed into something unusable
    db.execute(
        "INSERT OR REPLACE INTO problems (path, reason, detail) VALUES (?, ?, ?)",
        [p.path, p.reason, p.detail],
    )
    db.execute(
        "INSERT OR REPLACE INTO files (path, size, mtime_ns, outcome, sop_instance_uid) "
        "VALUES (?, ?, ?, 'problem', '')",
        [p.path, size, mtime_ns],
    )


def _delete_images(db: sqlite_utils.Database, uids: list[str]) -> None:
    exams = [
        r[0]
        for uid in uids
        for r in db.execute("SELECT exam_key FROM images WHERE sop_instance_uid = ?", [uid])
    ]
    for uid in uids:
        db.execute("DELETE FROM images WHERE sop_instance_uid = ?", [uid])
    _drop_empty_exams(db, exams)


def _drop_empty_exams(db: sqlite_utils.Database, exam_keys: Iterable[str]) -> None:
    for ek in set(exam_keys):
        left = db.execute("SELECT count(*) FROM images WHERE exam_key = ?", [ek]).fetchone()[0]
        if not left:
            pk = db.execute("SELECT patient_key FROM exams WHERE exam_key = ?", [ek]).fetchone()
            db.execute("DELETE FROM exams WHERE exam_key = ?", [ek])
            if pk and not db.execute(
                "SELECT count(*) FROM exams WHERE patient_key = ?", [pk[0]]
            ).fetchone()[0]:
                db.execute("DELETE FROM patients WHERE patient_key = ?", [pk[0]])


def set_missing(db: sqlite_utils.Database, paths: Iterable[str], missing: bool = True) -> int:
    """Mark the images at `paths` as missing (file deleted) or present again; returns the count."""
    n = 0
    with write_transaction(db):
        for p in paths:
            cur = db.execute(
                "UPDATE images SET missing = ? WHERE path = ? AND missing != ?",
                [int(missing), p, int(missing)],
            )
            n += cur.rowcount
            db.execute("UPDATE study_objects SET missing = ? WHERE path = ?", [int(missing), p])
            if missing:
                # a vanished problem file is no longer a problem
                db.execute("DELETE FROM problems WHERE path = ?", [p])
                db.execute("DELETE FROM files WHERE path = ? AND outcome = 'problem'", [p])
    return n


def record_decode_error(db: sqlite_utils.Database, sop_uid: str, path: str, message: str) -> None:
    """Remember that an indexed image's pixels cannot be decoded, and list it as a problem."""
    with write_transaction(db):
        db.execute(
            "UPDATE images SET decode_error = ? WHERE sop_instance_uid = ?", [message, sop_uid]
        )
        db.execute(
            "INSERT OR REPLACE INTO problems (path, reason, detail) VALUES (?, 'corrupt pixel data', ?)",
            [path, message],
        )


def record_problem(db: sqlite_utils.Database, path: str, reason: str, detail: str = "") -> None:
    """List a problem with an indexed image that does not change what is known of the image
    (e.g. its preview could not be written); `clear_problem` removes it once solved."""
    with write_transaction(db):
        db.execute(
            "INSERT OR REPLACE INTO problems (path, reason, detail) VALUES (?, ?, ?)", [path, reason, detail]
        )


def clear_problem(db: sqlite_utils.Database, path: str, reason: str) -> None:
    """Remove the problem `reason` recorded for `path`, if any."""
    with write_transaction(db):
        db.execute("DELETE FROM problems WHERE path = ? AND reason = ?", [path, reason])


def replace_walk_problems(db: sqlite_utils.Database, roots: Iterable[str], problems: Iterable[Problem]) -> None:
    """Record the problems found while looking for files under `roots` (missing paths,
    unreadable folders, refused DICOMDIR references…), replacing those of the last look.

    Such problems belong to no indexed file: rows of `problems` under a root with neither a
    `files` nor an `images` row are the ones replaced.
    """
    prefixes = [r.rstrip("/\\") for r in roots]

    def under(path: str) -> bool:
        return any(path == p or path.startswith((p + "/", p + "\\", p + " → ")) for p in prefixes)

    with write_transaction(db):
        stale = [
            r[0]
            for r in db.execute(
                "SELECT path FROM problems WHERE path NOT IN (SELECT path FROM files) "
                "AND path NOT IN (SELECT path FROM images)"
            )
            if under(r[0])
        ]
        for path in stale:
            db.execute("DELETE FROM problems WHERE path = ?", [path])
        for p in problems:
            db.execute(
                "INSERT OR REPLACE INTO problems (path, reason, detail) VALUES (?, ?, ?)",
                [p.path, p.reason, p.detail],
            )


def save_preview_row(db: sqlite_utils.Database, row: dict, solved: tuple[str, str] | None = None) -> None:
    """Record a written preview file (one short transaction); `solved` = (path, reason) of a
    problem the written file solves, removed in the same transaction."""
    with write_transaction(db):
        db["previews"].upsert(row, pk="sop_instance_uid")
        if solved:
            db.execute("DELETE FROM problems WHERE path = ? AND reason = ?", list(solved))


def save_scores(db: sqlite_utils.Database, rows: Iterable[dict]) -> None:
    """Store computed (or unscorable) results in one transaction."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with write_transaction(db):
        for r in rows:
            row = dict(r)
            row.setdefault("computed_at", now)
            row["input_uids"] = json.dumps(list(row.get("input_uids", [])))
            row["risk"] = json.dumps([float(x) for x in row.get("risk", [])])
            db["scores"].upsert(row, pk="cache_key")


def delete_scores(db: sqlite_utils.Database) -> int:
    """Forget every stored score (benchmarks re-score from scratch); returns how many."""
    with write_transaction(db):
        return db.execute("DELETE FROM scores").rowcount


# ---------------------------------------------------------------- storage node
# (writes the DICOM node needs; keep this heading: helpers add below it)


# ---------------------------------------------------------------- read marks (worklist)

def set_read_mark(db: sqlite_utils.Database, patient_key: str, read: bool,
                  exam_key: str = "") -> None:
    """Mark a woman as read (as of `exam_key`, her latest exam now) or unread again."""
    with write_transaction(db):
        if read:
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            db.execute("INSERT OR REPLACE INTO read_marks (patient_key, exam_key, read_at) "
                       "VALUES (?, ?, ?)", [patient_key, exam_key, now])
        else:
            db.execute("DELETE FROM read_marks WHERE patient_key = ?", [patient_key])


# ---------------------------------------------------------------- reader's marks (annotations)

ANNOTATION_KINDS = ("distance", "arrow", "key")


def add_annotation(db: sqlite_utils.Database, sop_uid: str, exam_key: str, kind: str,
                   points: Iterable[Iterable[float]] = (),
                   spacing: tuple[float, float] | None = None, spacing_source: str = "") -> int:
    """Store one mark on an image (points in image pixels); returns its id."""
    if kind not in ANNOTATION_KINDS:
        raise ValueError(f"unknown annotation kind {kind!r}")
    pts = [[float(x), float(y)] for x, y in points]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with write_transaction(db):
        cur = db.execute(
            "INSERT INTO annotations (sop_instance_uid, exam_key, kind, points, spacing, "
            "spacing_source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [sop_uid, exam_key, kind, json.dumps(pts),
             json.dumps([float(spacing[0]), float(spacing[1])]) if spacing else "",
             spacing_source, now])
        return int(cur.lastrowid)


def set_key_image(db: sqlite_utils.Database, sop_uid: str, exam_key: str, on: bool) -> None:
    """Mark an image as a key image, or unmark it (at most one key mark per image)."""
    with write_transaction(db):
        db.execute("DELETE FROM annotations WHERE sop_instance_uid = ? AND kind = 'key'",
                   [sop_uid])
        if on:
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            db.execute("INSERT INTO annotations (sop_instance_uid, exam_key, kind, created_at) "
                       "VALUES (?, ?, 'key', ?)", [sop_uid, exam_key, now])


def clear_annotations(db: sqlite_utils.Database, *, sop_uid: str | None = None,
                      exam_key: str | None = None) -> int:
    """Forget the marks of one image or of one exam (one of the two must be given); returns how
    many went."""
    if (sop_uid is None) == (exam_key is None):
        raise ValueError("give exactly one of sop_uid or exam_key")
    column, value = ("sop_instance_uid", sop_uid) if sop_uid is not None else ("exam_key", exam_key)
    with write_transaction(db):
        return db.execute(f"DELETE FROM annotations WHERE {column} = ?", [value]).rowcount
