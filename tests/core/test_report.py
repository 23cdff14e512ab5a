"""Export content (Qt-free): what a tumour-board figure says, with and without de-identification.

Real DICOM files are written, imported into a real cache, and scored rows stored through the
scores module, exactly as the inference service stores them."""

import datetime

import pytest

from mamview.core.domain import ScoreState
from mamview.core.reports import figure as report
from mamview.core.cache.db import connect
from mamview.core.ingest import run_import
from mamview.core.models.registry import DEMO_LABEL
from mamview.core.ingest import drain
from mamview.core.paths import library
from tests.factories import write_mammogram
from tests.scoring import demo_ref, save_current_score

NAME, PID, BIRTH = "SMITHSON^ANNABEL", "MRN-48213", "19620415"
DATES = ["20160310", "20180312", "20200316", "20220321"]
RISKS = {"20160310": 1.9, "20180312": 2.1, "20200316": 3.4}  # 2022 stays pending


def make_library(home, tmp_path, *, incomplete_first=False):
    """One woman, four exams: three scored by the demo model, the newest pending."""
    lib = library(home).ensure()
    src = tmp_path / "dicom"
    for d in DATES:
        for lat in "RL":
            for view in ("CC", "MLO"):
                if incomplete_first and d == DATES[0] and lat + view == "LMLO":
                    continue
                write_mammogram(src / d / f"{lat}{view}.dcm", patient_id=PID, patient_name=NAME,
                                study_date=d, laterality=lat, view=view,
                                extra={"PatientBirthDate": BIRTH})
    drain(run_import(lib, [src], make_previews=False))
    db = connect(lib.database)
    pkey = db.execute("SELECT patient_key FROM patients").fetchone()[0]
    keys = {r[1].replace("-", ""): r[0] for r in
            db.execute("SELECT exam_key, exam_date FROM exams ORDER BY exam_date")}
    for d, r in RISKS.items():
        if incomplete_first and d == DATES[0]:
            continue
        save_current_score(db, keys[d], [r / 100 * f for f in (0.2, 0.4, 0.6, 0.8, 1.0)])
    return lib, db, pkey, [keys[d] for d in DATES]


@pytest.fixture
def cohort(home, tmp_path):
    lib, db, pkey, keys = make_library(home, tmp_path)
    yield lib, db, pkey, keys
    db.close()


def _identifiers():
    return ["SMITHSON", "ANNABEL", PID, BIRTH, "1962-04-15", "1962"] + \
        [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in DATES]


def test_identified_content_names_the_woman_dates_and_model(cohort):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], keys[2], "8up", False, lib=lib)
    text = "\n".join(c.drawn_text())
    for s in ("SMITHSON, ANNABEL", PID, "1962-04-15", "2022-03-21", "2020-03-16"):
        assert s in text
    assert c.model_line == "Model: Mirai-architecture demo model — " + DEMO_LABEL and c.is_demo
    assert c.disclaimer.startswith("This score is not a diagnosis")
    assert [p.state for p in c.chart_points] == [ScoreState.CURRENT] * 3 + [ScoreState.PENDING]
    assert [p.risk_percent for p in c.chart_points[:3]] == [1.9, 2.1, 3.4]
    assert c.chart_points[0].yearly_percent[0] == pytest.approx(0.38)
    assert c.current_index == 3 and c.prior_index == 2 and c.grid == (2, 4)
    assert [t.tile_key for t in c.tiles] == [f"{keys[2]}|{v}" for v in report.STANDARD_LABELS] + \
        [f"{keys[3]}|{v}" for v in report.STANDARD_LABELS]
    assert c.tiles[0].caption == "RCC · 2020-03-16 · 5-yr 3.4%"
    assert c.tiles[4].caption == "RCC · 2022-03-21 · not scored"
    assert any("crossed 1.7%" in f or "crossed 3%" in f for f in c.flags)
    assert any(f"weights sha256 {demo_ref().weights_sha256[:12]}" in line
               for line in c.provenance)
    assert c.metadata["Patient"].startswith("SMITHSON, ANNABEL") and not c.relative_years


def test_deidentified_content_has_no_identifier_and_relative_years(cohort):
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], keys[2], "8up", True, lib=lib,
                                    pseudonym="Case 7")
    text = "\n".join(c.drawn_text())
    for s in _identifiers():
        assert s.lower() not in text.lower(), s
    for k in keys:
        assert k not in text
    assert "Case 7 (de-identified) · age 59 at latest exam" in c.title_lines
    assert c.tiles[0].caption == "RCC · −2.0 y · 5-yr 3.4%"
    assert c.tiles[4].caption == "RCC · latest exam · not scored"
    assert all(p.exam_date is None for p in c.chart_points) and c.relative_years
    assert [round(p.years_from_latest) for p in c.chart_points] == [-6, -4, -2, 0]
    # the metric rows' dates (first crossing …) became relative years too
    assert dict(c.metrics_rows)["First crossing of 3%"] == "−2.0 y"
    assert c.metadata["Deidentified"] == "yes" and "Patient" not in c.metadata
    assert DEMO_LABEL in c.metadata["Model"] and c.disclaimer in c.metadata["Disclaimer"]


def test_default_pseudonym_is_random_not_derived(cohort):
    lib, db, pkey, keys = cohort
    a = report.build_export_content(db, pkey, None, None, "4up", True, lib=lib)
    b = report.build_export_content(db, pkey, None, None, "4up", True, lib=lib)
    assert a.title_lines[1] != b.title_lines[1]
    assert a.current_index == 3 and a.grid == (2, 2)  # no current given: the newest exam


def test_timeline_layout_and_unscorable_exam_reason(home, tmp_path):
    lib, db, pkey, keys = make_library(home, tmp_path, incomplete_first=True)
    try:
        c = report.build_export_content(db, pkey, keys[3], None, "timeline:LCC", False, lib=lib)
        assert [t.tile_key for t in c.tiles] == [f"{k}|LCC" for k in keys]
        assert c.grid == (1, 4)
        first = c.chart_points[0]
        assert first.state == "unscorable" and "LMLO" in first.reason
        assert c.tiles[0].caption.endswith("not scorable")
    finally:
        db.close()


def test_unknown_patient_is_a_clear_error(cohort):
    _, db, _, _ = cohort
    with pytest.raises(ValueError, match="no patient"):
        report.build_export_content(db, "nobody", None, None)


@pytest.mark.parametrize("text,expected", [
    ("first crossing 2020-03-16, born 19620415", "first crossing −2.0 y, born [removed]"),
    ("Smithson, Annabel", "[removed]"),
    ("ANNABEL SMITHSON MRN-48213", "[removed] [removed] [removed]"),
])
def test_scrub(text, expected):
    ids = report.identifier_strings({"name": NAME, "patient_id": PID, "birth_date": BIRTH})
    assert report.scrub(text, ids, datetime.date(2022, 3, 21)) == expected


def test_figure_hangs_the_plan_of_core_hanging(cohort):
    """The figure's tiles are the cells of `core.hanging`'s plan, in its order; an 8-up without
    a prior keeps its empty prior row, as the screen does (it used to fall back to a 4-up)."""
    from mamview.core import hanging

    lib, db, pkey, keys = cohort
    for spec, prior in (("4up", keys[2]), ("8up", keys[2]), ("8up", None), ("timeline:RCC", None)):
        c = report.build_export_content(db, pkey, keys[3], prior, spec, False, lib=lib)
        assert c.hanging == hanging.plan(spec, keys, keys[3], prior)
        assert [t.cell for t in c.tiles] == list(c.hanging.cells)
        assert c.grid == (c.hanging.rows, c.hanging.columns)
    assert c.grid == (1, 4) and [t.tile_key for t in c.tiles] == [f"{k}|RCC" for k in keys]
    c = report.build_export_content(db, pkey, keys[3], None, "8up", True, lib=lib)
    assert c.grid == (2, 4) and [t.tile_key for t in c.tiles[:4]] == [""] * 4
    assert c.tiles[0].caption == "RCC · no prior exam" and c.tiles[0].message == "no prior exam"
    assert c.tiles[4].tile_key == f"{keys[3]}|RCC" and not c.tiles[4].message
    # the window hands in its own plan; one showing another woman's exam is refused
    stranger = hanging.plan("4up", ["|OTHER|2020-01-01"])
    with pytest.raises(ValueError, match="not this woman"):
        report.build_export_content(db, pkey, None, None, stranger, True, lib=lib)


def test_age_is_capped_and_name_formatted():
    assert report.age_years(datetime.date(1920, 1, 1), datetime.date(2020, 6, 1)) == "90+"
    assert report.age_years(datetime.date(1962, 4, 15), datetime.date(2022, 4, 14)) == "59"
    assert report.format_name("DOE^JANE^^^") == "DOE, JANE"


def test_scrub_matches_name_parts_as_words_and_spares_model_words():
    ids = report.identifier_strings({"name": "DEMO^ANN", "patient_id": "DEMO0004"},
                                    "demo Mirai-architecture demo model")
    assert "DEMO" not in ids and "ANN" in ids
    assert report.scrub("annual exam of Ann, demo model, id DEMO0004", ids, None) == \
        "annual exam of [removed], demo model, id [removed]"


def test_no_image_is_withheld_without_burned_in_annotation(cohort):
    """The cohort's files say BurnedInAnnotation NO: a de-identified figure shows every tile."""
    lib, db, pkey, keys = cohort
    c = report.build_export_content(db, pkey, keys[3], keys[2], "8up", True, lib=lib)
    assert [t.withheld for t in c.tiles] == [False] * 8
    assert c.withheld_count == 0 and not c.withheld_line and "Withheld" not in c.metadata
    assert report.WITHHELD_NOTE not in c.drawn_text()
