"""Commands of the library area: `import`, `demo-data`, `patients`, `exams`, `problems`,
`check`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mamview.cli.common import (EXIT_INTERRUPTED, EXIT_PARTIAL, CliError, drive,
                                ensure_library, open_db, patient_keys, print_json, print_summary,
                                term)
from mamview.core.domain import ScoreState
from mamview.core.paths import Library


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's commands to `sub`."""
    s = sub.add_parser("import", help="index DICOM files, folders or DICOMDIRs into the library")
    s.add_argument("paths", nargs="+", metavar="PATH",
                   help="DICOM files, folders (searched recursively) or DICOMDIR files")
    s.add_argument("--no-previews", action="store_true", help="index headers only")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("demo-data", help="write a synthetic cohort of serial mammograms")
    s.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write to: empty, new, or an earlier demo cohort (not the "
                   "library; import it with `mamview import DIR`)")
    s.add_argument("--patients", type=int, default=20, metavar="N",
                   help="number of women (default 20)")
    s.add_argument("--size", choices=("small", "full"), default="small",
                   help="image matrix: small (about 512 rows, fast) or full (detector size, "
                   "e.g. 3328×2560); default small")
    s.add_argument("--seed", type=int, default=0, metavar="N",
                   help="random seed, 0 to 4294967295 (default 0): the same seed writes the same "
                   "cohort. PatientIDs are DEMO0001, DEMO0002 … for seed 0 and D<seed>-0001 … "
                   "(e.g. D7-0001) for others, so cohorts of different seeds never merge")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("patients", help="list the women in the library")
    s.add_argument("--json", action="store_true",
                   help="print as JSON (with each woman's identity conflict, if any)")
    s.set_defaults(func=cmd_patients)

    s = sub.add_parser("exams", help="list exams (of one woman, or all) with their views")
    s.add_argument("patient", nargs="?", metavar="PATIENT", help="PatientID")
    s.add_argument("--model", default=None,
                   help="whose scores to report (default: the settings' model, else the best installed)")
    s.add_argument("--json", action="store_true", help="print as JSON (with each exam's score state)")
    s.set_defaults(func=cmd_exams)

    s = sub.add_parser("problems", help="list files that were skipped, and why")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=cmd_problems)

    s = sub.add_parser("check", help="first-run checks: library folder, free disk, GPU or CPU")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    s.set_defaults(func=cmd_check)


def cmd_import(args, lib: Library) -> int:
    """Import what exists; a path that does not is named on stderr and the exit status is 1."""
    from mamview.core.ingest import run_import

    # checked here, not from the summary, so the exit status does not hang on a reason's wording
    missing = [p for p in args.paths if not os.path.exists(os.path.expanduser(p))]
    ensure_library(lib)
    try:
        summary = drive(
            run_import(lib, args.paths, make_previews=not args.no_previews), quiet=args.json
        )
    except KeyboardInterrupt:
        print("\nImport interrupted; what was indexed is kept. Run the same command again "
              "to complete it.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        print_json(summary.as_dict())
    else:
        print_summary(summary)
    for p in missing:
        print(f"mamview: not found: {term(p)} (no such file or folder)", file=sys.stderr)
    return EXIT_PARTIAL if missing else 0


def cmd_demo_data(args, lib: Library) -> int:
    """Write the synthetic cohort to --out (not into the library)."""
    from tqdm import tqdm

    from mamview.core.demo_data import generate_cohort

    with tqdm(total=None, desc="Writing demo cohort", unit="image", file=sys.stderr,
              disable=args.json) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = generate_cohort(
                Path(args.out), n_patients=args.patients, size=args.size, seed=args.seed,
                progress=progress,
            )
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(summary).items()}
    if args.json:
        print_json(info)
    else:
        print(f"Wrote {summary.images} images of {summary.exams} exams for "
              f"{summary.patients} women to {args.out}")
    return 0


def cmd_patients(args, lib: Library) -> int:
    """List the women in the library."""
    from mamview.core.cache import reads

    db = open_db(lib, reading=True)
    rows = reads.list_patients(db)
    conflicts = reads.identity_conflicts(db)
    if args.json:
        print_json([{**r, "identity_conflict": conflicts.get(r["patient_key"], "")} for r in rows])
        return 0
    if not rows:
        print("The library is empty. Import files with `mamview import PATH` "
              "or load the demo with `mamview demo`.")
        return 0
    print(f"{'Patient ID':<16} {'Name':<24} {'Birth':<10} {'Exams':>5}  First       Last")
    for r in rows:
        print(f"{term(r['patient_id']):<16} {term(r['name'])[:24]:<24} "
              f"{term(r['birth_date']):<10} {r['exams']:>5}  "
              f"{term(r['first_exam'] or '-'):<10}  {term(r['last_exam'] or '-')}")
        if r["patient_key"] in conflicts:
            print(f"{'':<16} ⚠ {conflicts[r['patient_key']]}")
    return 0


def cmd_exams(args, lib: Library) -> int:
    """List exams with their views and, per exam, the score state of the shown model
    (current | stale | pending | unscorable) with the stored score's model identity."""
    from mamview.core.cache import reads

    db = open_db(lib, reading=True)
    exams = reads.list_exams(db, patient_keys(db, args.patient))
    model = reads.choose_model(lib, args.model, db)
    states = reads.current_scores(db, [e["exam_key"] for e in exams], model) if model else {}
    members = reads.study_objects(db, [e["exam_key"] for e in exams])
    if args.json:
        for e in exams:
            e["images"] = [
                {k: im[k] for k in ("label", "laterality", "laterality_source", "view",
                                    "view_source", "view_modifiers", "is_standard",
                                    "presentation_intent", "domain", "missing", "decode_error",
                                    "sop_instance_uid", "path")}
                for im in e["images"]
            ]
            s = states.get(e["exam_key"])
            e["score"] = s.as_dict() if s else {"state": ScoreState.PENDING.value}
            e["model"] = model.identity() if model else None
            e["objects"] = [{k: o[k] for k in ("kind", "sop_class_uid", "modality",
                                               "sop_instance_uid", "path")}
                            for o in members.get(e["exam_key"], [])]
        print_json(exams)
        return 0
    for e in exams:
        labels = " ".join(im["label"] + ("*" if not im["is_standard"] else "")
                          for im in e["images"])
        state = "complete" if e["complete"] else e["incomplete_reason"]
        s = states.get(e["exam_key"])
        score = "" if s is None else f"  {_score_word(s)}"
        counts = reads.object_counts(members.get(e["exam_key"], []))
        others = ("  + " + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
                  if counts else "")
        print(term(f"{e['patient_id']:<16} {e['exam_date'] or '(no date)':<10}  "
                   f"{len(e['images']):2d} images  {labels:<32} {state}{score}{others}"))
    return 0


def _score_word(s) -> str:
    """One exam's score in a few words: '5-yr 2.1%', 'stale (recomputing: …)', 'pending'."""
    if s.five_year_percent is not None:
        return f"5-yr {s.five_year_percent:.1f}%"
    if s.state == ScoreState.STALE:
        return f"stale ({s.reason})"
    return s.state.value if s.state != ScoreState.UNSCORABLE else "not scorable"


def cmd_problems(args, lib: Library) -> int:
    """List the files that were skipped, and why."""
    from mamview.core.cache import reads

    db = open_db(lib, reading=True)
    rows = reads.list_problems(db) + reads.identity_problems(db)
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("No problems recorded.")
    for r in rows:
        print(f"{term(r['reason']):<22} {term(r['path'])}")
        if r["detail"]:
            print(f"{'':<22} {term(r['detail'])}")
    return 0


def cmd_check(args, lib: Library) -> int:
    """The first-run checks; exit status 1 when one fails."""
    from mamview.core import firstrun
    from mamview.core import settings

    results = firstrun.run_checks(lib, device_preference=settings.load(lib.settings_file).device)
    if args.json:
        print_json([vars(r) for r in results])
    else:
        print(f"Library: {lib.home}")
        print(firstrun.format_results(results))
    return 0 if all(r.ok for r in results) else 1
