"""The inference service: one worker thread that scores exams and caches the results.

Requests carry a generation id, unique for the life of the process (`generations`), so a new
service after a model or device change never reuses an old one's. A cancelled generation's
queued exams are dropped and, once `cancel` returns, no event carries its id. The patient on
screen goes first (a priority queue). Results, progress and errors come out as events, through
a callback or a queue; the worker never touches a widget and never lets an exception die
silently in the thread.

Images are decoded through the guarded boundary (`dicom.pixels`): a decoder failure, a native
panic included, makes that exam unscorable with the reason. So does an image that is not
plausibly a mammogram (`check_plausible`), and one whose images are outside the model's
validated domain (digitised film, CR, lossy, For Processing, synthetic 2D) unless the service
or the request includes them: such a score then records the domain, and its cache key says
so. An ML stands in for a missing MLO, as in Mirai's own code; the score records the mapping.
If the worker thread ends anyway, a ServiceError
event says so (after a ScoreFailed for each exam it was scoring), `next_event` never waits on
a dead worker, and the next `submit` starts a new worker (a few times at most; then every
later request is told with a ServiceError, as after a model that cannot be loaded).

`decode_workers` (0 by default: decoding in the worker thread) hands decoding and the model's
preprocessing up to normalisation to spawned processes (`pipeline`: None sizes them to the
machine), so that the next batches decode while the model computes this one; the answers,
the stored rows and every guarantee above are the same. `precision` ('bf16', 'fp16': autocast
on CUDA only; fp32 elsewhere) is for benchmarks: such scores are labelled and keyed apart.
`timings()` says where the time went.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mamview.core.cache import keys, reads, writes
from mamview.core.services import default_cpu_threads
from mamview.core.cache.db import connect
from mamview.core.dicom.pixels import PixelDecodeError, describe as _describe
from mamview.core.domain import domain_reason, join_domain
# the events live in `events`; callers have always imported them from here too
from mamview.core.services.events import (  # noqa: F401
    Event, ExamScored, ExamUnscorable, GenerationDone, ScoreFailed, ScoreProgress, ServiceError)
from mamview.core.services.generations import next_generation
from mamview.core.services.requests import ScoringRequests

PRIORITY_ON_SCREEN = 0
PRIORITY_BACKGROUND = 10
# Real mammograms are 1900–5900 pixels a side; an image with a side under this is a thumbnail,
# a placeholder or garbage, never something a risk model should score.
MIN_SIDE = 256
# How often a worker thread that died is replaced before the service gives up.
MAX_RESTARTS = 3
# Suffix of the unscorable key of an exam refused for its domain (so that including the domain
# later finds no refusal), and the mark of a score computed from out-of-domain inputs.
OUT_OF_DOMAIN_KEY = ":outside-domain"
DOMAIN_KEY_MARK = ":domain="
# Exceptions that stop the worker instead of being reported per exam.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
# Autocast precisions on CUDA (fp32: none; on other devices always fp32), and the mark of the
# cache key of a score computed in reduced precision.
PRECISIONS = {"fp32": lambda: None, "bf16": lambda: _torch_dtype("bfloat16"),
              "fp16": lambda: _torch_dtype("float16")}
PRECISION_KEY_MARK = ":autocast="
# What InferenceService.timings() adds up (seconds; `exams`: exams computed).
TIMINGS = ("plan", "decode", "wait", "collate", "model", "write", "exams")


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# ---------------------------------------------------------------- loading one exam


class Unscorable(Exception):
    """An exam that cannot be scored; the message is the reason shown to the user."""


def exam_inputs(db, exam_key: str, include_out_of_domain: bool = False) -> list[dict]:
    """The four images a model reads, in RCC, LCC, RMLO, LMLO order (`slot` names the one each
    fills; an ML may fill an MLO's, see `reads.slot_candidates`): `reads.choose_inputs` of the
    exam's images.

    Raises Unscorable with the reason when a view is missing or unusable, or, unless
    `include_out_of_domain`, outside the model's validated domain.
    """
    chosen, reason = reads.choose_inputs(reads.exam_images(db, exam_key), include_out_of_domain)
    if chosen is None:
        raise Unscorable(reason)
    return chosen


def inputs_domain(rows: Sequence[dict]) -> str:
    """The domain categories of a model's inputs ('' when all are inside)."""
    return join_domain(reads.image_domain(r) for r in rows)


def view_mapping(rows: Sequence[dict]) -> str:
    """Views used for others among the inputs: 'RML→RMLO, LML→LMLO' ('' when none)."""
    return ", ".join(f"{r['label']}→{r['slot']}" for r in rows
                     if r.get("slot") and r["label"] != r["slot"])


def score_key(ident, rows: Sequence[dict]) -> str:
    """The cache key of a score of these inputs: a score of out-of-domain inputs has its own
    (it never collides with, nor is taken for, one of inputs inside the domain)."""
    key = keys.cache_key(ident, input_signature(rows))
    domain = inputs_domain(rows)
    return key + DOMAIN_KEY_MARK + domain if domain else key


def load_view(row: dict, min_height: int | None):
    """Decode one image for a model: modality LUT applied, MONOCHROME1 turned into
    MONOCHROME2 (as the reference dcmtk conversion does), reduced decode when allowed.

    Raises PixelDecodeError when the file cannot be decoded (any decoder failure) and
    Unscorable when the image is not plausibly a mammogram (`check_plausible`).
    """
    from mamview.core.dicom import display, pixels
    from mamview.core.models.base import ViewImage

    path = row["path"]
    label = str(row.get("label") or row.get("view") or "image")
    with pixels.guarded(path, "cannot load the image for scoring"):
        ds = pixels.read_dataset(path)
        params = display.display_params(ds)
    check_shape(ds, label)  # before decoding: a 1×1 image is not worth a decode
    if not params.rescale_finite:
        raise Unscorable(f"{label}: RescaleSlope or RescaleIntercept is not a finite number")
    try:
        with pixels.guarded(path, "cannot load the image for scoring"):
            if min_height:
                arr, _ = pixels.decode_reduced(ds, min_height)
            else:
                arr = pixels.decode_full(ds)
            arr = display.apply_modality(arr, params).astype(np.float64)
    except pixels.PixelDecodeError as exc:  # say which view (the reason is shown per exam)
        raise pixels.PixelDecodeError(path, f"{label}: {exc.message}") from exc
    check_plausible(arr, label)
    if params.photometric == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    voi = str(getattr(ds, "VOILUTFunction", "LINEAR") or "LINEAR").upper()
    return ViewImage(arr, row["laterality"], row["view"],
                     "SIGMOID" if voi == "SIGMOID" else "LINEAR")


def check_shape(ds, label: str) -> None:
    """Unscorable when the header's image has a side under MIN_SIDE pixels (before decoding)."""
    try:
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception:  # noqa: BLE001 - a malformed value is no size at all
        rows = cols = 0
    if min(rows, cols) < MIN_SIDE:
        raise Unscorable(f"{label}: the image is {rows}×{cols} pixels, too small for a "
                         f"mammogram (a side under {MIN_SIDE})")


def check_plausible(values: np.ndarray, label: str) -> None:
    """Unscorable when modality values are not finite or the image is constant."""
    if not np.isfinite(values).all():
        raise Unscorable(f"{label}: the image has non-finite values after the modality LUT")
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise Unscorable(f"{label}: the image is constant (every pixel {low:g})")


def input_signature(rows: Sequence[dict]) -> list[tuple[str, int, int]]:
    """(SOP UID, size, mtime) of each input, for the score cache key."""
    return [(r["sop_instance_uid"], r["size"], r["mtime_ns"]) for r in rows]


def score_row(ident, key: str, exam_key: str, device: str, uids: list[str], status: str,
               reason: str, risk: list[float], domain: str = "", mapping: str = "") -> dict:
    """A scores-table row with the model's full provenance, the domain of its inputs and the
    views used for others."""
    return {
        "cache_key": key, "exam_key": exam_key, "model_id": ident.model_id,
        "model_version": ident.version, "weights_sha256": ident.weights_sha256,
        "calibrator": f"{ident.calibrator_id}:{ident.calibrator_sha256}",
        "preprocessing_version": ident.preprocessing_version, "device": device,
        "input_uids": uids, "status": status, "reason": reason, "risk": risk,
        "domain": domain, "view_mapping": mapping,
    }


class OutsideDomain(Unscorable):
    """The exam's inputs are outside the model's validated domain and were not asked for."""


def plan_exam(db, ident, exam_key: str, include_out_of_domain: bool, key_mark: str = ""
              ) -> tuple[dict | None, list[dict], str]:
    """What scoring one exam takes: (its stored current 'ok' score or None, its input rows,
    its cache key). `key_mark` is appended to the key (a reduced-precision run's own mark).

    Raises OutsideDomain when its inputs are outside the domain and not included, Unscorable
    when it cannot be scored (the reason is the message).
    """
    rows = exam_inputs(db, exam_key, include_out_of_domain=True)
    domain = inputs_domain(rows)
    if domain and not include_out_of_domain:
        raise OutsideDomain(domain_reason(domain))
    key = score_key(ident, rows) + key_mark
    hit = reads.score_by_key(db, key)
    return (hit if hit and hit["status"] == "ok" else None), rows, key


def unscorable_reason(exc: Exception) -> str:
    """The reason stored and shown for an Unscorable or a PixelDecodeError."""
    return exc.message if isinstance(exc, PixelDecodeError) else str(exc)


def save_unscorable(db, ident, exam_key: str, reason: str, outside_domain: bool = False) -> None:
    """Store that an exam cannot be scored (a refusal for the domain under its own key)."""
    images = reads.exam_images(db, exam_key)
    uids = sorted(r["sop_instance_uid"] for r in images)
    key = keys.unscorable_key(
        ident, [(r["sop_instance_uid"], r["size"], r["mtime_ns"]) for r in images])
    key += OUT_OF_DOMAIN_KEY if outside_domain else ""
    writes.save_scores(db, [score_row(ident, key, exam_key, "", uids, "unscorable", reason, [])])


# ---------------------------------------------------------------- the service


class InferenceService(ScoringRequests):
    """One background worker that scores exams with one model.

    `model_loader(device)` builds the RiskModel on the worker thread (so a slow load never
    blocks the caller). Events go to `on_event` (called on the worker thread: a GUI must hop
    to its own thread) or, without a callback, to the `events` queue.

    `include_out_of_domain` scores exams whose images are outside the model's validated domain
    (each request may say otherwise, see `submit`); without it they are unscorable, with the
    reason stored.

    Generation ids come from the process-wide counter. After `cancel(gen)` returns no event
    with that id is delivered (a batch already running is still saved to the cache); its
    GenerationDone never comes. An empty request gets its GenerationDone at once.
    """

    def __init__(
        self,
        database: str | os.PathLike,
        model_loader: Callable[[object], object],
        *,
        device: str = "auto",
        batch_size: int = 4,
        cpu_threads: int | None = None,
        on_event: Callable[[Event], None] | None = None,
        include_out_of_domain: bool = False,
        decode_workers: int | None = 0,
        precision: str = "fp32",
    ):
        self.database = Path(database)
        # decode processes of the pipelined scorer (None: sized to the machine; 0: in-thread)
        self.decode_workers = decode_workers
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        self.precision = precision
        self._key_mark = ""  # a reduced-precision run's scores have keys of their own
        self._timing_lock = threading.Lock()
        self._timings = dict.fromkeys(TIMINGS, 0.0)
        self.include_out_of_domain = bool(include_out_of_domain)
        self._loader = model_loader
        self._device_pref = device
        self.batch_size = max(1, batch_size)
        # leave a core to the GUI thread when running on the CPU
        self.cpu_threads = cpu_threads or default_cpu_threads()
        self._init_requests(on_event)  # heap entries: (priority, seq, generation, exam key)
        self.model = None
        self.device = None
        self.device_label = ""
        self._thread = self._new_thread()
        self._restarts = 0
        self._answered: set[int] = set()  # worker only: indices of the batch answered so far
        self._pipeline = None  # the pipelined scorer while it runs (decode_workers != 0)
        self._death = ""  # how the last worker thread ended, when it died

    # -- public API (any thread)

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run_reported, name="mamview-inference", daemon=True)

    def start(self) -> "InferenceService":
        """Start the worker thread (idempotent); a worker that died is replaced, at most
        MAX_RESTARTS times (then the ServiceError it reported stands)."""
        with self._cv:
            if not self._started:
                self._started = True
                self._thread.start()
            elif self._ended and self._can_restart():
                self._restarts += 1
                self._ended = False
                self._thread = self._new_thread()
                self._thread.start()
        return self

    def _can_restart(self) -> bool:
        """Whether an ended worker may be replaced (with _cv held)."""
        return not self._stop and self.model is not None and self._restarts < MAX_RESTARTS

    STOPPED = "the inference worker stopped"

    def submit(self, exam_keys: Sequence[str], priority: int = PRIORITY_BACKGROUND,
               include_out_of_domain: bool | None = None) -> int:
        """Queue exams for scoring; returns the request's generation id (unique in this
        process). `include_out_of_domain` (None: the service's) scores images outside the
        model's validated domain. After `shutdown` nothing is queued."""
        gen = next_generation()
        with self._cv:
            stopped, failure = self._stop, self._failure
            if include_out_of_domain is not None:
                self._include[gen] = bool(include_out_of_domain)
            if not stopped:
                if exam_keys:
                    self._pending[gen] = [0, len(exam_keys)]
                for ek in exam_keys:
                    self._push(priority, gen, ek)
                self._cv.notify()
        if stopped:
            if failure:  # say so again rather than leave the caller waiting
                self._deliver(ServiceError(failure))
            return gen
        if not exam_keys:
            self._deliver(GenerationDone(gen))
        self.start()
        if not self.alive():  # a worker that died too often is not replaced again
            with self._cv:
                self._drop(gen)
                failure = self._failure or self._death
            self._deliver(ServiceError(failure or "the inference worker stopped"))
        return gen

    def shutdown(self, timeout: float | None = 30) -> None:
        """Stop after the batch in progress; queued work is dropped."""
        self._stop_requests()
        if self._started:
            self._thread.join(timeout)

    def pipeline_state(self) -> dict:
        """The pipelined scorer now: decode process pid → exams it holds (`workers`),
        `max_in_flight`, and `peak_in_flight` (the most exams taken from the queue and not
        yet answered at once); {} when it is not running (decode_workers=0, or not started)."""
        pipe = self._pipeline
        if pipe is None:
            return {}
        pool = pipe.pool
        return {"workers": pool.pids() if pool is not None else {},
                "max_in_flight": pipe.max_in_flight, "peak_in_flight": pipe.peak_in_flight}

    def idle(self) -> bool:
        """True when nothing is queued or running."""
        with self._cv:
            return not self._heap and not any(d < t for d, t in self._pending.values())

    # -- worker thread

    def _next_batch(self) -> list[tuple[int, str]]:
        with self._cv:
            while not self._heap and not self._stop:
                self._cv.wait()
            if self._stop:
                return []
            batch = []
            while self._heap and len(batch) < self.batch_size:
                _, _, gen, ek = heapq.heappop(self._heap)
                if gen not in self._cancelled:
                    batch.append((gen, ek))
            return batch

    def _take(self) -> tuple[int, int, int, str] | None:
        """The next queued exam (priority, order, generation, exam key), or None (pipeline)."""
        with self._cv:
            while self._heap and not self._stop:
                item = heapq.heappop(self._heap)
                if item[2] not in self._cancelled:
                    return item
            return None

    def _put_back(self, item: tuple[int, int, int, str]) -> None:
        """Queue an exam again in its old place (its decode process died before it began)."""
        with self._cv:
            if not self._stop and item[2] in self._pending:
                heapq.heappush(self._heap, item)

    def _wait_for_work(self) -> bool:
        """Wait until an exam is queued; False once the service stops (pipeline)."""
        with self._cv:
            while not self._heap and not self._stop:
                self._cv.wait()
            return not self._stop

    def _run_reported(self) -> None:
        """The worker: `_run`, and a ServiceError if it ends for any reason but a shutdown."""
        reason = "it ended"
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported below, then the thread ends
            reason = _describe(exc)
            traceback.print_exc()
        finally:
            message = f"the inference worker stopped: {reason}"
            with self._cv:
                self._ended = True
                stopping = self._stop
                self._death = message
                if not self._can_restart():  # no worker will ever take the queued exams
                    self._heap.clear()
                    self._pending.clear()
            if not stopping:
                self._deliver(ServiceError(message))

    def _run(self) -> None:
        if self.model is not None:  # a restarted worker: the model is already loaded
            self._serve()
            return
        try:
            import torch

            from mamview.core.models.device import describe_device, select_device

            self.device = select_device(self._device_pref)
            if self.device.type == "cpu":
                torch.set_num_threads(self.cpu_threads)
            self.device_label = describe_device(self.device)
            model = self._loader(self.device)
            if self.precision != "fp32" and self.device.type == "cuda":
                # opt-in (bench): bf16 moves some risks in the 4th decimal, so such scores are
                # labelled and keyed apart and never pass for fp32 ones
                model.autocast_dtype = PRECISIONS[self.precision]()
                self.device_label += f", {self.precision} autocast"
                self._key_mark = f"{PRECISION_KEY_MARK}{self.precision}"
            self.model = model
        except Exception as exc:  # noqa: BLE001 - reported as an event, never lost in the thread
            self._fail(f"the model could not be loaded: {exc}")
            return
        self._serve()

    def _serve(self) -> None:
        try:
            db = connect(self.database, migrate=False)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable library
            self._fail(f"the library cannot be opened: {_describe(exc)}")
            return
        try:
            workers = self.decode_workers
            # the model's class must say how it preprocesses (a wrapper that changes
            # `preprocess` and forwards the rest is decoded here, through its own)
            if workers != 0 and getattr(type(self.model), "preprocess_spec", None) is not None:
                from mamview.core.services.pipeline import Pipeline

                Pipeline(self, db, workers).run()
                return
            while True:
                batch = self._next_batch()
                if not batch:
                    return
                self._answered = set()
                try:
                    self._score_batch(db, batch)
                except BaseException as exc:  # noqa: BLE001 - native panics too: the batch fails
                    # every exam of the batch gets its answer, even from a worker that dies
                    for i, (gen, ek) in enumerate(batch):
                        if i not in self._answered:
                            self._answer(i, gen, ScoreFailed(gen, ek, _describe(exc)))
                    if isinstance(exc, _PASS_THROUGH):
                        raise
                    traceback.print_exc()
        finally:
            db.close()

    def _fail(self, message: str) -> None:
        """The service cannot score at all: say why, now and to every later request."""
        with self._cv:
            self._stop, self._failure = True, message
            self._heap.clear()
            self._pending.clear()
        self._deliver(ServiceError(message))

    def _answer(self, index: int, gen: int, ev: Event) -> None:
        """Deliver the result for exam `index` of the batch and count it for its request."""
        self._answered.add(index)
        self._reply(gen, ev)

    def _reply(self, gen: int, ev: Event) -> None:
        """Deliver the result for one exam and count it for its request."""
        self._deliver(ev)
        self._advance(gen)

    def _score_batch(self, db, batch: list[tuple[int, str]]) -> None:
        from mamview.core.models.base import ExamTensors, round_risks

        model = self.model
        todo = []  # (index, gen, exam_key, cache_key, rows, tensors)
        for i, (gen, ek) in enumerate(batch):
            if gen in self._cancelled:
                self._answered.add(i)  # nobody waits for it
                continue
            try:
                t0 = time.perf_counter()
                plan = self._plan(db, gen, ek, lambda ev, i=i: self._answer(i, ev.generation, ev))
                self._time("plan", t0)
                if plan is None:
                    continue
                key, rows = plan
                t0 = time.perf_counter()
                views = [load_view(r, getattr(model, "decode_min_height", None)) for r in rows]
                todo.append((i, gen, ek, key, rows, model.preprocess(views)))
                self._time("decode", t0)
            except (Unscorable, PixelDecodeError) as exc:
                self._unscorable(db, gen, ek, exc, lambda ev, i=i: self._answer(i, gen, ev))
            except _PASS_THROUGH:
                raise
            except BaseException as exc:  # noqa: BLE001 - one bad exam never stops the others
                self._answer(i, gen, ScoreFailed(gen, ek, _describe(exc)))
        if not todo:
            return
        t0 = time.perf_counter()
        risks = model.predict(ExamTensors.collate([t[5] for t in todo]).to(self.device))
        risks = round_risks(risks)
        self._time("model", t0)
        done = self.save_computed(db, [(gen, ek, key, rows) for _, gen, ek, key, rows, _ in todo],
                                  risks)
        for (i, gen, _, _, _, _), ev in zip(todo, done):
            self._answer(i, gen, ev)

    # -- shared by the in-thread and the pipelined scorer (worker thread only)

    def _plan(self, db, gen: int, ek: str, answer) -> tuple[str, list[dict]] | None:
        """(cache key, input rows) of an exam to compute, or None when it was answered here
        (a cache hit, or unscorable: stored). Raises what `plan_exam` raises but Unscorable."""
        ident = self.model.identity
        include = self._include.get(gen, self.include_out_of_domain)
        try:
            hit, rows, key = plan_exam(db, ident, ek, include, self._key_mark)
        except Unscorable as exc:
            self._unscorable(db, gen, ek, exc, answer)
            return None
        if hit is not None:
            answer(ExamScored(gen, ek, tuple(hit["risk"]), ident.model_id, ident.label, True,
                              hit.get("domain") or "", hit.get("view_mapping") or ""))
            return None
        return key, rows

    def _unscorable(self, db, gen: int, ek: str, exc: Exception, answer) -> None:
        reason = unscorable_reason(exc)
        save_unscorable(db, self.model.identity, ek, reason, isinstance(exc, OutsideDomain))
        answer(ExamUnscorable(gen, ek, reason))

    def save_computed(self, db, exams: Sequence[tuple[int, str, str, list[dict]]],
                      risks) -> list[ExamScored]:
        """Store the rounded risks of (generation, exam key, cache key, input rows) in one
        transaction; the ExamScored events to deliver, in the same order."""
        ident = self.model.identity
        t0 = time.perf_counter()
        writes.save_scores(db, [
            score_row(ident, key, ek, self.device_label,
                      [r["sop_instance_uid"] for r in rows], "ok", "", list(risk),
                      inputs_domain(rows), view_mapping(rows))
            for (_, ek, key, rows), risk in zip(exams, risks)
        ])
        self._time("write", t0)
        with self._timing_lock:
            self._timings["exams"] += len(exams)
        return [ExamScored(gen, ek, tuple(float(x) for x in risk), ident.model_id, ident.label,
                           False, inputs_domain(rows), view_mapping(rows))
                for (gen, ek, _, rows), risk in zip(exams, risks)]

    def _time(self, what: str, since: float) -> None:
        with self._timing_lock:
            self._timings[what] += time.perf_counter() - since

    def timings(self) -> dict[str, float]:
        """Seconds spent so far (see the module docstring), and `exams` computed."""
        with self._timing_lock:
            return dict(self._timings)
