"""Files that were skipped or cannot be shown, and why (the cache's problems table)."""

from __future__ import annotations

from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)


class ProblemsPanel(QWidget):
    """A table of (reason, file, detail); refreshed after each import."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.summary = QLabel("No problems.")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(("Reason", "File", "Detail"))
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.summary)
        lay.addWidget(self.table)

    def set_problems(self, rows: list[dict]) -> None:
        """Rows as `core.cache.reads.list_problems` returns them."""
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            for c, key in enumerate(("reason", "path", "detail")):
                item = QTableWidgetItem(str(r.get(key, "")))
                item.setToolTip(str(r.get(key, "")))
                self.table.setItem(i, c, item)
        self.summary.setText(f"{len(rows)} file(s) skipped or unusable." if rows else "No problems.")

    def count(self) -> int:
        return self.table.rowCount()
