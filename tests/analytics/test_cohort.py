"""Cohort study mode: index exams and alignment by hand, DeLong AUC against scipy, a
200-woman synthetic cohort from a plain table, and one small cohort scored through the cache."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mamview import cli
from mamview.core.analytics import cohort
from mamview.core.demo_data import exam_risk, make_women


def truth_tables(n, seed=0):
    """The demo generator's ground truth (per-exam risk) and outcomes, without the images
    (the same draws generate_cohort makes for ground_truth.csv)."""
    women = make_women(n, seed)
    rows = [{"patient_id": w.patient_id, "exam_date": d.isoformat(),
             "risk_5y_percent": exam_risk(w, d, np.random.default_rng([seed, w.index, d.toordinal()]))}
            for w in women for d in w.exam_dates]
    outcomes = [{"patient_id": w.patient_id,
                 "diagnosis_date": w.diagnosis.isoformat() if w.diagnosis else ""} for w in women]
    return pd.DataFrame(rows), pd.DataFrame(outcomes)


def test_index_exams_and_alignment_by_hand():
    scores = pd.DataFrame([
        # case A: diagnosed 2020-06-01; the 2020-07-01 exam is after diagnosis
        ("A", "2018-01-01", 2.0), ("A", "2019-12-01", 4.0), ("A", "2020-07-01", 9.0),
        # case B: last exam 2 years before diagnosis: no index exam within one year
        ("B", "2017-01-01", 2.0), ("B", "2018-01-01", 2.1),
        # controls: the last exam is the index
        ("C", "2016-06-01", 2.0), ("C", "2018-01-01", 2.2), ("C", "2019-01-01", 2.1),
        ("D", "2019-05-05", 1.9), ("D", "bad date", 2.0), ("D", "2018-05-05", float("nan")),
        ("E", "2019-01-01", 2.5),  # no outcome row
    ], columns=["patient_id", "exam_date", "risk_percent"])
    outcomes = pd.DataFrame({"patient_id": ["A", "B", "C", "D", "F"],
                             "diagnosis_date": ["2020-06-01", "2020-01-01", "", "", ""]})
    df, excluded = cohort.align(scores, outcomes)
    assert set(df["patient_id"]) == {"A", "C", "D"}
    a = df[df["patient_id"] == "A"].set_index("exam_date")
    assert a["is_index"].tolist() == [False, True]
    assert a["years_before_index"].tolist() == pytest.approx([699 / 365.25, 0.0])
    c = df[df["patient_id"] == "C"]
    assert c.loc[c["is_index"], "risk_percent"].tolist() == [2.1]
    assert excluded == {
        "exams without a valid date": 1, "exams without a usable score": 1,
        "women with scores but no outcome row": 1,
        "women with an outcome row but no scored exam": 1,
        "case exams on or after the diagnosis date": 1,
        "cases without a screening exam within 1 year before diagnosis": 1,
    }
    w = cohort.women_table(df).set_index("patient_id")
    assert w.loc["A", "case"] and not w.loc["C", "case"]
    assert w.loc["A", "change_2y_pp"] == pytest.approx(2.0)  # 4.0 − 2.0 (1.9 years before)
    # C: the 2018 exam is 1.0 y back (too close); the 2016 one 2.6 y back is the prior
    assert w.loc["C", "change_2y_pp"] == pytest.approx(0.1)
    assert np.isnan(w.loc["D", "change_2y_pp"])


def test_delong_matches_mann_whitney_and_bootstrap():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(60, bool), np.zeros(140, bool)]
    s = np.r_[rng.normal(1.0, 1, 60), rng.normal(0, 1, 140)]
    s[:5] = s[60:65]  # ties between groups
    got = cohort.delong_auc(y, s)
    u = stats.mannwhitneyu(s[y], s[~y]).statistic
    assert got["auc"] == pytest.approx(u / (60 * 140))
    boot = []
    for _ in range(400):
        i = np.r_[rng.choice(60, 60), 60 + rng.choice(140, 140)]
        boot.append(cohort.delong_auc(y[i], s[i])["auc"])
    assert got["se"] == pytest.approx(np.std(boot), rel=0.25)
    assert got["ci"][0] < got["auc"] < got["ci"][1]
    assert cohort.delong_auc(y[:1], s[:1])["auc"] is None


@pytest.mark.slow
def test_synthetic_cohort_of_200_recovers_rising_cases_and_flat_controls(tmp_path, capsys):
    scores, outcomes = truth_tables(200)
    scores.to_csv(tmp_path / "ground_truth.csv", index=False)
    outcomes.to_csv(tmp_path / "outcomes.csv", index=False)
    out = tmp_path / "report"
    rc = cli.main(["--home", str(tmp_path / "home"), "cohort", "--outcomes",
                   str(tmp_path / "outcomes.csv"), "--scores", str(tmp_path / "ground_truth.csv"),
                   "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "not computed by mamview" in printed and "Mixed model" in printed

    yearly = pd.read_csv(out / "cohort_yearly.csv").set_index(["group", "year"])["median"]
    # cases rise by several points over four years; controls stay within a tenth of a point
    assert yearly["cases", 0] - yearly["cases", 4] > 2.0
    assert abs(yearly["controls", 0] - yearly["controls", 4]) < 0.15
    assert 1.8 < yearly["controls", 0] < 2.3  # the study's cancer-free range

    rep = json.loads((out / "cohort_report.json").read_text())
    assert rep["women"] == 200 and rep["cases"] >= 40
    m = rep["mixed_models"]["percent"]
    assert m["slope_cases_ci"][0] > m["slope_controls_ci"][1]  # the slopes separate the groups
    assert abs(m["slope_controls"]) < 0.1 and m["slope_cases"] > 0.4
    assert rep["mixed_models"]["log"]["slope_difference_ci"][0] > 0
    assert rep["auc"]["index_score"]["auc"] > 0.9

    rows = list(csv.DictReader(open(out / "cohort_results.csv")))
    keyed = {(r["section"], r["name"], r["group"], r["years_before_index"]): r for r in rows}
    assert float(keyed["mixed_model_percent", "slope_cases", "", ""]["value"]) == pytest.approx(
        m["slope_cases"])
    assert float(keyed["yearly", "median", "cases", "0"]["value"]) == pytest.approx(
        yearly["cases", 0])
    assert keyed["auc", "both", "", ""]["ci_low"] != ""
    assert (out / "cohort_trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "cohort_trajectories.pdf").read_bytes()[:5] == b"%PDF-"
    assert len(list(csv.DictReader(open(out / "cohort_women.csv")))) == 200


def test_mixed_model_subsamples_controls_above_the_limit():
    scores, outcomes = truth_tables(60)
    df, _ = cohort.align(scores.rename(columns={"risk_5y_percent": "risk_percent"}), outcomes)
    n_cases = df.groupby("patient_id")["case"].first().sum()
    m = cohort.fit_mixed(df, max_women=40)
    assert m["women"] == 40 and f"all {n_cases} of {n_cases} cases" in m["note"]
    few = cohort.fit_mixed(df, max_women=2 * n_cases - 4)  # cases would crowd out controls
    assert few["women"] == 2 * n_cases - 4
    assert f"a random {n_cases - 2} of {n_cases} cases" in few["note"]


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    (tmp_path / "o.csv").write_text("id,date\n1,2020-01-01\n")
    (tmp_path / "s.csv").write_text("patient_id,exam_date,risk_percent\nX,2020-01-01,2.0\n")
    home = ["--home", str(tmp_path / "home")]
    assert cli.main(home + ["cohort", "--outcomes", str(tmp_path / "o.csv"),
                            "--scores", str(tmp_path / "s.csv")]) == 2
    assert "lacks the column(s) diagnosis_date, patient_id" in capsys.readouterr().err
    (tmp_path / "o.csv").write_text("patient_id,diagnosis_date\nY,\n")
    assert cli.main(home + ["cohort", "--outcomes", str(tmp_path / "o.csv"),
                            "--scores", str(tmp_path / "s.csv")]) == 2
    assert "no scored exam matches" in capsys.readouterr().err
    assert cli.main(home + ["cohort", "--outcomes", str(tmp_path / "o.csv")]) == 2
    assert "no scores in the library" in capsys.readouterr().err
    assert cli.main(home + ["cohort", "--outcomes", str(tmp_path / "missing.csv"),
                            "--scores", str(tmp_path / "s.csv")]) == 2
