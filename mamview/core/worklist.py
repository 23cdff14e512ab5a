"""Read-only queries the reading window needs: a woman's exams with images and scores, the
worklist's rows (latest score and flags per woman), and preview files (on core.cache; no Qt).

They run on the GUI thread's own connection and only read small tables: a few ms per call.
An exam's score is one `domain.ScoredExam` everywhere: a stale stored score (model or input
changed) has state STALE with STALE_REASON and no number; it is never drawn as current.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from mamview.core.cache import reads
from mamview.core.domain import ModelRef, ScoredExam, ScoreState
from mamview.core.paths import Library


@dataclass
class ExamInfo:
    """One exam of the woman on screen, with its images and score (PENDING when not given)."""

    exam_key: str
    exam_date: date | None
    images: list[dict]
    complete: bool
    incomplete_reason: str
    score: ScoredExam | None = None

    def __post_init__(self) -> None:
        if self.score is None:
            self.score = ScoredExam(self.exam_key, ScoreState.PENDING)

    @property
    def date_text(self) -> str:
        return self.exam_date.isoformat() if self.exam_date else "undated"

    def image_for(self, label: str) -> dict | None:
        """The image shown for a view label ('RCC' …): the one the scoring reads (in-domain
        before out-of-domain, the last acquired of repeats, an ML in an empty MLO place)."""
        cands, _ = reads.slot_candidates(self.images, label[:1], label[1:], True)
        return max(cands, key=reads.acquisition_order) if cands else None


@dataclass
class PatientRow:
    """One line of the worklist: a woman, her exam count, latest current 5-year score, flags."""

    patient_key: str
    patient_id: str
    name: str
    exams: int
    latest_percent: float | None = None
    flags: tuple[str, ...] = ()
    birth_date: str = ""  # YYYYMMDD or ""
    identity_conflict: str = ""  # why her images may be two women's ('' when they agree)
    last_exam: str = ""  # YYYY-MM-DD of her newest exam ('' when undated or none)
    accession: str = ""  # the accession number of her newest exam ('' when none)
    read: bool = False  # marked read at her newest exam (a later exam makes her unread)

    @property
    def age(self) -> int | None:
        """Her age today in whole years (None without a valid birth date)."""
        born = _parse_date(f"{self.birth_date[:4]}-{self.birth_date[4:6]}-{self.birth_date[6:8]}"
                           if len(self.birth_date) == 8 else "")
        if born is None:
            return None
        today = date.today()
        return today.year - born.year - ((today.month, today.day) < (born.month, born.day))

    @property
    def display_name(self) -> str:
        return self.name.replace("^", ", ", 1).replace("^", " ").strip(", ")


def row_summary(report) -> tuple[float | None, tuple[str, ...]]:
    """(latest 5-year percent, flags worth a ⚑) of a `trajectory.TrajectoryReport`."""
    latest = report.latest.risk_percent if report.latest else None
    return latest, tuple(report.flags) if (report.rising or report.crossed_any) else ()


def _parse_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


def patient_exams(db, patient_key: str, model: ModelRef | str | None, *,
                  include_out_of_domain: bool = False) -> list[ExamInfo]:
    """The woman's exams, oldest first, each with its score state for `model`
    (see `reads.current_scores`; an incomplete exam is unscorable at once)."""
    rows = reads.list_exams(db, [patient_key])
    states = reads.current_scores(db, [r["exam_key"] for r in rows], model,
                                  include_out_of_domain=include_out_of_domain)
    return [ExamInfo(r["exam_key"], _parse_date(r["exam_date"]), r["images"], r["complete"],
                     r["incomplete_reason"], states.get(r["exam_key"]))
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
    from mamview.core.ingest import stored_preview  # here: ingest pulls in pydicom (0.2 s)

    path = stored_preview(lib, row["file"])
    return path if path is not None and path.is_file() else None
