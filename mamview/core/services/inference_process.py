"""The inference service in a child process, behind the calls the window makes on
core.inference.InferenceService (submit, cancel, idle, shutdown, device_label).

Why a process: the image decoders and parts of the model hold Python's GIL for 80–100 ms at a
time (seconds for a full-size JPEG 2000 decode), and a GIL-holding worker thread freezes the
GUI thread for as long. In a child process the window's event loop never waits on it. Events
come back over a queue; a relay thread hands them to `on_event` (the Bridge), exactly like the
in-process service's callback. This module imports no Qt (the child imports it too).

Generation ids are this (the parent) process's (`generations.next_generation`), so they stay
unique when the window replaces the process; the child's own service numbers its requests
itself and the child maps them back before an event leaves it. A dead child is noticed by the
relay (a ServiceError); no wait on it is unbounded, and nothing it left unread holds up exit.
The child decodes in processes of its own when the machine has cores to spare
(`gui_decode_workers`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import threading
import traceback
from typing import Callable, Sequence

from mamview.core.services.generations import next_generation

_READY = "ready"


def gui_decode_workers(cores: int | None = None) -> int:
    """Decode processes for the window's scoring child: none on a machine of two cores or
    fewer, one above. With two cores the window keeps one and the child's other does decode
    then model in turn, as before: a decode process would make three busy processes share two
    cores (the window's included) and start 2–3 s late (spawn + torch import), delaying the
    first on-screen score for little gain, since one worker only overlaps one decode with the
    (small) forward. With more cores it takes decoding, the slow half, off the scoring thread."""
    from mamview.core.services.pipeline import available_cores

    return 0 if (cores if cores is not None else available_cores()) <= 2 else 1


def _child(database: str, home: str, model_id: str, device: str, cpu_threads: int | None,
           commands, events, include_out_of_domain: bool = False,
           decode_workers: int = 0) -> None:
    """Child process: run an InferenceService and translate generation ids both ways."""
    from pathlib import Path

    from mamview.core.services.inference import InferenceService
    from mamview.core.models import registry
    from mamview.core.paths import Library

    # the worker can answer a request before svc.submit has returned its id here: such events
    # wait in `early` until the mapping is known. The lock is never held while calling svc
    # (the worker holds the service's delivery lock while it calls on_event).
    lock = threading.Lock()
    to_parent: dict[int, int] = {}
    to_child: dict[int, int] = {}
    early: dict[int, list] = {}

    def on_event(ev) -> None:
        gen = getattr(ev, "generation", None)
        with lock:
            if gen is not None:
                if gen not in to_parent:
                    early.setdefault(gen, []).append(ev)
                    return
                ev = dataclasses.replace(ev, generation=to_parent[gen])
            events.put(ev)

    def loader(dev):
        model = registry.load(registry.resolve(Library(Path(home)), model_id), dev)
        return model

    svc = InferenceService(database, loader, device=device, cpu_threads=cpu_threads,
                           on_event=on_event, include_out_of_domain=include_out_of_domain,
                           decode_workers=decode_workers).start()

    def announce() -> None:  # tell the parent the device once the model is in memory
        while svc.model is None and not svc._stop and svc.alive():
            threading.Event().wait(0.05)
        if svc.model is not None:
            events.put((_READY, svc.device_label))

    threading.Thread(target=announce, daemon=True).start()
    parent = multiprocessing.parent_process()
    while True:
        try:
            cmd = commands.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                cmd = ("stop",)  # the window died without saying goodbye: do not linger
            else:
                continue
        if cmd[0] == "submit":
            _, pgen, keys, priority, include = cmd
            if not keys:  # the parent answers empty requests itself
                continue
            cgen = svc.submit(keys, priority, include)
            with lock:
                to_parent[cgen], to_child[pgen] = pgen, cgen
                for ev in early.pop(cgen, ()):
                    events.put(dataclasses.replace(ev, generation=pgen))
        elif cmd[0] == "cancel":
            with lock:
                cgen = to_child.get(cmd[1])
            if cgen is not None:
                svc.cancel(cgen)
        else:  # stop
            svc.shutdown(timeout=30)
            events.put(None)
            return


class InferenceProcess:
    """Drop-in for InferenceService as the window uses it, running in a spawned process."""

    def __init__(self, database, home, model_id: str, *, device: str = "auto",
                 cpu_threads: int | None = None, on_event: Callable[[object], None],
                 include_out_of_domain: bool = False, decode_workers: int | None = None):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs Qt
        self._commands = ctx.Queue()
        self._events = ctx.Queue()
        self.cpu_threads = cpu_threads or max(1, (os.cpu_count() or 2) - 1)
        # the child's decode processes (None: `gui_decode_workers` for this machine)
        self.decode_workers = (gui_decode_workers() if decode_workers is None
                               else max(0, decode_workers))
        self._proc = ctx.Process(
            target=_child, name="mamview-inference",
            args=(str(database), str(home), model_id, device, self.cpu_threads, self._commands,
                  self._events, bool(include_out_of_domain), self.decode_workers), daemon=True)
        self.include_out_of_domain = bool(include_out_of_domain)
        self._emit = on_event
        self._open: set[int] = set()
        self._cancelled: set[int] = set()
        # held while the relay delivers an event and by cancel(): see InferenceService
        self._lock = threading.RLock()
        self.model = None  # True once the child has loaded its model
        self.device_label = ""
        self._relay = threading.Thread(target=self._relay_events, name="mamview-inference-relay",
                                       daemon=True)
        self._started = False
        self._stopped = False  # no more work will be done: shut down, or the child died
        self._death = ""  # why the child stopped, when it died on its own

    def start(self) -> "InferenceProcess":
        if not self._started:
            self._started = True
            self._proc.start()
            self._relay.start()
        return self

    def submit(self, exam_keys: Sequence[str], priority: int = 10,
               include_out_of_domain: bool | None = None) -> int:
        """Queue exams; returns this process's generation id (events carry it). An empty
        request gets its GenerationDone at once, as in InferenceService; `include_out_of_domain`
        as there (None: the process's)."""
        from mamview.core.services.inference import GenerationDone, ServiceError

        self.start()
        gen = next_generation()
        if self._death:  # the child died earlier: say so rather than wait on it forever
            self._emit(ServiceError(self._death))
        elif not exam_keys:
            self._emit(GenerationDone(gen))
        elif not self._stopped:
            with self._lock:
                self._open.add(gen)
            self._commands.put(("submit", gen, list(exam_keys), priority, include_out_of_domain))
        return gen

    def alive(self) -> bool:
        """True while the child process runs (or has not been started yet)."""
        return not self._started or self._proc.is_alive()

    def cancel(self, generation: int) -> None:
        """Drop a request's queued exams; once this returns, no event carries `generation`."""
        with self._lock:
            self._cancelled.add(generation)
            self._open.discard(generation)
        if not self._stopped:
            self._commands.put(("cancel", generation))

    def idle(self) -> bool:
        """Nothing queued or running that was not cancelled."""
        with self._lock:
            return not self._open

    def shutdown(self, timeout: float | None = 30) -> None:
        """Stop the child after the batch in progress (killed after `timeout` seconds)."""
        if not self._started or self._stopped:
            self._stopped = True
            self._abandon_commands()
            return
        self._stopped = True
        self._commands.put(("stop",))
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._abandon_commands()
        self._events.put(None)
        self._relay.join(5)

    def _abandon_commands(self) -> None:
        """Once the child has ended, nobody reads its command pipe: commands still buffered
        (a large submit fills the pipe) must not make this process wait for them at exit."""
        if self._started and not self._proc.is_alive():
            self._commands.cancel_join_thread()

    def _relay_events(self) -> None:
        from mamview.core.services.inference import GenerationDone, ServiceError

        while True:
            try:
                ev = self._events.get(timeout=1.0)
            except queue.Empty:
                if not self._proc.is_alive() and not self._stopped:
                    with self._lock:
                        self._open.clear()
                    self._stopped = True
                    self._death = f"the inference process stopped (exit code {self._proc.exitcode})"
                    self._abandon_commands()
                    self._deliver(ServiceError(self._death))
                    return
                continue
            if ev is None:
                return
            if isinstance(ev, tuple) and ev and ev[0] == _READY:
                self.device_label, self.model = ev[1], True
                continue
            with self._lock:
                gen = getattr(ev, "generation", None)
                if gen is not None and gen in self._cancelled:
                    continue  # asked for before cancel() and sent on before the child heard it
                if isinstance(ev, GenerationDone):
                    self._open.discard(gen)
                elif isinstance(ev, ServiceError):
                    self._open.clear()
                self._deliver(ev)

    def _deliver(self, ev) -> None:
        """`on_event(ev)`; a callback that raises is reported and the relay goes on."""
        try:
            self._emit(ev)
        except Exception:  # noqa: BLE001 - the relay must outlive a faulty callback
            traceback.print_exc()
