"""The single place where background work hands results to the GUI thread.

Workers (the import generator, full-resolution decodes, the inference service's thread) never
touch a widget: they call `Bridge.post…`, which emits a Qt signal. The Bridge lives in the GUI
thread, so Qt queues each emission and the connected slots run there.

It is also the single place where stale score results are dropped: in the GUI thread, before
`scoreEvent` is emitted, it asks the reading session (`core.session.ReadingSession.wants`)
whether the event's request is still live. A result of a cancelled, superseded or finished
request, or of a service since replaced, never reaches a widget.
"""

from __future__ import annotations

import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal


class Bridge(QObject):
    """Signals that carry worker events into the GUI thread."""

    importEvent = Signal(object)  # core.ingest Progress / ProblemFound
    importFinished = Signal(object)  # ImportSummary, or an Exception when the import failed
    scoreEvent = Signal(object)  # core.inference events the session still wants
    _scoreArrived = Signal(object)  # every score event, on its way to the GUI thread
    nodeEvent = Signal(object)  # core.net.scp node events (on the node's threads)
    taskProgress = Signal(str)  # one status line from a running task (e.g. fetch-priors)
    taskDone = Signal(object, object, object)  # callback, result, error (run_task)

    def __init__(self, parent: QObject | None = None, session=None):
        super().__init__(parent)
        self.session = session  # asked `wants(event)`; None: every score event passes
        self.dropped_score_events = 0
        # queued even when posted from the GUI thread itself (a service may emit inside
        # `submit`): the session then knows the request's id before its events are judged
        self._scoreArrived.connect(self._deliver_score, Qt.ConnectionType.QueuedConnection)
        # decodes and other short tasks; one import at a time runs on its own thread
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mamview-task")
        self._import_thread: threading.Thread | None = None
        self._import_cancel: threading.Event | None = None
        self.taskDone.connect(self._deliver)

    # -- inference service callback (called on the service's worker thread)

    def post_score_event(self, event) -> None:
        """`on_event` for the inference services (any thread): re-emitted as `scoreEvent` in
        the GUI thread if the session still wants it."""
        self._scoreArrived.emit(event)

    def _deliver_score(self, event) -> None:
        # judged here, on the GUI thread, where the session's live requests are kept
        if self.session is not None and not self.session.wants(event):
            self.dropped_score_events += 1
            return
        self.scoreEvent.emit(event)

    def post_task_progress(self, text: str) -> None:
        """A running task's progress line (from any thread), re-emitted in the GUI thread."""
        self.taskProgress.emit(text)

    def post_node_event(self, event) -> None:
        """`on_event` for core.net.StorageNode: re-emit in the GUI thread."""
        self.nodeEvent.emit(event)

    # -- short tasks

    def run_task(self, fn: Callable[[], object], on_done: Callable[[object, Exception | None], None]) -> None:
        """Run `fn()` on a worker; `on_done(result, error)` is called later on the GUI thread."""
        def work():
            try:
                result, error = fn(), None
            except Exception as exc:  # noqa: BLE001 - delivered, never lost in the thread
                result, error = None, exc
            self.taskDone.emit(on_done, result, error)

        self._pool.submit(work)

    def _deliver(self, on_done, result, error) -> None:
        on_done(result, error)

    # -- import

    def import_running(self) -> bool:
        return self._import_thread is not None and self._import_thread.is_alive()

    def start_import(self, make_generator: Callable[[threading.Event], object]) -> bool:
        """Drive an import-style generator (events, then a return value) on a worker thread.

        `make_generator(cancel)` is called on the worker. Returns False if one is already running.
        """
        if self.import_running():
            return False
        cancel = threading.Event()

        def work():
            try:
                gen = make_generator(cancel)
                while True:
                    try:
                        ev = next(gen)
                    except StopIteration as stop:
                        self.importFinished.emit(stop.value)
                        return
                    self.importEvent.emit(ev)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                self.importFinished.emit(exc)

        self._import_cancel = cancel
        self._import_thread = threading.Thread(target=work, name="mamview-import", daemon=True)
        self._import_thread.start()
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the import (after its current file) and the task pool."""
        if self._import_cancel is not None:
            self._import_cancel.set()
        if self._import_thread is not None:
            self._import_thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
