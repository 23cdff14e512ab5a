"""Keyboard-first reading, driven by real key presses on the real window (offscreen): focus on
the hanging at start and after a search, Enter/Down/Escape in the search box, every action with
a key in the F1 list, stepping the current exam, flicker, read marks."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from tests.qt.test_main_window import select, tiles_by_label


def test_the_hanging_has_the_keyboard_at_start(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    qtbot.waitUntil(win.hanging_has_focus, timeout=3000)
    assert not win.patient_list.search.hasFocus()
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_2)
    assert win.grid.layout_key == "8up"
    assert win.patient_list.search.text() == ""  # the digit never reached the search
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_3)
    assert win.grid.layout_key == "timeline" and win.patient_list.search.text() == ""


def test_search_enter_opens_the_match_and_returns_the_keyboard(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    p1 = select(win, qtbot, "P1")
    qtbot.keyClick(win, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    search = win.patient_list.search
    assert search.hasFocus()
    qtbot.keyClicks(search, "second")
    qtbot.keyClick(search, Qt.Key.Key_Return)
    assert win.patient_list.rows[win.patient_key].patient_id == "P2"
    assert win.hanging_has_focus() and not search.hasFocus()
    # the next digit changes the layout, it does not become "second2"
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_2)
    assert search.text() == "second" and win.grid.layout_key == "8up"
    # Down opens the first match too
    qtbot.keyClick(win, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(search, "tester")
    qtbot.keyClick(search, Qt.Key.Key_Down)
    assert win.patient_key == p1 and win.hanging_has_focus()


def test_search_escape_clears_and_returns(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    qtbot.keyClick(win, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    search = win.patient_list.search
    qtbot.keyClicks(search, "zzz")
    assert win.patient_list.visible_keys() == []
    qtbot.keyClick(search, Qt.Key.Key_Escape)
    assert search.text() == "" and len(win.patient_list.visible_keys()) == 2
    assert win.hanging_has_focus()
    qtbot.keyClick(QApplication.focusWidget(), Qt.Key.Key_2)
    assert win.grid.layout_key == "8up" and search.text() == ""


def test_every_action_has_a_key_listed_in_f1(reader_library, open_window):
    win = open_window(reader_library)
    text = win.shortcuts_text()
    for name, act in win.actions_by_name.items():
        assert not act.shortcut().isEmpty(), f"{name} has no key"
    from mamview.qt.main_window import ALL_SHORTCUTS
    from mamview.qt.reading_tools import TOOL_SHORTCUTS

    assert set(TOOL_SHORTCUTS) <= set(ALL_SHORTCUTS)  # the reading tools' keys are listed too
    for _, key, label in ALL_SHORTCUTS:
        assert f"<b>{key}</b>" in text and label in text
    keys = [key for _, key, _ in ALL_SHORTCUTS]
    assert len(keys) == len(set(keys)), "a key bound twice"


def test_step_the_current_exam_a_year(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    grid = win.grid
    oldest, middle, newest = [e.exam_key for e in grid.exams]
    assert (grid.current_key, grid.prior_key) == (newest, middle)
    qtbot.keyClick(win, Qt.Key.Key_BraceLeft)  # "{": current a year back
    assert (grid.current_key, grid.prior_key) == (middle, oldest)
    assert all(t.exam_key == middle for t in grid.tiles)
    qtbot.keyClick(win, Qt.Key.Key_BraceLeft)  # the oldest: no prior before it
    assert (grid.current_key, grid.prior_key) == (oldest, None)
    qtbot.keyClick(win, Qt.Key.Key_BraceLeft)  # nothing older: stays
    assert grid.current_key == oldest
    qtbot.keyClick(win, Qt.Key.Key_BraceRight)
    qtbot.keyClick(win, Qt.Key.Key_BraceRight)
    assert (grid.current_key, grid.prior_key) == (newest, middle)
    # the prior keeps its distance: two years back stays two years back
    qtbot.keyClick(win, Qt.Key.Key_BracketRight)
    assert grid.prior_key == oldest
    qtbot.keyClick(win, Qt.Key.Key_BraceLeft)
    assert (grid.current_key, grid.prior_key) == (middle, oldest)
    assert (win.chart._current, win.chart._prior) == (middle, oldest)  # the chart follows


def test_flicker_shows_the_prior_in_the_same_tiles_with_the_same_view(reader_library,
                                                                      open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    grid = win.grid
    current, prior = grid.current_key, grid.prior_key
    t = tiles_by_label(win)
    lcc = t["LCC"]
    lcc.vb.setRange(xRange=(20, 120), yRange=(30, 150), padding=0)
    lcc.vb.sigRangeChangedManually.emit([True, True])  # as a wheel/drag: the others follow
    lcc.set_window(100.0, 120.0)
    rng = {k: v.normalized_range() for k, v in t.items()}
    shown_before = lcc.displayed_array().copy()
    tiles_before = list(grid.tiles)
    qtbot.keyClick(win, Qt.Key.Key_X)
    assert grid.flicker and grid.tiles == tiles_before  # the same tiles
    assert all(x.exam_key == prior for x in grid.tiles)
    assert grid.current_key == current and grid.prior_key == prior  # nothing re-chosen
    for k, v in tiles_by_label(win).items():
        assert v.normalized_range() == pytest.approx(rng[k], abs=1e-9)
        assert (v.window_center, v.window_width) == (100.0, 120.0)
    assert "PRIOR" in lcc._caption.text() and "flicker" in win.status_text.text().lower()
    qtbot.keyClick(win, Qt.Key.Key_X)
    assert not grid.flicker and all(x.exam_key == current for x in grid.tiles)
    assert lcc.normalized_range() == pytest.approx(rng["LCC"], abs=1e-9)
    import numpy as np

    assert np.array_equal(lcc.displayed_array(), shown_before)
    # 8-up: the rows swap; changing the exam ends the flicker
    qtbot.keyClick(win, Qt.Key.Key_2)
    qtbot.keyClick(win, Qt.Key.Key_X)
    assert [x.exam_key for x in grid.tiles] == [current] * 4 + [prior] * 4
    qtbot.keyClick(win, Qt.Key.Key_BracketRight)
    assert not grid.flicker
    assert [x.exam_key for x in grid.tiles[4:]] == [current] * 4


def test_flicker_without_a_prior_says_so(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P2")  # one exam
    qtbot.keyClick(win, Qt.Key.Key_X)
    assert not win.grid.flicker and "needs a prior" in win.status_text.text()


def test_timeline_starts_on_the_view_in_use(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    grid = win.grid
    grid._on_activated(tiles_by_label(win)["RCC"])  # what a click on the tile does
    qtbot.keyClick(win, Qt.Key.Key_3)
    assert {t.label for t in grid.tiles} == {"RCC"}
    qtbot.keyClick(win, Qt.Key.Key_V)
    assert {t.label for t in grid.tiles} == {"LCC"}
    qtbot.keyClick(win, Qt.Key.Key_1)
    qtbot.keyClick(win, Qt.Key.Key_3)  # no tile clicked since: the last view used
    assert {t.label for t in grid.tiles} == {"LCC"}


def test_status_bar_counts_exams_in_english(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P2")
    assert win.status_text.text().endswith("· 1 exam")
    select(win, qtbot, "P1")
    assert win.status_text.text().endswith("· 3 exams")


def test_about_box_names_the_version(reader_library, open_window, qtbot):
    import mamview
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QMessageBox

    win = open_window(reader_library)
    seen = []

    def grab():
        box = next((w for w in QApplication.topLevelWidgets()
                    if isinstance(w, QMessageBox) and w.isVisible()), None)
        if box is None:
            QTimer.singleShot(20, grab)
            return
        seen.append(box.text())
        box.accept()

    QTimer.singleShot(20, grab)
    win.show_about()
    assert seen and f"mamview {mamview.__version__}" in seen[0]


def test_digits_in_the_worklist_change_the_layout(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    table = win.patient_list.table
    table.setFocus()
    qtbot.keyClick(table, Qt.Key.Key_2)
    assert win.grid.layout_key == "8up" and win.patient_list.search.text() == ""
    assert win.patient_list.rows[win.patient_key].patient_id == "P1"  # no jump by typing
