"""SQLite exam cache."""

import sys as _sys


def _import_sqlite_utils() -> None:
    """sqlite-utils imports pandas when it can (0.25–0.33 s of every window start, measured),
    only to type DataFrame inserts this app never makes: hide pandas for that one import, here
    where every cache module's import passes first, unless something loaded it already (a later
    `import pandas` works as usual)."""
    if "sqlite_utils" in _sys.modules or "pandas" in _sys.modules:
        return
    _sys.modules["pandas"] = None  # type: ignore[assignment] - the import fails fast
    try:
        import sqlite_utils  # noqa: F401
    finally:
        del _sys.modules["pandas"]


_import_sqlite_utils()
