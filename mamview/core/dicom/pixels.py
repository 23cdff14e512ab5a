"""Pixel decoding behind one guarded boundary: full decode through pydicom's decoder plugins, a
reduced-resolution decode for JPEG 2000 (the wavelet codec can stop at a lower resolution level,
~10× faster for previews), and an area-averaging downsample.

Every pixel decode in mamview (import previews, the full-resolution view, scoring, the DICOM
node's indexing) comes through here. The boundary has three parts:

- **limits before allocating** (`check_header`): rows × columns × frames × bytes per sample and
  the bit depths from the header under `limits.current()`, the pixel data length of native data,
  and for RLE, JPEG 2000 and JPEG streams the codestream's own dimensions compared with the
  header, so no decoder is asked for more than the header admits; a deflated dataset is inflated
  with a bound and files over the size cap are not read;
- **only frame 1 is read**: large values are deferred and read from the file frame by frame;
- **`guarded`**: any failure of a decoder, native panics included (pyo3's `PanicException` is a
  `BaseException`) and `MemoryError`, becomes a `PixelDecodeError` with a one-line message;
  only `KeyboardInterrupt`, `SystemExit` and `GeneratorExit` pass through.

All decode functions return *stored* values (before the modality LUT) of the first frame as a
2-D array. For bad input they raise only PixelDecodeError.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filereader import read_dataset as _read_body
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000,
    JPEG2000Lossless,
    RLELossless,
)

from mamview.core.dicom import limits
from mamview.core.errors import InputRefused, LimitExceeded
from mamview.core.safety import printable

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
_J2K = (JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K)
# ceil(H / 2**r) may go down to this fraction of the wanted height (a 3328-row image asked for
# 1024 rows gives 832 rows rather than 1664): previews stay sharp and the decode stays cheap.
MIN_HEIGHT_SLACK = 0.75
# Values larger than this stay in the file until used, so that only frame 1 is ever read.
DEFER_BYTES = 1 << 20
# Exceptions the boundary never swallows: the user or the interpreter is stopping us.
PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)
MAX_MESSAGE = 300
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF


class PixelDecodeError(InputRefused):
    """Pixel data could not be decoded; `message` (one line) says why (and what to install, if
    that is why). An `InputRefused`, so the command line prints it without a traceback."""

    def __init__(self, path: str | os.PathLike | None, message: str) -> None:
        self.path = str(path) if path is not None else ""
        self.message = one_line(message)
        super().__init__(f"{printable(self.path)}: {self.message}" if self.path else self.message)

    def __reduce__(self):  # picklable with its two arguments (it crosses process boundaries)
        return (type(self), (self.path or None, self.message))


class PixelLimitExceeded(PixelDecodeError, LimitExceeded):
    """The header (or the codestream) declares more than a decode cap admits."""


def one_line(text: object) -> str:
    """`text` on one line (whitespace runs collapsed, control characters escaped), at most
    MAX_MESSAGE characters: decoder messages can be long, multi-line or hostile."""
    flat = printable(re.sub(r"\s+", " ", str(text)).strip())
    return flat if len(flat) <= MAX_MESSAGE else flat[: MAX_MESSAGE - 1] + "…"


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, one line; our own refusals without the type."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a hostile or broken __str__
        text = ""
    if isinstance(exc, InputRefused) and text:
        return one_line(text)
    return one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class guarded:
    """The decode boundary as a context manager: inside it, any failure becomes PixelDecodeError.

    `PixelDecodeError` passes unchanged; `KeyboardInterrupt`, `SystemExit` and `GeneratorExit`
    pass through; `MemoryError`, a `LimitExceeded`, native panics (`BaseException`s) and every
    other exception are raised again as PixelDecodeError(`path`, "<what>: <Type: message>").
    """

    def __init__(self, path: str | os.PathLike | None, what: str = "cannot decode the pixel data"):
        self.path = path
        self.what = what

    def __enter__(self) -> "guarded":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, PASS_THROUGH + (PixelDecodeError,)):
            return False
        if isinstance(exc, MemoryError):
            raise PixelDecodeError(self.path, f"{self.what}: not enough memory") from exc
        if isinstance(exc, LimitExceeded):
            raise PixelLimitExceeded(self.path, str(exc)) from exc
        raise PixelDecodeError(self.path, f"{self.what}: {describe(exc)}") from exc


# --- reading ------------------------------------------------------------------------------------


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read a file's dataset for decoding; PixelDecodeError if unreadable or over the caps.

    Only regular files up to `max_file_bytes` are opened. Values over DEFER_BYTES (the pixel
    data) stay in the file until used; a deflated dataset is inflated in memory with a bound of
    `max_inflated_bytes` (pydicom would inflate it without one).
    """
    with guarded(path, "cannot read the file"):
        caps = limits.current()
        size = _regular_file_size(path)
        _refuse_over(size, caps.max_file_bytes, "max_file_bytes", f"the file is {size:,} bytes")
        with open(path, "rb") as f:
            preamble = read_preamble(f, False)
            meta = _read_file_meta_info(f)
            if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                return _read_deflated(path, f, preamble, meta, size, caps)
        return dcmread(path, defer_size=DEFER_BYTES)


def _regular_file_size(path: str | os.PathLike) -> int:
    """Size of a regular file; a FIFO, device or folder is refused before anything opens it."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise InputRefused("not a regular file")
    return info.st_size


def _read_deflated(path, f, preamble, meta, size: int, caps: limits.DecodeLimits) -> FileDataset:
    """Inflate the dataset after the file meta with a bound, then parse it (PS3.5 A.5)."""
    _refuse_over(size, caps.max_inflated_bytes, "max_inflated_bytes",
                 f"the deflated file is {size:,} bytes")
    inflated = limits.inflate_bounded(f.read(), caps.max_inflated_bytes, "the deflated dataset")
    body = _read_body(DicomBytesIO(inflated), False, True)
    ds = FileDataset(str(path), body, preamble, meta, False, True)
    ds.set_original_encoding(False, True, body._character_set)
    return ds


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
    """The pip package that adds a decoder for this transfer syntax.

    JPEG baseline/extended, JPEG Lossless and JPEG-LS point at GDCM (BSD), never at the GPL
    pylibjpeg-libjpeg, which the project chose not to ship (see pyproject.toml).
    """
    if ts in _J2K or "2000" in ts.name:  # HTJ2K has no decoder but openjpeg's
        return "pylibjpeg-openjpeg"
    if ts == RLELossless:
        return "pylibjpeg-rle"
    return "python-gdcm"


def _check_decodable(ds: Dataset, ts: UID, path: str) -> None:
    if _PIXEL_DATA not in ds:
        if 0x7FE00008 in ds or 0x7FE00009 in ds:
            raise PixelDecodeError(path, "float pixel data is not a mammogram")
        raise PixelDecodeError(path, "the file has no pixel data")
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


# --- limits from the header ---------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """What the header declares about the pixel data, checked against the caps."""

    rows: int
    columns: int
    frames: int
    bits_allocated: int
    bits_stored: int
    samples: int

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * (self.bits_allocated // 8)


def _refuse_over(value: int, cap: int, name: str, what: str) -> None:
    if value > cap:
        raise LimitExceeded(f"{what}, over the limit of {cap:,} ({limits.env_name(name)})")


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise InputRefused(f"the header has no {keyword}")
        value = default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputRefused(f"the header's {keyword} is not a number: {one_line(repr(value))[:40]}")


def check_header(ds: Dataset, path: str = "") -> Geometry:
    """The pixel geometry the header declares, if it is sane and under `limits.current()`.

    Refuses (PixelDecodeError; PixelLimitExceeded for a cap) more than one sample per pixel,
    BitsAllocated other than 8, 16 or 32, BitsStored outside 1..BitsAllocated, a HighBit that
    does not fit, and rows, columns, frames or declared bytes over their caps.
    """
    with guarded(path, "the image header is not usable"):
        caps = limits.current()
        g = Geometry(
            rows=_header_int(ds, "Rows"), columns=_header_int(ds, "Columns"),
            frames=_header_int(ds, "NumberOfFrames", 1) or 1,
            bits_allocated=_header_int(ds, "BitsAllocated"),
            bits_stored=_header_int(ds, "BitsStored", _header_int(ds, "BitsAllocated")),
            samples=_header_int(ds, "SamplesPerPixel", 1))
        high_bit = _header_int(ds, "HighBit", g.bits_stored - 1)
        if g.samples != 1:
            raise InputRefused(f"expected one sample per pixel, the file has {g.samples}")
        if g.bits_allocated not in (8, 16, 32):
            raise InputRefused(f"BitsAllocated {g.bits_allocated} is not 8, 16 or 32")
        if not 1 <= g.bits_stored <= g.bits_allocated:
            raise InputRefused(f"BitsStored {g.bits_stored} does not fit in BitsAllocated "
                               f"{g.bits_allocated}")
        if not g.bits_stored - 1 <= high_bit < g.bits_allocated:
            raise InputRefused(f"HighBit {high_bit} does not fit BitsStored {g.bits_stored} in "
                               f"BitsAllocated {g.bits_allocated}")
        if min(g.rows, g.columns, g.frames) < 1:
            raise InputRefused(f"the header declares {g.rows}×{g.columns} pixels × {g.frames} frames")
        size = f"the header declares {g.rows}×{g.columns} pixels"
        _refuse_over(max(g.rows, g.columns), caps.max_side, "max_side", size)
        _refuse_over(g.rows * g.columns, caps.max_frame_pixels, "max_frame_pixels", size)
        _refuse_over(g.frames, caps.max_frames, "max_frames", f"the header declares {g.frames} frames")
        _refuse_over(g.frame_bytes * g.frames, caps.max_pixel_bytes, "max_pixel_bytes",
                     f"the header declares {g.frame_bytes * g.frames:,} bytes of pixel data")
        return g


def _pixel_element(ds: Dataset):
    """The Pixel Data element as stored: a deferred value stays in the file."""
    return ds.get_item(_PIXEL_DATA, keep_deferred=True)


def _is_deferred(ds: Dataset) -> bool:
    """Pixel data still in the file (read_dataset deferred it): decode it from there."""
    elem = _pixel_element(ds)
    return isinstance(elem, RawDataElement) and elem.value is None and bool(
        getattr(ds, "filename", None))


def _check_native_length(ds: Dataset, g: Geometry) -> None:
    elem = _pixel_element(ds)
    length = elem.length if isinstance(elem, RawDataElement) else len(elem.value or b"")
    if length == _UNDEFINED:
        raise InputRefused("native pixel data has an undefined length (encapsulated?)")
    if length < g.frame_bytes:
        raise InputRefused(f"the pixel data holds {length:,} bytes, the header needs "
                           f"{g.frame_bytes:,} per frame")


def first_frame_bytes(ds: Dataset, frames: int) -> bytes:
    """The first encapsulated frame, read from the file if the pixel data was deferred."""
    elem = _pixel_element(ds)
    if _is_deferred(ds):
        with open(ds.filename, "rb") as f:
            f.seek(elem.value_tell)
            return get_frame(f, 0, number_of_frames=frames)
    return get_frame(ds.PixelData, 0, number_of_frames=frames)


def check_codestream(frame: bytes, ts: UID, g: Geometry) -> None:
    """Refuse a compressed frame whose own header disagrees with the DICOM header (so the
    decoder would allocate for other dimensions). RLE: segment count and offsets; JPEG 2000:
    the SIZ dimensions, components and precision; JPEG and JPEG-LS: the SOF dimensions."""
    if ts == RLELossless:
        _check_rle(frame, g)
    elif ts in _J2K:
        _check_j2k(frame, g)
    elif "JPEG" in ts.name:
        dims = jpeg_dimensions(frame)
        if dims is None:
            raise InputRefused("the JPEG stream has no frame header")
        if dims != (g.rows, g.columns):
            raise InputRefused(f"the JPEG stream is {dims[0]}×{dims[1]}, the header says "
                               f"{g.rows}×{g.columns}")


def _check_rle(frame: bytes, g: Geometry) -> None:
    if len(frame) < 64:
        raise InputRefused(f"the RLE frame is {len(frame)} bytes, shorter than its header")
    count = int.from_bytes(frame[:4], "little")
    need = g.samples * g.bits_allocated // 8
    if count != need:
        raise InputRefused(f"the RLE header lists {count} segments, the image needs {need}")
    offsets = [int.from_bytes(frame[4 + 4 * i: 8 + 4 * i], "little") for i in range(count)]
    if offsets[0] != 64 or any(b <= a for a, b in zip(offsets, offsets[1:])) \
            or offsets[-1] >= len(frame):
        raise InputRefused("the RLE segment offsets are out of order or past the frame's end")


def _check_j2k(frame: bytes, g: Geometry) -> None:
    import openjpeg  # pylibjpeg-openjpeg: reads the main header only

    try:
        params = openjpeg.get_parameters(frame)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is a bad codestream
        raise InputRefused(f"not a JPEG 2000 codestream ({describe(exc)})") from exc
    dims = (int(params["rows"]), int(params["columns"]))
    if dims != (g.rows, g.columns):
        raise InputRefused(f"the JPEG 2000 codestream is {dims[0]}×{dims[1]}, the header says "
                           f"{g.rows}×{g.columns}")
    if int(params["samples_per_pixel"]) != g.samples:
        raise InputRefused(f"the JPEG 2000 codestream has {params['samples_per_pixel']} "
                           f"components, the header says {g.samples}")
    if not 1 <= int(params["precision"]) <= g.bits_allocated:
        raise InputRefused(f"the JPEG 2000 codestream has {params['precision']}-bit samples, "
                           f"more than BitsAllocated {g.bits_allocated}")


# JPEG start-of-frame markers (baseline … lossless, arithmetic) and JPEG-LS SOF55.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF,
                  0xF7})


def jpeg_dimensions(stream: bytes) -> tuple[int, int] | None:
    """(rows, columns) from the first SOF marker of a JPEG / JPEG-LS stream; None if absent."""
    if stream[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(stream):
        if stream[pos] != 0xFF:
            return None
        marker = stream[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker in _SOF:
            if pos + 9 > len(stream):
                return None
            return (int.from_bytes(stream[pos + 5: pos + 7], "big"),
                    int.from_bytes(stream[pos + 7: pos + 9], "big"))
        if marker == 0xDA:  # a scan before any frame header
            return None
        pos += 2 + int.from_bytes(stream[pos + 2: pos + 4], "big")
    return None


def _prepare(ds: Dataset, ts: UID, path: str) -> Geometry:
    """Every check before a decoder runs: decodable, header under the caps, data consistent."""
    _check_decodable(ds, ts, path)
    g = check_header(ds, path)
    with guarded(path, f"cannot decode {ts.name} pixel data"):
        if ts.is_encapsulated:
            check_codestream(first_frame_bytes(ds, g.frames), ts, g)
        else:
            _check_native_length(ds, g)
    return g


# --- decoding -----------------------------------------------------------------------------------


def _decode_first_frame(ds: Dataset, ts: UID, path: str) -> np.ndarray:
    """Frame 1 through pydicom, trying the preferred plugin first and then all of them."""
    _prepare(ds, ts, path)
    decoder = get_decoder(ts)
    # each available plugin once, the preferred one first (a stream that panics one decoder is
    # not handed to it twice)
    preferred = _PREFERRED_PLUGIN.get(ts)
    plugins = sorted(decoder.available_plugins, key=lambda name: name != preferred) or [""]
    source = ds.filename if _is_deferred(ds) else ds  # from the file: only frame 1 is read
    error: BaseException | None = None
    for plugin in plugins:
        try:
            arr = pixel_array(source, index=0, raw=True, decoding_plugin=plugin)
            break
        except MemoryError:  # another plugin will not need less: the boundary reports it
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt streams raise many types
            error = exc
        except PASS_THROUGH:
            raise
        except BaseException as exc:  # a native panic: the stream is corrupt, try no other decoder
            raise PixelDecodeError(path, f"cannot decode {ts.name} pixel data: the {plugin} "
                                         f"decoder failed: {describe(exc)}") from exc
    else:
        raise PixelDecodeError(path, f"cannot decode {ts.name} pixel data: {describe(error)}") \
            from error
    if arr.ndim != 2:
        raise PixelDecodeError(path, f"expected a 2-D image, decoded shape {arr.shape}")
    return arr


def decode_full(src: str | os.PathLike | Dataset) -> np.ndarray:
    """Decode frame 1 at full resolution: a 2-D array of stored values (before modality LUT).

    `src` is a path or an already read Dataset (with pixel data). Works for every transfer syntax
    that pydicom and the installed plugins support; raises PixelDecodeError otherwise.
    """
    with guarded(src if not isinstance(src, Dataset) else getattr(src, "filename", None)):
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


def _j2k_reduced(ds: Dataset, g: Geometry, min_height: int) -> tuple[np.ndarray, int] | None:
    """Reduced decode with Pillow (OpenJPEG's reduce); None when this file should be fully decoded.

    The codestream has been checked against the header (`_prepare`) before this runs.
    """
    import openjpeg  # pylibjpeg-openjpeg: reads the codestream parameters

    if int(ds.get("PixelRepresentation", 0) or 0) != 0 or g.samples != 1:
        return None  # signed or colour: the full decoder handles the sign and colour corrections
    codestream = first_frame_bytes(ds, g.frames)
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
    if arr.ndim != 2:
        return None
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
    Raises only PixelDecodeError.
    """
    with guarded(src if not isinstance(src, Dataset) else getattr(src, "filename", None)):
        ds, path = _dataset(src)
        ts = _transfer_syntax(ds, path)
        if ts in _REDUCIBLE and _PIXEL_DATA in ds:
            g = _prepare(ds, ts, path)
            try:
                reduced = _j2k_reduced(ds, g, min_height)
            except PASS_THROUGH:
                raise
            except BaseException:  # noqa: BLE001 - the full decoder gives the proper error
                reduced = None
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
