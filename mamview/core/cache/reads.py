"""What the library knows about scores, asked one way by every read path.

`choose_model` is the one rule deciding whose scores are shown; `current_scores` says per exam
whether the stored score is *current* (its cache key matches today's model identity and input
files), *stale* (a stored score of this model id whose key no longer matches), *pending* or
*unscorable*. Nobody else re-derives either. No torch: identities come from config.json.
"""

from __future__ import annotations


import json
from typing import Iterable, Sequence

import sqlite_utils

from mamview.core.cache.keys import unscorable_key
from mamview.core.domain import STANDARD_VIEWS, view_label
from mamview.core.domain import STALE_REASON, ModelRef, ScoredExam, ScoreState
from mamview.core.domain import DOMAIN_FOR_PROCESSING, domain_reason, join_domain


# ---------------------------------------------------------------- which model


def model_ref(entry) -> ModelRef:
    """The ModelRef of a registry entry; its identity read from config.json (no torch)."""
    from mamview.core.models.identity import identity_from_config
    from mamview.core.models.registry import read_identity

    if not entry.available:
        return ModelRef(entry.model_id, entry.name, entry.label, reason=entry.reason)
    try:
        ident = identity_from_config(read_identity(entry.folder / "config.json"))
    except (OSError, ValueError) as exc:
        return ModelRef(entry.model_id, entry.name, entry.label, reason=str(exc)[:200])
    # the registry's id, and its name and label made printable, are what the listing shows
    return ModelRef.from_identity(ident, model_id=entry.model_id, name=entry.name,
                                  label=entry.label,
                                  clinically_validated=entry.clinically_validated)


def choose_model(lib, requested: str | None = None, db=None) -> ModelRef | None:
    """The model whose scores are shown: `requested` (a model id, 'auto' for the best
    installed one, None for the user's settings), else the best installed model; with no
    model installed, the one that scored most of the library's exams (from `db`).

    A named model that is not installed is still returned (installed=False), so its stored
    scores stay visible; None only when there is nothing to show.
    """
    from mamview.core.models import registry

    if requested is None:
        from mamview.core import settings as user_settings

        requested = user_settings.load(lib.settings_file).model or "auto"
    entries = registry.list_models(lib)
    if requested not in ("auto", ""):
        for e in entries:
            if e.model_id == requested:
                return model_ref(e)
        return ModelRef(requested, requested, reason=f"unknown model {requested!r}")
    for e in entries:
        if e.available:
            return model_ref(e)
    stored = model_with_most_scores(db) if db is not None else None
    return ModelRef(stored, stored, reason="not installed") if stored else None


# ---------------------------------------------------------------- current, stale, pending


def current_scores(db, exam_keys: Sequence[str], model: ModelRef | str | None, *,
                   include_out_of_domain: bool = False) -> dict[str, ScoredExam]:
    """Per exam: its score state for `model` with the stored score and its identity.

    `model` is a ModelRef (checked against its identity when installed), a bare model id, or
    None (the newest stored model per exam); without an installed identity a stored score is
    checked against its own recorded identity, i.e. only for changed input files.

    An exam whose inputs are outside the model's validated domain (digitised film, CR, …) is
    UNSCORABLE with that reason unless `include_out_of_domain` (then PENDING until scored); a
    score computed on request is CURRENT either way, and carries the domain.
    """
    return {ek: scored for ek, (scored, _) in evaluate(
        db, exam_keys, model, include_out_of_domain=include_out_of_domain).items()}


def evaluate(db, exam_keys: Sequence[str], model: ModelRef | str | None, *,
             include_out_of_domain: bool = False
             ) -> dict[str, tuple[ScoredExam, dict | None]]:
    """`current_scores` with the matching stored row (None unless current or unscorable).

    Queries: one per exam for its inputs, then three in all (newest rows, image UIDs, rows
    by today's keys), whatever the number of exams.
    """
    from mamview.core.services.inference import (OUT_OF_DOMAIN_KEY, Unscorable, exam_inputs,
                                                 inputs_domain, score_key)

    keys = list(dict.fromkeys(exam_keys))
    ref = model if isinstance(model, ModelRef) else None
    model_id = ref.model_id if ref else model
    newest = newest_per_exam(db, keys, model_id)
    uids = _image_uids(db, keys)
    today: dict[str, tuple[str | None, str | None, str]] = {}  # ok key, unscorable key, reason
    for ek in keys:
        ident = ref if ref is not None and ref.installed else _row_identity(newest.get(ek), model_id)
        if ident is None:
            today[ek] = (None, None, "")
            continue
        refused = ""  # a refusal for the domain is stored under its own key
        try:
            # the inputs a request would take; the domain decides only whether it may
            inputs = exam_inputs(db, ek, include_out_of_domain=True)
            ok_key, why = score_key(ident, inputs), ""
            domain = inputs_domain(inputs)
            if domain and not include_out_of_domain:
                why, refused = domain_reason(domain), OUT_OF_DOMAIN_KEY
        except Unscorable as exc:
            ok_key, why = None, str(exc)
        except (TypeError, ValueError, KeyError) as exc:  # odd stored values: this exam only
            ok_key, why = None, f"its images cannot be chosen: {type(exc).__name__}"
        today[ek] = (ok_key, unscorable_key(ident, uids.get(ek, [])) + refused, why)
    stored = rows_by_key(db, [k for t in today.values() for k in t[:2] if k])
    return {ek: _state(ek, today[ek], stored, newest.get(ek), model_id) for ek in keys}


def _state(ek: str, today: tuple, stored: dict, newest: dict | None, model_id: str | None
           ) -> tuple[ScoredExam, dict | None]:
    from mamview.core.services.inference import OUT_OF_DOMAIN_KEY

    ok_key, unscorable_key, why = today
    hit = stored.get(ok_key) if ok_key else None
    if hit is not None and hit["status"] == "ok":
        return _scored(ek, ScoreState.CURRENT, hit, tuple(float(x) for x in hit["risk"])), hit
    hit = stored.get(unscorable_key) if unscorable_key else None
    if hit is not None:
        return _scored(ek, ScoreState.UNSCORABLE, hit, (), hit.get("reason") or hit["status"]), hit
    if why:  # incomplete today: that is the reason, whatever was stored before
        return ScoredExam(ek, ScoreState.UNSCORABLE, reason=why, model_id=model_id or ""), None
    # a refusal for the domain is no earlier score: once the domain is included, it is pending
    if newest is not None and not newest["cache_key"].endswith(OUT_OF_DOMAIN_KEY):
        return _scored(ek, ScoreState.STALE, newest, (), STALE_REASON), None
    return ScoredExam(ek, ScoreState.PENDING, model_id=model_id or ""), None


def _scored(ek: str, state: ScoreState, row: dict, risk: tuple, reason: str = "") -> ScoredExam:
    return ScoredExam(ek, state, risk, reason, row["model_id"], row.get("model_version") or "",
                      row.get("weights_sha256") or "", row.get("calibrator") or "",
                      row.get("preprocessing_version") or "", row.get("device") or "",
                      row.get("computed_at") or "", tuple(row.get("input_uids") or ()),
                      row.get("domain") or "", row.get("view_mapping") or "")


def _row_identity(row: dict | None, model_id: str | None) -> ModelRef | None:
    """The identity a stored score recorded (for a model this installation cannot run)."""
    if row is None:
        return None
    cal_id, _, cal_sha = (row.get("calibrator") or "").rpartition(":")
    return ModelRef(row["model_id"] or model_id or "", version=row.get("model_version") or "",
                    weights_sha256=row.get("weights_sha256") or "", calibrator_id=cal_id,
                    calibrator_sha256=cal_sha,
                    preprocessing_version=row.get("preprocessing_version") or "")


def _image_uids(db, exam_keys: Sequence[str]) -> dict[str, list[tuple[str, int, int]]]:
    """(SOP UID, size, mtime) of every image of each exam (what an unscorable key is made of)."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    for i in range(0, len(exam_keys), 500):
        chunk = list(exam_keys[i:i + 500])
        marks = ",".join("?" * len(chunk))
        for ek, uid, size, mtime in db.execute(
                "SELECT exam_key, sop_instance_uid, size, mtime_ns FROM images "
                f"WHERE exam_key IN ({marks})", chunk):
            out.setdefault(ek, []).append((uid, size, mtime))
    return out


def exam_dates(db, patient_key: str | None = None) -> list[tuple[str, str, str]]:
    """(exam key, patient key, ISO date or '') of every exam (of one woman), oldest first."""
    sql = "SELECT exam_key, patient_key, exam_date FROM exams"
    args: list = []
    if patient_key is not None:
        sql += " WHERE patient_key = ?"
        args.append(patient_key)
    return [tuple(r) for r in db.execute(sql + " ORDER BY exam_date, exam_key", args)]


def exam_vendors(db, exam_keys: Sequence[str]) -> dict[str, str | None]:
    """The most common Manufacturer of each exam's images (ties: alphabetical; None if
    unrecorded), in one query per 500 exams."""
    counts: dict[str, dict[str, int]] = {}
    keys = list(exam_keys)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for ek, maker, n in db.execute(
                f"SELECT exam_key, manufacturer, count(*) FROM images WHERE exam_key IN ({marks}) "
                "AND manufacturer != '' GROUP BY exam_key, manufacturer", chunk):
            counts.setdefault(ek, {})[maker] = n
    return {ek: (min(counts[ek].items(), key=lambda kv: (-kv[1], kv[0]))[0]
                 if ek in counts else None) for ek in keys}


def image_paths(db, exam_key: str) -> dict[str, str]:
    """SOP Instance UID → file path of each image of an exam."""
    return {uid: path for uid, path in db.execute(
        "SELECT sop_instance_uid, path FROM images WHERE exam_key = ?", [exam_key])}


# ---------------------------------------------------------------- library rows


def known_files(db: sqlite_utils.Database) -> dict[str, tuple[int, int]]:
    """path → (size, mtime_ns) of every file already looked at (images and problems)."""
    return {r[0]: (r[1], r[2]) for r in db.execute("SELECT path, size, mtime_ns FROM files")}


def counts(db: sqlite_utils.Database) -> dict[str, int]:
    """Totals for summaries: patients, exams, images, missing files, problems."""
    one = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    return {
        "patients": one("SELECT count(*) FROM patients"),
        "exams": one("SELECT count(*) FROM exams"),
        "images": one("SELECT count(*) FROM images"),
        "missing": one("SELECT count(*) FROM images WHERE missing"),
        "problems": one("SELECT count(*) FROM problems"),
        "study_objects": one("SELECT count(*) FROM study_objects WHERE NOT missing"),
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
    "content_date, content_time, instance_number, domain"
)


def exam_images(db: sqlite_utils.Database, exam_key: str) -> list[dict]:
    """The images of one exam, standard views first in RCC, LCC, RMLO, LMLO order."""
    return image_rows(db.query(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE exam_key = ?",
                               [exam_key]))


def image_rows(raw: Iterable[dict]) -> list[dict]:
    """Raw `images` rows of one exam as `exam_images` gives them (view label, decoded lists,
    standard views first in RCC, LCC, RMLO, LMLO order); the rows are copied."""
    rows = [dict(r) for r in raw]
    order = {view_label(s.value, v.value): i for i, (s, v) in enumerate(STANDARD_VIEWS)}
    for r in rows:
        r["label"] = view_label(r["laterality"], r["view"])
        for k in ("view_modifiers", "patient_orientation", "window_presets"):
            r[k] = json.loads(r[k]) if r[k] else []
        r["is_standard"] = bool(r["is_standard"])
        r["missing"] = bool(r["missing"])
    rows.sort(key=lambda r: (0 if r["is_standard"] else 1, order.get(r["label"], 99), r["path"]))
    return rows


def image_domain(image: dict) -> str:
    """Why an `exam_images` row is outside the model's validated domain ('' = inside); For
    Processing is read from the intent too (rows indexed before the domain was stored)."""
    intent = image.get("presentation_intent") == "FOR PROCESSING"
    return join_domain([image.get("domain") or ""] + ([DOMAIN_FOR_PROCESSING] if intent else []))


def _present(image: dict) -> bool:
    return not image["missing"] and not image["decode_error"]


def is_scorable_view(image: dict, include_out_of_domain: bool = False) -> bool:
    """A standard, present, decodable image (an `exam_images` row) inside the model's
    validated domain, i.e. full-field digital For Presentation (any, with the flag)."""
    return (image["is_standard"] and _present(image)
            and (include_out_of_domain or not image_domain(image)))


def slot_candidates(images: list[dict], laterality: str, view: str,
                    include_out_of_domain: bool = False) -> tuple[list[dict], str]:
    """The images that may fill one of the four views a model reads, and the label they were
    taken from when it is another view ('RML' for RMLO), else ''.

    An MLO slot without an MLO takes an unmodified ML of that side, as Mirai's own code does
    (it accepts CC, MLO and ML and codes view = 0 if CC else 1). Images inside the validated
    domain come first; ones outside only with `include_out_of_domain`.
    """
    label = view_label(laterality, view)
    groups = [(label, [r for r in images if r["label"] == label and r["is_standard"]
                       and _present(r)])]
    if view == "MLO":
        ml = view_label(laterality, "ML")
        groups.append((ml, [r for r in images if r["label"] == ml and not r["view_modifiers"]
                            and _present(r)]))
    for inside in ((True, False) if include_out_of_domain else (True,)):
        for source, rows in groups:
            chosen = [r for r in rows if bool(image_domain(r)) != inside]
            if chosen:
                return chosen, "" if source == label else source
    return [], ""


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


def exam_status(images: list[dict], include_out_of_domain: bool = False) -> tuple[bool, str]:
    """Whether an exam has the four views a model reads (an ML standing in for an MLO) inside
    the model's validated domain (any domain, with the flag); else the reason: missing or
    undecodable views, else "outside the model's validated domain: digitised film"."""
    absent, outside = [], []
    for side, view in STANDARD_VIEWS:
        if slot_candidates(images, side.value, view.value, include_out_of_domain)[0]:
            continue
        others = slot_candidates(images, side.value, view.value, True)[0]
        if others:
            outside.append(join_domain(image_domain(r) for r in others))
        else:
            absent.append(view_label(side.value, view.value))
    if not absent and not outside:
        return True, ""
    if not absent:
        if len(outside) == len(STANDARD_VIEWS) and set(outside) == {DOMAIN_FOR_PROCESSING}:
            return False, "only For Processing images"
        return False, domain_reason(join_domain(outside))
    # an image that is there but cannot be decoded is not "missing": say which and why
    broken = {r["label"]: r["decode_error"] for r in images
              if r["is_standard"] and not r["missing"] and r["decode_error"]}
    undecodable = [lab for lab in absent if lab in broken]
    absent = [lab for lab in absent if lab not in broken]
    parts = (["missing " + ", ".join(absent)] if absent else []) + [
        f"{lab} cannot be decoded" for lab in undecodable]
    return False, "; ".join(parts)


def choose_inputs(images: list[dict], include_out_of_domain: bool = False
                  ) -> tuple[list[dict] | None, str]:
    """The four of an exam's images (`exam_images` rows) a model reads, in RCC, LCC, RMLO, LMLO
    order, each a copy with `slot` naming the view it fills (an ML may fill an MLO's), and '';
    or (None, the reason) when a view is missing or unusable, or, unless
    `include_out_of_domain`, outside the model's validated domain."""
    ok, reason = exam_status(images, include_out_of_domain)
    if not ok:
        return None, reason
    chosen = []
    for side, view in STANDARD_VIEWS:
        cands, _ = slot_candidates(images, side.value, view.value, include_out_of_domain)
        # several images of one view (a repeat): the last one acquired is the one read
        row = dict(max(cands, key=acquisition_order))
        row["slot"] = view_label(side.value, view.value)
        chosen.append(row)
    return chosen, ""


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


def preview_row(db: sqlite_utils.Database, sop_uid: str) -> dict | None:
    """The preview record of one image, or None."""
    rows = list(db.query("SELECT * FROM previews WHERE sop_instance_uid = ?", [sop_uid]))
    return rows[0] if rows else None


def score_by_key(db: sqlite_utils.Database, key: str) -> dict | None:
    """The stored score with this cache key, or None."""
    rows = list(db.query("SELECT * FROM scores WHERE cache_key = ?", [key]))
    return _decode(rows[0]) if rows else None


def scores_for_exams(db: sqlite_utils.Database, exam_keys: Iterable[str], model=None) -> dict[str, dict]:
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


def exam_exists(db: sqlite_utils.Database, exam_key: str) -> bool:
    """Whether the library holds an exam with this key."""
    return db.execute("SELECT 1 FROM exams WHERE exam_key = ?", [exam_key]).fetchone() is not None


def exam_keys_of(db: sqlite_utils.Database, patient_keys: Sequence[str],
                 exam_date: str | None = None) -> list[str]:
    """The exam keys of these women (on one ISO date when given), oldest first."""
    keys = list(patient_keys)
    if not keys:
        return []
    sql = f"SELECT exam_key FROM exams WHERE patient_key IN ({','.join('?' * len(keys))})"
    if exam_date:
        sql += " AND exam_date = ?"
        keys.append(exam_date)
    return [r[0] for r in db.execute(sql + " ORDER BY exam_date, exam_key", keys)]


def patient_of_exam(db: sqlite_utils.Database, exam_key: str) -> str | None:
    """The patient key of an exam, None when the library has no such exam."""
    row = db.execute("SELECT patient_key FROM exams WHERE exam_key = ?", [exam_key]).fetchone()
    return row[0] if row else None


def patient_row(db: sqlite_utils.Database, patient_key: str) -> dict | None:
    """The patients row of one woman (None when unknown)."""
    rows = list(db.query("SELECT * FROM patients WHERE patient_key = ?", [patient_key]))
    return rows[0] if rows else None


def indexed_paths(db: sqlite_utils.Database) -> list[str]:
    """The path of every file the library has seen."""
    return [r[0] for r in db.execute("SELECT path FROM files")]


def missing_image_count(db: sqlite_utils.Database) -> int:
    """How many indexed images are marked missing (their file is gone)."""
    return db.execute("SELECT count(*) FROM images WHERE missing").fetchone()[0]


def ok_score_count(db: sqlite_utils.Database) -> int:
    """How many stored scores have a risk (status 'ok'), of any model."""
    return db.execute("SELECT count(*) FROM scores WHERE status = 'ok'").fetchone()[0]


def study_objects(db: sqlite_utils.Database, exam_keys: Sequence[str]) -> dict[str, list[dict]]:
    """The non-image members (CAD SR, presentation states, …) present on disk of each exam,
    by kind then SOP Instance UID."""
    out: dict[str, list[dict]] = {}
    for chunk in _chunks(list(exam_keys)):
        for row in db.query(
                f"SELECT * FROM study_objects WHERE exam_key IN ({','.join('?' * len(chunk))}) "
                "AND NOT missing ORDER BY kind, sop_instance_uid", chunk):
            out.setdefault(row["exam_key"], []).append(row)
    return out


def object_counts(objects: Sequence[dict]) -> dict[str, int]:
    """{kind: how many} of an exam's study members."""
    counts: dict[str, int] = {}
    for o in objects:
        counts[o["kind"]] = counts.get(o["kind"], 0) + 1
    return counts


def identity_conflicts(db: sqlite_utils.Database,
                       patient_keys: Sequence[str] | None = None) -> dict[str, str]:
    """Women whose images disagree on who she is: the same key (issuer + PatientID) with two
    birth dates, or with clearly different names (another family name, or another given name
    under the same family name). Key → one line saying what differs."""
    sql = ("SELECT patient_key, patient_birth_date, patient_name FROM images WHERE NOT missing")
    args: list = []
    if patient_keys is not None:
        keys = list(patient_keys)
        if not keys:
            return {}
        sql += f" AND patient_key IN ({','.join('?' * len(keys))})"
        args = keys
    births: dict[str, set[str]] = {}
    names: dict[str, set[tuple[str, str]]] = {}
    for pk, birth, name in db.execute(sql + " GROUP BY patient_key, patient_birth_date, "
                                            "patient_name", args):
        if birth:
            births.setdefault(pk, set()).add(birth)
        family, _, given = (name or "").upper().partition("^")
        if family.strip():
            names.setdefault(pk, set()).add((family.strip(), given.split("^")[0].strip()))
    out: dict[str, str] = {}
    for pk in set(births) | set(names):
        why = []
        if len(births.get(pk, ())) > 1:
            shown = ", ".join(sorted(f"{b[:4]}-{b[4:6]}-{b[6:]}" if len(b) == 8 else b
                                     for b in births[pk]))
            why.append(f"{len(births[pk])} birth dates ({shown})")
        if _different_people(names.get(pk, set())):
            why.append(f"{len(names[pk])} names")
        if why:
            out[pk] = ("identity conflict: one patient ID with " + " and ".join(why)
                       + " — check before reading her exams as one trajectory")
    return out


def identity_problems(db: sqlite_utils.Database) -> list[dict]:
    """The identity conflicts as rows shaped like `list_problems` (path: the patient ID),
    so every problem list shows them beside the files that were skipped."""
    conflicts = identity_conflicts(db)
    if not conflicts:
        return []
    ids = {r["patient_key"]: (r["patient_id"], r["issuer"]) for r in list_patients(db)}
    rows = []
    for pk in sorted(conflicts):
        pid, issuer = ids.get(pk, (pk, ""))
        rows.append({"path": f"patient ID {pid}" + (f" (issuer {issuer})" if issuer else ""),
                     "reason": "identity conflict", "detail": conflicts[pk]})
    return rows


def _different_people(names: set[tuple[str, str]]) -> bool:
    """Two (family, given) names that cannot be one person's spelling: another family name, or
    given names where neither starts with the other ('JANE' and 'J' agree, 'JANE' and 'ANNA' not)."""
    families = {f for f, _ in names}
    if len(families) > 1:
        return True
    givens = sorted({g for _, g in names if g})
    return any(not (a.startswith(b) or b.startswith(a)) for i, a in enumerate(givens)
               for b in givens[i + 1:])


# ---------------------------------------------------------------- reading session
# (queries the reading session needs; keep this heading: helpers add below it)


# ---------------------------------------------------------------- storage node
# (queries the DICOM node needs; keep this heading: helpers add below it)


def has_present_image(db: sqlite_utils.Database, sop_uid: str) -> bool:
    """True when the library holds the instance `sop_uid` (an image or a study member) and its
    file is on disk."""
    return db.execute("SELECT 1 FROM images WHERE sop_instance_uid = ? AND NOT missing UNION ALL "
                      "SELECT 1 FROM study_objects WHERE sop_instance_uid = ? AND NOT missing",
                      [sop_uid, sop_uid]).fetchone() is not None


def present_study_uids(db: sqlite_utils.Database) -> set[str]:
    """Study Instance UIDs of the images the library holds (present on disk)."""
    return {r[0] for r in db.execute("SELECT DISTINCT study_uid FROM images WHERE NOT missing")}


def _under(folder: str) -> tuple[str, list]:
    import os.path  # here: this section may not touch the module's imports (shared file)

    # a prefix test on the stored path, separator included (no LIKE: a path may hold % or _)
    prefix = os.path.join(folder, "")
    return "substr(path, 1, ?) = ?", [len(prefix), prefix]


def exam_keys_under(db: sqlite_utils.Database, folder: str) -> list[str]:
    """Exams with an image present on disk whose file lies under `folder` (an absolute,
    resolved path as the import stores it)."""
    where, args = _under(folder)
    return [r[0] for r in db.execute(
        f"SELECT DISTINCT exam_key FROM images WHERE {where} AND NOT missing", args)]


def sop_uids_under(db: sqlite_utils.Database, folder: str) -> set[str]:
    """SOP Instance UIDs of every image indexed from a file under `folder`, missing or not."""
    where, args = _under(folder)
    return {r[0] for r in db.execute(f"SELECT sop_instance_uid FROM images WHERE {where}", args)}


def exam_keys_of_paths(db: sqlite_utils.Database, paths: Sequence[str]) -> list[str]:
    """The exams that the images indexed from these files belong to, sorted."""
    keys: set[str] = set()
    for chunk in _chunks(list(paths)):
        keys.update(r[0] for r in db.execute(
            f"SELECT DISTINCT exam_key FROM images WHERE path IN ({','.join('?' * len(chunk))})",
            chunk))
    return sorted(keys)


def exam_date_and_patient_id(db: sqlite_utils.Database, exam_key: str) -> tuple[str, str] | None:
    """(exam date, patient ID) of an exam, as the import stored them; None if unknown."""
    row = db.execute("SELECT e.exam_date, p.patient_id FROM exams e JOIN patients p "
                     "ON p.patient_key = e.patient_key WHERE e.exam_key = ?",
                     [exam_key]).fetchone()
    return (row[0], row[1]) if row else None


def women_with_patient_id(db: sqlite_utils.Database, patient_id: str) -> list[dict]:
    """The women the library holds under `patient_id` (one per issuer), for query/retrieve:
    patient_key, issuer, and latest_exam (YYYY-MM-DD of her latest exam with an image on disk;
    '' when she has none or none is dated)."""
    rows = db.execute(
        "SELECT p.patient_key, p.issuer, COALESCE(MAX(e.exam_date), '') FROM patients p "
        "LEFT JOIN exams e ON e.patient_key = p.patient_key AND EXISTS ("
        "SELECT 1 FROM images i WHERE i.exam_key = e.exam_key AND NOT i.missing) "
        "WHERE p.patient_id = ? GROUP BY p.patient_key ORDER BY p.patient_key",
        [patient_id]).fetchall()
    return [{"patient_key": k, "issuer": i or "", "latest_exam": d or ""} for k, i, d in rows]


# ---------------------------------------------------------------- worklist: latest exam, read marks

def latest_exams(db: sqlite_utils.Database) -> dict[str, dict]:
    """patient_key → {'exam_key', 'exam_date' (YYYY-MM-DD or ''), 'accession' (the first
    accession number of her newest exam, '' if none)} for every woman with an exam."""
    out: dict[str, dict] = {}
    for pk, ek, d, acc in db.execute(
            "SELECT patient_key, exam_key, exam_date, accession_numbers FROM exams "
            "ORDER BY patient_key, exam_date, exam_key"):
        try:
            numbers = [str(a) for a in json.loads(acc or "[]") if str(a).strip()]
        except (ValueError, TypeError):
            numbers = []
        out[pk] = {"exam_key": ek, "exam_date": d or "", "accession": numbers[0] if numbers else ""}
    return out


def read_marks(db: sqlite_utils.Database) -> dict[str, tuple[str, str]]:
    """patient_key → (exam_key she was read at, when: ISO UTC) of every woman marked read."""
    return {pk: (ek, at) for pk, ek, at in db.execute(
        "SELECT patient_key, exam_key, read_at FROM read_marks")}


# ---------------------------------------------------------------- reader's marks (annotations)

def annotations(db: sqlite_utils.Database, sop_uids: Iterable[str]) -> dict[str, list[dict]]:
    """sop_uid → its marks, oldest first: {'id', 'kind', 'points' [[x, y], …] (image pixels),
    'spacing' (row mm, column mm) or None, 'spacing_source', 'exam_key'}. Images without marks
    are absent. Rows that do not parse are skipped (the cache is ours, but a file can rot)."""
    uids = list(dict.fromkeys(u for u in sop_uids if u))
    out: dict[str, list[dict]] = {}
    for i in range(0, len(uids), 500):
        chunk = uids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for rid, uid, ek, kind, pts, spacing, source in db.execute(
                "SELECT id, sop_instance_uid, exam_key, kind, points, spacing, spacing_source "
                f"FROM annotations WHERE sop_instance_uid IN ({marks}) ORDER BY id", chunk):
            try:
                points = [(float(x), float(y)) for x, y in json.loads(pts or "[]")]
                sp = json.loads(spacing) if spacing else None
                sp = (float(sp[0]), float(sp[1])) if sp else None
            except (ValueError, TypeError, IndexError):
                continue
            out.setdefault(uid, []).append({"id": rid, "kind": kind, "points": points,
                                            "spacing": sp, "spacing_source": source or "",
                                            "exam_key": ek})
    return out
