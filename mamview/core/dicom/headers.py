"""Header-only scan of one DICOM file: an ImageHeader for a usable mammogram, else a Problem.

Speed matters (a clinic archive has tens of thousands of files), so each file costs one open,
one `dcmread(..., stop_before_pixels=True)` and at most a few small reads to check that the pixel
data is complete. Pixel data is never read here, and files are only ever opened for reading.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_partial, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.values import convert_value

from mamview.core import safety
from mamview.core.dicom import classify, limits
from mamview.core.dicom.display import window_presets
from mamview.core.domain import ImageHeader, PresentationIntent, Problem, StudyObject
from mamview.core.errors import InputRefused, LimitExceeded

# Problem.reason categories (stable; specifics go into Problem.detail)
EMPTY_FILE = "empty file"
UNREADABLE_FILE = "unreadable file"  # the OS would not let us read it (permissions, vanished)
NOT_DICOM = "not DICOM"
UNREADABLE_HEADER = "unreadable header"
TRUNCATED = "truncated"
CORRUPT_PIXEL_DATA = "corrupt pixel data"  # encapsulation items are broken
NO_PIXEL_DATA = "no pixel data"
NOT_A_MAMMOGRAM = classify.NOT_A_MAMMOGRAM
TOMOSYNTHESIS = classify.TOMOSYNTHESIS
NOT_AN_IMAGE = classify.NOT_AN_IMAGE
DICOMDIR = "DICOMDIR"
NOT_REGULAR = "not a regular file"  # a FIFO, socket or device: never opened
INVALID_UID = "invalid UID"
TOO_LARGE = "too large"  # over a cap of limits.DecodeLimits

# What the header of a deflated data set (everything before the pixel data) may inflate to;
# real headers are a few kB, with overlays and private blobs a few MB.
_DEFLATED_HEADER_BYTES = 64 * 1024**2
_DEFLATED_UID = DeflatedExplicitVRLittleEndian.encode("ascii")
_MAX_SKIMMED_META = 64 * 1024
_MAX_DICOMDIR_BYTES = 256 * 1024**2  # a DICOMDIR of 100,000 images is ~30 MB
_UID_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# Large private blobs and overlays before the pixel data are skipped, not read.
_DEFER_SIZE = 256 * 1024
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
_PIXEL_TAG_INTS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"PK\x03\x04", "a ZIP archive"))


class FastFields:
    """Read-only `get` / `in` over a freshly read dataset, for the attributes a scan looks at.

    `Dataset.get` turns each raw element into a DataElement and stores it back (about 10 µs an
    element); a scan reads ~40 elements once, so it converts the raw bytes with pydicom's
    `convert_value` directly (well under 1 µs) and falls back to `Dataset.get` on anything unusual.
    Sequence items are ordinary Datasets.
    """

    __slots__ = ("_ds", "_encodings", "file_meta")
    _tags: dict[str, int] = {}

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._encodings = ds.original_character_set
        self.file_meta = getattr(ds, "file_meta", Dataset())

    def get(self, keyword: str, default: object = None) -> object:
        """The value of `keyword`, or `default` when the element is absent or empty-valued None."""
        tag = self._tags.get(keyword)
        if tag is None:
            tag = self._tags[keyword] = tag_for_keyword(keyword)  # type: ignore[assignment]
        elem = self._ds.get_item(tag) if tag is not None else None
        if elem is None:
            return default
        if isinstance(elem, RawDataElement) and elem.value is not None:
            try:
                value = convert_value(elem.VR or dictionary_VR(tag), elem, self._encodings)
            except Exception:
                value = self._ds.get(keyword, default)
        else:
            value = self._ds.get(keyword, default)
        return default if value is None else value

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._ds


def read_header(path: str | os.PathLike) -> ImageHeader | StudyObject | Problem:
    """Scan one file's header. Never raises for bad input: every failure is a Problem.

    Reasons: 'empty file', 'unreadable file', 'not a regular file', 'not DICOM', 'unreadable
    header', 'DICOMDIR', 'not an image', 'not a mammogram', 'tomosynthesis', 'invalid UID', 'no
    pixel data', 'truncated', 'corrupt pixel data', 'too large'. FOR PROCESSING mammograms,
    CR, lossy, synthetic 2D and digitised film (a Secondary Capture with Modality MG or
    BodyPartExamined BREAST) are returned as headers with `domain` saying why they are outside
    the model's validated domain (the caller decides). A non-image member of a breast imaging study (CAD
    SR, presentation state, key objects, tomosynthesis, …) is a StudyObject. Only regular files
    are opened (a FIFO would hang).
    """
    name = str(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        return Problem(name, UNREADABLE_FILE, exc.strerror or str(exc))
    if stat.S_ISDIR(info.st_mode):
        return Problem(name, NOT_DICOM, "a folder")
    if not stat.S_ISREG(info.st_mode):
        return Problem(name, NOT_REGULAR, _file_kind(info.st_mode))
    if info.st_size == 0:
        return Problem(name, EMPTY_FILE)
    cap = limits.current().max_file_bytes
    if info.st_size > cap:
        return Problem(name, TOO_LARGE, f"the file is over {cap:,} bytes (MAMVIEW_MAX_FILE_BYTES)")
    try:
        f = open_regular(name)
        if f is None:  # replaced by something else since the stat
            return Problem(name, NOT_REGULAR, "changed into a special file while being read")
        with f:
            return _scan(f, name, info)
    except OSError as exc:
        return Problem(name, UNREADABLE_FILE, exc.strerror or str(exc))
    except Exception as exc:  # pydicom raises many types for damaged headers
        return Problem(name, UNREADABLE_HEADER, f"{type(exc).__name__}: {exc}")


def open_regular(name: str | os.PathLike) -> BinaryIO | None:
    """`name` opened for binary reading if it is a regular file, else None (never blocks).

    O_NONBLOCK makes opening a FIFO return at once; fstat then tells what was opened, so a file
    swapped for a FIFO after a stat is still not read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(name, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def _scan(f: BinaryIO, name: str, info: os.stat_result) -> ImageHeader | StudyObject | Problem:
    head = f.read(132)
    force = False
    if head[128:132] != b"DICM":
        if len(head) < 132 and not head.strip(b"\x00"):
            return Problem(name, TRUNCATED, "the file ends inside the 128-byte preamble")
        if not _looks_like_bare_dataset(head):
            return Problem(name, NOT_DICOM, _what_is(head))
        force = True  # old files without preamble / file meta are still DICOM
    f.seek(0)
    try:
        # the file meta says whether the data set is deflated: pydicom would inflate it unbounded
        meta_end = _plain_meta_end(f, head)
        if meta_end is None:  # deflated, or a file meta we cannot skim: parse it first
            f.seek(0)
            preamble = read_preamble(f, force)
            meta = _read_file_meta_info(f)
            meta_end = f.tell()
            if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                return _scan_deflated(f, name, info, preamble, meta)
        if _starts_with_command_group(f, meta_end):
            # pydicom would read each 8 bytes of a run of zeros as one more command element
            return Problem(name, UNREADABLE_HEADER, "a command group (0000) where the data set should start")
        f.seek(0)
        stop = _HeaderStop()
        ds = read_partial(f, stop_when=stop, defer_size=_DEFER_SIZE, force=force)
    except (EOFError, struct.error) as exc:
        # pydicom runs out of bytes only when the file stops inside an element
        return Problem(name, TRUNCATED, f"the file ends inside the header ({exc})")
    if stop.garbage:
        return Problem(name, UNREADABLE_HEADER, stop.garbage)
    pixel_start = f.tell()
    fields = FastFields(ds)
    if pixel_start >= info.st_size:
        # no pixel data found: was the header cut, or is it garbage?
        problem = _cut_or_corrupt_header(ds, pixel_start, info.st_size, name)
        if problem is not None:
            return problem
    problem = _kind_problem(ds, fields, name)
    if problem is not None and problem.reason in _MEMBER_REASONS:
        member = _study_object(fields, name, info)
        if isinstance(member, StudyObject) and "Rows" in ds:
            # never decoded, but a member holding pixels must hold what it declares
            member = _pixel_problem(f, ds, fields, pixel_start, info.st_size, name) or member
        if member is not None:
            return member
    problem = problem or _pixel_problem(f, ds, fields, pixel_start, info.st_size, name)
    if problem is not None:
        return problem
    return _header(fields, name, info)


# refusals of an image scan that may still be a member of a breast imaging study
_MEMBER_REASONS = (classify.NOT_AN_IMAGE, classify.NOT_A_MAMMOGRAM, classify.TOMOSYNTHESIS)


def _study_object(ds: FastFields, name: str, info: os.stat_result) -> StudyObject | Problem | None:
    """The study member this object is (CAD SR, presentation state, …), a Problem when its UIDs
    are not valid, or None when it is no member of a breast study (a CT stays a problem)."""
    kind = classify.study_object_kind(ds)
    if kind is None:
        return None
    problem = _uid_problem(ds, name)
    if problem is None and not _uid(ds.get("StudyInstanceUID")):
        problem = Problem(name, INVALID_UID, "StudyInstanceUID is missing")
    if problem is not None:
        return problem
    return StudyObject(
        path=name, size=info.st_size, mtime_ns=info.st_mtime_ns,
        sop_instance_uid=_sop_instance_uid(ds), sop_class_uid=classify.sop_class_uid(ds),
        study_instance_uid=_uid(ds.get("StudyInstanceUID")),
        series_instance_uid=_uid(ds.get("SeriesInstanceUID")), kind=kind,
        modality=_str(ds, "Modality"), patient_id=_str(ds, "PatientID"),
        issuer_of_patient_id=_str(ds, "IssuerOfPatientID"), study_date=_str(ds, "StudyDate"),
        content_date=_str(ds, "ContentDate"), manufacturer=_str(ds, "Manufacturer"))


def _plain_meta_end(f: BinaryIO, head: bytes) -> int | None:
    """Where the file meta ends, when its group length says so and its bytes do not hold the
    Deflated transfer syntax UID; None otherwise (the caller then parses the meta).

    Skimming the bytes spares a second parse of the meta for almost every file.
    """
    if head[128:132] != b"DICM":
        return None
    f.seek(132)
    group_length = f.read(12)
    if len(group_length) < 12 or group_length[:6] != b"\x02\x00\x00\x00UL":
        return None
    (length,) = struct.unpack("<I", group_length[8:12])
    if length > _MAX_SKIMMED_META:
        return None
    meta = f.read(length)
    if len(meta) < length or _DEFLATED_UID in meta:
        return None
    return 144 + length


def _starts_with_command_group(f: BinaryIO, at: int) -> bool:
    """True when the bytes at `at` (after the file meta) start group 0000 (never in a stored file)."""
    f.seek(at)
    return f.read(2) == b"\x00\x00"


class _HeaderStop:
    """`stop_when` for pydicom: stop before the pixel data, or where the elements turn out to
    be garbage (a run of zeros or a repeating pattern read as elements, thousands a
    megabyte), so a large damaged file costs a few elements, not minutes. `garbage` says why."""

    MAX_ELEMENTS = 100_000  # top-level elements of one header; real ones have a few hundred
    MAX_DISORDER = 64  # elements out of ascending order; a few occur in sloppy real files

    def __init__(self) -> None:
        self.garbage = ""
        self._last = -1
        self._repeats = 0
        self._count = 0
        self._disorder = 0

    def __call__(self, tag: int, vr: str | None, length: int) -> bool:
        tag = int(tag)  # pydicom's BaseTag compares slowly; this runs for every element
        if tag in _PIXEL_TAG_INTS:
            return True
        self._count += 1
        # pydicom may ask twice about the first element (its VR probe), never three times
        self._repeats = self._repeats + 1 if tag == self._last else 0
        if tag < self._last:
            self._disorder += 1
        self._last = tag
        if self._repeats >= 2 or self._disorder > self.MAX_DISORDER or self._count > self.MAX_ELEMENTS:
            self.garbage = f"the header turns into garbage at element ({tag >> 16:04X},{tag & 0xFFFF:04X})"
            return True
        return False


def _kind_problem(ds: Dataset, fields: FastFields, name: str) -> Problem | None:
    """Problem unless the header is a mammogram's with valid UIDs."""
    if not classify.sop_class_uid(fields) and not fields.get("Modality") and "Rows" not in ds:
        # pydicom reads damaged headers leniently; nothing usable came out of this one
        return Problem(name, UNREADABLE_HEADER, "no SOP Class, Modality or image attributes could be read")
    if classify.sop_class_uid(fields) == classify.MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return Problem(name, DICOMDIR, "a DICOMDIR index; its referenced files are read instead")
    ok, reason = classify.mammogram_kind(fields)
    if not ok:
        return Problem(name, reason, classify.kind_detail(fields))
    return _uid_problem(fields, name) or _declared_size_problem(fields, name)


def _declared_size_problem(ds: FastFields, name: str) -> Problem | None:
    """TOO_LARGE when the declared image is over a cap of `limits.current()`: it would never
    be decoded, so it is not indexed (and a deflated one is not inflated for a preview)."""
    caps = limits.current()
    rows, columns = classify.as_int(ds.get("Rows"), 0) or 0, classify.as_int(ds.get("Columns"), 0) or 0
    frames = classify.as_int(ds.get("NumberOfFrames"), 1) or 1
    declared = f"the header declares {rows}×{columns} pixels × {frames} frames"
    for value, cap, var in (
        (max(rows, columns), caps.max_side, "MAMVIEW_MAX_SIDE"),
        (rows * columns, caps.max_frame_pixels, "MAMVIEW_MAX_FRAME_PIXELS"),
        (frames, caps.max_frames, "MAMVIEW_MAX_FRAMES"),
        (_expected_pixel_bytes(ds), caps.max_pixel_bytes, "MAMVIEW_MAX_PIXEL_BYTES"),
    ):
        if value > cap:
            return Problem(name, TOO_LARGE, f"{declared}, over the limit of {cap:,} ({var})")
    return None


def _uid(value: object) -> str:
    """A UI value as text, without the trailing spaces or NULs that pad it to an even length."""
    return "" if value is None else str(value).strip(" \x00")


def _sop_instance_uid(ds: FastFields) -> str:
    return _uid(ds.get("SOPInstanceUID")) or _uid(ds.file_meta.get("MediaStorageSOPInstanceUID"))


def _uid_problem(ds: FastFields, name: str) -> Problem | None:
    """Problem when the SOP Instance UID (or a Study/Series UID present) is not a valid UID.

    These values name cache rows and, hashed, preview files; anything else in them is refused.
    """
    values = {"SOPInstanceUID": _sop_instance_uid(ds)}
    for keyword in _UID_KEYWORDS[1:]:
        if ds.get(keyword) not in (None, ""):
            values[keyword] = _uid(ds.get(keyword))
    for keyword, value in values.items():
        if not value:
            return Problem(name, INVALID_UID, f"{keyword} is missing")
        if not safety.is_valid_uid(value):
            shown = safety.printable(value[:80]) + ("…" if len(value) > 80 else "")
            return Problem(name, INVALID_UID, f"{keyword} {shown!r} is not a DICOM UID (digits and dots, at most 64)")
    return None


# --- deflated data sets --------------------------------------------------------------------------


def _scan_deflated(
    f: BinaryIO, name: str, info: os.stat_result, preamble: bytes | None, meta: Dataset
) -> ImageHeader | Problem:
    """Scan a Deflated Explicit VR Little Endian file with bounded inflation.

    The stream is inflated in chunks: the header part is kept (at most 64 MB), the rest only
    counted, up to `limits.current().max_inflated_bytes`, so a deflate bomb costs neither
    memory nor more than the cap in time.
    """
    cap = limits.current().max_inflated_bytes
    keep = min(_DEFLATED_HEADER_BYTES, cap)
    try:
        head, total, complete = limits.inflate_stream(f, keep, cap, "the deflated data set")
    except LimitExceeded as exc:
        return Problem(name, TOO_LARGE, str(exc))
    except zlib.error as exc:
        return Problem(name, CORRUPT_PIXEL_DATA, f"deflated data set cannot be inflated: {exc}")
    if not complete:
        return Problem(name, TRUNCATED, "the deflated data set is cut short")
    buf = DicomBytesIO(head)
    stop = _HeaderStop()
    try:
        dataset = read_dataset(buf, False, True, stop_when=stop)
    except (EOFError, struct.error) as exc:
        if len(head) < total:
            return Problem(name, TOO_LARGE, f"the deflated header is over {keep:,} bytes")
        return Problem(name, TRUNCATED, f"the deflated data set ends inside the header ({exc})")
    if stop.garbage:
        return Problem(name, UNREADABLE_HEADER, stop.garbage)
    ds = FileDataset(name, dataset, preamble, meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    fields = FastFields(ds)
    problem = _kind_problem(ds, fields, name) or _deflated_pixel_problem(buf, fields, len(head), total, name)
    if problem is not None:
        return problem
    return _header(fields, name, info)


def _deflated_pixel_problem(buf: DicomBytesIO, fields: FastFields, kept: int, total: int, name: str) -> Problem | None:
    """Pixel data checks for an inflated header in `buf` (the pixel element follows it)."""
    element = _pixel_element(buf, buf.tell(), implicit=False, little=True)
    if element is None:
        if kept < total and buf.tell() >= kept - 12:
            return Problem(name, TOO_LARGE, f"the deflated header is over {kept:,} bytes")
        if "Rows" not in fields or "Columns" not in fields:
            return Problem(name, TRUNCATED, "the file ends before the image attributes")
        return Problem(name, NO_PIXEL_DATA, classify.kind_detail(fields))
    offset, length = element
    if length == _UNDEFINED:
        return Problem(name, CORRUPT_PIXEL_DATA, "encapsulated pixel data in a deflated data set")
    need = _expected_pixel_bytes(fields)
    if length < need:
        return Problem(name, TRUNCATED, f"Pixel Data holds {length} bytes, the image needs {need}")
    if total - offset < length:
        return Problem(name, TRUNCATED, f"the deflated data set ends {length - (total - offset)} bytes short of the Pixel Data")
    return None


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset written without preamble starts with a group 0002 or 0008 tag."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _what_is(head: bytes) -> str:
    """A few words on what a non-DICOM file seems to be, for the Problem detail."""
    if head.startswith(b"%PDF"):
        return "a PDF document"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        return "a text file"
    return "no DICM marker at byte 128"


# --- pixel data completeness ----------------------------------------------------------------------


def _pixel_problem(
    f: BinaryIO, ds: Dataset, fields: FastFields, start: int, size: int, name: str
) -> Problem | None:
    """Problem if the pixel data is missing, cut short or its encapsulation is broken."""
    implicit, little = ds.original_encoding
    element = _pixel_element(f, start, bool(implicit), little is not False)
    if element is None:
        if "Rows" not in ds or "Columns" not in ds:
            # every image has the image pixel module, just before the pixel data: the copy was cut
            return Problem(name, TRUNCATED, "the file ends before the image attributes")
        return Problem(name, NO_PIXEL_DATA, classify.kind_detail(fields))
    offset, length = element
    if length == _UNDEFINED:
        return _encapsulated_problem(f, offset, size, name)
    expected = _expected_pixel_bytes(fields)
    available = size - offset
    if length < expected:
        return Problem(name, TRUNCATED, f"Pixel Data holds {length} bytes, the image needs {expected}")
    if available < length:
        missing = length - available
        return Problem(name, TRUNCATED, f"file ends {missing} bytes short of the {length}-byte Pixel Data")
    return None


def _pixel_element(f: BinaryIO, start: int, implicit: bool, little: bool) -> tuple[int, int] | None:
    """(value offset, value length) of the pixel element pydicom stopped before, or None."""
    f.seek(start)
    raw = f.read(12)
    if len(raw) < 8:
        return None
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", raw[:4])
    if (group, element) not in _PIXEL_TAGS:
        return None
    if implicit:
        return start + 8, struct.unpack(endian + "I", raw[4:8])[0]
    if raw[4:6] in _LONG_VRS:
        if len(raw) < 12:
            return None
        return start + 12, struct.unpack(endian + "I", raw[8:12])[0]
    return start + 8, struct.unpack(endian + "H", raw[6:8])[0]


def _expected_pixel_bytes(ds: Dataset | FastFields) -> int:
    """Bytes a native image needs: rows × columns × frames × samples × bits allocated / 8."""
    count = 1
    for keyword, default in (("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1), ("SamplesPerPixel", 1)):
        count *= classify.as_int(ds.get(keyword), default) or default
    bits = classify.as_int(ds.get("BitsAllocated"), 16)
    return (count * bits + 7) // 8


def _encapsulated_problem(f: BinaryIO, offset: int, size: int, name: str) -> Problem | None:
    """Check the fragment items up to the sequence delimiter (a cut copy loses the delimiter)."""
    f.seek(max(offset, size - 8))
    if f.read(8) == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00":
        return None  # the usual layout: the delimiter ends the file
    pos = offset
    while True:  # something follows the pixel data, or the file is cut: walk the items
        f.seek(pos)
        raw = f.read(8)
        if len(raw) < 8:
            return Problem(name, TRUNCATED, "the file ends inside the compressed pixel data")
        group, element, length = struct.unpack("<HHI", raw)
        if (group, element) == _SEQUENCE_DELIMITER:
            return None
        if (group, element) != _ITEM or length == _UNDEFINED:
            return Problem(name, CORRUPT_PIXEL_DATA, f"unexpected ({group:04X},{element:04X}) at byte {pos}")
        pos += 8 + length
        if pos > size:
            return Problem(name, TRUNCATED, "the file ends inside the compressed pixel data")


def _cut_or_corrupt_header(ds: Dataset, stop: int, size: int, name: str) -> Problem | None:
    """Problem when the elements read (data set, else file meta) do not end exactly at EOF.

    pydicom reads a cut header without complaint. An element running past the end means a cut
    copy, unless its stated length is absurd for the file (garbage bytes read as a length); a
    few stray bytes after the last whole element are the start of a cut element.
    """
    if stop > size:  # pydicom skipped a large (deferred) value past the end of the file
        if stop - size > 16 * size:
            detail = f"an element claims {stop - size} bytes more than the file holds"
            return Problem(name, UNREADABLE_HEADER, detail)
        return Problem(name, TRUNCATED, "the file ends inside the header")
    holder = ds if len(ds) else getattr(ds, "file_meta", Dataset())
    end = None
    for tag in sorted(holder.keys()):
        elem = holder.get_item(tag)
        length = getattr(elem, "length", None)
        value_tell = getattr(elem, "value_tell", None)
        if not isinstance(elem, RawDataElement) or length in (None, _UNDEFINED) or value_tell is None:
            end = None
            continue
        end = value_tell + length
        if end > size:
            if length > 16 * size:
                detail = f"element {tag} claims {length} bytes in a {size}-byte file"
                return Problem(name, UNREADABLE_HEADER, detail)
            return Problem(name, TRUNCATED, "the file ends inside the header")
    if end is not None and end < size:
        return Problem(name, TRUNCATED, "the file ends inside the header")
    return None


# --- filling the ImageHeader --------------------------------------------------------------------


def _str(ds: FastFields, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _strings(ds: Dataset | FastFields, keyword: str) -> tuple[str, ...]:
    value = ds.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (value.strip(),)
    return tuple(str(v).strip() for v in value)


def _spacing(ds: FastFields) -> tuple[float, float] | None:
    """ImagerPixelSpacing (at the detector, what MG reports) preferred over PixelSpacing, in mm."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            values = [float(v) for v in ds.get(keyword) or ()]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if len(values) >= 2 and values[0] > 0 and values[1] > 0:
            return (values[0], values[1])
    return None


_MAX_DATETIME_CHARS = 32  # a DT is at most 26 characters; anything longer is not one


def dicom_date(value: object) -> str:
    """A DA value as 'YYYYMMDD' when it is a plausible calendar date, else ''."""
    text = str(value or "").strip().replace(".", "")  # ACR-NEMA wrote 'YYYY.MM.DD'
    if len(text) != 8 or not text.isdigit():
        return ""
    month, day = int(text[4:6]), int(text[6:])
    return text if 1 <= month <= 12 and 1 <= day <= 31 else ""


def dicom_time(value: object) -> str:
    """A TM value as 'HHMMSS.ffffff' (missing parts zero), so times sort as text; else ''."""
    text = str(value or "").strip().replace(":", "")  # ACR-NEMA wrote 'HH:MM:SS'
    if not text or len(text) > _MAX_DATETIME_CHARS:
        return ""
    main, _, frac = text.partition(".")
    if len(main) not in (2, 4, 6) or not main.isdigit() or (frac and not frac.isdigit()):
        return ""
    main = main.ljust(6, "0")
    if int(main[:2]) > 23 or int(main[2:4]) > 59 or int(main[4:]) > 60:  # 60: a leap second
        return ""
    return f"{main}.{frac[:6].ljust(6, '0')}"


def _acquired(ds: FastFields) -> tuple[str, str]:
    """(date, time) of acquisition: AcquisitionDate/Time, else the AcquisitionDateTime."""
    date = dicom_date(ds.get("AcquisitionDate"))
    if date:
        return date, dicom_time(ds.get("AcquisitionTime"))
    dt = str(ds.get("AcquisitionDateTime") or "").strip()[:_MAX_DATETIME_CHARS]
    dt = dt.split("+")[0].split("-")[0]  # drop a UTC offset (&ZZXX)
    date = dicom_date(dt[:8])
    return (date, dicom_time(dt[8:]) if len(dt) > 8 else "") if date else ("", "")


def _instance_number(ds: FastFields) -> int | None:
    """InstanceNumber, or None when absent or not a number SQLite can hold as one."""
    number = classify.as_int(ds.get("InstanceNumber"), -(2**63))
    return number if abs(number) < 2**31 else None


def _presentation_intent(ds: FastFields) -> PresentationIntent:
    text = _str(ds, "PresentationIntentType").upper()
    for intent in (PresentationIntent.FOR_PRESENTATION, PresentationIntent.FOR_PROCESSING):
        if text == intent.value:
            return intent
    uid = classify.sop_class_uid(ds)  # the SOP class says it when the attribute is missing
    if uid in (classify.MG_FOR_PROCESSING, classify.DX_FOR_PROCESSING):
        return PresentationIntent.FOR_PROCESSING
    if uid in (classify.MG_FOR_PRESENTATION, classify.DX_FOR_PRESENTATION):
        return PresentationIntent.FOR_PRESENTATION
    return PresentationIntent.UNKNOWN


def _header(ds: FastFields, name: str, info: os.stat_result) -> ImageHeader:
    meta = ds.file_meta
    number = classify.as_int
    acquired = _acquired(ds)
    return ImageHeader(
        path=name,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        sop_instance_uid=_sop_instance_uid(ds),
        sop_class_uid=classify.sop_class_uid(ds),
        study_instance_uid=_uid(ds.get("StudyInstanceUID")),
        series_instance_uid=_uid(ds.get("SeriesInstanceUID")),
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID") or ""),
        modality=_str(ds, "Modality"),
        patient_id=_str(ds, "PatientID"),
        patient_name=_str(ds, "PatientName"),
        patient_birth_date=_str(ds, "PatientBirthDate"),
        issuer_of_patient_id=_str(ds, "IssuerOfPatientID"),
        study_date=_str(ds, "StudyDate"),
        study_time=_str(ds, "StudyTime"),
        content_date=_str(ds, "ContentDate"),
        accession_number=_str(ds, "AccessionNumber"),
        study_description=_str(ds, "StudyDescription"),
        series_description=_str(ds, "SeriesDescription"),
        manufacturer=_str(ds, "Manufacturer"),
        manufacturer_model=_str(ds, "ManufacturerModelName"),
        rows=number(ds.get("Rows")),
        columns=number(ds.get("Columns")),
        bits_allocated=number(ds.get("BitsAllocated")),
        bits_stored=number(ds.get("BitsStored")),
        pixel_representation=number(ds.get("PixelRepresentation")),
        photometric=_str(ds, "PhotometricInterpretation").upper(),
        number_of_frames=number(ds.get("NumberOfFrames"), 1) or 1,
        presentation_intent=_presentation_intent(ds),
        laterality=classify.laterality(ds),
        view=classify.view(ds),
        view_modifiers=classify.view_modifiers(ds),
        patient_orientation=tuple(v.upper() for v in _strings(ds, "PatientOrientation") if v),
        image_type=_strings(ds, "ImageType"),
        window_presets=window_presets(ds),
        pixel_spacing=_spacing(ds),
        breast_implant_present=_str(ds, "BreastImplantPresent"),
        burned_in_annotation=_str(ds, "BurnedInAnnotation"),
        lossy_compression=_str(ds, "LossyImageCompression"),
        domain=classify.image_domain(ds),
        acquisition_date=acquired[0],
        acquisition_time=acquired[1],
        content_time=dicom_time(ds.get("ContentTime")),
        instance_number=_instance_number(ds),
    )


# --- DICOMDIR -----------------------------------------------------------------------------------


OUTSIDE_MEDIA = "outside the media"  # a DICOMDIR reference that leaves the DICOMDIR's folder
UNREADABLE_DICOMDIR = "unreadable DICOMDIR"


def dicomdir_files(path: str | os.PathLike) -> list[Path]:
    """Image files referenced by a DICOMDIR that stay inside its folder (see `dicomdir_entries`)."""
    return dicomdir_entries(path)[0]


def dicomdir_entries(path: str | os.PathLike) -> tuple[list[Path], list[Problem]]:
    """Image files referenced by a DICOMDIR, resolved against the DICOMDIR's folder, and a
    Problem for each reference that would leave that folder (never read).

    Files that are missing are still listed (the scan then reports them); component names are
    matched case-insensitively because media written on Windows are often read on Linux.
    Raises ValueError when `path` is not a readable, regular DICOMDIR file (a cut one included).
    """
    path = Path(path)
    ds = _read_dicomdir(path)
    root = path.parent
    files: list[Path] = []
    problems: list[Problem] = []
    listings: dict[Path, list[Path]] = {}
    for record in ds.DirectoryRecordSequence:
        if str(record.get("DirectoryRecordType", "")).strip().upper() != "IMAGE":
            continue
        parts = _strings(record, "ReferencedFileID")
        if not parts:
            continue
        try:
            files.append(_resolve(root, parts, listings))
        except ValueError as exc:
            shown = safety.printable("\\".join(parts))[:200]
            problems.append(Problem(f"{path} → {shown}", OUTSIDE_MEDIA, str(exc)))
    return files, problems


def _read_dicomdir(path: Path) -> Dataset:
    """The DICOMDIR data set; ValueError for a special file, a non-DICOMDIR or a cut one."""
    try:
        f = open_regular(path)
        if f is None:
            raise ValueError(f"{path} is not a regular file")
        with f:
            data = f.read(_MAX_DICOMDIR_BYTES + 1)
        if len(data) > _MAX_DICOMDIR_BYTES:
            raise ValueError(f"{path} is over {_MAX_DICOMDIR_BYTES:,} bytes, too large for a DICOMDIR")
        ds = dcmread(DicomBytesIO(data), stop_before_pixels=True)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{path} is not a DICOMDIR: {type(exc).__name__}: {exc}") from exc
    if classify.sop_class_uid(ds) != classify.MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" not in ds:
        raise ValueError(f"{path} is not a DICOMDIR (no Media Storage Directory SOP class or records)")
    if _record_sequence_cut(data) or _record_offsets_past(ds, len(data)):
        raise ValueError(f"{path} is cut short or damaged: its records do not fit the file")
    return ds


def _record_sequence_cut(data: bytes) -> bool:
    """True when the Directory Record Sequence (explicit VR, as PS3.10 requires) runs past EOF.

    pydicom reads a cut sequence without complaint, keeping the records it could read.
    """
    at = data.find(b"\x04\x00\x20\x12SQ\x00\x00")
    if at < 0 or len(data) < at + 12:
        return at >= 0
    (length,) = struct.unpack("<I", data[at + 8:at + 12])
    if length == _UNDEFINED:
        return not data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    return at + 12 + length > len(data)


def _record_offsets_past(ds: Dataset, size: int) -> bool:
    """True when the directory's record offsets point past the end of the file (a cut copy)."""
    offsets = [ds.get("OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity"),
               ds.get("OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity")]
    for record in ds.DirectoryRecordSequence:
        offsets.append(record.get("OffsetOfTheNextDirectoryRecord"))
        offsets.append(record.get("OffsetOfReferencedLowerLevelDirectoryEntity"))
    return any(isinstance(o, int) and o >= size for o in offsets)


def _resolve(root: Path, parts: tuple[str, ...], listings: dict[Path, list[Path]]) -> Path:
    """root/parts…, taking the on-disk spelling of each component when only its case differs.

    ValueError when a component is not a plain name or the result (links followed) lies
    outside `root`.
    """
    current = root
    for part in parts:
        if part in ("", ".", "..") or any(c in part for c in "/\\\x00") or Path(part).is_absolute():
            raise ValueError(f"the reference component {safety.printable(part)!r} is not a plain file name")
        candidate = current / part
        if not candidate.exists() and current.is_dir():
            if current not in listings:
                listings[current] = sorted(current.iterdir())
            matches = [p for p in listings[current] if p.name.upper() == part.upper()]
            candidate = matches[0] if matches else candidate
        current = candidate
    try:
        safety.inside(root, current)
    except InputRefused as exc:
        raise ValueError(f"the reference resolves outside {root}") from exc
    return current
