"""Full-resolution decodes for the viewer, in a separate process.

The JPEG 2000 decoders hold Python's GIL for the whole decode (measured: up to 3.4 s for a
3328×2560 image on this machine), which would freeze the window. A one-process pool (spawned,
so no Qt state is forked) does the decode and render; the GUI's worker thread only waits on it.
This module imports no Qt: the child process loads only the core display pipeline.
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
    """Decode an original at full resolution and render it for the hanging (uint8)."""
    from mamview.core.dicom import display, pixels

    ds = pixels.read_dataset(path)
    params = display.display_params(ds)
    image, _ = display.render(pixels.decode_full(ds), params, preset=preset_index or 0)
    return image


def render_full_elsewhere(path: str, preset_index: int | None, timeout: float = 300) -> np.ndarray:
    """`render_full` in the decode process (started on first use); falls back to this process
    if the pool cannot run (e.g. the platform forbids child processes)."""
    global _pool
    try:
        with _lock:
            if _pool is None:
                _pool = ProcessPoolExecutor(max_workers=1,
                                            mp_context=multiprocessing.get_context("spawn"))
            pool = _pool
        return pool.submit(render_full, path, preset_index).result(timeout)
    except (BrokenProcessPool, OSError, RuntimeError):
        with _lock:
            _pool = None
        return render_full(path, preset_index)


def shutdown() -> None:
    """Stop the decode process (at window close)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
