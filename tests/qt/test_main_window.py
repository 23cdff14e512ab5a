"""The real reading window, offscreen: worklist, hanging protocols, orientation from rendered
pixels, image tools, keyboard reading, chart ↔ hanging, problems, settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QImage

from mamview.core.domain import ScoreState
from mamview.core import settings as settings_mod


def qimage_array(img: QImage) -> np.ndarray:
    """A QImage as a grey uint8 array (rows, cols)."""
    g = img.convertToFormat(QImage.Format.Format_Grayscale8)
    w, h, bpl = g.width(), g.height(), g.bytesPerLine()
    return np.frombuffer(g.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)[:, :w].copy()


def tiles_by_label(win):
    return {t.label: t for t in win.grid.tiles}


def select(win, qtbot, patient_id: str):
    key = next(k for k, r in win.patient_list.rows.items() if r.patient_id == patient_id)
    win.patient_list.select(key)
    qtbot.waitUntil(lambda: win.patient_key == key, timeout=5000)
    return key


def test_worklist_and_four_up_hanging(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    rows = win.patient_list.rows
    assert {r.patient_id for r in rows.values()} == {"P1", "P2"}
    p1 = next(r for r in rows.values() if r.patient_id == "P1")
    assert p1.exams == 3 and p1.display_name == "TESTER, ANNA"
    select(win, qtbot, "P1")
    grid = win.grid
    assert [t.label for t in grid.tiles] == ["RCC", "LCC", "RMLO", "LMLO"]
    assert all(t.array is not None for t in grid.tiles)
    # the newest exam is current, the one before is the prior
    assert grid.current_key.endswith("2023-03-20") and grid.prior_key.endswith("2022-03-15")
    assert all(t.exam_key == grid.current_key for t in grid.tiles)
    # CC row over MLO row; right breast on the left of the screen
    pos = {t.label: t.mapTo(win, t.rect().topLeft()) for t in grid.tiles}
    assert pos["RCC"].y() == pos["LCC"].y() < pos["RMLO"].y() == pos["LMLO"].y()
    assert pos["RCC"].x() < pos["LCC"].x() and pos["RMLO"].x() < pos["LMLO"].x()


def test_search_filters_the_worklist(reader_library, open_window):
    win = open_window(reader_library)
    win.patient_list.search.setText("second")
    shown = win.patient_list.visible_keys()
    assert [win.patient_list.rows[k].patient_id for k in shown] == ["P2"]
    win.patient_list.search.setText("p1")
    assert [win.patient_list.rows[k].patient_id for k in win.patient_list.visible_keys()] == ["P1"]


@pytest.mark.parametrize("layout", ["4up", "8up"])
def test_chest_walls_back_to_back_in_rendered_pixels(reader_library, open_window, qtbot, layout):
    """The newest exam is stored mirrored; on screen every breast's bright chest-wall side must
    face the centre line of its pair (right breast: its right edge; left breast: its left)."""
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    win.set_layout(layout)
    qtbot.wait(50)
    for t in win.grid.tiles:
        px = qimage_array(t.grab().toImage()).astype(float)
        band = max(2, px.shape[1] // 8)
        left, right = px[:, :band].mean(), px[:, -band:].mean()
        if t.laterality == "R":
            assert right > left + 20, (t.label, left, right)
        else:
            assert left > right + 20, (t.label, left, right)


def test_mlo_axilla_up_after_vertical_flip(reader_library, open_window, qtbot):
    """The factories draw a bright pectoral wedge in the top chest-wall corner of MLO views;
    the mirrored-and-upside-down stored RMLO must show it at the top."""
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    t = tiles_by_label(win)["RMLO"]
    arr = t.displayed_array()
    h = arr.shape[0]
    corner_top = arr[: h // 5, -arr.shape[1] // 6:].mean()
    corner_bottom = arr[-h // 5:, -arr.shape[1] // 6:].mean()
    assert corner_top > corner_bottom + 30


def test_layouts_by_key(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    grid = win.grid
    qtbot.keyClick(win, Qt.Key.Key_2)
    assert grid.layout_key == "8up" and len(grid.tiles) == 8
    assert [t.exam_key for t in grid.tiles[:4]] == [grid.prior_key] * 4
    assert [t.exam_key for t in grid.tiles[4:]] == [grid.current_key] * 4
    assert [t.label for t in grid.tiles] == ["RCC", "LCC", "RMLO", "LMLO"] * 2
    qtbot.keyClick(win, Qt.Key.Key_3)
    assert grid.layout_key == "timeline" and len(grid.tiles) == 3
    assert {t.label for t in grid.tiles} == {"LMLO"}
    assert [t.exam_key for t in grid.tiles] == [e.exam_key for e in grid.exams]  # oldest first
    qtbot.keyClick(win, Qt.Key.Key_V)
    assert {t.label for t in grid.tiles} == {"RCC"}
    qtbot.keyClick(win, Qt.Key.Key_1)
    assert grid.layout_key == "4up" and len(grid.tiles) == 4


def test_keyboard_patient_and_prior_navigation(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    first = select(win, qtbot, "P1")
    grid = win.grid
    newest, middle, oldest = [e.exam_key for e in reversed(grid.exams)]
    assert grid.prior_key == middle
    qtbot.keyClick(win, Qt.Key.Key_BracketRight)  # older prior
    assert grid.prior_key == oldest and grid.current_key == newest
    qtbot.keyClick(win, Qt.Key.Key_BracketRight)  # nothing older: stays
    assert grid.prior_key == oldest
    qtbot.keyClick(win, Qt.Key.Key_BracketLeft)
    assert grid.prior_key == middle
    keys = win.patient_list.visible_keys()
    qtbot.keyClick(win, Qt.Key.Key_PageDown)
    expected = keys[min(keys.index(first) + 1, len(keys) - 1)]
    assert win.patient_key == expected
    qtbot.keyClick(win, Qt.Key.Key_PageUp)
    assert win.patient_key == keys[max(keys.index(expected) - 1, 0)]
    assert "PgDown" in win.shortcuts_text() and "Older prior" in win.shortcuts_text()


def test_thumbnail_and_chart_choose_current_and_prior(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    grid = win.grid
    oldest, middle, newest = [e.exam_key for e in grid.exams]
    # a click on a thumbnail hangs that exam as current
    qtbot.mouseClick(grid._thumbs[middle], Qt.MouseButton.LeftButton)
    assert grid.current_key == middle and grid.prior_key == oldest
    assert all(t.exam_key == middle for t in grid.tiles)
    # the chart point of the newest exam: a real click on its marker
    chart = win.chart
    qtbot.wait(50)
    spots = [s for state in (ScoreState.CURRENT, ScoreState.PENDING, ScoreState.UNSCORABLE)
             for s in chart.scatter_for(state).points()]
    spot = next(s for s in spots if s.data() == newest)
    vb = chart.scatter_for(ScoreState.PENDING).getViewBox()
    scene_pt = vb.mapViewToScene(spot.pos())
    view = vb.scene().views()[0]
    widget_pt = view.mapFromScene(scene_pt)
    with qtbot.waitSignal(chart.examClicked, timeout=2000) as sig:
        qtbot.mouseClick(view.viewport(), Qt.MouseButton.LeftButton, pos=widget_pt)
    assert sig.args == [newest]
    assert grid.current_key == newest
    assert all(t.exam_key == newest for t in grid.tiles)


def test_sync_zoom_mirrors_across_the_pair(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    t = tiles_by_label(win)
    t["RMLO"].vb.setRange(xRange=(100, 200), yRange=(50, 170), padding=0)
    t["RMLO"].rangeChangedByUser.emit(t["RMLO"])  # what a wheel/drag on the tile emits
    r = t["RMLO"].normalized_range()
    for other in ("RCC", "LCC", "LMLO"):
        o = t[other].normalized_range()
        if t[other].laterality == "R":
            assert o == pytest.approx(r, abs=0.02)
        else:  # the other side follows mirrored, so chest walls stay back to back
            assert o[0] == pytest.approx(1 - r[1], abs=0.02)
    qtbot.keyClick(win, Qt.Key.Key_S)  # sync off
    t["RMLO"].vb.setRange(xRange=(0, 50), yRange=(0, 60), padding=0)
    t["RMLO"].rangeChangedByUser.emit(t["RMLO"])
    assert t["LMLO"].normalized_range()[0] == pytest.approx(1 - r[1], abs=0.02)


def _drag(widget, button, start: QPointF, end: QPointF):
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    def send(kind, pos, buttons):
        ev = QMouseEvent(kind, pos, widget.mapToGlobal(pos), button, buttons,
                         Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, ev)

    send(QMouseEvent.Type.MouseButtonPress, start, button)
    for i in range(1, 6):
        send(QMouseEvent.Type.MouseMove, start + (end - start) * (i / 5), button)
    send(QMouseEvent.Type.MouseButtonRelease, end, Qt.MouseButton.NoButton)


def test_window_level_by_right_drag_and_invert(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    tile = tiles_by_label(win)["LCC"]
    before = tile.displayed_array().astype(int)
    c = QPointF(tile.width() / 2, tile.height() / 2)
    _drag(tile.viewport(), Qt.MouseButton.RightButton, c, c + QPointF(-120, -60))
    assert tile.window_width < 255 and tile.window_center > 127.5
    assert not np.array_equal(tile.displayed_array(), before)
    # synchronised: the other tiles took the same window
    assert tiles_by_label(win)["RCC"].window_width == tile.window_width
    qtbot.keyClick(win, Qt.Key.Key_R)
    assert tile.window_width == 255.0 and np.array_equal(tile.displayed_array(), before)
    qtbot.keyClick(win, Qt.Key.Key_I)
    assert all(t.inverted for t in win.grid.tiles)
    assert np.array_equal(tile.displayed_array(), 255 - before)
    qimg = tile.tile_image()
    assert (qimg.width(), qimg.height()) == (before.shape[1], before.shape[0])


def test_one_to_one_streams_full_resolution(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    rcc = tiles_by_label(win)["RCC"]
    assert rcc.image_row["rows"] == 2304 and rcc.preview_shape[0] <= 1024
    win.grid.active_tile = rcc
    qtbot.keyClick(win, Qt.Key.Key_O)
    qtbot.waitUntil(lambda: rcc.full_res, timeout=15000)
    assert rcc.array.shape == (2304, 1872)
    # at 1:1 one screen pixel shows one original pixel
    assert rcc.pixels_per_preview_pixel() == pytest.approx(2304 / rcc.preview_shape[0], rel=0.02)
    # the chest wall stays on the inner (right) edge: the view ends at the image's right edge
    (x0, x1), _ = rcc.vb.viewRange()
    assert x1 == pytest.approx(rcc.preview_shape[1], rel=0.01)


def test_window_presets_from_the_file(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    before = tiles_by_label(win)["LCC"].displayed_array().copy()
    win.cycle_preset()
    assert win.grid.preset_index == 0
    win.cycle_preset()
    assert win.grid.preset_index == 1 and "2/2" in win.status_text.text()
    lcc = tiles_by_label(win)["LCC"]
    qtbot.waitUntil(lambda: lcc.full_res and lcc.preset_index == 1, timeout=10000)
    # the narrower second window (C 1200, W 1600) renders the same pixels differently
    assert lcc.array.shape == before.shape and not np.array_equal(lcc.array, before)
    win.cycle_preset()
    assert win.grid.preset_index is None


def test_magnifier_shows_a_loupe(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    qtbot.keyClick(win, Qt.Key.Key_M)
    tile = tiles_by_label(win)["LCC"]
    assert tile.magnifier
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    pos = QPointF(tile.width() * 0.3, tile.height() * 0.5)
    ev = QMouseEvent(QMouseEvent.Type.MouseMove, pos, tile.viewport().mapToGlobal(pos),
                     Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(tile.viewport(), ev)
    assert tile._loupe.isVisible() and not tile._loupe.pixmap().isNull()


def test_tiles_show_labels_dates_and_missing_prior(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P2")  # one exam only
    t = tiles_by_label(win)["RMLO"]
    assert "RMLO" in t._caption.text() and "2022-01-01" in t._caption.text()
    assert "scoring" in t._score.text() or "not scored" in t._score.text()
    win.set_layout("8up")
    assert all(t.array is None for t in win.grid.tiles[:4])
    assert "no prior" in win.grid.tiles[0]._message.text()


def test_problems_panel_lists_skipped_files(reader_library, open_window):
    win = open_window(reader_library)
    reasons = [win.problems.table.item(i, 0).text() for i in range(win.problems.count())]
    files = [win.problems.table.item(i, 1).text() for i in range(win.problems.count())]
    assert any(f.endswith("notes.pdf") for f in files) and reasons
    assert "⚠ 1 problem" == win.problems_button.text()  # one, in English


def test_import_in_background_adds_a_woman(reader_copy, open_window, qtbot, tmp_path):
    from tests.factories import write_mammogram

    from tests.qt.conftest import VIEWS

    win = open_window(reader_copy)
    new = tmp_path / "incoming"
    for side, view in VIEWS:
        write_mammogram(new / f"{side}{view}.dcm", patient_id="P3", patient_name="NEW^CLARA",
                        study_date="20240505", laterality=side, view=view)
    with qtbot.waitSignal(win.bridge.importFinished, timeout=20000):
        assert win.start_import([str(new)])
    assert "P3" in {r.patient_id for r in win.patient_list.rows.values()}
    assert "Imported 4 files" in win.status_text.text()


def test_settings_are_saved_and_applied(reader_copy, open_window):
    win = open_window(reader_copy)
    new = settings_mod.Settings(**{**win.settings.__dict__})
    new.thresholds_percent = [2.0, 4.0]
    settings_mod.save(new, reader_copy.settings_file)
    win.apply_settings(settings_mod.load(reader_copy.settings_file))
    assert win.chart.thresholds == (2.0, 4.0)
    from mamview.qt.settings_dialog import SettingsDialog

    dlg = SettingsDialog(reader_copy, win.settings, win)
    dlg.low.setValue(1.5)
    saved = dlg.save()
    assert saved.thresholds_percent == [1.5, 4.0]
    assert settings_mod.load(reader_copy.settings_file).thresholds_percent == [1.5, 4.0]
    assert dlg.model.count() >= 2  # "best available" + the registry's models


def test_empty_library_offers_the_demo(home, open_window):
    from mamview.core.paths import library

    win = open_window(library(home))
    assert win.stack.currentWidget() is win.welcome
    assert "demo" in win.demo_button.text().lower()


def test_a_full_resolution_decode_that_fails_says_why_and_keeps_the_preview(reader_copy, open_window,
                                                                            qtbot):
    win = open_window(reader_copy)
    select(win, qtbot, "P1")
    rcc = tiles_by_label(win)["RCC"]
    path = Path(rcc.image_row["path"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the file was damaged after its preview was made
    win.grid.active_tile = rcc
    qtbot.keyClick(win, Qt.Key.Key_O)
    qtbot.waitUntil(lambda: "Full resolution not shown" in win.status_text.text(), timeout=15000)
    assert not rcc.full_res and rcc.array is not None  # the preview stays on screen


def test_a_dead_inference_process_is_replaced(reader_copy, open_window):
    import os
    import signal

    win = open_window(reader_copy, start_inference=True)
    svc = win.session.ensure_service()
    svc.start()
    os.kill(svc._proc.pid, signal.SIGKILL)
    svc._proc.join(10)
    assert not svc.alive()
    fresh = win.session.ensure_service()
    assert fresh is not svc and fresh.alive()
