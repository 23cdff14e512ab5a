"""The tiles' text overlays fit narrow tiles (8-up at 1366×768: two rows of four) and stay off
the breast where they can: real tiles and a real window offscreen, real fonts, images with
tissue where the test puts it."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QRect
from PySide6.QtWidgets import QWidget

from mamview.core.cache.db import connect
from mamview.qt.image_tile import (OVERLAY_SIZES, ImageTile, _Overlay, fit_overlay, overlay_font,
                                   wrap_text)
from tests.scoring import save_current_score

CAPTION = "RMLO   current · 2025-06-02"


def width(text: str, px: int) -> float:
    return overlay_font(px)[1].horizontalAdvance(text)


def words(text: str) -> list[str]:
    return [w for w in text.split() if w != "·"]


def test_wrap_breaks_at_the_strongest_separator_first(qtbot):
    fits = lambda t: len(t) <= 20  # noqa: E731
    assert wrap_text(CAPTION, fits) == ["RMLO", "current · 2025-06-02"]
    assert wrap_text("WC 1365 WW 2489 · 0.37×", fits) == ["WC 1365 WW 2489", "0.37×"]
    assert wrap_text("not scored: missing LMLO views", fits) == ["not scored: missing", "LMLO views"]
    assert wrap_text("short", fits) == ["short"]


def test_fit_wraps_then_steps_down_then_elides(qtbot):
    big = OVERLAY_SIZES[0]
    assert fit_overlay(CAPTION, width(CAPTION, big) + 1, 3) == (big, [CAPTION])
    # a tile too narrow for one line: view on one line, exam and date on the next, same size
    room = width("current · 2025-06-02", big) + 1
    assert fit_overlay(CAPTION, room, 3) == (big, ["RMLO", "current · 2025-06-02"])
    # narrower still: a smaller font before a third line, and nothing is cut
    px, lines = fit_overlay(CAPTION, width("current · 2025-06-02", big) - 4, 3)
    assert px < big and lines == ["RMLO", "current · 2025-06-02"]
    # far too narrow: the smallest size, at most max_lines, each line within the room, elided
    px, lines = fit_overlay("5-yr risk 12.3% · demo model · outside domain", 40, 2)
    assert px == OVERLAY_SIZES[-1] and len(lines) == 2
    assert all(width(t, px) <= 40 for t in lines) and any(t.endswith("…") for t in lines)
    assert lines[0].startswith("5-yr")


def show_tile(qtbot, array, laterality="L", size=(300, 400), caption=CAPTION,
              score="5-yr risk 2.3% · demo model") -> ImageTile:
    box = QWidget()  # as in the grid: pyqtgraph's own close() of a bare tile crashes PySide6
    qtbot.addWidget(box)
    box.resize(*size)
    t = ImageTile(box)
    t.box = box  # the test's reference keeps the parent alive
    t.resize(*size)
    box.show()
    qtbot.waitExposed(box)
    t.set_content(caption.split()[0], laterality, "exam", caption, score, None, array)
    return t


def on_left(lab, t) -> bool:
    """Whether the label stands against the tile's left edge (else its right one)."""
    g = lab.geometry()
    return g.left() < t.width() - 1 - g.right()


def inside(lab, t) -> bool:
    return QRect(0, 0, t.width(), t.height()).contains(lab.geometry())


def test_narrow_tile_shows_every_word_inside_the_tile(qtbot):
    t = show_tile(qtbot, np.zeros((400, 150), np.uint8), size=(150, 320))
    labels = [t._caption, t._score, t._readout]
    for lab in labels:
        assert lab.isVisibleTo(t) and inside(lab, t)
        assert lab.sizeHint().width() <= lab.width() <= t.width()
        assert words(lab.shown_text()) == words(lab.text())  # wrapped, nothing cut
    assert "\n" in t._caption.shown_text() and t._caption.text() == CAPTION
    # the groups do not overlap, and the left breast's text stands on its right (outer) edge
    assert not t._caption.geometry().intersects(t._score.geometry())
    assert not t._score.geometry().intersects(t._readout.geometry())
    assert not any(on_left(lab, t) for lab in labels)


def test_a_short_tile_drops_the_readout_first(qtbot):
    t = show_tile(qtbot, np.zeros((90, 150), np.uint8), size=(150, 90))
    assert t._caption.isVisibleTo(t) and t._score.isVisibleTo(t)
    assert not t._readout.isVisibleTo(t)
    assert inside(t._caption, t) and inside(t._score, t)
    assert not t._caption.geometry().intersects(t._score.geometry())


def test_labels_leave_tissue_for_a_free_corner_and_come_back(qtbot):
    # a left breast: chest wall on the left, text on the right (outer) edge; tissue under the
    # top-right corner only
    img = np.zeros((400, 300), np.uint8)
    img[:70, 200:] = 180
    t = show_tile(qtbot, img)
    cap, readout = t._caption, t._readout
    assert on_left(cap, t)  # moved to the inner (left) corner
    assert t.tissue_under(cap.geometry().toRectF()) == 0
    assert not on_left(readout, t)  # nothing under the bottom-right one
    # pan the tissue out of the corner: the caption returns to the outer edge
    (x0, x1), (y0, y1) = t.vb.viewRange()
    t.vb.setRange(xRange=(x0, x1), yRange=(y0 + 150, y1 + 150), padding=0)
    assert not on_left(cap, t)

    # tissue along the whole bottom: the risk and readout go under the caption, on air
    img = np.zeros((400, 300), np.uint8)
    img[300:, :] = 180
    t = show_tile(qtbot, img)
    for lab in (t._score, t._readout):
        assert lab.geometry().top() > t._caption.geometry().bottom()
        assert lab.geometry().bottom() < t.height() / 2
        assert t.tissue_under(lab.geometry().toRectF()) == 0


def test_tissue_everywhere_keeps_the_usual_corners(qtbot):
    t = show_tile(qtbot, np.full((400, 300), 180, np.uint8), laterality="R")
    assert all(on_left(lab, t) for lab in (t._caption, t._score, t._readout))
    assert t._readout.geometry().top() > t.height() / 2


@pytest.mark.parametrize("screen", [(1920, 1080), (1366, 768)], ids=["1920", "1366"])
def test_8up_overlays_fit_the_tiles(reader_copy, open_window, qtbot, screen):
    db = connect(reader_copy.database)
    keys = [r[0] for r in db.execute(
        "SELECT exam_key FROM exams WHERE exam_key LIKE '%P1%' ORDER BY exam_date")]
    for k in keys:
        save_current_score(db, k, [0.004, 0.009, 0.014, 0.019, 0.023])
    db.close()
    win = open_window(reader_copy)
    win.resize(*screen)
    key = next(k for k, r in win.patient_list.rows.items() if r.patient_id == "P1")
    win.patient_list.select(key)
    qtbot.waitUntil(lambda: win.patient_key == key, timeout=5000)
    win.set_layout("8up")
    qtbot.waitUntil(lambda: len(win.grid.tiles) == 8 and all(t.width() < 400 for t in win.grid.tiles),
                    timeout=5000)
    carriers = 0
    for t in win.grid.tiles:
        shown = [lab for lab in t.findChildren(_Overlay) if lab.isVisibleTo(t)]
        assert t._caption in shown and t._readout in shown
        carriers += t._score in shown
        for lab in shown:
            assert inside(lab, t), (t.label, lab.shown_text())
            assert lab.sizeHint().width() <= lab.width()  # nothing clipped by the label
            assert words(lab.shown_text()) == words(lab.text())  # nothing elided
        for i, a in enumerate(shown):
            assert not any(a.geometry().intersects(b.geometry()) for b in shown[i + 1:])
    assert carriers == 2  # one risk caption for the current exam, one for the prior
    assert all("5-yr risk" in t._score.text() for t in win.grid.tiles)
