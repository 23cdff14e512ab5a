"""Command-line commands of the gui area; `mamview.cli` calls :func:`register`."""

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
    s = sub.add_parser("demo", help="generate the synthetic demo cohort into the library and load it")
    s.add_argument("--patients", type=int, default=20)
    s.add_argument("--size", choices=("small", "full"), default="small")
    s.set_defaults(func=cmd_demo)


def cmd_demo(args, lib: Library) -> int:
    from mamview.core.demo_data import generate_cohort
    from mamview.core.ingest import run_import

    lib.ensure()
    out = lib.home / "demo-cohort"
    if not (out / "images.csv").exists():
        print(f"Generating a synthetic demo cohort of {args.patients} women in {out} …")
        generate_cohort(out, n_patients=args.patients, size=args.size, seed=0)
    # the patient folders only: the ground-truth CSVs beside them are not images to report
    summary = cli._drive(run_import(lib, sorted(p for p in out.iterdir() if p.is_dir())))
    cli._print_summary(summary)
    print("\nSynthetic data, not patients. Try `mamview patients` and `mamview exams DEMO0001`.")
    return 0
