"""Worklist names at the widths the window gives the list at 1920×1080 and 1366×768: usual
names in full with every column in view where there is room, long names elided in the middle
with the full name as tooltip, and the columns up to the read mark kept in view."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QFont, QFontMetrics

from mamview.qt.patient_list import COLUMNS, NAME_COLUMN, SCROLLABLE_FROM, PatientList, PatientRow

LONG = "VAN DER BERG-SCHMIDT^ANNA-MARIA"
NAMES = ["DEMO^ALICE", "DEMO^BEATRIZ", "DEMO^FATIMA", "OYELARAN^OLUWASEUN", LONG]


def _rows():
    return [PatientRow(f"k{i}", f"LONG{i:04d}7788", n, 3, birth_date="19600101",
                       last_exam="2025-11-29", accession=f"A{i:04d}251129")
            for i, n in enumerate(NAMES)]


def _text_width(plist, text: str) -> int:
    font = QFont(plist.table.font())
    font.setBold(True)  # unread rows are bold
    return QFontMetrics(font).horizontalAdvance(text) + 8  # the cell's margins


@pytest.mark.parametrize("width, all_columns", [(597, True), (411, False)])
def test_names_are_not_cut_at_the_windows_list_widths(qtbot, tmp_path, width, all_columns):
    plist = PatientList()
    qtbot.addWidget(plist)
    plist.resize(width, 500)
    plist.show()
    qtbot.waitExposed(plist)
    plist.set_rows(_rows())
    plist.resize(width, 501)  # a resize refits the name column
    qtbot.wait(20)
    plist.grab().save(str(tmp_path / f"worklist-{width}.png"))
    table = plist.table
    widths = [table.columnWidth(c) for c in range(len(COLUMNS))]
    view = table.viewport().width()
    # the usual names fit whole
    for name in ("DEMO, BEATRIZ", "DEMO, FATIMA"):
        assert _text_width(plist, name) <= widths[NAME_COLUMN], name
    # the columns up to the read mark are always in view; with room, every column is
    assert sum(widths[:SCROLLABLE_FROM]) <= view
    assert (sum(widths) <= view) == all_columns
    # a long name is elided (the delegate cuts it in the middle) and says itself in full
    by_name = {table.item(i, NAME_COLUMN).text(): table.item(i, NAME_COLUMN)
               for i in range(table.rowCount())}
    long_item = by_name["VAN DER BERG-SCHMIDT, ANNA-MARIA"]
    assert long_item.toolTip() == "VAN DER BERG-SCHMIDT, ANNA-MARIA"
    assert table.textElideMode().name == "ElideMiddle"
    assert plist.preferred_width() > width  # the whole long name would need more


def test_a_roomy_list_shows_the_longest_name_whole(qtbot):
    plist = PatientList()
    qtbot.addWidget(plist)
    plist.show()
    qtbot.waitExposed(plist)
    plist.set_rows(_rows())
    plist.resize(plist.preferred_width(), 400)
    qtbot.wait(20)
    widths = [plist.table.columnWidth(c) for c in range(len(COLUMNS))]
    assert _text_width(plist, "VAN DER BERG-SCHMIDT, ANNA-MARIA") <= widths[NAME_COLUMN]
    assert sum(widths) <= plist.table.viewport().width()
