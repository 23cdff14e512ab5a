"""The live path end to end: an empty library, the demo cohort written and imported in the
background, scored by the real demo model on the CPU, scores arriving in the chart, the tiles
and the worklist while the window stays usable."""

from __future__ import annotations

import pytest

from mamview.core.domain import ScoreState
from mamview.core.models.registry import DEMO_LABEL


@pytest.mark.slow
def test_demo_cohort_imported_and_scored_live(home, open_window, qtbot):
    from mamview.core.paths import library

    win = open_window(library(home), start_inference=True, device="cpu")
    assert win.stack.currentWidget() is win.welcome
    with qtbot.waitSignal(win.bridge.importFinished, timeout=90000):
        assert win.start_demo(patients=2)
    assert len(win.patient_list.rows) == 2
    assert win.patient_key is not None  # the first woman was hung as soon as she was indexed

    def all_scored():
        pts = win.chart.points()
        return pts and all(p.state != "pending" for p in pts)

    qtbot.waitUntil(all_scored, timeout=120000)
    scored = [p for p in win.chart.points() if p.state == ScoreState.CURRENT]
    assert scored and all(0 < p.risk_percent < 100 and len(p.yearly_percent) == 5 for p in scored)
    assert DEMO_LABEL in win.model_label and win.chart.is_demo
    # the hanging shows each exam's score, naming the model
    texts = [t._score.text() for t in win.grid.tiles]
    assert any("5-yr risk" in s and "demo model" in s for s in texts)
    # the worklist shows the latest score of the woman on screen
    qtbot.waitUntil(lambda: win.patient_list.rows[win.patient_key].latest_percent is not None,
                    timeout=10000)
    # the metrics panel got a report for her
    assert win.metrics.rows
    # switching women cancels the previous woman's queued work
    first = win.patient_key
    old_generation = win.session.screen_generation
    other = next(k for k in win.patient_list.rows if k != first)
    win.patient_list.select(other)
    assert win.patient_key == other
    if old_generation is not None:
        assert old_generation in win.service._cancelled
    qtbot.waitUntil(lambda: win.service.idle(), timeout=120000)
    assert win.patient_list.rows[other].latest_percent is not None or any(
        p.state == "unscorable" for p in win.chart.points())
