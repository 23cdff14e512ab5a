"""core.reference: the thresholds, the cancer-free band and their labels, each with its source;
the places that still write the numbers themselves agree with it."""

import inspect
import subprocess
import sys

import pytest

from mamview.core import reference, settings
from mamview.core.analytics import trajectory
from mamview.core.reference import (
    CANCER_FREE_BAND,
    DEFAULT_THRESHOLDS_PERCENT,
    HIGH_RISK,
    NCCN_INCREASED_RISK,
    STRATA,
    THRESHOLDS,
    percent_text,
)


def test_defaults_are_the_nccn_and_3_percent_lines_lowest_first():
    assert DEFAULT_THRESHOLDS_PERCENT == (1.7, 3.0)
    assert THRESHOLDS == (NCCN_INCREASED_RISK, HIGH_RISK)
    assert (CANCER_FREE_BAND.low_percent, CANCER_FREE_BAND.high_percent) == (1.8, 2.2)


def test_labels_quote_their_own_numbers():
    for t in THRESHOLDS:
        assert percent_text(t.percent) in t.label and t.short.startswith(percent_text(t.percent))
    assert NCCN_INCREASED_RISK.label == 'NCCN 2026 "increased risk" (1.7%)'
    assert (NCCN_INCREASED_RISK.short, HIGH_RISK.short) == ("1.7% NCCN", "3%")
    assert CANCER_FREE_BAND.label.startswith("1.8–2.2%: median in women who stayed cancer-free")
    assert reference.defaults_note() == "Defaults: 1.7% (NCCN 2026 increased risk) and 3%."


@pytest.mark.parametrize("value, text", [(1.7, "1.7%"), (3.0, "3%"), (2.25, "2.25%")])
def test_percent_text(value, text):
    assert percent_text(value) == text


def test_every_value_names_its_source():
    for item in (*THRESHOLDS, CANCER_FREE_BAND):
        src = item.source
        assert src.citation and src.notes_section.startswith("§") and src.url.startswith("https://")
    assert "10.1148/radiol.253023" in CANCER_FREE_BAND.source.citation
    assert "NCCN" in NCCN_INCREASED_RISK.source.citation
    assert "USPSTF" in HIGH_RISK.source.citation


def test_strata_are_the_names_the_trajectory_gives():
    low, high = DEFAULT_THRESHOLDS_PERCENT
    names = [trajectory.stratum(r, DEFAULT_THRESHOLDS_PERCENT)
             for r in (low - 0.01, low, high - 0.01, high, 10 * high)]
    assert names == [STRATA[0], STRATA[1], STRATA[1], STRATA[2], STRATA[2]]


def test_the_places_that_still_write_the_numbers_agree():
    # until they read core.reference, a change in one place would make the others disagree
    from mamview.core.reports import figure as report
    from mamview.core.analytics import cohort

    assert settings.Settings().thresholds_percent == list(DEFAULT_THRESHOLDS_PERCENT)
    assert trajectory.FlagRules().thresholds_percent == DEFAULT_THRESHOLDS_PERCENT
    for fn in (report.build_export_content, cohort.plot_trajectories):
        default = inspect.signature(fn).parameters["thresholds"].default
        assert tuple(default) == DEFAULT_THRESHOLDS_PERCENT, fn.__qualname__


def test_importing_it_loads_neither_qt_nor_torch():
    code = ("import sys, mamview.core.reference; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('PySide6', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
