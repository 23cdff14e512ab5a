"""The events a scoring service sends its caller (InferenceService, ClusterService, the GUI's
scoring process): one per exam, progress per request, and the service's own failure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExamScored:
    generation: int
    exam_key: str
    risk: tuple[float, ...]  # cumulative risk fractions, years 1..5
    model_id: str
    model_label: str
    cached: bool
    domain: str = ""  # inputs outside the model's validated domain (scored on request)
    view_mapping: str = ""  # e.g. 'RML→RMLO'


@dataclass(frozen=True)
class ExamUnscorable:
    generation: int
    exam_key: str
    reason: str


@dataclass(frozen=True)
class ScoreFailed:
    generation: int
    exam_key: str
    message: str


@dataclass(frozen=True)
class ScoreProgress:
    generation: int
    done: int
    total: int


@dataclass(frozen=True)
class ServiceError:
    """The service cannot score at all (e.g. the model could not be loaded)."""

    message: str


@dataclass(frozen=True)
class GenerationDone:
    generation: int


Event = ExamScored | ExamUnscorable | ScoreFailed | ScoreProgress | ServiceError | GenerationDone
