"""The reading window never shows a stale score as current: after an input file changed, the
exam is a hollow pending point and its tiles say "recomputing: model or image changed"; the
window re-queues it and, once scored by the demo model, shows the current value (issue 12)."""

import os

import pytest

from mamview.core.cache.db import connect
from mamview.core.cache import reads
from mamview.core.domain import STALE_REASON, ScoreState
from mamview.core.ingest import drain, run_import
from mamview.core.paths import library
from mamview.qt.trajectory_chart import PENDING, SCORED
from tests.factories import write_mammogram
from tests.scoring import save_current_score

DATES = ("20200302", "20220307")


def _stale_library(home, tmp_path):
    """Woman W1, two exams scored (current) by the demo model, then the newest exam's LMLO
    file changes on disk and is re-indexed: that exam's score is stale."""
    lib = library(home).ensure()
    src = tmp_path / "dicom"
    for d in DATES:
        for lat in "RL":
            for view in ("CC", "MLO"):
                write_mammogram(src / d / f"{lat}{view}.dcm", patient_id="W1", study_date=d,
                                laterality=lat, view=view, shape=(320, 256))
    drain(run_import(lib, [src], make_previews=True))
    db = connect(lib.database)
    keys = [r[0] for r in reads.exam_dates(db)]
    for ek, r5 in zip(keys, (0.02, 0.03)):
        save_current_score(db, ek, [r5 / 5 * k for k in range(1, 6)])
    db.close()
    f = src / DATES[-1] / "LMLO.dcm"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    drain(run_import(lib, [src], make_previews=False))
    return lib, keys


def _spot_keys(chart, state):
    return [s.data() for s in chart.scatter_for(state).points()]


@pytest.mark.slow
def test_stale_exam_is_pending_then_current_after_scoring(home, tmp_path, open_window, qtbot):
    lib, (old, new) = _stale_library(home, tmp_path)
    win = open_window(lib, start_inference=False, inference_in_process=False)
    qtbot.waitUntil(lambda: win.patient_key is not None and len(win.grid.exams) == 2,
                    timeout=5000)
    assert win.grid.exam(new).score.state == ScoreState.STALE
    assert win.grid.exam(old).score.state == ScoreState.CURRENT
    assert new in _spot_keys(win.chart, PENDING) and new not in _spot_keys(win.chart, SCORED)
    assert "Recomputing: model or image changed" in win.chart.tooltip_for(new)
    shown = [t for t in win.grid.tiles if t.exam_key == new]
    assert shown and all(t._score.text() == STALE_REASON for t in shown)
    row = win.patient_list.rows[win.patient_key]
    assert row.latest_percent == pytest.approx(2.0)  # the older, current exam only
    win.grab().save(str(tmp_path / "stale.png"))

    # the window re-queues stale exams, not only exams without any stored row
    win.start_inference = True
    win.score_library()
    qtbot.waitUntil(lambda: win.grid.exam(new).score.state == ScoreState.CURRENT, timeout=120_000)
    qtbot.waitUntil(lambda: new in _spot_keys(win.chart, SCORED), timeout=5000)
    assert all(t._score.text().startswith("5-yr risk") for t in win.grid.tiles
               if t.exam_key == new)
    assert "Recomputing" not in win.chart.tooltip_for(new)
    db = connect(lib.database)
    assert reads.current_scores(db, [new], win.score_model)[new].state == "current"
    db.close()
    win.grab().save(str(tmp_path / "current.png"))
