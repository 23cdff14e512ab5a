"""Trajectory metrics on hand-computed cases (irregular intervals, 1–2 exams, missing scores)."""

import datetime as dt
import math

import numpy as np
import pytest
from scipy import stats

from mamview.core.analytics.trajectory import (FlagRules, ScorePoint, analyze, ols_slope,
                                               quadratic_acceleration, stratum,
                                               theil_sen_slope)

D = dt.date


def pts(*pairs, model="demo", vendor=None):
    return [ScorePoint(d, r, model, vendor=vendor) for d, r in pairs]


def years(a, b):
    return (b - a).days / 365.25


def test_single_exam_has_no_change_metrics():
    rep = analyze(pts((D(2020, 1, 1), 2.0)))
    assert rep.change_since_prior is None and rep.rate_per_year is None
    assert rep.log_rate_per_year is None and rep.slope_ols is None
    assert rep.slope_theil_sen is None and rep.acceleration is None
    assert rep.ratio_to_baseline is None
    assert rep.crossings == {1.7: None, 3.0: None}
    assert not rep.rising and not rep.crossed_any and rep.flags == ()
    # already above 1.7% at her only exam: said in a note, not called a crossing
    assert rep.notes == ("at or above 1.7% from the first scored exam",)


def test_no_exams():
    rep = analyze([])
    assert rep.points == () and rep.latest is None
    assert rep.display_rows() == [("5-year risk", "no scored exam")]


def test_two_exams_irregular_interval_hand_computed():
    a, b = D(2019, 3, 1), D(2020, 11, 20)  # 630 days apart
    rep = analyze(pts((b, 3.0), (a, 2.0)))  # any order in
    assert [p.exam_date for p in rep.points] == [a, b]
    dt_y = 630 / 365.25
    assert rep.change_since_prior == pytest.approx(1.0)
    assert rep.rate_per_year == pytest.approx(1.0 / dt_y)
    assert rep.log_rate_per_year == pytest.approx(math.log(1.5) / dt_y)
    assert rep.ratio_to_baseline == pytest.approx(1.5)
    assert rep.slope_ols is None and rep.slope_theil_sen is None  # only 2 exams
    assert rep.acceleration is None
    # 2-exam rule: the rate since prior stands in for the slope; 0.58 pp/yr < 1.1
    assert not rep.rising
    assert rep.crossings[3.0] == b and rep.crossings[1.7] is None
    assert "crossed 3%" in rep.flags and "≥1.5× own baseline" in rep.flags


def test_linear_risk_on_irregular_dates_gives_exact_slopes_and_zero_acceleration():
    dates = [D(2015, 1, 10), D(2016, 2, 1), D(2018, 6, 30), D(2019, 1, 2)]
    t = [years(dates[0], d) for d in dates]
    r = [1.0 + 1.25 * x for x in t]  # 1.25 pp/yr exactly
    rep = analyze(pts(*zip(dates, r)))
    assert rep.slope_ols == pytest.approx(1.25)
    assert rep.slope_theil_sen == pytest.approx(1.25)
    assert rep.rate_per_year == pytest.approx(1.25)
    assert rep.acceleration == pytest.approx(0.0, abs=1e-9)
    assert rep.rising and "rising" in rep.flags  # 1.25 ≥ 1.1 pp/yr


def test_slopes_match_independent_implementations():
    dates = [D(2014, 5, 5), D(2015, 4, 1), D(2017, 9, 9), D(2018, 8, 1), D(2020, 2, 2)]
    r = [2.0, 2.4, 2.1, 3.9, 3.3]
    rep = analyze(pts(*zip(dates, r)))
    t = np.array([years(dates[0], d) for d in dates])
    assert rep.slope_ols == pytest.approx(np.polyfit(t, r, 1)[0])
    assert rep.slope_theil_sen == pytest.approx(stats.theilslopes(r, t)[0])
    # acceleration: 2c of the least-squares quadratic over all exams (numpy's fit agrees)
    assert rep.acceleration == pytest.approx(2 * np.polyfit(t, r, 2)[0])
    # ratio to the median of her earlier exams: 3.3 / median(2.0, 2.4, 2.1, 3.9) = 3.3 / 2.25
    assert rep.ratio_to_baseline == pytest.approx(3.3 / 2.25)


def test_slope_needs_three_exams_over_two_years():
    short = analyze(pts((D(2020, 1, 1), 2.0), (D(2020, 9, 1), 2.5), (D(2021, 6, 1), 3.5)))
    assert short.slope_ols is None and short.slope_theil_sen is None
    assert short.acceleration is not None  # exploratory metric needs only 3 exams
    rules = FlagRules(min_span_years_for_slope=1.0)
    assert analyze(short.points, rules).slope_ols is not None


def test_missing_scores_are_left_out_with_a_note():
    base = pts((D(2016, 1, 1), 2.0), (D(2017, 1, 1), 2.2), (D(2019, 1, 1), 2.6))
    holes = base[:2] + [ScorePoint(D(2018, 1, 1), float("nan"), "demo"),
                        ScorePoint(D(2018, 6, 1), 0.0, "demo")] + base[2:]
    rep, ref = analyze(holes), analyze(base)
    assert rep.points == ref.points
    assert rep.slope_ols == pytest.approx(ref.slope_ols)
    assert rep.rate_per_year == pytest.approx(ref.rate_per_year)
    assert "2 exams without a usable score left out" in rep.notes


def test_same_day_exams_give_no_rate():
    rep = analyze(pts((D(2020, 1, 1), 2.0), (D(2020, 1, 1), 2.5)))
    assert rep.change_since_prior == pytest.approx(0.5)
    assert rep.rate_per_year is None and rep.log_rate_per_year is None
    assert any("share a date" in n for n in rep.notes)


def test_crossings_and_stratum_transitions():
    d = [D(2015, 1, 1), D(2016, 1, 1), D(2017, 1, 1), D(2018, 1, 1)]
    rep = analyze(pts(*zip(d, [1.5, 1.8, 1.6, 3.2])))
    assert rep.crossings == {1.7: d[1], 3.0: d[3]}  # the first upward crossing only
    assert [(t.exam_date, t.from_stratum, t.to_stratum) for t in rep.stratum_transitions] == [
        (d[1], "low", "intermediate"), (d[2], "intermediate", "low"), (d[3], "low", "high")]
    assert rep.crossed_any and rep.flags[:2] == ("crossed 1.7%", "crossed 3%")


def test_stratum_boundaries():
    assert stratum(1.69, (1.7, 3.0)) == "low"
    assert stratum(1.7, (1.7, 3.0)) == "intermediate"
    assert stratum(3.0, (3.0, 1.7)) == "high"
    assert stratum(2.6, (1.7, 2.5, 3.0)) == "≥2.5%"


def test_gaps_vendor_and_model_changes_are_noted():
    p = [ScorePoint(D(2012, 1, 1), 2.0, "demo", vendor="HOLO"),
         ScorePoint(D(2013, 1, 1), 2.0, "demo", vendor="HOLO"),
         ScorePoint(D(2016, 1, 1), 2.1, "demo", vendor="GE"),
         ScorePoint(D(2017, 1, 1), 2.1, "mirai", vendor="GE")]
    rep = analyze(p)
    assert len(rep.gaps) == 1
    g = rep.gaps[0]
    assert (g.start, g.end) == (D(2013, 1, 1), D(2016, 1, 1))
    assert g.years == pytest.approx(1095 / 365.25)
    assert any("vendor changed on 2016-01-01 (HOLO → GE)" in n for n in rep.notes)
    assert any("model changed on 2017-01-01 (demo → mirai)" in n for n in rep.notes)


def test_flag_rules_are_configurable():
    p = pts((D(2016, 1, 1), 2.0), (D(2017, 1, 1), 2.4), (D(2018, 1, 1), 2.8))  # ≈0.4 pp/yr
    assert not analyze(p).rising
    rep = analyze(p, FlagRules(rising_rate_per_year=0.3, thresholds_percent=(2.5,)))
    assert rep.rising and rep.crossings == {2.5: D(2018, 1, 1)}


def test_seed_study_worked_case():
    # RSNA figure: 2.0 (2015), 2.1 (2018), 3.4 (2019), 3.6 (2021), 15.3 (2022)
    d = [D(2015, 6, 1), D(2018, 6, 1), D(2019, 6, 1), D(2021, 6, 1), D(2022, 6, 1)]
    rep = analyze(pts(*zip(d, [2.0, 2.1, 3.4, 3.6, 15.3])))
    assert rep.change_since_prior == pytest.approx(11.7)
    assert rep.crossings[3.0] == d[2] and rep.crossings[1.7] is None
    assert rep.rising and rep.ratio_to_baseline == pytest.approx(15.3 / 2.75)
    assert len(rep.gaps) == 1  # 2015 → 2018


def test_display_rows_and_dict_name_the_model_and_label():
    rep = analyze(pts((D(2016, 1, 1), 2.0), (D(2018, 1, 1), 3.5), (D(2019, 1, 1), 4.0)))
    rows = dict(rep.display_rows())
    assert "model demo" in rows["Latest 5-year risk"]
    assert "Flags (research use, not validated)" in rows
    d = rep.as_dict()
    assert d["flags_label"] == "research use, not validated"
    assert d["crossings"] == {"1.7": None, "3": "2018-01-01"}
    assert d["points"][0]["exam_date"] == "2016-01-01"


def test_helpers_degenerate_inputs():
    assert ols_slope([1.0], [2.0]) is None
    assert ols_slope([1.0, 1.0], [2.0, 3.0]) is None
    assert theil_sen_slope([1.0, 1.0], [2.0, 3.0]) is None


def test_rules_from_user_thresholds():
    assert FlagRules.from_thresholds([3.0, "1.7", 1.7]).thresholds_percent == (1.7, 3.0)
    assert FlagRules.from_thresholds([2.5]).thresholds_percent == (2.5,)
    assert FlagRules.from_thresholds(["x", -1, float("nan"), 150]) == FlagRules()
    assert FlagRules.from_thresholds(None) == FlagRules()


def test_three_exams_acceleration_is_the_three_point_second_difference():
    d = [D(2016, 1, 1), D(2017, 3, 1), D(2019, 1, 1)]
    t = [years(d[0], x) for x in d]
    r = [2.0, 2.3, 3.5]
    v1, v0 = (r[2] - r[1]) / (t[2] - t[1]), (r[1] - r[0]) / (t[1] - t[0])
    assert analyze(pts(*zip(d, r))).acceleration == pytest.approx((v1 - v0) / ((t[2] - t[0]) / 2))


def test_a_curve_that_bends_upward_has_a_positive_acceleration():
    # the demo cohort's DEMO0012: flat near 2.2 %, then rising; the last interval is a little
    # slower than the one before (so the last three exams alone bend down, −0.55 pp/yr²),
    # but the curve as drawn bends upward, and the acceleration must say so
    d = [D(2019, 5, 18), D(2020, 4, 29), D(2021, 5, 14), D(2022, 6, 3), D(2023, 5, 20),
         D(2024, 5, 10), D(2025, 5, 9)]
    r = [2.13, 2.30, 2.16, 2.49, 2.79, 4.48, 5.67]
    rep = analyze(pts(*zip(d, r)))
    assert rep.acceleration > 0
    assert "(bends up)" in dict(rep.display_rows())["Acceleration (quadratic fit, exploratory)"]
    # a convex series: r = 2 + 0.3·t² exactly → 2c = 0.6 pp/yr² on irregular dates
    d2 = [D(2015, 1, 1), D(2016, 7, 1), D(2017, 2, 1), D(2019, 9, 1), D(2020, 1, 1)]
    t = [years(d2[0], x) for x in d2]
    convex = analyze(pts(*zip(d2, [2 + 0.3 * x * x for x in t])))
    assert convex.acceleration == pytest.approx(0.6)
    concave = analyze(pts(*zip(d2, [8 - 0.3 * x * x for x in t])))
    assert concave.acceleration == pytest.approx(-0.6)
    assert "(bends down)" in dict(concave.display_rows())[
        "Acceleration (quadratic fit, exploratory)"]
    assert quadratic_acceleration([0.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None  # 2 distinct dates


def test_rising_follows_the_trend_slope_and_says_so():
    # DEMO0012 again: rate since prior +1.19 pp/yr is above the 1.1 cut-off, but with 7 exams
    # over 6 years the OLS slope (+0.55 pp/yr) decides, and she is not flagged rising
    d = [D(2019, 5, 18), D(2020, 4, 29), D(2021, 5, 14), D(2022, 6, 3), D(2023, 5, 20),
         D(2024, 5, 10), D(2025, 5, 9)]
    rep = analyze(pts(*zip(d, [2.13, 2.30, 2.16, 2.49, 2.79, 4.48, 5.67])))
    assert rep.rate_per_year == pytest.approx(1.19, abs=0.01)
    assert rep.slope_ols == pytest.approx(0.55, abs=0.01)
    assert not rep.rising and "rising" not in rep.flags
    assert rep.rising_basis == ("trend slope (OLS)", rep.slope_ols)
    key, _detail = rep.display_sections()
    labels = [a for a, _ in key]
    # the rule sits right after the flags, among the rows a panel shows first
    assert labels.index("Rising?") == labels.index("Flags (research use, not validated)") + 1
    rule = dict(key)["Rising?"]
    assert rule.startswith("no: trend slope (OLS) +0.55 < 1.1 pp/yr cut-off")
    assert "the slope decides, not the rate since prior, +1.19" in rule
    assert rep.as_dict()["rising_basis"] == "trend slope (OLS)"
    # two exams: no slope, so the rate since prior decides, and the rule says that instead
    two = analyze(pts((D(2020, 1, 1), 2.0), (D(2021, 1, 1), 3.3)))
    assert two.rising and two.rising_basis[0] == "rate since prior"
    assert dict(two.display_rows())["Rising?"].startswith(
        "yes: rate since prior +1.30 ≥ 1.1 pp/yr")
    one = analyze(pts((D(2020, 1, 1), 2.0)))
    assert dict(one.display_rows())["Rising?"].startswith("not assessed: needs 2 dated exams")


def test_key_rows_come_first():
    rep = analyze(pts((D(2016, 1, 1), 2.0), (D(2018, 1, 1), 3.5), (D(2019, 1, 1), 4.0)))
    key, detail = rep.display_sections()
    assert [a for a, _ in key] == [
        "Latest 5-year risk", "Change since prior", "Rate per year", "First crossing of 1.7%",
        "First crossing of 3%", "Flags (research use, not validated)", "Rising?"]
    assert rep.display_rows() == key + detail
    assert "Trend slope (OLS)" in dict(detail) and "Scored exams" in dict(detail)
