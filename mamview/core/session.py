"""The reading session: one library, the model whose scores are shown, the woman on screen and
her exams, what to score next at which priority, and which scoring requests are still wanted.
No Qt: the window (qt.main_window) only composes widgets over one ReadingSession.

Every scoring request the session makes has a generation id from the inference service. The
session keeps the *live* ones: submitted, not cancelled or superseded, not finished, and of
the service running now. `wants(event)` says whether a score event belongs to one of them;
qt.bridge asks it before a result reaches any widget, so stale results are dropped in that one
place. Ids are unique for the life of the process (across service restarts); nothing else is
assumed about their values.
"""

from __future__ import annotations

from dataclasses import dataclass

from mamview.core import settings as settings_mod
from mamview.core.analytics import trajectory
from mamview.core.cache import reads, writes
from mamview.core.cache.db import connect
from mamview.core.domain import ModelRef, ScoredExam, ScoreState
from mamview.core.paths import Library
from mamview.core.worklist import ExamInfo, PatientRow, latest_scores, patient_exams, row_summary

# a file that kills the worker every time must not restart it forever
MAX_SERVICE_RESTARTS = 3
# what a request is for: the woman on screen, or the rest of the library in the background
SCREEN, LIBRARY = "screen", "library"
# exams whose score must be (re)computed: nothing stored, or a stored score that is stale
NEEDS_SCORE = (ScoreState.PENDING, ScoreState.STALE)


@dataclass(frozen=True)
class ScoringRequest:
    """One live request to the inference service."""

    generation: int
    exam_keys: tuple[str, ...]
    priority: int
    purpose: str  # SCREEN or LIBRARY


@dataclass(frozen=True)
class ExamChanged:
    """A result changed one exam's score: redraw it (and her worklist row)."""

    exam_key: str
    patient_key: str
    score: ScoredExam
    on_screen: bool  # she is the woman on screen


@dataclass(frozen=True)
class PassDone:
    """A request finished; `background` when it was the library-wide pass."""

    generation: int
    background: bool


class ReadingSession:
    """The reading window's policy, testable without a window.

    `on_event` is given to every inference service the session starts (the window passes
    `Bridge.post_score_event`; without one, events wait in the service's `events` queue).
    `child_process` runs the service in a child process (the GUI's default: decoders hold the
    GIL), else in a thread of this process. `scoring=False` starts no service at all.
    """

    def __init__(self, lib: Library, settings: settings_mod.Settings | None = None, *,
                 scoring: bool = True, child_process: bool = True, on_event=None):
        self.lib = lib.ensure()
        self.db = connect(lib.database)
        self.settings = settings if settings is not None else settings_mod.load(lib.settings_file)
        self.scoring = scoring
        self.child_process = child_process
        self.on_event = on_event
        self.service = None
        self.service_restarts = 0
        self.model_entry = None
        self.model_problem = ""
        self.score_model: ModelRef | None = None
        self.patient_key: str | None = None
        self.exams: list[ExamInfo] = []
        self.screen_generation: int | None = None
        self.background_generation: int | None = None
        self._live: dict[int, ScoringRequest] = {}
        self._patient_of_exam: dict[str, str] = {}
        self._closed = False
        self.resolve_model()

    # ---------------------------------------------------------------- the model

    def resolve_model(self) -> None:
        """Find the model of the settings (registry) and whose scores every view reads."""
        from mamview.core.models import registry
        from mamview.core.models.errors import ModelUnavailable

        try:
            self.model_entry = registry.resolve(self.lib, self.settings.model)
            self.model_problem = ""
        except ModelUnavailable as exc:
            self.model_entry = None
            self.model_problem = str(exc)
        self.score_model = reads.choose_model(self.lib, self.settings.model, self.db)

    @property
    def model_id(self) -> str | None:
        return self.model_entry.model_id if self.model_entry else None

    @property
    def is_demo_model(self) -> bool:
        return bool(self.model_entry and self.model_entry.model_id == "demo")

    @property
    def model_label(self) -> str:
        """The name shown next to every score."""
        from mamview.core.models.registry import DEMO_LABEL

        if self.model_entry is None:
            return "no model"
        if self.is_demo_model:
            return f"{self.model_entry.name} ({DEMO_LABEL})"
        return self.model_entry.label or self.model_entry.name

    @property
    def model_short(self) -> str:
        """The short name on tiles and thumbnails."""
        if self.is_demo_model:
            return "demo model"
        return self.model_entry.name if self.model_entry else "no model"

    def model_status(self) -> str:
        """One line for the status bar: the model and the device it runs on."""
        if self.model_entry is None:
            return f"Model: unavailable ({self.model_problem})"
        # the model loads lazily: until it has, say what was asked for, not a device we guess
        svc = self.service
        dev = svc.device_label if svc is not None and svc.device_label else (
            f"{self.settings.device} (model not loaded yet)")
        return f"Model: {self.model_short} · device: {_one_thread(dev)}"

    def set_settings(self, new: settings_mod.Settings) -> bool:
        """Use changed settings. A new model or device stops the service (a fresh one starts
        on the next request) and supersedes every request made so far. True if it did."""
        restart = (new.model != self.settings.model or new.device != self.settings.device
                   or new.score_out_of_domain != self.settings.score_out_of_domain)
        self.settings = new
        if restart:
            self.stop_service()
            self.resolve_model()
        return restart

    # ---------------------------------------------------------------- the service

    def ensure_service(self):
        """The inference service, started on first use. One whose worker died (a decoder
        crashed it) is replaced, at most MAX_SERVICE_RESTARTS times a session; its requests
        die with it."""
        if (self.service is not None and not self.service.alive()
                and self.service_restarts < MAX_SERVICE_RESTARTS):
            self.service_restarts += 1
            self.stop_service(timeout=5)
        if (self.service is None and self.model_entry is not None and self.scoring
                and not self._closed):
            entry = self.model_entry
            if self.child_process:
                from mamview.core.services.inference_process import InferenceProcess

                self.service = InferenceProcess(
                    self.lib.database, self.lib.home, entry.model_id,
                    device=self.settings.device, on_event=self.on_event,
                    include_out_of_domain=bool(self.settings.score_out_of_domain)).start()
            else:
                from mamview.core.models import registry
                from mamview.core.services.inference import InferenceService

                self.service = InferenceService(
                    self.lib.database, lambda dev: registry.load(entry, dev),
                    device=self.settings.device, on_event=self.on_event,
                    include_out_of_domain=bool(self.settings.score_out_of_domain))
        return self.service

    def stop_service(self, timeout: float = 30) -> None:
        """Stop the service; none of its requests is wanted any more."""
        svc, self.service = self.service, None
        self._live.clear()
        self.screen_generation = self.background_generation = None
        if svc is not None:
            svc.shutdown(timeout=timeout)

    def close(self) -> None:
        """Stop the service and close the library connection."""
        if self._closed:
            return
        self._closed = True
        self.stop_service()
        try:
            self.db.close()
        except Exception:  # noqa: BLE001 - closing twice is harmless
            pass

    # ---------------------------------------------------------------- what to score

    def library_work(self) -> list[str]:
        """Every exam of the library without a current score (none stored, or a stale one
        whose model or input files changed), newest first. The woman on screen's are
        included: a later switch cancels her request, and her exams must stay queued."""
        exams = reads.exam_dates(self.db)
        states = reads.current_scores(self.db, [ek for ek, _, _ in exams], self.score_model,
                                      include_out_of_domain=self.out_of_domain)
        return [ek for ek, _, _ in reversed(exams) if states[ek].state in NEEDS_SCORE]

    @property
    def out_of_domain(self) -> bool:
        """Whether images outside the model's validated domain are scored (a setting)."""
        return bool(self.settings.score_out_of_domain)

    def screen_work(self) -> list[str]:
        """The on-screen exams that are pending or stale, oldest first."""
        return [e.exam_key for e in self.exams if e.score.state in NEEDS_SCORE]

    def score_library(self) -> int | None:
        """Queue `library_work()` at background priority; it supersedes the previous
        library-wide request. Returns the generation id (None when nothing was queued)."""
        from mamview.core.services.inference import PRIORITY_BACKGROUND

        if self.ensure_service() is None:
            return None
        if self.background_generation is not None:
            self._cancel(self.background_generation)
            self.background_generation = None
        keys = self.library_work()
        if keys:
            self.background_generation = self._submit(keys, PRIORITY_BACKGROUND, LIBRARY)
        return self.background_generation

    def score_on_screen(self) -> int | None:
        """Queue `screen_work()` first of all (the previous woman's request is cancelled).
        Returns the generation id (None when nothing was queued)."""
        from mamview.core.services.inference import PRIORITY_ON_SCREEN

        if self.ensure_service() is None:
            return None
        if self.screen_generation is not None:
            self._cancel(self.screen_generation)
            self.screen_generation = None
        keys = self.screen_work()
        if keys:
            self.screen_generation = self._submit(keys, PRIORITY_ON_SCREEN, SCREEN)
        return self.screen_generation

    def request(self, generation: int) -> ScoringRequest | None:
        """The live request of a generation id (None: cancelled, superseded, done or unknown)."""
        return self._live.get(generation)

    def live_requests(self) -> list[ScoringRequest]:
        """Every live request, oldest first."""
        return list(self._live.values())

    def _submit(self, keys: list[str], priority: int, purpose: str) -> int:
        gen = self.service.submit(keys, priority, include_out_of_domain=self.out_of_domain)
        self._live[gen] = ScoringRequest(gen, tuple(keys), priority, purpose)
        return gen

    def _cancel(self, generation: int) -> None:
        self._live.pop(generation, None)
        if self.service is not None:
            self.service.cancel(generation)  # its queued exams are not scored at all

    # ---------------------------------------------------------------- results

    def wants(self, event) -> bool:
        """Whether a score event is still wanted: it belongs to a live request. Events
        without a generation (ServiceError) always are."""
        gen = getattr(event, "generation", None)
        return gen is None or gen in self._live

    def apply(self, event) -> ExamChanged | PassDone | None:
        """Apply an event `wants` accepted: update the exams on screen and say what changed
        (None: nothing to redraw, e.g. progress)."""
        from mamview.core.services import inference as inf

        if isinstance(event, inf.ServiceError):
            self.model_problem = event.message
            return None
        if isinstance(event, inf.GenerationDone):
            req = self._live.pop(event.generation, None)
            if event.generation == self.screen_generation:
                self.screen_generation = None
            if event.generation == self.background_generation:
                self.background_generation = None
            return PassDone(event.generation, req is not None and req.purpose == LIBRARY)
        score = self._score_of(event)
        if score is None:
            return None
        pk = self.patient_of(score.exam_key)
        if pk is None:
            return None  # the exam left the library since it was queued
        on_screen = pk == self.patient_key
        if on_screen:
            for ex in self.exams:
                if ex.exam_key == score.exam_key:
                    ex.score = score
        return ExamChanged(score.exam_key, pk, score, on_screen)

    def _score_of(self, event) -> ScoredExam | None:
        """The ScoredExam a result event stands for (the identity of the model shown when the
        event's model is that one)."""
        from mamview.core.services import inference as inf

        model_id = self.model_id or ""
        if isinstance(event, inf.ExamScored):
            ref = self.score_model
            same = ref is not None and ref.model_id == event.model_id
            device = self.service.device_label if self.service is not None else ""
            return ScoredExam(
                event.exam_key, ScoreState.CURRENT, tuple(float(x) for x in event.risk), "",
                event.model_id, ref.version if same else "", ref.weights_sha256 if same else "",
                f"{ref.calibrator_id}:{ref.calibrator_sha256}" if same else "",
                ref.preprocessing_version if same else "", device or "",
                domain=event.domain, view_mapping=event.view_mapping)
        if isinstance(event, inf.ExamUnscorable):
            return ScoredExam(event.exam_key, ScoreState.UNSCORABLE, (), event.reason, model_id)
        if isinstance(event, inf.ScoreFailed):
            return ScoredExam(event.exam_key, ScoreState.UNSCORABLE, (),
                              f"failed: {event.message}", model_id)
        return None

    # ---------------------------------------------------------------- the woman on screen

    def show(self, patient_key: str) -> list[ExamInfo]:
        """Make her the woman on screen; her exams, oldest first, with their scores. Call
        `score_on_screen()` to queue the ones without a current score."""
        self.patient_key = patient_key
        self.exams = self.exams_of(patient_key)
        return self.exams

    def refresh_screen(self) -> tuple[list[ExamInfo], bool]:
        """Read the on-screen woman's exams again (after an import): (exams, whether the set
        of exams changed). Scores are read again too: an import can make one stale."""
        if self.patient_key is None:
            return [], False
        before = [e.exam_key for e in self.exams]
        self.exams = self.exams_of(self.patient_key)
        return self.exams, [e.exam_key for e in self.exams] != before

    def exams_of(self, patient_key: str) -> list[ExamInfo]:
        """Any woman's exams with their scores for the model shown (the screen is unchanged)."""
        exams = patient_exams(self.db, patient_key, self.score_model,
                              include_out_of_domain=self.out_of_domain)
        for e in exams:
            self._patient_of_exam[e.exam_key] = patient_key
        return exams

    def patient_of(self, exam_key: str) -> str | None:
        """The patient key of an exam (None when the library has no such exam)."""
        if exam_key not in self._patient_of_exam:
            pk = reads.patient_of_exam(self.db, exam_key)
            if pk is None:
                return None
            self._patient_of_exam[exam_key] = pk
        return self._patient_of_exam[exam_key]

    # ---------------------------------------------------------------- worklist and analytics

    def rules(self) -> trajectory.FlagRules:
        """Flag rules from the user's thresholds."""
        return trajectory.FlagRules(thresholds_percent=tuple(self.settings.thresholds_percent))

    def report(self, patient_key: str) -> trajectory.TrajectoryReport:
        """Her trajectory's change metrics from current scores of the model shown."""
        points = trajectory.points_for_patient(self.db, patient_key, self.score_model)
        return trajectory.analyze(points, self.rules())

    def worklist(self) -> list[PatientRow]:
        """Every woman with her exam count, latest current 5-year score and flags."""
        latest = latest_scores(self.db, self.score_model)
        conflicts = reads.identity_conflicts(self.db)
        newest = reads.latest_exams(self.db)
        marks = reads.read_marks(self.db)
        rows = []
        for r in reads.list_patients(self.db):
            pk = r["patient_key"]
            pct = latest.get(pk, (None, None))[1]
            flags = row_summary(self.report(pk))[1] if pct is not None else ()
            last = newest.get(pk, {})
            rows.append(PatientRow(pk, r["patient_id"], r["name"] or "", r["exams"], pct, flags,
                                   r["birth_date"] or "", conflicts.get(pk, ""),
                                   last.get("exam_date", ""), last.get("accession", ""),
                                   _is_read(marks.get(pk), last.get("exam_key", ""))))
        return rows

    def set_read(self, patient_key: str, read: bool) -> bool:
        """Mark a woman read (as of her newest exam) or unread; returns the new mark."""
        newest = reads.latest_exams(self.db).get(patient_key, {})
        writes.set_read_mark(self.db, patient_key, read, newest.get("exam_key", ""))
        return read

    def is_read(self, patient_key: str) -> bool:
        """Whether she is marked read at her newest exam."""
        newest = reads.latest_exams(self.db).get(patient_key, {})
        return _is_read(reads.read_marks(self.db).get(patient_key), newest.get("exam_key", ""))

    def identity_conflict(self, patient_key: str | None) -> str:
        """Why her images may belong to two women ('' when they agree)."""
        if not patient_key:
            return ""
        return reads.identity_conflicts(self.db, [patient_key]).get(patient_key, "")

    def problems(self) -> list[dict]:
        """Files that could not be used, missing files, and identity conflicts, with reasons."""
        return reads.list_problems(self.db) + reads.identity_problems(self.db)

    def warm_up(self) -> None:
        """Run the metrics once on made-up numbers so their lazy imports happen now, not
        while the first live score arrives."""
        from datetime import date

        pts = [trajectory.ScorePoint(date(2020 + i, 1, 1), 2.0 + i, "warm-up") for i in range(4)]
        trajectory.analyze(pts, self.rules())


def _is_read(mark: tuple[str, str] | None, newest_exam: str) -> bool:
    """A read mark counts only at the exam it was made on (a new exam is unread)."""
    return mark is not None and mark[0] == newest_exam


def _one_thread(label: str) -> str:
    """'CPU (1 threads)' as English; the number is what the scoring process set torch to."""
    return label.replace("(1 threads)", "(1 thread)")
