"""Reference values a risk display draws: the 5-year risk thresholds, the cancer-free band and
their labels, each with its source.

One place, so the chart, the exported figure, the settings, the trajectory rules, the cohort
figure and the README cannot drift apart. Every value is percent 5-year risk, the scale Mirai's
calibrated output is shown on. The sources are summarised, with the quotes and the caveats,
in the project's reference notes (risk-science.md; the section is named with each value).

Pure data: no Qt, no torch, nothing read from disk.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Where a reference value comes from."""

    citation: str  # who says it, and where
    notes_section: str  # the section of risk-science.md that records and discusses it
    url: str = ""


@dataclass(frozen=True)
class Threshold:
    """A line on the 5-year risk axis; a risk at or above `percent` is on or over it."""

    percent: float
    label: str  # the legend's wording
    short: str  # drawn on the plot next to the line
    source: Source


@dataclass(frozen=True)
class Band:
    """A range on the 5-year risk axis, drawn as a shaded band."""

    low_percent: float
    high_percent: float
    label: str
    source: Source


def percent_text(value: float) -> str:
    """'1.7%', '3%': how the display writes a percentage of the reference values."""
    return f"{value:g}%"


_NCCN = 1.7
_HIGH = 3.0
_BAND = (1.8, 2.2)

#: NCCN 2026: an AI image-based 5-year risk of 1.7 % or more is "increased risk" (the old
#: Gail/FDA 1.66 % line, the 5-year risk of an average 60-year-old white woman).
NCCN_INCREASED_RISK = Threshold(
    percent=_NCCN,
    label=f'NCCN 2026 "increased risk" ({percent_text(_NCCN)})',
    short=f"{percent_text(_NCCN)} NCCN",
    source=Source(
        "NCCN Clinical Practice Guidelines, Breast Cancer Screening and Diagnosis, 2026 "
        "(AI image-based 5-year risk ≥1.7% defines increased risk; reported in the press, "
        "the guideline itself was not reachable); origin: Gail model / NSABP P-1, FDA ≥1.66%",
        "§3.1, §3.2",
        "https://join.targetedonc.com/view/nccn-updates-breast-cancer-guidelines-to-include-"
        "ai-based-risk-assessment",
    ),
)

#: 3 %: the USPSTF 2019 line above which risk-reducing medication is more likely to help than
#: harm, and the top stratum (>3.0 %) of Mirai at MGH.
HIGH_RISK = Threshold(
    percent=_HIGH,
    label=f"{percent_text(_HIGH)} (USPSTF 2019 risk-reducing medication; top stratum in Mirai "
          "studies)",
    short=percent_text(_HIGH),
    source=Source(
        "USPSTF 2019, Medication Use to Reduce Risk of Breast Cancer (JAMA 2019;322:857-867), "
        "the ≥3% 5-year cutoff of its evidence discussion; Lamb LR et al. 2026, Mirai strata "
        "low <1.7%, intermediate 1.7–3.0%, high >3.0%",
        "§3.3, §3.5",
        "https://jamanetwork.com/journals/jama/fullarticle/2749221",
    ),
)

#: Lehman et al., Radiology 2026: women who stayed cancer-free had "stable scores (range,
#: 1.8–2.2)" across up to six yearly exams. Note it sits above the NCCN line (§1.5).
CANCER_FREE_BAND = Band(
    low_percent=_BAND[0],
    high_percent=_BAND[1],
    label=f"{_BAND[0]:g}–{percent_text(_BAND[1])}: median in women who stayed cancer-free "
          "(Lehman et al., Radiology 2026)",
    source=Source(
        "Lehman CD et al., Longitudinal analysis of changes in deep learning image-based breast "
        "cancer risk scores over time, Radiology 2026, doi:10.1148/radiol.253023 (abstract: "
        "cancer-free group \"stable scores (range, 1.8–2.2)\")",
        "§1.4, §5",
        "https://www.rsna.org/news/2026/june/changes-in-breast-cancer-risk-scores",
    ),
)

#: The default thresholds, lowest first (the user may change them in the settings).
THRESHOLDS: tuple[Threshold, ...] = (NCCN_INCREASED_RISK, HIGH_RISK)
DEFAULT_THRESHOLDS_PERCENT: tuple[float, ...] = tuple(t.percent for t in THRESHOLDS)

#: The strata between the two default thresholds, as `analytics.trajectory.stratum` names them
#: (below the first, between, at or above the last; the MGH Mirai strata of §3.5).
STRATA = ("low", "intermediate", "high")


def defaults_note() -> str:
    """One line naming the default thresholds, for a settings form."""
    return (f"Defaults: {percent_text(NCCN_INCREASED_RISK.percent)} (NCCN 2026 increased risk) "
            f"and {percent_text(HIGH_RISK.percent)}.")
