"""Caps on what one DICOM object may make us allocate, checked from the header before decoding.

The defaults admit every real mammogram and tomosynthesis object (a 4096×3328 16-bit image is
27 MB; a breast tomosynthesis object is up to ~100 frames of ~2500×2000) and refuse headers that
would ask for gigabytes. Each cap can be changed with an environment variable (MAMVIEW_MAX_…),
read when `current()` is called.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, fields

from mamview.core.errors import LimitExceeded


@dataclass(frozen=True)
class DecodeLimits:
    """Caps for one object; sizes in pixels or bytes."""

    max_side: int = 16384  # rows or columns
    max_frame_pixels: int = 8192 * 8192  # rows × columns of one frame
    max_frames: int = 1000
    max_pixel_bytes: int = 2 * 1024**3  # rows × columns × frames × bytes per sample, declared
    max_inflated_bytes: int = 1024**3  # a deflated dataset once inflated
    max_file_bytes: int = 4 * 1024**3  # read at all


_ENV = {f.name: "MAMVIEW_" + f.name.upper() for f in fields(DecodeLimits)}


def current() -> DecodeLimits:
    """The caps in force: the defaults, each overridable by its MAMVIEW_MAX_… variable."""
    values = {}
    for name, var in _ENV.items():
        raw = os.environ.get(var)
        if raw:
            try:
                values[name] = int(raw)
            except ValueError:
                pass  # a malformed override keeps the default
    return DecodeLimits(**values)


def inflate_bounded(data: bytes, limit: int, what: str = "deflated data") -> bytes:
    """Inflate raw-deflate `data` (DICOM deflated transfer syntax), refusing more than `limit` bytes."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    out = d.decompress(data, limit + 1)
    if len(out) <= limit and not d.unconsumed_tail:
        out += d.flush()
    if len(out) > limit or d.unconsumed_tail:
        raise LimitExceeded(f"{what} inflates to more than {limit:,} bytes")
    return out
