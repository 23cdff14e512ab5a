"""Generation ids: one counter for the whole process.

A request's id must never be handed out again while this process runs: after a model or device
change the window starts a new service, and an id the old one used would make its late results
look current. Every service (in-process or the child-process proxy) draws from here.
"""

from __future__ import annotations

import itertools
import threading

_lock = threading.Lock()
_ids = itertools.count(1)


def next_generation() -> int:
    """A generation id no other request of this process has had (any thread)."""
    with _lock:
        return next(_ids)
