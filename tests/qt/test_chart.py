"""The risk-trajectory chart, read back from its real pyqtgraph items (offscreen Qt)."""

import datetime
import math

import pytest
from PySide6.QtCore import QPoint, QPointF, Qt

from mamview.core.models.registry import DEMO_LABEL
from mamview.qt.trajectory_chart import (
    PENDING, SCORED, UNSCORABLE, ChartPoint, TrajectoryChart, date_to_x)

D = datetime.date


def _points():
    return [
        ChartPoint("p|2018-03-01", D(2018, 3, 1), SCORED, 2.0, (0.3, 0.7, 1.1, 1.6, 2.0), "M"),
        ChartPoint("p|2020-03-01", D(2020, 3, 1), SCORED, 3.4, (0.5, 1.2, 2.0, 2.7, 3.4), "M"),
        ChartPoint("p|2019-03-01", D(2019, 3, 1), UNSCORABLE, reason="missing LMLO"),
        ChartPoint("p|2022-03-01", D(2022, 3, 1), PENDING),
    ]


@pytest.fixture
def chart(qtbot):
    c = TrajectoryChart()
    qtbot.addWidget(c)
    c.resize(800, 400)
    c.show()
    qtbot.waitExposed(c)
    c.set_patient(_points(), "Mirai-architecture demo model", True)
    return c


def _spots(scatter):
    return sorted((s.pos().x(), s.pos().y(), s.data()) for s in scatter.points())


def test_scored_points_and_line_are_drawn_at_date_and_log_risk(chart):
    got = _spots(chart.scatter_for(SCORED))
    assert [g[2] for g in got] == ["p|2018-03-01", "p|2020-03-01"]
    assert got[0][0] == date_to_x(D(2018, 3, 1))
    assert got[0][1] == pytest.approx(math.log10(2.0))
    assert got[1][1] == pytest.approx(math.log10(3.4))
    xs, ys = chart.line.getData()  # PlotDataItem applies the log transform itself
    assert list(ys) == pytest.approx([math.log10(2.0), math.log10(3.4)])
    assert chart.plot_item.getAxis("left").logMode


def test_pending_hollow_and_unscorable_with_reason(chart):
    pend = chart.scatter_for(PENDING)
    assert [s.data() for s in pend.points()] == ["p|2022-03-01"]
    assert pend.points()[0].brush().style() == Qt.BrushStyle.NoBrush  # hollow
    uns = chart.scatter_for(UNSCORABLE)
    assert [s.data() for s in uns.points()] == ["p|2019-03-01"]
    assert uns.points()[0].symbol() == "x"
    assert "missing LMLO" in chart.tooltip_for("p|2019-03-01")
    tip = chart.tooltip_for("p|2020-03-01")
    assert "2020-03-01" in tip and "3.4%" in tip and "5y 3.40%" in tip and "Model: M" in tip


def test_reference_lines_band_and_demo_banner(chart):
    assert sorted(line.threshold_percent for line in chart.threshold_lines) == [1.7, 3.0]
    assert [round(10 ** line.value(), 3) for line in chart.threshold_lines] == [1.7, 3.0]
    lo, hi = chart.band.getRegion()
    assert (round(10 ** lo, 3), round(10 ** hi, 3)) == (1.8, 2.2)
    assert "Lehman" in chart.band.toolTip()
    assert chart.demo_banner.isVisible() and DEMO_LABEL in chart.demo_banner.text()
    chart.set_patient(_points(), f"Mirai-architecture demo model ({DEMO_LABEL})", True)
    assert chart.title_label.text() == "5-year risk — Mirai-architecture demo model"
    chart.set_patient(_points(), "Mirai (official weights)", False)
    assert not chart.demo_banner.isVisible()
    assert "Mirai (official weights)" in chart.title_label.text()


def test_thresholds_from_settings_replace_the_lines(chart):
    chart.set_patient(_points(), "M", False, thresholds=(1.7, 4.0))
    assert sorted(line.threshold_percent for line in chart.threshold_lines) == [1.7, 4.0]


def test_pending_becomes_scored_live(chart):
    chart.update_point(ChartPoint("p|2022-03-01", D(2022, 3, 1), SCORED, 6.6, model_label="M"))
    assert [s.data() for s in chart.scatter_for(PENDING).points()] == []
    assert "p|2022-03-01" in [s.data() for s in chart.scatter_for(SCORED).points()]
    _, ys = chart.line.getData()
    assert ys[-1] == pytest.approx(math.log10(6.6))


def test_current_and_prior_are_highlighted(chart):
    chart.set_current("p|2020-03-01", "p|2018-03-01")
    assert sorted(s.data() for s in chart.highlight_scatter.points()) == [
        "p|2018-03-01", "p|2020-03-01"]
    assert chart.current_line.isVisible() and chart.current_line.value() == date_to_x(D(2020, 3, 1))
    chart.set_current(None, None)
    assert not chart.current_line.isVisible() and len(chart.highlight_scatter.points()) == 0


def _click_at(qtbot, chart, x, y):
    vb = chart.plot_item.getViewBox()
    scene_pos = vb.mapViewToScene(QPointF(x, y))
    view_pos = chart.plot_widget.mapFromScene(scene_pos)
    with qtbot.waitSignal(chart.examClicked, timeout=2000) as blocker:
        qtbot.mouseClick(chart.plot_widget.viewport(), Qt.MouseButton.LeftButton,
                         pos=QPoint(view_pos.x(), view_pos.y()))
    return blocker.args[0]


def test_clicking_a_point_emits_its_exam_key(qtbot, chart):
    x, y, key = _spots(chart.scatter_for(SCORED))[1]
    assert _click_at(qtbot, chart, x, y) == key == "p|2020-03-01"
    x, y, key = _spots(chart.scatter_for(UNSCORABLE))[0]
    assert _click_at(qtbot, chart, x, y) == "p|2019-03-01"


def test_empty_and_relative_years(qtbot):
    c = TrajectoryChart(relative_years=True)
    qtbot.addWidget(c)
    c.set_patient([], "", False)
    assert c.empty_text.isVisible()
    c.set_patient(_points(), "M", False)
    xs = sorted(s.pos().x() for s in c.scatter_for(SCORED).points())
    # latest exam (2022-03-01) is 0; the 2020 exam about two years before it
    assert xs[-1] / (365.25 * 86400) == pytest.approx(-2.0, abs=0.01)
    assert "−2.0 y" in c.tooltip_for("p|2020-03-01") and "2020" not in c.tooltip_for("p|2020-03-01")


def test_hovering_a_point_shows_its_tooltip(qtbot, chart):
    x, y, key = _spots(chart.scatter_for(SCORED))[1]
    vb = chart.plot_item.getViewBox()
    pos = chart.plot_widget.mapFromScene(vb.mapViewToScene(QPointF(x, y)))
    qtbot.mouseMove(chart.plot_widget.viewport(), QPoint(pos.x(), pos.y()))
    qtbot.waitUntil(lambda: "3.4%" in vb.toolTip(), timeout=2000)
    assert vb.toolTip() == chart.tooltip_for(key)
