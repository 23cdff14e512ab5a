"""What every scoring service shares with the callers it serves: requests queued by priority
under a generation id, progress and GenerationDone per request, cancellation after which no
event of that generation is delivered, and a `next_event` that never waits on a dead worker.

`InferenceService` (one worker thread, this machine) and `ClusterService` (a dispatcher thread,
a Dask cluster) differ in how they score; the request bookkeeping is this one class, so their
event guarantees cannot drift apart. Heap entries are (priority, sequence, generation, item).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
from typing import Callable

from mamview.core.services.events import Event, GenerationDone, ScoreProgress, ServiceError


class ScoringRequests:
    """Base of the scoring services: the request state and its event delivery.

    A subclass calls `_init_requests` in its constructor and sets `_thread`; it keeps `_ended`
    true once that thread's work has returned or raised.
    """

    #: the ServiceError of `next_event` once the thread has ended and nothing is left
    STOPPED = "the scoring service stopped"

    def _init_requests(self, emit: Callable[[Event], None] | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self._emit = emit or self.events.put
        self._heap: list[tuple] = []  # (priority, sequence, generation, item)
        self._cv = threading.Condition()
        self._seq = itertools.count()
        # held while an event is delivered and by cancel(): an event of a generation is either
        # delivered before cancel returns or not at all. Never taken while holding _cv.
        self._emit_lock = threading.RLock()
        self._cancelled: set[int] = set()
        self._pending: dict[int, list[int]] = {}  # generation → [done, total]
        self._include: dict[int, bool] = {}  # generation → its own include_out_of_domain
        self._stop = False
        self._failure = ""  # why the service cannot score at all, once it knows
        self._started = False
        self._ended = False

    def _push(self, priority: int, generation: int, item) -> None:
        """Queue one item of a request (with _cv held)."""
        heapq.heappush(self._heap, (priority, next(self._seq), generation, item))

    # -- public API (any thread)

    def alive(self) -> bool:
        """True while the service's thread runs (or has not been started yet); False as soon
        as it has ended, before the thread is quite gone."""
        return not self._started or (self._thread.is_alive() and not self._ended)

    def next_event(self, timeout: float | None = None, poll: float = 0.5) -> Event:
        """The next event from the `events` queue, waiting at most `timeout` seconds (None:
        as long as the service's thread lives). Never waits on a dead thread: once it has
        ended and the queue is empty, a ServiceError. queue.Empty after `timeout`.
        """
        waited = 0.0
        while True:
            step = poll if timeout is None else max(0.0, min(poll, timeout - waited))
            try:
                return self.events.get(timeout=step)
            except queue.Empty:
                waited += poll
                if not self.alive() and self.events.empty():
                    return ServiceError(self._stopped_message())
                if timeout is not None and waited >= timeout:
                    raise

    def _stopped_message(self) -> str:
        return self.STOPPED

    def cancel(self, generation: int) -> None:
        """Drop the not-yet-scored exams of a request (e.g. the user switched patients);
        once this returns, no event carries `generation`."""
        with self._emit_lock, self._cv:
            self._cancelled.add(generation)
            self._drop(generation)

    def _drop(self, generation: int) -> None:
        """Forget a request's queued exams (with _cv held)."""
        self._pending.pop(generation, None)
        self._include.pop(generation, None)
        self._heap = [entry for entry in self._heap if entry[2] != generation]
        heapq.heapify(self._heap)

    def _stop_requests(self) -> None:
        """Take no more work: queued exams are dropped, the thread is woken to end."""
        with self._cv:
            self._stop = True
            self._heap.clear()
            self._pending.clear()
            self._cv.notify()

    # -- delivery (the service's thread, mostly)

    def _deliver(self, ev: Event) -> None:
        """Hand one event to the callback or queue, unless its generation was cancelled."""
        gen = getattr(ev, "generation", None)
        with self._emit_lock:
            if gen is not None and gen in self._cancelled:
                return
            self._emit(ev)

    def _advance(self, gen: int) -> None:
        """Count one answered exam of request `gen`: its progress, and GenerationDone after
        the last."""
        with self._cv:
            counts = self._pending.get(gen)
            if counts is None:
                return
            counts[0] += 1
            done, total = counts
            if done >= total:
                del self._pending[gen]
                self._include.pop(gen, None)
        self._deliver(ScoreProgress(gen, done, total))
        if done >= total:
            self._deliver(GenerationDone(gen))
