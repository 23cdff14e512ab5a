"""The reading session without a window: what it scores at which priority, which results it
still wants (cancelled, superseded and finished requests are not), what a result changes, and
the worklist it builds. Real DICOM files, a real import, the real demo model in a real
in-process InferenceService."""

from __future__ import annotations

import os

import pytest

from mamview.core import settings as settings_mod
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.domain import STALE_REASON, ScoreState
from mamview.core.ingest import drain, run_import
from mamview.core.paths import Library
from mamview.core.services.inference import (PRIORITY_BACKGROUND, PRIORITY_ON_SCREEN,
                                             ExamScored, GenerationDone, ServiceError)
from mamview.core.session import LIBRARY, SCREEN, ExamChanged, PassDone, ReadingSession
from tests.factories import write_mammogram
from tests.scoring import save_current_score

# woman SA: an older exam with a current score, a newer one whose score went stale;
# woman SB: one exam never scored
EXAMS = (("SA", "20200302"), ("SA", "20220307"), ("SB", "20210405"))


def _write(src, pid, day):
    for lat in "RL":
        for view in ("CC", "MLO"):
            write_mammogram(src / pid / day / f"{lat}{view}.dcm", patient_id=pid,
                            study_date=day, laterality=lat, view=view, shape=(320, 256))


def _touch(path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def case(tmp_path):
    """A library: imported, SA's exams scored (demo identity), then SA's newer exam's LMLO
    touched and re-indexed, so that exam's score is stale. Returns (lib, files, keys)."""
    src = tmp_path / "dicom"
    for pid, day in EXAMS:
        _write(src, pid, day)
    lib = Library(tmp_path / "home").ensure()
    drain(run_import(lib, [src], make_previews=False))
    db = connect(lib.database)
    by_date = {d.replace("-", ""): (ek, pk) for ek, pk, d in reads.exam_dates(db)}
    (a1, sa), (a2, _), (b1, sb) = (by_date[day] for _, day in EXAMS)
    for ek in (a1, a2):
        save_current_score(db, ek, [0.004 * k for k in range(1, 6)])
    db.close()
    _touch(src / "SA" / "20220307" / "LMLO.dcm")
    drain(run_import(lib, [src], make_previews=False))
    return lib, src, {"a1": a1, "a2": a2, "b1": b1, "SA": sa, "SB": sb}


def _session(lib, **kw) -> ReadingSession:
    kw.setdefault("child_process", False)
    s = settings_mod.load(lib.settings_file)
    s.device = "cpu"
    return ReadingSession(lib, s, **kw)


def _collect(svc, generations, timeout=180):
    """The service's events until every one of `generations` is done (not applied)."""
    left, out = set(generations), []
    while left:
        ev = svc.next_event(timeout=timeout)
        if isinstance(ev, ServiceError):
            raise AssertionError(ev.message)
        out.append(ev)
        if isinstance(ev, GenerationDone):
            left.discard(ev.generation)
    return out


def _feed(session, events):
    """What the bridge does: apply the wanted events, drop the rest."""
    return [session.apply(ev) for ev in events if session.wants(ev)]


def test_worklist_and_screen_read_current_stale_and_pending(case):
    lib, _, k = case
    session = _session(lib, scoring=False)
    try:
        rows = {r.patient_id: r for r in session.worklist()}
        # the stale newer exam does not count: SA's latest current score is the older exam's
        assert rows["SA"].latest_percent == pytest.approx(2.0) and rows["SA"].exams == 2
        assert rows["SB"].latest_percent is None and rows["SB"].flags == ()
        exams = session.show(k["SA"])
        assert [e.exam_key for e in exams] == [k["a1"], k["a2"]]
        assert exams[0].score.state == ScoreState.CURRENT
        stale = exams[1].score
        assert stale.state == ScoreState.STALE and stale.reason == STALE_REASON
        assert stale.five_year_percent is None
        assert session.screen_work() == [k["a2"]]
        assert session.library_work() == [k["a2"], k["b1"]]  # newest first, current left out
        # without scoring nothing is queued and nothing is live
        assert session.score_on_screen() is None and session.score_library() is None
        assert session.service is None and session.live_requests() == []
        assert session.patient_of(k["b1"]) == k["SB"] and session.patient_of("nope") is None
        assert [p.exam_key for p in session.report(k["SA"]).points] == [k["a1"]]
    finally:
        session.close()


@pytest.mark.slow
def test_on_screen_first_library_in_background_and_what_results_change(case):
    lib, _, k = case
    session = _session(lib)
    try:
        session.show(k["SA"])
        g_sa = session.score_on_screen()
        assert session.request(g_sa).exam_keys == (k["a2"],)
        assert session.request(g_sa).priority == PRIORITY_ON_SCREEN
        assert session.request(g_sa).purpose == SCREEN
        g_lib = session.score_library()
        lib_req = session.request(g_lib)
        assert lib_req.exam_keys == (k["a2"], k["b1"]) and lib_req.purpose == LIBRARY
        assert lib_req.priority == PRIORITY_BACKGROUND
        # the reader moves on: SA's on-screen request is cancelled, SB's comes first
        session.show(k["SB"])
        g_sb = session.score_on_screen()
        assert session.request(g_sa) is None and session.request(g_sb).exam_keys == (k["b1"],)
        assert {r.generation for r in session.live_requests()} == {g_lib, g_sb}
        events = _collect(session.service, [g_lib, g_sb])
        assert not any(session.wants(ev) for ev in events if getattr(ev, "generation", None) == g_sa)
        changes = _feed(session, events)
        exam_changes = [c for c in changes if isinstance(c, ExamChanged)]
        b1 = [c for c in exam_changes if c.exam_key == k["b1"]]
        assert b1 and all(c.on_screen and c.patient_key == k["SB"] for c in b1)
        assert all(c.score.state == ScoreState.CURRENT and 0 < c.score.five_year_percent < 100
                   for c in b1)
        assert b1[-1].score.model_id == "demo" and b1[-1].score.weights_sha256
        a2 = [c for c in exam_changes if c.exam_key == k["a2"]]
        assert a2 and not any(c.on_screen for c in a2) and a2[-1].patient_key == k["SA"]
        # the session's model of the screen took SB's result
        assert session.exams[0].score == b1[-1].score
        done = [c for c in changes if isinstance(c, PassDone)]
        assert {(c.generation, c.background) for c in done} == {(g_lib, True), (g_sb, False)}
        # finished requests are no longer live; what they computed is current in the library
        assert session.live_requests() == [] and session.library_work() == []
        assert not session.wants(events[0]) and session.wants(ServiceError("any"))
        assert session.show(k["SA"])[1].score.state == ScoreState.CURRENT
        assert session.screen_work() == []
    finally:
        session.close()


@pytest.mark.slow
def test_results_of_a_cancelled_request_are_not_wanted(case):
    lib, _, k = case
    session = _session(lib)
    try:
        session.show(k["SB"])
        gen = session.score_on_screen()
        late = _collect(session.service, [gen])  # computed, not yet applied
        assert any(isinstance(ev, ExamScored) for ev in late)
        session.show(k["SA"])  # she left before her results were drawn
        assert session.score_on_screen() != gen
        assert not any(session.wants(ev) for ev in late)
        assert [e.score.state for e in session.exams] == [ScoreState.CURRENT, ScoreState.STALE]
    finally:
        session.close()


@pytest.mark.slow
def test_a_new_model_or_device_supersedes_every_request(case):
    """After a restart the new service's ids must not match the old one's: a late result of
    the old service is never wanted, even when the new service has requests of its own."""
    lib, src, k = case
    session = _session(lib)
    try:
        g_old = session.score_library()
        old = _collect(session.service, [g_old])
        old_service = session.service
        assert any(isinstance(ev, ExamScored) for ev in old)
        new = settings_mod.Settings(**{**session.settings.__dict__, "model": "demo"})
        assert session.set_settings(new)  # "auto" → "demo": a new service
        assert session.service is None and session.live_requests() == []
        assert not any(session.wants(ev) for ev in old)
        # give the new service work: SB's exam file changes, its new score is stale
        _touch(src / "SB" / "20210405" / "RCC.dcm")
        drain(run_import(lib, [src], make_previews=False))
        session.show(k["SB"])
        g_screen = session.score_on_screen()
        g_lib = session.score_library()
        assert session.service is not old_service
        assert {g_screen, g_lib}.isdisjoint({g_old}), "generation ids repeat across services"
        assert not any(session.wants(ev) for ev in old)
        fresh = _collect(session.service, [g_screen, g_lib])
        changes = [c for c in _feed(session, fresh) if isinstance(c, ExamChanged)]
        assert {c.exam_key for c in changes} == {k["b1"]}
        assert session.exams[0].score.state == ScoreState.CURRENT
    finally:
        session.close()
