"""The reading tools on real tiles, offscreen: a distance in mm on an image of known spacing
(drawn by mouse drag), arrows and key images kept in the cache across a restart and shown in
every layout and in the export, overlays hidden and shown, the live window/zoom readout."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QImage, QMouseEvent
from PySide6.QtWidgets import QApplication

from mamview.core import measure
from mamview.core.cache import reads
from mamview.core.ingest import drain, run_import
from mamview.core.paths import Library
from tests.factories import write_mammogram

VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
SPACING = {"ImagerPixelSpacing": [0.1, 0.1], "EstimatedRadiographicMagnificationFactor": 1.1}
MM_PER_PX = 0.1 / 1.1


@pytest.fixture(scope="module")
def spaced_library(tmp_path_factory) -> Path:
    """One woman, two yearly exams, every image 0.1 mm at the detector, magnification 1.1; the
    newest RCC is 2048 rows, so its preview is half the size (marks are in image pixels)."""
    base = tmp_path_factory.mktemp("spaced")
    for d in ("20220301", "20230301"):
        for side, view in VIEWS:
            big = d == "20230301" and (side, view) == ("R", "CC")
            write_mammogram(base / "files" / d / f"{side}{view}.dcm", patient_id="M1",
                            patient_name="MEASURE^MIA", study_date=d, laterality=side,
                            view=view, shape=(2048, 1664) if big else (512, 416), extra=SPACING)
    write_mammogram(base / "files" / "plain" / "RCC.dcm", patient_id="M2", study_date="20230101",
                    laterality="R", view="CC", extra={"ImagerPixelSpacing": None})
    lib = Library(base / "home")
    drain(run_import(lib, [base / "files"]))
    return base / "home"


@pytest.fixture
def lib(spaced_library, tmp_path) -> Library:
    import shutil

    shutil.copytree(spaced_library, tmp_path / "home")
    return Library(tmp_path / "home")


def open_on(open_window, qtbot, lib, patient_id="M1"):
    from mamview.qt.reading_tools import install_tools

    win = open_window(lib)
    tools = getattr(win, "reading_tools", None) or install_tools(win, win.grid)
    key = next(k for k, r in win.patient_list.rows.items() if r.patient_id == patient_id)
    win.patient_list.select(key)
    qtbot.waitUntil(lambda: win.patient_key == key, timeout=5000)
    return win, tools


def tile(win, label, exam_suffix=None):
    return next(t for t in win.grid.tiles if t.label == label
                and (exam_suffix is None or t.exam_key.endswith(exam_suffix)))


def send_drag(t, a: QPointF, b: QPointF, button=Qt.MouseButton.LeftButton, steps=6) -> None:
    vp = t.viewport()

    def send(kind, pos, buttons, btn):
        ev = QMouseEvent(kind, pos, QPointF(vp.mapToGlobal(pos.toPoint())), btn, buttons,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(vp, ev)

    send(QEvent.Type.MouseButtonPress, a, button, button)
    for i in range(1, steps + 1):
        send(QEvent.Type.MouseMove, a + (b - a) * (i / steps), button, Qt.MouseButton.NoButton)
    send(QEvent.Type.MouseButtonRelease, b, Qt.MouseButton.NoButton, button)


def image_point(t, pos: QPointF) -> tuple[float, float]:
    p = t.vb.mapSceneToView(t.mapToScene(pos.toPoint()))
    f = t.image_scale()
    return p.x() * f, p.y() * f


def test_calibration_sources():
    cal = measure.calibration_from(SPACING)
    assert cal.row_mm == pytest.approx(MM_PER_PX) and "÷ magnification 1.1" in cal.source
    plain = measure.calibration_from({"PixelSpacing": ["0.07", "0.07"]})
    assert plain.col_mm == pytest.approx(0.07) and plain.source.startswith("PixelSpacing")
    # implausible header values are never used
    odd = measure.calibration_from({"ImagerPixelSpacing": [0.1, 0.1],
                                    "EstimatedRadiographicMagnificationFactor": 40})
    assert odd.row_mm == pytest.approx(0.1) and "not applied" in odd.source
    assert measure.calibration_from({"ImagerPixelSpacing": [0, -1]}) is None
    assert measure.calibration_from({"PixelSpacing": ["nan", "nan"]}) is None
    assert measure.distance_text((0, 0), (300, 400), None) == "500 px (uncalibrated)"


def test_distance_by_mouse_drag_in_mm(lib, open_window, qtbot):
    win, tools = open_on(open_window, qtbot, lib)
    rcc = tile(win, "RCC")
    assert rcc.image_scale() == pytest.approx(2.0)  # preview at half the image's size
    qtbot.keyClick(win, Qt.Key.Key_D)
    assert tools.tool == "distance" and all(t.tool == "distance" for t in win.grid.tiles)
    r = rcc.viewport().rect()
    a, b = QPointF(r.width() * 0.55, r.height() * 0.3), QPointF(r.width() * 0.9, r.height() * 0.7)
    send_drag(rcc, a, b)
    marks = reads.annotations(win.grid.db, [rcc.sop_uid])[rcc.sop_uid]
    assert [m["kind"] for m in marks] == ["distance"]
    m = marks[0]
    (x0, y0), (x1, y1) = image_point(rcc, a), image_point(rcc, b)
    assert m["points"][0] == pytest.approx((x0, y0), abs=2.5)
    assert m["points"][1] == pytest.approx((x1, y1), abs=2.5)
    expected = math.hypot(x1 - x0, y1 - y0) * MM_PER_PX
    got = measure.distance_mm(m["points"][0], m["points"][1], *m["spacing"])
    assert got == pytest.approx(expected, rel=0.01)
    assert "ImagerPixelSpacing 0.1 mm ÷ magnification 1.1" == m["spacing_source"]
    assert rcc.marks and rcc.marks[0]["id"] == m["id"]  # drawn on the tile
    # a known distance through the tile's API: 550 image pixels = 50.0 mm
    known = rcc.draw_mark("distance", (100, 900), (650, 900))
    assert measure.distance_text(*known["points"], known["spacing"]) == "50.0 mm"
    # Escape (focus in the hanging) leaves the mode: a left drag draws no mark any more
    rcc.setFocus()
    qtbot.keyClick(rcc, Qt.Key.Key_Escape)
    assert tools.tool == "" and rcc.tool == ""
    send_drag(rcc, a, b)
    assert len(reads.annotations(win.grid.db, [rcc.sop_uid])[rcc.sop_uid]) == 2


@pytest.mark.parametrize("tool, key", [("distance", Qt.Key.Key_D), ("arrow", Qt.Key.Key_A)],
                         ids=["distance", "arrow"])
def test_a_left_drag_pans_again_after_a_tool_drag(lib, open_window, qtbot, tool, key):
    # the drags come as fast as a test sends them: pyqtgraph's move-rate limit (10 ms) used to
    # drop every move of the pan right after the tool drag, so it ended as a click
    win, tools = open_on(open_window, qtbot, lib)
    rcc = tile(win, "RCC")
    r = rcc.viewport().rect()
    a, b = QPointF(r.width() * 0.55, r.height() * 0.3), QPointF(r.width() * 0.9, r.height() * 0.7)
    qtbot.keyClick(win, key)
    assert tools.tool == tool
    send_drag(rcc, a, b)
    assert [m["kind"] for m in rcc.marks] == [tool]
    if tool == "distance":
        qtbot.keyClick(win, key)  # the mode's key again leaves it
    else:
        rcc.setFocus()
        qtbot.keyClick(rcc, Qt.Key.Key_Escape)
    assert tools.tool == "" and rcc.tool == ""
    before, partner = rcc.vb.viewRange(), tile(win, "LCC").vb.viewRange()
    send_drag(rcc, QPointF(r.width() * 0.2, r.height() * 0.8), QPointF(r.width() * 0.4, r.height() * 0.5))
    (x0, x1), (y0, y1) = rcc.vb.viewRange()
    # dragged right and up by (0.2, -0.3) of the tile: the image follows the hand
    assert x0 < before[0][0] - 1 and y0 > before[1][0] + 1
    assert x1 - x0 == pytest.approx(before[0][1] - before[0][0])  # a pan, not a zoom
    assert tile(win, "LCC").vb.viewRange() != partner  # and its pair follows
    assert [m["kind"] for m in rcc.marks] == [tool]  # no new mark


def test_a_quick_drag_reaches_the_cursor(lib, open_window, qtbot):
    """Every move of a drag counts, however close together: the line being drawn ends under the
    cursor before the release, and two quick pans in a row both pan."""
    win, tools = open_on(open_window, qtbot, lib)
    rcc = tile(win, "RCC")
    vp, r = rcc.viewport(), rcc.viewport().rect()

    def send(kind, pos, buttons, btn):
        QApplication.sendEvent(vp, QMouseEvent(kind, pos, QPointF(vp.mapToGlobal(pos.toPoint())),
                                               btn, buttons, Qt.KeyboardModifier.NoModifier))

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    tools.set_tool("distance")
    a = QPointF(r.width() * 0.5, r.height() * 0.3)
    send(QEvent.Type.MouseButtonPress, a, left, left)
    for k in range(1, 5):
        send(QEvent.Type.MouseMove, a + QPointF(20 * k, 25 * k), left, none)
    end = a + QPointF(80, 100)
    assert rcc._draft is not None
    assert rcc._draft["points"][1] == pytest.approx(image_point(rcc, end), abs=2.5)
    send(QEvent.Type.MouseButtonRelease, end, none, left)
    tools.leave_tool()
    for dx in (30, 40):
        before = rcc.vb.viewRange()
        send_drag(rcc, QPointF(r.center()), QPointF(r.center()) + QPointF(dx, 0))
        assert rcc.vb.viewRange()[0][0] < before[0][0] - 1


def test_uncalibrated_image_says_so(lib, open_window, qtbot):
    win, _ = open_on(open_window, qtbot, lib, "M2")
    rcc = tile(win, "RCC")
    mark = rcc.draw_mark("distance", (10, 10), (40, 50))
    assert mark["spacing"] is None and "uncalibrated" in mark["spacing_source"]
    assert measure.distance_text(*mark["points"], mark["spacing"]) == "50 px (uncalibrated)"


def _mark_pixels(img: QImage) -> int:
    """Pixels of the marks' colours (cyan distance, yellow arrow) in a grey picture."""
    a = img.convertToFormat(QImage.Format.Format_RGB32)
    w, h = a.width(), a.height()
    px = np.frombuffer(a.constBits(), np.uint8, count=a.bytesPerLine() * h).reshape(h, -1, 4)
    px = px[:, :w, :3].astype(int)  # B, G, R
    b, g, r = px[..., 0], px[..., 1], px[..., 2]
    return int(((b - r > 90) & (g - r > 60)).sum() + ((r - b > 90) & (g - b > 60)).sum())


def test_marks_persist_and_show_in_every_layout_and_the_export(lib, open_window, qtbot):
    from mamview.qt import export

    win, tools = open_on(open_window, qtbot, lib)
    rcc = tile(win, "RCC")
    uid = rcc.sop_uid
    rcc.draw_mark("distance", (200, 700), (750, 700))
    rcc.draw_mark("arrow", (900, 1500), (600, 1100))
    assert tools.toggle_key_image(rcc) is True
    win.shutdown()
    win.close()

    win, tools = open_on(open_window, qtbot, lib)  # a new window on the same library
    rcc = tile(win, "RCC")
    assert rcc.sop_uid == uid and [m["kind"] for m in rcc.marks] == ["distance", "arrow"]
    assert rcc.key_image and rcc._key.isVisible()
    assert not tile(win, "LCC").marks and not tile(win, "LCC").key_image
    plain = _mark_pixels(tile(win, "LCC").grab().toImage())
    assert _mark_pixels(rcc.grab().toImage()) > plain + 50  # drawn on screen

    win.set_layout("8up")
    current = tile(win, "RCC", "2023-03-01")
    assert [m["kind"] for m in current.marks] == ["distance", "arrow"] and current.key_image
    assert not tile(win, "RCC", "2022-03-01").marks
    win.grid.set_layout("timeline")
    win.grid.set_timeline_view("RCC")
    assert [m["kind"] for m in tile(win, "RCC", "2023-03-01").marks] == ["distance", "arrow"]

    win.set_layout("4up")
    content = export.content_for_window(win, True)
    with_marks = export.render_figure(content, export.window_tile_images(win), scale=1.0)
    # clear this image's marks with the key (the tile last clicked is the target)
    rcc = tile(win, "RCC")
    win.activateWindow()  # the export's hidden chart window took the activation
    qtbot.waitUntil(lambda: QApplication.activeWindow() is win, timeout=3000)
    qtbot.mouseClick(rcc.viewport(), Qt.MouseButton.LeftButton)  # active, and the focus
    assert win.grid.active_tile is rcc
    qtbot.keyClick(rcc, Qt.Key.Key_Delete, Qt.KeyboardModifier.ShiftModifier)
    assert not rcc.marks and not rcc.key_image
    assert reads.annotations(win.grid.db, [uid]) == {}
    without = export.render_figure(content, export.window_tile_images(win), scale=1.0)
    assert _mark_pixels(with_marks) > _mark_pixels(without) + 50


def test_clear_marks_of_an_exam(lib, open_window, qtbot):
    win, tools = open_on(open_window, qtbot, lib)
    for label in ("RCC", "LMLO"):
        tile(win, label).draw_mark("arrow", (10, 10), (60, 60))
    # K acts on the tile under the mouse, else the last clicked one: no pointer over the tiles here
    # (the offscreen cursor may rest anywhere when other tests ran before)
    for t in win.grid.tiles:
        t.hovered = False
    win.grid.active_tile = tile(win, "LCC")
    qtbot.keyClick(win, Qt.Key.Key_K)
    assert tile(win, "LCC").key_image
    uids = [t.sop_uid for t in win.grid.tiles]
    assert len(reads.annotations(win.grid.db, uids)) == 3
    qtbot.keyClick(win, Qt.Key.Key_Delete,
                   Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier)
    assert reads.annotations(win.grid.db, uids) == {}
    assert not any(t.marks or t.key_image for t in win.grid.tiles)


def test_overlays_hide_show_and_one_risk_caption_per_exam(lib, open_window, qtbot):
    win, tools = open_on(open_window, qtbot, lib)
    tiles = win.grid.tiles
    assert all(t._caption.isVisibleTo(t) and t._readout.isVisibleTo(t) for t in tiles)
    assert [t._score.isVisibleTo(t) for t in tiles] == [True, False, False, False]
    assert all(t._score.text() for t in tiles)  # every tile knows it; one shows it
    qtbot.keyClick(win, Qt.Key.Key_H)
    assert not any(t._caption.isVisibleTo(t) or t._readout.isVisibleTo(t) or t._score.isVisibleTo(t)
                   for t in tiles)
    win.set_layout("8up")  # the new tiles keep the choice
    assert not any(t._caption.isVisibleTo(t) for t in win.grid.tiles)
    qtbot.keyClick(win, Qt.Key.Key_H)
    shown = [t for t in win.grid.tiles if t._score.isVisibleTo(t)]
    assert sorted(t.exam_key[-10:] for t in shown) == ["2022-03-01", "2023-03-01"]
    # text sits in the outer corners: right breast on its left edge, left breast on its right
    for t in win.grid.tiles:
        cap = t._caption.geometry()
        if t.laterality == "R":
            assert cap.left() < t.width() / 2
        else:
            assert cap.right() > t.width() / 2


def test_readout_follows_window_level_and_zoom(lib, open_window, qtbot):
    win, _ = open_on(open_window, qtbot, lib)
    rcc, lcc = tile(win, "RCC"), tile(win, "LCC")
    start = rcc._readout.text()
    assert start.startswith("WC 2048 WW 4096 · ") and start.endswith("×")
    r = rcc.viewport().rect()
    send_drag(rcc, QPointF(r.center()), QPointF(r.center()) + QPointF(-60, -40),
              button=Qt.MouseButton.RightButton)
    after = rcc._readout.text()
    assert after != start and not after.startswith("WC 2048 WW 4096")
    assert lcc._readout.text().split(" · ")[0] == after.split(" · ")[0]  # synchronised
    c, w = (float(v) for v in after.split(" · ")[0].replace("WC ", "").split(" WW "))
    assert w == pytest.approx(rcc.window_width / 255 * 4096, abs=1)
    assert c == pytest.approx(rcc.window_center / 255 * 4096, abs=1)
    win.grid.active_tile = rcc
    win.grid.one_to_one()
    assert rcc._readout.text().endswith("· 1:1")
