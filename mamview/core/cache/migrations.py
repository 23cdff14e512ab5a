"""Schema of the exam cache, as ordered migrations (sqlite-utils Migrations).

Add a new function for every schema change; never edit an applied one.
"""

from __future__ import annotations

import sqlite_utils

migrations = sqlite_utils.Migrations("mamview.cache")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    _run(
        db,
        """
        CREATE TABLE patients (
            patient_key TEXT PRIMARY KEY,      -- issuer|PatientID, stable across imports
            patient_id TEXT NOT NULL,
            issuer TEXT NOT NULL DEFAULT '',
            name TEXT NOT NULL DEFAULT '',
            birth_date TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE exams (
            exam_key TEXT PRIMARY KEY,         -- patient_key|YYYY-MM-DD: same-day studies merge
            patient_key TEXT NOT NULL REFERENCES patients(patient_key) ON DELETE CASCADE,
            exam_date TEXT NOT NULL,           -- YYYY-MM-DD, '' when the files carry no date
            study_uids TEXT NOT NULL DEFAULT '[]',
            accession_numbers TEXT NOT NULL DEFAULT '[]',
            description TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX exams_patient ON exams(patient_key, exam_date);
        CREATE TABLE images (
            sop_instance_uid TEXT PRIMARY KEY,
            exam_key TEXT NOT NULL REFERENCES exams(exam_key) ON DELETE CASCADE,
            patient_key TEXT NOT NULL,
            path TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            missing INTEGER NOT NULL DEFAULT 0, -- file deleted since it was indexed
            study_uid TEXT NOT NULL,
            series_uid TEXT NOT NULL,
            sop_class_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            modality TEXT NOT NULL,
            manufacturer TEXT NOT NULL DEFAULT '',
            manufacturer_model TEXT NOT NULL DEFAULT '',
            study_time TEXT NOT NULL DEFAULT '',
            series_description TEXT NOT NULL DEFAULT '',
            laterality TEXT NOT NULL,
            laterality_source TEXT NOT NULL,
            laterality_detail TEXT NOT NULL DEFAULT '',
            view TEXT NOT NULL,
            view_source TEXT NOT NULL,
            view_detail TEXT NOT NULL DEFAULT '',
            view_modifiers TEXT NOT NULL DEFAULT '[]',
            is_standard INTEGER NOT NULL,      -- unmodified RCC/LCC/RMLO/LMLO
            presentation_intent TEXT NOT NULL DEFAULT '',
            patient_orientation TEXT NOT NULL DEFAULT '[]',
            rows INTEGER NOT NULL,
            columns INTEGER NOT NULL,
            bits_stored INTEGER NOT NULL,
            photometric TEXT NOT NULL,
            window_presets TEXT NOT NULL DEFAULT '[]',
            pixel_spacing TEXT NOT NULL DEFAULT '',
            breast_implant_present TEXT NOT NULL DEFAULT '',
            lossy_compression TEXT NOT NULL DEFAULT '',
            decode_error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX images_exam ON images(exam_key);
        CREATE INDEX images_patient ON images(patient_key);
        -- every file ever looked at, so an unchanged file (same size and mtime) is skipped
        CREATE TABLE files (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            outcome TEXT NOT NULL,             -- 'image' or 'problem'
            sop_instance_uid TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE problems (
            path TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE previews (
            sop_instance_uid TEXT PRIMARY KEY REFERENCES images(sop_instance_uid) ON DELETE CASCADE,
            file TEXT NOT NULL,                -- relative to the library's previews folder
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            flip_lr INTEGER NOT NULL,
            flip_ud INTEGER NOT NULL,
            orientation_source TEXT NOT NULL,
            reduce_factor INTEGER NOT NULL,
            source_size INTEGER NOT NULL,
            source_mtime_ns INTEGER NOT NULL,
            pipeline_version INTEGER NOT NULL
        );
        CREATE TABLE scores (
            score_id INTEGER PRIMARY KEY,
            cache_key TEXT NOT NULL UNIQUE,    -- model identity + input SOP UIDs + preprocessing
            exam_key TEXT NOT NULL REFERENCES exams(exam_key) ON DELETE CASCADE,
            model_id TEXT NOT NULL,
            model_version TEXT NOT NULL,
            weights_sha256 TEXT NOT NULL,
            calibrator TEXT NOT NULL DEFAULT '',
            preprocessing_version TEXT NOT NULL,
            device TEXT NOT NULL DEFAULT '',
            input_uids TEXT NOT NULL,          -- JSON list, in RCC, LCC, RMLO, LMLO order
            status TEXT NOT NULL,              -- 'ok' or 'unscorable'
            reason TEXT NOT NULL DEFAULT '',
            risk TEXT NOT NULL DEFAULT '[]',   -- JSON list: cumulative risk, years 1..5 (fractions)
            computed_at TEXT NOT NULL
        );
        CREATE INDEX scores_exam ON scores(exam_key, model_id);
        """
    )


@migrations()
def m002_burned_in_annotation(db: sqlite_utils.Database) -> None:
    # BurnedInAnnotation (YES / NO), for the export's PHI check; '' = unknown until re-read
    db.execute("ALTER TABLE images ADD COLUMN burned_in_annotation TEXT NOT NULL DEFAULT ''")


@migrations()
def m003_escaped_keys(db: sqlite_utils.Database) -> None:
    """Patient and exam keys escape '%' and '|' in their parts (a '|' in an ID made two women
    share a key). Keys of other values are unchanged; affected ones are rewritten here, and
    their files re-read at the next import, which splits women that had been merged."""
    rows = db.execute(
        "SELECT patient_key, patient_id, issuer FROM patients WHERE patient_id != '' AND "
        "(instr(patient_id, '|') OR instr(patient_id, '%') OR patient_id LIKE 'no-id:%' "
        "OR instr(issuer, '|') OR instr(issuer, '%'))"
    ).fetchall()
    for old, pid, issuer in rows:
        new = _escaped_patient_key(issuer, pid)
        if new != old:
            _rekey_patient(db, old, new)


def _escaped_patient_key(issuer: str, patient_id: str) -> str:
    # a frozen copy of keys.patient_key_of as of this migration (migrations never change)
    def esc(v: str) -> str:
        return v.replace("%", "%25").replace("|", "%7C")

    pid = esc(patient_id.strip())
    if pid.startswith("no-id:"):
        pid = "%6E" + pid[1:]
    return f"{esc(issuer.strip())}|{pid}"


def _rekey_patient(db: sqlite_utils.Database, old: str, new: str) -> None:
    """Move a patient, her exams, images and scores from key `old` to `new` (foreign keys hold)."""
    db.execute(
        "INSERT OR IGNORE INTO patients (patient_key, patient_id, issuer, name, birth_date) "
        "SELECT ?, patient_id, issuer, name, birth_date FROM patients WHERE patient_key = ?",
        [new, old],
    )
    for (exam,) in db.execute("SELECT exam_key FROM exams WHERE patient_key = ?", [old]).fetchall():
        new_exam = new + exam[len(old):]  # the old exam key is the old patient key, '|', date
        db.execute(
            "INSERT OR IGNORE INTO exams (exam_key, patient_key, exam_date, study_uids, accession_numbers, "
            "description) SELECT ?, ?, exam_date, study_uids, accession_numbers, description "
            "FROM exams WHERE exam_key = ?",
            [new_exam, new, exam],
        )
        db.execute("UPDATE images SET exam_key = ?, patient_key = ? WHERE exam_key = ?", [new_exam, new, exam])
        db.execute("UPDATE scores SET exam_key = ? WHERE exam_key = ?", [new_exam, exam])
        db.execute("DELETE FROM exams WHERE exam_key = ?", [exam])
    db.execute("DELETE FROM patients WHERE patient_key = ?", [old])
    # images of another woman may have been merged under the old key: read them again
    db.execute("DELETE FROM files WHERE path IN (SELECT path FROM images WHERE patient_key = ?)", [new])


@migrations()
def m004_invalid_uids(db: sqlite_utils.Database) -> None:
    """Images indexed before UIDs were checked leave the cache if a UID is not a DICOM UID;
    their files are read again at the next import and listed as problems."""
    from mamview.core.safety import is_valid_uid

    bad = [
        (uid, path)
        for uid, path, study, series in db.execute(
            "SELECT sop_instance_uid, path, study_uid, series_uid FROM images"
        ).fetchall()
        if not is_valid_uid(uid) or any(v and not is_valid_uid(v) for v in (study, series))
    ]
    for uid, path in bad:
        db.execute("DELETE FROM previews WHERE sop_instance_uid = ?", [uid])
        db.execute("DELETE FROM images WHERE sop_instance_uid = ?", [uid])
        db.execute("DELETE FROM files WHERE path = ?", [path])
    if bad:
        db.execute("DELETE FROM exams WHERE exam_key NOT IN (SELECT exam_key FROM images)")
        db.execute("DELETE FROM patients WHERE patient_key NOT IN (SELECT patient_key FROM exams)")


@migrations()
def m005_acquisition_order(db: sqlite_utils.Database) -> None:
    """When each image was acquired (dates 'YYYY-MM-DD', times 'HHMMSS.ffffff', '' = unknown)
    and its InstanceNumber, so a repeated view is chosen by acquisition, not by path name.
    Files of exams that hold a repeated standard view are read again at the next import to
    fill them in; other images only need them once they gain a repeat (and are read then)."""
    for column in ("acquisition_date", "acquisition_time", "content_date", "content_time"):
        db.execute(f"ALTER TABLE images ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE images ADD COLUMN instance_number INTEGER")
    db.execute(
        "DELETE FROM files WHERE path IN (SELECT a.path FROM images a JOIN images b "
        "ON a.exam_key = b.exam_key AND a.laterality = b.laterality AND a.view = b.view "
        "AND a.sop_instance_uid != b.sop_instance_uid WHERE a.is_standard AND b.is_standard)"
    )



@migrations()
def m006_study_objects(db: sqlite_utils.Database) -> None:
    """The non-image members of a study (CAD SR, presentation states, key objects, …), kept
    apart from the images; files once refused as "not an image" or "tomosynthesis" are read
    again at the next import so they are filed as members."""
    _run(db, """
        CREATE TABLE study_objects (
            sop_instance_uid TEXT PRIMARY KEY,
            exam_key TEXT NOT NULL,
            patient_key TEXT NOT NULL,
            study_uid TEXT NOT NULL,
            series_uid TEXT NOT NULL DEFAULT '',
            sop_class_uid TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,
            modality TEXT NOT NULL DEFAULT '',
            manufacturer TEXT NOT NULL DEFAULT '',
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            missing INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX study_objects_exam ON study_objects (exam_key);
        CREATE INDEX study_objects_path ON study_objects (path);
        DELETE FROM files WHERE outcome = 'problem' AND path IN
            (SELECT path FROM problems WHERE reason IN ('not an image', 'tomosynthesis'));
        DELETE FROM problems WHERE reason IN ('not an image', 'tomosynthesis')
    """)


@migrations()
def m007_image_domain(db: sqlite_utils.Database) -> None:
    """Why each image is outside the model's validated domain ('' = inside: full-field digital,
    For Presentation, not lossy, acquired as 2-D), and on each score the domain of its inputs
    (set only on scores computed on request) and the views used for others ('RML→RMLO').

    What the stored columns tell (CR class, For Processing, LossyImageCompression 01) is filled
    in now. Synthetic 2D needs ImageType, not stored: the images of exams that hold a
    tomosynthesis object (a synthetic view comes with its tomosynthesis) or whose series
    description names one are read again at the next import, and so are secondary captures
    filed as study members, as digitised film is now an image."""
    db.execute("ALTER TABLE images ADD COLUMN domain TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE scores ADD COLUMN domain TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE scores ADD COLUMN view_mapping TEXT NOT NULL DEFAULT ''")
    # frozen copies of the category strings of domain.py as of this migration
    for category, where in (
        ("computed radiography", "sop_class_uid = '1.2.840.10008.5.1.4.1.1.1'"),
        ("for processing", "presentation_intent = 'FOR PROCESSING'"),
        ("lossy compressed", "lossy_compression = '01'"),
    ):
        db.execute(f"UPDATE images SET domain = CASE WHEN domain = '' THEN ? "
                   f"ELSE domain || ', ' || ? END WHERE {where}", [category, category])
    import re

    synthetic = re.compile(r"C-?VIEW|V-?PREVIEW|S-?VIEW|INSIGHT\W?2D|SYNTHE", re.IGNORECASE)
    with_tomo = {r[0] for r in db.execute(
        "SELECT exam_key FROM study_objects WHERE kind = 'tomosynthesis'")}
    reread = [path for path, exam, description in db.execute(
        "SELECT path, exam_key, series_description FROM images")
        if exam in with_tomo or synthetic.search(description)]
    reread += [r[0] for r in db.execute(
        "SELECT path FROM study_objects WHERE kind = 'secondary capture'")]
    for path in reread:
        db.execute("DELETE FROM files WHERE path = ?", [path])
    db.execute("DELETE FROM study_objects WHERE kind = 'secondary capture'")


@migrations()
def m008_patient_identity(db: sqlite_utils.Database) -> None:
    """The birth date and name each image carries, so two women sharing a PatientID are found
    (the patients row keeps one of each). Image files are read again at the next import to fill
    them in (a header-only scan)."""
    for column in ("patient_birth_date", "patient_name"):
        db.execute(f"ALTER TABLE images ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    # a stat that can never match: the next import reads each image file again (the row stays)
    db.execute("UPDATE files SET mtime_ns = -1 WHERE outcome = 'image'")


@migrations()
def m009_read_marks(db: sqlite_utils.Database) -> None:
    """Which women a reader marked as read, and which exam was her latest then: an exam
    arriving later makes her unread again (reads.read_marks compares)."""
    _run(db, """
        CREATE TABLE read_marks (
            patient_key TEXT PRIMARY KEY,
            exam_key TEXT NOT NULL DEFAULT '',
            read_at TEXT NOT NULL
        )
    """)


@migrations()
def m010_annotations(db: sqlite_utils.Database) -> None:
    """The reader's marks on an image (distance, arrow, key image), keyed by SOP Instance UID so
    they hang with the image in every layout. Points are image pixels of the full-resolution
    image as hung (after the display flips); a distance keeps the calibration it was measured
    with. No foreign key: a re-import that replaces an image row must not take its marks."""
    _run(db, """
        CREATE TABLE annotations (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sop_instance_uid TEXT NOT NULL,
            exam_key TEXT NOT NULL DEFAULT '',
            kind TEXT NOT NULL,                -- 'distance' | 'arrow' | 'key'
            points TEXT NOT NULL DEFAULT '[]', -- JSON [[x, y], ...] in image pixels
            spacing TEXT NOT NULL DEFAULT '',  -- JSON [row mm, column mm] per pixel, '' = none
            spacing_source TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL
        );
        CREATE INDEX annotations_image ON annotations(sop_instance_uid);
        CREATE INDEX annotations_exam ON annotations(exam_key)
    """)

def _run(db: sqlite_utils.Database, script: str) -> None:
    # executescript() would COMMIT first and break the migration's transaction
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
