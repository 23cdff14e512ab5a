"""Bulk reads and writes for archive-scale work: one query or one `executemany` per table.

`reads` asks per exam (the reading session's needs: a few exams at a time); at 160,000 exams
those per-exam queries dominate. What is here returns the same answers as `reads` for a whole
library at once: `current_five_year` is `reads.current_scores(...).five_year_percent` of every
dated exam, decided by the same functions on rows fetched in bulk.
"""

from __future__ import annotations

import json
import operator
from datetime import datetime, timezone
from typing import Callable, Iterable, Sequence

import sqlite_utils

from mamview.core.cache.db import write_transaction
from mamview.core.cache.reads import choose_inputs, image_rows
from mamview.core.domain import ModelRef, risk_percent, view_label

# the columns `reads.exam_images` selects, plus the exam each image belongs to
_IMAGE_COLUMNS = (
    "exam_key, sop_instance_uid, path, laterality, laterality_source, view, view_source, "
    "view_modifiers, is_standard, presentation_intent, missing, decode_error, "
    "transfer_syntax_uid, photometric, rows, columns, manufacturer, study_uid, series_uid, "
    "patient_orientation, window_presets, size, mtime_ns, sop_class_uid, burned_in_annotation, "
    "acquisition_date, acquisition_time, content_date, content_time, instance_number, domain"
)
_WRITABLE = ("patients", "exams", "images", "scores")


# ---------------------------------------------------------------- writes


def insert_rows(db: sqlite_utils.Database, table: str, rows: Iterable[dict],
                chunk: int = 20000) -> int:
    """Insert many new rows (dicts with the same keys) into `table` in one transaction;
    returns how many. A row whose primary key exists already fails the whole batch."""
    if table not in _WRITABLE:
        raise ValueError(f"bulk inserts go into {', '.join(_WRITABLE)}, not {table!r}")
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return 0
    columns = list(first)
    sql = (f"INSERT INTO {table} ({', '.join(columns)}) "
           f"VALUES ({', '.join('?' * len(columns))})")
    n = 0
    with write_transaction(db):
        batch = [tuple(first[c] for c in columns)]
        for r in rows:
            batch.append(tuple(r[c] for c in columns))
            if len(batch) >= chunk:
                db.conn.executemany(sql, batch)
                n += len(batch)
                batch = []
        db.conn.executemany(sql, batch)
        n += len(batch)
    return n


def score_rows(rows: Iterable[dict]) -> Iterable[dict]:
    """Score rows (as `services.inference.score_row` makes them) in the stored form
    `writes.save_scores` gives them: JSON lists, a computed_at time."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for r in rows:
        row = dict(r)
        row.setdefault("computed_at", now)
        row["input_uids"] = json.dumps(list(row.get("input_uids", [])))
        row["risk"] = json.dumps([float(x) for x in row.get("risk", [])])
        yield row


# ---------------------------------------------------------------- reads


def image_rows_of(db: sqlite_utils.Database, exam_keys: Sequence[str]) -> dict[str, list[dict]]:
    """The raw image rows `reads.exam_images` reads, per exam, in one query per 500 exams."""
    out: dict[str, list[dict]] = {}
    keys = list(dict.fromkeys(exam_keys))
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        cur = db.execute(f"SELECT {_IMAGE_COLUMNS} FROM images WHERE exam_key IN "
                         f"({','.join('?' * len(chunk))})", chunk)
        names = [d[0] for d in cur.description][1:]
        for ek, *values in cur:
            out.setdefault(ek, []).append(dict(zip(names, values)))
    return out


def ok_scores_of_model(db: sqlite_utils.Database, model_id: str) -> dict[str, tuple[str, list]]:
    """cache key → (exam key, risk fractions) of every computed ('ok') score of `model_id`."""
    return {key: (ek, json.loads(risk)) for key, ek, risk in db.execute(
        "SELECT cache_key, exam_key, risk FROM scores WHERE model_id = ? AND status = 'ok'",
        [model_id])}


def dated_exams(db: sqlite_utils.Database) -> list[tuple[str, str, str]]:
    """(exam key, PatientID, ISO date) of every exam with a date, oldest first."""
    return [tuple(r) for r in db.execute(
        "SELECT e.exam_key, p.patient_id, e.exam_date FROM exams e "
        "JOIN patients p ON p.patient_key = e.patient_key WHERE e.exam_date != '' "
        "ORDER BY e.exam_date, e.exam_key")]


def current_five_year(db: sqlite_utils.Database, model: ModelRef,
                      progress: Callable[[int], None] | None = None
                      ) -> list[tuple[str, str, float]]:
    """(PatientID, ISO date, 5-year risk in percent) of every dated exam whose stored score
    of `model` is *current* — what `reads.current_scores(...)[ek].five_year_percent` says,
    for the whole library in a few queries.

    A score is current when today's inputs of the exam (`reads.choose_inputs`'
    choice, made from the same image rows) give its cache key; with a model that is not
    installed, the stored row's own identity is the one checked (as `reads.evaluate`).
    """
    from mamview.core.services.inference import score_key

    if not model.model_id:
        return []
    stored = ok_scores_of_model(db, model.model_id)
    scored = {ek for ek, _ in stored.values()}
    idents = None if model.installed else _stored_identities(db, model.model_id)
    chooser = _InputChooser()
    out = []
    exams = [e for e in dated_exams(db) if e[0] in scored]
    for i in range(0, len(exams), 2000):
        chunk = exams[i:i + 2000]
        images = image_rows_of(db, [ek for ek, _, _ in chunk])
        for ek, pid, date in chunk:
            ident = model if idents is None else idents.get(ek)
            inputs = chooser.inputs(images.get(ek, []))
            if ident is None or inputs is None:
                continue
            hit = stored.get(score_key(ident, inputs))
            if hit is not None and len(hit[1]) >= 5:
                out.append((pid, date, risk_percent(hit[1][4:5])[0]))
        if progress:
            progress(len(chunk))
    return out


# what `choose_inputs` reads of an image only to order repeats of one view or to name the
# inputs it chose (their UIDs, sizes and mtimes go into the cache key afterwards)
_ORDER_OR_NAME = frozenset({
    "sop_instance_uid", "path", "size", "mtime_ns", "study_uid", "series_uid",
    "acquisition_date", "acquisition_time", "content_date", "content_time", "instance_number"})

# every other column `image_rows_of` reads (the exam key aside)
_KIND = operator.itemgetter(*[c.strip() for c in _IMAGE_COLUMNS.split(",")[1:]
                              if c.strip() not in _ORDER_OR_NAME])


class _InputChooser:
    """`reads.choose_inputs` of many exams, asked once per kind of exam.

    An archive's exams are mostly alike: four standard views of one vendor. When an exam's
    images have distinct view labels (no repeats to order), the choice depends
    only on the images' other values, so it is asked for the first exam of each such kind
    and the images at the same places are taken for the others. Exams with repeats, and
    any exam whose kind is new, go through `choose_inputs` itself.
    """

    def __init__(self):
        self._chosen: dict[tuple, tuple[int, ...] | None] = {}

    def inputs(self, images: list[dict]) -> list[dict] | None:
        labels = [view_label(r["laterality"], r["view"]) for r in images]
        if len(set(labels)) != len(labels):
            return _inputs(images)
        try:
            kinds = sorted((_KIND(r), n) for n, r in enumerate(images))
        except (TypeError, KeyError):  # values that do not compare, or an odd row: ask
            return _inputs(images)
        kind = tuple(k for k, _ in kinds)
        if kind not in self._chosen:
            chosen = _inputs(images)
            place = {images[n]["sop_instance_uid"]: i for i, (_, n) in enumerate(kinds)}
            self._chosen[kind] = (None if chosen is None else
                                  tuple(place[r["sop_instance_uid"]] for r in chosen))
            return chosen
        at = self._chosen[kind]
        return None if at is None else [images[kinds[i][1]] for i in at]


def _inputs(images: list[dict]) -> list[dict] | None:
    """`reads.choose_inputs` of an exam's raw image rows; None when it has no scorable four."""
    try:
        return choose_inputs(image_rows(images), include_out_of_domain=True)[0]
    except (TypeError, ValueError, KeyError):  # odd stored values: this exam only
        return None


def _stored_identities(db: sqlite_utils.Database, model_id: str) -> dict[str, ModelRef]:
    """The identity each exam's newest stored score of `model_id` recorded (`reads`' rule
    for a model this installation cannot run)."""
    from mamview.core.cache.reads import _row_identity

    newest: dict[str, dict] = {}
    for row in db.query("SELECT exam_key, model_id, model_version, weights_sha256, calibrator, "
                        "preprocessing_version FROM scores WHERE model_id = ? "
                        "ORDER BY computed_at, score_id", [model_id]):
        newest[row["exam_key"]] = row  # ascending: the last one seen is the newest
    return {ek: _row_identity(row, model_id) for ek, row in newest.items()}
