"""The metrics panel beside the chart shows the analytics report's rows, headed as research."""

import datetime

import pytest

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


def test_key_rows_come_first_and_flags_are_not_repeated(qtbot):
    panel = MetricsPanel()
    qtbot.addWidget(panel)
    rep = analyze([ScorePoint(D(2016, 1, 1), 1.5, "demo"), ScorePoint(D(2018, 1, 1), 2.4, "demo"),
                   ScorePoint(D(2020, 1, 1), 6.6, "demo")])
    panel.set_report(rep)
    key = [a for a, _ in panel.key_rows()]
    assert key == ["Latest 5-year risk", "Change since prior", "Rate per year",
                   "First crossing of 1.7%", "First crossing of 3%",
                   "Flags (research use, not validated)", "Rising?"]
    assert panel.rows()[:len(key)] == panel.key_rows()
    # the slopes and the rest scroll below; the key rows are not in the scrolling part
    assert "Trend slope (OLS)" in panel.detail_label.text()
    assert "Trend slope (OLS)" not in panel.body_label.text()
    assert "yes: trend slope (OLS) +1.27 ≥ 1.1 pp/yr cut-off" in panel.body_label.text()
    assert panel.body_label.text().count("crossed 3%") == 1


def _scored_window(reader_copy, open_window, qtbot, size):
    from mamview.core.cache.db import connect
    from tests.scoring import save_current_score

    db = connect(reader_copy.database)
    rows = db.execute("SELECT e.exam_key, e.patient_key FROM exams e JOIN patients p "
                      "ON p.patient_key = e.patient_key WHERE p.patient_id = 'P1' "
                      "ORDER BY e.exam_date").fetchall()
    for (exam_key, _), risk in zip(rows, (1.5, 2.4, 5.4)):
        save_current_score(db, exam_key, [risk / 100 * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)])
    db.close()
    win = open_window(reader_copy)
    win.resize(*size)
    win.show_patient(rows[0][1])
    qtbot.waitUntil(lambda: win.metrics.report is not None
                    and win.metrics.report.latest is not None, timeout=10000)
    return win


@pytest.mark.parametrize("size", [(1920, 1080), (1366, 768)])
def test_the_rows_that_matter_are_visible_without_scrolling(reader_copy, open_window, qtbot,
                                                           tmp_path, size):
    from PySide6.QtWidgets import QApplication, QScrollArea

    win = _scored_window(reader_copy, open_window, qtbot, size)
    for _ in range(5):
        QApplication.processEvents()
    panel = win.metrics
    label = panel.body_label
    # the key rows live outside any scroll area …
    parent = label.parentWidget()
    while parent is not None and parent is not panel:
        assert not isinstance(parent, QScrollArea)
        parent = parent.parentWidget()
    text = label.text()
    for row, _ in panel.key_rows():
        assert row.replace("?", "") in text.replace("?", "")
    assert "crossed 1.7%" in text and "crossed 3%" in text
    # … shown whole: inside the panel, as tall as its wrapped text needs (no line cut)
    assert label.isVisible()
    assert panel.rect().contains(label.geometry()), (label.geometry(), panel.rect())
    assert label.height() >= label.heightForWidth(label.width())
    assert panel.visibleRegion().boundingRect().contains(label.geometry())
    win.grab().save(str(tmp_path / f"window_{size[0]}.png"))
