"""Writing and reading the exam cache: patients, exams, images, files seen, problems, previews.

Writers take a whole batch in one transaction so readers (WAL) never see a half-written batch.
Keys are derived from the data (PatientID, date, SOP UID), never from insertion order, so an
interrupted import that is run again ends with the same rows as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Iterable

import sqlite_utils

from mamview.core.cache.db import write_transaction
from mamview.core.domain import ImageHeader, Problem, STANDARD_VIEWS, view_label


NO_ID_MARKER = "no-id:"


def escape_key_part(value: str) -> str:
    """`value` with `%` and `|` percent-escaped, so `|` can separate the parts of a key.

    Values without these characters are unchanged, so keys written before stay valid.
    """
    return value.replace("%", "%25").replace("|", "%7C")


def patient_key_of(issuer: str, patient_id: str, study_uid: str = "") -> str:
    """The patient key for these values (see `patient_key`)."""
    pid = patient_id.strip()
    if not pid:
        return f"|{NO_ID_MARKER}{escape_key_part(study_uid)}"
    pid = escape_key_part(pid)
    if pid.startswith(NO_ID_MARKER):
        pid = "%6E" + pid[1:]  # 'n' escaped: a real ID never reads as the no-ID group
    return f"{escape_key_part(issuer.strip())}|{pid}"


def patient_key(header: ImageHeader) -> str:
    """Stable key of the woman an image belongs to: issuer|PatientID, each part escaped.

    Files without a PatientID are grouped per study, never merged with other women.
    """
    return patient_key_of(header.issuer_of_patient_id, header.patient_id, header.study_instance_uid)


def iso_date(dicom_date: str) -> str:
    """'20240131' → '2024-01-31'; anything unparseable → ''."""
    d = (dicom_date or "").strip()
    if len(d) == 8 and d.isdigit():
        return f"{d[:4]}-{d[4:6]}-{d[6:]}"
    return ""


def exam_key(header: ImageHeader) -> str:
    """A screening exam is one woman's images of one day: studies split per image merge."""
    date = iso_date(header.study_date) or iso_date(header.content_date)
    return f"{patient_key(header)}|{date or 'study:' + escape_key_part(header.study_instance_uid)}"


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
    duplicates: list[Problem] = dataclasses.field(default_factory=list)


def write_batch(
    db: sqlite_utils.Database,
    headers: Iterable[ImageHeader],
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


def known_files(db: sqlite_utils.Database) -> dict[str, tuple[int, int]]:
    """path → (size, mtime_ns) of every file already looked at (images and problems)."""
    return {r[0]: (r[1], r[2]) for r in db.execute("SELECT path, size, mtime_ns FROM files")}


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


# ---------------------------------------------------------------- reading


def counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Totals for summaries: patients, exams, images, missing files, problems."""
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "patients": one("SELECT count(*) FROM patients"),
        "exams": one("SELECT count(*) FROM exams"),
        "images": one("SELECT count(*) FROM images"),
        "missing": one("SELECT count(*) FROM images WHERE missing"),
        "problems": one("SELECT count(*) FROM problems"),
    }


def list_patients(db: sqlite_utils.Database) -> list[dict]:
    """Every woman in the cache with her exam count and first/last exam dates."""
    return list(
        db.query(
            "SELECT p.patient_key, p.patient_id, p.issuer, p.name, p.birth_date, "
            "count(e.exam_key) AS exams, min(e.exam_date) AS first_exam, "
            "max(e.exam_date) AS last_exam "
            "FROM patients p LEFT JOIN exams e ON e.patient_key = p.patient_key "
            "GROUP BY p.patient_key ORDER BY p.patient_id, p.issuer"
        )
    )


def find_patient_keys(db: sqlite_utils.Database, ident: str) -> list[str]:
    """Patient keys whose PatientID or key equals `ident`."""
    rows = db.execute(
        "SELECT patient_key FROM patients WHERE patient_id = ? OR patient_key = ? "
        "ORDER BY patient_key",
        [ident, ident],
    ).fetchall()
    return [r[0] for r in rows]


_IMAGE_COLUMNS = (
    "sop_instance_uid, path, laterality, laterality_source, view, view_source, view_modifiers, "
    "is_standard, presentation_intent, missing, decode_error, transfer_syntax_uid, photometric, "
    "rows, columns, manufacturer, study_uid, series_uid, patient_orientation, window_presets, "
    "size, mtime_ns, sop_class_uid, burned_in_annotation, acquisition_date, acquisition_time, "
    "content_date, content_time, instance_number"
)


def exam_images(db: sqlite_utils.Database, exam_key: str) -> list[dict]:
    """The images of one exam, standard views first in RCC, LCC, RMLO, LMLO order."""
    rows = list(
        db.query(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE exam_key = ?", [exam_key])
    )
    order = {view_label(s.value, v.value): i for i, (s, v) in enumerate(STANDARD_VIEWS)}
    for r in rows:
        r["label"] = view_label(r["laterality"], r["view"])
        for k in ("view_modifiers", "patient_orientation", "window_presets"):
            r[k] = json.loads(r[k]) if r[k] else []
        r["is_standard"] = bool(r["is_standard"])
        r["missing"] = bool(r["missing"])
    rows.sort(key=lambda r: (0 if r["is_standard"] else 1, order.get(r["label"], 99), r["path"]))
    return rows


def is_scorable_view(image: dict) -> bool:
    """A standard, present, decodable, For Presentation image (an `exam_images` row)."""
    return (image["is_standard"] and not image["missing"] and not image["decode_error"]
            and image["presentation_intent"] != "FOR PROCESSING")


def acquisition_order(image: dict) -> tuple[str, int, str]:
    """Sort key among repeats of one view (`exam_images` rows): when it was acquired
    (AcquisitionDate/Time, else ContentDate/Time), then InstanceNumber, then path; the last
    one is the one read. Unknown values sort first."""
    if image["acquisition_date"] or image["acquisition_time"]:
        when = f"{image['acquisition_date']} {image['acquisition_time']}"
    else:
        when = f"{image['content_date']} {image['content_time']}"
    number = image["instance_number"]
    return when, -1 if number is None else number, image["path"]


def exam_status(images: list[dict]) -> tuple[bool, str]:
    """Whether an exam has the four standard For Presentation views; else the reason."""
    usable = {r["label"] for r in images if is_scorable_view(r)}
    needed = [view_label(s.value, v.value) for s, v in STANDARD_VIEWS]
    absent = [lab for lab in needed if lab not in usable]
    if not absent:
        return True, ""
    if any(r["presentation_intent"] == "FOR PROCESSING" for r in images) and len(absent) == 4:
        return False, "only For Processing images"
    # an image that is there but cannot be decoded is not "missing": say which and why
    broken = {r["label"]: r["decode_error"] for r in images
              if r["is_standard"] and not r["missing"] and r["decode_error"]}
    undecodable = [lab for lab in absent if lab in broken]
    absent = [lab for lab in absent if lab not in broken]
    parts = (["missing " + ", ".join(absent)] if absent else []) + [
        f"{lab} cannot be decoded" for lab in undecodable]
    return False, "; ".join(parts)


def list_exams(db: sqlite_utils.Database, patient_keys: list[str] | None = None) -> list[dict]:
    """Exams (oldest first per woman) with their images and completeness."""
    if patient_keys is None:
        rows = list(db.query("SELECT * FROM exams ORDER BY patient_key, exam_date"))
    else:
        rows = []
        for pk in patient_keys:
            rows += list(
                db.query("SELECT * FROM exams WHERE patient_key = ? ORDER BY exam_date", [pk])
            )
    pid = {r[0]: r[1] for r in db.execute("SELECT patient_key, patient_id FROM patients")}
    for r in rows:
        r["patient_id"] = pid.get(r["patient_key"], "")
        r["study_uids"] = json.loads(r["study_uids"])
        r["accession_numbers"] = json.loads(r["accession_numbers"])
        r["images"] = exam_images(db, r["exam_key"])
        r["complete"], r["incomplete_reason"] = exam_status(r["images"])
    return rows


def list_problems(db: sqlite_utils.Database) -> list[dict]:
    """Files that could not be used, and missing files, with reasons."""
    rows = list(db.query("SELECT path, reason, detail FROM problems ORDER BY path"))
    rows += [
        {"path": r[0], "reason": "file missing", "detail": "deleted or moved since it was imported"}
        for r in db.execute("SELECT path FROM images WHERE missing ORDER BY path")
    ]
    return rows


# ---------------------------------------------------------------- previews


def images_needing_previews(
    db: sqlite_utils.Database, pipeline_version: int, first_patient: str | None = None
) -> list[dict]:
    """Images whose preview is absent or stale, in order of need: the patient on screen
    first, then newest exams first, standard views before extra ones."""
    rows = list(
        db.query(
            "SELECT i.sop_instance_uid, i.path, i.size, i.mtime_ns, i.patient_key, i.exam_key, "
            "i.is_standard, e.exam_date FROM images i JOIN exams e ON e.exam_key = i.exam_key "
            "LEFT JOIN previews p ON p.sop_instance_uid = i.sop_instance_uid "
            "WHERE NOT i.missing AND i.decode_error = '' AND (p.sop_instance_uid IS NULL "
            "OR p.source_size != i.size OR p.source_mtime_ns != i.mtime_ns "
            "OR p.pipeline_version != ?)",
            [pipeline_version],
        )
    )
    rows.sort(key=lambda r: r["path"])
    rows.sort(key=lambda r: not r["is_standard"])
    rows.sort(key=lambda r: r["exam_date"], reverse=True)
    rows.sort(key=lambda r: r["patient_key"] != first_patient)
    return rows


def save_preview_row(db: sqlite_utils.Database, row: dict, solved: tuple[str, str] | None = None) -> None:
    """Record a written preview file (one short transaction); `solved` = (path, reason) of a
    problem the written file solves, removed in the same transaction."""
    with write_transaction(db):
        db["previews"].upsert(row, pk="sop_instance_uid")
        if solved:
            db.execute("DELETE FROM problems WHERE path = ? AND reason = ?", list(solved))


def preview_row(db: sqlite_utils.Database, sop_uid: str) -> dict | None:
    """The preview record of one image, or None."""
    rows = list(db.query("SELECT * FROM previews WHERE sop_instance_uid = ?", [sop_uid]))
    return rows[0] if rows else None
