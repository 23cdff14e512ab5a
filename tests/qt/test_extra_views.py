"""Additional views (a spot compression, an ML, an earlier repeat) are listed beside the
hanging with a preview, marked on the exam's thumbnail, and hung by a click or the E key in the
cell of their side and view family; the standard views come back."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from mamview.core.domain import view_label
from mamview.core.hanging import additional_views
from tests.qt.test_main_window import select, tiles_by_label


def test_additional_views_from_image_rows():
    def im(uid, side, view, standard=True, mods=(), missing=False):
        return {"sop_instance_uid": uid, "laterality": side, "view": view, "label": view_label(side, view),
                "is_standard": standard, "view_modifiers": list(mods), "missing": missing}

    rows = [im("a", "R", "CC"), im("b", "R", "CC", False, ["spot compression"]),
            im("c", "L", "XCCL", False), im("d", "L", "ML", False), im("e", "R", "CC"),
            im("f", "L", "MLO", missing=True), im("g", "", "UNKNOWN", False)]
    got = additional_views(rows, {"a"})
    assert [(e.sop_instance_uid, e.text, e.slot) for e in got] == [
        ("b", "RCC spot compression", "RCC"), ("c", "LXCCL", "LCC"), ("d", "LML", "LMLO"),
        ("e", "RCC earlier repeat", "RCC"), ("g", "??", "")]


@pytest.fixture
def spot_library(reader_copy):
    from mamview.core.ingest import drain, run_import
    from tests.factories import write_mammogram

    folder = reader_copy.home.parent / "spot"
    write_mammogram(folder / "RCC_spot.dcm", patient_id="P1", patient_name="TESTER^ANNA",
                    study_date="20230320", laterality="R", view="CC",
                    modifiers=("spot compression",), shape=(200, 160))
    drain(run_import(reader_copy, [folder]))
    return reader_copy


def test_a_spot_view_is_listed_and_hung_by_click_and_key(spot_library, open_window, qtbot):
    win = open_window(spot_library)
    select(win, qtbot, "P1")
    grid = win.grid
    assert grid.extras_scroll.isVisible()
    [(uid, button)] = grid._extra_buttons.items()
    assert "spot compression" in button.toolTip() and not button.icon().isNull()
    current = grid.current_key
    assert "+1" in grid._thumbs[current].text()
    assert "spot compression" in grid._thumbs[current].toolTip()
    standard_uid = tiles_by_label(win)["RCC"].image_row["sop_instance_uid"]
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    rcc = tiles_by_label(win)["RCC"]
    assert rcc.image_row["sop_instance_uid"] == uid and rcc.array is not None
    assert "ADDITIONAL VIEW" in rcc._caption.text() and "spot" in rcc._caption.text()
    others = {k: t.image_row["sop_instance_uid"] for k, t in tiles_by_label(win).items()}
    assert len(set(others.values())) == 4 and standard_uid not in others.values()
    qtbot.mouseClick(grid._extra_buttons[uid], Qt.MouseButton.LeftButton)  # again: back
    assert tiles_by_label(win)["RCC"].image_row["sop_instance_uid"] == standard_uid
    qtbot.keyClick(win, Qt.Key.Key_E)
    assert tiles_by_label(win)["RCC"].image_row["sop_instance_uid"] == uid
    assert "1/1" in win.status_text.text()
    qtbot.keyClick(win, Qt.Key.Key_E)  # after the last: the standard views
    assert tiles_by_label(win)["RCC"].image_row["sop_instance_uid"] == standard_uid
    # 8-up: it goes in the current row's RCC, never the prior's
    qtbot.keyClick(win, Qt.Key.Key_2)
    qtbot.keyClick(win, Qt.Key.Key_E)
    assert grid.tiles[4].image_row["sop_instance_uid"] == uid
    assert grid.tiles[0].exam_key == grid.prior_key
    assert grid.tiles[0].image_row["sop_instance_uid"] != uid
    # another exam: the standard hanging, and no bar when that exam has no additional view
    qtbot.keyClick(win, Qt.Key.Key_BraceLeft)
    assert grid.extra_uid is None and not grid.extras_scroll.isVisible()


def test_an_exam_without_additional_views_has_no_bar(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    select(win, qtbot, "P1")
    assert not win.grid.extras_scroll.isVisible()
    qtbot.keyClick(win, Qt.Key.Key_E)
    assert "no additional views" in win.status_text.text()
