"""The worklist: every woman in the library with her age, exam count, newest exam's date and
accession, latest 5-year score, a read mark, and a flag when the trajectory crossed a threshold
or rises (core.analytics.trajectory decides).

Keyboard: in the search box Enter or Down opens the first match and Escape clears the search;
both hand the keyboard back (`searchFinished`) so the next key reaches the hanging."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLineEdit, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

# the row is core vocabulary (the reading session builds the rows); re-exported for callers
from mamview.core.worklist import PatientRow

# the risk and read mark before the dates: on a narrow screen the last columns scroll away
COLUMNS = ("", "Patient ID", "Name", "Age", "#", "5-yr", "✓", "Latest", "Accession")
NAME_COLUMN = 2
# the columns before these are kept in view (the name is elided first); these may scroll
SCROLLABLE_FROM = COLUMNS.index("Latest")
NAME_MIN, NAME_MAX = 100, 320  # px: a longer name is elided in the middle (tooltip: in full)
NAME_COMFORT = 140  # px: 'FAMILY, GIVEN' of usual length in the list's bold font
# short headers keep the list narrow; the tooltips say them in full
HEADER_TIPS = {"#": "Number of exams", "Latest": "Date of her newest exam",
               "Accession": "Accession number of her newest exam",
               "5-yr": "Latest current 5-year risk", "✓": "Read (at her newest exam); Ctrl+R"}
READ_COLUMN = COLUMNS.index("✓")
READ_MARK = "✓"
FLAG_COLOR = QColor("#e0a030")
CONFLICT_COLOR = QColor("#ff6b5a")
__all__ = ["PatientList", "PatientRow"]


class _Item(QTableWidgetItem):
    """Sorts numbers as numbers (None last)."""

    def __init__(self, text: str, sort_value=None):
        super().__init__(text)
        self._sort = sort_value if sort_value is not None else text

    def __lt__(self, other):
        a, b = self._sort, getattr(other, "_sort", other.text())
        try:
            return a < b
        except TypeError:
            return str(a) < str(b)


class PatientList(QWidget):
    """Search box over a sortable table; emits the chosen woman's key."""

    patientSelected = Signal(str)
    searchFinished = Signal()  # Enter/Down opened a match, or Escape left the search

    def __init__(self, parent=None):
        super().__init__(parent)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search name, patient ID or accession…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._apply_filter)
        self.search.installEventFilter(self)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        for col, name in enumerate(COLUMNS):
            if name in HEADER_TIPS:
                self.table.horizontalHeaderItem(col).setToolTip(HEADER_TIPS[name])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setShowGrid(False)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        # a cut name keeps its start and its end ('VAN DER BE…ANNA-MARIA'), never only the family
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        hdr = self.table.horizontalHeader()
        # widths from the contents (_fit_columns), not from the header's sort-indicator room
        hdr.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        hdr.setStretchLastSection(False)
        hdr.setMinimumSectionSize(18)
        # a narrow screen scrolls sideways rather than cutting columns off
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.itemSelectionChanged.connect(self._on_selection)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.search)
        lay.addWidget(self.table)
        self.rows: dict[str, PatientRow] = {}
        self._current: str | None = None
        self._sorted_once = False

    def eventFilter(self, obj: QObject, ev: QEvent) -> bool:
        if obj is self.search and ev.type() == QEvent.Type.KeyPress:
            key = ev.key()
            if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Down):
                self.open_first_match()
                return True
            if key == Qt.Key.Key_Escape:
                self.leave_search()
                return True
        return super().eventFilter(obj, ev)

    def open_first_match(self) -> None:
        """Open the first woman the search shows (if any) and leave the search box."""
        keys = self.visible_keys()
        if keys:
            self.select(keys[0])
        self.searchFinished.emit()

    def leave_search(self) -> None:
        """Clear the search (every woman shown again) and leave the search box."""
        self.search.clear()
        self.searchFinished.emit()

    def set_rows(self, rows: list[PatientRow]) -> None:
        """Replace the list; the selected woman stays selected (no new selection signal)."""
        self.rows = {r.patient_key: r for r in rows}
        self.table.blockSignals(True)
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            self._fill_row(i, r)
        self.table.setSortingEnabled(True)
        if not self._sorted_once:  # worklist order by patient ID until the user sorts
            self.table.sortItems(1, Qt.SortOrder.AscendingOrder)
            self._sorted_once = True
        self.table.blockSignals(False)
        self._fit_columns()
        self._apply_filter(self.search.text())
        if self._current in self.rows:
            self._select_row_of(self._current, emit=False)

    def update_row(self, row: PatientRow) -> None:
        """Refresh one woman's line (a live score arrived)."""
        self.rows[row.patient_key] = row
        for i in range(self.table.rowCount()):
            it = self.table.item(i, 1)
            if it is not None and it.data(Qt.ItemDataRole.UserRole) == row.patient_key:
                self.table.blockSignals(True)
                sorting = self.table.isSortingEnabled()
                self.table.setSortingEnabled(False)
                self._fill_row(i, row)
                self.table.setSortingEnabled(sorting)
                self.table.blockSignals(False)
                return

    def _fill_row(self, i: int, r: PatientRow) -> None:
        if r.identity_conflict:  # before any risk flag: the trajectory may be two women's
            flag = _Item("⚠", -1)
            flag.setForeground(CONFLICT_COLOR)
            flag.setToolTip(r.identity_conflict[:1].upper() + r.identity_conflict[1:])
        else:
            flag = _Item("⚑" if r.flags else "", 0 if r.flags else 1)
        if r.flags and not r.identity_conflict:
            flag.setForeground(FLAG_COLOR)
            flag.setToolTip("; ".join(r.flags) + "\n(research use, not validated)")
        pid = _Item(r.patient_id or "(no ID)")
        pid.setData(Qt.ItemDataRole.UserRole, r.patient_key)
        latest = _Item("—" if r.latest_percent is None else f"{r.latest_percent:.1f}%",
                       r.latest_percent if r.latest_percent is not None else float("inf"))
        latest.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        exams = _Item(str(r.exams), r.exams)
        exams.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        age = _Item("" if r.age is None else str(r.age), r.age if r.age is not None else 999)
        age.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if len(r.birth_date) == 8:
            age.setToolTip(f"born {r.birth_date[:4]}-{r.birth_date[4:6]}-{r.birth_date[6:]}")
        last = _Item(r.last_exam, r.last_exam or "~")  # undated last
        acc = _Item(r.accession)
        read = _Item(READ_MARK if r.read else "", 0 if r.read else 1)
        read.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        read.setToolTip("Read (at her newest exam)" if r.read else "Not read yet")
        name = _Item(r.display_name)
        name.setToolTip(r.display_name)  # in full, whatever the column's width
        items = (flag, pid, name, age, exams, latest, read, last, acc)
        font = QFont(self.table.font())
        font.setBold(not r.read)  # unread women stand out, as in a mail reader
        for col, item in enumerate(items):
            item.setFont(font)
            self.table.setItem(i, col, item)

    def _fit_columns(self) -> None:
        """Each column as wide as its contents or its header text; the name takes what is left
        (at least enough for a short name)."""
        fm = self.table.horizontalHeader().fontMetrics()
        for col, name in enumerate(COLUMNS):
            if col != NAME_COLUMN:
                self.table.setColumnWidth(col, max(self.table.sizeHintForColumn(col) + 6,
                                                   fm.horizontalAdvance(name) + 14))
        self._fit_name()

    def _name_needed(self) -> int:
        """The name column's width for the longest name (at most NAME_MAX)."""
        return max(NAME_MIN, min(NAME_MAX, self.table.sizeHintForColumn(NAME_COLUMN) + 8))

    def _fit_name(self) -> None:
        """The name takes the room left when that holds a usual name (NAME_COMFORT): every
        column stays in view and a longer name is elided in the middle. In a narrower list the
        name keeps up to its longest width while the columns up to the read mark stay in view,
        and the dates and accession scroll."""
        widths = [self.table.columnWidth(c) for c in range(len(COLUMNS))]
        view = self.table.viewport().width()
        others = sum(w for c, w in enumerate(widths) if c != NAME_COLUMN)
        kept = sum(w for c, w in enumerate(widths[:SCROLLABLE_FROM]) if c != NAME_COLUMN)
        needed, room = self._name_needed(), view - others
        if room >= min(needed, NAME_COMFORT):
            width = room
        else:
            width = min(needed, max(NAME_MIN, view - kept))
        self.table.setColumnWidth(NAME_COLUMN, max(NAME_MIN, width))

    def preferred_width(self) -> int:
        """The width that shows every column, the longest name in full (up to NAME_MAX)."""
        widths = sum(self.table.columnWidth(c) for c in range(len(COLUMNS)) if c != NAME_COLUMN)
        frame = 2 * self.table.frameWidth() + self.table.verticalScrollBar().sizeHint().width()
        return widths + self._name_needed() + frame + 2

    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        self._fit_name()

    def _apply_filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.table.rowCount()):
            cells = (self.table.item(i, c) for c in (1, 2, COLUMNS.index("Accession")))
            hay = " ".join(c.text() for c in cells if c is not None).lower()
            self.table.setRowHidden(i, bool(needle) and needle not in hay)

    def visible_keys(self) -> list[str]:
        """Patient keys in the order shown, hidden (filtered) rows left out."""
        return [self.table.item(i, 1).data(Qt.ItemDataRole.UserRole)
                for i in range(self.table.rowCount())
                if not self.table.isRowHidden(i) and self.table.item(i, 1) is not None]

    def current_key(self) -> str | None:
        return self._current

    def select(self, patient_key: str) -> None:
        """Select a woman (emits patientSelected when it changes)."""
        self._select_row_of(patient_key, emit=True)

    def step(self, delta: int) -> None:
        """Next / previous woman among those shown."""
        keys = self.visible_keys()
        if not keys:
            return
        i = keys.index(self._current) if self._current in keys else -1
        j = min(max(0, i + delta), len(keys) - 1) if i >= 0 else 0
        self.select(keys[j])

    def _select_row_of(self, key: str, emit: bool) -> None:
        for i in range(self.table.rowCount()):
            it = self.table.item(i, 1)
            if it is not None and it.data(Qt.ItemDataRole.UserRole) == key:
                if not emit:
                    self.table.blockSignals(True)
                self.table.selectRow(i)
                self.table.scrollToItem(it)
                self.table.blockSignals(False)
                if emit and key != self._current:
                    self._current = key
                    self.patientSelected.emit(key)
                self._current = key
                return

    def _on_selection(self) -> None:
        items = self.table.selectedItems()
        rows = {it.row() for it in items}
        if not rows:
            return
        it = self.table.item(min(rows), 1)
        key = it.data(Qt.ItemDataRole.UserRole) if it else None
        if key and key != self._current:
            self._current = key
            self.patientSelected.emit(key)
