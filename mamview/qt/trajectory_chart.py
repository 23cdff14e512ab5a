"""The risk-trajectory chart: one woman's 5-year risk over her exams (pyqtgraph).

x is the exam date (or, for a de-identified export, years relative to the latest exam); y is
the model's 5-year risk in percent on a log axis, so the index-exam spikes (15 %) do not flatten
the 1–3 % range where most women sit. Reference lines and the cancer-free band come from
`/work/shared/reference/risk-science.md` §6 (NCCN 2026, USPSTF 2019, Lehman et al. 2026).

The chart holds no domain logic: it draws the ChartPoints it is given and says which exam was
clicked (`examClicked`). Live updates arrive through `update_point` from the GUI thread.
"""

from __future__ import annotations

import calendar
import html
import datetime
import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from mamview.core import reference
from mamview.core.models.registry import DEMO_LABEL
from mamview.core.domain import ScoreState
from mamview.core.reports.figure import format_relative_years, years_between

# what the chart draws per score state: a stale score waits like a pending one (hollow)
SCORED, PENDING, UNSCORABLE = ScoreState.CURRENT, ScoreState.PENDING, ScoreState.UNSCORABLE

# Reading-room palette: near-black background, low-glare greys, one warm and one cool accent.
BACKGROUND = "#101214"
FOREGROUND = "#b8bec6"
GRID_ALPHA = 0.12
LINE_COLOR = "#e8c15a"      # the trajectory (amber)
POINT_COLOR = "#f2d27a"
PENDING_COLOR = "#8fa3b8"
UNSCORABLE_COLOR = "#6b7078"
CURRENT_COLOR = "#ff8a3d"
PRIOR_COLOR = "#4fc3f7"
NCCN_COLOR = "#d9534f"
HIGH_COLOR = "#b0407a"
BAND_COLOR = (80, 170, 120, 55)

# y range of the log axis (percent): Mirai's calibrated range is about 0.84–29.5 %.
Y_MIN_PERCENT, Y_MAX_PERCENT = 0.5, 40.0
# Exams without a score sit in a lane at the bottom of the plot, below every real value.
LANE_PERCENT = 0.58
Y_TICKS_PERCENT = (0.5, 1, 1.7, 3, 5, 10, 20)

# the values, their wording and their sources live in core.reference
NCCN_PERCENT = reference.NCCN_INCREASED_RISK.percent
HIGH_PERCENT = reference.HIGH_RISK.percent
BAND_PERCENT = (reference.CANCER_FREE_BAND.low_percent, reference.CANCER_FREE_BAND.high_percent)
NCCN_LABEL = reference.NCCN_INCREASED_RISK.label
HIGH_LABEL = reference.HIGH_RISK.label
BAND_LABEL = reference.CANCER_FREE_BAND.label
# short labels drawn on the plot; the full wording is in the legend under it
NCCN_SHORT, HIGH_SHORT = reference.NCCN_INCREASED_RISK.short, reference.HIGH_RISK.short

_SECONDS_PER_YEAR = 365.25 * 86400
# the 'current' label's height along its line (fraction of the plot height, from the bottom)
LABEL_TOP = 0.97
# the banner's phrases: it breaks between them when the panel is narrow, never inside one
DEMO_BANNER = "DEMO — " + DEMO_LABEL


@dataclass(frozen=True)
class ChartPoint:
    """One exam on the chart; `risk_percent` is the 5-year risk when `state` is CURRENT."""

    exam_key: str
    exam_date: datetime.date
    state: ScoreState  # STALE is drawn as PENDING, with its reason
    risk_percent: float | None = None
    yearly_percent: tuple[float, ...] = ()  # cumulative risk, years 1..5, percent
    model_label: str = ""
    reason: str | None = None  # why an exam could not be scored, or why it is pending again
    domain: str = ""  # scored on request from images outside the model's validated domain


def date_to_x(d: datetime.date) -> float:
    """Seconds since the epoch (UTC midnight) — the unit pyqtgraph's DateAxisItem expects."""
    return float(calendar.timegm(d.timetuple()))


def tooltip_text(p: ChartPoint, relative_to: datetime.date | None = None) -> str:
    """What hovering a point shows: date, 5-year risk, yearly probabilities, model, reason."""
    when = (format_relative_years(years_between(p.exam_date, relative_to))
            if relative_to else p.exam_date.isoformat())
    lines = [f"Exam {when}"]
    if p.state == SCORED and p.risk_percent is not None:
        lines.append(f"5-year risk {p.risk_percent:.1f}%")
        if p.yearly_percent:
            lines.append("Yearly (cumulative): " + " · ".join(
                f"{i + 1}y {v:.2f}%" for i, v in enumerate(p.yearly_percent)))
    elif p.state in (PENDING, ScoreState.STALE):
        # a stale score carries STALE_REASON: say why it is being computed again
        lines.append(p.reason[:1].upper() + p.reason[1:] if p.reason
                     else "Not scored yet (waiting for the model)")
    else:
        lines.append("Not scorable: " + (p.reason or "reason unknown"))
    if p.domain:
        lines.append(f"Outside the model's validated domain ({p.domain}): scored on request")
    if p.model_label:
        lines.append("Model: " + p.model_label)
    return "\n".join(lines)


class _PercentLogAxis(pg.AxisItem):
    """Left axis in log mode whose ticks read '1.7%', '3%' … instead of powers of ten."""

    def __init__(self, **kw):
        super().__init__("left", **kw)
        major = [(math.log10(v), f"{v:g}%") for v in Y_TICKS_PERCENT]
        self.setTicks([major, []])


class _RelativeYearsAxis(pg.AxisItem):
    """Bottom axis for exports in relative time: '−4 y' … '0 (latest)'."""

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph API)
        out = []
        for v in values:
            years = v / _SECONDS_PER_YEAR
            out.append("latest" if abs(years) < 1e-6 else f"{years:+g} y".replace("-", "−"))
        return out

    def tickValues(self, minVal, maxVal, size):  # noqa: N802 (pyqtgraph API)
        lo, hi = minVal / _SECONDS_PER_YEAR, maxVal / _SECONDS_PER_YEAR
        step = 1 if hi - lo <= 8 else 2
        first = math.ceil(lo / step) * step
        vals = [y * _SECONDS_PER_YEAR for y in np.arange(first, hi + 1e-9, step)]
        return [(step * _SECONDS_PER_YEAR, vals)]


class _YearAxis(pg.AxisItem):
    """Bottom axis with a tick and a label at 1 January of every year in view (none skipped).

    The labels shorten to '’19' when a year is narrower than a four-digit label needs.
    """

    def tickValues(self, minVal, maxVal, size):  # noqa: N802 (pyqtgraph API)
        first = datetime.datetime.fromtimestamp(minVal, datetime.timezone.utc).year
        last = datetime.datetime.fromtimestamp(maxVal, datetime.timezone.utc).year
        vals = [x for x in (date_to_x(datetime.date(y, 1, 1)) for y in range(first, last + 2))
                if minVal <= x <= maxVal]
        return [(_SECONDS_PER_YEAR, vals)]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 (pyqtgraph API)
        years = [datetime.datetime.fromtimestamp(v, datetime.timezone.utc).year for v in values]
        lo, hi = self.range
        px_per_year = self.width() * _SECONDS_PER_YEAR / (hi - lo) if hi > lo else 100.0
        font = self.style.get("tickFont") or self.font()
        wide = QFontMetrics(font).horizontalAdvance("2000") + 8
        return [str(y) if px_per_year >= wide else f"’{y % 100:02d}" for y in years]


def first_of_year_x(d: datetime.date) -> float:
    """The x coordinate of 1 January of `d`'s year."""
    return date_to_x(datetime.date(d.year, 1, 1))


class TrajectoryChart(QWidget):
    """5-year risk over exam dates, with reference lines, the cancer-free band and live points.

    `relative_years=True` draws x as years before the latest exam (de-identified exports).
    """

    examClicked = Signal(str)  # exam_key of the clicked point

    def __init__(self, parent: QWidget | None = None, *, relative_years: bool = False):
        super().__init__(parent)
        self.relative_years = relative_years
        self._points: dict[str, ChartPoint] = {}
        self._current: str | None = None
        self._prior: str | None = None
        self._model_label = ""
        self._is_demo = False
        self._thresholds: tuple[float, ...] = (NCCN_PERCENT, HIGH_PERCENT)
        self._anchor: datetime.date | None = None  # latest exam date (relative mode)
        self._build()

    # ---- construction -------------------------------------------------------------------
    def _build(self) -> None:
        self.setStyleSheet(f"background: {BACKGROUND}; color: {FOREGROUND};")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.setSpacing(2)

        self.title_label = QLabel("5-year risk")
        self.title_label.setStyleSheet(f"color: {FOREGROUND}; font-weight: 600; padding: 2px 4px;")
        lay.addWidget(self.title_label)

        # broken only between its phrases ("— not for clinical use" never wraps word by word)
        self.demo_banner = QLabel(DEMO_BANNER)
        self.demo_banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.demo_banner.setWordWrap(False)
        self.demo_banner.setMinimumWidth(1)  # its one-line text must not widen the panel
        self.demo_banner.setStyleSheet(
            "background: #5a3d00; color: #ffd27a; font-weight: 700; padding: 3px 6px;"
            "border: 1px solid #b07a10; border-radius: 3px;")
        self.demo_banner.setVisible(False)
        lay.addWidget(self.demo_banner)

        # above the curve: her images may be two women's (core.cache.reads.identity_conflicts)
        self.identity_banner = QLabel("")
        self.identity_banner.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.identity_banner.setWordWrap(True)
        self.identity_banner.setStyleSheet(
            "background: #5a1a14; color: #ffc4bb; font-weight: 700; padding: 3px 6px;"
            "border: 1px solid #c0392b; border-radius: 3px;")
        self.identity_banner.setVisible(False)
        lay.addWidget(self.identity_banner)

        left = _PercentLogAxis(pen=FOREGROUND, textPen=FOREGROUND)
        bottom = (_RelativeYearsAxis("bottom", pen=FOREGROUND, textPen=FOREGROUND)
                  if self.relative_years
                  else _YearAxis("bottom", pen=FOREGROUND, textPen=FOREGROUND))
        bottom.enableAutoSIPrefix(False)  # seconds since 1970 are not '×1e+09'
        self.plot_widget = pg.PlotWidget(background=BACKGROUND,
                                         axisItems={"left": left, "bottom": bottom})
        lay.addWidget(self.plot_widget, 1)
        self.legend_label = QLabel()
        self.legend_label.setWordWrap(True)
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.legend_label.setStyleSheet(f"color: {FOREGROUND}; font-size: 8pt; padding: 0 4px;")
        lay.addWidget(self.legend_label)
        self.plot_item = pi = self.plot_widget.getPlotItem()
        pi.setLogMode(x=False, y=True)
        pi.showGrid(x=True, y=True, alpha=GRID_ALPHA)
        pi.setMenuEnabled(False)
        pi.hideButtons()
        pi.setLabel("left", "5-year risk", color=FOREGROUND)
        pi.setLabel("bottom", "years relative to latest exam" if self.relative_years
                    else "exam date", color=FOREGROUND)
        vb = pi.getViewBox()
        vb.setMouseEnabled(x=False, y=False)  # a reading aid, not a data explorer
        vb.setYRange(math.log10(Y_MIN_PERCENT), math.log10(Y_MAX_PERCENT), padding=0)
        vb.sigResized.connect(self._fit_x_range)
        vb.sigResized.connect(self._place_labels)
        vb.sigXRangeChanged.connect(self._place_labels)

        # cancer-free band (drawn first, behind everything)
        self.band = pg.LinearRegionItem(
            values=[math.log10(v) for v in BAND_PERCENT], orientation="horizontal",
            movable=False, brush=pg.mkBrush(*BAND_COLOR), pen=pg.mkPen(None))
        self.band.setZValue(-10)
        self.band.setToolTip(BAND_LABEL)
        pi.addItem(self.band)

        self.threshold_lines: list[pg.InfiniteLine] = []
        # labels left of their lines: the current exam is often the rightmost one
        self.current_line = self._vline(CURRENT_COLOR, "current")
        self.prior_line = self._vline(PRIOR_COLOR, "prior")

        self.line = pg.PlotDataItem(pen=pg.mkPen(LINE_COLOR, width=2))
        pi.addItem(self.line)

        tip = self._tip
        self.scored_scatter = pg.ScatterPlotItem(
            size=11, pen=pg.mkPen("#1a1a1a", width=1), brush=pg.mkBrush(POINT_COLOR),
            symbol="o", hoverable=True, tip=tip, hoverSize=14)
        self.pending_scatter = pg.ScatterPlotItem(
            size=11, pen=pg.mkPen(PENDING_COLOR, width=2), brush=pg.mkBrush(None),
            symbol="o", hoverable=True, tip=tip)
        self.unscorable_scatter = pg.ScatterPlotItem(
            size=11, pen=pg.mkPen(UNSCORABLE_COLOR, width=2), brush=pg.mkBrush(UNSCORABLE_COLOR),
            symbol="x", hoverable=True, tip=tip)
        self.highlight_scatter = pg.ScatterPlotItem(size=20, brush=pg.mkBrush(None))
        for item in (self.highlight_scatter, self.scored_scatter, self.pending_scatter,
                     self.unscorable_scatter):
            pi.addItem(item)
        for item in (self.scored_scatter, self.pending_scatter, self.unscorable_scatter):
            item.sigClicked.connect(self._on_clicked)
            item.sigHovered.connect(self._on_hovered)
        self.highlight_scatter.setZValue(5)
        self.scored_scatter.setZValue(10)

        self.empty_text = pg.TextItem("No exams", color=FOREGROUND, anchor=(0.5, 0.5))
        pi.addItem(self.empty_text, ignoreBounds=True)
        self._set_thresholds(self._thresholds)
        self._redraw(rescale=True)  # an empty chart still shows dates around today, not 0..1

    def _vline(self, color: str, label: str) -> pg.InfiniteLine:
        # which side of its line the label sits on is decided in _place_labels
        line = pg.InfiniteLine(angle=90, movable=False,
                               pen=pg.mkPen(color, width=1, style=Qt.PenStyle.DashLine),
                               label=label, labelOpts={"position": LABEL_TOP, "color": color,
                                                       "anchors": [(1, 0), (1, 0)]})
        line.setVisible(False)
        line.setZValue(-5)
        self.plot_item.addItem(line, ignoreBounds=True)
        return line

    def _set_thresholds(self, thresholds) -> None:
        for line in self.threshold_lines:
            self.plot_item.removeItem(line)
        self.threshold_lines = []
        for value in thresholds:
            value = float(value)
            if not Y_MIN_PERCENT < value < Y_MAX_PERCENT:
                continue  # a threshold outside the axis cannot be drawn honestly
            color, text, short = _threshold_style(value)
            # the lowest line's label goes under it, clear of the cancer-free band above
            anchor = (0, 0) if value == min(thresholds) else (0, 1)
            line = pg.InfiniteLine(
                pos=math.log10(value), angle=0, movable=False,
                pen=pg.mkPen(color, width=1.5, style=Qt.PenStyle.DashLine),
                label=short, labelOpts={"position": 0.01, "color": color,
                                        "anchors": [anchor, anchor]})
            line.threshold_percent = value
            line.setToolTip(text)
            line.setZValue(-4)
            self.plot_item.addItem(line, ignoreBounds=True)
            self.threshold_lines.append(line)
        self._thresholds = tuple(float(t) for t in thresholds)
        self.legend_label.setText(legend_html(self._thresholds))

    # ---- public API ---------------------------------------------------------------------
    def set_patient(self, points: list[ChartPoint], model_label: str, is_demo: bool,
                    thresholds=(NCCN_PERCENT, HIGH_PERCENT)) -> None:
        """Show one woman's exams (any order); replaces whatever was shown."""
        self._points = {p.exam_key: p for p in points}
        self._model_label = model_label or ""
        self._is_demo = bool(is_demo)
        self._current = self._prior = None
        if tuple(float(t) for t in thresholds) != self._thresholds:
            self._set_thresholds(thresholds)
        self.demo_banner.setVisible(self._is_demo)
        # the banner already says "demo model — …": do not repeat it in the title
        name = self._model_label
        if self._is_demo:
            name = name.replace(f"({DEMO_LABEL})", "").replace(DEMO_LABEL, "").strip(" —-")
        self.title_label.setText("5-year risk" + (f" — {name}" if name else ""))
        self._redraw(rescale=True)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        super().resizeEvent(event)
        self._fit_banner()

    def _fit_banner(self) -> None:
        """Break the demo banner between its phrases, as few lines as the width allows."""
        banner = self.demo_banner
        banner.ensurePolished()
        room = self.width() - 8 - 14  # layout margins, the banner's padding and border
        metrics = banner.fontMetrics()
        lines: list[str] = []
        for phrase in DEMO_BANNER.split(" — "):
            joined = f"{lines[-1]} — {phrase}" if lines else phrase
            if lines and metrics.horizontalAdvance(joined) <= room:
                lines[-1] = joined
            else:
                lines.append(phrase)
        # a line break, not a wrap: the next line starts with its own phrase, no dangling dash
        banner.setText("\n".join(lines))

    def banner_lines(self) -> list[str]:
        """The demo banner's lines as shown (tests)."""
        return self.demo_banner.text().split("\n")

    def set_identity_warning(self, text: str) -> None:
        """Say above the chart that these exams may not be one woman's ('' hides it)."""
        self.identity_banner.setText("⚠ " + text[:1].upper() + text[1:] if text else "")
        self.identity_banner.setVisible(bool(text))

    def update_point(self, point: ChartPoint) -> None:
        """Add or replace one exam's point (e.g. pending → scored when its score arrives)."""
        known = point.exam_key in self._points
        self._points[point.exam_key] = point
        self._redraw(rescale=not known)

    def set_current(self, current_key: str | None, prior_key: str | None) -> None:
        """Highlight the exam hung as current (orange) and as prior (blue)."""
        self._current, self._prior = current_key, prior_key
        self._draw_highlights()

    # ---- read-back helpers (tests, export) -----------------------------------------------
    def points(self) -> list[ChartPoint]:
        """The points shown, oldest first."""
        return sorted(self._points.values(), key=lambda p: (p.exam_date, p.exam_key))

    def scatter_for(self, state: ScoreState) -> pg.ScatterPlotItem:
        """The scatter item that draws exams in `state` (STALE: the pending one)."""
        return {SCORED: self.scored_scatter, PENDING: self.pending_scatter,
                ScoreState.STALE: self.pending_scatter,
                UNSCORABLE: self.unscorable_scatter}[ScoreState(state)]

    def tooltip_for(self, exam_key: str) -> str:
        """The tooltip text of one exam's point."""
        return tooltip_text(self._points[exam_key], self._anchor if self.relative_years else None)

    @property
    def is_demo(self) -> bool:
        return self._is_demo

    @property
    def thresholds(self) -> tuple[float, ...]:
        return self._thresholds

    # ---- drawing ----------------------------------------------------------------------------
    def x_of(self, d: datetime.date) -> float:
        """The x coordinate of an exam date in this chart's mode."""
        if self.relative_years and self._anchor is not None:
            return years_between(d, self._anchor) * _SECONDS_PER_YEAR
        return date_to_x(d)

    def _redraw(self, rescale: bool = False) -> None:
        pts = self.points()
        self._anchor = pts[-1].exam_date if pts else None
        scored = [p for p in pts if p.state == SCORED and p.risk_percent is not None
                  and p.risk_percent > 0]
        pending = [p for p in pts if p.state in (PENDING, ScoreState.STALE)]
        unscorable = [p for p in pts if p.state not in (SCORED, PENDING, ScoreState.STALE)
                      or (p.state == SCORED and not (p.risk_percent and p.risk_percent > 0))]

        def spots(ps, lane: bool):
            return [{"pos": (self.x_of(p.exam_date),
                             math.log10(LANE_PERCENT if lane else _clip(p.risk_percent))),
                     "data": p.exam_key} for p in ps]

        self.scored_scatter.setData(spots(scored, False))
        self.pending_scatter.setData(spots(pending, True))
        self.unscorable_scatter.setData(spots(unscorable, True))
        if scored:
            self.line.setData([self.x_of(p.exam_date) for p in scored],
                              [_clip(p.risk_percent) for p in scored])
        else:
            self.line.setData([], [])
        self.empty_text.setVisible(not pts)
        if rescale:
            self._rescale(pts)
        self._draw_highlights()

    def _rescale(self, pts: list[ChartPoint]) -> None:
        vb = self.plot_item.getViewBox()
        if pts:
            xs = [self.x_of(p.exam_date) for p in pts]
            lo, hi = min(xs), max(xs)
        else:
            lo = hi = 0.0 if self.relative_years else date_to_x(datetime.date.today())
        first = min(pts, key=lambda p: p.exam_date).exam_date if pts else None
        self._x_data = (lo, hi, first)
        self._fit_x_range()
        vb.setYRange(math.log10(Y_MIN_PERCENT), math.log10(Y_MAX_PERCENT), padding=0)

    def _fit_x_range(self, *_args) -> None:
        """The x range for the exams shown, at the plot's present width (again on resize).

        Room on the left for the reference labels, a little on the right for the last point,
        and 1 January of the first exam's year far enough inside that its year label is drawn
        whole (pyqtgraph drops a label that would overhang the axis).
        """
        lo, hi, first = getattr(self, "_x_data", (0.0, 0.0, None))
        span = max(hi - lo, _SECONDS_PER_YEAR)
        lo, hi = lo - 0.12 * span, hi + 0.08 * span
        if first is not None and not self.relative_years:
            jan1 = first_of_year_x(first)
            axis = self.plot_item.getAxis("bottom")
            font = axis.style.get("tickFont") or axis.font()
            half = QFontMetrics(font).horizontalAdvance("2000") / 2 + 4  # pixels
            width = max(self.plot_item.getViewBox().width(), 50.0)
            if jan1 - lo < half * (hi - lo) / width:
                # solve jan1 − lo = half · (hi − lo) / width for lo
                lo = (jan1 * width - half * hi) / (width - half)
        vb = self.plot_item.getViewBox()
        vb.setXRange(lo, hi, padding=0)
        self.empty_text.setPos((lo + hi) / 2, math.log10(8.0))  # clear of the reference lines

    def _draw_highlights(self) -> None:
        spots = []
        for key, color, line in ((self._current, CURRENT_COLOR, self.current_line),
                                 (self._prior, PRIOR_COLOR, self.prior_line)):
            p = self._points.get(key) if key else None
            line.setVisible(p is not None)
            if p is None:
                continue
            x = self.x_of(p.exam_date)
            line.setPos(x)
            y = (math.log10(_clip(p.risk_percent)) if p.state == SCORED and p.risk_percent
                 else math.log10(LANE_PERCENT))
            spots.append({"pos": (x, y), "pen": pg.mkPen(color, width=2.5), "data": key})
        self.highlight_scatter.setData(spots)
        self._place_labels()

    def _place_labels(self, *_args) -> None:
        """Keep the 'current' and 'prior' labels inside the plot and clear of each other.

        Each label sits on the side of its line with more room (so 'current' at the left edge
        is not cut to 'urrent'); 'prior' sits one text line below 'current', so two adjacent
        exams' labels cannot overlap whichever sides they take.
        """
        vb = self.plot_item.getViewBox()
        (x_lo, x_hi), height = vb.viewRange()[0], vb.height()
        for line, position in ((self.current_line, LABEL_TOP), (self.prior_line, None)):
            if not line.isVisible():
                continue
            label = line.label
            if position is None:  # one text line (and a little) below the current's label
                text_h = label.boundingRect().height()
                position = LABEL_TOP - (1.25 * text_h / height if height > 0 else 0.07)
            middle = (x_lo + x_hi) / 2
            anchor = (1, 0) if line.value() > middle else (0, 0)  # text away from the edge
            label.anchors = [anchor, anchor]
            label.setPosition(max(position, 0.05))
            label.updatePosition()

    def _tip(self, x, y, data):
        p = self._points.get(data)
        return tooltip_text(p, self._anchor if self.relative_years else None) if p else ""

    def _on_hovered(self, item, spots, _ev=None) -> None:
        # The scatter (drawn above the band and the threshold lines) carries its exam's
        # tooltip while a point is under the mouse, so Qt shows the exam's, not the band's.
        # Off every point it carries none, and the band's or the line's shows again.
        tips = [self._tip(0, 0, s.data()) for s in spots] if len(spots) else []
        item.setToolTip("\n\n".join(t for t in tips if t))

    def _on_clicked(self, _item, spots, _ev=None) -> None:
        if len(spots):
            self.examClicked.emit(str(spots[0].data()))


def _threshold_style(value: float) -> tuple[str, str, str]:
    """(colour, full wording, short on-plot label) of a threshold line."""
    if math.isclose(value, NCCN_PERCENT):
        return NCCN_COLOR, NCCN_LABEL, NCCN_SHORT
    if math.isclose(value, HIGH_PERCENT):
        return HIGH_COLOR, HIGH_LABEL, HIGH_SHORT
    return "#c0a060", f"{value:g}% (threshold from settings)", f"{value:g}%"


def legend_lines(thresholds=(NCCN_PERCENT, HIGH_PERCENT)) -> list[tuple[str, str]]:
    """(colour, text) of every legend entry, in drawing order; also used by the export."""
    out = [(_threshold_style(float(t))[0], "- - " + _threshold_style(float(t))[1])
           for t in thresholds if Y_MIN_PERCENT < float(t) < Y_MAX_PERCENT]
    out.append(("#50aa78", "▬ " + BAND_LABEL))
    out.append((PENDING_COLOR, "○ not scored yet or recomputing   × not scorable (reason in the "
                               "tooltip)"))
    return out


def legend_html(thresholds) -> str:
    """The legend under the plot as rich text."""
    return "&nbsp;&nbsp; ".join(
        f'<span style="color:{c}">{html.escape(t)}</span>' for c, t in legend_lines(thresholds))


def _clip(percent: float | None) -> float:
    """Keep a value inside the drawable log range (the tooltip still shows the true value)."""
    return min(max(float(percent or LANE_PERCENT), Y_MIN_PERCENT * 1.05), Y_MAX_PERCENT * 0.98)


__all__ = ["ChartPoint", "TrajectoryChart", "tooltip_text", "date_to_x", "SCORED", "PENDING",
           "UNSCORABLE"]
