"""Commands of the analytics area: `score`, `trajectory`, `cohort`, `sr`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mamview.cli.common import (EXIT_INTERRUPTED, CliError, open_db, patient_keys, print_json,
                                term)
from mamview.core.domain import STALE_REASON, ScoreState
from mamview.core.paths import Library


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's commands to `sub`."""
    s = sub.add_parser("score", help="compute 1- to 5-year risk for every complete exam")
    s.add_argument("--patient", metavar="ID", help="only this woman's exams")
    s.add_argument("--model", default="auto", help="model id (default: best installed)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="inference device (default auto: a GPU when there is one, else the CPU)")
    s.add_argument("--batch-size", type=int, default=4, metavar="N",
                   help="exams per forward pass; scores are saved after each batch (default 4)")
    s.add_argument("--decode-workers", type=int, default=None, metavar="N",
                   help="processes that decode and preprocess images while the model runs "
                        "(default: sized to this machine's cores; 0: decode in the scoring "
                        "thread)")
    s.add_argument("--cluster", metavar="ADDRESS",
                   help="score on a Dask cluster (e.g. tcp://10.0.0.5:8786, or 'local' for one "
                        "started on this machine): workers read the DICOM files and score; this "
                        "process writes the cache (needs the 'cluster' extra)")
    s.add_argument("--include-out-of-domain", action="store_true",
                   help="also score exams whose images are outside the model's validated domain "
                   "(digitised film, CR, lossy, For Processing, synthetic 2D); their scores are "
                   "labelled so (default: the setting score_out_of_domain)")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("trajectory", help="change metrics of one woman's (or every woman's) "
                       "risk trajectory")
    s.add_argument("patient", nargs="?", metavar="PATIENT", help="PatientID")
    s.add_argument("--all", action="store_true", help="every woman in the library")
    s.add_argument("--model", default=None, help="model id (default: the settings' model, else "
                   "the best installed)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true",
                     help="print CSV: one row per scored exam with the metrics as of that exam")
    s.set_defaults(func=cmd_trajectory)

    s = sub.add_parser("cohort", help="cohort study: trajectories of cases vs controls before "
                       "the index exam, mixed model, AUCs, figure and CSVs")
    s.add_argument("--outcomes", required=True, metavar="FILE.csv",
                   help="patient_id, diagnosis_date (empty for cancer-free women)")
    s.add_argument("--out", default="cohort-report", metavar="DIR",
                   help="folder for the CSVs, figure and JSON (default: ./cohort-report)")
    s.add_argument("--model", default=None,
                   help="model whose current cached scores to use (default: the settings' "
                   "model, else the best installed)")
    s.add_argument("--scores", metavar="FILE.csv",
                   help="use this per-exam table (patient_id, exam_date, risk_percent or "
                   "risk_5y_percent) instead of the library's cached scores")
    s.add_argument("--max-women-mixed", type=int, default=0, metavar="N",
                   help="above N women, the mixed model uses all cases and a random sample of "
                   "controls (default 0: every woman)")
    s.add_argument("--mixed-engine", choices=("reml", "statsmodels"), default="reml",
                   help="how the mixed model is fitted: 'reml' (default) from per-woman "
                   "sufficient statistics, seconds for 50,000 women; 'statsmodels' with "
                   "statsmodels' MixedLM, the reference it is checked against (slow: a "
                   "minute or more per 1000 women)")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.set_defaults(func=cmd_cohort)

    s = sub.add_parser("sr", help="write a DICOM Comprehensive SR of each scored exam "
                       "(and send it to a PACS)")
    s.add_argument("target", metavar="EXAM_OR_PATIENT",
                   help="an exam key (see `mamview exams --json`) or a PatientID")
    s.add_argument("--date", metavar="YYYY-MM-DD", help="only her exam of this date")
    s.add_argument("--out", required=True, metavar="DIR", help="folder for the SR files")
    s.add_argument("--model", default=None, help="model id (default: the settings' model, else "
                   "the best installed)")
    s.add_argument("--send", metavar="AE@host:port", help="C-STORE the SRs to this node")
    s.add_argument("--our-ae", default="MAMVIEW", help="our AE title when sending")
    s.add_argument("--uid-root", metavar="ROOT", default=None,
                   help="the site's UID root for the SRs, e.g. 1.2.826.0.1.99999. (default: the "
                   "uid_root setting; empty: 2.25 UUID-derived UIDs, no registration needed)")
    s.set_defaults(func=cmd_sr)


def cmd_score(args, lib: Library) -> int:
    """Score every complete exam (or one woman's); cached scores are kept, stale ones redone."""
    from mamview.cli.scoring import print_score_run, score_exams
    from mamview.core import settings as user_settings
    from mamview.core.models import registry
    from mamview.core.models.errors import ModelUnavailable

    try:
        entry = registry.resolve(lib, args.model)
    except ModelUnavailable as exc:
        raise CliError(str(exc)) from exc
    include = bool(args.include_out_of_domain
                   or user_settings.load(lib.settings_file).score_out_of_domain)
    db = open_db(lib)
    try:
        keys = patient_keys(db, args.patient)  # an unknown PatientID is refused here
    finally:
        db.close()
    run = score_exams(lib, entry, keys, device=args.device, batch_size=args.batch_size,
                      include_out_of_domain=include, decode_workers=args.decode_workers,
                      cluster=args.cluster)
    if not run.exams:
        print("No exams to score. Import files first.")
        return 0
    if run.interrupted:
        return EXIT_INTERRUPTED
    print_score_run(run, entry, include)
    return 1 if run.failed else 0


# ---------------------------------------------------------------- trajectory


def _model_label(lib: Library, model_id: str) -> str:
    """The registry's label of a model (the demo model's 'not for clinical use')."""
    from mamview.core.models import registry

    for e in registry.list_models(lib):
        if e.model_id == model_id:
            return e.label or ("" if e.clinically_validated else "not clinically validated")
    return registry.DEMO_LABEL if model_id == "demo" else ""


def cmd_trajectory(args, lib: Library) -> int:
    """Change metrics of one woman's (or every woman's) risk trajectory: text, JSON or CSV."""
    from mamview.core.analytics import trajectory as tj
    from mamview.core.reports.csv_export import trajectory_rows, write_csv

    if bool(args.patient) == bool(args.all):
        raise CliError("name one PATIENT or use --all")
    from mamview.core.cache import reads

    db = open_db(lib, reading=True)
    try:
        if args.all:
            people = [(r["patient_key"], r["patient_id"]) for r in reads.list_patients(db)]
            people.sort(key=lambda p: p[1])
        else:
            people = [(k, args.patient) for k in patient_keys(db, args.patient)]
        model = reads.choose_model(lib, args.model, db)
        conflicts = reads.identity_conflicts(db, [k for k, _ in people])
        conflict_of = {pid: conflicts.get(key, "") for key, pid in people}
        results, states = [], {}
        for key, pid in people:
            points = tj.points_for_patient(db, key, model) if model else []
            results.append((pid, tj.analyze(points)))
            states[pid] = tj.exam_states(db, key, model) if model else []
    finally:
        db.close()
    from mamview.core import settings as user_settings

    rules = tj.FlagRules.from_thresholds(user_settings.load(lib.settings_file).thresholds_percent)
    results = [(pid, tj.analyze(rep.points, rules)) for pid, rep in results]
    labels = {mid: _model_label(lib, mid)
              for _, rep in results for mid in {p.model_id for p in rep.points}}
    if args.csv:
        write_csv(sys.stdout, [row for pid, rep in results
                               for row in trajectory_rows(pid, rep.points, labels, rules)])
        return 0
    if args.json:
        out = []
        for pid, rep in results:
            d = rep.as_dict()
            d["patient_id"] = pid
            d["identity_conflict"] = conflict_of.get(pid, "")
            d["model_labels"] = {m: labels[m] for m in {p.model_id for p in rep.points}}
            d["model"] = model.identity() if model else None
            d["exams"] = [{"exam_key": s.exam_key, "exam_date": when.isoformat() if when else None,
                           **s.as_dict()} for when, s in states[pid]]
            out.append(d)
        print_json(out if args.all else out[0])
        return 0
    for pid, rep in results:
        print(f"Patient {term(pid)}")
        if conflict_of.get(pid):
            print(term(f"  ⚠ {conflict_of[pid]}"))
        for mid in sorted({p.model_id for p in rep.points}):
            if labels.get(mid):
                print(term(f"  Model {mid}: {labels[mid]}"))
        for label, value in rep.display_rows():
            print(term(f"  {label + ':':<36} {value}"))
        stale = sum(s.state == ScoreState.STALE for _, s in states[pid])
        if stale:
            print(f"  {stale} exam(s) {STALE_REASON} (run `mamview score`)")
        if not rep.points:
            print("  Run `mamview score` to compute risks.")
    return 0


def print_trajectory_tables(lib: Library, model_id: str, label: str = "",
                            patient_ids: list[str] | None = None) -> None:
    """Every woman's trajectory under `model_id` as a compact table: one row per exam with
    its date, 5-year risk, change since the prior scored exam and the flags as of that exam;
    an exam without a current score says why. `patient_ids`: only these women (None: all).
    `label` (the demo model's) goes at the top and the bottom, so it cannot scroll out of
    sight."""
    from mamview.core import settings as user_settings
    from mamview.core.analytics import trajectory as tj
    from mamview.core.cache import reads

    rules = tj.FlagRules.from_thresholds(user_settings.load(lib.settings_file).thresholds_percent)
    banner = f"── {label} ──" if label else ""
    if banner:
        print()
        print(term(banner))
    db = open_db(lib, reading=True)
    try:
        wanted = None if patient_ids is None else set(patient_ids)
        for r in sorted(reads.list_patients(db), key=lambda r: r["patient_id"]):
            if wanted is not None and r["patient_id"] not in wanted:
                continue
            states = tj.exam_states(db, r["patient_key"], model_id)
            points = tj.analyze(tj.points_for_patient(db, r["patient_key"], model_id), rules).points
            as_of = {p.exam_key: (p, tj.analyze(points[:k + 1], rules))
                     for k, p in enumerate(points)}
            print()
            print(term(f"{r['patient_id']}  {r['name'] or ''}  ({len(states)} exam"
                       f"{'s' if len(states) != 1 else ''})"))
            print(f"  {'Exam date':<10}  {'5-yr risk':>9}  {'Change':>9}  "
                  f"Flags ({rules.label})")
            for when, s in states:
                day = when.isoformat() if when else "(no date)"
                if s.exam_key in as_of:
                    p, rep = as_of[s.exam_key]
                    change = (f"{rep.change_since_prior:+.2f} pp"
                              if rep.change_since_prior is not None else "—")
                    risk = f"{p.risk_percent:.1f}%"
                    flags = ", ".join(rep.flags) or "—"
                    if p.domain:
                        flags += f" (outside the validated domain: {p.domain})"
                    print(term(f"  {day:<10}  {risk:>9}  {change:>9}  {flags}"))
                else:
                    why = s.reason if s.state in (ScoreState.UNSCORABLE, ScoreState.STALE) \
                        else s.state.value
                    print(term(f"  {day:<10}  {'—':>9}  {'':>9}  not scored: {why}"))
    finally:
        db.close()
    if banner:
        print()
        print(term(banner))


# ---------------------------------------------------------------- cohort

def cmd_cohort(args, lib: Library) -> int:
    """Cases vs controls before the index exam, from cached scores or a --scores table."""
    from tqdm import tqdm

    from mamview.core.analytics import cohort

    excluded_before: dict[str, int] = {}
    try:
        outcomes = cohort.read_outcomes(args.outcomes)
        if args.scores:
            scores = cohort.read_score_table(args.scores)
            model = f"scores from {Path(args.scores).name} (not computed by mamview)"
        else:
            db = open_db(lib, reading=True)
            try:
                from mamview.core.cache import reads

                chosen = reads.choose_model(lib, args.model, db)
                model_id = chosen.model_id if chosen else None
                scores = None
                if model_id:
                    with tqdm(desc="Reading scores", unit="exam", file=sys.stderr) as bar:
                        scores, excluded_before = _current_score_table(db, chosen, bar.update)
                if scores is None or scores.empty:
                    raise CliError("no scores in the library: run `mamview score` first, "
                                       "or pass a table with --scores")
            finally:
                db.close()
            label = _model_label(lib, model_id)
            model = model_id + (f" — {label}" if label else "")
        stages = ["aligning exams to index", "yearly medians", "mixed model (percent scale)",
                  "mixed model (log scale)", "discrimination", "writing outputs"]
        with tqdm(total=len(stages), desc="Cohort analysis", unit="step", file=sys.stderr) as bar:
            def step(label):
                bar.set_postfix_str(label)
                if label in stages and stages.index(label) > 0:
                    bar.update(1)

            report = cohort.run_cohort(scores, outcomes, args.out, model=model,
                                       max_women_mixed=args.max_women_mixed,
                                       mixed_engine=args.mixed_engine, progress=step,
                                       excluded_before=excluded_before)
            bar.update(bar.total - bar.n)
    except cohort.CohortError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        print_json(report.as_dict())
        return 0
    _print_cohort(report)
    return 0


def _current_score_table(db, model, progress=None):
    """(table, women left out) of every dated exam with a *current* score of `model`: see
    `cohort.cached_scores` (stale scores and identity conflicts are left out)."""
    from mamview.core.analytics import cohort

    return cohort.cached_scores(db, model, progress)


def _print_cohort(report) -> None:
    # the model's name and the CSV's values come from outside: every one goes through term
    print(f"Model: {term(report.model)}")
    print(f"Women: {report.women} ({report.cases} cases, {report.controls} controls), "
          f"{report.exams} exams")
    for reason, n in report.excluded.items():
        print(f"  excluded: {term(reason)}: {n}")
    print("\nMedian 5-year risk (IQR) by years before the index exam:")
    print(f"  {'years':>5}  {'cases':>22}  {'controls':>22}")
    by = {(y["group"], y["year"]): y for y in report.yearly}
    for year in sorted({y["year"] for y in report.yearly}, reverse=True):
        cells = []
        for g in ("cases", "controls"):
            y = by.get((g, year))
            cells.append(f"{y['median']:.2f} ({y['q1']:.2f}–{y['q3']:.2f}) n={y['n']}" if y else "-")
        print(f"  {-year:>5}  {cells[0]:>22}  {cells[1]:>22}")
    for scale, m in report.mixed_models.items():
        print(f"\nMixed model ({m['scale']}; random intercept and slope per woman; "
              f"{m['women']} women):")
        for g in ("cases", "controls"):
            lo, hi = m[f"slope_{g}_ci"]
            print(f"  slope {g:<8} {m[f'slope_{g}']:+.3f} {m['slope_unit']} (95% CI {lo:+.3f} "
                  f"to {hi:+.3f})")
        print(f"  difference      {m['slope_difference']:+.3f} (p = {m['slope_difference_p']:.2g})"
              + ("" if m["converged"] else "  [did not converge]"))
        if m["note"]:
            print(f"  {term(m['note'])}")
    print("\nDiscrimination (AUC, DeLong 95% CI):")
    names = {"index_score": "index score", "change_2y": "change over 2 years",
             "index_score_same_women": "index score (same women)", "both": "both (cross-validated)"}
    for key, a in report.auc.items():
        if a["auc"] is None:
            print(f"  {names.get(key, key):<28} not estimable ({a['n_cases']} cases, "
                  f"{a['n_controls']} controls)")
            continue
        print(f"  {names.get(key, key):<28} {a['auc']:.3f} ({a['ci'][0]:.3f}–{a['ci'][1]:.3f}); "
              f"{a['n_cases']} cases / {a['n_controls']} controls")
    for note in report.notes:
        print(f"Note: {term(note)}")
    if report.files:
        print("\nWrote: " + ", ".join(term(Path(p).name) for p in report.files.values())
              + f" in {term(Path(report.files['results_csv']).parent)}")


# ---------------------------------------------------------------- DICOM SR


def cmd_sr(args, lib: Library) -> int:
    """A Comprehensive SR per scored exam into --out, optionally sent to a PACS."""
    from mamview.core import settings as user_settings
    from mamview.core.reports import sr

    root = args.uid_root if args.uid_root is not None else (
        user_settings.load(lib.settings_file).uid_root)
    try:
        root = sr.check_uid_root(root or "")
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    node = None
    if args.send:
        from mamview.core.net.nodes import PacsNode

        try:
            node = PacsNode.parse(args.send)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    db = open_db(lib, reading=True)  # writes only into --out
    written, skipped = [], []
    try:
        from mamview.core.cache import reads

        if reads.exam_exists(db, args.target):
            exams = [args.target]
        else:
            exams = reads.exam_keys_of(db, patient_keys(db, args.target), args.date)
            if not exams:
                raise CliError(f"{args.target} has no exam" +
                                   (f" on {args.date}" if args.date else ""))
        model = reads.choose_model(lib, args.model, db)
        for ek in exams:
            try:
                if model is None:
                    raise ValueError(f"exam {ek} has no computed score")
                path = sr.write_exam_sr(db, ek, args.out, model=model,
                                        model_name=model.name or model.model_id,
                                        model_label=_model_label(lib, model.model_id),
                                        uid_root=root)
            except ValueError as exc:
                skipped.append(str(exc))
                continue
            written.append(path)
    finally:
        db.close()
    for path in written:
        print(f"Wrote {term(path)}")
    for msg in skipped:
        print(f"Skipped: {term(msg)}")
    if node and written:
        from mamview.core.net.nodes import NetError
        from mamview.core.net.qr import send_files

        try:
            summary = send_files(node, written, args.our_ae)
        except NetError as exc:
            raise CliError(str(exc)) from exc
        print(term(f"Sent {summary.sent} of {len(written)} to "
                       f"{node.ae_title}@{node.host}:{node.port}"))
        for path, why in summary.failed:
            print(term(f"Not sent: {path}: {why}"))
        if summary.failed:
            return 1
    if not written:
        raise CliError("no SR written: run `mamview score` first")
    return 0
