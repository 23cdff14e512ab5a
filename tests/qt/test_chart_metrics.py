"""The metrics panel beside the chart shows the analytics report's rows, headed as research."""

import datetime

from mamview.core.analytics.trajectory import ScorePoint, analyze
from mamview.qt.metrics_panel import EMPTY_TEXT, RESEARCH_LABEL, MetricsPanel

D = datetime.date


def test_rows_flags_and_research_heading(qtbot):
    panel = MetricsPanel()
    qtbot.addWidget(panel)
    assert RESEARCH_LABEL in panel.heading_label.text()
    rep = analyze([ScorePoint(D(2016, 1, 1), 1.5, "demo"), ScorePoint(D(2018, 1, 1), 2.4, "demo"),
                   ScorePoint(D(2020, 1, 1), 6.6, "demo")])
    panel.set_report(rep)
    rows = dict(panel.rows())
    assert rows["Change since prior"] == "+4.20 pp"
    assert rows["Trend slope (OLS)"] == "+1.27 pp/yr"  # 5.1 pp over 4.003 years
    assert panel.rising and "rising" in panel.flags
    assert "+4.20 pp" in panel.body_label.text() and "rising" in panel.body_label.text()
    panel.set_report(None)
    assert panel.rows() == [] and panel.body_label.text() == EMPTY_TEXT


def test_a_broken_report_is_shown_not_raised(qtbot):
    class Broken:
        flags, rising = (), False

        def display_rows(self):
            raise ValueError("no data")

    panel = MetricsPanel()
    qtbot.addWidget(panel)
    panel.set_report(Broken())
    assert panel.rows() == [("Metrics unavailable", "ValueError: no data")]
