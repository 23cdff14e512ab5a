"""Per-year Platt calibration and output rounding (spec §5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mamview.core.models.base import round_risks
from mamview.core.models.mirai import MiraiCalibrator, PlattTerm

# Effective coefficients of the released calibrator (spec §5.2): calibrated = sigmoid(α + β·x).
SPEC_ALPHA_BETA = [(-6.941708811474187, 5.202204577500695),
                   (-6.118981671362509, 4.7190617802843455),
                   (-5.4558979486125505, 4.276177460151401),
                   (-5.1194480916336005, 4.218360381892919),
                   (-4.776621706974412, 3.904384040341062)]
DEMO_DCMTK = [0.0298, 0.0483, 0.0684, 0.09, 0.1016]  # published demo output (spec §7)


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_platt_term_hand_computed():
    term = PlattTerm(base_slope=2.0, base_offset=-1.0, platt_slope=-1.5, platt_offset=0.5)
    # y = 2·0.75 − 1 = 0.5; a·y + b = −0.25; P = 1 / (1 + e^−0.25)
    assert term(np.array([0.75]))[0] == pytest.approx(1 / (1 + math.exp(-0.25)), abs=1e-15)
    assert term.alpha_beta == (-2.0, 3.0)  # α = −(a·o + b), β = −a·s


def test_spec_coefficients():
    cal = MiraiCalibrator.from_alpha_beta(SPEC_ALPHA_BETA)
    x = np.array([[0.0] * 5, [1.0] * 5])
    want = [[sigmoid(a) for a, _ in SPEC_ALPHA_BETA], [sigmoid(a + b) for a, b in SPEC_ALPHA_BETA]]
    np.testing.assert_allclose(cal(x), want, rtol=1e-13)
    assert cal(x).dtype == np.float64


def test_demo_exam_raw_probability_about_0665():
    """Spec §5.2: the demo's raw sigmoid outputs are ≈ 0.665 in every year."""
    cal = MiraiCalibrator.from_alpha_beta(SPEC_ALPHA_BETA)
    out = cal(np.full((1, 5), 0.665, dtype=np.float32))[0]
    assert np.all(np.abs(out - DEMO_DCMTK) < 1.5e-4)


def test_calibrator_is_monotone_and_per_year():
    cal = MiraiCalibrator.from_alpha_beta(SPEC_ALPHA_BETA)
    x = np.linspace(0, 1, 101)[:, None].repeat(5, axis=1)
    out = cal(x)
    assert np.all(np.diff(out, axis=0) > 0)  # rankings preserved
    assert np.all(out[:, 0] < out[:, 4])  # later years calibrate higher for the same raw p


def test_terms_are_averaged_like_sklearn_folds():
    a, b = PlattTerm(1.0, 0.0, -1.0, 0.0), PlattTerm(2.0, 0.0, -1.0, 0.0)
    cal = MiraiCalibrator(((a, b),))
    assert cal(np.array([[0.5]]))[0, 0] == pytest.approx((sigmoid(0.5) + sigmoid(1.0)) / 2)


def test_json_round_trip_and_hash():
    cal = MiraiCalibrator.from_alpha_beta(SPEC_ALPHA_BETA, "Mirai_calibrator_mar12_2022")
    again = MiraiCalibrator.from_dict(cal.to_dict())
    assert again == cal and again.sha256 == cal.sha256
    other = MiraiCalibrator.from_alpha_beta([(a + 1e-12, b) for a, b in SPEC_ALPHA_BETA])
    assert other.sha256 != cal.sha256


def test_wrong_width_is_refused():
    with pytest.raises(ValueError):
        MiraiCalibrator.from_alpha_beta(SPEC_ALPHA_BETA)(np.zeros((1, 4)))


def test_rounding_is_pythons_round():
    # 0.00025 is stored slightly above the tie: Python's round gives 0.0003, np.round 0.0002.
    assert float(np.round(0.00025, 4)) == 0.0002
    assert round_risks(np.array([0.00025]))[0] == 0.0003
    assert round_risks(np.array([0.5, 1.5, 2.5]), 0).tolist() == [0.0, 2.0, 2.0]  # exact ties: even
    assert round_risks(np.array([[0.12345678]])).shape == (1, 1)
