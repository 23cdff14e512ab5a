"""The pipelined scorer behind InferenceService: decode processes feed the model's batches.

    queued exams (the service's priority heap)
      ─ plan in the scoring thread (cache hit → answered; unscorable → stored, answered)
      ─ decode processes: `load_view` (the guarded boundary) + the stages of the model's
        preprocessing before normalisation (`preprocess.grey_exam`) → uint16 [4, H, W]
      ─ decoded exams: at most `max_in_flight` = batch size + processes × DEPTH exams between
        the heap and the cache (4·H·W·2 bytes each: 27 MB at 2048×1664; batch 4 and 8
        processes hold at most 20 exams, 0.55 GB)
      ─ batches: normalised on the device (pinned memory and non-blocking copies on CUDA)
        ─ model.predict ─ round_risks ─ one transaction per batch (the service's writer)

Public API (what `mamview score`, `mamview bench score` and the GUI's child use):

- `InferenceService(..., decode_workers=N)`: N decode processes; None sizes the pool to the
  machine (`sized_workers`: cores − 1, at least 1, at most MAX_WORKERS, never more than the
  exams queued); 0 decodes in the scoring thread as before. A model without a
  `preprocess_spec` (a picklable `preprocess.PreprocessSpec`) is decoded in the thread too.
- `InferenceService(..., precision="bf16"|"fp16")`: autocast on CUDA only (fp32 elsewhere);
  such scores carry their own cache-key mark and device label.
- `InferenceService.timings()` → seconds spent: `plan` (cache reads), `decode` (in the decode
  processes, summed over them, or in the thread), `wait` (the scoring thread waiting for
  decoded exams with nothing to compute), `collate` (stacking, host→device copy, normalising),
  `model` (forward and calibration), `write` (saving), and `exams` (exams computed).
- `InferenceService.pipeline_state()` → decode process pids and the exams each holds,
  `max_in_flight` and `peak_in_flight`, while the pipeline runs.
- `decode_exam(rows, min_height, spec)`: one exam's decode + preprocessing as a value
  (`("ok", GreyExam)`, `("unscorable", reason)` or `("failed", message)`), for other workers
  (e.g. a cluster's) that want the same result.

Every event guarantee of InferenceService holds: the on-screen exams go first (an exam queued
later than others but with a better priority waits for at most the `max_in_flight` exams
already taken from the heap); a cancelled request's exams still in flight are dropped; a
decode process that dies (killed, out of memory, a decoder that kills its process) fails the
exam it was given first with ScoreFailed, its other exams go back to the queue and a new
process takes its place; a decode that runs past DECODE_TIMEOUT is killed the same way. A
decoder's native panic is caught in the process at the guarded boundary, as in the thread.
Processes are spawned (never forked: the parent has torch threads, and in the GUI Qt), and
their address space is capped like the viewer's decode child (`decode.limit_memory`; a full
2048×1664 exam peaks near 1.1 GB).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_ready

MAX_WORKERS = 8
# Exams given to one process before it has answered: the next is waiting in its pipe while it
# decodes, so it never idles while the scoring thread is busy in the model.
DEPTH = 2
# A decode process that has not answered one exam in this time is killed (a stuck decoder).
DECODE_TIMEOUT = 600.0
# How often the scoring thread looks at the heap while it waits for decoded exams.
POLL = 0.05
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def sized_workers(requested: int | None, work: int | None = None) -> int:
    """Decode processes for `requested` (None: cores − 1, at least 1, at most MAX_WORKERS),
    never more than `work` exams need (at least 1 when there is work)."""
    n = max(1, min(MAX_WORKERS, available_cores() - 1)) if requested is None else max(0, requested)
    if work is not None:
        n = min(n, max(1, work)) if n else 0
    return n


def max_in_flight(batch_size: int, workers: int) -> int:
    """Exams between the heap and the cache at most: a batch ready for the model while every
    process holds DEPTH exams. Memory: 4·H·W·2 bytes each (27 MB at 2048×1664)."""
    return batch_size + workers * DEPTH


# ---------------------------------------------------------------- one exam, in any process


def decode_exam(rows: list[dict], min_height: int | None, spec) -> tuple:
    """Decode and preprocess one exam's four input rows (path, laterality, view, label) up to
    normalisation: ("ok", GreyExam) | ("unscorable", reason) | ("failed", message)."""
    from mamview.core.dicom.pixels import PixelDecodeError, describe
    from mamview.core.models.preprocess import grey_exam
    from mamview.core.services.inference import Unscorable, load_view, unscorable_reason

    try:
        return "ok", grey_exam([load_view(r, min_height) for r in rows], spec)
    except (Unscorable, PixelDecodeError) as exc:
        return "unscorable", unscorable_reason(exc)
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - native panics too: this exam fails
        return "failed", describe(exc)


def _job_rows(rows: list[dict]) -> list[dict]:
    """What `load_view` reads of the input rows (all the process is sent)."""
    return [{k: r.get(k) for k in ("path", "laterality", "view", "label")} for r in rows]


def _worker_main(conn) -> None:
    """A decode process: one exam at a time from the pipe, its outcome and seconds back."""
    import signal

    from mamview.core.services.decode import limit_memory, pipe_requests

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    limit_memory()  # a decoder that allocates without bound fails its exam, not the machine
    import torch

    torch.set_num_threads(1)  # one core per process: the pool is the parallelism
    for job_id, rows, min_height, spec in pipe_requests(conn):  # until the scorer has gone
        t0 = time.perf_counter()
        outcome = decode_exam(rows, min_height, spec)
        try:
            conn.send((job_id, *outcome, time.perf_counter() - t0))
        except (EOFError, OSError):
            return


# ---------------------------------------------------------------- the pool


def _start(proc) -> None:
    """Start a decode process, from a daemonic process too (the window's scoring child).
    multiprocessing refuses that lest a daemon's children be orphaned when it is killed; ours
    end by themselves when their pipe closes, which the parent's death does."""
    config = multiprocessing.current_process()._config
    daemonic = config.get("daemon")
    config["daemon"] = False
    try:
        proc.start()
    finally:
        config["daemon"] = daemonic


class _Worker:
    def __init__(self, ctx) -> None:
        self.conn, theirs = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_main, args=(theirs,), daemon=True,
                                name="mamview-decode-worker")
        try:
            _start(self.proc)
        finally:
            theirs.close()  # only the process holds its end: its death is EOF here
        self.jobs: deque[int] = deque()  # exams sent, oldest (the one it decodes) first
        self.since = time.monotonic()  # when it began the oldest

    def kill(self) -> None:
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
        finally:
            self.conn.close()


@dataclass
class Outcome:
    """What became of one exam sent to the pool: kind 'ok' | 'unscorable' | 'failed' (value:
    GreyExam | reason | message; seconds spent decoding) or 'retry' (never begun: queue again)."""

    job: int
    kind: str
    value: object = None
    seconds: float = 0.0


class DecodePool:
    """`size` spawned decode processes, each given at most DEPTH exams at a time."""

    def __init__(self, size: int, timeout: float = DECODE_TIMEOUT) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.timeout = timeout
        self.workers: list[_Worker] = []
        try:
            self.grow_to(size)
        except BaseException:
            self.close()
            raise

    def grow_to(self, size: int) -> None:
        """Start processes until there are `size`."""
        while len(self.workers) < size:
            self.workers.append(_Worker(self._ctx))

    def free(self) -> _Worker | None:
        """The process with the fewest exams, if it has room for one more."""
        for i, w in enumerate(self.workers):
            if not w.jobs and not w.proc.is_alive():  # died while idle: no exam to blame
                w.kill()
                self.workers[i] = _Worker(self._ctx)
        best = min(self.workers, key=lambda w: len(w.jobs), default=None)
        return best if best is not None and len(best.jobs) < DEPTH else None

    def send(self, worker: _Worker, job: int, rows: list[dict], min_height, spec) -> None:
        if not worker.jobs:
            worker.since = time.monotonic()
        worker.jobs.append(job)
        try:
            worker.conn.send((job, _job_rows(rows), min_height, spec))
        except (OSError, EOFError):
            pass  # a dead process: `collect` notices it and answers this exam

    def pids(self) -> dict[int, int]:
        """pid → exams given and not yet answered, for each live process (tests, diagnostics)."""
        return {w.proc.pid: len(w.jobs) for w in self.workers}

    def collect(self, timeout: float) -> list[Outcome]:
        """Wait at most `timeout` s for answers; processes that died or ran past the timeout
        are replaced, their first exam failed and the others handed back for a retry."""
        busy = [w for w in self.workers if w.jobs]
        if not busy:
            return []
        handles = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
        ready = set(wait_ready(handles, timeout))
        out: list[Outcome] = []
        for w in busy:
            closed = (w.conn in ready or w.proc.sentinel in ready) and self._read(w, out)
            if closed or not w.proc.is_alive():
                if not closed:
                    self._read(w, out)  # what it sent before it ended
                w.proc.join(1)
                code = w.proc.exitcode
                self._replace(w, out, "the decode process died while decoding this exam"
                              + (f" (exit code {code})" if code is not None else ""))
            elif w.jobs and time.monotonic() - w.since > self.timeout:
                self._replace(w, out, f"decoding took longer than {self.timeout:g} s")
        return out

    def _read(self, w: _Worker, out: list[Outcome]) -> bool:
        """Read every answer waiting in w's pipe; True when the pipe has closed."""
        try:
            while w.jobs and w.conn.poll():
                job, kind, value, seconds = w.conn.recv()
                if w.jobs[0] == job:
                    w.jobs.popleft()
                    w.since = time.monotonic()
                    out.append(Outcome(job, kind, value, seconds))
        except Exception:  # noqa: BLE001 - EOF, or a message cut off by the process's death
            return True
        return False

    def _replace(self, w: _Worker, out: list[Outcome], message: str) -> None:
        jobs = list(w.jobs)
        w.jobs.clear()
        w.kill()
        if jobs:
            out.append(Outcome(jobs[0], "failed", message))
            out.extend(Outcome(j, "retry") for j in jobs[1:])
        self.workers[self.workers.index(w)] = _Worker(self._ctx)

    def close(self) -> None:
        """End every process now (a decode has nothing to save)."""
        for w in self.workers:
            try:
                w.kill()
            except Exception:  # noqa: BLE001 - closing must reach every process
                traceback.print_exc()
        self.workers = []


# ---------------------------------------------------------------- the scoring loop


@dataclass
class _Exam:
    item: tuple[int, int, int, str]  # priority, order, generation, exam key (the heap's)
    key: str
    rows: list[dict]
    grey: object = None  # GreyExam once decoded

    @property
    def gen(self) -> int:
        return self.item[2]

    @property
    def exam_key(self) -> str:
        return self.item[3]


class Pipeline:
    """The service's worker thread when it decodes in processes: plan, dispatch, collect,
    score in batches, save. Runs until the service stops; see the module docstring."""

    def __init__(self, svc, db, workers: int | None) -> None:
        self.svc, self.db = svc, db
        self.requested = workers
        self.model = svc.model
        self.spec = self.model.preprocess_spec
        self.min_height = getattr(self.model, "decode_min_height", None)
        self.batch_size = svc.batch_size
        self.size = sized_workers(workers)
        self.max_in_flight = max_in_flight(self.batch_size, self.size)
        self.pool: DecodePool | None = None
        self.inline = False  # no process could be started: decode in this thread
        self.decoding: dict[int, _Exam] = {}
        self.ready: list[_Exam] = []
        self.scoring: list[_Exam] = []
        self.peak_in_flight = 0  # the most exams in flight at once (tests read it)
        self._ids = itertools.count()
        self._pinned = None  # a reused page-locked buffer for CUDA copies
        svc._pipeline = self

    def in_flight(self) -> int:
        """Exams taken from the heap and not yet answered."""
        return len(self.decoding) + len(self.ready) + len(self.scoring)

    def run(self) -> None:
        try:
            while not self.svc._stop:
                self._fill()
                if self.ready and self._batch_due():
                    self._score_batch()
                elif self.decoding:
                    self._collect(POLL)
                elif not self.svc._wait_for_work():
                    return
        except BaseException as exc:  # noqa: BLE001 - every exam in flight gets its answer
            message = _describe(exc)
            for ex in self.scoring + self.ready + list(self.decoding.values()):
                self._fail(ex, message)
            raise
        finally:
            self.svc._pipeline = None
            if self.pool is not None:
                self.pool.close()

    # -- taking exams from the heap

    def _fill(self) -> None:
        """Plan queued exams and hand them to the decode processes, while there is room."""
        while self.in_flight() < self.max_in_flight:
            if self.pool is not None and self.pool.free() is None:
                return
            item = self.svc._take()
            if item is None:
                return
            ex = self._plan(item)
            if ex is not None:
                self._dispatch(ex)

    def _plan(self, item) -> _Exam | None:
        from mamview.core.services.inference import ScoreFailed

        _, _, gen, ek = item
        t0 = time.perf_counter()
        try:  # cache hits and unscorable exams are answered there
            plan = self.svc._plan(self.db, gen, ek, lambda ev: self.svc._reply(gen, ev))
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad exam never stops the others
            self.svc._reply(gen, ScoreFailed(gen, ek, _describe(exc)))
            return None
        finally:
            self.svc._time("plan", t0)
        return None if plan is None else _Exam(item, plan[0], plan[1])

    def _dispatch(self, ex: _Exam) -> None:
        if self.pool is None and not self.inline:
            try:  # sized when the first exam needs decoding: never more than the work
                self.pool = DecodePool(sized_workers(self.requested, self._queued() + 1))
            except (OSError, RuntimeError, AssertionError):  # e.g. no processes allowed here
                traceback.print_exc()
                self.inline = True
        if self.inline:
            t0 = time.perf_counter()
            outcome = decode_exam(ex.rows, self.min_height, self.spec)
            self._done(ex, Outcome(-1, outcome[0], outcome[1], time.perf_counter() - t0))
            return
        self.pool.grow_to(min(self.size, len(self.pool.workers) + self._queued()))
        job = next(self._ids)
        self.decoding[job] = ex
        self.pool.send(self.pool.free() or self.pool.workers[0], job, ex.rows, self.min_height,
                       self.spec)
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight())

    def _queued(self) -> int:
        with self.svc._cv:
            return len(self.svc._heap)

    # -- decoded exams

    def _collect(self, timeout: float) -> None:
        t0 = time.perf_counter()
        outcomes = self.pool.collect(timeout)
        if not self.ready:
            self.svc._time("wait", t0)
        for oc in outcomes:
            ex = self.decoding.pop(oc.job, None)
            if ex is not None:
                self._done(ex, oc)

    def _done(self, ex: _Exam, oc: Outcome) -> None:
        from mamview.core.services.inference import ExamUnscorable, save_unscorable

        with self.svc._timing_lock:
            self.svc._timings["decode"] += oc.seconds
        if ex.gen in self.svc._cancelled:
            return  # nobody waits for it
        if oc.kind == "ok":
            ex.grey = oc.value
            self.ready.append(ex)
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight())
        elif oc.kind == "unscorable":
            save_unscorable(self.db, self.model.identity, ex.exam_key, str(oc.value))
            self.svc._reply(ex.gen, ExamUnscorable(ex.gen, ex.exam_key, str(oc.value)))
        elif oc.kind == "retry":
            self.svc._put_back(ex.item)
        else:
            self._fail(ex, str(oc.value))

    def _fail(self, ex: _Exam, message: str) -> None:
        from mamview.core.services.inference import ScoreFailed

        self.svc._reply(ex.gen, ScoreFailed(ex.gen, ex.exam_key, message))

    # -- batches

    def _batch_due(self) -> bool:
        """A full batch; or nothing more will come before the model is free (nothing is
        decoding); or a decoded exam outranks every exam still decoding (the screen's)."""
        if len(self.ready) >= self.batch_size or not self.decoding:
            return True
        return min(ex.item for ex in self.ready) < min(ex.item for ex in self.decoding.values())

    def _score_batch(self) -> None:
        from mamview.core.models.base import round_risks

        self.ready.sort(key=lambda ex: ex.item)
        batch, self.ready = self.ready[:self.batch_size], self.ready[self.batch_size:]
        self.scoring = [ex for ex in batch if ex.gen not in self.svc._cancelled]
        if not self.scoring:
            return
        try:
            t0 = time.perf_counter()
            tensors = self._collate([ex.grey for ex in self.scoring])
            self.svc._time("collate", t0)
            t0 = time.perf_counter()
            risks = round_risks(self.model.predict(tensors))
            self.svc._time("model", t0)
            done = self.svc.save_computed(
                self.db, [(ex.gen, ex.exam_key, ex.key, ex.rows) for ex in self.scoring], risks)
        except BaseException as exc:  # noqa: BLE001 - native panics too: the batch fails
            for ex in self.scoring:
                self._fail(ex, _describe(exc))
            self.scoring = []
            if isinstance(exc, _PASS_THROUGH):
                raise
            traceback.print_exc()
            return
        batch, self.scoring = self.scoring, []
        for ex, ev in zip(batch, done):
            self.svc._reply(ex.gen, ev)

    def _collate(self, greys: list):
        """Decoded exams → ExamTensors on the model's device, normalised there: on CUDA
        through a reused pinned buffer with a non-blocking copy, elsewhere from memory."""
        import numpy as np
        import torch

        from mamview.core.models.base import ExamTensors
        from mamview.core.models.preprocess import normalize_grey

        device = self.svc.device
        if device.type == "cuda":
            shape = (len(greys), *greys[0].grey.shape)
            if (self._pinned is None or self._pinned.shape[0] < shape[0]
                    or tuple(self._pinned.shape[1:]) != shape[1:]):
                self._pinned = torch.empty((max(shape[0], self.batch_size), *shape[1:]),
                                           dtype=torch.int16, pin_memory=True)
            host = self._pinned[:shape[0]]
            for i, g in enumerate(greys):  # int16 carries the uint16 bits
                host[i].copy_(torch.from_numpy(g.grey.view(np.int16)))
            grey = host.to(device, non_blocking=True)
        else:
            grey = torch.from_numpy(np.stack([g.grey for g in greys]))
        cuda = device.type == "cuda"
        seq = lambda name: torch.tensor([getattr(g, name) for g in greys],  # noqa: E731
                                        dtype=torch.int64).to(device, non_blocking=cuda)
        return ExamTensors(normalize_grey(grey, self.spec), seq("view_seq"), seq("side_seq"),
                           torch.zeros(len(greys), len(greys[0].view_seq), dtype=torch.int64,
                                       device=device),
                           [list(g.flipped) for g in greys])


def _describe(exc: BaseException) -> str:
    from mamview.core.dicom.pixels import describe

    return describe(exc)
