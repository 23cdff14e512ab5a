"""Stale score results are dropped in the bridge, and only there: a result of a request the
reading session cancelled (the reader moved on) or superseded (a new model or device, a new
service whose ids would have collided with the old one's) never reaches the grid or the chart;
the right result still does. Real files, the real demo model in an in-process service."""

from __future__ import annotations

import os
import time

import pytest

from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.domain import ScoreState
from mamview.core.ingest import drain, run_import
from mamview.core.paths import library
from mamview.core.services.inference import ExamScored
from mamview.qt.trajectory_chart import SCORED
from tests.factories import write_mammogram


def _write(src, pid, day):
    for lat in "RL":
        for view in ("CC", "MLO"):
            write_mammogram(src / pid / day / f"{lat}{view}.dcm", patient_id=pid,
                            study_date=day, laterality=lat, view=view, shape=(320, 256))


def _library(home, src, exams):
    lib = library(home).ensure()
    for pid, day in exams:
        _write(src, pid, day)
    drain(run_import(lib, [src], make_previews=True))
    db = connect(lib.database)
    keys = {(pk, d.replace("-", "")): ek for ek, pk, d in reads.exam_dates(db)}
    patients = {r["patient_id"]: r["patient_key"] for r in reads.list_patients(db)}
    db.close()
    return lib, patients, {(pid, day): keys[(patients[pid], day)] for pid, day in exams}


def _finish_without_the_event_loop(svc, timeout=180.0):
    """Wait until the worker has scored all it was asked, while the GUI thread runs no event:
    its results wait, undelivered, in Qt's queue (late results, as after a slow batch)."""
    end = time.monotonic() + timeout
    while not svc.idle():
        assert time.monotonic() < end, "the service did not finish"
        assert svc.alive(), "the inference worker stopped"
        time.sleep(0.05)


def _spots(chart, state):
    return [s.data() for s in chart.scatter_for(state).points()]


@pytest.mark.slow
def test_results_of_a_cancelled_request_never_reach_the_window(home, tmp_path, open_window,
                                                               qtbot):
    lib, pk, ek = _library(home, tmp_path / "dicom", [("CA", "20210301"), ("CB", "20220401")])
    a, b = ek[("CA", "20210301")], ek[("CB", "20220401")]
    win = open_window(lib, start_inference=False, inference_in_process=False, device="cpu")
    seen = []
    win.bridge.scoreEvent.connect(seen.append)
    win.start_inference = True
    win.show_patient(pk["CA"])
    gen_a = win.session.screen_generation
    assert gen_a is not None and win.session.request(gen_a).exam_keys == (a,)
    _finish_without_the_event_loop(win.service)
    win.show_patient(pk["CB"])  # she moved on before CA's result was drawn
    gen_b = win.session.screen_generation
    assert win.session.request(gen_a) is None and gen_b != gen_a
    qtbot.waitUntil(lambda: win.grid.exam(b).score.state == ScoreState.CURRENT, timeout=180_000)
    qtbot.waitUntil(lambda: b in _spots(win.chart, SCORED), timeout=5000)
    qtbot.waitUntil(lambda: win.service.idle(), timeout=60_000)
    qtbot.wait(300)  # let every queued event and the score timer run
    # CA's computed result was delivered to the bridge and dropped there
    assert win.bridge.dropped_score_events >= 1
    assert not [ev for ev in seen if getattr(ev, "generation", None) == gen_a]
    scored = [ev for ev in seen if isinstance(ev, ExamScored)]
    assert scored and {ev.exam_key for ev in scored} == {b}
    assert all(t._score.text().startswith("5-yr risk") for t in win.grid.tiles)
    assert win.patient_list.rows[pk["CB"]].latest_percent is not None


@pytest.mark.slow
def test_results_of_the_old_service_are_dropped_after_a_model_change(home, tmp_path, open_window,
                                                                     qtbot):
    src = tmp_path / "dicom"
    lib, pk, ek = _library(home, src, [("CW", "20200302"), ("CW", "20220307")])
    old, new = ek[("CW", "20200302")], ek[("CW", "20220307")]
    win = open_window(lib, start_inference=False, inference_in_process=False, device="cpu")
    seen = []
    win.bridge.scoreEvent.connect(seen.append)
    win.start_inference = True
    win.score_library()
    g_old = win.session.background_generation
    first_service = win.service
    _finish_without_the_event_loop(first_service)
    # the older exam's file changes: the new service will have work of its own (that exam)
    f = src / "CW" / "20200302" / "LMLO.dcm"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    drain(run_import(lib, [src], make_previews=False))
    settings = type(win.settings)(**{**win.settings.__dict__, "model": "demo"})
    win.apply_settings(settings)  # "auto" → "demo": the service is replaced
    assert win.service is not first_service
    live = {r.generation for r in win.session.live_requests()}
    assert live and g_old not in live  # what the ids would have collided on
    assert {r.exam_keys for r in win.session.live_requests()} == {(old,)}
    qtbot.waitUntil(lambda: win.grid.exam(old).score.state == ScoreState.CURRENT,
                    timeout=180_000)
    qtbot.waitUntil(lambda: win.service.idle(), timeout=60_000)
    qtbot.wait(300)
    # the old service's results (both exams) were dropped by the bridge
    assert win.bridge.dropped_score_events >= 2
    assert not [ev for ev in seen if getattr(ev, "generation", None) == g_old]
    scored = [ev for ev in seen if isinstance(ev, ExamScored)]
    assert scored and {ev.exam_key for ev in scored} == {old}
    assert {ev.generation for ev in scored} <= live
    # both exams are drawn as current: the newer one from the library, the older one live
    assert set(_spots(win.chart, SCORED)) == {old, new}
    assert win.grid.exam(new).score.state == ScoreState.CURRENT
