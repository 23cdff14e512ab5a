"""Export from the real reading window (acceptance of issue 4): a de-identified PNG of the
hanging, chart and metrics carries the woman's name nowhere — text chunks or drawn strings."""

import pytest
from PySide6.QtGui import QImage

from mamview.core.cache.db import connect
from mamview.qt import export
from tests.qt.test_export import png_non_pixel_bytes, png_text_chunks
from tests.scoring import save_current_score

NAME_PARTS = ("TESTER", "ANNA", "P1|", "2023-03-20", "2022-03-15", "20230320")


def _score_p1(lib):
    """Scores for P1's exams as the inference service stores them (demo model)."""
    db = connect(lib.database)
    try:
        keys = [r[0] for r in db.execute(
            "SELECT exam_key FROM exams WHERE patient_key LIKE '%|P1' ORDER BY exam_date")]
        for k, r in zip(keys, (1.6, 2.4, 4.1)):
            save_current_score(db, k, [r / 100 * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)])
    finally:
        db.close()


def _select_p1(win, qtbot):
    key = next(k for k, r in win.patient_list.rows.items() if r.patient_id == "P1")
    win.patient_list.select(key)
    qtbot.waitUntil(lambda: win.patient_key == key, timeout=5000)
    qtbot.waitUntil(lambda: len(export.window_tile_images(win)) == len(win.grid.tiles) > 0,
                    timeout=5000)


@pytest.mark.slow  # about 7 s with the shared library fixture
def test_window_exports_a_deidentified_png(reader_copy, open_window, qtbot, tmp_path):
    _score_p1(reader_copy)
    win = open_window(reader_copy)
    _select_p1(win, qtbot)
    win.grid.set_layout("8up")
    qtbot.waitUntil(lambda: len(export.window_tile_images(win)) == 8, timeout=5000)

    out = win.export_figure(str(tmp_path / "board.png"), deidentify=True)
    chunks = png_text_chunks(out.read_bytes())
    content = export.content_for_window(win, True)
    text = "\n".join([*chunks.values(), *content.drawn_text(),
                      png_non_pixel_bytes(out.read_bytes())])
    for s in NAME_PARTS:
        assert s.lower() not in text.lower(), s
    # the figure is the window's hanging: every tile image matched a content tile
    tiles = dict(export.window_tile_images(win))
    assert [t.tile_key in tiles for t in content.tiles] == [True] * 8
    assert [p.risk_percent for p in content.chart_points] == [1.6, 2.4, 4.1]
    assert content.current_index == 2 and content.prior_index == 1
    assert "demo model" in chunks["Model"] and "not a diagnosis" in chunks["Disclaimer"]


def test_window_identified_export_and_clipboard(reader_copy, open_window, qtbot, tmp_path):
    _score_p1(reader_copy)
    win = open_window(reader_copy)
    _select_p1(win, qtbot)
    out = win.export_figure(str(tmp_path / "named.pdf"), deidentify=False)
    assert out.read_bytes().startswith(b"%PDF")
    content = export.content_for_window(win, False)
    assert "TESTER, ANNA · ID P1" in content.title_lines[1]
    img = win.copy_figure()  # the clipboard copy is de-identified by default
    assert img is not None and not img.isNull()


def test_window_withholds_a_burned_in_image_from_the_deidentified_png(
        open_window, qtbot, tmp_path):
    """The real window's tile images: the current RCC says BurnedInAnnotation YES and has a
    full-white label block; the de-identified figure shows none of it, the identified one does."""
    from mamview.core.ingest import drain, run_import
    from mamview.core.paths import Library
    from tests.attack.test_export_phi import _accent, _count, _pixels, _white
    from tests.figures import figure_cells
    from tests.factories import write_mammogram

    for side, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")):
        burned = side + view == "RCC"
        write_mammogram(tmp_path / "files" / f"{side}{view}.dcm", patient_id="P9",
                        patient_name="LABEL^LENA", study_date="20240115", laterality=side,
                        view=view, orientation=None, pixels=_pixels(side, view, burned),
                        extra={"BurnedInAnnotation": "YES" if burned else "NO"})
    lib = Library(tmp_path / "home")
    drain(run_import(lib, [tmp_path / "files"]))
    win = open_window(lib)
    key = next(k for k, r in win.patient_list.rows.items() if r.patient_id == "P9")
    win.patient_list.select(key)
    qtbot.waitUntil(lambda: win.patient_key == key, timeout=5000)
    qtbot.waitUntil(lambda: len(export.window_tile_images(win)) == 4, timeout=5000)

    tiles = export.window_tile_images(win)
    found = {}
    for deid in (True, False):
        content = export.content_for_window(win, deid)
        rcc = next(i for i, t in enumerate(content.tiles) if t.tile_key.endswith("|RCC"))
        out = win.export_figure(str(tmp_path / f"board-{deid}.png"), deidentify=deid)
        img = QImage(str(out))
        cell = figure_cells(content, tiles)[rcc]
        found[deid] = (_count(img, cell, export.SCALE, _white),
                       _count(img, cell, export.SCALE, _accent))
    assert found[True][0] == 0 and found[True][1] > 1000  # withheld, with its note
    assert found[False][0] > 10000 and found[False][1] == 0  # shown as today


def test_window_png_pdf_and_dialog_share_one_stable_case_id(reader_copy, open_window, qtbot,
                                                             tmp_path):
    from tests.qt.test_export import pdf_streams_text

    _score_p1(reader_copy)
    win = open_window(reader_copy)
    _select_p1(win, qtbot)
    png = win.export_figure(str(tmp_path / "a.png"), deidentify=True)
    pdf = win.export_figure(str(tmp_path / "a.pdf"), deidentify=True)
    title = png_text_chunks(png.read_bytes())["Title"]
    case_id = title.rsplit("— ", 1)[1]
    assert case_id.startswith("Case ") and case_id in pdf_streams_text(pdf.read_bytes())
    assert export.content_for_window(win, True).title_lines[1].startswith(case_id)
    # the dialog opens with the same case ID, however often it is opened
    for _ in range(2):
        dlg = export.ExportDialog(lambda d, p: export.content_for_window(win, d, p), [],
                                  pseudonym=export.window_pseudonym(win))
        qtbot.addWidget(dlg)
        assert dlg.pseudonym_edit.text() == case_id
    # derived from the library's own secret, not from her ID
    assert "P1" not in case_id and reader_copy.pseudonym_key.is_file()


def _luminance(img, rect) -> float:
    import numpy as np

    sub = img.copy(rect).convertToFormat(QImage.Format.Format_RGB888)
    a = np.frombuffer(sub.constBits(), np.uint8).reshape(sub.height(), sub.bytesPerLine())
    a = a[:, :sub.width() * 3].reshape(sub.height(), sub.width(), 3).astype(float)
    return float((0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]).mean())


def test_deidentify_box_is_plain_to_see_checked_and_unchecked(qtbot, tmp_path):
    from PySide6.QtWidgets import QStyle, QStyleOptionButton

    from mamview.qt.app import application

    application()  # the dark theme
    dlg = export.ExportDialog(lambda d, p: None, [], pseudonym="Case ABCDEF")
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitExposed(dlg)
    box = dlg.deidentify_box
    opt = QStyleOptionButton()
    box.initStyleOption(opt)
    ind = box.style().subElementRect(QStyle.SubElement.SE_CheckBoxIndicator, opt, box)
    assert ind.width() >= 16 and ind.height() >= 16
    inner = ind.adjusted(3, 3, -3, -3)
    shots = {}
    for checked in (True, False):
        box.setChecked(checked)
        qtbot.wait(10)
        img = box.grab().toImage()
        img.save(str(tmp_path / f"box_{checked}.png"))
        shots[checked] = img
        square = _luminance(img, ind.adjusted(1, 1, -1, -1))
        page = _luminance(dlg.grab().toImage(), dlg.rect().adjusted(0, 0, 0, 0))
        assert square - page > 120, (checked, square, page)  # a light square on a dark page
        assert dlg.identified_warning.isVisible() is (not checked)
    # the tick shows: the checked square is clearly darker inside than the unchecked one
    assert _luminance(shots[False], inner) - _luminance(shots[True], inner) > 25
    assert "Not de-identified" in dlg.identified_warning.text()
