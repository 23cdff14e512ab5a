"""Side panel beside the chart: one woman's change metrics from `core.analytics.trajectory`.

The panel only lays out the (label, value) rows the report gives; every number and wording comes
from the core. It is headed "research use, not validated" because no published alert rule exists
for any of these metrics (risk-science.md §6).
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QScrollArea, QVBoxLayout, QWidget

RESEARCH_LABEL = "research use, not validated"
HEADING = "Change metrics"
EMPTY_TEXT = "No scored exams for this woman yet."

_BG, _FG, _DIM, _FLAG = "#101214", "#c9ced6", "#8a929c", "#ffb454"


class MetricsPanel(QWidget):
    """Change since prior, rate per year, trend slope, threshold crossings, flags."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._rows: list[tuple[str, str]] = []
        self.report = None  # the report shown (the export reuses it)
        self._flags: tuple[str, ...] = ()
        self._rising = False
        self.setStyleSheet(f"background: {_BG}; color: {_FG};")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)
        self.heading_label = QLabel(
            f"<b>{HEADING}</b><br><span style='color:{_FLAG}'>{RESEARCH_LABEL}</span>")
        self.heading_label.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.heading_label)
        self.body_label = QLabel(EMPTY_TEXT)
        self.body_label.setTextFormat(Qt.TextFormat.RichText)
        self.body_label.setWordWrap(True)
        self.body_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.body_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.body_label)
        lay.addWidget(scroll, 1)
        self.setMinimumWidth(220)

    def set_report(self, report) -> None:
        """Show a `TrajectoryReport` (anything with `display_rows()`, `flags`, `rising`), or clear."""
        self.report = report
        if report is None:
            self._rows, self._flags, self._rising = [], (), False
            self.body_label.setText(EMPTY_TEXT)
            return
        try:
            rows = [(str(a), str(b)) for a, b in report.display_rows()]
        except Exception as exc:  # a bad report must not take the window down
            rows = [("Metrics unavailable", f"{type(exc).__name__}: {exc}")]
        self._rows = rows
        self._flags = tuple(str(f) for f in getattr(report, "flags", ()) or ())
        self._rising = bool(getattr(report, "rising", False))
        self.body_label.setText(rows_html(rows, self._flags))

    def rows(self) -> list[tuple[str, str]]:
        """The (label, value) rows shown."""
        return list(self._rows)

    @property
    def flags(self) -> tuple[str, ...]:
        return self._flags

    @property
    def rising(self) -> bool:
        return self._rising


def rows_html(rows: list[tuple[str, str]], flags: tuple[str, ...] = ()) -> str:
    """The rows as a two-column rich-text table; flag rows stand out in amber."""
    parts = []
    if flags:
        parts.append(f"<p style='color:{_FLAG}; font-weight:600'>⚑ "
                     + html.escape(", ".join(flags)) + "</p>")
    parts.append("<table cellspacing='0' cellpadding='2'>")
    for label, value in rows:
        colour = _FLAG if label.startswith("Flags") and value != "none" else _FG
        parts.append(
            f"<tr><td style='color:{_DIM}; padding-right:8px' valign='top'>{html.escape(label)}"
            f"</td><td style='color:{colour}'>{html.escape(value)}</td></tr>")
    parts.append("</table>")
    return "".join(parts)
