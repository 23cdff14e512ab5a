"""Per-woman change metrics of a 5-year risk trajectory (pure functions).

Formulas follow /work/shared/reference/risk-science.md §6: exams k = 1…n at dates t_k (decimal
years), risks r_k in percent.

- change since prior  Δ = r_n − r_{n−1} (percentage points, pp)
- rate per year       v = Δ / (t_n − t_{n−1}) (pp/yr); on the log scale g = Δln r / Δt (1/yr)
- trend slope         OLS and Theil–Sen of r on t, only when n ≥ 3 and the exams span ≥ 2 years
- acceleration        2c of the least-squares quadratic r = a + b·t + c·t² over all her exams
                      (pp/yr², exploratory): positive when the curve bends upward. With three
                      exams it equals (v_n − v_{n−1}) / ((t_n − t_{n−2}) / 2); with more it reads
                      the whole curve, so one slower last interval after a steep rise does not
                      turn an upward-bending trajectory's sign negative.
- rising flag         the trend slope (OLS) ≥ `FlagRules.rising_rate_per_year` when the slope
                      is defined (≥ 3 exams over ≥ 2 years), else the rate since prior: the
                      number that decides is named next to the flag (`rising_rule`).
- ratio to baseline   r_n / median(r_1 … r_{n−1})
- first crossing of each threshold, stratum transitions, screening gaps, vendor/model changes.

No validated alert rule exists for any of these; flags are descriptive, configurable, and
labelled "research use, not validated" wherever they are shown. Nothing here reads files except
`exam_states` and `points_for_patient`, which read the cache's current scores (core.cache.reads).
"""

from __future__ import annotations

import datetime
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from mamview.core import reference

if TYPE_CHECKING:
    from mamview.core.domain import ScoredExam

RESEARCH_LABEL = "research use, not validated"
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class ScorePoint:
    """One scored exam of one woman."""

    exam_date: datetime.date
    risk_percent: float  # 5-year cumulative risk, in percent
    model_id: str
    exam_key: str = ""
    vendor: str | None = None
    yearly_percent: tuple[float, ...] = ()  # cumulative risk by year 1..5, percent
    model_version: str = ""
    weights_sha256: str = ""
    # inputs outside the model's validated domain ('' = inside; scored on request only), and
    # views used for others ('RML→RMLO'), as the score recorded them
    domain: str = ""
    view_mapping: str = ""

    @property
    def model_identity(self) -> tuple[str, str, str]:
        """(id, version, weights hash): scores are comparable only when all three match."""
        return (self.model_id, self.model_version, self.weights_sha256)


@dataclass(frozen=True)
class FlagRules:
    """Configurable flag rules (research use, not validated).

    `rising_rate_per_year` = 1.1 pp/yr: the seed study's mixed-model mean slope was 1.13 pp/yr
    in women who developed cancer and 0.09 pp/yr in cancer-free women (risk-science.md §1.4);
    "rising" therefore means "rising at least as fast as the cancer group's mean", a descriptive
    label, not a validated alert. `rising_ratio_to_baseline` = 1.5: a score 50% above her own
    earlier median (no published value; shown only as a flag reason). `gap_years` = 2.5: the
    BCSC's biennial interval is 19–30 months, so a longer interval is a gap in screening.
    """

    thresholds_percent: tuple[float, ...] = reference.DEFAULT_THRESHOLDS_PERCENT
    rising_rate_per_year: float = 1.1
    rising_ratio_to_baseline: float = 1.5
    gap_years: float = 2.5
    min_exams_for_slope: int = 3
    min_span_years_for_slope: float = 2.0
    label: str = RESEARCH_LABEL

    @classmethod
    def from_thresholds(cls, thresholds: Sequence[float] | None) -> "FlagRules":
        """Default rules with the user's thresholds (Settings.thresholds_percent); invalid
        values (non-numbers, ≤ 0, ≥ 100) are ignored, and none left gives the defaults."""
        good = []
        for x in thresholds or ():
            try:
                v = float(x)
            except (TypeError, ValueError):
                continue
            if math.isfinite(v) and 0 < v < 100:
                good.append(v)
        return cls(thresholds_percent=tuple(sorted(set(good)))) if good else cls()


@dataclass(frozen=True)
class StratumTransition:
    """A move between risk strata from one exam to the next."""

    exam_date: datetime.date
    from_stratum: str
    to_stratum: str


@dataclass(frozen=True)
class Gap:
    """An interval between consecutive exams longer than `FlagRules.gap_years`."""

    start: datetime.date
    end: datetime.date
    years: float


@dataclass(frozen=True)
class TrajectoryReport:
    """Change metrics of one woman's trajectory; None where a metric is not defined."""

    points: tuple[ScorePoint, ...]  # sorted by date
    change_since_prior: float | None  # pp
    rate_per_year: float | None  # pp/yr
    log_rate_per_year: float | None  # 1/yr (×100 ≈ % per year)
    slope_ols: float | None  # pp/yr; only when >= 3 exams over >= 2 years
    slope_theil_sen: float | None
    acceleration: float | None  # pp/yr², exploratory: 2c of a quadratic fit over all exams
    ratio_to_baseline: float | None
    crossings: dict[float, datetime.date | None]  # first upward crossing per threshold
    stratum_transitions: tuple[StratumTransition, ...]
    gaps: tuple[Gap, ...]
    notes: tuple[str, ...]  # vendor/model changes, dropped points, above threshold at start
    flags: tuple[str, ...]  # e.g. "crossed 1.7%", "rising"
    rising: bool
    crossed_any: bool
    rules: FlagRules = field(default_factory=FlagRules)

    @property
    def rising_basis(self) -> tuple[str, float | None]:
        """(name, value) of the number the "rising" flag compares with the cut-off: the trend
        slope (OLS) when it is defined, else the rate since prior."""
        if self.slope_ols is not None:
            return ("trend slope (OLS)", self.slope_ols)
        return ("rate since prior", self.rate_per_year)

    def rising_rule(self) -> str:
        """The rising rule as applied to her, e.g. 'no: trend slope (OLS) +0.55 < 1.1 pp/yr
        cut-off (the slope decides, not the rate since prior, +1.19)'."""
        name, value = self.rising_basis
        cut = self.rules.rising_rate_per_year
        if value is None:
            return f"not assessed: needs 2 dated exams (cut-off {cut:g} pp/yr)"
        text = (f"{'yes' if self.rising else 'no'}: {name} {value:+.2f} "
                f"{'≥' if self.rising else '<'} {cut:g} pp/yr cut-off")
        if self.slope_ols is not None and self.rate_per_year is not None:
            text += f" (the slope decides, not the rate since prior, {self.rate_per_year:+.2f})"
        return text

    @property
    def latest(self) -> ScorePoint | None:
        """The newest scored exam."""
        return self.points[-1] if self.points else None

    def display_rows(self) -> list[tuple[str, str]]:
        """(label, value text) pairs for a side panel; every number with its unit. The rows
        that matter come first (`display_sections`)."""
        key, detail = self.display_sections()
        return key + detail

    def display_sections(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(key rows, detail rows): latest risk, change, rate, crossings, flags and the rising
        rule first (a panel shows them without scrolling), then slopes, acceleration, ratio,
        strata, gaps and notes."""
        rows: list[tuple[str, str]] = []
        last = self.latest
        if last is None:
            return [("5-year risk", "no scored exam")], []
        rows.append(("Latest 5-year risk",
                     f"{last.risk_percent:.1f}% ({last.exam_date.isoformat()}, model {last.model_id})"))
        rows.append(("Change since prior", _fmt(self.change_since_prior, "{:+.2f} pp")))
        rate = _fmt(self.rate_per_year, "{:+.2f} pp/yr")
        if self.log_rate_per_year is not None:
            rate += f" ({self.log_rate_per_year * 100:+.0f}%/yr log)"
        rows.append(("Rate per year", rate))
        for thr, when in self.crossings.items():
            rows.append((f"First crossing of {thr:g}%", when.isoformat() if when else "—"))
        rows.append((f"Flags ({self.rules.label})", ", ".join(self.flags) if self.flags else "none"))
        rows.append(("Rising?", self.rising_rule()))
        key, rows = rows, []
        rows.append(("Scored exams", str(len(self.points))))
        rows.append(("Trend slope (OLS)", _fmt(self.slope_ols, "{:+.2f} pp/yr",
                                               "needs ≥3 exams over ≥2 years")))
        rows.append(("Trend slope (Theil–Sen)", _fmt(self.slope_theil_sen, "{:+.2f} pp/yr",
                                                     "needs ≥3 exams over ≥2 years")))
        rows.append(("Acceleration (quadratic fit, exploratory)",
                     _fmt(self.acceleration, "{:+.2f} pp/yr²", "needs ≥3 exams")
                     + ("" if self.acceleration is None else
                        " (bends up)" if self.acceleration > 0 else
                        " (bends down)" if self.acceleration < 0 else "")))
        rows.append(("Ratio to own baseline", _fmt(self.ratio_to_baseline, "{:.2f}×")))
        if self.stratum_transitions:
            rows.append(("Stratum changes", "; ".join(
                f"{t.exam_date.isoformat()}: {t.from_stratum} → {t.to_stratum}"
                for t in self.stratum_transitions)))
        if self.gaps:
            rows.append(("Screening gaps", "; ".join(
                f"{g.start.isoformat()} – {g.end.isoformat()} ({g.years:.1f} y)" for g in self.gaps)))
        for note in self.notes:
            rows.append(("Note", note))
        return key, rows

    def as_dict(self) -> dict:
        """A JSON-serialisable copy (dates as ISO strings)."""
        return {
            "points": [
                {"exam_date": p.exam_date.isoformat(), "risk_percent": p.risk_percent,
                 "model_id": p.model_id, "model_version": p.model_version,
                 "weights_sha256": p.weights_sha256, "exam_key": p.exam_key, "vendor": p.vendor,
                 "yearly_percent": list(p.yearly_percent), "out_of_domain": bool(p.domain),
                 "domain": p.domain, "view_mapping": p.view_mapping}
                for p in self.points
            ],
            "change_since_prior_pp": self.change_since_prior,
            "rate_pp_per_year": self.rate_per_year,
            "log_rate_per_year": self.log_rate_per_year,
            "slope_ols_pp_per_year": self.slope_ols,
            "slope_theil_sen_pp_per_year": self.slope_theil_sen,
            "acceleration_pp_per_year2": self.acceleration,
            "ratio_to_baseline": self.ratio_to_baseline,
            "crossings": {f"{k:g}": (v.isoformat() if v else None)
                          for k, v in self.crossings.items()},
            "stratum_transitions": [
                {"exam_date": t.exam_date.isoformat(), "from": t.from_stratum, "to": t.to_stratum}
                for t in self.stratum_transitions
            ],
            "gaps": [{"start": g.start.isoformat(), "end": g.end.isoformat(),
                      "years": round(g.years, 3)} for g in self.gaps],
            "notes": list(self.notes),
            "flags": list(self.flags),
            "flags_label": self.rules.label,
            "rising": self.rising,
            "rising_basis": self.rising_basis[0],
            "rising_rule": self.rising_rule(),
            "crossed_any": self.crossed_any,
        }


def _model_text(p: ScorePoint) -> str:
    """'demo' when only ids differ, else 'demo 1.2 (weights 3e1f7a61…)'."""
    text = p.model_id + (f" {p.model_version}" if p.model_version else "")
    return text + (f" (weights {p.weights_sha256[:8]}…)" if p.weights_sha256 else "")


def _fmt(value: float | None, pattern: str, missing: str = "—") -> str:
    return missing if value is None else pattern.format(value)


# ---------------------------------------------------------------- metrics (pure)


def decimal_years(d: datetime.date, origin: datetime.date) -> float:
    """Years from `origin` to `d` (365.25-day years)."""
    return (d - origin).days / DAYS_PER_YEAR


def ols_slope(t: Sequence[float], r: Sequence[float]) -> float | None:
    """β = Σ(t−t̄)(r−r̄) / Σ(t−t̄)²; None when all t are equal."""
    n = len(t)
    if n < 2:
        return None
    tm, rm = sum(t) / n, sum(r) / n
    sxx = sum((x - tm) ** 2 for x in t)
    if sxx <= 0:
        return None
    return sum((x - tm) * (y - rm) for x, y in zip(t, r)) / sxx


def theil_sen_slope(t: Sequence[float], r: Sequence[float]) -> float | None:
    """Median of the pairwise slopes (pairs with equal t are skipped)."""
    slopes = [(r[j] - r[i]) / (t[j] - t[i])
              for i in range(len(t)) for j in range(i + 1, len(t)) if t[j] != t[i]]
    return statistics.median(slopes) if slopes else None


def quadratic_acceleration(t: Sequence[float], r: Sequence[float]) -> float | None:
    """2c of the least-squares fit r = a + b·t + c·t² (pp/yr²); None with fewer than three
    distinct dates. Through exactly three points it is the three-point second difference."""
    if len(set(t)) < 3 or len(t) != len(r):
        return None
    # centred times keep the normal equations well conditioned (dates are decimal years)
    tm = sum(t) / len(t)
    x = [v - tm for v in t]
    s = [sum(v ** k for v in x) for k in range(5)]
    y = [sum((v ** k) * w for v, w in zip(x, r)) for k in range(3)]
    m = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]]

    def det(a):
        return (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
                - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
                + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))

    d = det(m)
    if abs(d) < 1e-12:
        return None
    mc = [row[:2] + [y[i]] for i, row in enumerate(m)]  # Cramer's rule for c
    return 2 * det(mc) / d


def stratum(risk_percent: float, thresholds: Sequence[float]) -> str:
    """'low' below the first threshold, 'high' at or above the last, else 'intermediate'
    (for more than two thresholds: '≥X%')."""
    ths = sorted(thresholds)
    if not ths or risk_percent < ths[0]:
        return "low"
    if risk_percent >= ths[-1]:
        return "high"
    if len(ths) == 2:
        return "intermediate"
    above = [x for x in ths if risk_percent >= x]
    return f"≥{above[-1]:g}%"


def _usable(p: ScorePoint) -> bool:
    return isinstance(p.risk_percent, (int, float)) and math.isfinite(p.risk_percent) \
        and p.risk_percent > 0 and isinstance(p.exam_date, datetime.date)


def analyze(points: Sequence[ScorePoint], rules: FlagRules = FlagRules()) -> TrajectoryReport:
    """Change metrics, events and flags of one woman's scored exams (any order).

    Points without a usable score (NaN, ≤ 0) are left out with a note. Two exams on the same
    day give no rate (division by zero), and a note.
    """
    notes: list[str] = []
    good = sorted((p for p in points if _usable(p)), key=lambda p: p.exam_date)
    dropped = len(points) - len(good)
    if dropped:
        notes.append(f"{dropped} exam{'s' if dropped > 1 else ''} without a usable score left out")
    thresholds = tuple(sorted(rules.thresholds_percent))
    n = len(good)
    r = [p.risk_percent for p in good]
    t = [decimal_years(p.exam_date, good[0].exam_date) for p in good] if good else []

    change = rate = log_rate = slope = ts = accel = ratio = None
    if n >= 2:
        change = r[-1] - r[-2]
        dt = t[-1] - t[-2]
        if dt > 0:
            rate = change / dt
            log_rate = (math.log(r[-1]) - math.log(r[-2])) / dt
        else:
            notes.append("the last two exams share a date: no rate per year")
        ratio = r[-1] / statistics.median(r[:-1])
    if n >= rules.min_exams_for_slope and t and t[-1] - t[0] >= rules.min_span_years_for_slope:
        slope = ols_slope(t, r)
        ts = theil_sen_slope(t, r)
    if n >= 3:
        accel = quadratic_acceleration(t, r)

    crossings: dict[float, datetime.date | None] = {}
    for thr in thresholds:
        crossings[thr] = next((good[k].exam_date for k in range(1, n)
                               if r[k - 1] < thr <= r[k]), None)
        if n and r[0] >= thr:
            notes.append(f"at or above {thr:g}% from the first scored exam")

    transitions = []
    for k in range(1, n):
        a, b = stratum(r[k - 1], thresholds), stratum(r[k], thresholds)
        if a != b:
            transitions.append(StratumTransition(good[k].exam_date, a, b))

    gaps = tuple(Gap(good[k - 1].exam_date, good[k].exam_date, t[k] - t[k - 1])
                 for k in range(1, n) if t[k] - t[k - 1] > rules.gap_years)

    for k in range(1, n):
        prev, cur = good[k - 1], good[k]
        if prev.vendor and cur.vendor and prev.vendor != cur.vendor:
            notes.append(f"scanner vendor changed on {cur.exam_date.isoformat()} "
                         f"({prev.vendor} → {cur.vendor}): scores may jump for that reason")
        if prev.model_identity != cur.model_identity:
            notes.append(f"model changed on {cur.exam_date.isoformat()} "
                         f"({_model_text(prev)} → {_model_text(cur)}): scores are not comparable")

    for p in good:
        if p.domain:
            notes.append(f"the score of {p.exam_date.isoformat()} is from images outside the "
                         f"model's validated domain ({p.domain}), computed on request")

    flags: list[str] = []
    for thr, when in crossings.items():
        if when is not None:
            flags.append(f"crossed {thr:g}%")
    trend = slope if slope is not None else rate
    rising = trend is not None and trend >= rules.rising_rate_per_year
    if rising:
        flags.append("rising")
    if ratio is not None and ratio >= rules.rising_ratio_to_baseline:
        flags.append(f"≥{rules.rising_ratio_to_baseline:g}× own baseline")
    return TrajectoryReport(
        points=tuple(good), change_since_prior=change, rate_per_year=rate,
        log_rate_per_year=log_rate, slope_ols=slope, slope_theil_sen=ts, acceleration=accel,
        ratio_to_baseline=ratio, crossings=crossings, stratum_transitions=tuple(transitions),
        gaps=gaps, notes=tuple(notes), flags=tuple(flags), rising=rising,
        crossed_any=any(v is not None for v in crossings.values()), rules=rules,
    )


# ---------------------------------------------------------------- reading the cache


def exam_states(db, patient_key: str, model=None, *, include_out_of_domain: bool = False
                ) -> list[tuple[datetime.date | None, ScoredExam]]:
    """(exam date, ScoredExam) of each of the woman's exams, oldest first, for `model` (a
    ModelRef, a model id, or None: the model that scored most of her exams); exams outside
    the model's domain as `reads.current_scores` says with `include_out_of_domain`."""
    from mamview.core.cache import reads

    exams = reads.exam_dates(db, patient_key)
    keys = [ek for ek, _, _ in exams]
    if model is None:
        model = reads.model_with_most_scores(db, keys)
        if model is None:
            return []
    states = reads.current_scores(db, keys, model, include_out_of_domain=include_out_of_domain)
    return [(_date(d), states[ek]) for ek, _, d in exams]


def points_for_patient(db, patient_key: str, model=None) -> list[ScorePoint]:
    """The woman's dated exams with a *current* computed score, as ScorePoints (oldest first).

    `model` as in `exam_states`; a stale score (model or input changed since) is left out, so
    one trajectory never shows a score as current that would be computed differently today.
    """
    from mamview.core.cache import reads
    from mamview.core.domain import ScoreState, risk_percent

    scored = [(d, s) for d, s in exam_states(db, patient_key, model)
              if d is not None and s.state == ScoreState.CURRENT and len(s.risk) >= 5]
    vendors = reads.exam_vendors(db, [s.exam_key for _, s in scored])
    out = []
    for when, s in scored:
        yearly = risk_percent(s.risk)
        out.append(ScorePoint(when, yearly[4], s.model_id, s.exam_key, vendors.get(s.exam_key),
                              yearly, s.model_version, s.weights_sha256, s.domain,
                              s.view_mapping))
    return out


def _date(text: str) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(text) if text else None
    except ValueError:
        return None
