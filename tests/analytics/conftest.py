"""A small real cache for analytics tests: DICOM files written with pydicom, imported by
run_import, scores saved through the scores table exactly as the inference service does."""

from __future__ import annotations

import pytest

from mamview.core import paths
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.ingest import drain, run_import
from tests import factories
from tests.scoring import save_current_score

def write_exam(folder, patient_id, date, manufacturer="ACME"):
    """Four standard views of one exam (one study); returns their paths."""
    return factories.write_exam(folder / patient_id / date, patient_id, date, shape=(64, 52),
                                manufacturer=manufacturer)


def save_score(db, exam_key, risk_fractions, model_id="demo", status="ok", when=None):
    """A scores-table row with provenance and today's cache key, as core.inference writes it."""
    save_current_score(db, exam_key, risk_fractions, model_id, status, when)


@pytest.fixture
def scored_library(home, tmp_path):
    """Woman P7: exams 2019, 2020 (other vendor), 2022 (no score), 2023; 5-year risks
    2.0, 2.2, —, 3.5 % by the demo model."""
    src = tmp_path / "files"
    dates = ["20190301", "20200310", "20220301", "20230315"]
    for d in dates:
        write_exam(src, "P7", d, manufacturer="OTHER" if d == "20200310" else "ACME")
    lib = paths.library(home)
    drain(run_import(lib, [src], make_previews=False))
    db = connect(lib.database)
    keys = {e["exam_date"]: e["exam_key"] for e in reads.list_exams(db)}
    for d, r5 in (("2019-03-01", 0.020), ("2020-03-10", 0.022), ("2023-03-15", 0.035)):
        save_score(db, keys[d], [r5 / 5 * k for k in range(1, 6)])
    save_score(db, keys["2022-03-01"], [], status="unscorable")
    db.close()
    return lib, keys
