"""Header-only scan of one DICOM file: an ImageHeader for a usable mammogram, else a Problem.

Speed matters (a clinic archive has tens of thousands of files), so each file costs one open,
one `dcmread(..., stop_before_pixels=True)` and at most a few small reads to check that the pixel
data is complete. Pixel data is never read here, and files are only ever opened for reading.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.values import convert_value

from mamview.core.dicom import classify
from mamview.core.dicom.display import window_presets
from mamview.core.domain import ImageHeader, PresentationIntent, Problem

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

# Large private blobs and overlays before the pixel data are skipped, not read.
_DEFER_SIZE = 256 * 1024
_PIXEL_TAGS = {(0x7FE0, 0x0010), (0x7FE0, 0x0008), (0x7FE0, 0x0009)}
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


def read_header(path: str | os.PathLike) -> ImageHeader | Problem:
    """Scan one file's header. Never raises for bad input: every failure is a Problem.

    Reasons: 'empty file', 'unreadable file', 'not DICOM', 'unreadable header', 'DICOMDIR',
    'not an image', 'not a mammogram', 'tomosynthesis', 'no pixel data', 'truncated',
    'corrupt pixel data'. FOR PROCESSING mammograms are returned as headers (the caller decides).
    """
    name = str(path)
    try:
        info = os.stat(name)
    except OSError as exc:
        return Problem(name, UNREADABLE_FILE, exc.strerror or str(exc))
    if stat.S_ISDIR(info.st_mode):
        return Problem(name, NOT_DICOM, "a folder")
    if info.st_size == 0:
        return Problem(name, EMPTY_FILE)
    try:
        with open(name, "rb") as f:
            return _scan(f, name, info)
    except OSError as exc:
        return Problem(name, UNREADABLE_FILE, exc.strerror or str(exc))
    except Exception as exc:  # pydicom raises many types for damaged headers
        return Problem(name, UNREADABLE_HEADER, f"{type(exc).__name__}: {exc}")


def _scan(f: BinaryIO, name: str, info: os.stat_result) -> ImageHeader | Problem:
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
        ds = dcmread(f, stop_before_pixels=True, force=force, defer_size=_DEFER_SIZE)
    except (EOFError, struct.error) as exc:
        # pydicom runs out of bytes only when the file stops inside an element
        return Problem(name, TRUNCATED, f"the file ends inside the header ({exc})")
    pixel_start = f.tell()
    fields = FastFields(ds)
    deflated = fields.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    if not deflated and pixel_start >= info.st_size:
        # no pixel data found: was the header cut, or is it garbage?
        problem = _cut_or_corrupt_header(ds, pixel_start, info.st_size, name)
        if problem is not None:
            return problem
    if not classify.sop_class_uid(fields) and not fields.get("Modality") and "Rows" not in ds:
        # pydicom reads damaged headers leniently; nothing usable came out of this one
        return Problem(name, UNREADABLE_HEADER, "no SOP Class, Modality or image attributes could be read")

    if classify.sop_class_uid(fields) == classify.MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        return Problem(name, DICOMDIR, "a DICOMDIR index; its referenced files are read instead")
    ok, reason = classify.mammogram_kind(fields)
    if not ok:
        return Problem(name, reason, classify.kind_detail(fields))
    problem = _pixel_problem(f, ds, fields, pixel_start, info.st_size, name)
    if problem is not None:
        return problem
    return _header(fields, name, info)


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
    transfer_syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return _deflated_pixel_problem(name)
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


def _deflated_pixel_problem(name: str) -> Problem | None:
    """Deflated files hide offsets inside the zlib stream: read them whole (rare syntax)."""
    try:
        ds = dcmread(name)
        if not any(tag in ds for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)):
            return Problem(name, NO_PIXEL_DATA, classify.kind_detail(ds))
        have, need = len(ds.PixelData), _expected_pixel_bytes(ds)
    except Exception as exc:
        return Problem(name, TRUNCATED, f"deflated data set cannot be inflated: {exc}")
    if have < need:
        return Problem(name, TRUNCATED, f"Pixel Data holds {have} bytes, the image needs {need}")
    return None


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
    return ImageHeader(
        path=name,
        size=info.st_size,
        mtime_ns=info.st_mtime_ns,
        sop_instance_uid=_str(ds, "SOPInstanceUID") or str(meta.get("MediaStorageSOPInstanceUID") or ""),
        sop_class_uid=classify.sop_class_uid(ds),
        study_instance_uid=_str(ds, "StudyInstanceUID"),
        series_instance_uid=_str(ds, "SeriesInstanceUID"),
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
    )


# --- DICOMDIR -----------------------------------------------------------------------------------


def dicomdir_files(path: str | os.PathLike) -> list[Path]:
    """Image files referenced by a DICOMDIR, resolved against the DICOMDIR's folder.

    Files that are missing are still listed (the scan then reports them); component names are
    matched case-insensitively because media written on Windows are often read on Linux.
    Raises ValueError when `path` is not a readable DICOMDIR.
    """
    path = Path(path)
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a DICOMDIR: {type(exc).__name__}: {exc}") from exc
    if classify.sop_class_uid(ds) != classify.MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" not in ds:
        raise ValueError(f"{path} is not a DICOMDIR (no Media Storage Directory SOP class or records)")
    root = path.parent
    files = []
    for record in ds.DirectoryRecordSequence:
        if str(record.get("DirectoryRecordType", "")).strip().upper() != "IMAGE":
            continue
        parts = _strings(record, "ReferencedFileID")
        if parts:
            files.append(_resolve(root, parts))
    return files


def _resolve(root: Path, parts: tuple[str, ...]) -> Path:
    """root/parts…, taking the on-disk spelling of each component when only its case differs."""
    current = root
    for part in parts:
        candidate = current / part
        if not candidate.exists() and current.is_dir():
            matches = [p for p in current.iterdir() if p.name.upper() == part.upper()]
            candidate = matches[0] if matches else candidate
        current = candidate
    return current
