"""What every `mamview bench …` report shares: the machine line and the aligned text table."""

from __future__ import annotations

import os
import platform


def machine_line() -> str:
    """Architecture, core count and Python version: the context every figure needs."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def format_rows(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as aligned, indented text lines."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def report(what: str, fig: dict, rows: list[tuple[str, str]]) -> str:
    """The text report of benchmark `what`: a title line, then the machine and `rows`."""
    return f"mamview bench {what}\n" + format_rows([("machine", fig["machine"]), *rows])
