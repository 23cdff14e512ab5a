"""Scoring on a Dask cluster: the workers decode and score, this process plans and writes.

Why Dask distributed (and not Ray): it is pure Python and about 2.5 MB, against Ray's 79 MB
wheel and its runtime; a clinic's IT can start `dask scheduler` and `dask worker ADDRESS` by
hand on machines it already has; everything binds to 127.0.0.1 in the tests; the scheduler
reschedules a lost worker's tasks itself, a bounded number of times (`allowed-failures`); GPU
workers are ordinary workers started with `--resources GPU=1` (see `resources`).

`ClusterService` offers the calls `mamview score` uses on `InferenceService` (`submit`,
`next_event`, `shutdown`, `device_label`) and the same events. This process reads the cache and
plans each exam with the service's own `plan_exam` (inputs, domain, cache key):
cache hits are answered without the cluster, out-of-domain exams refused as the service does.
The rest goes out in tasks of `batch_size` exams: the files' paths (shared storage) or, with
`send_bytes`, their bytes. A worker loads the model once per process, decodes with `load_view`,
scores and rounds; it never opens the cache. Only this process writes it, with `score_row` in
one transaction per task, so the stored rows are those single-machine scoring writes (the
device aside) and a killed run resumes.

Every wait is bounded: the scheduler must answer within `connect_timeout`; a run with no worker
for `worker_wait` seconds, or no finished task for `stall_timeout`, ends with a ServiceError.
A task of several exams whose workers died `allowed_failures + 1` times (Dask's KilledWorker) is
split into one task per exam, sent again one at a time as the only task on the cluster (a task
queued on a worker that another exam killed dies with it); an exam whose workers die while it
runs alone ends as ScoreFailed.

The model folder must be at the same path on every worker (shared storage or the same install);
a worker whose weights differ refuses to score. A Dask scheduler runs whatever its clients send:
it belongs on a private network (or `tls://`), like the workers.
"""

from __future__ import annotations

import heapq
import math
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from mamview.core.cache import writes
from mamview.core.cache.db import connect
from mamview.core.dicom.pixels import PixelDecodeError, describe as _describe, one_line
from mamview.core.services.generations import next_generation
from mamview.core.services.requests import ScoringRequests
from mamview.core.services.inference import (
    PRIORITY_BACKGROUND,
    Event,
    ExamScored,
    ExamUnscorable,
    GenerationDone,
    OutsideDomain,
    ScoreFailed,
    ServiceError,
    Unscorable,
    inputs_domain,
    load_view,
    plan_exam,
    save_unscorable,
    score_row,
    unscorable_reason,
    view_mapping,
)

LOCAL = "local"  # the address that starts a cluster on this machine
CONNECT_TIMEOUT = 10.0  # s for the scheduler to answer
WORKER_WAIT = 60.0  # s a run waits with no worker (at the start, and whenever all are gone)
STALL_TIMEOUT = 900.0  # s with tasks out and none finished (full Mirai on a CPU: ~2 min a task)
# Worker deaths a task may cause before Dask gives up on it (the local cluster's setting; an
# external scheduler has its own, 3 by default).
ALLOWED_FAILURES = 2
LOCAL_WORKERS = 2
_POLL = 0.5  # s between looks at the futures
_CHECK_EVERY = 2.0  # s between questions to the scheduler (workers still there?)
_PLAN_CHUNK = 256  # exams planned between two looks at the futures
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


class ClusterError(Exception):
    """The cluster cannot be used (not installed, unreachable, no worker); one line."""


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ClusterError("Dask distributed is not installed: pip install "
                           "'mamview[cluster]'") from None
    return distributed


# ---------------------------------------------------------------- on the workers

_models: dict[tuple, tuple] = {}  # (folder, weights sha256, device) → (model, device, label)
_models_lock = threading.Lock()


def _worker_model(entry, ident, device: str):
    """The model of `entry` in this worker process, loaded once (one model per process).

    ValueError when the folder on this machine holds other weights than the client's: its
    scores would not be the ones single-machine scoring stores under the same key.
    """
    key = (str(entry.folder), ident.weights_sha256, device)
    with _models_lock:
        if key not in _models:
            from mamview.core.models import registry
            from mamview.core.models.device import describe_device, select_device

            _models.clear()
            # torch's CPU threads stay as Dask set them: its nanny starts each worker with
            # OMP_NUM_THREADS=1, one thread per worker process
            dev = select_device(device)
            model = registry.load(entry, dev)
            if model.identity != ident:
                raise ValueError(f"the model folder {entry.folder} on this worker holds "
                                 f"weights {model.identity.weights_sha256[:12]}…, not "
                                 f"{ident.weights_sha256[:12]}…")
            _models[key] = (model, dev, describe_device(dev))
        return _models[key]


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except Exception:  # noqa: BLE001 - called outside a worker (direct use)
        return "local process"


def _private_copies(folder: str, n: int, rows: list[dict], blobs: list[bytes]) -> list[dict]:
    """The rows with each file's bytes written under `folder`, named by position (never by a
    header value)."""
    out = []
    for j, (row, data) in enumerate(zip(rows, blobs)):
        path = os.path.join(folder, f"{n}-{j}.dcm")
        with open(path, "wb") as f:
            f.write(data)
        out.append({**row, "path": path})
    return out


def score_on_worker(entry, ident, device: str, items: list, send_bytes: bool = False) -> dict:
    """One task, run on a Dask worker: score `items` [(exam_key, rows, blobs or None)].

    Returns {"worker", "device", "exams": [[exam_key, "ok", risk] | [exam_key, "unscorable",
    reason] | [exam_key, "failed", message]]}, or {"worker", "load_error"} when the model
    cannot be loaded here. Risks are rounded as the cache stores them.
    """
    from mamview.core.models.base import ExamTensors, round_risks

    where = _worker_address()
    try:
        model, dev, label = _worker_model(entry, ident, device)
    except Exception as exc:  # noqa: BLE001 - answered as a result: the client decides
        return {"worker": where, "load_error": _describe(exc)}
    folder = tempfile.mkdtemp(prefix="mamview-dask-") if send_bytes else None  # mode 700
    try:
        results: list[list] = []
        todo = []  # (index in results, tensors)
        for n, (exam_key, rows, blobs) in enumerate(items):
            try:
                if folder is not None:
                    rows = _private_copies(folder, n, rows, blobs)
                views = [load_view(r, getattr(model, "decode_min_height", None)) for r in rows]
                todo.append((len(results), model.preprocess(views)))
                results.append([exam_key, "ok", None])
            except (Unscorable, PixelDecodeError) as exc:
                results.append([exam_key, "unscorable", unscorable_reason(exc)])
            except _PASS_THROUGH:
                raise
            except BaseException as exc:  # noqa: BLE001 - one bad exam never stops the others
                results.append([exam_key, "failed", _describe(exc)])
        if todo:
            try:
                batch = ExamTensors.collate([t for _, t in todo]).to(dev)
                risks = round_risks(model.predict(batch))
                for (i, _), risk in zip(todo, risks):
                    results[i][2] = [float(x) for x in risk]
            except _PASS_THROUGH:
                raise
            except BaseException as exc:  # noqa: BLE001 - the batch fails, the task answers
                for i, _ in todo:
                    results[i][1:] = ["failed", _describe(exc)]
        return {"worker": where, "device": label, "exams": results}
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------- in this process


@dataclass
class _Item:
    """One exam on its way through the cluster."""

    gen: int
    exam_key: str
    priority: int
    key: str = ""  # the score's cache key
    rows: list | None = None  # its inputs, from exam_inputs
    blobs: list | None = None  # the files' bytes (send_bytes)
    alone: bool = False  # sent as the only task on the cluster, after its task's workers died


def _read_bytes(path: str) -> bytes:
    """A regular file's bytes, up to the decode limit (the worker checks them again)."""
    from mamview.core.dicom import limits

    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("not a regular file")
    cap = limits.current().max_file_bytes
    if info.st_size > cap:
        raise ValueError(f"the file is {info.st_size:,} bytes (max_file_bytes {cap:,})")
    with open(path, "rb") as f:
        return f.read(cap + 1)


class ClusterService(ScoringRequests):
    """Scores exams on a Dask cluster; the events of `InferenceService`.

    `address`: a scheduler ('tcp://host:8786') or 'local' (a cluster of `n_workers` processes
    on 127.0.0.1, closed by `shutdown`). `device` is each worker's ('auto': its GPU if any).
    `resources` is asked of the scheduler for every task (e.g. {'GPU': 1}: only workers
    started with `--resources GPU=1` take them). Raises ClusterError when the cluster cannot
    be used.
    """

    def __init__(self, lib, entry, address: str, *, device: str = "auto", batch_size: int = 4,
                 include_out_of_domain: bool = False, send_bytes: bool = False,
                 n_workers: int = LOCAL_WORKERS, resources: dict | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, worker_wait: float = WORKER_WAIT,
                 stall_timeout: float = STALL_TIMEOUT,
                 allowed_failures: int = ALLOWED_FAILURES):
        distributed = _distributed()
        self.database = lib.database
        self.entry = entry
        self.identity = self._identity(entry)
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.include_out_of_domain = bool(include_out_of_domain)
        self.send_bytes = bool(send_bytes)
        self.resources = dict(resources) if resources else None
        self.worker_wait = float(worker_wait)
        self.stall_timeout = float(stall_timeout)
        self._init_requests()  # heap entries: (priority, seq, generation, _Item)
        self.cluster = None
        self.client = None
        try:
            if address == LOCAL:
                self.cluster = self._local_cluster(distributed, n_workers, allowed_failures)
                address = self.cluster.scheduler_address
            self.client = self._connect(distributed, address, connect_timeout)
            threads = self._wait_for_workers(address)
        except BaseException:
            self._close()
            raise
        self.address = address
        self._workers = len(threads)
        self._threads = sum(threads.values())
        self._devices: dict[str, str] = {}  # worker address → its device, from its results
        self.device_label = self._label()
        self._token = uuid.uuid4().hex[:8]  # task keys unique across clients and runs
        self._thread = threading.Thread(target=self._run_reported, name="mamview-cluster",
                                        daemon=True)
        # dispatcher thread only
        self._inflight: dict = {}  # future → [_Item]
        self._forming: list[_Item] = []  # planned, not yet sent
        self._retry: list[list[_Item]] = []  # tasks to send again (one exam each)
        self._done: queue.Queue = queue.Queue()  # finished futures, from their callbacks

    # -- connecting

    @staticmethod
    def _identity(entry):
        from mamview.core.models.identity import ModelIdentity
        from mamview.core.models.registry import read_identity

        if not entry.available:
            raise ClusterError(f"model {entry.model_id!r} is unavailable: {entry.reason}")
        try:  # as the model loader reads it, so a worker's model compares equal
            return ModelIdentity.from_dict(read_identity(entry.folder / "config.json"))
        except (OSError, ValueError, TypeError) as exc:
            raise ClusterError(f"model {entry.model_id!r}: {_describe(exc)}") from exc

    @staticmethod
    def _local_cluster(distributed, n_workers: int, allowed_failures: int):
        import dask

        conf = {"distributed.scheduler.allowed-failures": max(0, int(allowed_failures))}
        try:
            with dask.config.set(conf):
                return distributed.LocalCluster(
                    host="127.0.0.1", processes=True, n_workers=max(1, int(n_workers)),
                    threads_per_worker=1, dashboard_address=None)
        except Exception as exc:  # noqa: BLE001 - e.g. no free port, a worker that cannot start
            raise ClusterError(f"cannot start a local Dask cluster: {_describe(exc)}") from exc

    @staticmethod
    def _connect(distributed, address: str, timeout: float):
        try:
            return distributed.Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {one_line(address)} "
                               f"within {timeout:g} s") from exc
        except Exception as exc:  # noqa: BLE001 - e.g. not an address at all
            raise ClusterError(f"cannot use the Dask scheduler {one_line(address)!r}: "
                               f"{_describe(exc)}") from exc

    def _wait_for_workers(self, address: str) -> dict:
        try:
            self.client.wait_for_workers(1, timeout=self.worker_wait)
            return self.client.nthreads(callback_timeout=self.worker_wait)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"no Dask worker joined the scheduler at {one_line(address)} "
                               f"within {self.worker_wait:g} s") from exc

    def _label(self) -> str:
        n = self._workers
        text = f"Dask cluster {self.address}, {n} worker{'s' if n != 1 else ''}"
        if self._devices:
            counts = Counter(self._devices.values())
            text += " (" + ", ".join(f"{d} ×{k}" for d, k in sorted(counts.items())) + ")"
        return text

    # -- public API (any thread)

    def start(self) -> "ClusterService":
        """Start the dispatcher thread (idempotent)."""
        with self._cv:
            if not self._started:
                self._started = True
                self._thread.start()
        return self

    def submit(self, exam_keys: Sequence[str], priority: int = PRIORITY_BACKGROUND,
               include_out_of_domain: bool | None = None) -> int:
        """Queue exams for scoring; returns the request's generation id (as the service)."""
        gen = next_generation()
        with self._cv:
            stopped, failure = self._stop, self._failure
            if not stopped:
                if include_out_of_domain is not None:
                    self._include[gen] = bool(include_out_of_domain)
                if exam_keys:
                    self._pending[gen] = [0, len(exam_keys)]
                for ek in exam_keys:
                    self._push(priority, gen, _Item(gen, ek, priority))
                self._cv.notify()
        if stopped:
            self._deliver(ServiceError(failure or "the cluster service was shut down"))
            return gen
        if not exam_keys:
            self._deliver(GenerationDone(gen))
        self.start()
        return gen

    STOPPED = "the cluster service stopped"

    def _stopped_message(self) -> str:
        return self._failure or self.STOPPED

    def shutdown(self, timeout: float | None = 30) -> None:
        """Stop: queued exams are dropped, tasks out are cancelled, a local cluster closed."""
        self._stop_requests()
        if self._started:
            self._thread.join(timeout)
        self._close()

    def _close(self) -> None:
        import logging

        # a worker that imported torch takes a few seconds to exit: Dask then kills it, as
        # it should, and says so in a warning that only worries the user of our own cluster
        nanny_log = logging.getLogger("distributed.nanny")
        level = nanny_log.level
        if self.cluster is not None:
            nanny_log.setLevel(logging.ERROR)
        try:
            for closing in (self.client, self.cluster):
                if closing is not None:
                    try:
                        closing.close(timeout=10)
                    except Exception:  # noqa: BLE001 - shutting down: nothing left to tell
                        pass
        finally:
            nanny_log.setLevel(level)
        self.client = self.cluster = None

    # -- events

    def _answer(self, item: _Item, ev: Event) -> None:
        """Deliver one exam's outcome and count it for its request."""
        self._deliver(ev)
        self._advance(item.gen)

    def _scored(self, item: _Item, risk, cached: bool, domain: str, mapping: str) -> None:
        ident = self.identity
        self._answer(item, ExamScored(item.gen, item.exam_key, tuple(float(x) for x in risk),
                                      ident.model_id, ident.label, cached, domain, mapping))

    # -- the dispatcher thread

    def _run_reported(self) -> None:
        reason = "it ended"
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported below, then the thread ends
            reason = _describe(exc)
            traceback.print_exc()
        finally:
            with self._cv:
                self._ended = True
                stopping = self._stop
            if not stopping:
                self._fail(f"the cluster dispatcher stopped: {reason}")

    def _run(self) -> None:
        db = connect(self.database, migrate=False)
        try:
            now = time.monotonic()
            self._last_result = self._last_check = self._last_contact = now
            self._no_worker_since = None
            while not self._stopping():
                self._plan(db)
                if not self._inflight:
                    with self._cv:
                        if not self._heap and not self._stop:
                            self._cv.wait(_POLL)
                    continue
                done = self._done_futures()
                for future in done:
                    items = self._inflight.pop(future, None)
                    if items is not None:  # None: a failure of the whole run took it
                        self._finished(db, future, items)
                if done:
                    self._last_result = time.monotonic()
                self._check_cluster()
        finally:
            self._inflight.clear()  # releases the futures: the scheduler forgets them
            db.close()

    def _done_futures(self) -> list:
        """The futures out that have finished (waiting at most _POLL for the first)."""
        done = []
        try:
            done.append(self._done.get(timeout=_POLL))
            while True:
                done.append(self._done.get_nowait())
        except queue.Empty:
            pass
        return [f for f in done if f in self._inflight]

    def _stopping(self) -> bool:
        with self._cv:
            return self._stop

    def _max_in_flight(self) -> int:
        # enough to keep every worker thread busy; with the bytes in the tasks, barely
        threads = max(1, self._threads)
        return threads + 1 if self.send_bytes else 2 * threads

    def _plan(self, db) -> None:
        """Answer what the cache knows, and send tasks while there is room."""
        if self._retry:
            # exams whose task's workers died go again one at a time, each the only task on
            # the cluster, so that a death is the exam's own (a task queued on a worker that
            # another exam killed dies with it); new work waits, workers dying is rare
            if not self._inflight:
                task = self._retry.pop(0)
                for it in task:
                    it.alone = True
                self._send(task)
            return
        planned = 0
        while len(self._inflight) < self._max_in_flight() and planned < _PLAN_CHUNK:
            with self._cv:
                item = heapq.heappop(self._heap)[3] if self._heap and not self._stop else None
                include = self._include.get(item.gen, self.include_out_of_domain) if item else 0
            if item is None:
                break
            planned += 1
            if item.gen in self._cancelled:
                continue
            if self._plan_one(db, item, include):
                self._forming.append(item)
            if len(self._forming) >= self.batch_size:
                self._send(self._forming)
                self._forming = []
        with self._cv:
            nothing_queued = not self._heap
        if self._forming and nothing_queued and len(self._inflight) < self._max_in_flight():
            self._send(self._forming)
            self._forming = []

    def _plan_one(self, db, item: _Item, include: bool) -> bool:
        """Plan one exam with the service's `plan_exam`; True when it needs the cluster."""
        try:
            hit, rows, item.key = plan_exam(db, self.identity, item.exam_key, include)
            if hit is not None:
                self._scored(item, hit["risk"], True, hit.get("domain") or "",
                             hit.get("view_mapping") or "")
                return False
            item.rows = rows
            if self.send_bytes:
                item.blobs = [self._file_bytes(r) for r in rows]
            return True
        except (Unscorable, PixelDecodeError) as exc:
            self._unscorable(db, item, unscorable_reason(exc), isinstance(exc, OutsideDomain))
        except _PASS_THROUGH:
            raise
        except BaseException as exc:  # noqa: BLE001 - one bad exam never stops the others
            self._answer(item, ScoreFailed(item.gen, item.exam_key, _describe(exc)))
        return False

    @staticmethod
    def _file_bytes(row: dict) -> bytes:
        try:
            return _read_bytes(row["path"])
        except Exception as exc:  # noqa: BLE001 - this exam cannot be read: unscorable
            raise PixelDecodeError(row["path"], f"{row.get('label') or 'image'}: cannot read "
                                   f"the file: {_describe(exc)}") from exc

    def _unscorable(self, db, item: _Item, reason: str, outside: bool = False) -> None:
        # the service's own row (same key, same reason), so a rerun finds the same refusal
        save_unscorable(db, self.identity, item.exam_key, reason, outside)
        self._answer(item, ExamUnscorable(item.gen, item.exam_key, reason))

    def _send(self, items: list[_Item]) -> None:
        if self.send_bytes:  # a task sent again: its bytes were let go after the first send
            for it in items:
                if it.blobs is None:
                    try:
                        it.blobs = [self._file_bytes(r) for r in it.rows]
                    except PixelDecodeError as exc:
                        self._answer(it, ScoreFailed(it.gen, it.exam_key, exc.message))
            items = [it for it in items if it.blobs is not None]
            if not items:
                return
        payload = [(it.exam_key, it.rows, it.blobs) for it in items]
        priority = -min(it.priority for it in items)  # Dask runs higher numbers first
        try:
            future = self.client.submit(
                score_on_worker, self.entry, self.identity, self.device, payload,
                self.send_bytes, key=f"mamview-score-{self._token}-{next(self._seq)}",
                pure=False, retries=0, priority=priority, resources=self.resources)
        except Exception as exc:  # noqa: BLE001 - e.g. the client lost its scheduler
            for it in items:
                self._answer(it, ScoreFailed(it.gen, it.exam_key,
                                             f"could not send to the cluster: {_describe(exc)}"))
            return
        for it in items:
            it.blobs = None  # sent: the bytes need not stay here too
        if not self._inflight:
            self._last_result = time.monotonic()  # the stall clock starts now
        self._inflight[future] = items
        future.add_done_callback(self._done.put)  # on Dask's thread: a thread-safe queue

    def _finished(self, db, future, items: list[_Item]) -> None:
        """Store and answer one task's results (or its failure)."""
        if future.status == "finished":
            try:
                result = future.result(timeout=60)
            except Exception as exc:  # noqa: BLE001 - e.g. the result could not be fetched
                result = {"error": _describe(exc)}
            if not isinstance(result, dict):
                result = {"error": "the worker returned no result of ours"}
            if "load_error" in result:
                self._fail(f"the model could not be loaded on Dask worker "
                           f"{one_line(result.get('worker'))}: "
                           f"{one_line(result['load_error'])}", items)
                return
            if isinstance(result.get("exams"), list):
                self._store(db, items, result)
                return
            message = one_line(result.get("error") or "the worker returned no result of ours")
        else:
            exc = self._exception(future)
            if self._is_killed_worker(exc):
                # find the exam that kills workers: each again, alone on the cluster
                if len(items) > 1 or not items[0].alone:
                    for it in items:
                        self._retry.append([it])
                    return
                n = exc.allowed_failures + 1
                message = (f"every Dask worker that ran it died ({n} time{'s' if n != 1 else ''}"
                           f", the last {exc.last_worker.address})")
            else:
                message = (f"the cluster dropped the task: {future.status}" if exc is None
                           else _describe(exc))
        for it in items:
            self._answer(it, ScoreFailed(it.gen, it.exam_key, message))

    @staticmethod
    def _exception(future):
        try:
            return future.exception(timeout=10)
        except Exception:  # noqa: BLE001 - cancelled or lost: no exception to fetch
            return None

    @staticmethod
    def _is_killed_worker(exc) -> bool:
        from distributed.scheduler import KilledWorker

        return isinstance(exc, KilledWorker)

    def _store(self, db, items: list[_Item], result: dict) -> None:
        """Save a task's scores in one transaction, its refusals as the service does, and
        answer every exam of the task (a worker's answer is checked, never trusted)."""
        by_key = {it.exam_key: it for it in items}
        worker, label = one_line(result.get("worker", "")), one_line(result.get("device", ""))
        if label:
            self._devices[worker] = label
            self.device_label = self._label()
        stored = f"{label} on Dask worker {_host(worker)}"
        ok, refused = [], []
        for answer in result["exams"]:
            exam_key, status, value = _checked(answer)
            it = by_key.pop(exam_key, None)
            if it is None:
                continue
            if status == "ok":
                ok.append((it, value))
            elif status == "unscorable":
                refused.append((it, value))
            else:
                self._answer(it, ScoreFailed(it.gen, it.exam_key, value))
        ident = self.identity
        if ok:
            writes.save_scores(db, [
                score_row(ident, it.key, it.exam_key, stored,
                          [r["sop_instance_uid"] for r in it.rows], "ok", "", risk,
                          inputs_domain(it.rows), view_mapping(it.rows))
                for it, risk in ok])
            for it, risk in ok:
                self._scored(it, risk, False, inputs_domain(it.rows), view_mapping(it.rows))
        for it, reason in refused:
            self._unscorable(db, it, reason)
        for it in by_key.values():  # a result that forgot an exam still answers it
            self._answer(it, ScoreFailed(it.gen, it.exam_key, "the worker returned no result"))

    def _check_cluster(self) -> None:
        """Fail the run when no worker is left, the scheduler is gone, or nothing finishes
        (each for longer than its bound)."""
        now = time.monotonic()
        if now - self._last_check < _CHECK_EVERY:
            return
        self._last_check = now
        try:
            threads = self.client.nthreads(callback_timeout=_CHECK_EVERY * 2)
        except Exception as exc:  # noqa: BLE001 - unreachable, closed, timed out
            if now - self._last_contact > self.worker_wait:
                self._fail(f"lost the Dask scheduler at {self.address}: {_describe(exc)}")
            return
        self._last_contact = now
        if threads:
            self._no_worker_since = None
            self._threads = sum(threads.values())
            if len(threads) != self._workers:
                self._workers = len(threads)
                self.device_label = self._label()
        elif self._no_worker_since is None:
            self._no_worker_since = now
        elif now - self._no_worker_since > self.worker_wait:
            self._fail(f"no Dask worker has been connected to {self.address} for "
                       f"{self.worker_wait:g} s")
            return
        if self._inflight and now - self._last_result > self.stall_timeout:
            self._fail(f"no result from the Dask cluster at {self.address} in "
                       f"{self.stall_timeout:g} s")

    def _fail(self, message: str, also: Sequence[_Item] = ()) -> None:
        """The run cannot go on: every exam out gets a ScoreFailed, then a ServiceError; later
        requests are told the same."""
        out = list(also) + [it for items in self._inflight.values() for it in items]
        out += self._forming + [it for items in self._retry for it in items]
        self._inflight.clear()
        self._forming, self._retry = [], []
        for it in out:
            self._answer(it, ScoreFailed(it.gen, it.exam_key, message))
        with self._cv:
            self._stop, self._failure = True, message
            self._heap.clear()
            self._pending.clear()
        self._deliver(ServiceError(message))


def _checked(answer) -> tuple[str, str, object]:
    """(exam key, status, value) of one exam's answer from a worker: 'ok' with five finite
    risk fractions, 'unscorable' or 'failed' with a one-line reason; anything else 'failed'."""
    try:
        exam_key, status, value = answer
    except (TypeError, ValueError):
        return "", "failed", ""
    exam_key = exam_key if isinstance(exam_key, str) else ""
    if status == "ok":
        try:
            risk = [float(x) for x in value]
        except (TypeError, ValueError):
            risk = []
        if len(risk) == 5 and all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in risk):
            return exam_key, "ok", risk
        return exam_key, "failed", "the worker returned risks that are not five fractions"
    if status in ("unscorable", "failed"):
        return exam_key, status, one_line(value)
    return exam_key, "failed", "the worker returned an answer of no known kind"


def _host(address: str) -> str:
    """'tcp://10.0.0.5:40123' → '10.0.0.5'."""
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest
