"""Command-line commands of the analytics area; `mamview.cli` calls :func:`register`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mamview import cli
from mamview.core.paths import Library


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction,
             parser: argparse.ArgumentParser) -> None:
    """Add this area's commands to `sub`, its benchmarks to `bench` (`mamview bench …`);
    `parser` is the top level (for defaults such as what a bare `mamview` runs)."""
    s = sub.add_parser("score", help="compute 1- to 5-year risk for every complete exam")
    s.add_argument("--patient", metavar="ID", help="only this woman's exams")
    s.add_argument("--model", default="auto", help="model id (default: best installed)")
    s.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    s.add_argument("--batch-size", type=int, default=4)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("trajectory", help="change metrics of one woman's (or every woman's) "
                       "risk trajectory")
    s.add_argument("patient", nargs="?", metavar="PATIENT", help="PatientID")
    s.add_argument("--all", action="store_true", help="every woman in the library")
    s.add_argument("--model", default=None, help="model id (default: the one that scored most "
                   "of her exams)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true",
                     help="print CSV: one row per scored exam with the metrics as of that exam")
    s.set_defaults(func=cmd_trajectory)


def cmd_score(args, lib: Library) -> int:
    from tqdm import tqdm

    from mamview.core.cache import store
    from mamview.core.inference import (ExamScored, ExamUnscorable, GenerationDone,
                                        InferenceService, ScoreFailed, ServiceError)
    from mamview.core.models import registry
    from mamview.core.models.base import ModelUnavailable

    db = cli._open_db(lib)
    exams = [e["exam_key"] for e in store.list_exams(db, cli._patient_keys(db, args.patient))]
    db.close()
    try:
        entry = registry.resolve(lib, args.model)
    except ModelUnavailable as exc:
        raise cli.CliError(str(exc)) from exc
    if not exams:
        print("No exams to score. Import files first.")
        return 0
    svc = InferenceService(lib.database, lambda dev: registry.load(entry, dev), device=args.device,
                           batch_size=args.batch_size)
    computed = cached = 0
    unscorable: dict[str, int] = {}
    failed = []
    gen = svc.submit(exams)
    try:
        with tqdm(total=len(exams), desc=f"Scoring ({entry.model_id})", unit="exam",
                  file=sys.stderr) as bar:
            while True:
                ev = svc.events.get()
                if isinstance(ev, ServiceError):
                    raise cli.CliError(ev.message)
                if isinstance(ev, ExamScored):
                    cached += ev.cached
                    computed += not ev.cached
                    bar.update(1)
                elif isinstance(ev, ExamUnscorable):
                    unscorable[ev.reason] = unscorable.get(ev.reason, 0) + 1
                    bar.update(1)
                elif isinstance(ev, ScoreFailed):
                    failed.append(ev)
                    bar.update(1)
                elif isinstance(ev, GenerationDone) and ev.generation == gen:
                    break
    except KeyboardInterrupt:
        print("\nInterrupted; finished exams are kept and will not be computed again.",
              file=sys.stderr)
        return 130
    finally:
        svc.shutdown()
    print(f"Model: {entry.name}" + (f" — {entry.label}" if entry.label else ""))
    print(f"Device: {svc.device_label}")
    print(f"Scored {computed + cached} exams ({computed} computed, {cached} already in the cache).")
    for reason, n in sorted(unscorable.items()):
        print(f"Not scored, {reason}: {n}")
    for ev in failed:
        print(f"Failed: {ev.exam_key}: {ev.message}")
    return 1 if failed else 0


# ---------------------------------------------------------------- trajectory


def _model_label(lib: Library, model_id: str) -> str:
    """The registry's label of a model (the demo model's 'not for clinical use')."""
    from mamview.core.models import registry

    for e in registry.list_models(lib):
        if e.model_id == model_id:
            return e.label or ("" if e.clinically_validated else "not clinically validated")
    return registry.DEMO_LABEL if model_id == "demo" else ""


def cmd_trajectory(args, lib: Library) -> int:
    from mamview.core.analytics import trajectory as tj
    from mamview.core.analytics.export import trajectory_rows, write_csv

    if bool(args.patient) == bool(args.all):
        raise cli.CliError("name one PATIENT or use --all")
    db = cli._open_db(lib)
    try:
        if args.all:
            people = [(r["patient_key"], r["patient_id"]) for r in
                      db.query("SELECT patient_key, patient_id FROM patients ORDER BY patient_id")]
        else:
            people = [(k, args.patient) for k in cli._patient_keys(db, args.patient)]
        results = []
        for key, pid in people:
            points = tj.points_for_patient(db, key, args.model)
            results.append((pid, tj.analyze(points)))
    finally:
        db.close()
    labels = {mid: _model_label(lib, mid)
              for _, rep in results for mid in {p.model_id for p in rep.points}}
    if args.csv:
        write_csv(sys.stdout, [row for pid, rep in results
                               for row in trajectory_rows(pid, rep.points, labels)])
        return 0
    if args.json:
        out = []
        for pid, rep in results:
            d = rep.as_dict()
            d["patient_id"] = pid
            d["model_labels"] = {m: labels[m] for m in {p.model_id for p in rep.points}}
            out.append(d)
        cli._print_json(out if args.all else out[0])
        return 0
    for pid, rep in results:
        print(f"Patient {pid}")
        for mid in sorted({p.model_id for p in rep.points}):
            if labels.get(mid):
                print(f"  Model {mid}: {labels[mid]}")
        for label, value in rep.display_rows():
            print(f"  {label + ':':<36} {value}")
        if not rep.points:
            print("  Run `mamview score` to compute risks.")
    return 0
