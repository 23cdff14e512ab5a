"""Scoring on a Dask cluster (issue 15): real clusters on 127.0.0.1 (a LocalCluster of worker
processes, or `dask scheduler` / `dask worker` child processes stopped by PID), the real demo
model, real DICOM files of the demo cohort, compared with the in-process InferenceService."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.demo_data import generate_cohort
from mamview.core.ingest import drain, run_import
from mamview.core.models import registry
from mamview.core.paths import Library, library
from mamview.core.services.inference import (ExamScored, ExamUnscorable, GenerationDone,
                                             InferenceService, ScoreFailed, ServiceError)

distributed = pytest.importorskip("distributed")
import cloudpickle  # noqa: E402  (comes with distributed)

from mamview.core.services.cluster import ClusterError, ClusterService  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# the worker plugins below travel by value: workers need not import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])
# row fields that say where or when a score was computed, not what it is
WHERE_AND_WHEN = {"score_id", "computed_at", "device"}


def _import(lib: Library, cohort: Path) -> Library:
    drain(run_import(lib, [cohort], make_previews=False))
    return lib


def _exam_keys(lib: Library) -> list[str]:
    db = connect(lib.database)
    try:
        return [e["exam_key"] for e in reads.list_exams(db)]
    finally:
        db.close()


def _stored(lib: Library, keys) -> dict[str, dict]:
    db = connect(lib.database)
    try:
        return reads.scores_for_exams(db, keys, "demo")
    finally:
        db.close()


def _run(svc, keys, timeout=120) -> dict[str, object]:
    """Submit and wait for the request's GenerationDone: the last event of each exam."""
    gen = svc.submit(keys)
    out = {}
    deadline = time.monotonic() + timeout
    while True:
        ev = svc.next_event(timeout=max(1.0, deadline - time.monotonic()))
        if isinstance(ev, ServiceError):
            raise AssertionError(ev.message)
        if isinstance(ev, (ExamScored, ExamUnscorable, ScoreFailed)):
            out[ev.exam_key] = ev
        if isinstance(ev, GenerationDone) and ev.generation == gen:
            return out


def _until_service_error(svc, timeout=60) -> list:
    """Every event up to and including the first ServiceError."""
    events = []
    while not events or not isinstance(events[-1], ServiceError):
        events.append(svc.next_event(timeout=timeout))
    return events


def _outcomes(events: dict) -> dict[str, tuple]:
    """What each exam got: rounded risks, or the reason it was not scored."""
    return {k: (type(e).__name__, getattr(e, "risk", None), getattr(e, "reason", None))
            for k, e in events.items()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "cohort"
    generate_cohort(out, n_patients=3, size="small", seed=5)  # 12 exams, one incomplete
    return out


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    """The in-process service's scores of the cohort (decoding in its thread)."""
    lib = _import(Library(tmp_path_factory.mktemp("ref") / "lib"), cohort)
    entry = registry.resolve(lib, "demo")
    keys = _exam_keys(lib)
    svc = InferenceService(lib.database, lambda dev: registry.load(entry, dev), device="cpu",
                           batch_size=4, decode_workers=0)
    try:
        events = _run(svc, keys)
    finally:
        svc.shutdown()
    assert sum(isinstance(e, ExamScored) for e in events.values()) >= 8
    return keys, _outcomes(events), _stored(lib, keys)


@pytest.fixture
def lib(cohort, tmp_path):
    return _import(Library(tmp_path / "lib"), cohort)


def _same_rows(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for ek, row in want.items():
        strip = lambda r: {k: v for k, v in r.items() if k not in WHERE_AND_WHEN}  # noqa: E731
        assert strip(got[ek]) == strip(row), ek


# ---------------------------------------------------------------- worker plugins (chaos)


class HoldFirstTask(distributed.WorkerPlugin):
    """The first task to start anywhere writes its worker's PID to `folder/held` and blocks
    that worker, so the test can SIGKILL it mid-task."""

    def __init__(self, folder: str):
        self.folder = folder

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        try:
            fd = os.open(os.path.join(self.folder, "held"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        time.sleep(60)  # killed long before


class KillOnExam(distributed.WorkerPlugin):
    """Any task with `exam_key` among its exams kills its worker process when it starts."""

    def __init__(self, exam_key: str):
        self.exam_key = exam_key

    def setup(self, worker):
        self.worker = worker

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        ts = self.worker.state.tasks.get(key)
        items = ts.run_spec.args[3] if ts is not None else []
        if any(item[0] == self.exam_key for item in items):
            os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------- the service


@pytest.mark.timeout(180)
def test_local_cluster_scores_and_stores_what_one_process_does(lib, reference):
    keys, want, want_rows = reference
    assert _exam_keys(lib) == keys
    entry = registry.resolve(lib, "demo")
    svc = ClusterService(lib, entry, "local", device="cpu", batch_size=3)
    try:
        assert svc.cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        first = _run(svc, keys)
        label = svc.device_label
        again = _run(svc, keys)
    finally:
        svc.shutdown()
    assert svc.cluster is None and svc.client is None  # the local cluster is closed
    assert _outcomes(first) == want
    assert not any(e.cached for e in first.values() if isinstance(e, ExamScored))
    assert re.fullmatch(r"Dask cluster tcp://127\.0\.0\.1:\d+, 2 workers "
                        r"\(CPU \(1 thread\) ×[12]\)", label), label
    # same keys, same provenance and risks; only where it ran differs
    rows = _stored(lib, keys)
    _same_rows(rows, want_rows)
    assert {r["device"] for r in rows.values() if r["status"] == "ok"} == {
        "CPU (1 thread) on Dask worker 127.0.0.1"}
    # a rerun finds every score in the cache
    scored = [e for e in again.values() if isinstance(e, ExamScored)]
    assert len(scored) == sum(o[0] == "ExamScored" for o in want.values())
    assert all(e.cached for e in scored)
    assert _outcomes(again) == want


@pytest.mark.timeout(180)
def test_a_killed_worker_s_exams_are_retried_and_all_scored(lib, reference, tmp_path):
    keys, want, want_rows = reference
    entry = registry.resolve(lib, "demo")
    held = tmp_path / "held"
    # the files' bytes travel in the tasks (no shared storage needed)
    svc = ClusterService(lib, entry, "local", device="cpu", batch_size=2, send_bytes=True)
    try:
        svc.client.register_plugin(HoldFirstTask(str(tmp_path)))
        pids = svc.client.run(os.getpid)
        gen = svc.submit(keys)
        deadline = time.monotonic() + 60
        while not (held.exists() and held.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = int(held.read_text())
        assert victim in pids.values()
        os.kill(victim, signal.SIGKILL)
        events = {}
        while True:
            ev = svc.next_event(timeout=120)
            assert not isinstance(ev, ServiceError), ev.message
            if isinstance(ev, (ExamScored, ExamUnscorable, ScoreFailed)):
                events[ev.exam_key] = ev
            if isinstance(ev, GenerationDone) and ev.generation == gen:
                break
        after = svc.client.run(os.getpid)
    finally:
        svc.shutdown()
    assert victim not in after.values()
    assert _outcomes(events) == want
    _same_rows(_stored(lib, keys), want_rows)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("send_bytes", [False, True])  # resent tasks carry their bytes again
def test_an_exam_that_kills_every_worker_fails_alone(lib, reference, send_bytes):
    keys, want, _ = reference
    entry = registry.resolve(lib, "demo")
    poison = next(k for k, o in want.items() if o[0] == "ExamScored")
    # no second chance for a task whose worker died: KilledWorker at the first death
    svc = ClusterService(lib, entry, "local", device="cpu", batch_size=2, allowed_failures=0,
                         send_bytes=send_bytes)
    try:
        svc.client.register_plugin(KillOnExam(poison))
        events = _run(svc, keys)
    finally:
        svc.shutdown()
    failed = events.pop(poison)
    assert isinstance(failed, ScoreFailed)
    assert "every Dask worker that ran it died (1 time, the last tcp://127.0.0.1:" in failed.message
    want = dict(want)
    del want[poison]
    assert _outcomes(events) == want  # the exam batched with it was sent again alone
    assert poison not in _stored(lib, keys)


def test_missing_distributed_is_one_line_with_the_install_command(lib, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    with pytest.raises(ClusterError, match=r"pip install 'mamview\[cluster\]'"):
        ClusterService(lib, registry.resolve(lib, "demo"), "local")


# ---------------------------------------------------------------- through `mamview score`


def _mamview(home: Path, *args, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mamview", "--home", str(home), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def dask_processes(folder: Path, nanny: bool = True):
    """`dask scheduler` and one `dask worker` (1 thread) on 127.0.0.1; yields the scheduler's
    address; killed afterwards by PID, each with its process group (a nanny's worker too)."""
    sched_file = folder / "scheduler.json"
    quiet = {"cwd": ROOT, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--no-dashboard", "--scheduler-file", str(sched_file)], **quiet)]
    try:
        address, deadline = "", time.monotonic() + 60
        while not address and time.monotonic() < deadline:
            try:  # the file appears, then is complete
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host",
             "127.0.0.1", "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
             "--death-timeout", "60"] + ([] if nanny else ["--no-nanny"]), **quiet))
        yield address
    finally:
        for p in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


@pytest.fixture
def dask_scheduler_and_worker(tmp_path):
    with dask_processes(tmp_path) as address:
        yield address


@pytest.mark.timeout(150)
def test_a_cluster_that_cannot_score_ends_the_run_in_bounded_time(lib, reference, tmp_path):
    import torch

    keys, _, _ = reference
    entry = registry.resolve(lib, "demo")
    with dask_processes(tmp_path, nanny=False) as address:
        if not torch.cuda.is_available():  # a worker without the device asked for
            svc = ClusterService(lib, entry, address, device="cuda")
            try:
                svc.submit(keys)
                refused = _until_service_error(svc)
            finally:
                svc.shutdown()
            assert re.match(r"the model could not be loaded on Dask worker "
                            r"tcp://127\.0\.0\.1:\d+: ModelUnavailable: device 'cuda' is "
                            r"unavailable", refused[-1].message), refused[-1].message
            assert not any(isinstance(e, ExamScored) and not e.cached for e in refused)
        # worker_wait: how long a run goes on with no worker at all
        svc = ClusterService(lib, entry, address, device="cpu", worker_wait=3)
        try:
            svc.client.register_plugin(HoldFirstTask(str(tmp_path)))
            (pid,) = svc.client.run(os.getpid).values()
            svc.submit(keys)
            held = tmp_path / "held"
            deadline = time.monotonic() + 60
            while not (held.exists() and held.read_text()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert int(held.read_text()) == pid
            os.kill(pid, signal.SIGKILL)  # no nanny: nobody starts it again
            events = _until_service_error(svc)
            later = svc.submit(keys)
            told = svc.next_event(timeout=10)
        finally:
            svc.shutdown()
    message = f"no Dask worker has been connected to {address} for 3 s"
    assert events[-1].message == message
    failed = [e for e in events if isinstance(e, ScoreFailed)]
    assert failed and all(e.message == message for e in failed)  # the exams that were out
    assert isinstance(told, ServiceError) and told.message == message and later > 0
    assert not any(isinstance(e, ExamScored) and not e.cached for e in events)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_mamview_score_on_a_cluster_then_everything_is_cached(
        home, cohort, reference, dask_scheduler_and_worker):
    keys, want, want_rows = reference
    lib = _import(library(home).ensure(), cohort)
    n = sum(o[0] == "ExamScored" for o in want.values())
    args = ["score", "--model", "demo", "--device", "cpu", "--cluster",
            dask_scheduler_and_worker]
    first = _mamview(home, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"Scored {n} exams ({n} computed, 0 already in the cache)." in first.stdout
    assert re.search(r"Device: Dask cluster tcp://127\.0\.0\.1:\d+, 1 worker "
                     r"\(CPU \(1 thread\) ×1\)", first.stdout), first.stdout
    _same_rows(_stored(lib, keys), want_rows)
    again = _mamview(home, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"Scored {n} exams (0 computed, {n} already in the cache)." in again.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_an_unreachable_scheduler_is_one_line_and_a_failure(home, cohort):
    _import(library(home).ensure(), cohort)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nobody listens there
    t0 = time.monotonic()
    run = _mamview(home, "score", "--model", "demo", "--device", "cpu", "--cluster", address,
                   timeout=90)
    assert time.monotonic() - t0 < 90
    assert run.returncode not in (0, None)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines, run.stdout
    assert lines[-1].endswith(f"cannot reach the Dask scheduler at {address} within 10 s")
    assert "Traceback" not in run.stderr
