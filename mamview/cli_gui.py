"""Command-line commands of the gui area; `mamview.cli` calls :func:`register`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, bench: argparse._SubParsersAction,
             parser: argparse.ArgumentParser) -> None:
    """Add this area's commands to `sub`, its benchmarks to `bench` (`mamview bench …`);
    `parser` is the top level (for defaults such as what a bare `mamview` runs)."""
