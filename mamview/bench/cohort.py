"""`mamview bench cohort`: the cohort analysis at the seed study's scale (54,014 women, 158,807
exams; risk-science.md §1.1) on a synthetic score table written straight into a cache.

The cache gets patients, exams, four header-only image rows per exam (no files: nothing here
decodes) and one current score per exam under the bundled demo model's identity, written in
bulk; an outcomes CSV beside it. Then the code path of `mamview cohort --model demo` runs on
that cache (reading current scores, aligning, yearly medians, both mixed models,
discrimination, writing the outputs), each stage timed; then a subset of women is refitted
with statsmodels' MixedLM and the fast REML fit, and the largest differences are reported.

The trajectories follow the study's numbers (§1.4): about 1.5% of women are cases, whose
median 5-year risk rises from about 2.1% six years before the index exam to about 6.6% at it,
faster near it (the mixed model's case slope comes out near the published 1.13 pp/yr);
controls stay within 1.8–2.2% with a slope of 0.05 pp/yr (the press gives 0.09). Each woman
has 1–7 exams, yearly or two-yearly.
"""

from __future__ import annotations

import math
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mamview.bench.format import machine_line

CASE_SHARE = 817 / 54014  # the seed study's cases among its women
MAX_EXAMS = 7  # index plus up to six priors (§1.1)
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
EXPLICIT_VR_LITTLE = "1.2.840.10008.1.2.1"
STAGES = ("reading scores", "aligning exams to index", "yearly medians",
          "mixed model (percent scale)", "mixed model (log scale)", "discrimination",
          "writing outputs")


# ---------------------------------------------------------------- the synthetic cohort


def synthetic_cohort(women: int, exams: int, seed: int = 0, case_share: float = CASE_SHARE
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, outcomes) of a synthetic screening cohort: per exam patient_id, exam_date
    (ISO) and risk_percent; per woman patient_id and diagnosis_date ('' for a control).
    `exams` in all (between `women` and 7 × `women`), a `case_share` of the women cases (the
    seed study's by default), deterministic for a seed."""
    if not women <= exams <= MAX_EXAMS * women:
        raise ValueError(f"{exams} exams cannot be spread over {women} women "
                         f"(1 to {MAX_EXAMS} each)")
    rng = np.random.default_rng(seed)
    counts = _exam_counts(rng, women, exams)
    case = rng.random(women) < case_share
    case[:2], case[2:4] = True, False  # both groups exist in any cohort
    owner = np.repeat(np.arange(women), counts)
    # position from the index exam backwards: 0 = index, 1 = the prior before it, …
    ends = np.cumsum(counts)
    back = ends[owner] - 1 - np.arange(len(owner))
    # about yearly, some two-yearly gaps; years before index accumulate the gaps
    gap = np.where(rng.random(len(owner)) < 0.15, 2.0, 1.0) + rng.normal(0, 0.06, len(owner))
    gap[back == 0] = 0.0
    years = _cumulative_back(gap, owner, back)
    index_day = (date(2015, 1, 1).toordinal() + rng.integers(0, 5 * 365, women))
    days = index_day[owner] - np.rint(years * 365.25).astype(int)
    t = -years  # years relative to index (≤ 0)

    base = rng.lognormal(math.log(2.15), 0.35, women)
    slope = rng.normal(0.05, 0.04, women)  # controls: nearly flat
    jump = rng.lognormal(math.log(4.2), 0.8, women)  # cases: the rise before diagnosis
    c = case[owner]
    # cases rise over the six years before index, faster near it (1.3: the study's slope)
    rise = np.clip(1 + t / 6, 0, 1) ** 1.3
    risk = np.where(c, base[owner] + jump[owner] * rise,
                    base[owner] + slope[owner] * t)
    risk = np.maximum(0.3, risk * np.exp(rng.normal(0, 0.06, len(owner))))

    pids = np.array([f"SYN{i + 1:06d}" for i in range(women)])
    exam_dates = [date.fromordinal(int(d)).isoformat() for d in days]
    scores = pd.DataFrame({"patient_id": pids[owner], "exam_date": exam_dates,
                           "risk_percent": np.round(risk, 4)})
    diagnosis = [date.fromordinal(int(d) + int(k)).isoformat() if is_case else ""
                 for d, k, is_case in zip(index_day, rng.integers(30, 330, women), case)]
    outcomes = pd.DataFrame({"patient_id": pids, "diagnosis_date": diagnosis})
    return scores, outcomes


def _exam_counts(rng: np.random.Generator, women: int, exams: int) -> np.ndarray:
    """1..MAX_EXAMS exams per woman, `exams` in all (binomial, then evened out)."""
    share = (exams / women - 1) / (MAX_EXAMS - 1)
    counts = 1 + rng.binomial(MAX_EXAMS - 1, share, women)
    diff = exams - int(counts.sum())
    while diff:
        step = 1 if diff > 0 else -1
        room = np.flatnonzero((counts < MAX_EXAMS) if step > 0 else (counts > 1))
        pick = rng.choice(room, min(abs(diff), len(room)), replace=False)
        counts[pick] += step
        diff -= step * len(pick)
    return counts


def _cumulative_back(gap: np.ndarray, owner: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Years before each woman's index exam: the sum of the gaps from it to the index."""
    # rows are grouped per woman, oldest first: a reversed cumulative sum within each group
    order = np.lexsort((back, owner))
    g = gap[order]
    csum = np.cumsum(g)
    first = np.r_[True, owner[order][1:] != owner[order][:-1]]
    offset = np.maximum.accumulate(np.where(first, csum - g, 0.0))
    out = np.empty_like(gap)
    out[order] = csum - offset
    return out


# ---------------------------------------------------------------- into a cache


def write_cache(lib, scores: pd.DataFrame, ident) -> int:
    """Patients, exams, four header-only image rows per exam and a current score of `ident`
    (a ModelRef) per exam, in bulk; returns the exams written."""
    from mamview.core.cache import bulk, keys
    from mamview.core.cache.db import connect
    from mamview.core.domain import STANDARD_VIEWS
    from mamview.core.services.inference import score_key, score_row

    pids = scores["patient_id"].to_numpy()
    dates = scores["exam_date"].to_numpy()
    risks = scores["risk_percent"].to_numpy(float)
    pkeys = {pid: keys.patient_key_of("", pid) for pid in dict.fromkeys(pids)}
    patients = ({"patient_key": pk, "patient_id": pid, "name": f"SYNTHETIC^{pid}",
                 "birth_date": "19600101"} for pid, pk in pkeys.items())
    exams, images, rows = [], [], []
    for n, (pid, iso, r5) in enumerate(zip(pids, dates, risks)):
        pk = pkeys[pid]
        day = iso.replace("-", "")
        study = f"2.25.{n + 1}"
        ek = keys.exam_key_of(pk, day, "", study)
        exams.append({"exam_key": ek, "patient_key": pk, "exam_date": iso,
                      "study_uids": f'["{study}"]'})
        inputs = []
        for v, (side, view) in enumerate(STANDARD_VIEWS):
            uid = f"{study}.{v + 1}"
            im = _image_row(uid, ek, pk, study, f"/synthetic/{pid}/{day}/{uid}.dcm",
                            side.value, view.value, pid, day)
            images.append(im)
            inputs.append(im)
        risk = [r5 / 100 * k / 5 for k in range(1, 6)]
        rows.append(score_row(ident, score_key(ident, inputs), ek, "cpu",
                              [im["sop_instance_uid"] for im in inputs], "ok", "", risk))
    db = connect(lib.database)
    try:
        bulk.insert_rows(db, "patients", patients)
        bulk.insert_rows(db, "exams", exams)
        bulk.insert_rows(db, "images", images)
        bulk.insert_rows(db, "scores", bulk.score_rows(rows))
    finally:
        db.close()
    return len(exams)


def _image_row(uid, ek, pk, study, path, side, view, pid, day) -> dict:
    """A header-only image row of a full-field digital For Presentation standard view."""
    return {
        "sop_instance_uid": uid, "exam_key": ek, "patient_key": pk, "path": path,
        "size": 20_000_000, "mtime_ns": 1_600_000_000_000_000_000, "missing": 0,
        "study_uid": study, "series_uid": f"{uid}.0", "sop_class_uid": MG_FOR_PRESENTATION,
        "transfer_syntax_uid": EXPLICIT_VR_LITTLE, "modality": "MG", "manufacturer": "SYNTH",
        "laterality": side, "laterality_source": "ImageLaterality", "view": view,
        "view_source": "ViewCodeSequence", "view_modifiers": "[]", "is_standard": 1,
        "presentation_intent": "FOR PRESENTATION", "patient_orientation": "[]", "rows": 4096,
        "columns": 3328, "bits_stored": 14, "photometric": "MONOCHROME2",
        "window_presets": "[]", "patient_name": f"SYNTHETIC^{pid}",
        "patient_birth_date": "19600101", "content_date": day, "decode_error": "",
    }


# ---------------------------------------------------------------- the measurement


def measure(women: int, exams: int, check_women: int, work: str | None = None) -> dict:
    """Write the synthetic cache, run the cohort analysis on it stage by stage, and compare
    the fast mixed-model fit with statsmodels on `check_women` women (0: no check)."""
    from mamview.core import paths

    folder = Path(work) if work else Path(tempfile.mkdtemp(prefix="mamview-bench-cohort-"))
    folder.mkdir(parents=True, exist_ok=True)
    lib = paths.library(folder / "library")
    if lib.database.exists():
        raise RuntimeError(f"{lib.database} exists already: give an empty --work folder")
    lib.ensure()
    fig: dict[str, Any] = {"machine": machine_line(), "women": women, "exams": exams,
                           "work": str(folder)}
    t0 = time.perf_counter()
    scores, outcomes = synthetic_cohort(women, exams)
    fig["generate_s"] = time.perf_counter() - t0
    outcomes_csv = folder / "outcomes.csv"
    outcomes.to_csv(outcomes_csv, index=False)
    from mamview.core.cache import reads
    from mamview.core.cache.db import connect

    db = connect(lib.database)
    try:
        ident = reads.choose_model(lib, "demo", db)
    finally:
        db.close()
    if ident is None or not ident.installed:
        raise RuntimeError("the bundled demo model is not in this build: its identity is "
                           "what the synthetic scores are stored under")
    t0 = time.perf_counter()
    write_cache(lib, scores, ident)
    fig["write_cache_s"] = time.perf_counter() - t0
    fig["cache_mb"] = lib.database.stat().st_size / 1e6

    stages, report = run_analysis(lib, outcomes_csv, folder / "report")
    fig["stages_s"] = stages
    fig["total_s"] = sum(stages.values())
    fig["women_analysed"] = report.women
    fig["cases"], fig["controls"] = report.cases, report.controls
    fig["exams_analysed"] = report.exams
    fig["mixed"] = {scale: {k: m.get(k) for k in (
        "slope_cases", "slope_cases_ci", "slope_controls", "slope_controls_ci", "women",
        "converged")} for scale, m in report.mixed_models.items()}
    fig["auc_index"] = report.auc["index_score"]["auc"]
    if check_women:
        fig["check"] = check_against_statsmodels(scores, outcomes, check_women)
    return fig


def run_analysis(lib, outcomes_csv: Path, out: Path) -> tuple[dict[str, float], Any]:
    """`mamview cohort --model demo --outcomes FILE --out DIR` on `lib`, without the
    terminal: (seconds per stage, the report)."""
    from mamview.core.analytics import cohort
    from mamview.core.cache import reads
    from mamview.core.cache.db import connect_read_only

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    outcomes = cohort.read_outcomes(outcomes_csv)
    db = connect_read_only(lib.database)
    try:
        chosen = reads.choose_model(lib, "demo", db)
        scores, excluded = cohort.cached_scores(db, chosen)
    finally:
        db.close()
    seconds[STAGES[0]] = time.perf_counter() - t0
    clock = {"label": None, "t": time.perf_counter()}

    def step(label: str) -> None:
        now = time.perf_counter()
        if clock["label"]:
            seconds[clock["label"]] = now - clock["t"]
        clock.update(label=label, t=now)

    report = cohort.run_cohort(scores, outcomes, out, model="demo (synthetic scores)",
                               progress=step, excluded_before=excluded)
    step("")
    return seconds, report


def check_against_statsmodels(scores: pd.DataFrame, outcomes: pd.DataFrame, n: int) -> dict:
    """Largest differences between statsmodels' MixedLM and the fast REML fit on the first
    `n` women of the cohort (all cases among them and the controls), both scales."""
    from mamview.core.analytics import cohort

    keep = set(outcomes["patient_id"].iloc[:n])
    df, _ = cohort.align(scores[scores["patient_id"].isin(keep)],
                         outcomes[outcomes["patient_id"].isin(keep)])
    df = df[df["years_before_index"] <= 10.5]
    out: dict[str, Any] = {"women": int(df["patient_id"].nunique()), "exams": int(len(df))}
    for scale, log in (("percent", False), ("log", True)):
        t0 = time.perf_counter()
        ref = cohort.fit_mixed(df, log_scale=log, engine="statsmodels")
        t1 = time.perf_counter()
        fast = cohort.fit_mixed(df, log_scale=log, engine="reml")
        t2 = time.perf_counter()
        out[scale] = {"statsmodels_s": t1 - t0, "reml_s": t2 - t1,
                      **differences(ref, fast)}
    return out


COMPARED = ("slope_cases", "slope_controls", "slope_difference", "intercept_controls",
            "intercept_cases", "random_intercept_sd", "random_slope_sd", "residual_sd")


def differences(ref: dict, fast: dict) -> dict:
    """Largest absolute and relative differences of two `fit_mixed` results: the
    estimates, the CI bounds, and the variance components (as SDs)."""
    pairs = [(ref[k], fast[k]) for k in COMPARED]
    pairs += [(a, b) for k in ("slope_cases_ci", "slope_controls_ci", "slope_difference_ci")
              for a, b in zip(ref[k], fast[k])]
    ab = [abs(a - b) for a, b in pairs]
    rel = [abs(a - b) / abs(a) for a, b in pairs if a]
    ci_width = [(ref[k][1] - ref[k][0], fast[k][1] - fast[k][0])
                for k in ("slope_cases_ci", "slope_controls_ci", "slope_difference_ci")]
    return {"max_abs_diff": max(ab), "max_rel_diff": max(rel),
            "max_rel_diff_ci_width": max(abs(a - b) / a for a, b in ci_width),
            "max_abs_diff_slopes": max(abs(ref[k] - fast[k]) for k in COMPARED[:3]),
            "statsmodels_converged": ref["converged"], "reml_converged": fast["converged"]}


def rows(fig: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures of :func:`measure` as (label, value) rows (the machine row aside)."""
    out = [("synthetic cohort", f"{fig['women']} women, {fig['exams']} exams "
                                f"({fig['cases']} cases, {fig['controls']} controls analysed)"),
           ("generate + write cache", f"{fig['generate_s']:.1f} s + {fig['write_cache_s']:.1f} s "
                                      f"({fig['cache_mb']:.0f} MB)")]
    for stage, s in fig["stages_s"].items():
        out.append((f"  {stage}", f"{s:.2f} s"))
    out.append(("cohort analysis total", f"{fig['total_s']:.1f} s"))
    for scale, m in fig["mixed"].items():
        out.append((f"slopes ({scale})", f"cases {m['slope_cases']:+.3f} "
                    f"[{m['slope_cases_ci'][0]:+.3f}, {m['slope_cases_ci'][1]:+.3f}], controls "
                    f"{m['slope_controls']:+.3f} on {m['women']} women"))
    out.append(("AUC of the index score", f"{fig['auc_index']:.3f}"))
    check = fig.get("check")
    if check:
        for scale in ("percent", "log"):
            c = check[scale]
            out.append((f"check vs statsmodels ({scale}, {check['women']} women)",
                        f"max |diff| {c['max_abs_diff']:.1e}, max rel {c['max_rel_diff']:.1e}, "
                        f"CI width rel {c['max_rel_diff_ci_width']:.1e}; statsmodels "
                        f"{c['statsmodels_s']:.1f} s, REML {c['reml_s']:.2f} s"))
    return out
