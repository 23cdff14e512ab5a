"""Bounds on what one release may make us read, allocate, execute-in-the-unpickler and walk.

Every cap is checked *before* the allocation or work it bounds; each can be changed with its
MAMVIEW_MODEL_<NAME> variable. `Budget` is what one file may still spend. Torch-free.
"""

from __future__ import annotations

import os
import reprlib
import time
from dataclasses import dataclass, fields
from typing import Any

from mamview.core.errors import LimitExceeded
from mamview.core.safety import printable

MIB = 1024 ** 2


@dataclass(frozen=True)
class SnapshotLimits:
    """Caps checked *before* allocating; each can be changed with MAMVIEW_MODEL_<NAME>.

    The official files are about 45 MB (encoder), 9 MB (transformer) and a few KB (calibrator);
    their object pickles (module tree + training args) are well under 1 MB (the weights fill
    the rest), i.e. under ~500 k opcodes. The defaults leave a wide margin for re-saved or
    float64 copies while keeping the worst case (≈3 copies of the largest file during conversion) well under 2 GB.
    """

    max_file_bytes: int = 256 * MIB  # one release file (5× the official encoder)
    max_release_bytes: int = 512 * MIB  # the three files together, or the release zip
    max_zip_members: int = 10_000  # entries in one zip (a release zip has a handful)
    max_zip_directory_bytes: int = 4 * MIB  # central directory, read before any entry
    max_zip_ratio: int = 100  # uncompressed / compressed, for members over 1 MiB
    # Opcodes per file (all its pickles together): ≥ 4× what the official object pickles need,
    # and 2 M of the costliest (an empty set each) stay around 500 MB.
    max_pickle_ops: int = 2_000_000
    max_pickle_calls: int = 500_000  # objects built by REDUCE / NEWOBJ / BUILD / INST / OBJ
    max_memo: int = 1_000_000  # memo entries per pickle
    max_items: int = 32_000_000  # elements/bytes all calls of a file may be handed or expand
    # (range(n), bytes(n), tuple(list), _codecs.encode(str) …): repeated copies of one big
    # memoised value would otherwise multiply memory without more opcodes
    max_depth: int = 200  # nesting of tuples while loading, of anything we walk afterwards
    max_walk: int = 200_000  # nodes visited reading values out of the loaded objects (~10 k)
    max_entries: int = 10_000  # entries looked at when searching a release folder
    max_folder_depth: int = 8  # folder levels searched below the release folder
    max_seconds: float = 120.0  # wall time for reading one release (the official one: ~seconds)


LIMIT_ENV = {f.name: "MAMVIEW_MODEL_" + f.name.upper() for f in fields(SnapshotLimits)}


def current_limits() -> SnapshotLimits:
    """The caps in force: defaults, each overridable by its MAMVIEW_MODEL_… variable."""
    values: dict[str, Any] = {}
    for f in fields(SnapshotLimits):
        raw = os.environ.get(LIMIT_ENV[f.name])
        if raw:
            try:
                values[f.name] = type(f.default)(raw)
            except ValueError:
                pass  # a malformed override keeps the default
    return SnapshotLimits(**values)


def over(what: str, value: Any, cap: Any, name: str) -> LimitExceeded:
    return LimitExceeded(f"{what}: {value:,} is over the limit of {cap:,} "
                         f"(set {LIMIT_ENV[name]} to change it)")


class Budget:
    """What one file may still spend: opcodes, calls, walk nodes, and a deadline."""

    def __init__(self, limits: SnapshotLimits, where: str, deadline: float | None = None):
        self.limits = limits
        self.where = where
        self.ops = 0
        self.calls = 0
        self.items = 0  # elements handed to calls
        self.walked = 0
        self.deadline = deadline if deadline is not None else time.monotonic() + limits.max_seconds

    def check_time(self) -> None:
        """Refuse once the wall-time budget of the release is spent."""
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"{self.where}: reading took longer than "
                                f"{self.limits.max_seconds:g} s (set "
                                f"{LIMIT_ENV['max_seconds']} to change it)")

    def walk(self, n: int = 1) -> None:
        """Count `n` nodes visited while reading values out of the loaded objects."""
        self.walked += n
        if self.walked > self.limits.max_walk:
            raise over(f"{self.where}: values visited", self.walked, self.limits.max_walk,
                       "max_walk")


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 60
_short_repr.maxlevel = 3


def exc_text(exc: BaseException) -> str:
    """A bounded text for an exception a hostile file provoked. Not str(exc): a KeyError's
    str() is the repr of its key, which may be a huge shared structure."""
    if isinstance(exc, OSError) or not exc.args:
        return short(str(exc) if exc.args else "")
    first = exc.args[0]
    return short(first) if not isinstance(first, str) else printable(first[:200])


def short(value: Any) -> str:
    """A bounded one-line repr of a value read from a file (for messages)."""
    try:
        return printable(_short_repr.repr(value))
    except Exception:  # a hostile object may make repr fail: name its type only
        return f"<{type(value).__name__}>"
