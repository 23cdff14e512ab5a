"""Generators of hostile DICOM files for the attack tests (pydicom, written in the test, no fixtures).

Each writer is deterministic (same bytes for the same arguments, apart from generated UIDs where
none is given) and fast (well under a second). They start from `tests.factories.write_mammogram`,
a small valid MG For Presentation image that imports, previews and scores, and break one thing:

- `panicking_rle`: an RLE Lossless image with one flipped byte (a segment offset) that makes
  pylibjpeg-rle's Rust decoder panic (pyo3 `PanicException`, a `BaseException`).
- `oversized_rle` / `oversized_native`: headers that claim 65535×65535 with a small stream.
- `deflate_bomb`: a ~1 MB Deflated Explicit VR file that inflates to a gigabyte or more.
- `path_like_uid`: a SOP Instance UID that is a path (`../../x`, `/tmp/x`).
- `bit_depths`: inconsistent BitsAllocated / BitsStored / HighBit.
- byte-level mutations of any file: `flip_byte`, `truncate`, `replace_frame`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterator

from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tests import factories

# Where the flipped byte goes: the second segment's offset in the 64-byte RLE header. Moving it
# makes a segment decode past the decoder's buffer ("index out of bounds: the len is 106496 but
# the index is 106496" for the default image, flip 0xFF) and pylibjpeg-rle 2.x panics.
PANIC_BYTE = 8


def write_mammogram(path: str | os.PathLike, **overrides: Any) -> Path:
    """A small valid MG For Presentation image (256×208, 12-bit, explicit VR); `overrides` go to
    `tests.factories.write_mammogram` (e.g. transfer_syntax=RLELossless, shape=(320, 256))."""
    return factories.write_mammogram(path, **overrides)


def rle_mammogram(path: str | os.PathLike, **overrides: Any) -> Path:
    """A valid RLE Lossless mammogram."""
    return write_mammogram(path, transfer_syntax=RLELossless, **overrides)


def j2k_mammogram(path: str | os.PathLike, **overrides: Any) -> Path:
    """A valid JPEG 2000 Lossless mammogram."""
    return write_mammogram(path, transfer_syntax=JPEG2000Lossless, **overrides)


def first_frame(path: str | os.PathLike) -> bytes:
    """The first encapsulated frame of a compressed file (RLE or J2K stream bytes)."""
    ds = dcmread(path)
    return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))


def replace_frame(src: str | os.PathLike, dst: str | os.PathLike, frame: bytes,
                  **header: Any) -> Path:
    """Copy a compressed file with its (only) frame replaced by `frame`; `header` sets attributes."""
    ds = dcmread(src)
    ds.PixelData = encapsulate([frame])
    ds.pop("NumberOfFrames", None)
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    return _save(ds, dst)


def panicking_rle(path: str | os.PathLike, **overrides: Any) -> Path:
    """An RLE Lossless image whose stream has one flipped byte that panics pylibjpeg-rle."""
    path = Path(path)
    src = rle_mammogram(path.with_name(path.name + ".src"), **overrides)
    ds = dcmread(src)
    frame = first_frame(src)
    offset, mask = panic_flip(frame, ds.Rows, ds.Columns, ds.BitsAllocated)
    broken = bytearray(frame)
    broken[offset] ^= mask
    out = replace_frame(src, path, bytes(broken))
    src.unlink()
    return out


def panic_flip(frame: bytes, rows: int, columns: int, bits_allocated: int = 16) -> tuple[int, int]:
    """(offset, XOR mask) of one byte flip that makes pylibjpeg-rle panic on this RLE frame.

    Tries flips of the second segment offset's two low bytes (one segment then decodes past
    the buffer's end); the first flip that panics wins, so it is deterministic for one frame.
    """
    from rle.utils import decode_pixel_data

    for offset in (PANIC_BYTE, PANIC_BYTE + 1):
        for mask in (0xFF, 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01):
            broken = bytearray(frame)
            broken[offset] ^= mask
            try:
                decode_pixel_data(bytes(broken), version=2, rows=rows, columns=columns,
                                  bits_allocated=bits_allocated)
            except Exception:  # noqa: BLE001 - an ordinary error is not the panic we want
                continue
            except BaseException as exc:  # pyo3 PanicException
                if type(exc).__name__ == "PanicException":
                    return offset, mask
                raise
    raise ValueError("no single-byte flip of the segment offset panics this RLE decoder")


def oversized_rle(path: str | os.PathLike, rows: int = 65535, columns: int = 65535) -> Path:
    """An RLE image whose header claims rows × columns (default 65535×65535, 8 GiB at 16 bits)
    over the small stream of a 256×208 image."""
    path = Path(path)
    src = rle_mammogram(path.with_name(path.name + ".src"))
    out = replace_frame(src, path, first_frame(src), Rows=rows, Columns=columns)
    src.unlink()
    return out


def oversized_native(path: str | os.PathLike, rows: int = 65535, columns: int = 65535,
                     frames: int | None = None) -> Path:
    """A native (uncompressed) image whose header claims rows × columns (× frames) over the
    pixel bytes of a 256×208 image."""
    path = Path(path)
    extra: dict[str, Any] = {"Rows": rows, "Columns": columns}
    if frames is not None:
        extra["NumberOfFrames"] = frames
    return write_mammogram(path, extra=extra)


def bit_depths(path: str | os.PathLike, bits_allocated: int, bits_stored: int, high_bit: int,
               **overrides: Any) -> Path:
    """A mammogram with the given (possibly inconsistent) BitsAllocated / BitsStored / HighBit
    over the 16-bit pixel bytes of the default image."""
    extra = dict(overrides.pop("extra", None) or {})
    extra.update(BitsAllocated=bits_allocated, BitsStored=bits_stored, HighBit=high_bit)
    return write_mammogram(path, extra=extra, **overrides)


def path_like_uid(path: str | os.PathLike, uid: str = "../../../../x", **overrides: Any) -> Path:
    """A valid image whose SOP Instance UID (in the dataset and the file meta) is `uid`,
    e.g. a relative or absolute path."""
    with _lenient_writing(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: "Invalid value for VR UI"
        return write_mammogram(path, sop_uid=uid, **overrides)


def deflate_bomb(path: str | os.PathLike, inflated_bytes: int = 2**30) -> Path:
    """A Deflated Explicit VR Little Endian file of about inflated_bytes / 1000 bytes (1 MB by
    default) whose dataset inflates to `inflated_bytes` of zero pixel data (1 GiB by default).

    The header is consistent (16384 columns, 16-bit, rows and frames that fill the data: two
    16384×16384 frames for 1 GiB), so only the inflated size gives it away. Built from one
    compressed 1 MiB block of zeros, repeated (a full flush makes each block independent of the
    ones before), so writing it takes milliseconds.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    block_size = 1 << 20
    blocks = max(1, inflated_bytes // block_size)
    pixel_length = blocks * block_size
    columns = 16384
    rows = max(1, min(16384, pixel_length // (2 * columns)))
    ds = _bare_image(rows, columns, max(1, pixel_length // (2 * rows * columns)))
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)  # everything before the pixel data
    # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length
    head.write(b"\xe0\x7f\x10\x00OW\x00\x00" + pixel_length.to_bytes(4, "little"))
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = [c.compress(head.getvalue()) + c.flush(zlib.Z_FULL_FLUSH)]
    zero_block = c.compress(bytes(block_size)) + c.flush(zlib.Z_FULL_FLUSH)
    stream.append(zero_block * blocks)
    stream.append(c.flush(zlib.Z_FINISH))  # an empty final block
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        meta = DicomBytesIO()
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        f.write(meta.getvalue())
        f.write(b"".join(stream))
    return path


# --- byte-level mutations -------------------------------------------------------------------------


def flip_byte(src: str | os.PathLike, dst: str | os.PathLike, offset: int, mask: int = 0xFF) -> Path:
    """Copy `src` with the byte at `offset` XORed with `mask`."""
    data = bytearray(Path(src).read_bytes())
    data[offset % len(data)] ^= mask
    return _write(dst, bytes(data))


def truncate(src: str | os.PathLike, dst: str | os.PathLike, length: int) -> Path:
    """Copy the first `length` bytes of `src`."""
    return _write(dst, Path(src).read_bytes()[:length])


def pixel_data_offset(path: str | os.PathLike) -> int:
    """Byte offset of the Pixel Data element's value in a (non-deflated) file."""
    data = Path(path).read_bytes()
    pos = data.rfind(b"\xe0\x7f\x10\x00")
    if pos < 0:
        raise ValueError(f"{path} has no Pixel Data element")
    return pos + 12  # tag (4), VR (2), reserved (2), length (4)


# --- internals ------------------------------------------------------------------------------------


def _bare_image(rows: int, columns: int, frames: int) -> Dataset:
    """The header of a MG For Presentation image without pixel data, deflated transfer syntax."""
    ds = dcmread(write_mammogram(_scratch(), window=None))
    _scratch().unlink()
    del ds.PixelData
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def _scratch() -> Path:
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"mamview-hostile-{os.getpid()}.dcm"


def _save(ds: Dataset, dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _lenient_writing():
        ds.save_as(dst, enforce_file_format=True)
    return dst


def _write(dst: str | os.PathLike, data: bytes) -> Path:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data)
    return dst


@contextlib.contextmanager
def _lenient_writing() -> Iterator[None]:
    """Let pydicom write values that break the standard (that is the point of these files)."""
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.writing_validation_mode = old


__all__ = [
    "PANIC_BYTE",
    "bit_depths",
    "deflate_bomb",
    "first_frame",
    "flip_byte",
    "j2k_mammogram",
    "oversized_native",
    "oversized_rle",
    "panic_flip",
    "panicking_rle",
    "path_like_uid",
    "pixel_data_offset",
    "replace_frame",
    "rle_mammogram",
    "truncate",
    "write_mammogram",
]
