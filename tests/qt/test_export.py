"""Tumour-board export: real PNG/PDF files written from a real cache, checked byte by byte for
identifiers, plus the drawn strings (ExportContent) and a few rendered pixels."""

import re
import struct
import zlib

import pytest
from PySide6.QtGui import QColor, QGuiApplication, QImage

from mamview.core.reports import figure as report
from mamview.core.models.registry import DEMO_LABEL
from mamview.qt import export
from tests.core.test_report import BIRTH, DATES, NAME, PID, make_library

IDENTIFIERS = ["SMITHSON", "ANNABEL", PID, BIRTH, "1962-04-15"] + \
    [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in DATES]


@pytest.fixture
def cohort(home, tmp_path):
    lib, db, pkey, keys = make_library(home, tmp_path)
    yield lib, db, pkey, keys
    db.close()


def _tiles(content, colour="#ff0000"):
    img = QImage(208, 256, QImage.Format.Format_RGB32)
    img.fill(QColor(colour))
    return [(t.tile_key, img) for t in content.tiles]


def png_text_chunks(data: bytes) -> dict[str, str]:
    """Every tEXt / zTXt / iTXt chunk of a PNG, decoded (independent of Qt's reader)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = {}, 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            k, v = body.split(b"\0", 1)
            out[k.decode("latin-1")] = v.decode("latin-1")
        elif kind == b"zTXt":
            k, v = body.split(b"\0", 1)
            out[k.decode("latin-1")] = zlib.decompress(v[1:]).decode("latin-1")
        elif kind == b"iTXt":
            k, rest = body.split(b"\0", 1)
            compressed, rest = rest[0], rest[2:]
            _lang, _tk, text = rest.split(b"\0", 2)
            out[k.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode()
    return out


def png_non_pixel_bytes(data: bytes) -> str:
    """Every chunk except the compressed pixels (IDAT), as text: where metadata can hide.
    (The pixel stream is left out: random compressed bytes spell short IDs by chance.)"""
    out, pos = [], 8
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind != b"IDAT":
            out.append((kind + data[pos + 8:pos + 8 + length]).decode("latin-1"))
        pos += 12 + length
    return "\n".join(out)


def pdf_streams_text(data: bytes) -> str:
    """The PDF's bytes plus every Flate stream decompressed, as one searchable string."""
    parts = [data.decode("latin-1")]
    for m in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", data, re.S):
        try:
            parts.append(zlib.decompress(m.group(1)).decode("latin-1"))
        except zlib.error:
            pass
    return "\n".join(parts)


def _assert_no_identifier(text: str):
    for s in IDENTIFIERS:
        assert s.lower() not in text.lower(), s


def test_deidentified_png_has_no_identifier_anywhere(qtbot, cohort, tmp_path):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], keys[2], "8up", True, lib=lib)
    out = export.export_figure(c, _tiles(c), tmp_path / "board.png")
    data = out.read_bytes()
    chunks = png_text_chunks(data)
    _assert_no_identifier("\n".join(f"{k}={v}" for k, v in chunks.items()))
    _assert_no_identifier(png_non_pixel_bytes(data))
    _assert_no_identifier("\n".join(c.drawn_text()))
    for k in keys:  # exam keys hold the PatientID
        assert k not in "\n".join(c.drawn_text())
    assert DEMO_LABEL in chunks["Model"] and "not a diagnosis" in chunks["Disclaimer"]
    assert chunks["Deidentified"] == "yes" and "Patient" not in chunks
    img = QImage(str(out))
    assert (img.width(), img.height()) == (int(export.PAGE_W * 2), int(export.PAGE_H * 2))
    # the de-identified chart is drawn in years relative to the latest exam, from data
    pts = export.chart_points(c)
    assert pts[-1].exam_date == export._RELATIVE_ANCHOR and c.relative_years
    assert [p.exam_key for p in pts] == ["e0", "e1", "e2", "e3"]


def test_deidentified_pdf_has_no_identifier(qtbot, cohort, tmp_path):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], keys[2], "4up", True, lib=lib,
                                    pseudonym="Case 12")
    out = export.export_figure(c, _tiles(c), tmp_path / "board.pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    text = pdf_streams_text(data)
    _assert_no_identifier(text)
    assert "Case 12" in text  # the /Title names the pseudonym


def test_identified_export_names_the_woman(qtbot, cohort, tmp_path):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], keys[2], "8up", False, lib=lib)
    out = export.export_figure(c, _tiles(c), tmp_path / "named.png")
    chunks = png_text_chunks(out.read_bytes())
    assert "SMITHSON, ANNABEL" in chunks["Patient"] and PID in chunks["Patient"]
    drawn = "\n".join(c.drawn_text())
    assert "1962-04-15" in drawn and "2022-03-21" in drawn
    assert chunks["Deidentified"] == "no"


def test_figure_draws_the_tiles_and_a_demo_banner(qtbot, cohort):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], None, "4up", True, lib=lib)
    img = export.render_figure(c, _tiles(c, "#ff0000"), scale=1.0)
    # somewhere in the tile area (left half, middle band) the red tile images show
    reds = sum(1 for x in range(40, 800, 20) for y in range(200, 900, 20)
               if img.pixelColor(x, y).red() > 200 and img.pixelColor(x, y).green() < 60)
    assert reds > 100
    # the demo banner runs across the page under the title (its amber-brown background)
    banner = [y for y in range(40, 200) if img.pixelColor(1500, y) == export._DEMO_BG]
    assert c.is_demo and len(banner) >= 15
    # a tile image missing from the window's list is drawn as 'not available', not a crash
    img2 = export.render_figure(c, [], scale=1.0)
    assert not img2.isNull()


def test_clipboard_and_dialog(qtbot, cohort, tmp_path):
    lib, db, pkey, keys = cohort

    def build(deid, pseudonym):
        return report.build_export_content(db, pkey, keys[3], keys[2], "4up", deid, lib=lib,
                                           pseudonym=pseudonym)

    dlg = export.ExportDialog(build, [], default_dir=tmp_path)
    qtbot.addWidget(dlg)
    assert dlg.deidentify_box.isChecked()  # the safe default
    dlg.pseudonym_edit.setText("Board 3")
    out = dlg.save_to(tmp_path / "d.png")
    assert png_text_chunks(out.read_bytes())["Title"].endswith("Board 3")
    img = export.copy_to_clipboard(dlg.content())
    got = QGuiApplication.clipboard().image()
    assert not got.isNull() and got.size() == img.size()


def test_bad_format_writes_nothing(qtbot, cohort, tmp_path):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, None, None, "4up", True, lib=lib)
    with pytest.raises(ValueError, match="unsupported"):
        export.export_figure(c, [], tmp_path / "x.tiff")
    assert list(tmp_path.glob("x.*")) == [] and list(tmp_path.glob(".mamview-export-*")) == []
