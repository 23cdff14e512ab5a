"""Full-resolution decodes for the viewer, in a separate process with a memory limit.

The JPEG 2000 decoders hold Python's GIL for the whole decode (measured: up to 3.4 s for a
3328×2560 image on this machine), which would freeze the window. A one-process pool (spawned,
so no Qt state is forked) does the decode and render; the GUI's worker thread only waits on it.

The child is also where a hostile file can do least harm: its address space is capped
(RLIMIT_AS, `limits.max_decode_process_bytes`), so a decoder that allocates without bound gets a
MemoryError (a PixelDecodeError) or dies alone. A child that dies or runs past the timeout
becomes a PixelDecodeError for that file and the next decode starts a fresh child; the failing
file is never retried in the window's own process. This module imports no Qt: the child process
loads only the core display pipeline.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


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


def _new_pool() -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=limit_memory)


def _discard_pool(pool: ProcessPoolExecutor | None, kill: bool) -> None:
    """Forget the pool (the next decode starts a new child); kill its process if it hangs."""
    global _pool
    with _lock:
        if _pool is pool:
            _pool = None
    if pool is None:
        return
    if kill:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()  # only our own decode child
    pool.shutdown(wait=False, cancel_futures=True)


def _submit(path: str, preset_index: int | None):
    """(pool, future) of the decode in the child; a pool found broken is replaced once."""
    global _pool
    for _attempt in range(2):
        with _lock:
            if _pool is None:
                _pool = _new_pool()
            pool = _pool
        try:
            return pool, pool.submit(render_full, path, preset_index)
        except BrokenProcessPool:  # its child died earlier: start a new one
            _discard_pool(pool, kill=False)
    raise RuntimeError("the decode process cannot be started")


def render_full_elsewhere(path: str, preset_index: int | None, timeout: float = 300) -> np.ndarray:
    """`render_full` in the decode process (started on first use).

    A child that dies while decoding (twice: once may be a child that died earlier, while idle),
    or takes longer than `timeout` seconds, gives a PixelDecodeError for this file. Only if no
    child process can be started at all (e.g. the platform forbids them) does the decode run in
    this process.
    """
    from mamview.core.dicom.pixels import PixelDecodeError

    # two tries: a child that died while idle (e.g. killed for memory) is noticed only by the
    # next decode; a file that kills a fresh child as well is the file's fault
    for attempt in range(2):
        try:
            pool, future = _submit(path, preset_index)
        except (OSError, RuntimeError):  # cannot start a child: decode here, as before
            return render_full(path, preset_index)
        try:
            return future.result(timeout)
        except BrokenProcessPool as exc:
            _discard_pool(pool, kill=False)
            if attempt:
                raise PixelDecodeError(path, "the decoder process died while decoding this "
                                             "file") from exc
        except TimeoutError as exc:
            _discard_pool(pool, kill=True)
            raise PixelDecodeError(path, f"decoding took longer than {timeout:g} s") from exc
    raise AssertionError("unreachable")


def shutdown() -> None:
    """Stop the decode process (at window close). It is killed: a decode has nothing to save,
    and a child stuck in a decoder would otherwise hold up this process's exit."""
    _discard_pool(_pool, kill=True)
