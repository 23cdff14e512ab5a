"""Side panel beside the chart: one woman's change metrics from `core.analytics.trajectory`.

The panel only lays out the (label, value) rows the report gives; every number and wording comes
from the core. The rows that matter (latest risk, change, rate, crossings, flags and the rising
rule: `TrajectoryReport.display_sections`) sit above the scrolling part, whole, so they are never
cut or scrolled away; slopes, acceleration, strata, gaps and notes scroll below them. It is
headed "research use, not validated" because no published alert rule exists for any of these
metrics (risk-science.md §6).
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
        self._key_rows: list[tuple[str, str]] = []
        self.report = None  # the report shown (the export reuses it)
        self._flags: tuple[str, ...] = ()
        self._rising = False
        self.setStyleSheet(f"background: {_BG}; color: {_FG};")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(4)
        # one line: the heading and its research label side by side
        self.heading_label = QLabel(
            f"<b>{HEADING}</b> · <span style='color:{_FLAG}'>{RESEARCH_LABEL}</span>")
        self.heading_label.setTextFormat(Qt.TextFormat.RichText)
        self.heading_label.setWordWrap(True)
        lay.addWidget(self.heading_label)
        # the key rows: outside the scroll area, so they are shown whole or the panel grows
        self.body_label = QLabel(EMPTY_TEXT)
        self.body_label.setTextFormat(Qt.TextFormat.RichText)
        self.body_label.setWordWrap(True)
        self.body_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.body_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.body_label)
        self.detail_label = QLabel("")
        self.detail_label.setTextFormat(Qt.TextFormat.RichText)
        self.detail_label.setWordWrap(True)
        self.detail_label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.detail_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(self.detail_label)
        lay.addWidget(scroll, 1)
        self.setMinimumWidth(220)

    def set_report(self, report) -> None:
        """Show a `TrajectoryReport` (anything with `display_rows()`, `flags`, `rising`), or clear."""
        self.report = report
        if report is None:
            self._rows, self._key_rows, self._flags, self._rising = [], [], (), False
            self.body_label.setText(EMPTY_TEXT)
            self.detail_label.setText("")
            return
        try:
            if hasattr(report, "display_sections"):
                key, detail = report.display_sections()
            else:
                key, detail = report.display_rows(), []
            key = [(str(a), str(b)) for a, b in key]
            detail = [(str(a), str(b)) for a, b in detail]
        except Exception as exc:  # a bad report must not take the window down
            key, detail = [("Metrics unavailable", f"{type(exc).__name__}: {exc}")], []
        self._rows, self._key_rows = key + detail, key
        self._flags = tuple(str(f) for f in getattr(report, "flags", ()) or ())
        self._rising = bool(getattr(report, "rising", False))
        # the Flags row (amber) says the flags: no banner repeating them above the rows
        self.body_label.setText(rows_html(key))
        self.detail_label.setText(rows_html(detail) if detail else "")
        self._fit_key_rows()

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        self._fit_key_rows()

    def _fit_key_rows(self) -> None:
        # a wrapped label's minimum height ignores its width; ask for the height the key rows
        # need at this width, so the splitter never cuts them mid-line
        label = self.body_label
        need = label.heightForWidth(max(label.width(), 1))
        if need > 0 and need != label.minimumHeight():
            label.setMinimumHeight(need)

    def rows(self) -> list[tuple[str, str]]:
        """The (label, value) rows shown."""
        return list(self._rows)

    def key_rows(self) -> list[tuple[str, str]]:
        """The rows shown above the scrolling part (never scrolled away)."""
        return list(self._key_rows)

    def text(self) -> str:
        """Everything the panel says, as rich text (key rows, then details)."""
        return self.body_label.text() + self.detail_label.text()

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
    parts.append("<table cellspacing='0' cellpadding='1'>")
    for label, value in rows:
        colour = _FLAG if (label.startswith("Flags") and value != "none") or (
            label == "Rising?" and value.startswith("yes")) else _FG
        parts.append(
            f"<tr><td style='color:{_DIM}; padding-right:8px' valign='top'>{html.escape(label)}"
            f"</td><td style='color:{colour}'>{html.escape(value)}</td></tr>")
    parts.append("</table>")
    return "".join(parts)
