"""Read-only queries the reading window needs: a woman's exams with images and scores, and the
latest score per woman for the worklist (on core.cache; no Qt).

They run on the GUI thread's own connection and only read small tables: a few ms per call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from mamview.core.cache import reads
from mamview.core.domain import STALE_REASON, ModelRef, ScoredExam, ScoreState
from mamview.core.ingest import stored_preview
from mamview.core.paths import Library


@dataclass
class ExamScore:
    """What the window shows of one exam's score for the active model.

    A stale stored score (model or input changed) is shown as pending with STALE_REASON and
    no number: it is never drawn as current.
    """

    state: str  # 'scored' | 'unscorable' | 'pending'
    risk: tuple[float, ...] = ()  # cumulative fractions, years 1..5
    reason: str = ""
    model_id: str = ""
    stale: bool = False  # pending because the stored score no longer matches

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
        """The standard image shown for a view label ('RCC' …): the last acquired present one
        (the order the scoring uses, so the image on screen is the image scored)."""
        cands = [im for im in self.images if im["label"] == label and im["is_standard"]
                 and not im["missing"]]
        return max(cands, key=reads.acquisition_order) if cands else None


def _parse_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def score_of(scored: ScoredExam | None) -> ExamScore:
    """A ScoredExam (core.cache.reads) → what the window shows (None → pending)."""
    if scored is None or scored.state == ScoreState.PENDING:
        return ExamScore("pending", model_id=scored.model_id if scored else "")
    if scored.state == ScoreState.CURRENT:
        return ExamScore("scored", scored.risk, "", scored.model_id)
    if scored.state == ScoreState.STALE:
        return ExamScore("pending", (), STALE_REASON, scored.model_id, stale=True)
    return ExamScore("unscorable", (), scored.reason, scored.model_id)


def patient_exams(db, patient_key: str, model: ModelRef | str | None) -> list[ExamInfo]:
    """The woman's exams, oldest first, each with its score state for `model`
    (see `reads.current_scores`; an incomplete exam is unscorable at once)."""
    rows = reads.list_exams(db, [patient_key])
    states = reads.current_scores(db, [r["exam_key"] for r in rows], model)
    return [ExamInfo(r["exam_key"], _parse_date(r["exam_date"]), r["images"], r["complete"],
                     r["incomplete_reason"], score_of(states.get(r["exam_key"])))
            for r in rows]


def latest_scores(db, model: ModelRef | str | None) -> dict[str, tuple[str, float | None]]:
    """patient_key → (date of her newest exam with a current score, its 5-year risk in
    percent). Stale scores do not count."""
    exams = reads.exam_dates(db)
    states = reads.current_scores(db, [ek for ek, _, _ in exams], model)
    out: dict[str, tuple[str, float | None]] = {}
    for ek, pk, d in sorted(exams, key=lambda e: e[2] or ""):
        s = states.get(ek)
        if s is not None and s.state == ScoreState.CURRENT:
            out[pk] = (d, s.five_year_percent)
    return out


def preview_path(lib: Library, db, sop_uid: str):
    """The preview PNG of an image if one has been made, else None."""
    row = reads.preview_row(db, sop_uid)
    if row is None:
        return None
    # the stored name, not one recomputed: previews made before hashed names keep working
    path = stored_preview(lib, row["file"])
    return path if path is not None and path.is_file() else None
