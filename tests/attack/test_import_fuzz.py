"""Seeded, bounded fuzz of `mamview import` with hostile files (issue 11, "Untrusted input").

Every case writes its bad inputs with pydicom (`tests.attack.hostile` and the builders below),
imports them into a fresh library through the real CLI and checks what the issue requires:

- each command exits 0 or with a documented non-zero status (1, 2) and a `mamview:` line; never
  a traceback, an uncaught exception (Rust panics included), a "mamview: internal error" line
  (an exception that reached the top-level handler), a signal or a hang;
- every input that is certainly bad is listed by `mamview problems --json`; an input that may
  still be a usable image (a flipped byte in a description) is imported or listed;
- nothing under the temporary root outside the library changed (file trees compared before and
  after) and nothing named after the case appeared in the system's temporary folder;
- `mamview problems` and `mamview patients` print no raw control characters;
- a following good import into the same library succeeds and makes its preview.

Cases that run native decoders on corrupt streams, claim huge sizes or open special files run
the CLI in a child process (a timeout, an address-space guard, peak RSS measured with wait4);
the others run in-process. A hypothesis property repeats the header flips (derandomized, not
shrunk, so bounded), and one test scores exams with implausible or undecodable views.
`tools/attack_campaign.py` runs the same builders at a larger count.

Reproduce one case: `pytest tests/attack/test_import_fuzz.py -k <case id>`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import traceback
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from tests import factories
from tests.attack import hostile

SEED = 20261101
REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 30  # a single small import takes ~1 s; more is a hang
PEAK_RSS_LIMIT = 2 * 1024**3  # the target: under 2 GB on this machine
ADDRESS_GUARD = 12 * 1024**3  # keeps a runaway child from taking the shared machine down
OK_STATUSES = (0, 1, 2)  # success, "some failed", MamviewError / usage error
GOOD_PATIENT = "GOOD1"  # the woman of the follow-up good import
INTERNAL_ERROR = "mamview: internal error"  # the CLI's line for an exception that is a bug
ALLOCATION_FAILURES = ("Unable to allocate", "MemoryError", "memory allocation of")


# ---------------------------------------------------------------- cases


@dataclass
class Ctx:
    """What a builder needs: the case folder and a unique token for names and UIDs."""

    root: Path  # snapshotted: everything under it except the library must stay as it was
    case_dir: Path  # root/in/<token>: the inputs of this case
    scratch: Path  # outside root: sources that are mutated into inputs
    token: str

    def uid(self, what: str) -> str:
        """A valid UID of fixed length derived from the token, so file bytes are reproducible."""
        n = int(hashlib.sha256(f"{self.token}/{what}".encode()).hexdigest(), 16) % 10**36
        return f"2.25.1{n:036d}"

    def name(self, tag: str = "a", suffix: str = ".dcm") -> Path:
        """A file in the case folder whose name holds the token (matched against problems)."""
        return self.case_dir / f"{self.token}-{tag}{suffix}"


@dataclass
class Built:
    """What a builder wrote and what the library must say about it afterwards."""

    args: list[str]  # paths given to `mamview import`
    bad: list[str] = field(default_factory=list)  # tokens that must be in `problems`
    maybe: list[str] = field(default_factory=list)  # tokens: in `problems` or imported
    imported: list[str] = field(default_factory=list)  # SOP UIDs that must be in the library
    not_imported: list[str] = field(default_factory=list)  # SOP UIDs that must not be
    nonzero: bool = False  # the import itself must fail with a message
    exams: int | None = None  # exams the inputs must make (keys that collide merge women)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    """One attack: `build` writes the inputs; `isolate` runs the CLI in a child process."""

    id: str
    build: Callable[[Ctx], Built]
    isolate: bool = False


def _valid(kind: str, path: Path, ctx: Ctx, tag: str = "", **overrides) -> Path:
    """A valid small mammogram of `kind` (native, rle, j2k) with UIDs fixed by the token."""
    writers = {"native": hostile.write_mammogram, "rle": hostile.rle_mammogram,
               "j2k": hostile.j2k_mammogram}
    overrides.setdefault("sop_uid", ctx.uid("sop" + tag))
    overrides.setdefault("study_uid", ctx.uid("study"))
    overrides.setdefault("series_uid", ctx.uid("series"))
    return writers[kind](path, **overrides)


def _stream_start(path: Path) -> int:
    """Offset of the Pixel Data element's tag (the end of the header)."""
    return hostile.pixel_data_offset(path) - 12


def _flipped(data: bytes, lo: int, hi: int, flips: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(flips):
        out[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
    return bytes(out)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def _lenient():
    """Let pydicom write values that break the standard, quietly (that is the point)."""
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.writing_validation_mode = old


def header_flips(kind: str, seed: int) -> Case:
    """1–3 random byte flips in the header (after the preamble, before the pixel data)."""
    def build(ctx: Ctx) -> Built:
        src = _valid(kind, ctx.scratch / "src.dcm", ctx)
        rng = random.Random(seed)
        data = _flipped(src.read_bytes(), 132, _stream_start(src), rng.randint(1, 3), rng)
        _write(ctx.name(), data)
        return Built([str(ctx.case_dir)], maybe=[f"{ctx.token}-a"])
    return Case(f"header-flip-{kind}-{seed}", build)


def stream_flips(kind: str, seed: int, files: int = 3) -> Case:
    """Byte flips inside the compressed stream of `files` images (native decoders: a child)."""
    def build(ctx: Ctx) -> Built:
        rng = random.Random(seed)
        tags = [chr(ord("a") + i) for i in range(files)]
        for tag in tags:
            src = _valid(kind, ctx.scratch / "src.dcm", ctx, tag=tag)
            start = hostile.pixel_data_offset(src) + 16  # past the offset table item
            data = _flipped(src.read_bytes(), start, src.stat().st_size - 8, rng.randint(1, 4), rng)
            _write(ctx.name(tag), data)
        return Built([str(ctx.case_dir)], maybe=[f"{ctx.token}-{t}" for t in tags])
    return Case(f"stream-flip-{kind}-{seed}", build, isolate=True)


def truncation(kind: str, where: str, seed: int) -> Case:
    """The file cut at a named place (plus a seeded jitter): always a bad input."""
    def build(ctx: Ctx) -> Built:
        src = _valid(kind, ctx.scratch / "src.dcm", ctx)
        data = src.read_bytes()
        pixels = hostile.pixel_data_offset(src)
        meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
        rng = random.Random(seed)
        cut = {
            "empty": 0, "preamble": rng.randrange(1, 128), "magic": 130,
            "meta": rng.randrange(133, meta_end - 1), "meta-end": meta_end,
            "header": rng.randrange(meta_end + 1, pixels - 12),
            "pixel-tag": pixels - 6, "pixel-start": pixels,
            "pixel-mid": rng.randrange(pixels + 16, len(data) - 24),
            "last-frame-byte": len(data) - (9 if kind != "native" else 1),
        }[where]
        _write(ctx.name(), data[:cut])
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return Case(f"truncate-{kind}-{where}", build, isolate=kind != "native")


def edit_header(path: Path, attrs: dict) -> Path:
    """Set each attribute of the file at `path` to its value (None deletes it, a callable is
    called with the dataset), writing values that break the standard as they are."""
    ds = dcmread(path)
    with _lenient():
        for keyword, value in attrs.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            elif callable(value):
                value(ds)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=False)
    return path


def header_case(case_id: str, strict: bool = True, isolate: bool = False, **attrs) -> Case:
    """A valid native mammogram with attributes set to the values in `attrs` (see edit_header)."""
    def build(ctx: Ctx) -> Built:
        edit_header(_valid("native", ctx.name(), ctx), attrs)
        token = f"{ctx.token}-a"
        return Built([str(ctx.case_dir)], bad=[token] if strict else [], maybe=[] if strict else [token])
    return Case(case_id, build, isolate=isolate)


def _half_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


def _one_pixel_short(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-2]  # even, so pydicom writes it as it is


def _double_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData * 2


def _constant_pixels(ds: Dataset) -> None:
    ds.PixelData = bytes(len(ds.PixelData))


def _one_pixel(ds: Dataset) -> None:
    ds.Rows = ds.Columns = 1
    ds.PixelData = b"\x00\x08"


def _tiny(ds: Dataset) -> None:
    ds.Rows = ds.Columns = 16
    ds.PixelData = bytes(range(256)) * 2


def _deep_sequence(ctx: Ctx, depth: int = 5000) -> Built:
    """A private sequence nested `depth` levels deep, written as raw bytes just before the pixel
    data (undefined lengths, properly closed): recursion in every reader that descends it."""
    src = _valid("native", ctx.scratch / "src.dcm", ctx)
    data = src.read_bytes()
    cut = _stream_start(src)
    creator = b"\xdf\x7f\x10\x00LO\x02\x00ZQ"
    open_level = b"\xdf\x7f\x11\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close_level = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    _write(ctx.name(), data[:cut] + creator + open_level * depth + close_level * depth + data[cut:])
    return Built([str(ctx.case_dir)], maybe=[f"{ctx.token}-a"])


def bit_depth(case_id: str, allocated: int, stored: int, high: int, strict: bool = True) -> Case:
    """Inconsistent BitsAllocated / BitsStored / HighBit over 16-bit pixel bytes."""
    def build(ctx: Ctx) -> Built:
        hostile.bit_depths(ctx.name(), allocated, stored, high, sop_uid=ctx.uid("sop"))
        token = f"{ctx.token}-a"
        return Built([str(ctx.case_dir)], bad=[token] if strict else [], maybe=[] if strict else [token])
    return Case(case_id, build)


def uid_case(case_id: str, make_uid: Callable[[Ctx], str], keyword: str = "SOPInstanceUID",
             strict: bool = True) -> Case:
    """A valid image whose `keyword` UID is `make_uid(ctx)` (a path, an overlong or odd value)."""
    def build(ctx: Ctx) -> Built:
        uid = make_uid(ctx)
        path = _valid("native", ctx.name(), ctx)
        ds = dcmread(path)
        with _lenient():
            if keyword in ("SOPInstanceUID", "MediaStorageSOPInstanceUID"):
                ds.file_meta.MediaStorageSOPInstanceUID = uid
            if keyword != "MediaStorageSOPInstanceUID":
                setattr(ds, keyword, uid)
            ds.save_as(path, enforce_file_format=False)
        token = f"{ctx.token}-a"
        return Built([str(ctx.case_dir)], bad=[token] if strict else [], maybe=[] if strict else [token])
    return Case(f"uid-{case_id}", build)


def _far_escape(ctx: Ctx) -> str:
    # far enough up from <library>/previews/xx/ to reach /, then into the system's temp folder
    return "../" * 40 + tempfile.gettempdir().lstrip("/") + f"/{ctx.token}-far"


def oversized(case_id: str, make: Callable[[Path], Path]) -> Case:
    """A header claiming a size far beyond the caps over a small stream (a child: may abort)."""
    def build(ctx: Ctx) -> Built:
        make(ctx.name())
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return Case(f"oversized-{case_id}", build, isolate=True)


def _j2k_siz_claims(path: Path, size: int = 65535) -> Path:
    """A JPEG 2000 image whose header and codestream SIZ marker both claim size × size."""
    src = hostile.j2k_mammogram(path.with_name(path.name + ".src"))
    frame = bytearray(hostile.first_frame(src))
    siz = frame.find(b"\xff\x51")
    for off in (6, 10, 22, 26):  # Xsiz, Ysiz, XTsiz, YTsiz (after marker, Lsiz, Rsiz)
        frame[siz + off: siz + off + 4] = size.to_bytes(4, "big")
    out = hostile.replace_frame(src, path, bytes(frame), Rows=size, Columns=size)
    src.unlink()
    return out


def _deflated_small_dims(path: Path, inflated: int) -> Path:
    """A deflated file whose header says 256×208 but whose pixel data inflates to `inflated`
    bytes: only the inflated length gives it away (the cap in `limits` is not reached)."""
    ds = dcmread(hostile.write_mammogram(path.with_name(path.name + ".src")))
    path.with_name(path.name + ".src").unlink()
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    block = 1 << 20
    blocks = inflated // block
    head.write(b"\xe0\x7f\x10\x00OW\x00\x00" + (blocks * block).to_bytes(4, "little"))
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = c.compress(head.getvalue()) + c.flush(zlib.Z_FULL_FLUSH)
    zero = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    meta = DicomBytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    return _write(path, b"\0" * 128 + b"DICM" + meta.getvalue() + stream + zero * blocks
                  + c.flush(zlib.Z_FINISH))


def bomb(case_id: str, make: Callable[[Path], Path]) -> Case:
    """A deflate bomb (a child: the memory it takes is measured)."""
    def build(ctx: Ctx) -> Built:
        make(ctx.name())
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return Case(f"deflate-bomb-{case_id}", build, isolate=True)


def _retag_transfer_syntax(data: bytes, uid: str) -> bytes:
    """`data` (a DICOM file) with its file meta's Transfer Syntax UID replaced by `uid`, the
    group length fixed: the dataset itself stays as it was written."""
    value = uid.encode("latin-1", "replace")
    value += b"\0" * (len(value) % 2)
    pos, end = 132, 144 + int.from_bytes(data[140:144], "little")
    while pos < end:
        tag, vr = data[pos:pos + 4], data[pos + 4:pos + 6]
        long_vr = vr in (b"OB", b"OW", b"UN", b"SQ", b"UT")
        head = 12 if long_vr else 8
        length = int.from_bytes(data[pos + (8 if long_vr else 6):pos + head], "little")
        if tag == b"\x02\x00\x10\x00":
            element = tag + b"UI" + len(value).to_bytes(2, "little") + value
            out = data[:pos] + element + data[pos + head + length:]
            group = end - 144 + len(element) - head - length
            return out[:140] + group.to_bytes(4, "little") + out[144:]
        pos += head + length
    raise ValueError("no Transfer Syntax UID in the file meta")


def transfer_syntax(case_id: str, ts: str | None = None) -> Case:
    """A native file whose transfer syntax says something else about its pixel data (or, with
    no `ts`, a deflated file whose deflate stream is cut in the middle)."""
    def build(ctx: Ctx) -> Built:
        if ts is None:
            src = _valid("native", ctx.scratch / "src.dcm", ctx,
                         transfer_syntax=DeflatedExplicitVRLittleEndian)
            data = src.read_bytes()
            _write(ctx.name(), data[: len(data) // 2])
        else:
            src = _valid("native", ctx.scratch / "src.dcm", ctx)
            _write(ctx.name(), _retag_transfer_syntax(src.read_bytes(), ts))
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return Case(f"transfer-syntax-{case_id}", build)


def odd_name(case_id: str, name: Callable[[Ctx], bytes]) -> Case:
    """A valid image under an odd file name next to a plain one: both are accounted for and the
    plain one is imported (one odd name never fails the folder)."""
    def build(ctx: Ctx) -> Built:
        _valid("native", ctx.name("plain"), ctx, tag="plain", laterality="L")
        src = _valid("native", ctx.scratch / "odd.dcm", ctx, tag="odd")
        target = os.path.join(os.fsencode(ctx.case_dir), name(ctx))
        os.rename(os.fsencode(src), target)
        return Built([str(ctx.case_dir)], maybe=[ctx.token + "-odd"],
                     imported=[ctx.uid("sopplain")])
    return Case(f"name-{case_id}", build)


def _deep_folders(ctx: Ctx) -> Built:
    """A valid file below a path longer than PATH_MAX (created through directory fds)."""
    _valid("native", ctx.name("plain"), ctx, tag="plain", laterality="L")
    data = _valid("native", ctx.scratch / "deep.dcm", ctx, tag="deep").read_bytes()
    fd = os.open(ctx.case_dir, os.O_RDONLY)
    try:
        for _ in range(24):
            os.mkdir("d" * 200, dir_fd=fd)
            nfd = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out = os.open(f"{ctx.token}-deep.dcm", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return Built([str(ctx.case_dir)], maybe=[ctx.token + "-deep"], imported=[ctx.uid("sopplain")])


def _escape_text(ctx: Ctx) -> Built:
    """A truncated file whose name holds a terminal escape (printed by `problems`) and a valid
    one whose patient name does (printed by `patients`)."""
    src = _valid("native", ctx.scratch / "esc.dcm", ctx, tag="esc")
    _write(ctx.case_dir / f"{ctx.token}-esc\x1b[2J\x1b]0;owned\x07.dcm", src.read_bytes()[:400])
    _valid("native", ctx.name("plain"), ctx, tag="plain",
           patient_name="EVIL\x1b[31m^RED\x1b]0;owned\x07", patient_id="ESC\x1b[1mID")
    return Built([str(ctx.case_dir)], bad=[ctx.token + "-esc"], imported=[ctx.uid("sopplain")])


def _dicomdir_with(ctx: Ctx, ref: Callable[[Path, Path], str | list[str]]) -> Built:
    """A media folder whose DICOMDIR's one IMAGE record points at `ref(media, outside_file)`,
    a valid image outside the media folder that must not be imported."""
    media = ctx.case_dir / "media"
    inside = _valid("native", ctx.scratch / "in.dcm", ctx, tag="in")
    dicomdir = factories.write_dicomdir(media, [inside])
    outside = _valid("native", ctx.case_dir / "outside" / f"{ctx.token}-out.dcm", ctx, tag="out")
    ds = dcmread(dicomdir)
    record = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"][-1]
    with _lenient():
        record.ReferencedFileID = ref(media, outside)
        ds.save_as(dicomdir, enforce_file_format=False)
    return Built([str(dicomdir)], bad=[ctx.token], not_imported=[ctx.uid("sopout")])


def _symlink_ref(media: Path, outside: Path) -> str:
    (media / "LINK").symlink_to(outside)
    return "LINK"


def dicomdir_case(case_id: str, ref: Callable[[Path, Path], str | list[str]]) -> Case:
    return Case(f"dicomdir-{case_id}", lambda ctx: _dicomdir_with(ctx, ref))


def _dicomdir_truncated(ctx: Ctx) -> Built:
    dicomdir = factories.write_dicomdir(ctx.case_dir / "media",
                                                [_valid("native", ctx.scratch / "in.dcm", ctx)])
    data = dicomdir.read_bytes()
    dicomdir.write_bytes(data[: int(len(data) * 0.6)])
    return Built([str(dicomdir)], bad=[ctx.token])


def _dicomdir_missing_file(ctx: Ctx) -> Built:
    return _dicomdir_with(ctx, lambda media, outside: ["NOSUCH", "FILE"])


def _fifo_in_folder(ctx: Ctx) -> Built:
    _valid("native", ctx.name("plain"), ctx, tag="plain")
    os.mkfifo(ctx.name("fifo"))
    return Built([str(ctx.case_dir)], bad=[ctx.token + "-fifo"], imported=[ctx.uid("sopplain")])


def _fifo_dicomdir(ctx: Ctx) -> Built:
    (ctx.case_dir / "media").mkdir(parents=True)
    os.mkfifo(ctx.case_dir / "media" / "DICOMDIR")
    return Built([str(ctx.case_dir / "media" / "DICOMDIR")], bad=[ctx.token])


def _dev_zero(ctx: Ctx) -> Built:
    _valid("native", ctx.name("plain"), ctx, tag="plain")
    ctx.name("zero").symlink_to("/dev/zero")
    return Built([str(ctx.case_dir)], bad=[ctx.token + "-zero"], imported=[ctx.uid("sopplain")])


def _sparse(size: int) -> Callable[[Ctx], Built]:
    """A file of `size` bytes (sparse: no disk used): a DICOM preamble and meta, then zeros."""
    def build(ctx: Ctx) -> Built:
        src = _valid("native", ctx.scratch / "src.dcm", ctx)
        head = src.read_bytes()[: 132 + 12 + int.from_bytes(src.read_bytes()[140:144], "little")]
        path = ctx.name()
        _write(path, head)
        with open(path, "r+b") as f:
            f.truncate(size)
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return build


def _garbage(kind: str) -> Callable[[Ctx], Built]:
    def build(ctx: Ctx) -> Built:
        rng = random.Random(kind)
        noise = bytes(rng.randrange(256) for _ in range(4096))
        data = {"empty": b"", "noise": noise, "magic-noise": b"\0" * 128 + b"DICM" + noise,
                "preamble-only": b"\0" * 128 + b"DICM", "text": b"hello\n" * 100}[kind]
        _write(ctx.name(), data)
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return build


def _length_lie(undefined_sequence: bool) -> Callable[[Ctx], Built]:
    """An element whose declared length runs far past the end of the file, or a sequence of
    undefined length that is never closed."""
    def build(ctx: Ctx) -> Built:
        src = _valid("native", ctx.scratch / "src.dcm", ctx)
        data = src.read_bytes()
        cut = _stream_start(src)
        if undefined_sequence:
            lie = b"\x09\x00\x11\x10SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        else:
            lie = b"\x09\x00\x12\x10OB\x00\x00\xf0\xff\xff\xff"
        _write(ctx.name(), data[:cut] + lie + b"\x00" * 64)
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return build


def _not_found(ctx: Ctx) -> Built:
    return Built([str(ctx.case_dir / f"{ctx.token}-nosuch")], bad=[ctx.token], nonzero=True)


def _panicking_rle(ctx: Ctx) -> Built:
    hostile.panicking_rle(ctx.name(), sop_uid=ctx.uid("sop"))
    return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])


def _special_argument(kind: str) -> Callable[[Ctx], Built]:
    """A special file given as the import argument itself (not found by walking a folder)."""
    def build(ctx: Ctx) -> Built:
        path = ctx.name(kind)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "zero":
            path.symlink_to("/dev/zero")
        else:  # a loop of two symbolic links
            path.symlink_to(ctx.name("loop-b"))
            ctx.name("loop-b").symlink_to(path)
        # listed under the name given or, for the link to /dev/zero, the file it names
        return Built([str(path)], bad=["zero" if kind == "zero" else f"{ctx.token}-{kind}"])
    return build


def _dicomdir_fifo_ref(media: Path, outside: Path) -> str:
    os.mkfifo(media / "FIFO")
    return "FIFO"


def _native_decoder_garbage(ts: str, marker: bytes) -> Callable[[Ctx], Built]:
    """An encapsulated frame of seeded garbage (after a plausible start marker) under a
    transfer syntax that GDCM or another native decoder handles."""
    def build(ctx: Ctx) -> Built:
        rng = random.Random(ts)
        ds = dcmread(_valid("native", ctx.scratch / "src.dcm", ctx))
        ds.PixelData = encapsulate([marker + bytes(rng.randrange(256) for _ in range(4000))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = ts
        _write(ctx.name(), b"")
        with _lenient():
            ds.save_as(ctx.name(), enforce_file_format=True)
        return Built([str(ctx.case_dir)], bad=[f"{ctx.token}-a"])
    return build


def _separator_keys(ctx: Ctx) -> Built:
    """Five different women whose IDs and issuers hold what a naive key would join with: a `|`
    in either field (issuer|ID or ID|issuer), the "no-id:<study>" form of a woman without an
    ID, a backslash (a multi-valued ID). Each must stay her own woman with her own exam."""
    no_id_study = ctx.uid("studyc")
    women = (("a", "Y|Z", "X"), ("b", "Z", "X|Y"), ("c", "", ""),
             ("d", f"no-id:{no_id_study}", ""), ("e", "A\\B", ""))
    for tag, pid, issuer in women:
        _valid("native", ctx.name(tag), ctx, tag=tag, patient_id=pid,
               study_uid=ctx.uid("study" + tag), extra={"IssuerOfPatientID": issuer})
    return Built([str(ctx.case_dir)], imported=[ctx.uid(f"sop{t}") for t, *_ in women],
                 exams=len(women))


def build_cases(seed: int = SEED, flips: int = 4, stream_groups: int = 1,
                heavy: bool = False) -> list[Case]:
    """Every case: `flips` header-flip cases per kind, `stream_groups` stream-flip cases per
    compressed kind (3 files each), and the fixed attacks; `heavy` adds the slowest variants
    of kinds the suite already covers (for the campaign). Same seed, same cases."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for kind in ("native", "rle", "j2k"):
        cases += [header_flips(kind, rng.randrange(10**6)) for _ in range(flips)]
    for kind in ("rle", "j2k"):
        cases += [stream_flips(kind, rng.randrange(10**6)) for _ in range(stream_groups)]
    for where in ("empty", "preamble", "magic", "meta", "meta-end", "header", "pixel-tag",
                  "pixel-start", "pixel-mid", "last-frame-byte"):
        cases.append(truncation("native", where, rng.randrange(10**6)))
    for kind in ("rle", "j2k"):
        cases += [truncation(kind, where, rng.randrange(10**6)) for where in ("pixel-mid", "last-frame-byte")]
    cases += [
        Case("panicking-rle", _panicking_rle, isolate=True),
        bit_depth("bits-stored-over-allocated", 16, 20, 19),
        bit_depth("bits-8-over-16-bit-data", 8, 12, 11),
        bit_depth("bits-allocated-12", 12, 12, 11),
        bit_depth("bits-zero", 0, 0, 0),
        bit_depth("bits-32-over-16-bit-data", 32, 12, 11),
        bit_depth("bits-1", 1, 1, 0),
        bit_depth("high-bit-wrong", 16, 12, 15, strict=False),
        header_case("pixels-half-length", PixelData=_half_pixels),
        header_case("pixels-one-short", PixelData=_one_pixel_short),
        header_case("pixels-double-length", strict=False, PixelData=_double_pixels),
        header_case("pixels-empty", PixelData=b""),
        header_case("pixels-absent", PixelData=None),
        header_case("rows-zero", Rows=0),
        header_case("columns-zero", Columns=0),
        # implausible but decodable: imported and previewed, refused by `score` (test below)
        header_case("one-pixel", strict=False, Rows=_one_pixel),
        header_case("sixteen-pixels", strict=False, Rows=_tiny),
        header_case("samples-3", SamplesPerPixel=3),
        header_case("photometric-rgb", strict=False, PhotometricInterpretation="RGB"),
        header_case("pixel-representation-7", strict=False, PixelRepresentation=7),
        header_case("frames-zero", strict=False, NumberOfFrames=0),
        header_case("frames-negative", strict=False, NumberOfFrames="-5"),
        header_case("slope-nan", strict=False, RescaleSlope="NaN"),
        header_case("slope-huge", strict=False, RescaleSlope="1e308"),
        header_case("window-width-zero", strict=False, WindowWidth=0),
        header_case("window-huge", strict=False, WindowCenter="1e300", WindowWidth="1e300"),
        header_case("constant-image", strict=False, PixelData=_constant_pixels),
        Case("deep-sequence", _deep_sequence, isolate=True),
        transfer_syntax("unknown", ts="1.2.3.4.5.6.7"),
        transfer_syntax("path-like", ts="../../../../x"),
        transfer_syntax("j2k-over-native", ts=JPEG2000Lossless),
        transfer_syntax("rle-over-native", ts=RLELossless),
        transfer_syntax("deflated-not-deflated", ts=DeflatedExplicitVRLittleEndian),
        transfer_syntax("deflate-stream-cut"),
        uid_case("parent-path", lambda ctx: "../../../../x"),
        uid_case("absolute-in-root", lambda ctx: str(ctx.root / "abs" / ctx.token)),
        uid_case("far-escape", _far_escape),
        uid_case("digits-then-path", lambda ctx: "1.2.3/../../../../y"),
        uid_case("dot-dot", lambda ctx: ".."),
        uid_case("empty", lambda ctx: ""),
        uid_case("nul", lambda ctx: "1.2.3\x00/../../z"),
        uid_case("65-chars", lambda ctx: "1." + "2" * 63),
        uid_case("backslash", lambda ctx: "1.2.3\\..\\..\\w"),
        uid_case("non-ascii-digits", lambda ctx: "1.2.\u00b3.\u00b9"),
        uid_case("newline", lambda ctx: "1.2.3\n4"),
        uid_case("study-path", lambda ctx: "../../../../s", keyword="StudyInstanceUID"),
        uid_case("series-path", lambda ctx: "../../../../t", keyword="SeriesInstanceUID"),
        uid_case("media-storage-path", lambda ctx: "../../../../m",
                 keyword="MediaStorageSOPInstanceUID", strict=False),
        odd_name("non-utf8", lambda ctx: ctx.token.encode() + b"-odd\xff\xfe.dcm"),
        odd_name("newline", lambda ctx: ctx.token.encode() + b"-odd\nsecond line.dcm"),
        odd_name("long", lambda ctx: (ctx.token + "-odd").encode() + b"x" * 230 + b".dcm"),
        odd_name("leading-dash", lambda ctx: b"--" + ctx.token.encode() + b"-odd.dcm"),
        odd_name("backslash-quote", lambda ctx: ctx.token.encode() + b"-odd\\'\"$(x).dcm"),
        Case("name-deeper-than-path-max", _deep_folders),
        Case("escape-sequences-in-output", _escape_text),
        dicomdir_case("parent-escape", lambda media, outside: ["..", "outside", outside.name]),
        dicomdir_case("absolute", lambda media, outside: str(outside)),
        dicomdir_case("symlink-out", _symlink_ref),
        Case("dicomdir-missing-file", _dicomdir_missing_file),
        Case("dicomdir-truncated", _dicomdir_truncated),
        Case("dicomdir-fifo", _fifo_dicomdir, isolate=True),
        Case("special-fifo", _fifo_in_folder, isolate=True),
        Case("special-dev-zero", _dev_zero, isolate=True),
        Case("sparse-3gib-zeros", _sparse(3 * 1024**3), isolate=True),
        Case("length-past-eof", _length_lie(False)),
        Case("sequence-never-closed", _length_lie(True)),
        Case("path-not-found", _not_found),
        Case("argument-fifo", _special_argument("fifo"), isolate=True),
        Case("argument-dev-zero", _special_argument("zero"), isolate=True),
        Case("argument-symlink-loop", _special_argument("loop")),
        dicomdir_case("fifo-inside-media", _dicomdir_fifo_ref),
        dicomdir_case("self-reference", lambda media, outside: "DICOMDIR"),
        Case("keys-with-separators", _separator_keys),
    ]
    cases += [Case(f"native-decoder-garbage-{name}", _native_decoder_garbage(ts, marker), isolate=True)
              for name, ts, marker in (
                  ("jpeg-lossless", "1.2.840.10008.1.2.4.70", b"\xff\xd8\xff\xc3\x00\x0b\x10\x01\x00\x00\xd0\x01\x01\x11\x00"),
                  ("jpeg-ls", "1.2.840.10008.1.2.4.80", b"\xff\xd8\xff\xf7\x00\x0b\x10\x01\x00\x00\xd0\x01\x01\x11\x00"),
                  ("jpeg-baseline", "1.2.840.10008.1.2.4.50", b"\xff\xd8\xff\xc0\x00\x0b\x08\x01\x00\x00\xd0\x01\x01\x11\x00"))]
    cases += [Case(f"garbage-{k}", _garbage(k))
              for k in ("empty", "noise", "magic-noise", "preamble-only", "text")]
    cases += [
        oversized("native-65535", lambda p: hostile.oversized_native(p)),
        oversized("native-65535-x1000-frames", lambda p: hostile.oversized_native(p, frames=1000)),
        oversized("native-2g-frames", lambda p: hostile.oversized_native(p, 256, 208, 2**31 - 1)),
        oversized("rle-65535", lambda p: hostile.oversized_rle(p)),
        oversized("j2k-header-65535", lambda p: _j2k_header_claims(p)),
        oversized("j2k-siz-65535", _j2k_siz_claims),
        bomb("1gib", lambda p: hostile.deflate_bomb(p)),
        bomb("900mib-small-header", lambda p: _deflated_small_dims(p, 900 << 20)),
    ]
    if heavy:
        cases += [Case("sparse-5gib", _sparse(5 * 1024**3), isolate=True),
                  bomb("3gib", lambda p: hostile.deflate_bomb(p, 3 * 1024**3))]
    return cases


def _j2k_header_claims(path: Path) -> Path:
    src = hostile.j2k_mammogram(path.with_name(path.name + ".src"))
    out = hostile.replace_frame(src, path, hostile.first_frame(src), Rows=65535, Columns=65535)
    src.unlink()
    return out


# ---------------------------------------------------------------- running the CLI


@dataclass
class Step:
    """One CLI command's outcome; `crash` holds the traceback of an exception that escaped."""

    argv: list[str]
    rc: int | None = None
    out: str = ""
    err: str = ""
    crash: str = ""


def _run_step(argv: list[str]) -> Step:
    """Run `mamview.cli.main(argv)` here, with stdout and stderr captured as real terminals
    would encode them (UTF-8, strict on stdout), and every escaping exception recorded."""
    from mamview.cli import main

    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="backslashreplace", write_through=True)
    step = Step(list(argv))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            step.rc = main(argv) or 0
    except SystemExit as exc:
        step.rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: BLE001 - a Rust panic is a BaseException: that is the finding
        step.crash = traceback.format_exc()
    with contextlib.suppress(Exception):
        out.flush()
        err.flush()
    step.out = out_b.getvalue().decode("utf-8", "replace")
    step.err = err_b.getvalue().decode("utf-8", "replace")
    return step


def _child_main() -> None:
    """Entry point of the child: run the steps in the JSON file argv[2], append each result to
    the JSON-lines file argv[1] as soon as it is known (so a crash still leaves the earlier)."""
    # the address-space guard is set here, not in a preexec_fn (unsafe when the parent has threads)
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_GUARD, ADDRESS_GUARD))
    results, steps = sys.argv[1], sys.argv[2]
    for argv in json.loads(Path(steps).read_text()):
        step = _run_step(argv)
        with open(results, "a") as f:
            f.write(json.dumps(asdict(step)) + "\n")


@dataclass
class ChildRun:
    steps: list[Step]
    status: int  # exit code, or -signal
    timed_out: bool
    peak_rss: int  # bytes
    output: str  # the child's own stdout/stderr (panic messages, aborts)


def run_in_child(steps: list[list[str]], cwd: Path, env: dict[str, str], work: Path,
                 timeout: float = CHILD_TIMEOUT_S) -> ChildRun:
    """Run the steps in a child process; a timeout kills its whole process group."""
    work.mkdir(parents=True, exist_ok=True)
    steps_file, results, output = work / "steps.json", work / "results.jsonl", work / "output.txt"
    steps_file.write_text(json.dumps(steps))
    results.unlink(missing_ok=True)
    child_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    code = "from tests.attack.test_import_fuzz import _child_main; _child_main()"
    with open(output, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", code, str(results), str(steps_file)],
                                cwd=cwd, env=child_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    fired = threading.Event()

    def kill():
        fired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    done = [Step(**json.loads(line)) for line in results.read_text().splitlines()] if results.exists() else []
    return ChildRun(done, proc.returncode, fired.is_set(), usage.ru_maxrss * 1024,
                    output.read_text(errors="replace")[-2000:])


# ---------------------------------------------------------------- checking


def tree(root: Path, skip: Path) -> dict[bytes, tuple[int, int, int]]:
    """Every entry under `root` except `skip`: (type, size, mtime_ns), by path (bytes: names
    need not be UTF-8). Entries too deep to reach by path are left out on both sides."""
    skip_b = os.fsencode(skip)
    entries: dict[bytes, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip_b]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            kind = stat.S_IFMT(st.st_mode)
            entries[p] = (kind, 0 if kind == stat.S_IFDIR else st.st_size, st.st_mtime_ns)
    return entries


def tree_changes(before: dict, after: dict) -> list[str]:
    """Human-readable differences between two `tree` snapshots."""
    changes = [f"created {os.fsdecode(p)}" for p in after.keys() - before.keys()]
    changes += [f"removed {os.fsdecode(p)}" for p in before.keys() - after.keys()]
    changes += [f"changed {os.fsdecode(p)}" for p in before.keys() & after.keys()
                if before[p] != after[p]]
    return sorted(changes)


def temp_leftovers(token: str) -> list[str]:
    """Entries named after the case in the system's temporary folder (an escaped write)."""
    tmp = tempfile.gettempdir()
    return [os.path.join(tmp, n) for n in os.listdir(tmp) if token in n]


def _json(step: Step | None):
    if step is None or step.rc != 0 or step.crash:
        return None
    try:
        return json.loads(step.out)
    except ValueError:
        return None


def _has_controls(text: str) -> bool:
    return any((ord(c) < 32 and c not in "\n\t\r") or 0x7F <= ord(c) <= 0x9F for c in text)


def step_violations(step: Step, name: str = "", nonzero: bool = False) -> list[str]:
    """What is wrong with how one command ended (`name` says which step it was)."""
    what = f"{step.argv[2]}" + (f" ({name})" if name else "")
    if step.crash:
        return [f"`{what}` raised: {step.crash.strip().splitlines()[-1]}"]
    problems = []
    if step.rc not in OK_STATUSES:
        problems.append(f"`{what}` exited {step.rc}")
    if "Traceback (most recent call last)" in step.err:
        problems.append(f"`{what}` printed a traceback: {step.err.strip().splitlines()[-1]}")
    internal = [line for line in step.err.splitlines() if line.startswith(INTERNAL_ERROR)]
    if internal:  # the top-level handler caught something no lower layer turned into a problem
        problems.append(f"`{what}` ended in an internal error: {internal[0][:200]}")
    if step.rc and not any(line.startswith("mamview") for line in step.err.splitlines()):
        problems.append(f"`{what}` exited {step.rc} without a `mamview:` message")
    if nonzero and step.rc == 0:
        problems.append(f"`{what}` exited 0 although its input cannot be imported")
    return problems


def outcome_violations(built: Built, steps: dict[str, Step | None], good_uid: str) -> list[str]:
    """What the library must say afterwards: problems listed, images imported or not, the good
    import previewed, no raw control characters printed."""
    v: list[str] = []
    problems = _json(steps["problems"])
    exams = _json(steps["exams"])
    good = _json(steps["good"])
    if problems is None:
        v.append("`problems --json` gave no JSON list")
        problems = []
    listed = [f"{r.get('path', '')} {r.get('detail', '')}" for r in problems]
    images = [im for e in (exams or []) for im in e.get("images", [])]
    image_paths = [str(im.get("path", "")) for im in images]
    uids = {im.get("sop_instance_uid") for im in images}
    for token in built.bad:
        if not any(token in text for text in listed):
            v.append(f"bad input {token!r} is not listed by `problems`")
    for token in built.maybe:
        if not any(token in text for text in listed + image_paths):
            v.append(f"input {token!r} is neither imported nor listed by `problems`")
    v += [f"image {u} should have been imported" for u in built.imported if u not in uids]
    v += [f"image {u} outside the media root was imported" for u in built.not_imported if u in uids]
    made = [e for e in (exams or []) if e.get("patient_id") != GOOD_PATIENT]
    if built.exams is not None and exams is not None and len(made) != built.exams:
        v.append(f"{len(made)} exams made instead of {built.exams} (keys collide?)")
    for text in listed:
        if any(marker in text for marker in ALLOCATION_FAILURES):
            v.append(f"an unbounded allocation was attempted: {text.strip()[:200]}")
    if exams is None:
        v.append("`exams --json` gave no JSON")
    if good is None:
        v.append("the following good import failed")
    elif good.get("previews", 0) < 1:
        v.append("the following good import made no preview")
    if exams is not None and not any(im.get("sop_instance_uid") == good_uid
                                     and not im.get("decode_error") for im in images):
        v.append("the following good image is not in the library, or not decodable")
    for name in ("problems-text", "patients-text"):
        step = steps.get(name)
        if step is not None and _has_controls(step.out):
            v.append(f"`{name.split('-')[0]}` printed raw control characters")
    return v


STEP_NAMES = ("import", "problems", "good", "exams", "problems-text", "patients-text")


def command_lines(lib: Path, built: Built, good_dir: Path) -> list[list[str]]:
    """The commands every case runs, in order (names in STEP_NAMES)."""
    home = ["--home", str(lib)]
    return [home + ["import", "--json", *built.args], home + ["problems", "--json"],
            home + ["import", "--json", str(good_dir)], home + ["exams", "--json"],
            home + ["problems"], home + ["patients"]]


@dataclass
class Layout:
    """The temporary root of one case: the library deep inside, so that `../` escapes from
    its previews folder land in the snapshotted root."""

    root: Path
    lib: Path
    good_dir: Path
    cwd: Path
    scratch: Path
    work: Path

    @classmethod
    def under(cls, base: Path) -> "Layout":
        root = base / "root"
        layout = cls(root, root / "a" / "b" / "c" / "d" / "lib", root / "good", root / "cwd",
                     base / "scratch", base / "work")
        for p in (layout.lib, layout.good_dir, layout.cwd, layout.scratch, layout.work):
            p.mkdir(parents=True, exist_ok=True)
        return layout


def prepare(case: Case, base: Path, index: int) -> tuple[Layout, Ctx, Built, str]:
    """Write the case's inputs and a good image; returns the layout, context, spec, good UID."""
    layout = Layout.under(base)
    token = f"zq{index:03d}q"
    ctx = Ctx(layout.root, layout.root / "in" / token, layout.scratch, token)
    ctx.case_dir.mkdir(parents=True, exist_ok=True)
    built = case.build(ctx)
    good_uid = ctx.uid("good")
    hostile.write_mammogram(layout.good_dir / "good.dcm", sop_uid=good_uid,
                            study_uid=ctx.uid("goodstudy"), patient_id=GOOD_PATIENT)
    return layout, ctx, built, good_uid


def run_case(case: Case, base: Path, index: int) -> list[str]:
    """Build, run and check one case; returns its violations (empty: it held)."""
    layout, ctx, built, good_uid = prepare(case, base, index)
    before = tree(layout.root, layout.lib)
    commands = command_lines(layout.lib, built, layout.good_dir)
    v: list[str] = []
    if case.isolate:
        child = run_in_child(commands, layout.cwd, built.env, layout.work)
        results = child.steps
        if child.timed_out:
            v.append(f"hang: killed after {CHILD_TIMEOUT_S} s in `{STEP_NAMES[len(results)]}`")
        elif child.status < 0:
            v.append(f"crash: signal {-child.status} in `{STEP_NAMES[len(results)]}`; "
                     f"output: {child.output.strip()[-300:]}")
        elif len(results) < len(commands):
            v.append(f"the child exited {child.status} in `{STEP_NAMES[len(results)]}`: "
                     f"{child.output.strip()[-300:]}")
        if child.peak_rss > PEAK_RSS_LIMIT:
            v.append(f"peak RSS {child.peak_rss / 2**30:.2f} GiB is over 2 GiB")
    else:
        with _chdir(layout.cwd), _env(built.env):
            results = [_run_step(c) for c in commands]
    steps = dict(zip(STEP_NAMES, results + [None] * (len(commands) - len(results))))
    for name, step in steps.items():
        if step is not None:
            v += step_violations(step, name, nonzero=built.nonzero and name == "import")
    if all(step is not None for step in steps.values()):
        v += outcome_violations(built, steps, good_uid)
    v += [f"write outside the library: {c}" for c in tree_changes(before, tree(layout.root, layout.lib))]
    for leftover in temp_leftovers(ctx.token):
        v.append(f"write outside the library: {leftover}")
        with contextlib.suppress(OSError):
            os.unlink(leftover)
    return v


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _env(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- the tests


CASES = build_cases()


def test_case_ids_are_unique_and_the_suite_is_bounded():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert 60 <= len(ids) <= 130


@pytest.mark.timeout(180)
@pytest.mark.parametrize("index,case", list(enumerate(CASES)), ids=[c.id for c in CASES])
def test_hostile_import_is_contained(index, case, tmp_path):
    """The case's inputs are refused or imported cleanly, and nothing escapes the library.

    Reproduce one case: `pytest tests/attack/test_import_fuzz.py -k <case id>`.
    """
    violations = run_case(case, tmp_path, index)
    assert not violations, f"{case.id}:\n  " + "\n  ".join(violations)


@settings(max_examples=10, derandomize=True, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["native", "rle", "j2k"]),
       flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(1, 255)), min_size=1, max_size=4))
def test_any_header_mutation_is_contained(kind, flips):
    """Property: whatever bytes of the header change, the import holds (same checks as above).
    Derandomized and not shrunk, so the run is the same every time and bounded."""
    def build(ctx: Ctx) -> Built:
        src = _valid(kind, ctx.scratch / "src.dcm", ctx)
        data, end = bytearray(src.read_bytes()), _stream_start(src)
        for pos, mask in flips:
            data[132 + pos % (end - 132)] ^= mask
        _write(ctx.name(), bytes(data))
        return Built([str(ctx.case_dir)], maybe=[f"{ctx.token}-a"])

    with tempfile.TemporaryDirectory(prefix="mamview-hypothesis-") as tmp:
        violations = run_case(Case("hypothesis", build), Path(tmp), 999)
    assert not violations, f"{kind} {flips}:\n  " + "\n  ".join(violations)


SCORE_SHAPE = (320, 256)  # both sides at least 256: the smallest image the scorer accepts
VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def write_exam(folder: Path, patient: str, odd_view: Callable[..., Path] | None = None) -> None:
    """A complete four-view exam of `patient`; `odd_view(path, **kw)` writes its RCC instead."""
    study = hashlib.sha256(patient.encode()).hexdigest()
    study_uid = f"2.25.{int(study, 16) % 10**36}"
    for lat, view in VIEWS:
        kw = dict(laterality=lat, view=view, study_uid=study_uid, patient_id=patient,
                  shape=SCORE_SHAPE)
        path = folder / f"{patient}-{lat}{view}.dcm"
        (odd_view if odd_view and (lat, view) == VIEWS[0] else hostile.write_mammogram)(path, **kw)


def _edited(**attrs) -> Callable[..., Path]:
    return lambda path, **kw: edit_header(hostile.write_mammogram(path, **kw), attrs)


@pytest.mark.timeout(300)
def test_implausible_or_undecodable_views_are_not_scored(tmp_path):
    """Exams with a 1×1, NaN-slope, constant or panicking-RLE view, or a view that became a FIFO
    or a panicking RLE after the import, are refused by `score` with a reason, without a crash
    or a hang; the one good exam next to them is scored."""
    layout = Layout.under(tmp_path)
    folder = layout.root / "in"
    write_exam(folder, "GOOD")
    write_exam(folder, "ONEPIXEL", _edited(Rows=_one_pixel))
    write_exam(folder, "NANSLOPE", _edited(RescaleSlope="NaN"))
    write_exam(folder, "CONSTANT", _edited(PixelData=_constant_pixels))
    write_exam(folder, "PANIC", hostile.panicking_rle)
    write_exam(folder, "LATERFIFO")
    write_exam(folder, "LATERPANIC")
    before = tree(layout.root, layout.lib)
    home = ["--home", str(layout.lib)]
    imported = run_in_child([home + ["import", str(folder)]], layout.cwd, {}, layout.work / "import")
    # after the import, two files change under the library's feet: decoding must still be guarded
    (folder / "LATERFIFO-RCC.dcm").unlink()
    os.mkfifo(folder / "LATERFIFO-RCC.dcm")
    hostile.panicking_rle(folder / "LATERPANIC-RCC.dcm", laterality="R", view="CC",
                          study_uid=f"2.25.{int(hashlib.sha256(b'LATERPANIC').hexdigest(), 16) % 10**36}",
                          patient_id="LATERPANIC", shape=SCORE_SHAPE)
    changed_here = (os.fsencode(folder),)  # the two replaced files and their folder
    before = {p: v for p, v in before.items() if b"LATER" not in p and p not in changed_here}
    child = run_in_child([home + ["score"]], layout.cwd, {}, layout.work / "score", timeout=240)
    assert not child.timed_out, "score hung"
    assert imported.status == child.status == 0 and len(child.steps) == 1, child.output
    for step in imported.steps + child.steps:
        assert not step_violations(step), step_violations(step)
    score = child.steps[0].out
    assert "Scored 1 exams (1 computed" in score, score
    assert score.count("Not scored") + score.count("Failed") >= 1, score
    after = {p: v for p, v in tree(layout.root, layout.lib).items()
             if b"LATER" not in p and p not in changed_here}
    assert not tree_changes(before, after)
