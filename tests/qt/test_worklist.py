"""The worklist columns (age, newest exam date, its accession) and the read mark: toggled by a
key, stored in the cache (a second window sees it), undone by a newer exam."""

from __future__ import annotations

from PySide6.QtCore import Qt

from mamview.core.cache import reads
from mamview.qt.patient_list import COLUMNS, READ_COLUMN, READ_MARK
from tests.qt.test_main_window import select


def cell(win, patient_id: str, column: str) -> str:
    table = win.patient_list.table
    for i in range(table.rowCount()):
        if table.item(i, 1).text() == patient_id:
            return table.item(i, COLUMNS.index(column)).text()
    raise AssertionError(patient_id)


def test_worklist_shows_age_newest_exam_and_accession(reader_library, open_window):
    win = open_window(reader_library)
    p1 = next(r for r in win.patient_list.rows.values() if r.patient_id == "P1")
    assert (p1.last_exam, p1.accession) == ("2023-03-20", "A20230320")
    assert cell(win, "P1", "Latest") == "2023-03-20" and cell(win, "P1", "Accession") == "A20230320"
    assert cell(win, "P2", "Latest") == "2022-01-01" and cell(win, "P2", "#") == "1"
    # the search finds a woman by her accession number too
    win.patient_list.search.setText("a2022")
    assert [win.patient_list.rows[k].patient_id for k in win.patient_list.visible_keys()] == ["P2"]


def test_read_mark_by_key_persists_in_the_cache(reader_copy, open_window, qtbot):
    win = open_window(reader_copy)
    key = select(win, qtbot, "P1")
    assert cell(win, "P1", "✓") == "" and win.patient_list.table.item(0, 1).font().bold()
    qtbot.keyClick(win, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    assert win.patient_list.rows[key].read and cell(win, "P1", "✓") == READ_MARK
    assert "marked read" in win.status_text.text()
    assert reads.read_marks(win.db)[key][0].endswith("2023-03-20")
    win.shutdown()
    again = open_window(reader_copy)  # a new window on the same library
    assert again.patient_list.rows[key].read and cell(again, "P1", "✓") == READ_MARK
    assert not next(r for r in again.patient_list.rows.values() if r.patient_id == "P2").read
    select(again, qtbot, "P1")
    qtbot.keyClick(again, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # unread again
    assert not again.patient_list.rows[key].read and cell(again, "P1", "✓") == ""
    assert key not in reads.read_marks(again.db)


def test_a_newer_exam_makes_her_unread(reader_copy, open_window, qtbot, tmp_path):
    from tests.factories import write_mammogram
    from tests.qt.conftest import VIEWS

    win = open_window(reader_copy)
    key = select(win, qtbot, "P1")
    win.toggle_read()
    assert win.patient_list.rows[key].read
    for side, view in VIEWS:
        write_mammogram(tmp_path / "new" / f"{side}{view}.dcm", patient_id="P1",
                        patient_name="TESTER^ANNA", study_date="20240402", laterality=side,
                        view=view)
    with qtbot.waitSignal(win.bridge.importFinished, timeout=20000):
        assert win.start_import([str(tmp_path / "new")])
    row = win.patient_list.rows[key]
    assert (row.last_exam, row.accession, row.read) == ("2024-04-02", "A20240402", False)
    assert cell(win, "P1", COLUMNS[READ_COLUMN]) == ""
