"""`mamview bench cohort` end to end on a small synthetic cache, and the bulk read it relies
on giving exactly what `reads.current_scores` says exam by exam."""

import json

import pandas as pd
import pytest

from mamview import cli
from mamview.bench import cohort as bench_cohort
from mamview.core.analytics import cohort
from mamview.core.cache import bulk, reads
from mamview.core.cache.db import connect
from mamview.core.paths import library
from tests.scoring import save_current_score


def test_bench_cohort_writes_a_cache_and_times_every_stage(tmp_path, capsys):
    fig_path = tmp_path / "fig.json"
    rc = cli.main(["--home", str(tmp_path / "home"), "bench", "cohort", "--women", "500",
                   "--exams", "1500", "--check-women", "200", "--work", str(tmp_path / "w"),
                   "--json", str(fig_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "reading scores" in printed and "check vs statsmodels (log" in printed
    fig = json.loads(fig_path.read_text())
    assert list(fig["stages_s"]) == list(bench_cohort.STAGES)
    assert fig["total_s"] == pytest.approx(sum(fig["stages_s"].values()))
    # every synthetic score was read back from the cache as current
    assert fig["women_analysed"] == 500 and fig["exams_analysed"] == 1500
    assert fig["cases"] >= 2 and fig["controls"] >= 2
    for scale in ("percent", "log"):
        check = fig["check"][scale]
        assert check["max_rel_diff"] < 1e-4 and check["reml_converged"]
        assert fig["mixed"][scale]["women"] == 500  # all women by default
    percent = fig["mixed"]["percent"]
    assert percent["slope_cases"] > 0.5 > abs(percent["slope_controls"])
    report = json.loads((tmp_path / "w" / "report" / "cohort_report.json").read_text())
    assert report["women"] == 500


def test_synthetic_cohort_has_the_asked_size_and_the_seeds_shape():
    scores, outcomes = bench_cohort.synthetic_cohort(3000, 9000)
    assert len(scores) == 9000 and len(outcomes) == 3000
    per_woman = scores.groupby("patient_id").size()
    assert per_woman.min() >= 1 and per_woman.max() <= 7
    df, excluded = cohort.align(scores, outcomes)
    assert excluded == {} and len(df) == 9000
    yearly = cohort.yearly_summary(df).set_index(["group", "year"])["median"]
    assert 1.8 < yearly["controls", 0] < 2.3 and 1.8 < yearly["controls", 5] < 2.3
    assert yearly["cases", 0] > 1.8 * yearly["cases", 3]  # the rise before diagnosis
    with pytest.raises(ValueError, match="cannot be spread"):
        bench_cohort.synthetic_cohort(10, 71)


def test_bulk_current_scores_agree_with_reads_exam_by_exam(scored_library):
    lib, keys = scored_library
    db = connect(lib.database)
    try:
        # a score of a model this installation cannot run: checked against its own identity
        save_current_score(db, keys["2019-03-01"], [0.01] * 5, model_id="other")
        for model_id in ("demo", "other"):
            model = reads.choose_model(lib, model_id, db)
            states = reads.current_scores(db, [ek for ek, _, _ in reads.exam_dates(db)], model)
            want = sorted((ek.split("|")[-1], s.five_year_percent) for ek, s in states.items()
                          if s.five_year_percent is not None)
            got = sorted((d, r) for _, d, r in bulk.current_five_year(db, model))
            assert got == want and got
        table, excluded = cohort.cached_scores(db, reads.choose_model(lib, "demo", db))
    finally:
        db.close()
    assert excluded == {}
    assert table.to_dict("records") == pd.DataFrame(
        [("P7", "2019-03-01", 2.0), ("P7", "2020-03-10", 2.2), ("P7", "2023-03-15", 3.5)],
        columns=["patient_id", "exam_date", "risk_percent"]).to_dict("records")


def test_bulk_insert_refuses_other_tables(tmp_path):
    db = connect(library(tmp_path).database)
    try:
        with pytest.raises(ValueError, match="bulk inserts go into"):
            bulk.insert_rows(db, "files", [{"path": "x"}])
        assert bulk.insert_rows(db, "patients", []) == 0
    finally:
        db.close()


def test_inputs_chosen_once_per_kind_of_exam_match_exam_inputs(scored_library):
    """The bulk read asks `exam_inputs` once per kind of exam; the images it takes for the
    other exams of that kind are the ones `exam_inputs` would take."""
    from mamview.core.cache.bulk import _InputChooser, _inputs, image_rows_of

    lib, keys = scored_library
    db = connect(lib.database)
    try:
        rows = image_rows_of(db, [keys["2019-03-01"]])[keys["2019-03-01"]]
    finally:
        db.close()

    def renamed(images, tag):  # the same kind of exam with other files
        return [{**r, "sop_instance_uid": r["sop_instance_uid"] + tag,
                 "path": r["path"] + tag} for r in images]

    def uids(chosen):
        return None if chosen is None else [r["sop_instance_uid"] for r in chosen]

    broken = [dict(r) for r in rows]
    broken[1]["decode_error"] = "truncated"
    film = [dict(r) for r in rows]
    film[2]["domain"] = "digitised film"
    repeat = rows + [{**rows[0], "sop_instance_uid": "9.9", "path": "/x/repeat.dcm",
                      "acquisition_date": "2099-12-31", "acquisition_time": "235959"}]
    ml = [dict(r) for r in rows]
    ml[3]["view"] = "ML"
    chooser = _InputChooser()
    for images in (rows, broken, film, repeat, ml):
        for tag in ("", ".a", ".b"):  # first of its kind, then twice from the memo
            exam = renamed(images, tag)
            assert uids(chooser.inputs(exam)) == uids(_inputs(exam)), (images, tag)
    assert uids(chooser.inputs(rows)) and chooser.inputs(broken) is None
    assert "9.9" in uids(chooser.inputs(repeat))  # the later repeat is the one read
