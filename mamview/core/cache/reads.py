"""What the library knows about scores, asked one way by every read path.

`choose_model` is the one rule deciding whose scores are shown; `current_scores` says per exam
whether the stored score is *current* (its cache key matches today's model identity and input
files), *stale* (a stored score of this model id whose key no longer matches), *pending* or
*unscorable*. Nobody else re-derives either. No torch: identities come from config.json.
"""

from __future__ import annotations

from typing import Sequence

from mamview.core.cache import scores as score_store
from mamview.core.domain import STALE_REASON, ModelRef, ScoredExam, ScoreState


# ---------------------------------------------------------------- which model


def model_ref(entry) -> ModelRef:
    """The ModelRef of a registry entry; its identity read from config.json (no torch)."""
    from mamview.core.models.registry import read_identity

    if not entry.available:
        return ModelRef(entry.model_id, entry.name, entry.label, reason=entry.reason)
    try:
        ident = read_identity(entry.folder / "config.json")
    except (OSError, ValueError) as exc:
        return ModelRef(entry.model_id, entry.name, entry.label, reason=str(exc)[:200])

    def text(key: str) -> str:
        value = ident.get(key)
        return value if isinstance(value, str) else ""

    return ModelRef(entry.model_id, entry.name, entry.label, text("version"),
                    text("weights_sha256"), text("calibrator_id"), text("calibrator_sha256"),
                    text("preprocessing_version"), entry.clinically_validated, True)


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
    stored = score_store.model_with_most_scores(db) if db is not None else None
    return ModelRef(stored, stored, reason="not installed") if stored else None


# ---------------------------------------------------------------- current, stale, pending


def current_scores(db, exam_keys: Sequence[str], model: ModelRef | str | None
                   ) -> dict[str, ScoredExam]:
    """Per exam: its score state for `model` with the stored score and its identity.

    `model` is a ModelRef (checked against its identity when installed), a bare model id, or
    None (the newest stored model per exam); without an installed identity a stored score is
    checked against its own recorded identity, i.e. only for changed input files.
    """
    return {ek: scored for ek, (scored, _) in evaluate(db, exam_keys, model).items()}


def evaluate(db, exam_keys: Sequence[str], model: ModelRef | str | None
             ) -> dict[str, tuple[ScoredExam, dict | None]]:
    """`current_scores` with the matching stored row (None unless current or unscorable).

    Queries: one per exam for its inputs, then three in all (newest rows, image UIDs, rows
    by today's keys), whatever the number of exams.
    """
    from mamview.core.inference import Unscorable, exam_inputs, input_signature

    keys = list(dict.fromkeys(exam_keys))
    ref = model if isinstance(model, ModelRef) else None
    model_id = ref.model_id if ref else model
    newest = score_store.newest_per_exam(db, keys, model_id)
    uids = _image_uids(db, keys)
    today: dict[str, tuple[str | None, str | None, str]] = {}  # ok key, unscorable key, reason
    for ek in keys:
        ident = ref if ref is not None and ref.installed else _row_identity(newest.get(ek), model_id)
        if ident is None:
            today[ek] = (None, None, "")
            continue
        try:
            ok_key, why = score_store.cache_key(ident, input_signature(exam_inputs(db, ek))), ""
        except Unscorable as exc:
            ok_key, why = None, str(exc)
        except (TypeError, ValueError, KeyError) as exc:  # odd stored values: this exam only
            ok_key, why = None, f"its images cannot be chosen: {type(exc).__name__}"
        today[ek] = (ok_key, score_store.unscorable_key(ident, uids.get(ek, [])), why)
    stored = score_store.rows_by_key(db, [k for t in today.values() for k in t[:2] if k])
    return {ek: _state(ek, today[ek], stored, newest.get(ek), model_id) for ek in keys}


def _state(ek: str, today: tuple, stored: dict, newest: dict | None, model_id: str | None
           ) -> tuple[ScoredExam, dict | None]:
    ok_key, unscorable_key, why = today
    hit = stored.get(ok_key) if ok_key else None
    if hit is not None and hit["status"] == "ok":
        return _scored(ek, ScoreState.CURRENT, hit, tuple(float(x) for x in hit["risk"])), hit
    hit = stored.get(unscorable_key) if unscorable_key else None
    if hit is not None:
        return _scored(ek, ScoreState.UNSCORABLE, hit, (), hit.get("reason") or hit["status"]), hit
    if why:  # incomplete today: that is the reason, whatever was stored before
        return ScoredExam(ek, ScoreState.UNSCORABLE, reason=why, model_id=model_id or ""), None
    if newest is not None:
        return _scored(ek, ScoreState.STALE, newest, (), STALE_REASON), None
    return ScoredExam(ek, ScoreState.PENDING, model_id=model_id or ""), None


def _scored(ek: str, state: ScoreState, row: dict, risk: tuple, reason: str = "") -> ScoredExam:
    return ScoredExam(ek, state, risk, reason, row["model_id"], row.get("model_version") or "",
                      row.get("weights_sha256") or "", row.get("calibrator") or "",
                      row.get("preprocessing_version") or "", row.get("device") or "",
                      row.get("computed_at") or "", tuple(row.get("input_uids") or ()))


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
