"""Pixel decoding: full decode through pydicom's decoder plugins, a reduced-resolution decode for
JPEG 2000 (the wavelet codec can stop at a lower resolution level, ~10× faster for previews), and
an area-averaging downsample.

All decode functions return *stored* values (before the modality LUT) of the first frame as a
2-D array, and raise PixelDecodeError with a readable message on any failure.
"""

from __future__ import annotations

import math
import os
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000,
    JPEG2000Lossless,
    RLELossless,
)

# Codecs where pylibjpeg's compiled decoders are preferred over pydicom's other plugins
# (pylibjpeg-rle is ~10× faster than pydicom's numpy RLE decoder; openjpeg is the reference J2K).
_PREFERRED_PLUGIN = {
    RLELossless: "pylibjpeg",
    JPEG2000Lossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
    HTJ2KLossless: "pylibjpeg",
    HTJ2KLosslessRPCL: "pylibjpeg",
    HTJ2K: "pylibjpeg",
}
_REDUCIBLE = (JPEG2000Lossless, JPEG2000)
# ceil(H / 2**r) may go down to this fraction of the wanted height (a 3328-row image asked for
# 1024 rows gives 832 rows rather than 1664): previews stay sharp and the decode stays cheap.
MIN_HEIGHT_SLACK = 0.75


class PixelDecodeError(Exception):
    """Pixel data could not be decoded; `message` says why (and what to install, if that is why)."""

    def __init__(self, path: str | os.PathLike | None, message: str) -> None:
        self.path = str(path) if path is not None else ""
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


# --- reading ------------------------------------------------------------------------------------


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read a whole file (header and pixel bytes) for decoding; PixelDecodeError if unreadable."""
    try:
        return dcmread(path)
    except Exception as exc:
        raise PixelDecodeError(path, f"cannot read the file: {type(exc).__name__}: {exc}") from exc


def _dataset(src: str | os.PathLike | Dataset) -> tuple[Dataset, str]:
    if isinstance(src, Dataset):
        return src, str(getattr(src, "filename", "") or "")
    return read_dataset(src), str(src)


def _transfer_syntax(ds: Dataset, path: str) -> UID:
    ts = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if not ts:
        raise PixelDecodeError(path, "the file has no Transfer Syntax UID")
    return UID(ts)


def _install_hint(ts: UID) -> str:
    """The package that adds a decoder for this transfer syntax."""
    if ts in (JPEG2000Lossless, JPEG2000) or "2000" in ts.name:
        return "pylibjpeg-openjpeg"
    if ts == RLELossless:
        return "pylibjpeg-rle"
    if "JPEG" in ts.name:  # baseline, extended, lossless and JPEG-LS
        return "pylibjpeg-libjpeg"
    return "gdcm"


def _check_decodable(ds: Dataset, ts: UID, path: str) -> None:
    if not any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
        raise PixelDecodeError(path, "the file has no pixel data")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise PixelDecodeError(path, f"expected one sample per pixel, the file has {ds.SamplesPerPixel}")
    try:
        decoder = get_decoder(ts)
    except NotImplementedError as exc:
        raise PixelDecodeError(path, f"transfer syntax {ts.name} ({ts}) is not supported") from exc
    if not decoder.is_available:
        package = _install_hint(ts)
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise PixelDecodeError(
            path,
            f"no decoder for {ts.name} is installed: install {package} (pip install {package}). "
            f"pydicom reports: {missing}",
        )


def _decode_first_frame(ds: Dataset, ts: UID, path: str) -> np.ndarray:
    """Frame 1 through pydicom, trying the preferred plugin first and then all of them."""
    _check_decodable(ds, ts, path)
    decoder = get_decoder(ts)
    plugins = [""]
    preferred = _PREFERRED_PLUGIN.get(ts)
    if preferred and preferred in decoder.available_plugins:
        plugins.insert(0, preferred)
    error: Exception | None = None
    for plugin in plugins:
        try:
            arr = pixel_array(ds, index=0, raw=True, decoding_plugin=plugin)
            break
        except Exception as exc:  # corrupt streams raise many types
            error = exc
    else:
        raise PixelDecodeError(path, f"cannot decode {ts.name} pixel data: {error}") from error
    if arr.ndim != 2:
        raise PixelDecodeError(path, f"expected a 2-D image, decoded shape {arr.shape}")
    return arr


def decode_full(src: str | os.PathLike | Dataset) -> np.ndarray:
    """Decode frame 1 at full resolution: a 2-D array of stored values (before modality LUT).

    `src` is a path or an already read Dataset (with pixel data). Works for every transfer syntax
    that pydicom and the installed plugins support; raises PixelDecodeError otherwise.
    """
    ds, path = _dataset(src)
    return _decode_first_frame(ds, _transfer_syntax(ds, path), path)


# --- reduced resolution -------------------------------------------------------------------------


def reduction_level(height: int, min_height: int, max_level: int | None = None) -> int:
    """Largest r with ceil(height / 2**r) >= min_height * 0.75, capped at `max_level` (0 if none fits)."""
    if height <= 0 or min_height <= 0:
        return 0
    level = 0
    while math.ceil(height / 2 ** (level + 1)) >= min_height * MIN_HEIGHT_SLACK:
        level += 1
        if level > 30:
            break
    return level if max_level is None else max(0, min(level, max_level))


def j2k_decomposition_levels(codestream: bytes) -> int | None:
    """Number of wavelet decomposition levels in a J2K codestream's main header (COD / COC).

    The reduce factor cannot exceed it. None when the codestream does not start as expected.
    """
    if codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    levels: int | None = None
    pos = 2
    while pos + 4 <= len(codestream):
        marker = codestream[pos + 1]
        length = int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        if codestream[pos] != 0xFF or marker == 0x90:  # SOT: the main header has ended
            break
        if marker == 0x52 and pos + 13 <= len(codestream):  # COD: Scod, SGcod (4 bytes), levels
            value = codestream[pos + 9]
            levels = value if levels is None else min(levels, value)
        elif marker == 0x53 and pos + 8 <= len(codestream):  # COC (one component): Ccoc, Scoc, levels
            value = codestream[pos + 6]
            levels = value if levels is None else min(levels, value)
        pos += 2 + length
    return levels


def _j2k_reduced(ds: Dataset, path: str, min_height: int) -> tuple[np.ndarray, int] | None:
    """Reduced decode with Pillow (OpenJPEG's reduce); None when this file should be fully decoded."""
    import openjpeg  # pylibjpeg-openjpeg: reads the codestream parameters

    if int(ds.get("PixelRepresentation", 0) or 0) != 0 or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        return None  # signed or colour: the full decoder handles the sign and colour corrections
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    codestream = get_frame(ds.PixelData, 0, number_of_frames=frames)
    params = openjpeg.get_parameters(codestream)
    precision = int(params["precision"])
    if params["is_signed"] or int(params["samples_per_pixel"]) != 1 or not 1 <= precision <= 16:
        return None
    level = reduction_level(int(params["rows"]), min_height, j2k_decomposition_levels(codestream))
    if level == 0:
        return None
    with Image.open(BytesIO(codestream)) as im:
        im.reduce = level
        im.load()
        arr = np.array(im)
    # Pillow scales N-bit samples up to its 8- or 16-bit container (value << (bits - N)); undo it
    container = arr.dtype.itemsize * 8
    if container > precision:
        arr = np.right_shift(arr, container - precision)
    return arr.astype(np.uint16 if container == 16 else np.uint8, copy=False), 2**level


def decode_reduced(src: str | os.PathLike | Dataset, min_height: int) -> tuple[np.ndarray, int]:
    """Decode frame 1 at a reduced resolution where the codec allows it: (stored values, factor).

    JPEG 2000 is decoded at resolution level r, the largest with ceil(rows / 2**r) >=
    0.75 × min_height, giving about rows / 2**r rows and factor 2**r. Other syntaxes, signed or
    unusual J2K data, and any failure of the reduced path give the full decode and factor 1.
    """
    ds, path = _dataset(src)
    ts = _transfer_syntax(ds, path)
    if ts in _REDUCIBLE and "PixelData" in ds:
        try:
            reduced = _j2k_reduced(ds, path, min_height)
        except Exception:
            reduced = None  # the full decoder will give the proper error if the stream is bad
        if reduced is not None:
            return reduced
    return _decode_first_frame(ds, ts, path), 1


# --- downsampling -------------------------------------------------------------------------------


def _block_mean(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean of factor×factor blocks; the last row/column of blocks may be partial (ceil shape)."""
    rows = np.arange(0, arr.shape[0], factor)
    cols = np.arange(0, arr.shape[1], factor)
    sums = np.add.reduceat(np.add.reduceat(arr, rows, axis=0, dtype=np.float64), cols, axis=1)
    row_counts = np.diff(np.append(rows, arr.shape[0]))
    col_counts = np.diff(np.append(cols, arr.shape[1]))
    return (sums / np.outer(row_counts, col_counts)).astype(np.float32)


def downsample(arr: np.ndarray, factor_or_shape: int | tuple[int, int]) -> np.ndarray:
    """Area-averaging downsample of a 2-D array to float32.

    An int factor averages factor×factor blocks (output ceil(rows/factor) × ceil(cols/factor),
    the shape a J2K reduce gives). A (rows, cols) shape first block-averages by the largest whole
    factor that fits, then resizes to exactly that shape with Pillow's box (area) filter.
    """
    arr = np.asarray(arr)
    if isinstance(factor_or_shape, (int, np.integer)):
        factor = int(factor_or_shape)
        if factor < 1:
            raise ValueError(f"downsample factor must be >= 1, got {factor}")
        return arr.astype(np.float32) if factor == 1 else _block_mean(arr, factor)
    rows, cols = (int(v) for v in factor_or_shape)
    if rows < 1 or cols < 1:
        raise ValueError(f"downsample shape must be positive, got {factor_or_shape}")
    factor = min(arr.shape[0] // rows, arr.shape[1] // cols)
    out = _block_mean(arr, factor) if factor >= 2 else arr.astype(np.float32)
    if out.shape != (rows, cols):
        out = np.asarray(Image.fromarray(out).resize((cols, rows), Image.Resampling.BOX))
    return out
