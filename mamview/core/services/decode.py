"""Full-resolution decodes for the viewer, in a separate process with a memory limit.

The JPEG 2000 decoders hold Python's GIL for the whole decode (measured: up to 3.4 s for a
3328×2560 image on this machine), which would freeze the window. One spawned child (no Qt
state is forked) does the decode and render; the GUI's worker thread only waits on its pipe.

The child is also where a hostile file can do least harm: its address space is capped
(RLIMIT_AS, `limits.max_decode_process_bytes`), so a decoder that allocates without bound gets a
MemoryError (a PixelDecodeError) or dies alone. A child that dies or runs past the timeout
becomes a PixelDecodeError for that file and the next decode starts a fresh child; the failing
file is never retried in the window's own process. This module imports no Qt: the child process
loads only the core display pipeline.

A plain Process and Pipe rather than a ProcessPoolExecutor: when a pool's child is killed while
it sends a result, the pool's manager thread blocks in recv for good and, being non-daemon,
holds up the interpreter's exit (seen as a hung test run). Here the child is a daemon and every
wait is a poll with a deadline.
"""

from __future__ import annotations

import multiprocessing
import threading

import numpy as np

_lock = threading.Lock()


def render_full(path: str, preset_index: int | None) -> np.ndarray:
    """Decode an original at full resolution and render it for the hanging (uint8).

    Runs inside the decode boundary: for bad input it raises only PixelDecodeError.
    """
    from mamview.core.dicom import display, pixels

    with pixels.guarded(path, "cannot show the image at full resolution"):
        ds = pixels.read_dataset(path)
        params = display.display_params(ds)
        image, _ = display.render(pixels.decode_full(ds), params, preset=preset_index or 0)
        return image


def limit_memory(max_bytes: int | None = None) -> None:
    """Cap this process's address space (RLIMIT_AS) at `max_bytes` (default: the decode cap).

    Called in the decode child when it starts; a platform without the limit keeps going.
    """
    try:
        import resource
    except ImportError:  # not on Windows
        return
    from mamview.core.dicom import limits

    cap = max_bytes if max_bytes is not None else limits.current().max_decode_process_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass  # a lower limit is already in force


class DecodeChildDied(Exception):
    """The decode child ended (killed, crashed) before it answered."""


class DecodeTimedOut(Exception):
    """The decode child did not answer in time (not an OSError, unlike TimeoutError)."""


def pipe_requests(conn):
    """The requests a child process reads from its parent's pipe, one at a time, until the
    parent sends None or goes away (the pipe closes)."""
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # the parent has gone
        if request is None:
            return
        yield request


def _child_main(conn) -> None:
    """The decode child: capped memory, then one (path, preset) request at a time."""
    limit_memory()
    for path, preset_index in pipe_requests(conn):
        try:
            answer = ("ok", render_full(path, preset_index))
        except Exception as exc:  # noqa: BLE001 - PixelDecodeError (or anything) goes back as a value
            answer = ("error", exc)
        try:
            conn.send(answer)
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle: its text
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Child:
    """One decode child process and our end of its pipe."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, theirs = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_child_main, args=(theirs,), daemon=True,
                                name="mamview-decode")
        self.proc.start()
        theirs.close()  # only the child holds its end: its death is EOF here

    def ask(self, path: str, preset_index: int | None, timeout: float):
        """Send one request and wait at most `timeout` s for the answer."""
        try:
            self.conn.send((path, preset_index))
            ready = self.conn.poll(timeout)
            if ready:
                return self.conn.recv()
        except (EOFError, OSError) as exc:
            raise DecodeChildDied from exc
        raise DecodeTimedOut

    def kill(self) -> None:
        """End the child now (a decode has nothing to save) and close our end."""
        try:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(5)
        finally:
            self.conn.close()


_child: _Child | None = None
_epoch = 0  # bumped by shutdown(): a decode begun before it does not start a new child


def _discard_child() -> None:
    global _child
    child, _child = _child, None
    if child is not None:
        child.kill()


def render_full_elsewhere(path: str, preset_index: int | None, timeout: float = 300) -> np.ndarray:
    """`render_full` in the decode process (started on first use).

    A child that dies while decoding (twice: once may be a child that died earlier, while idle),
    or takes longer than `timeout` seconds, gives a PixelDecodeError for this file. Only if no
    child process can be started at all (e.g. the platform forbids them) does the decode run in
    this process.
    """
    from mamview.core.dicom.pixels import PixelDecodeError

    global _child
    epoch = _epoch
    with _lock:  # one decode at a time, as the single child can do
        # two tries: a child that died while idle (e.g. killed for memory) is noticed only by
        # the next decode; a file that kills a fresh child as well is the file's fault
        for attempt in range(2):
            if _child is None:
                try:
                    _child = _Child()
                except (OSError, RuntimeError):  # cannot start a child: decode here, as before
                    return render_full(path, preset_index)
            try:
                kind, value = _child.ask(path, preset_index, timeout)
            except DecodeChildDied as exc:
                _discard_child()
                if attempt or epoch != _epoch:
                    raise PixelDecodeError(path, "the decoder process died while decoding this "
                                                 "file") from exc
                continue
            except DecodeTimedOut as exc:
                _discard_child()
                raise PixelDecodeError(path, f"decoding took longer than {timeout:g} s") from exc
            if kind == "error":
                raise value if isinstance(value, PixelDecodeError) else PixelDecodeError(
                    path, f"cannot show the image at full resolution: {value}")
            return value
    raise AssertionError("unreachable")


def child_pid() -> int | None:
    """The decode child's process id, if one runs (for tests and diagnostics)."""
    child = _child
    return child.proc.pid if child is not None and child.proc.is_alive() else None


def shutdown() -> None:
    """Stop the decode process (at window close). It is killed: a decode has nothing to save,
    and a child stuck in a decoder would otherwise hold up this process's exit. A decode
    waiting on it ends with a PixelDecodeError and does not start another child."""
    global _epoch
    _epoch += 1
    _discard_child()
