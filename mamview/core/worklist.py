"""Read-only queries the reading window needs: a woman's exams with images and scores, and the
latest score per woman for the worklist (on core.cache; no Qt).

They run on the GUI thread's own connection and only read small tables: a few ms per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from mamview.core.cache import scores as score_store
from mamview.core.cache import store
from mamview.core.ingest import stored_preview
from mamview.core.paths import Library


@dataclass
class ExamScore:
    """The latest stored result of one exam for the active model."""

    state: str  # 'scored' | 'unscorable' | 'pending'
    risk: tuple[float, ...] = ()  # cumulative fractions, years 1..5
    reason: str = ""
    model_id: str = ""

    @property
    def five_year_percent(self) -> float | None:
        return 100.0 * self.risk[4] if self.state == "scored" and len(self.risk) >= 5 else None


@dataclass
class ExamInfo:
    """One exam of the woman on screen, with its images and score."""

    exam_key: str
    exam_date: date | None
    images: list[dict]
    complete: bool
    incomplete_reason: str
    score: ExamScore = field(default_factory=lambda: ExamScore("pending"))

    @property
    def date_text(self) -> str:
        return self.exam_date.isoformat() if self.exam_date else "undated"

    def image_for(self, label: str) -> dict | None:
        """The standard image shown for a view label ('RCC' …): the last acquired present one."""
        cands = [im for im in self.images if im["label"] == label and im["is_standard"]
                 and not im["missing"]]
        return sorted(cands, key=lambda im: im["path"])[-1] if cands else None


def _parse_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def score_of(row: dict | None) -> ExamScore:
    """A scores-table row → ExamScore (None → pending)."""
    if row is None:
        return ExamScore("pending")
    if row["status"] == "ok":
        return ExamScore("scored", tuple(float(x) for x in row["risk"]), "", row["model_id"])
    return ExamScore("unscorable", (), row.get("reason") or row["status"], row["model_id"])


def patient_exams(db, patient_key: str, model_id: str | None) -> list[ExamInfo]:
    """The woman's exams, oldest first, each with its latest score of `model_id`."""
    rows = store.list_exams(db, [patient_key])
    stored = score_store.for_exams(db, [r["exam_key"] for r in rows], model_id)
    out = []
    for r in rows:
        info = ExamInfo(r["exam_key"], _parse_date(r["exam_date"]), r["images"], r["complete"],
                        r["incomplete_reason"], score_of(stored.get(r["exam_key"])))
        if not r["complete"] and info.score.state == "pending":
            # the service will say so too; showing it at once avoids a hollow marker forever
            info.score = ExamScore("unscorable", (), r["incomplete_reason"], model_id or "")
        out.append(info)
    return out


def latest_scores(db, model_id: str | None) -> dict[str, tuple[str, float | None]]:
    """patient_key → (date of the newest scored exam, its 5-year risk in percent)."""
    sql = ("SELECT e.patient_key, e.exam_date, s.risk FROM scores s JOIN exams e "
           "ON e.exam_key = s.exam_key WHERE s.status = 'ok'")
    args: list = []
    if model_id:
        sql += " AND s.model_id = ?"
        args.append(model_id)
    out: dict[str, tuple[str, float | None]] = {}
    import json

    for pk, d, risk in db.execute(sql + " ORDER BY e.exam_date, s.computed_at", args):
        values = json.loads(risk)
        out[pk] = (d, 100.0 * values[4] if len(values) >= 5 else None)
    return out


def scored_series(db, patient_key: str, model_id: str | None) -> list[tuple[date, float]]:
    """(exam date, 5-year %) of each scored exam of one woman, oldest first."""
    return [(e.exam_date, e.score.five_year_percent) for e in patient_exams(db, patient_key, model_id)
            if e.exam_date and e.score.five_year_percent is not None]


def preview_path(lib: Library, db, sop_uid: str):
    """The preview PNG of an image if one has been made, else None."""
    row = store.preview_row(db, sop_uid)
    if row is None:
        return None
    # the stored name, not one recomputed: previews made before hashed names keep working
    path = stored_preview(lib, row["file"])
    return path if path is not None and path.is_file() else None
