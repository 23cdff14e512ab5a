"""The implant hanging (Shift+I): an exam's implant-displaced (ID) views hang in their standard
views' cells, marked 'ID' on the tile and in the extras bar; a view without an ID view keeps
the standard image and says so; the exported figure shows what the screen hangs; a new exam or
woman, the key again, or an exam without ID views leaves the standard hanging."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from mamview.qt import export
from tests.factories import write_mammogram
from tests.qt.test_main_window import select, tiles_by_label

SHIFT = Qt.KeyboardModifier.ShiftModifier
NEWEST, MIDDLE = "20230320", "20220315"
ID_SHAPE = (200, 160)  # the ID views' previews are told apart from the standard ones by size


@pytest.fixture
def implant_library(reader_copy):
    """P1's newest exam with RCC, LCC and RMLO implant-displaced views (no LMLO ID view), and
    her middle exam with an LCC ID view; P2 has none."""
    from mamview.core.ingest import drain, run_import

    folder = reader_copy.home.parent / "implant"
    for date, views in ((NEWEST, (("R", "CC"), ("L", "CC"), ("R", "MLO"))),
                        (MIDDLE, (("L", "CC"),))):
        for side, view in views:
            write_mammogram(folder / date / f"{side}{view}_ID.dcm", patient_id="P1",
                            patient_name="TESTER^ANNA", study_date=date, laterality=side,
                            view=view, modifiers=("implant displaced",), shape=ID_SHAPE)
    drain(run_import(reader_copy, [folder]))
    return reader_copy


def _uids(win) -> dict[str, str]:
    return {k: t.image_row["sop_instance_uid"] for k, t in tiles_by_label(win).items()}


def _id_uids(grid) -> dict[str, str]:
    return {e.slot: e.sop_instance_uid for e in grid.extras() if e.implant_displaced}


def test_shift_i_hangs_the_implant_displaced_views_in_their_cells(implant_library, open_window,
                                                                   qtbot, tmp_path):
    win = open_window(implant_library)
    select(win, qtbot, "P1")
    grid = win.grid
    standard = _uids(win)
    ids = _id_uids(grid)
    assert sorted(ids) == ["LCC", "RCC", "RMLO"]
    # the strip and the extras bar say there are ID views
    assert " ID" in grid._thumbs[grid.current_key].text()
    assert all(grid._extra_buttons[u].text().startswith(v + " ID") for v, u in ids.items())

    qtbot.keyClick(win, Qt.Key.Key_I, SHIFT)
    assert grid.implant and not tiles_by_label(win)["RCC"].inverted  # not the invert key
    t = tiles_by_label(win)
    for view in ("RCC", "LCC", "RMLO"):
        assert t[view].image_row["sop_instance_uid"] == ids[view], view
        assert t[view].array is not None and t[view].array.shape == ID_SHAPE
        assert t[view]._caption.text().startswith(f"{view} ID"), view
        assert grid._extra_buttons[ids[view]].isChecked()
    # no LMLO ID view: the standard LMLO stays, and its tile says so
    assert t["LMLO"].image_row["sop_instance_uid"] == standard["LMLO"]
    assert t["LMLO"]._caption.text().startswith("LMLO · no ID view")
    assert "Implant hanging" in win.status_text.text() and "LMLO" in win.status_text.text()
    QApplication.processEvents()  # the extras bar's new buttons are shown
    grid.grab().save(str(tmp_path / "implant-4up.png"))

    # the export hangs the same images, captioned as ID views
    content = export.content_for_window(win, True)
    tiles = dict(export.window_tile_images(win))
    assert [c.tile_key in tiles for c in content.tiles] == [True] * 4
    rcc = content.tiles[0]
    assert rcc.cell.image_uid == ids["RCC"] and rcc.tile_key.endswith("|" + ids["RCC"])
    assert rcc.caption.startswith("RCC ID · implant displaced")
    assert tiles[rcc.tile_key].size() == t["RCC"].tile_image().size()
    assert "no LMLO ID view" in content.tiles[3].caption

    # 8-up: the prior's own LCC ID view in its row, the current row as in the 4-up
    qtbot.keyClick(win, Qt.Key.Key_2)
    assert grid.implant
    prior_lcc = grid.tiles[1]
    assert prior_lcc.exam_key == grid.prior_key and prior_lcc._caption.text().startswith("LCC ID")
    assert prior_lcc.array.shape == ID_SHAPE
    assert grid.tiles[4].image_row["sop_instance_uid"] == ids["RCC"]
    assert grid.tiles[0]._caption.text().startswith("RCC (no ID)")  # the prior has only an LCC one
    QApplication.processEvents()
    grid.grab().save(str(tmp_path / "implant-8up.png"))
    qtbot.keyClick(win, Qt.Key.Key_1)

    # the key again: the standard hanging
    qtbot.keyClick(win, Qt.Key.Key_I, SHIFT)
    assert not grid.implant and _uids(win) == standard
    assert not any(b.isChecked() for b in grid._extra_buttons.values())
    assert all(" ID" not in x._caption.text() for x in grid.tiles)

    # a new current exam ends it
    qtbot.keyClick(win, Qt.Key.Key_I, SHIFT)
    assert grid.implant
    qtbot.keyClick(win, Qt.Key.Key_BraceLeft)
    assert not grid.implant and all(c.image_uid is None for c in grid.plan().cells)
    qtbot.keyClick(win, Qt.Key.Key_BraceRight)
    assert _uids(win) == standard

    # a new woman ends it too, and an exam without ID views keeps its hanging
    qtbot.keyClick(win, Qt.Key.Key_I, SHIFT)
    assert grid.implant
    select(win, qtbot, "P2")
    assert not grid.implant
    before = _uids(win)
    qtbot.keyClick(win, Qt.Key.Key_I, SHIFT)
    assert not grid.implant and _uids(win) == before
    assert "no implant-displaced" in win.status_text.text()


def test_the_implant_key_is_listed_with_a_menu_action(implant_library, open_window):
    win = open_window(implant_library)
    from mamview.qt.main_window import KEYS

    assert KEYS["implant"] == "Shift+I" and KEYS["invert"] == "I"
    assert "<b>Shift+I</b>" in win.shortcuts_text()
    act = win.actions_by_name["implant"]
    assert act in win.menuBar().actions()[2].menu().actions()  # the View menu
