"""Command line: `mamview [--home DIR] COMMAND …`.

GUI commands import the Qt layer lazily so the headless commands work without a display.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Sequence

from mamview import __version__
from mamview.core import paths


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _open_db(lib: paths.Library):
    from mamview.core.cache.db import connect

    try:
        lib.ensure()
    except OSError as exc:
        raise CliError(f"the library folder {lib.home} is not usable: {exc}") from exc
    return connect(lib.database)


def _patient_keys(db, patient_id: str | None) -> list[str] | None:
    """Cache keys of the woman with this PatientID (None: everyone); CliError if unknown."""
    from mamview.core.cache import store

    if not patient_id:
        return None
    keys = store.find_patient_keys(db, patient_id)
    if not keys:
        raise CliError(f"no patient with ID {patient_id!r} in the library")
    return keys


def _drive(gen, *, quiet: bool = False):
    """Run an import-style event generator with a tqdm bar per phase; return its result."""
    from tqdm import tqdm

    from mamview.core.ingest import Progress

    bars: dict[str, tqdm] = {}
    labels = {"indexing": "Indexing headers", "previews": "Making previews"}
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            if quiet or not isinstance(ev, Progress) or ev.phase not in labels:
                continue
            bar = bars.get(ev.phase)
            if bar is None:
                bar = bars[ev.phase] = tqdm(
                    total=ev.total, desc=labels[ev.phase], unit="file", file=sys.stderr,
                    leave=True, dynamic_ncols=True,
                )
            bar.update(ev.done - bar.n)
    finally:
        for bar in bars.values():
            bar.close()


def _print_summary(summary) -> None:
    t = summary.totals
    print(
        f"Imported {summary.files_seen} files in {summary.seconds:.1f} s: "
        f"{summary.added} new images, {summary.updated} re-read, {summary.unchanged} unchanged."
    )
    print(
        f"Library: {t.get('patients', 0)} patients, {t.get('exams', 0)} exams, "
        f"{t.get('images', 0)} images."
    )
    if summary.previews or summary.preview_failures:
        print(f"Previews made: {summary.previews}")
    skipped = {k: v for k, v in summary.skipped.items() if v}
    if skipped:
        print(f"Skipped {sum(skipped.values())} files:")
        for reason, n in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:6d}  {reason}")
        print("Run `mamview problems` for the list of files and reasons.")
    if summary.missing:
        print(f"{summary.missing} indexed files are missing on disk (see `mamview problems`).")


# ---------------------------------------------------------------- commands


def cmd_import(args, lib: paths.Library) -> int:
    from mamview.core.ingest import run_import

    try:
        summary = _drive(
            run_import(lib, args.paths, make_previews=not args.no_previews), quiet=args.json
        )
    except KeyboardInterrupt:
        print("\nImport interrupted; what was indexed is kept. Run the same command again "
              "to complete it.", file=sys.stderr)
        return 130
    if args.json:
        _print_json(summary.as_dict())
    else:
        _print_summary(summary)
    return 0


def cmd_demo_data(args, lib: paths.Library) -> int:
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
        _print_json(info)
    else:
        print(f"Wrote {summary.images} images of {summary.exams} exams for "
              f"{summary.patients} women to {args.out}")
    return 0


def cmd_patients(args, lib: paths.Library) -> int:
    from mamview.core.cache import store

    db = _open_db(lib)
    rows = store.list_patients(db)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("The library is empty. Import files with `mamview import PATH` "
              "or load the demo with `mamview demo`.")
        return 0
    print(f"{'Patient ID':<16} {'Name':<24} {'Birth':<10} {'Exams':>5}  First       Last")
    for r in rows:
        print(f"{r['patient_id']:<16} {r['name'][:24]:<24} {r['birth_date']:<10} "
              f"{r['exams']:>5}  {r['first_exam'] or '-':<10}  {r['last_exam'] or '-'}")
    return 0


def cmd_exams(args, lib: paths.Library) -> int:
    from mamview.core.cache import store

    db = _open_db(lib)
    exams = store.list_exams(db, _patient_keys(db, args.patient))
    if args.json:
        for e in exams:
            e["images"] = [
                {k: im[k] for k in ("label", "laterality", "laterality_source", "view",
                                    "view_source", "view_modifiers", "is_standard",
                                    "presentation_intent", "missing", "decode_error",
                                    "sop_instance_uid", "path")}
                for im in e["images"]
            ]
        _print_json(exams)
        return 0
    for e in exams:
        labels = " ".join(im["label"] + ("*" if not im["is_standard"] else "")
                          for im in e["images"])
        state = "complete" if e["complete"] else e["incomplete_reason"]
        print(f"{e['patient_id']:<16} {e['exam_date'] or '(no date)':<10}  "
              f"{len(e['images']):2d} images  {labels:<32} {state}")
    return 0


def cmd_problems(args, lib: paths.Library) -> int:
    from mamview.core.cache import store

    db = _open_db(lib)
    rows = store.list_problems(db)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("No problems recorded.")
    for r in rows:
        print(f"{r['reason']:<22} {r['path']}" + (f"\n{'':<22} {r['detail']}" if r["detail"] else ""))
    return 0


def cmd_models(args, lib: paths.Library) -> int:
    from mamview.core.models import registry

    if args.action == "install":
        from mamview.core.models.snapshots import UnsafeSnapshotError, convert_release

        if not args.path:
            raise CliError("models install needs the path of the release folder or zip")
        try:
            out = convert_release(args.path, lib.ensure().models)
        except (UnsafeSnapshotError, ValueError, OSError) as exc:
            raise CliError(f"could not install {args.path}: {exc}") from exc
        print(f"Installed Mirai into {out}")
        return 0
    entries = registry.list_models(lib)
    if args.json:
        _print_json([vars(e) for e in entries])
        return 0
    for e in entries:
        state = "available" if e.available else f"unavailable: {e.reason}"
        print(f"{e.model_id:<6} {e.name:<34} {state}")
        if e.available and e.label:
            print(f"{'':<6} {e.label}")
        if args.action == "info" and e.available:
            print(f"{'':<6} folder: {e.folder}")
            print((e.folder / "config.json").read_text())
    return 0


def cmd_check(args, lib: paths.Library) -> int:
    from mamview.core import firstrun
    from mamview.core import settings

    results = firstrun.run_checks(lib, device_preference=settings.load(lib.settings_file).device)
    if args.json:
        _print_json([vars(r) for r in results])
    else:
        print(f"Library: {lib.home}")
        print(firstrun.format_results(results))
    return 0 if all(r.ok for r in results) else 1


def cmd_bench(args, lib: paths.Library) -> int:
    from mamview import bench

    return bench.main(args, lib)


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree (exposed for tests and docs)."""
    p = argparse.ArgumentParser(
        prog="mamview",
        description="Serial screening mammograms beside an image-based 5-year risk trajectory.",
    )
    p.add_argument("--version", action="version", version=f"mamview {__version__}")
    p.add_argument("--home", metavar="DIR",
                   help="library folder (default: $MAMVIEW_HOME or the platform's data folder)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("import", help="index DICOM files, folders or DICOMDIRs into the library")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--no-previews", action="store_true", help="index headers only")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("demo-data", help="write a synthetic cohort of serial mammograms")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--patients", type=int, default=20)
    s.add_argument("--size", choices=("small", "full"), default="small")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_demo_data)

    s = sub.add_parser("patients", help="list the women in the library")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_patients)

    s = sub.add_parser("exams", help="list exams (of one woman, or all) with their views")
    s.add_argument("patient", nargs="?", metavar="PATIENT", help="PatientID")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_exams)

    s = sub.add_parser("problems", help="list files that were skipped, and why")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_problems)

    s = sub.add_parser("models", help="list, install or describe risk models")
    s.add_argument("action", choices=("list", "install", "info"))
    s.add_argument("path", nargs="?", metavar="PATH", help="release folder or zip (install)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("check", help="first-run checks: library folder, free disk, GPU or CPU")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("bench", help="measure performance figures")
    bsub = s.add_subparsers(dest="bench", metavar="WHAT", required=True)
    b = bsub.add_parser("import", help="header indexing and preview generation rates")
    b.add_argument("--patients", type=int, default=6)
    b.add_argument("--size", choices=("small", "full"), default="full")
    b.add_argument("--work", metavar="DIR", help="folder for the generated cohort (kept)")
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    b = bsub.add_parser("infer", help="seconds per exam on CPU (and GPU where present)")
    b.add_argument("--height", type=int, default=2048)
    b.add_argument("--width", type=int, default=1664)
    b.add_argument("--batch", type=int, nargs="+", default=None,
                   help="batch sizes (default: 1 on CPU; 1 8 32 on GPU)")
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    s.set_defaults(func=cmd_bench)

    # each area registers its own commands, so they can grow without touching this file
    for name in _EXTENSIONS:
        importlib.import_module(name).register(sub, bsub, p)
    return p


_EXTENSIONS = ("mamview.cli_gui", "mamview.cli_net", "mamview.cli_analytics")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mamview` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    lib = paths.library(args.home)
    try:
        return args.func(args, lib) or 0
    except CliError as exc:
        print(f"mamview: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
