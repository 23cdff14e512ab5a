"""Cohort study mode: the seed study's analysis (risk-science.md §1) on a clinic's own archive.

Each woman contributes one index exam, as in the study: for a case (a diagnosis date given),
her last screening exam within one year before diagnosis; for a control, her last exam. Earlier
exams are aligned by years before that index exam. The analysis reports

- median and IQR of the 5-year risk per year before index, cases vs controls (with the
  Wilcoxon rank-sum p-value per year, the study's group test);
- a linear mixed-effects model (REML; the model of statsmodels' MixedLM) of risk on time
  with a random intercept and a random slope per woman and a fixed slope per group, on the
  percent scale (comparable with the published 1.13 vs 0.09 pp/yr) and on the log scale
  (scores are right-skewed, so the log fit is the better-behaved model; its slope is a
  relative change per year);
- discrimination (AUC with a DeLong 95% CI) of the index score, of the change over the last two
  years, and of both together (L2 logistic regression, 5-fold cross-validated predictions);
- a figure of the two median trajectories with IQR bands (PNG and PDF) and CSVs of every number.

Everything is vectorised over a pandas table, the mixed model included (`mixed.fit_reml`:
REML from per-woman sufficient statistics, checked against statsmodels' MixedLM), so the seed
study's 54,000 women take seconds. `max_women_mixed` > 0 still fits all cases and a fixed
random sample of controls above that many women (said in the report); statsmodels stays
available as `mixed_engine="statsmodels"`.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mamview.core import reference

DAYS_PER_YEAR = 365.25
CASE_WINDOW_DAYS = 365  # a case's index exam lies within one year before diagnosis
RISK_COLUMNS = ("risk_percent", "risk_5y_percent", "risk_y5_percent")


class CohortError(ValueError):
    """The inputs cannot be analysed; the message says why in words a user can act on."""


@dataclass
class CohortReport:
    """Headline numbers of a cohort analysis (all numbers are also in the CSVs)."""

    model: str
    women: int
    cases: int
    controls: int
    exams: int
    excluded: dict[str, int]
    yearly: list[dict]
    mixed_models: dict[str, dict]
    auc: dict[str, dict]
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """A JSON-serialisable copy (NaN and numpy scalars become plain JSON values)."""
        return _plain(asdict(self))


def _plain(obj):
    """Recursively: numpy scalars → Python, non-finite floats → None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- inputs


def read_outcomes(path: str | Path) -> pd.DataFrame:
    """Outcomes CSV: patient_id, diagnosis_date (ISO date; empty for a cancer-free woman)."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CohortError(f"cannot read the outcomes file {path}: {exc}") from exc
    missing = {"patient_id", "diagnosis_date"} - set(df.columns)
    if missing:
        raise CohortError(f"the outcomes file {path} lacks the column(s) {', '.join(sorted(missing))}"
                          " (needed: patient_id, diagnosis_date)")
    return df[["patient_id", "diagnosis_date"]]


def read_score_table(path: str | Path) -> pd.DataFrame:
    """A plain per-exam table (e.g. a demo cohort's ground_truth.csv or an export):
    patient_id, exam_date and a 5-year risk in percent (risk_percent or risk_5y_percent)."""
    try:
        df = pd.read_csv(path, dtype={"patient_id": str, "exam_date": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise CohortError(f"cannot read the score table {path}: {exc}") from exc
    col = next((c for c in RISK_COLUMNS if c in df.columns), None)
    if col is None or not {"patient_id", "exam_date"} <= set(df.columns):
        raise CohortError(f"the score table {path} needs patient_id, exam_date and one of "
                          f"{', '.join(RISK_COLUMNS)}")
    return df.rename(columns={col: "risk_percent"})[["patient_id", "exam_date", "risk_percent"]]


CONFLICT_EXCLUDED = "women whose patient ID is shared by two people (identity conflict)"


def cached_scores(db, model, progress: Callable[[int], None] | None = None
                  ) -> tuple[pd.DataFrame, dict[str, int]]:
    """patient_id, exam_date, risk_percent of every dated exam with a *current* score of
    `model` (a ModelRef) in the cache, and the women left out before the analysis: stale
    scores would be computed differently today, and two women under one patient ID are not
    one trajectory. `progress(n)` is told of each n exams looked at."""
    from mamview.core.cache import bulk, reads

    rows = bulk.current_five_year(db, model, progress)
    df = pd.DataFrame(rows, columns=["patient_id", "exam_date", "risk_percent"])
    df = df.drop_duplicates(["patient_id", "exam_date"], keep="last")
    excluded: dict[str, int] = {}
    conflicts = reads.identity_conflicts(db)
    conflicted = {r["patient_id"] for r in reads.list_patients(db)
                  if r["patient_key"] in conflicts} if conflicts else set()
    if conflicted:
        excluded[CONFLICT_EXCLUDED] = len(conflicted)
        df = df[~df["patient_id"].isin(conflicted)]
    return df.reset_index(drop=True), excluded


# ---------------------------------------------------------------- index exams and alignment


def align(scores: pd.DataFrame, outcomes: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Each usable exam with its woman's group and years before her index exam.

    Returns (table, excluded counts). Columns: patient_id, exam_date, risk_percent, case,
    index_date, years_before_index (≥ 0), is_index.
    """
    excluded: dict[str, int] = {}

    def drop(mask, reason):
        n = int(mask.sum())
        if n:
            excluded[reason] = excluded.get(reason, 0) + n
        return ~mask

    s = scores.copy()
    if "risk_percent" not in s.columns:
        col = next((c for c in RISK_COLUMNS if c in s.columns), None)
        if col is None:
            raise CohortError(f"the scores need a 5-year risk column ({', '.join(RISK_COLUMNS)})")
        s = s.rename(columns={col: "risk_percent"})
    s["patient_id"] = s["patient_id"].astype(str)
    s["exam_date"] = pd.to_datetime(s["exam_date"], errors="coerce")
    s["risk_percent"] = pd.to_numeric(s["risk_percent"], errors="coerce")
    s = s[drop(s["exam_date"].isna(), "exams without a valid date")]
    s = s[drop(~np.isfinite(s["risk_percent"]) | (s["risk_percent"] <= 0),
               "exams without a usable score")]

    o = outcomes.copy()
    o["patient_id"] = o["patient_id"].astype(str).str.strip()
    o = o[o["patient_id"] != ""].drop_duplicates("patient_id", keep="last")
    text = o["diagnosis_date"].fillna("").astype(str).str.strip()
    o["diagnosis"] = pd.to_datetime(text.where(text != ""), errors="coerce")
    o = o[drop((text != "") & o["diagnosis"].isna(), "women with an unreadable diagnosis date")]

    known = s["patient_id"].isin(o["patient_id"])
    n_unknown = s.loc[~known, "patient_id"].nunique()
    if n_unknown:
        excluded["women with scores but no outcome row"] = int(n_unknown)
    n_unscored = int((~o["patient_id"].isin(s["patient_id"])).sum())
    if n_unscored:
        excluded["women with an outcome row but no scored exam"] = n_unscored
    df = s[known].merge(o[["patient_id", "diagnosis"]], on="patient_id")
    df["case"] = df["diagnosis"].notna()
    # a case's exams on or after diagnosis say nothing about risk before it
    after = df["case"] & (df["exam_date"] >= df["diagnosis"])
    df = df[drop(after, "case exams on or after the diagnosis date")]

    last = df.groupby("patient_id")["exam_date"].transform("max")
    df = df.assign(index_date=last)
    late = df["case"] & ((df["diagnosis"] - df["index_date"]).dt.days > CASE_WINDOW_DAYS)
    late_women = df.loc[late, "patient_id"].nunique()
    if late_women:
        excluded["cases without a screening exam within 1 year before diagnosis"] = int(late_women)
    df = df[~late]
    # several scores on the index day (re-imports): keep one exam per day
    df = df.sort_values(["patient_id", "exam_date"]).drop_duplicates(
        ["patient_id", "exam_date"], keep="last")
    df["years_before_index"] = (df["index_date"] - df["exam_date"]).dt.days / DAYS_PER_YEAR
    df["is_index"] = df["exam_date"] == df["index_date"]
    cols = ["patient_id", "exam_date", "risk_percent", "case", "index_date",
            "years_before_index", "is_index"]
    return df[cols].reset_index(drop=True), excluded


def women_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per woman: index score, exams, and the change over the last two years
    (index score minus the score of the prior exam nearest 2 years before, 1.5–3 years back)."""
    idx = df[df["is_index"]].set_index("patient_id")
    w = pd.DataFrame({
        "case": idx["case"], "index_date": idx["index_date"].dt.date.astype(str),
        "index_risk_percent": idx["risk_percent"],
        "exams": df.groupby("patient_id").size(),
        "years_of_history": df.groupby("patient_id")["years_before_index"].max(),
    })
    prior = df[(df["years_before_index"] >= 1.5) & (df["years_before_index"] <= 3.0)].copy()
    prior["dist"] = (prior["years_before_index"] - 2.0).abs()
    prior = prior.sort_values(["patient_id", "dist"]).drop_duplicates("patient_id")
    prior = prior.set_index("patient_id")
    w["risk_2y_before_percent"] = prior["risk_percent"]
    w["change_2y_pp"] = w["index_risk_percent"] - w["risk_2y_before_percent"]
    return w.reset_index().rename(columns={"index": "patient_id"})


# ---------------------------------------------------------------- statistics


def yearly_summary(df: pd.DataFrame, max_years: int = 10) -> pd.DataFrame:
    """Median, IQR and n of the 5-year risk per whole year before index and group, with the
    Wilcoxon rank-sum p-value of cases vs controls per year."""
    d = df.assign(year=np.rint(df["years_before_index"]).astype(int))
    d = d[d["year"] <= max_years]
    g = d.groupby(["year", "case"])["risk_percent"]
    out = pd.DataFrame({"n": g.size(), "median": g.median(), "q1": g.quantile(0.25),
                        "q3": g.quantile(0.75), "mean": g.mean()}).reset_index()
    out["group"] = np.where(out["case"], "cases", "controls")
    pvals = {}
    for year, sub in d.groupby("year"):
        a, b = sub.loc[sub["case"], "risk_percent"], sub.loc[~sub["case"], "risk_percent"]
        if len(a) and len(b):
            pvals[year] = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    out["wilcoxon_p"] = out["year"].map(pvals)
    return out[["group", "year", "n", "median", "q1", "q3", "mean", "wilcoxon_p"]].sort_values(
        ["group", "year"]).reset_index(drop=True)


MIXED_ENGINES = ("reml", "statsmodels")


def fit_mixed(df: pd.DataFrame, log_scale: bool = False, max_women: int = 0,
              seed: int = 0, engine: str = "reml") -> dict:
    """A linear mixed model of risk on time (years relative to index, ≤ 0) × group, with a
    random intercept and slope per woman (REML). Returns the per-group slopes with 95% CIs
    and the fit's facts.

    `engine` "reml" fits it from per-woman sufficient statistics (`mixed.fit_reml`: seconds
    for 50,000 women); "statsmodels" with statsmodels' MixedLM (the reference it is checked
    against; a minute or more per 1000 women). `max_women` > 0 fits all cases and a random
    sample of controls above that many women; 0 fits every woman.
    """
    if engine not in MIXED_ENGINES:
        raise ValueError(f"unknown mixed-model engine {engine!r} "
                         f"(one of {', '.join(MIXED_ENGINES)})")
    d = df.assign(time=-df["years_before_index"], y=np.log(df["risk_percent"]) if log_scale
                  else df["risk_percent"], case=df["case"].astype(int))
    d, note = _mixed_sample(d, max_women, seed)
    # women with one exam carry no slope information but do inform the intercepts: kept
    out = {"scale": "log(risk)" if log_scale else "risk percent",
           "slope_unit": "log units per year" if log_scale else "pp per year",
           "women": int(d["patient_id"].nunique()), "exams": int(len(d)), "converged": False,
           "note": note, "warnings": []}
    if engine == "statsmodels":
        _fit_statsmodels(d, out)
    else:
        _fit_reml(d, out)
    return out


def _mixed_sample(d: pd.DataFrame, max_women: int, seed: int) -> tuple[pd.DataFrame, str]:
    """All women, or above `max_women` (> 0) all cases and a random sample of controls."""
    if max_women <= 0:
        return d, ""
    women = d.groupby("patient_id")["case"].first()
    if len(women) <= max_women:
        return d, ""
    cases = women[women == 1].index.to_numpy()
    controls = women[women == 0].index.to_numpy()
    # all cases (they are few in screening), unless they would crowd out the controls
    n_cases = min(len(cases), max(max_women - len(controls), max_women // 2))
    n_controls = min(len(controls), max_women - n_cases)
    rng = np.random.default_rng(seed)
    keep_cases = cases if n_cases == len(cases) else rng.choice(cases, n_cases, replace=False)
    keep = rng.choice(controls, size=n_controls, replace=False)
    d = d[d["patient_id"].isin(set(keep_cases) | set(keep))]
    return d, (f"fitted on {'all' if n_cases == len(cases) else 'a random'} {n_cases} of "
               f"{len(cases)} cases and a random {n_controls} of {len(controls)} controls "
               f"(seed {seed})")


def _fit_reml(d: pd.DataFrame, out: dict) -> None:
    """`y ~ time * case`, random intercept and slope per woman, by `mixed.fit_reml`
    (β in statsmodels' order: Intercept, time, case, time:case)."""
    from mamview.core.analytics import mixed

    t, c = d["time"].to_numpy(float), d["case"].to_numpy(float)
    x = np.column_stack([np.ones(len(d)), t, c, t * c])
    z = np.column_stack([np.ones(len(d)), t])
    fit = mixed.fit_reml(d["y"].to_numpy(float), x, z, d["patient_id"].to_numpy())
    out["converged"] = fit.converged
    out["warnings"] = fit.warnings[:5]
    z95 = stats.norm.ppf(0.975)  # Wald intervals on the normal, as statsmodels' MixedLM

    def contrast(vec):
        est = float(vec @ fit.beta)
        with np.errstate(invalid="ignore"):
            se = float(np.sqrt(vec @ fit.cov_beta @ vec))
        return est, [est - z95 * se, est + z95 * se], se

    for group, vec in (("controls", [0, 1, 0, 0]), ("cases", [0, 1, 0, 1])):
        out[f"slope_{group}"], out[f"slope_{group}_ci"], _ = contrast(np.array(vec, float))
    est, ci, se = contrast(np.array([0, 0, 0, 1], float))
    out["slope_difference"], out["slope_difference_ci"] = est, ci
    out["slope_difference_p"] = float(2 * stats.norm.sf(abs(est / se))) if se > 0 else math.nan
    out["intercept_controls"] = float(fit.beta[0])
    out["intercept_cases"] = float(fit.beta[0] + fit.beta[2])
    out["random_intercept_sd"] = float(math.sqrt(max(fit.cov_re[0, 0], 0)))
    out["random_slope_sd"] = float(math.sqrt(max(fit.cov_re[1, 1], 0)))
    out["residual_sd"] = float(math.sqrt(fit.scale))


def _fit_statsmodels(d: pd.DataFrame, out: dict) -> None:
    """The same model by statsmodels' MixedLM (loops over women: the reference, not fast),
    the better of two optimisers' fits."""
    import statsmodels.formula.api as smf

    model = smf.mixedlm("y ~ time * case", d, groups=d["patient_id"], re_formula="~time")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = model.fit(reml=True, method=["lbfgs", "bfgs"])
        # L-BFGS can stop short where the likelihood is flat in the slope variance (seen on
        # the log scale); Nelder–Mead then BFGS from the same start reaches the optimum there
        other = model.fit(reml=True, method=["nm", "bfgs"], maxiter=5000)
    if other.llf > res.llf:
        res = other
    out["converged"] = bool(res.converged)
    out["warnings"] = sorted({str(w.message).splitlines()[0] for w in caught})[:5]
    # tiny cohorts can leave a variance estimate at zero: its CI is then NaN, not a warning
    with np.errstate(invalid="ignore", divide="ignore"):
        _slopes(res, out)


def _slopes(res, out: dict) -> None:
    """Per-group slopes, their difference and the variance components of a MixedLM fit."""
    names = list(res.fe_params.index)
    for group, vec in (("controls", {"time": 1.0}), ("cases", {"time": 1.0, "time:case": 1.0})):
        c = np.array([[vec.get(n, 0.0) for n in names]])
        tt = res.t_test(c)
        lo, hi = np.asarray(tt.conf_int()).ravel()[:2]
        out[f"slope_{group}"] = float(np.asarray(tt.effect).ravel()[0])
        out[f"slope_{group}_ci"] = [float(lo), float(hi)]
    out["slope_difference"] = float(res.fe_params["time:case"])
    lo, hi = res.conf_int().loc["time:case"]
    out["slope_difference_ci"] = [float(lo), float(hi)]
    out["slope_difference_p"] = float(res.pvalues["time:case"])
    out["intercept_controls"] = float(res.fe_params["Intercept"])
    out["intercept_cases"] = float(res.fe_params["Intercept"] + res.fe_params["case"])
    re = np.asarray(res.cov_re)
    out["random_intercept_sd"] = float(math.sqrt(max(re[0, 0], 0)))
    out["random_slope_sd"] = float(math.sqrt(max(re[1, 1], 0))) if re.shape[0] > 1 else None
    out["residual_sd"] = float(math.sqrt(res.scale))


def delong_auc(y: np.ndarray, score: np.ndarray, alpha: float = 0.05) -> dict:
    """AUC with DeLong's variance (Sun & Xu's fast algorithm via mid-ranks) and a 95% CI."""
    y = np.asarray(y, dtype=bool)
    s = np.asarray(score, dtype=float)
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    pos, neg = s[y], s[~y]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return {"auc": None, "ci": [None, None], "se": None, "n_cases": int(m), "n_controls": int(n)}
    tx, ty = stats.rankdata(pos), stats.rankdata(neg)
    tz = stats.rankdata(np.concatenate([pos, neg]))
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v01 = (tz[:m] - tx) / n  # per-case share of controls scored lower
    v10 = 1.0 - (tz[m:] - ty) / m  # per-control share of cases scored higher
    se = math.sqrt(np.var(v01, ddof=1) / m + np.var(v10, ddof=1) / n)
    z = stats.norm.ppf(1 - alpha / 2)
    return {"auc": float(auc), "ci": [float(max(0.0, auc - z * se)), float(min(1.0, auc + z * se))],
            "se": float(se), "n_cases": int(m), "n_controls": int(n)}


def _fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """L2-penalised logistic regression (intercept unpenalised); stable under separation."""
    xb = np.column_stack([np.ones(len(x)), x])

    def loss(w):
        z = xb @ w
        nll = np.sum(np.logaddexp(0, z) - y * z)
        grad = xb.T @ (1 / (1 + np.exp(-z)) - y)
        pen = l2 * np.sum(w[1:] ** 2)
        grad[1:] += 2 * l2 * w[1:]
        return nll + pen, grad

    return optimize.minimize(loss, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B").x


def cross_validated_scores(x: np.ndarray, y: np.ndarray, folds: int = 5, l2: float = 1.0,
                           seed: int = 0) -> np.ndarray:
    """Out-of-fold predicted log-odds of a logistic model (stratified folds, standardised x)."""
    y = np.asarray(y, dtype=float)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=int)
    for label in (0.0, 1.0):
        idx = np.flatnonzero(y == label)
        fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
    out = np.full(len(y), np.nan)
    for k in range(folds):
        train, test = fold != k, fold == k
        if not test.any() or len(np.unique(y[train])) < 2:
            continue
        mu, sd = x[train].mean(0), x[train].std(0)
        sd[sd == 0] = 1.0
        w = _fit_logistic((x[train] - mu) / sd, y[train], l2)
        out[test] = w[0] + ((x[test] - mu) / sd) @ w[1:]
    return out


def discrimination(women: pd.DataFrame, seed: int = 0) -> dict[str, dict]:
    """AUCs (DeLong 95% CI) of the index score, the 2-year change, and both together."""
    y = women["case"].to_numpy(bool)
    out = {"index_score": delong_auc(y, women["index_risk_percent"].to_numpy())}
    out["index_score"]["population"] = "all women"
    has = women["change_2y_pp"].notna().to_numpy()
    out["change_2y"] = delong_auc(y[has], women.loc[has, "change_2y_pp"].to_numpy())
    out["change_2y"]["population"] = "women with an exam 1.5–3 years before index"
    out["index_score_same_women"] = delong_auc(y[has], women.loc[has, "index_risk_percent"].to_numpy())
    out["index_score_same_women"]["population"] = out["change_2y"]["population"]
    if has.sum() >= 10 and len(np.unique(y[has])) == 2:
        x = np.column_stack([np.log(women.loc[has, "index_risk_percent"].to_numpy()),
                             women.loc[has, "change_2y_pp"].to_numpy()])
        pred = cross_validated_scores(x, y[has], seed=seed)
        out["both"] = delong_auc(y[has], pred)
    else:  # too few women for 5-fold cross-validation
        out["both"] = {"auc": None, "ci": [None, None], "se": None,
                       "n_cases": int(y[has].sum()), "n_controls": int((~y[has]).sum())}
    out["both"]["population"] = out["change_2y"]["population"]
    out["both"]["method"] = ("L2 logistic regression of log(index score) and 2-year change, "
                             "5-fold cross-validated predictions; the CI ignores fold variability")
    return out


# ---------------------------------------------------------------- outputs


def plot_trajectories(yearly: pd.DataFrame, out_stem: Path, model: str,
                      thresholds: Sequence[float] = reference.DEFAULT_THRESHOLDS_PERCENT
                      ) -> list[Path]:
    """Median 5-year risk per year before index with IQR bands, cases vs controls (PNG + PDF)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for group, color in (("controls", "tab:blue"), ("cases", "tab:red")):
        g = yearly[yearly["group"] == group].sort_values("year")
        if g.empty:
            continue
        x = -g["year"].to_numpy()
        ax.fill_between(x, g["q1"], g["q3"], color=color, alpha=0.18, linewidth=0)
        ax.plot(x, g["median"], "o-", color=color,
                label=f"{group} (median, IQR band; n at index = "
                      f"{int(g.loc[g['year'] == 0, 'n'].sum())})")
    for thr in thresholds:
        ax.axhline(thr, color="grey", linestyle="--", linewidth=0.8)
        ax.text(ax.get_xlim()[0], thr, f" {thr:g}%", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("years before the index exam (0 = index)")
    ax.set_ylabel("5-year risk (%)")
    ax.set_title("5-year risk trajectories before the index exam", fontsize=11)
    fig.text(0.01, 0.01, f"Model: {model}", fontsize=7, color="dimgray")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def _results_rows(report: CohortReport) -> list[dict]:
    """Every number of the report as long-format rows (section, name, group, year, value…)."""
    rows = [{"section": "cohort", "name": k, "value": v}
            for k, v in (("women", report.women), ("cases", report.cases),
                         ("controls", report.controls), ("exams", report.exams))]
    rows += [{"section": "excluded", "name": k, "value": v} for k, v in report.excluded.items()]
    for y in report.yearly:
        for stat in ("n", "median", "q1", "q3", "mean", "wilcoxon_p"):
            rows.append({"section": "yearly", "name": stat, "group": y["group"],
                         "years_before_index": y["year"], "value": y[stat]})
    for scale, m in report.mixed_models.items():
        for key, val in m.items():
            if key.endswith("_ci") or key in ("warnings", "note", "scale", "slope_unit"):
                continue
            lo, hi = m.get(f"{key}_ci", [None, None])
            rows.append({"section": f"mixed_model_{scale}", "name": key, "value": val,
                         "ci_low": lo, "ci_high": hi, "unit": m["slope_unit"]
                         if key.startswith("slope") else ""})
    for name, a in report.auc.items():
        rows.append({"section": "auc", "name": name, "value": a["auc"], "ci_low": a["ci"][0],
                     "ci_high": a["ci"][1], "n": a["n_cases"] + a["n_controls"],
                     "unit": f"{a['n_cases']} cases / {a['n_controls']} controls; "
                             f"{a.get('population', '')}"})
    return rows


def _write_rows(path: Path, rows: list[dict], columns: Sequence[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                        for k, v in r.items()})


# ---------------------------------------------------------------- the whole analysis


def run_cohort(scores: pd.DataFrame, outcomes: pd.DataFrame, out_dir: str | Path | None = None,
               *, model: str = "", max_years: int = 10, max_women_mixed: int = 0,
               mixed_engine: str = "reml", seed: int = 0,
               progress: Callable[[str], None] | None = None,
               excluded_before: dict[str, int] | None = None) -> CohortReport:
    """The cohort analysis of per-exam 5-year scores against outcomes; writes the CSVs, the
    figure and a JSON report into `out_dir` when given. `model` names the scores' model;
    `excluded_before` counts women left out before the scores reached here (and why);
    `max_women_mixed` (0: all) and `mixed_engine` are `fit_mixed`'s. `progress` is called
    with each stage's label as it starts."""
    step = progress or (lambda _label: None)
    step("aligning exams to index")
    df, excluded = align(scores, outcomes)
    excluded = {**(excluded_before or {}), **excluded}
    if df.empty:
        raise CohortError("no scored exam matches a woman in the outcomes file")
    women = women_table(df)
    n_cases = int(women["case"].sum())
    n_controls = int((~women["case"]).sum())
    if n_cases < 2 or n_controls < 2:
        raise CohortError(f"the cohort needs at least 2 cases and 2 controls "
                          f"(has {n_cases} and {n_controls})")
    df = df[df["years_before_index"] <= max_years + 0.5]
    step("yearly medians")
    yearly = yearly_summary(df, max_years)
    notes = []
    mixed: dict[str, dict] = {}
    for scale, log in (("percent", False), ("log", True)):
        step(f"mixed model ({scale} scale)")
        try:
            mixed[scale] = fit_mixed(df, log_scale=log, max_women=max_women_mixed, seed=seed,
                                     engine=mixed_engine)
        except (ValueError, np.linalg.LinAlgError) as exc:
            notes.append(f"the {scale}-scale mixed model could not be fitted: {exc}")
    step("discrimination")
    auc = discrimination(women, seed=seed)
    report = CohortReport(
        model=model, women=len(women), cases=n_cases, controls=n_controls, exams=int(len(df)),
        excluded=excluded, yearly=yearly.to_dict("records"), mixed_models=mixed, auc=auc,
        notes=notes + ["AUCs describe this archive; the index exam of a case may show the "
                       "cancer itself (risk-science.md §1.5)"],
    )
    if out_dir is not None:
        step("writing outputs")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"results_csv": out / "cohort_results.csv", "yearly_csv": out / "cohort_yearly.csv",
                 "women_csv": out / "cohort_women.csv", "report_json": out / "cohort_report.json"}
        _write_rows(files["results_csv"], _results_rows(report),
                    ["section", "name", "group", "years_before_index", "value", "ci_low",
                     "ci_high", "n", "unit"])
        _write_rows(files["yearly_csv"], report.yearly, list(yearly.columns))
        _write_rows(files["women_csv"], women.to_dict("records"), list(women.columns))
        png, pdf = plot_trajectories(yearly, out / "cohort_trajectories", model)
        files["figure_png"], files["figure_pdf"] = png, pdf
        report.files = {k: str(v) for k, v in files.items()}
        files["report_json"].write_text(json.dumps(report.as_dict(), indent=2, default=str))
    return report
