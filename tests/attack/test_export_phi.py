"""PHI burned into the pixels (issue 11, item 6): a de-identified figure must not show an image
whose BurnedInAnnotation is YES (or unknown on Secondary Capture).

A real woman is written with pydicom and imported into a real library; her current RCC says
BurnedInAnnotation YES and carries a block of full-white pixels (standing for a burned-in name
label). The tile images handed to the export are the files' own pixels, decoded with pydicom, so
the block is really in what the window would hand in. The checks read the exported figure's
pixels, the PDF's embedded images and the clipboard.
"""

from __future__ import annotations

import os
import re
import stat
import time

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian
from PySide6.QtCore import QRectF
from PySide6.QtGui import QGuiApplication, QImage

from mamview.core.reports import figure as report
from mamview.core.cache.db import connect
from mamview.core.ingest import drain, run_import
from mamview.core.paths import library
from mamview.qt import export
from mamview.qt.image_tile import gray_image
from tests.factories import MG_FOR_PRESENTATION, breast_pixels, write_mammogram
from tests.figures import figure_cells

NAME, PID, BIRTH = "BURNED^BETTY", "MRN-77001", "19580203"
DATES = ("20220110", "20240115")
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
# the burned-in label: stored rows/columns of a full-white block in the current RCC
BLOCK = (slice(12, 60), slice(16, 150))


def _pixels(side: str, view: str, burned: bool) -> np.ndarray:
    arr = breast_pixels(side, view)
    if burned:
        arr[BLOCK] = 4095  # 12-bit white: the text of a burned-in label
    return arr


@pytest.fixture
def woman(home, tmp_path):
    """(lib, db, patient key, exam keys oldest first, {tile key: file path})."""
    lib = library(home).ensure()
    src = tmp_path / "dicom"
    paths = {}
    for d in DATES:
        for side in "RL":
            for view in ("CC", "MLO"):
                burned = d == DATES[-1] and side + view == "RCC"
                paths[(d, side + view)] = write_mammogram(
                    src / d / f"{side}{view}.dcm", patient_id=PID, patient_name=NAME,
                    study_date=d, laterality=side, view=view, orientation=None,
                    pixels=_pixels(side, view, burned),
                    extra={"PatientBirthDate": BIRTH,
                           "BurnedInAnnotation": "YES" if burned else "NO"})
    drain(run_import(lib, [src], make_previews=False))
    db = connect(lib.database)
    pkey = db.execute("SELECT patient_key FROM patients").fetchone()[0]
    keys = [r[0] for r in db.execute("SELECT exam_key FROM exams ORDER BY exam_date")]
    by_tile = {f"{keys[DATES.index(d)]}|{label}": p for (d, label), p in paths.items()}
    yield lib, db, pkey, keys, by_tile
    db.close()


def _tile_images(content, by_tile) -> list[tuple[str, QImage]]:
    """Each tile's image as the files' own pixels (12-bit → 8-bit), like the window's display."""
    out = []
    for t in content.tiles:
        arr = dcmread(by_tile[t.tile_key]).pixel_array.astype(np.float64)
        out.append((t.tile_key, gray_image(np.clip(arr / 4095 * 255, 0, 255))))
    return out


def _rgb(img: QImage) -> np.ndarray:
    """(rows, cols, 3) uint8 copy of an image's pixels."""
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    row = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return row[:, :img.width() * 3].reshape(img.height(), img.width(), 3).copy()


def _count(img: QImage, cell: QRectF, scale: float, test) -> int:
    """Pixels of `img` in `cell` (page units) above its caption strip for which `test` holds
    (the caption of a current-exam tile is drawn in the accent colour)."""
    x0, y0 = int(cell.left() * scale) + 2, int(cell.top() * scale) + 2
    x1, y1 = int(cell.right() * scale) - 2, int((cell.bottom() - 20) * scale)
    return int(test(_rgb(img)[y0:y1, x0:x1].astype(np.int16)).sum())


def _white(a: np.ndarray) -> np.ndarray:
    return a.min(axis=2) >= 245


def _accent(a: np.ndarray) -> np.ndarray:  # the note's colour (#ffb454): never in a gray image
    r, g, b = a[..., 0], a[..., 1], a[..., 2]
    return (r > 200) & (g > 110) & (g < 210) & (b < 130)


def _bright(a: np.ndarray) -> np.ndarray:
    return a[..., 0] > 100


# the right end of the footer's first row (model line), where the withheld count is drawn; the
# rectangle is extended by the caption strip `_count` leaves out
FOOTER_NOTE = QRectF(export.PAGE_W * 0.72, export.PAGE_H - 114, export.PAGE_W * 0.26, 18 + 20)


def _rcc(content, keys) -> int:
    return [t.tile_key for t in content.tiles].index(f"{keys[-1]}|RCC")


def test_deidentified_png_withholds_the_burned_in_tile(qtbot, woman, tmp_path):
    lib, db, pkey, keys, by_tile = woman
    c = report.build_export_content(db, pkey, keys[-1], keys[0], "8up", True, lib=lib)
    tiles = _tile_images(c, by_tile)
    rcc = _rcc(c, keys)
    assert [t.withheld for t in c.tiles] == [i == rcc for i in range(8)]
    assert c.withheld_count == 1 and c.metadata["Withheld"].startswith("1 image")
    assert report.WITHHELD_NOTE in c.drawn_text() and "1 image withheld" in c.withheld_line

    out = export.export_figure(c, tiles, tmp_path / "deid.png")
    if os.environ.get("MAMVIEW_KEEP_FIGURES"):  # to look at the figure by eye
        export.export_figure(c, tiles, os.environ["MAMVIEW_KEEP_FIGURES"] + "/deid.png")
        named = report.build_export_content(db, pkey, keys[-1], keys[0], "8up", False, lib=lib)
        export.export_figure(named, tiles, os.environ["MAMVIEW_KEEP_FIGURES"] + "/named.png")
    img = QImage(str(out))
    cells = figure_cells(c, tiles)
    s = export.SCALE
    assert _count(img, cells[rcc], s, _white) == 0  # not one pixel of the label
    assert _count(img, cells[rcc], s, _accent) > 1000  # the note (and its frame) is drawn
    # the other tiles still show their images (bright tissue), without any note
    lcc = rcc + 1
    assert _count(img, cells[lcc], s, _bright) > 2000
    assert _count(img, cells[lcc], s, _accent) == 0
    # the footer says it, in the accent colour, on the model line's row
    assert _count(img, FOOTER_NOTE, s, _accent) > 500


def test_identified_png_still_shows_the_image(qtbot, woman, tmp_path):
    lib, db, pkey, keys, by_tile = woman
    c = report.build_export_content(db, pkey, keys[-1], keys[0], "8up", False, lib=lib)
    tiles = _tile_images(c, by_tile)
    rcc = _rcc(c, keys)
    assert not any(t.withheld for t in c.tiles) and not c.withheld_line
    out = export.export_figure(c, tiles, tmp_path / "named.png")
    img = QImage(str(out))
    cells = figure_cells(c, tiles)
    assert _count(img, cells[rcc], export.SCALE, _white) > 10000  # the label shows, as today
    assert _count(img, cells[rcc], export.SCALE, _accent) == 0
    assert _count(img, FOOTER_NOTE, export.SCALE, _accent) == 0  # no withheld count either


_PDF_IMAGE = re.compile(rb"/Subtype\s*/Image\s*/Width\s*(\d+)\s*/Height\s*(\d+)(.*?)>>\s*"
                        rb"stream\r?\n(.*?)\r?\nendstream", re.S)


def _pdf_tile_images(data: bytes, size=(208, 256)) -> list[QImage]:
    """The images of tile size embedded in a PDF (Qt writes them as JPEG streams)."""
    out = []
    for m in _PDF_IMAGE.finditer(data):
        if (int(m.group(1)), int(m.group(2))) == size and b"/DCTDecode" in m.group(3):
            out.append(QImage.fromData(m.group(4), "JPG"))
    assert all(not im.isNull() for im in out)
    return out


def _white_pixels(img: QImage) -> int:
    return int((_rgb(img).min(axis=2) >= 250).sum())


def test_pdf_and_clipboard_withhold_too(qtbot, woman, tmp_path):
    lib, db, pkey, keys, by_tile = woman
    deid = report.build_export_content(db, pkey, keys[-1], None, "4up", True, lib=lib)
    named = report.build_export_content(db, pkey, keys[-1], None, "4up", False, lib=lib)
    tiles = _tile_images(deid, by_tile)
    # the PDF embeds each image drawn: the withheld one is not in the file at all
    in_deid = _pdf_tile_images(export.export_figure(deid, tiles, tmp_path / "d.pdf").read_bytes())
    in_named = _pdf_tile_images(export.export_figure(named, tiles, tmp_path / "n.pdf").read_bytes())
    assert (len(in_named), len(in_deid)) == (4, 3)
    assert [_white_pixels(im) > 3000 for im in in_named].count(True) == 1  # the label
    assert max(_white_pixels(im) for im in in_deid) == 0
    img = export.copy_to_clipboard(deid, tiles)
    got = QGuiApplication.clipboard().image().convertToFormat(QImage.Format.Format_RGB32)
    cells = figure_cells(deid, tiles)
    rcc = _rcc(deid, keys)
    for shown in (img, got):
        assert _count(shown, cells[rcc], export.SCALE, _white) == 0
        assert _count(shown, cells[rcc], export.SCALE, _accent) > 1000


class _Probe(list):
    """Tile images that, when the painter reads them (the file being written), note the
    temporary files' modes: a real observation point, nothing of the export replaced."""

    def __init__(self, items, folder):
        super().__init__(items)
        self.folder, self.modes = folder, []

    def __iter__(self):
        temps = self.folder.glob(".mamview-export-*")
        self.modes += [stat.S_IMODE(p.stat().st_mode) for p in temps]
        return super().__iter__()


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_temporary_files_are_private_and_removed(qtbot, woman, tmp_path, fmt):
    lib, db, pkey, keys, by_tile = woman
    c = report.build_export_content(db, pkey, keys[-1], None, "4up", False, lib=lib)
    probe = _Probe(_tile_images(c, by_tile), tmp_path)
    old = os.umask(0o022)  # a permissive umask: the temporary file must be private anyway
    try:
        out = export.export_figure(c, probe, tmp_path / f"f.{fmt}")
    finally:
        os.umask(old)
    assert probe.modes and set(probe.modes) == {0o600}
    assert list(tmp_path.glob(".mamview-export-*")) == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # the final file follows the umask


# ------------------------------------------------------------------- the rule, file by file


def test_rule_from_the_row_when_ingest_stored_it():
    mg, sc = str(MG_FOR_PRESENTATION), SC_IMAGE
    row = lambda flag, uid: {"burned_in_annotation": flag, "sop_class_uid": uid,  # noqa: E731
                             "path": "/nonexistent/x.dcm"}
    assert report.image_withheld(row("YES", mg))
    assert report.image_withheld(row("yes ", mg))  # loosely written values still count
    assert report.image_withheld(row("MAYBE", mg))  # anything but a clear NO
    assert not report.image_withheld(row("NO", sc))
    assert report.image_withheld(row("", sc))  # absent on Secondary Capture
    assert report.image_withheld(row("", sc + ".2"))  # multi-frame SC classes
    assert not report.image_withheld(row("", "1.2.840.10008.5.1.4.1.1.77.1.1"))  # not SC
    assert not report.image_withheld(row(None, mg))  # unknown on a mammogram: shown
    assert report.image_withheld({"path": "/nonexistent/x.dcm"})  # nothing known: withheld


def _sc_file(path, flag):
    extra = {"SOPClassUID": SC_IMAGE, "Modality": "OT"}
    out = write_mammogram(path, extra=extra)
    ds = dcmread(out)
    ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE
    if flag is None:
        del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = flag
    ds.save_as(out)
    return out


def test_rule_from_the_header_when_the_row_lacks_it(tmp_path):
    yes = write_mammogram(tmp_path / "yes.dcm", extra={"BurnedInAnnotation": "YES"})
    no = write_mammogram(tmp_path / "no.dcm")
    mg_unknown = write_mammogram(tmp_path / "mg.dcm", extra={"BurnedInAnnotation": ""})
    assert report.header_burned_in(yes) == ("YES", str(MG_FOR_PRESENTATION))
    assert report.image_withheld({"path": str(yes)})
    assert report.image_withheld({"path": str(yes), "burned_in_annotation": ""})
    assert not report.image_withheld({"path": str(no)})
    assert not report.image_withheld({"path": str(mg_unknown)})
    assert report.image_withheld({"path": str(_sc_file(tmp_path / "sc.dcm", None))})
    assert not report.image_withheld({"path": str(_sc_file(tmp_path / "sc_no.dcm", "NO"))})


def test_unreadable_headers_count_as_unknown_and_never_hang(tmp_path):
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 128 + b"DICM" + bytes(range(256)) * 8)
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)  # an image replaced by a FIFO must not block the export
    deflated = write_mammogram(tmp_path / "deflated.dcm", extra={"BurnedInAnnotation": "YES"},
                               transfer_syntax=DeflatedExplicitVRLittleEndian)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(write_mammogram(tmp_path / "whole.dcm").read_bytes()[:300])
    mg = str(MG_FOR_PRESENTATION)
    start = time.monotonic()
    for bad in (garbage, fifo, tmp_path / "missing.dcm", tmp_path):
        assert report.header_burned_in(bad) == (None, None), bad
        assert report.image_withheld({"path": str(bad)})  # nothing known: withheld
        assert not report.image_withheld({"path": str(bad), "sop_class_uid": mg})
    # a deflated dataset is never inflated for the flag; its file meta still names the class
    assert report.header_burned_in(deflated) == (None, mg)
    assert report.header_burned_in(cut)[0] is None
    assert time.monotonic() - start < 2.0


# ---------------------------------------------------------------- pseudonym and dates (issue 14)

_CALENDAR_DATE = re.compile(r"\b(19|20)\d\d-\d\d-\d\d\b|\b(19|20)\d\d(0[1-9]|1[0-2])[0-3]\d\b")


def test_pseudonym_is_stable_per_woman_and_secret_per_library(woman, tmp_path):
    lib, db, pkey, keys, _paths = woman
    first = report.stable_pseudonym(lib, pkey)
    assert re.fullmatch(r"Case [A-Z2-9]{6}", first)
    assert report.stable_pseudonym(lib, pkey) == first  # every export, every dialog
    assert report.stable_pseudonym(lib, pkey + "x") != first  # another woman, another ID
    for part in (PID, "77001", NAME.split("^")[0]):
        assert part.lower() not in first.lower()
    # the secret: created once in the library folder, private, 32 random bytes
    secret = lib.pseudonym_key
    mode = stat.S_IMODE(secret.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert len(secret.read_bytes()) == 32 and PID.encode() not in secret.read_bytes()
    before = secret.read_bytes()
    report.stable_pseudonym(lib, pkey)
    assert secret.read_bytes() == before  # read, not remade
    # another library holds another secret: the same woman gets an unrelated case ID there
    other = library(tmp_path / "other-home").ensure()
    assert report.stable_pseudonym(other, pkey) != first
    # a library whose secret was damaged makes a new one (and says so) rather than failing
    secret.write_bytes(b"short")
    again = report.stable_pseudonym(lib, pkey)
    assert len(secret.read_bytes()) == 32 and re.fullmatch(r"Case [A-Z2-9]{6}", again)


def test_pseudonym_secret_is_never_read_through_a_link(woman, tmp_path):
    lib, _db, pkey, _keys, _paths = woman
    target = tmp_path / "elsewhere.key"
    target.write_bytes(b"x" * 32)
    lib.pseudonym_key.symlink_to(target)
    with pytest.raises(OSError):
        report.stable_pseudonym(lib, pkey)
    assert target.read_bytes() == b"x" * 32  # the file the link names is left alone


def test_png_and_pdf_of_one_woman_carry_one_case_id(qtbot, woman, tmp_path):
    lib, db, pkey, keys, _paths = woman
    from tests.qt.test_export import pdf_streams_text, png_text_chunks

    def build(deid, pseudonym):
        return report.build_export_content(db, pkey, keys[-1], keys[0], "4up", deid, lib=lib,
                                           pseudonym=pseudonym)

    case_id = report.stable_pseudonym(lib, pkey)
    found = []
    for fmt in ("png", "pdf"):  # a fresh dialog each time, as a reader opens it twice
        dlg = export.ExportDialog(build, [], default_dir=tmp_path,
                                  pseudonym=report.stable_pseudonym(lib, pkey))
        qtbot.addWidget(dlg)
        assert dlg.pseudonym_edit.text() == case_id
        out = dlg.save_to(tmp_path / f"board.{fmt}")
        data = out.read_bytes()
        found.append(png_text_chunks(data)["Title"] if fmt == "png" else pdf_streams_text(data))
    assert found[0].endswith(case_id) and case_id in found[1]


def test_deidentified_footer_and_metadata_print_no_calendar_date(qtbot, woman, tmp_path):
    import datetime

    from tests.qt.test_export import png_non_pixel_bytes, png_text_chunks
    from tests.scoring import save_current_score

    lib, db, pkey, keys, _paths = woman
    # scored on two days; exported three days after the later one
    for k, when in zip(keys, ("2026-11-20T09:00:00+00:00", "2026-11-28T09:00:00+00:00")):
        save_current_score(db, k, [0.004, 0.008, 0.012, 0.016, 0.02], when=when)
    now = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
    c = report.build_export_content(db, pkey, keys[-1], keys[0], "4up", True, lib=lib,
                                    pseudonym="Case 1", now=now)
    text = "\n".join([*c.drawn_text(), *c.provenance, *c.metadata.values()])
    assert not _CALENDAR_DATE.search(text), _CALENDAR_DATE.search(text).group(0)
    assert any("computed 3–11 days before export" in line for line in c.provenance)
    assert any(line.startswith("Exported by mamview") and "left out" in line
               for line in c.provenance)
    out = export.export_figure(c, [], tmp_path / "board.png")
    data = out.read_bytes()
    chunks = "\n".join([*png_text_chunks(data).values(), png_non_pixel_bytes(data)])
    assert not _CALENDAR_DATE.search(chunks)
    # identified, the provenance keeps its calendar dates, as today
    named = report.build_export_content(db, pkey, keys[-1], keys[0], "4up", False, lib=lib,
                                        now=now)
    assert "Exported 2026-12-01 12:00 UTC by mamview" in "\n".join(named.provenance)
    assert any("computed 2026-11-20 to 2026-11-28" in line for line in named.provenance)
