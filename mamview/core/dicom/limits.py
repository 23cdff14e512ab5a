"""Caps on what one DICOM object may make us allocate, checked from the header before decoding.

Why these defaults (each admits every real mammogram and tomosynthesis object and refuses headers
that would ask for gigabytes):

- `max_side` 16384 and `max_frame_pixels` 8192² (64 Mpixel, 128 MiB at 16 bits): the largest
  full-field detectors are about 5900×4700 (28 Mpixel, 50 µm); a 4096×3328 16-bit image is 27 MB.
  A frame at the cap decodes to 128 MiB and renders within about 1 GiB.
- `max_frames` 1000 and `max_pixel_bytes` 4 GiB (rows × columns × frames × bytes, declared): a
  breast tomosynthesis object is up to ~150 frames of ~3300×2600 (2–3 GB). Only frame 1 is ever
  read and decoded, so this bounds the claim, not our memory; 4 GiB is also the most one native
  Pixel Data element can hold (32-bit length).
- `max_inflated_bytes` 512 MiB: Deflated Explicit VR is used for small objects (SR, presentation
  states, the odd CR or MG); the dataset is inflated in memory, so this bounds memory (about twice
  it while parsing); a deflated 2-D mammogram is ~30–60 MB once inflated.
- `max_file_bytes` 4 GiB: the largest object a 32-bit Pixel Data length allows, headers included.
- `max_decode_process_bytes` 4 GiB: the address-space limit (RLIMIT_AS) of the child process that
  decodes full-resolution images for the viewer; Python, numpy and the codec libraries map about
  1 GiB of address space before the first pixel.

Each cap can be changed with an environment variable (MAMVIEW_MAX_…, see `env_name`), read when
`current()` is called.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, fields
from typing import BinaryIO

from mamview.core.errors import LimitExceeded


@dataclass(frozen=True)
class DecodeLimits:
    """Caps for one object; sizes in pixels or bytes."""

    max_side: int = 16384  # rows or columns
    max_frame_pixels: int = 8192 * 8192  # rows × columns of one frame
    max_frames: int = 1000
    max_pixel_bytes: int = 4 * 1024**3  # rows × columns × frames × bytes per sample, declared
    max_inflated_bytes: int = 512 * 1024**2  # a deflated dataset once inflated
    max_file_bytes: int = 4 * 1024**3  # read at all
    max_decode_process_bytes: int = 4 * 1024**3  # address space of the full-resolution decoder


_ENV = {f.name: "MAMVIEW_" + f.name.upper() for f in fields(DecodeLimits)}


def env_name(cap: str) -> str:
    """The environment variable that overrides a cap, e.g. MAMVIEW_MAX_SIDE for "max_side"."""
    return _ENV[cap]


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


def inflate_stream(f: BinaryIO, keep: int, limit: int, what: str = "deflated data",
                   chunk: int = 1024**2) -> tuple[bytes, int, bool]:
    """Inflate the raw-deflate stream read from `f` in chunks: (its first `keep` inflated bytes,
    its inflated size, whether it ended properly). Only `keep` bytes are ever held, so a deflate
    bomb costs the time to inflate `limit` bytes but no memory; LimitExceeded past `limit`."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    head = bytearray()
    total = 0
    while not d.eof:
        data = f.read(chunk)
        if not data:
            break
        while data and not d.eof:
            out = d.decompress(data, chunk)
            data = d.unconsumed_tail
            total += len(out)
            if total > limit:
                raise LimitExceeded(f"{what} inflates to more than {limit:,} bytes "
                                    f"({env_name('max_inflated_bytes')})")
            if len(head) < keep:
                head += out[: keep - len(head)]
    return bytes(head), total, d.eof


def inflate_bounded(data: bytes, limit: int, what: str = "deflated data") -> bytes:
    """Inflate raw-deflate `data` (DICOM deflated transfer syntax), refusing more than `limit` bytes.

    The size is counted first (`inflate_stream`, nothing kept), so a deflate bomb costs no
    memory; data within the cap is then inflated for real.
    """
    inflate_stream(io.BytesIO(data), 0, limit, what)
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data)
