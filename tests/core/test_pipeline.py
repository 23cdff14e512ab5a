"""The pipelined scorer (decode processes feeding the model's batches) on real DICOM files, the
bundled demo model and real spawned processes: the same answers and stored rows as decoding in
the scoring thread, a decode process killed for real, a `mamview score` killed for real and
resumed, the on-screen request first, and the bound on exams in flight."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from mamview.core.cache.db import connect
from mamview.core.ingest import run_import
from mamview.core.models import registry
from mamview.core.models.preprocess import (PreprocessSpec, grey_exam, normalize_grey,
                                            preprocess_exam)
from mamview.core.paths import Library, resources_dir
from mamview.core.services.inference import (
    PRIORITY_BACKGROUND,
    PRIORITY_ON_SCREEN,
    ExamScored,
    ExamUnscorable,
    GenerationDone,
    InferenceService,
    ScoreFailed,
    ScoreProgress,
    ServiceError,
)
from mamview.core.services.pipeline import max_in_flight, sized_workers
from tests.attack import hostile
from tests.core.test_ingest import consume
from tests.factories import breast_pixels, write_exam, write_mammogram
from tests.study_objects import write_digitised_film

pytestmark = pytest.mark.skipif(not (resources_dir() / "demo_model" / "weights.pt").is_file(),
                                reason="demo model not bundled")

SHAPE = (320, 256)
WAIT = 180  # seconds: a bound against hangs, far above what any wait here takes
PER_EXAM = (ExamScored, ExamUnscorable, ScoreFailed)
FILM_REASON = "outside the model's validated domain: digitised film"


def _exam_with(root, name, pid, date, views=(("R", "CC"), ("L", "CC"), ("R", "MLO"),
                                               ("L", "MLO")), **kw):
    study = generate_uid()
    return [write_mammogram(root / name / f"{lat}{view}.dcm", patient_id=pid, study_date=date,
                            study_uid=study, laterality=lat, view=view, shape=SHAPE, **kw)
            for lat, view in views]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Library:
    """Exams the way archives vary, and the ways they fail: explicit, JPEG 2000 and RLE;
    MONOCHROME1; ML for MLO; digitised film (outside the domain); a missing view; a decoder
    that panics; a constant image. Imported once; tests score copies."""
    root = tmp_path_factory.mktemp("pipeline")
    src = root / "in"
    _exam_with(src, "explicit", "P1", "20200101")
    _exam_with(src, "j2k", "P1", "20210101", transfer_syntax=JPEG2000Lossless)
    _exam_with(src, "rle_mono1", "P2", "20200101", transfer_syntax=RLELossless,
               photometric="MONOCHROME1")
    _exam_with(src, "ml", "P2", "20210101", views=(("R", "CC"), ("L", "CC"), ("R", "ML"),
                                                   ("L", "ML")))
    study = generate_uid()
    for lat, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")):
        write_digitised_film(src / "film" / f"{lat}{view}.dcm", patient_id="P3",
                             study_date="20100301", study_uid=study, laterality=lat, view=view)
    _exam_with(src, "missing", "P3", "20210101", views=(("R", "CC"), ("L", "CC"), ("R", "MLO")))
    panic = _exam_with(src, "panic", "P4", "20200101")
    _exam_with(src, "constant", "P4", "20210101", pixels=np.full(SHAPE, 777, np.uint16))
    for i in range(4):  # more plain exams, so that a run has several batches
        _exam_with(src, f"plain{i}", f"P5{i}", "20220101", transfer_syntax=(
            JPEG2000Lossless if i % 2 else RLELossless))
    lib = Library(root / "template")
    consume(run_import(lib, [src], make_previews=False))
    hostile.panicking_rle(panic[0], shape=SHAPE)  # same path: the cache still lists it
    return lib


def copy_library(template: Library, dest) -> Library:
    lib = Library(dest)
    shutil.copytree(template.home, lib.home)
    return lib


def exam_keys(lib: Library) -> dict[str, str]:
    """Folder name of the exam's files → exam key."""
    db = connect(lib.database)
    try:
        rows = db.execute("SELECT exam_key, path FROM images").fetchall()
    finally:
        db.close()
    return {os.path.basename(os.path.dirname(path)): ek for ek, path in rows}


def stored_rows(lib: Library) -> list[dict]:
    db = connect(lib.database)
    try:
        rows = [dict(r) for r in db.query("SELECT * FROM scores ORDER BY cache_key")]
    finally:
        db.close()
    for r in rows:
        r.pop("computed_at", None)
        r.pop("score_id", None)  # the order rows were written in
    return rows


def demo_service(lib: Library, **kw) -> InferenceService:
    entry = registry.resolve(lib, "demo")
    return InferenceService(lib.database, lambda dev: registry.load(entry, dev), device="cpu",
                            cpu_threads=1, **kw)


def drain(svc: InferenceService, gen: int, events: list) -> list:
    while True:
        ev = svc.next_event(timeout=WAIT)
        if isinstance(ev, ServiceError):
            raise AssertionError(ev.message)
        events.append(ev)
        if isinstance(ev, GenerationDone) and ev.generation == gen:
            return events


def answers(events: list) -> dict[str, tuple]:
    """exam key → what its answer says, without generation ids."""
    out = {}
    for ev in events:
        if isinstance(ev, ExamScored):
            out[ev.exam_key] = ("scored", ev.risk, ev.cached, ev.domain, ev.view_mapping)
        elif isinstance(ev, ExamUnscorable):
            out[ev.exam_key] = ("unscorable", ev.reason)
        elif isinstance(ev, ScoreFailed):
            out[ev.exam_key] = ("failed", ev.message)
    return out


# ---------------------------------------------------------------- the same results


def test_the_preprocessing_split_across_processes_is_bit_identical(tmp_path):
    views = [(breast_pixels(lat, view, (600, 480), bits_stored=12).astype(np.float64), lat, view)
             for lat, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))]
    views[1] = (views[1][0].max() + views[1][0].min() - views[1][0], "L", "CC")
    spec = PreprocessSpec(256, 208, 7047.99, 12005.5, 3)
    whole = preprocess_exam(views, 256, 208, 7047.99, 12005.5, 3)
    grey = grey_exam(views, spec)
    assert grey.grey.dtype == np.uint16 and grey.grey.shape == (4, 256, 208)
    split = normalize_grey(torch.from_numpy(grey.grey[None]), spec)
    assert torch.equal(split, whole.images)  # bit for bit, not close
    # int16 carrying the uint16 bits (how the batch crosses to a GPU) reads the same
    as_int16 = normalize_grey(torch.from_numpy(grey.grey[None].view(np.int16)), spec)
    assert torch.equal(as_int16, whole.images)
    assert [grey.flipped] == whole.flipped
    assert [grey.view_seq] == whole.view_seq.tolist() and [grey.side_seq] == whole.side_seq.tolist()


def _score_everything(lib: Library, workers: int) -> tuple[list, dict]:
    keys = exam_keys(lib)
    svc = demo_service(lib, batch_size=3, decode_workers=workers)
    events: list = []
    try:
        gen = svc.submit(sorted(keys.values()))
        drain(svc, gen, events)
        film = svc.submit([keys["film"]], include_out_of_domain=True)  # on request
        drain(svc, film, events)
        again = svc.submit(sorted(keys.values()))  # a rerun: every answer from the cache
        rerun = drain(svc, again, [])
        state = svc.pipeline_state()
        timings = svc.timings()
    finally:
        svc.shutdown()
    assert bool(state) == bool(workers)
    assert timings["exams"] == 9  # the eight scorable exams and the film, computed once
    return events, {"rerun": answers(rerun), "timings": timings}


@pytest.mark.slow
def test_decode_processes_give_the_same_answers_and_rows_as_the_thread(mixed, tmp_path):
    by_thread = copy_library(mixed, tmp_path / "thread")
    by_pool = copy_library(mixed, tmp_path / "pool")
    ev0, info0 = _score_everything(by_thread, 0)
    ev2, info2 = _score_everything(by_pool, 2)
    keys = exam_keys(by_thread)
    assert exam_keys(by_pool) == keys
    a0, a2 = answers(ev0), answers(ev2)
    assert a2 == a0  # identical rounded risks, reasons, domains, mappings
    # what each kind of exam came to (so that the comparison above compares something)
    assert a0[keys["film"]][0] == "scored" and a0[keys["film"]][3] == "digitised film"
    assert a0[keys["ml"]][4] == "RML→RMLO, LML→LMLO"
    assert a0[keys["missing"]] == ("unscorable", "missing LMLO")
    assert a0[keys["panic"]][0] == "unscorable" and "PanicException" in a0[keys["panic"]][1]
    assert a0[keys["constant"]] == ("unscorable", "RCC: the image is constant (every pixel 777)")
    for name in ("explicit", "j2k", "rle_mono1", "plain0", "plain1", "plain2", "plain3"):
        kind, risk, cached, domain, _ = a0[keys[name]]
        assert kind == "scored" and not cached and domain == "" and len(risk) == 5
    # the film exam refused in the first request, with the reason, then scored on request
    first_film = [ev for ev in ev2 if isinstance(ev, ExamUnscorable)
                  and ev.exam_key == keys["film"]]
    assert [ev.reason for ev in first_film] == [FILM_REASON]
    # the same progress, request by request
    assert ([(p.done, p.total) for p in ev2 if isinstance(p, ScoreProgress)]
            == [(p.done, p.total) for p in ev0 if isinstance(p, ScoreProgress)])
    # the same rows in the cache, device and model provenance included
    assert stored_rows(by_pool) == stored_rows(by_thread)
    assert info2["rerun"] == info0["rerun"]
    assert all(a[0] != "scored" or a[2] for a in info2["rerun"].values())  # all cached
    assert info2["timings"]["decode"] > 0 and info2["timings"]["model"] > 0


# ---------------------------------------------------------------- failures


def _wait_until(predicate, what: str):
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_killed_decode_process_fails_only_the_exam_it_had(mixed, tmp_path):
    lib = copy_library(mixed, tmp_path / "lib")
    keys = exam_keys(lib)
    plain = [keys[n] for n in ("explicit", "j2k", "rle_mono1", "ml", "plain0", "plain1",
                               "plain2", "plain3")]
    svc = demo_service(lib, batch_size=2, decode_workers=2)
    events: list = []
    try:
        drain(svc, svc.submit(plain[:2]), events)  # the pool is up: two processes
        _wait_until(lambda: len(svc.pipeline_state().get("workers", {})) == 2, "two processes")
        victim = sorted(svc.pipeline_state()["workers"])[0]
        os.kill(victim, signal.SIGSTOP)  # it takes exams but decodes none of them
        gen = svc.submit(plain[2:])
        _wait_until(lambda: svc.pipeline_state()["workers"].get(victim, 0) >= 1,
                    "an exam given to the stopped process")
        os.kill(victim, signal.SIGKILL)
        drain(svc, gen, events)
        after = svc.pipeline_state()["workers"]
    finally:
        svc.shutdown()
    assert victim not in after and len(after) == 2  # replaced
    mine = [ev for ev in events if isinstance(ev, PER_EXAM) and ev.generation == gen]
    assert sorted(ev.exam_key for ev in mine) == sorted(plain[2:])  # one answer each
    failed = [ev for ev in mine if isinstance(ev, ScoreFailed)]
    assert len(failed) == 1 and "decode process died" in failed[0].message
    assert "exit code -9" in failed[0].message
    assert sum(isinstance(ev, ExamScored) for ev in mine) == len(plain[2:]) - 1
    # a failure is not stored: the next run computes that exam
    db = connect(lib.database)
    try:
        assert not list(db.query("SELECT 1 FROM scores WHERE exam_key = ?",
                                 [failed[0].exam_key]))
    finally:
        db.close()


SCORE_SCRIPT = [sys.executable, "-m", "mamview", "--home", "{home}", "score", "--model", "demo",
                "--device", "cpu", "--batch-size", "1", "--decode-workers", "2"]


def _ok_rows(lib: Library) -> int:
    db = connect(lib.database)
    try:
        return db.execute("SELECT count(*) FROM scores WHERE status = 'ok'").fetchone()[0]
    finally:
        db.close()


@pytest.mark.slow
def test_a_killed_score_run_resumes_without_recomputing(mixed, tmp_path):
    lib = copy_library(mixed, tmp_path / "lib")
    for i in range(4, 12):  # more exams, so that the run is killed well before its end
        write_exam(tmp_path / "more" / f"e{i}", patient_id=f"Q{i}", study_date="20230101",
                   shape=SHAPE)
    consume(run_import(lib, [tmp_path / "more"], make_previews=False))
    scorable = 16
    cmd = [a.format(home=lib.home) for a in SCORE_SCRIPT]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_until(lambda: _ok_rows(lib) >= 2 or proc.poll() is not None, "two saved batches")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        try:  # its decode processes end on their own (their pipe closes); make sure
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    saved = _ok_rows(lib)
    assert 2 <= saved < scorable  # killed in the middle of the run
    svc = demo_service(lib, batch_size=2, decode_workers=2)
    db = connect(lib.database)
    all_keys = [r[0] for r in db.execute("SELECT exam_key FROM exams")]
    db.close()
    try:
        events = drain(svc, svc.submit(all_keys), [])
    finally:
        svc.shutdown()
    scored = [ev for ev in events if isinstance(ev, ExamScored)]
    assert sum(ev.cached for ev in scored) == saved
    assert sum(not ev.cached for ev in scored) == scorable - saved
    assert _ok_rows(lib) == scorable


# ---------------------------------------------------------------- order and bounds


@pytest.mark.slow
def test_the_screen_goes_first_and_exams_in_flight_are_bounded(mixed, tmp_path):
    lib = copy_library(mixed, tmp_path / "lib")
    for i in range(12):
        write_exam(tmp_path / "more" / f"e{i}", patient_id=f"B{i}", study_date="20230101",
                   shape=SHAPE)
    consume(run_import(lib, [tmp_path / "more"], make_previews=False))
    keys = exam_keys(lib)
    background = [keys[f"e{i}"] for i in range(12)] + [keys[f"plain{i}"] for i in range(4)]
    on_screen = [keys["explicit"], keys["j2k"]]
    events: list = []
    asked: dict = {}
    lock = threading.Condition()
    svc = None

    def on_event(ev):
        # the woman is opened while the first background result comes in: the service is
        # then busy with the background request, whatever the machine's speed
        with lock:
            events.append(ev)
            if isinstance(ev, ExamScored) and "screen" not in asked:
                asked["mark"] = len(events)
                asked["screen"] = svc.submit(on_screen, PRIORITY_ON_SCREEN)
            lock.notify_all()

    svc = demo_service(lib, batch_size=2, decode_workers=2, on_event=on_event)
    try:
        gen = svc.submit(background, PRIORITY_BACKGROUND)
        with lock:
            assert lock.wait_for(lambda: {GenerationDone(gen), GenerationDone(
                asked.get("screen", -1))} <= set(events), WAIT), events[-5:]
        state = svc.pipeline_state()
    finally:
        svc.shutdown()
    assert not any(isinstance(ev, (ServiceError, ScoreFailed)) for ev in events)
    bound = max_in_flight(2, 2)
    assert state["max_in_flight"] == bound and 2 < state["peak_in_flight"] <= bound
    later = events[asked["mark"]:]
    screen_done = later.index(GenerationDone(asked["screen"]))
    overtaken = [ev for ev in later[:screen_done]
                 if isinstance(ev, PER_EXAM) and ev.generation == gen]
    # only exams already taken from the queue when the screen asked came before it
    assert len(overtaken) <= bound
    behind = [ev for ev in later[screen_done:] if isinstance(ev, PER_EXAM)
              and ev.generation == gen]
    assert len(behind) >= len(background) - 1 - bound - 2  # the rest waited for the screen
    assert sorted(ev.exam_key for ev in events if isinstance(ev, ExamScored)
                  and ev.generation == asked["screen"]) == sorted(on_screen)


def test_pool_size_follows_the_machine_and_the_work():
    assert sized_workers(0) == 0 and sized_workers(3) == 3
    assert 1 <= sized_workers(None) <= 8
    assert sized_workers(None, work=1) == 1 and sized_workers(5, work=2) == 2
    assert sized_workers(0, work=10) == 0
