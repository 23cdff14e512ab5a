"""The inference service in a spawned child process (InferenceProcess), as the window runs it:
the bundled demo model on the CPU, a small real library, our own child killed for real.

Generation ids are the parent's and unique for the life of the process; every event carries
the id of the request it answers; a cancelled request says nothing more once cancel returns and
its queued exams are never scored; a dead child is noticed, and nothing waits on it for good.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from mamview.core.cache.db import connect
from mamview.core.ingest import run_import
from mamview.core.paths import Library, resources_dir
from mamview.core.services.inference import (
    PRIORITY_BACKGROUND,
    PRIORITY_ON_SCREEN,
    ExamScored,
    ExamUnscorable,
    GenerationDone,
    ScoreFailed,
    ScoreProgress,
    ServiceError,
)
from mamview.core.services.inference_process import InferenceProcess
from tests.core.test_ingest import consume, write_exam

pytestmark = pytest.mark.skipif(not (resources_dir() / "demo_model" / "weights.pt").is_file(),
                                reason="demo model not bundled")

SHAPE = (320, 256)  # plausible for scoring (sides of at least 256)
WAIT = 120  # seconds: a bound against hangs, far above what the waits take (a few seconds)
PER_EXAM = (ExamScored, ExamUnscorable, ScoreFailed)


class Recorder:
    """`on_event` for the service: keeps every event, in order, and lets a test wait for one."""

    def __init__(self):
        self.events: list = []
        self._cv = threading.Condition()

    def __call__(self, ev) -> None:
        with self._cv:
            self.events.append(ev)
            self._cv.notify_all()

    def wait_for(self, match, timeout: float = WAIT, errors_ok: bool = False):
        """The first event (of all so far) for which `match(ev)`; a ServiceError fails the test
        unless `errors_ok`."""
        def found():
            for ev in self.events:
                if isinstance(ev, ServiceError) and not errors_ok:
                    raise AssertionError(ev.message)
                if match(ev):
                    return ev
            return None

        with self._cv:
            ev = self._cv.wait_for(found, timeout)
        assert ev is not None, f"no such event in {timeout} s; got {self.events[-5:]}"
        return ev

    def done(self, gen: int) -> GenerationDone:
        return self.wait_for(lambda ev: isinstance(ev, GenerationDone) and ev.generation == gen)

    def of(self, gen: int, since: int = 0) -> list:
        with self._cv:
            return [ev for ev in self.events[since:] if getattr(ev, "generation", None) == gen]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Library:
    """Five women with two complete exams each, imported once for the whole file."""
    tmp = tmp_path_factory.mktemp("inference_process")
    for woman in range(5):
        for year in (2022, 2023):
            write_exam(tmp / "in" / f"w{woman}_{year}", pid=f"W{woman}", date=f"{year}0301",
                       shape=SHAPE)
    lib = Library(tmp / "template")
    consume(run_import(lib, [tmp / "in"], make_previews=False))
    return lib


@pytest.fixture
def library(template, tmp_path) -> Library:
    """A fresh copy of the template library: no scores yet (the files stay where they are)."""
    lib = Library(tmp_path / "lib")
    shutil.copytree(template.home, lib.home)
    return lib


def exam_keys(lib: Library) -> list[str]:
    db = connect(lib.database)
    try:
        return [r[0] for r in db.execute("SELECT exam_key FROM exams ORDER BY exam_key")]
    finally:
        db.close()


def scored_exams(lib: Library) -> set[str]:
    db = connect(lib.database)
    try:
        return {r[0] for r in db.execute("SELECT exam_key FROM scores")}
    finally:
        db.close()


def start(lib: Library, recorder: Recorder) -> InferenceProcess:
    return InferenceProcess(lib.database, lib.home, "demo", device="cpu", cpu_threads=1,
                            on_event=recorder).start()


def shutdown_within(proc: InferenceProcess, bound: float = 60) -> None:
    """Shut down on another thread and fail (not hang) if it does not return in `bound` s."""
    t = threading.Thread(target=proc.shutdown, kwargs={"timeout": 10}, daemon=True)
    t.start()
    t.join(bound)
    assert not t.is_alive(), "shutdown() did not return"


def test_ids_are_the_parents_unique_ones_and_every_event_carries_its_requests_id(library):
    keys = exam_keys(library)
    rec = Recorder()
    proc = start(library, rec)
    try:
        background = proc.submit(keys[:4], PRIORITY_BACKGROUND)
        on_screen = proc.submit(keys[4:6], PRIORITY_ON_SCREEN)
        empty = proc.submit([], PRIORITY_ON_SCREEN)
        assert len({background, on_screen, empty}) == 3
        for gen in (background, on_screen, empty):
            rec.done(gen)
        assert proc.idle()
    finally:
        shutdown_within(proc)
    first_ids = {background, on_screen, empty}
    assert {ev.generation for ev in rec.events if hasattr(ev, "generation")} == first_ids
    for gen, asked in ((background, keys[:4]), (on_screen, keys[4:6])):
        answers = [ev for ev in rec.of(gen) if isinstance(ev, PER_EXAM)]
        assert sorted(ev.exam_key for ev in answers) == sorted(asked)
        assert all(isinstance(ev, ExamScored) and not ev.cached for ev in answers)
        progress = [ev for ev in rec.of(gen) if isinstance(ev, ScoreProgress)]
        assert [(p.done, p.total) for p in progress] == [(i, len(asked))
                                                         for i in range(1, len(asked) + 1)]
        assert [type(ev) for ev in rec.of(gen)][-1] is GenerationDone
    assert rec.of(empty) == [GenerationDone(empty)]

    # a new process (the window's after a model or device change): its child numbers its
    # requests from 1 again, and the ids we see still never repeat the first process's
    rec2 = Recorder()
    proc2 = start(library, rec2)
    try:
        again = proc2.submit(keys[:2], PRIORITY_ON_SCREEN)
        rec2.done(again)
    finally:
        shutdown_within(proc2)
    assert again not in first_ids
    assert {ev.generation for ev in rec2.events if hasattr(ev, "generation")} == {again}
    cached = [ev for ev in rec2.of(again) if isinstance(ev, ExamScored)]
    assert sorted(ev.exam_key for ev in cached) == sorted(keys[:2])
    assert all(ev.cached for ev in cached)  # the first process's scores, from the cache


def test_a_cancelled_request_says_nothing_more_and_its_queued_exams_are_never_scored(library):
    keys = exam_keys(library)
    dropped, shown, later = keys[:8], keys[8:9], keys[9:10]
    rec = Recorder()
    proc = start(library, rec)
    try:
        # sent while the child is still starting (its model takes seconds to load): all of
        # `dropped` is still queued when the cancel reaches the child
        old = proc.submit(dropped, PRIORITY_BACKGROUND)
        proc.cancel(old)
        mark = len(rec.events)
        assert proc.idle()
        new = proc.submit(shown, PRIORITY_ON_SCREEN)
        rec.done(new)
        # same priority as the cancelled request and queued after it: had the cancelled exams
        # stayed queued, they would be scored before this one
        last = proc.submit(later, PRIORITY_BACKGROUND)
        rec.done(last)
        assert proc.idle()
    finally:
        shutdown_within(proc)
    assert rec.of(old, since=mark) == []  # nothing, GenerationDone included
    assert [ev.exam_key for ev in rec.of(new) if isinstance(ev, ExamScored)] == shown
    assert [ev.exam_key for ev in rec.of(last) if isinstance(ev, ExamScored)] == later
    assert scored_exams(library) == set(shown + later)


def test_a_killed_child_is_noticed_and_nothing_waits_on_it(library):
    keys = exam_keys(library)
    rec = Recorder()
    proc = start(library, rec)
    try:
        # the same ten exams many times over: after the first round every one is a cache hit,
        # yet the whole request takes far longer than the wait for its first result
        gen = proc.submit(keys * 500, PRIORITY_BACKGROUND)
        rec.wait_for(lambda ev: isinstance(ev, ExamScored) and ev.generation == gen)
        os.kill(proc._proc.pid, signal.SIGKILL)  # our own child, as a crashing decoder ends it
        err = rec.wait_for(lambda ev: isinstance(ev, ServiceError), errors_ok=True)
        assert "inference process stopped" in err.message and "exit code -9" in err.message
        assert not proc.alive()
        assert proc.idle()  # its queued work is gone with it, nobody waits for it
        assert not any(isinstance(ev, GenerationDone) for ev in rec.of(gen))
        seen = len(rec.events)
        later = proc.submit(keys[:1])  # a later request is told at once, not left waiting
        assert isinstance(rec.events[seen], ServiceError)
        assert rec.of(later) == []
    finally:
        shutdown_within(proc)
    assert not proc.alive()


EXIT_AFTER_DEATH = """
import os, signal, sys
from mamview.core.services.inference_process import InferenceProcess

def main():
    proc = InferenceProcess(sys.argv[1], sys.argv[2], "demo", device="cpu", cpu_threads=1,
                            on_event=lambda ev: None).start()
    os.kill(proc._proc.pid, signal.SIGKILL)
    proc._proc.join(30)
    # before the relay has noticed: a request far larger than a pipe holds, never to be read
    proc.submit([f"{i:0100d}" for i in range(5000)])
    proc.shutdown(timeout=5)
    print("done", flush=True)

if __name__ == "__main__":
    main()
"""


def test_a_dead_child_never_holds_up_exit(template, tmp_path):
    # the commands left in the dead child's pipe kept multiprocessing's feeder thread writing,
    # and the interpreter waited for it at exit for good
    script = tmp_path / "exit_after_death.py"
    script.write_text(EXIT_AFTER_DEATH)
    out = subprocess.run([sys.executable, str(script), str(template.database),
                          str(template.home)], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
