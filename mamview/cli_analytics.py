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
