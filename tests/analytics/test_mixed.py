"""The fast REML fit of the cohort's mixed model against statsmodels' MixedLM: the same
slopes, CIs, p-values and variance components on subsets of a synthetic cohort (percent and
log scale), and the data it refuses."""

import numpy as np
import pytest

from mamview.bench.cohort import CASE_SHARE, synthetic_cohort
from mamview.core.analytics import cohort, mixed

ESTIMATES = ("slope_cases", "slope_controls", "slope_difference", "intercept_controls",
             "intercept_cases", "random_intercept_sd", "random_slope_sd", "residual_sd")
INTERVALS = ("slope_cases_ci", "slope_controls_ci", "slope_difference_ci")


def aligned(women, seed=0, case_share=0.2):
    """The aligned exams of a synthetic cohort of `women` women (3 exams each on average),
    a fifth of them cases unless said: enough in a small subset for stable case slopes."""
    scores, outcomes = synthetic_cohort(women, 3 * women, seed=seed, case_share=case_share)
    df, _ = cohort.align(scores, outcomes)
    return df


def assert_same_fit(ref, fast, rel=1e-4):
    for key in ESTIMATES:
        assert fast[key] == pytest.approx(ref[key], rel=rel, abs=1e-6), key
    for key in INTERVALS:
        assert fast[key] == pytest.approx(ref[key], rel=rel, abs=1e-6), key
    # p-values below 1e-300 are 0 in both; otherwise they agree on the log scale
    p_ref, p_fast = ref["slope_difference_p"], fast["slope_difference_p"]
    if p_ref > 1e-300:
        assert np.log(p_fast) == pytest.approx(np.log(p_ref), rel=1e-3)
    assert fast["women"] == ref["women"] and fast["exams"] == ref["exams"]
    assert fast["converged"] and ref["converged"]
    assert set(fast) == set(ref)  # the report and the CSV keep their columns


@pytest.mark.parametrize("log_scale", [False, True], ids=["percent", "log"])
def test_reml_matches_statsmodels_on_300_women(log_scale):
    df = aligned(300)
    ref = cohort.fit_mixed(df, log_scale=log_scale, engine="statsmodels")
    fast = cohort.fit_mixed(df, log_scale=log_scale)  # the fast fit is the default
    assert_same_fit(ref, fast)
    assert fast["slope_cases"] > fast["slope_controls"]


@pytest.mark.slow
@pytest.mark.parametrize("log_scale", [False, True], ids=["percent", "log"])
def test_reml_matches_statsmodels_on_1000_women(log_scale):
    # the seed study's share of cases (1.5%): a fifth of cases at this size leaves
    # statsmodels' optimisers minutes from its optimum
    df = aligned(1000, case_share=CASE_SHARE)
    ref = cohort.fit_mixed(df, log_scale=log_scale, engine="statsmodels")
    fast = cohort.fit_mixed(df, log_scale=log_scale, engine="reml")
    assert_same_fit(ref, fast)


def test_fixed_effects_covariance_is_statsmodels_observed_information():
    """statsmodels' CIs come from the inverse observed Hessian in (β, Ψ), not from
    σ²(X'V⁻¹X)⁻¹: the two differ by ~1e-3 here, so matching to 1e-5 tells them apart."""
    import statsmodels.formula.api as smf

    df = aligned(300, seed=2)
    d = df.assign(time=-df["years_before_index"], y=df["risk_percent"],
                  case=df["case"].astype(int))
    res = smf.mixedlm("y ~ time * case", d, groups=d["patient_id"], re_formula="~time").fit(
        reml=True, method=["nm", "bfgs"], maxiter=5000)
    t, c = d["time"].to_numpy(), d["case"].to_numpy(float)
    x = np.column_stack([np.ones(len(d)), t, c, t * c])
    z = np.column_stack([np.ones(len(d)), t])
    fit = mixed.fit_reml(d["y"].to_numpy(), x, z, d["patient_id"].to_numpy())
    se_ref = np.sqrt(np.diag(np.asarray(res.cov_params()))[:4])
    assert np.sqrt(np.diag(fit.cov_beta)) == pytest.approx(se_ref, rel=1e-4)
    assert fit.beta == pytest.approx(np.asarray(res.fe_params), rel=1e-5)
    assert fit.cov_re == pytest.approx(np.asarray(res.cov_re), rel=1e-3, abs=1e-6)
    assert fit.scale == pytest.approx(res.scale, rel=1e-5)
    # the fast fit's likelihood, evaluated by statsmodels itself, is at least as high
    from statsmodels.regression.mixed_linear_model import MixedLMParams

    ours = MixedLMParams.from_components(fe_params=fit.beta, cov_re=fit.cov_re / fit.scale)
    assert res.model.loglike(ours, profile_fe=False) >= res.llf - 1e-6


def test_known_variance_components_are_recovered():
    """Simulated straight from the model: β, the random-effect SDs and σ come back."""
    rng = np.random.default_rng(5)
    n, per = 4000, 4
    g = np.repeat(np.arange(n), per)
    t = np.tile(-np.arange(per, dtype=float), n) + rng.normal(0, 0.1, n * per)
    c = (np.arange(n) % 4 == 0)[g].astype(float)
    b = rng.multivariate_normal([0, 0], [[0.25, 0.02], [0.02, 0.04]], n)[g]
    y = 2 + 0.1 * t + 0.5 * c + 0.9 * t * c + b[:, 0] + b[:, 1] * t + rng.normal(0, 0.3, n * per)
    x = np.column_stack([np.ones(n * per), t, c, t * c])
    z = np.column_stack([np.ones(n * per), t])
    fit = mixed.fit_reml(y, x, z, g)
    assert fit.converged and fit.groups == n and fit.observations == n * per
    se = np.sqrt(np.diag(fit.cov_beta))
    assert np.all(np.abs(fit.beta - [2, 0.1, 0.5, 0.9]) < 4 * se)  # within 4 standard errors
    assert np.sqrt(np.diag(fit.cov_re)) == pytest.approx([0.5, 0.2], rel=0.1)
    assert np.sqrt(fit.scale) == pytest.approx(0.3, rel=0.05)


def test_all_women_by_default_and_sampling_on_request():
    df = aligned(120)
    assert cohort.fit_mixed(df)["women"] == 120 and cohort.fit_mixed(df)["note"] == ""
    m = cohort.fit_mixed(df, max_women=50)
    assert m["women"] == 50 and "random" in m["note"]
    with pytest.raises(ValueError, match="unknown mixed-model engine"):
        cohort.fit_mixed(df, engine="lme4")


def test_data_it_cannot_fit_is_refused_in_words():
    with pytest.raises(ValueError, match="one row per observation"):
        mixed.fit_reml(np.ones(3), np.ones((2, 1)), np.ones((3, 1)), [0, 1, 2])
    with pytest.raises(ValueError, match="non-finite"):
        mixed.fit_reml(np.array([1.0, np.nan]), np.ones((2, 1)), np.ones((2, 1)), [0, 1])
    with pytest.raises(ValueError, match="cannot fit"):
        mixed.fit_reml(np.ones(2), np.ones((2, 2)), np.ones((2, 1)), [0, 1])
