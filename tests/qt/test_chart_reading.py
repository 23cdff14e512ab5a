"""The chart reads at a glance (issue 14, item 7): an exam's tooltip wins over the band's, the
'current'/'prior' labels are never clipped nor overlapping, every year is labelled, and the demo
banner breaks only between its phrases. Real pyqtgraph items in an offscreen window."""

import datetime
import math

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF
from PySide6.QtGui import QHelpEvent, QImage, QPainter
from PySide6.QtWidgets import QApplication, QToolTip

from mamview.core.models.registry import DEMO_LABEL
from mamview.qt.trajectory_chart import SCORED, ChartPoint, TrajectoryChart, date_to_x

D = datetime.date
# four yearly exams inside the 1.8–2.2 % cancer-free band, as for most women
IN_BAND = [(D(2021, 9, 1), 2.0), (D(2022, 9, 3), 2.1), (D(2023, 9, 2), 1.95), (D(2024, 9, 5), 2.05)]


def _chart(qtbot, width=800, height=420, points=IN_BAND, demo=True):
    c = TrajectoryChart()
    qtbot.addWidget(c)
    c.resize(width, height)
    c.show()
    qtbot.waitExposed(c)
    c.set_patient([ChartPoint(f"p|{d}", d, SCORED, r, model_label="M") for d, r in points],
                  "Mirai-architecture demo model", demo)
    return c


def _pixel(chart, x, y) -> QPoint:
    vb = chart.plot_item.getViewBox()
    p = chart.plot_widget.mapFromScene(vb.mapViewToScene(QPointF(x, y)))
    return QPoint(p.x(), p.y())


def _qt_tooltip_at(qtbot, chart, pos: QPoint) -> str:
    """Move the mouse there, then ask Qt for the tooltip as a real hover would."""
    view = chart.plot_widget.viewport()
    QToolTip.hideText()  # first: a shown tooltip would take the next mouse move
    qtbot.waitUntil(lambda: not QToolTip.isVisible(), timeout=2000)
    qtbot.mouseMove(view, pos)
    QApplication.processEvents()
    QApplication.sendEvent(view, QHelpEvent(QEvent.Type.ToolTip, pos, view.mapToGlobal(pos)))
    QApplication.processEvents()
    return QToolTip.text() if QToolTip.isVisible() else ""


def test_an_exam_inside_the_band_shows_its_own_tooltip(qtbot):
    chart = _chart(qtbot)
    spots = sorted((s.pos().x(), s.pos().y(), s.data()) for s in chart.scored_scatter.points())
    x, y, key = spots[1]
    assert 1.8 < 10 ** y < 2.2  # the point really is inside the band
    tip = _qt_tooltip_at(qtbot, chart, _pixel(chart, x, y))
    assert tip == chart.tooltip_for(key) and "2.1%" in tip
    # inside the band but away from every point: the band explains itself
    between = (spots[1][0] + spots[2][0]) / 2
    band_tip = _qt_tooltip_at(qtbot, chart, _pixel(chart, between, math.log10(1.85)))
    assert "Lehman" in band_tip
    # back on the point, the exam wins again
    x, y, key = spots[2]
    assert _qt_tooltip_at(qtbot, chart, _pixel(chart, x, y)) == chart.tooltip_for(key)


def _label_rects(chart):
    vb = chart.plot_item.getViewBox()
    box = vb.sceneBoundingRect()
    rects = {}
    for name, line in (("current", chart.current_line), ("prior", chart.prior_line)):
        assert line.isVisible()
        assert line.label.toPlainText() == name
        rects[name] = line.label.sceneBoundingRect()
    return box, rects


@pytest.mark.parametrize("width", [800, 330])
@pytest.mark.parametrize("which", ["left edge", "right edge", "middle"])
def test_current_and_prior_labels_are_whole_and_apart(qtbot, width, which):
    chart = _chart(qtbot, width=width)
    keys = [f"p|{d}" for d, _ in IN_BAND]
    current, prior = {"left edge": (keys[0], keys[1]), "right edge": (keys[3], keys[2]),
                      "middle": (keys[2], keys[1])}[which]
    chart.set_current(current, prior)
    QApplication.processEvents()
    box, rects = _label_rects(chart)
    for name, r in rects.items():
        assert box.contains(r), (name, r, box)  # not clipped to 'urrent'
    assert not rects["current"].intersects(rects["prior"])


def test_every_year_is_labelled_the_first_one_too(qtbot):
    # the first exam is late in its year: its year still gets a tick and a label
    points = [(D(2019, 11, 20), 2.0), (D(2020, 11, 2), 2.1), (D(2021, 10, 30), 2.2),
              (D(2022, 12, 1), 2.3), (D(2023, 11, 11), 2.1), (D(2024, 11, 5), 2.0),
              (D(2025, 10, 28), 2.4)]
    for width in (800, 330):
        chart = _chart(qtbot, width=width, points=points)
        axis = chart.plot_item.getAxis("bottom")
        lo, hi = chart.plot_item.getViewBox().viewRange()[0]
        (_spacing, values), = axis.tickValues(lo, hi, axis.width())
        strings = axis.tickStrings(values, 1.0, _spacing)
        # 1 January of every year in view, none skipped, from the first exam's year
        last = datetime.datetime.fromtimestamp(hi, datetime.timezone.utc).year
        assert values == [date_to_x(D(y, 1, 1)) for y in range(2019, last + 1)]
        assert all(lo <= v <= hi for v in values) and last >= 2025
        full = [str(y) for y in range(2019, last + 1)]
        assert strings == full or strings == [f"’{y % 100}" for y in range(2019, last + 1)]
        if width == 800:
            assert strings == full
        # and pyqtgraph really draws every one of them (it drops labels overhanging its edge)
        QApplication.processEvents()
        img = QImage(8, 8, QImage.Format.Format_ARGB32)
        painter = QPainter(img)
        try:
            specs = axis.generateDrawSpecs(painter)
        finally:
            painter.end()
        drawn = [text for _rect, _flags, text in specs[2]]
        assert drawn == strings, (drawn, strings)
        assert axis.labelText == "exam date" and "e+" not in axis.labelString()


@pytest.mark.parametrize("width", [460, 327, 300])
def test_demo_banner_breaks_only_between_phrases(qtbot, width):
    chart = _chart(qtbot, width=width)
    QApplication.processEvents()
    lines = chart.banner_lines()
    phrases = ["DEMO", *DEMO_LABEL.split(" — ")]
    # every line is whole phrases joined by ' — ', and together they are the whole label
    assert " — ".join(lines) == "DEMO — " + DEMO_LABEL
    for line in lines:
        assert all(part in phrases for part in line.split(" — "))
    banner = chart.demo_banner
    room = banner.contentsRect().width()
    assert all(banner.fontMetrics().horizontalAdvance(line) <= room for line in lines), \
        (lines, room)
    assert "not for clinical use" in lines[-1] and lines[-1] != "use"
