"""Research exports of trajectories: one flat row per scored exam (CSV or JSON)."""

from __future__ import annotations

import csv
from typing import IO, Iterable, Mapping, Sequence

from mamview.core.analytics.trajectory import FlagRules, ScorePoint, analyze

TRAJECTORY_COLUMNS = (
    "patient_id", "exam_date", "exam_key", "model_id", "model_label", "vendor",
    "risk_y1_percent", "risk_y2_percent", "risk_y3_percent", "risk_y4_percent",
    "risk_y5_percent", "change_since_prior_pp", "rate_pp_per_year", "log_rate_per_year",
    "slope_ols_pp_per_year", "slope_theil_sen_pp_per_year", "acceleration_pp_per_year2",
    "ratio_to_baseline", "stratum", "flags", "flags_label", "validated_domain", "view_mapping",
)


def _num(x: float | None, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def trajectory_rows(patient_id: str, points: Sequence[ScorePoint],
                    model_labels: Mapping[str, str] | None = None,
                    rules: FlagRules = FlagRules()) -> list[dict]:
    """One row per scored exam; each row's metrics are those known *as of that exam*
    (computed from her exams up to and including it), as a reader would have seen them."""
    from mamview.core.analytics.trajectory import stratum

    labels = model_labels or {}
    ordered = analyze(points, rules).points  # sorted, unusable scores left out
    rows = []
    for k, p in enumerate(ordered):
        rep = analyze(ordered[: k + 1], rules)
        yearly = list(p.yearly_percent) + [None] * (5 - len(p.yearly_percent))
        if not p.yearly_percent:
            yearly[4] = p.risk_percent
        rows.append({
            "patient_id": patient_id, "exam_date": p.exam_date.isoformat(),
            "exam_key": p.exam_key, "model_id": p.model_id,
            "model_label": labels.get(p.model_id, ""), "vendor": p.vendor or "",
            **{f"risk_y{i + 1}_percent": _num(v) for i, v in enumerate(yearly[:5])},
            "change_since_prior_pp": _num(rep.change_since_prior),
            "rate_pp_per_year": _num(rep.rate_per_year),
            "log_rate_per_year": _num(rep.log_rate_per_year),
            "slope_ols_pp_per_year": _num(rep.slope_ols),
            "slope_theil_sen_pp_per_year": _num(rep.slope_theil_sen),
            "acceleration_pp_per_year2": _num(rep.acceleration),
            "ratio_to_baseline": _num(rep.ratio_to_baseline),
            "stratum": stratum(p.risk_percent, rules.thresholds_percent),
            "flags": "; ".join(rep.flags), "flags_label": rules.label,
            # "inside", or "outside (digitised film)" for a score computed on request
            "validated_domain": f"outside ({p.domain})" if p.domain else "inside",
            "view_mapping": p.view_mapping,
        })
    return rows


def write_csv(fh: IO[str], rows: Iterable[dict], columns: Sequence[str] = TRAJECTORY_COLUMNS
              ) -> None:
    """Write rows with a fixed header (also when there are no rows)."""
    w = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
