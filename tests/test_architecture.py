"""Rules of the house that a machine can check (docs: ../shared/design/architecture.md).

Static checks read every source file's syntax tree (fast, nothing imported): no Qt under
`mamview/core`, no SQL or sqlite outside `mamview/core/cache`, the layout the docs describe.
The same import rules are import-linter contracts in pyproject.toml, run here too. At run time
tests/core/test_core_without_qt.py imports the core with Qt blocked; the tests below with
subprocesses check that the window and the registry never pull in torch.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mamview"
CACHE = PACKAGE / "core" / "cache"

QT = ("PySide6", "PySide2", "PyQt5", "PyQt6", "shiboken6", "shiboken2", "pyqtgraph", "qtpy",
      "mamview.qt")
SQLITE = ("sqlite3", "sqlite_utils", "apsw")

# an SQL statement in a string: a keyword that starts one, in the shape it takes there (so
# "Select a woman first" or a docstring's "Create the folders" are not statements)
SQL_STATEMENT = re.compile(
    r"""^\s*(?:
          SELECT\b.*\bFROM\s+\w+\s*(?:$|[;),]|(?:\w+\s+)?(?:WHERE|JOIN|LEFT|INNER|CROSS|ORDER
                                                      |GROUP|LIMIT|UNION|ON)\b)
        | INSERT\s+(?:OR\s+\w+\s+)?INTO\b
        | REPLACE\s+INTO\b
        | UPDATE\s+(?:OR\s+\w+\s+)?[\w"]+\s+SET\b
        | DELETE\s+FROM\b
        | (?:CREATE|DROP)\s+(?:TEMP\w*\s+|UNIQUE\s+|VIRTUAL\s+)?(?:TABLE|INDEX|VIEW|TRIGGER)\b
        | ALTER\s+TABLE\b
        | PRAGMA\s+\w+
        | BEGIN(?:\s+(?:DEFERRED|IMMEDIATE|EXCLUSIVE))?(?:\s+TRANSACTION)?\s*;?\s*$
        | (?:COMMIT|ROLLBACK)\s*;?\s*$
        | WITH\s+(?:RECURSIVE\s+)?\w+(?:\s*\([^)]*\))?\s+AS\s*\(
        | VACUUM\b | ATTACH\s+DATABASE\b
    )
    | \sFROM\s+\w+(?:\s+\w+)?\s+WHERE\s
    | \sJOIN\s+\w+(?:\s+\w+)?\s+ON\s+\w+\.\w+\s*=
    """, re.IGNORECASE | re.VERBOSE | re.DOTALL)
# what runs SQL: on a connection, a sqlite_utils Database, a cursor
SQL_CALLS = ("execute", "executemany", "executescript", "query")


def sources(folder: Path) -> list[Path]:
    """Every Python file under `folder`, sorted."""
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> ast.Module:
    """The file's syntax tree (each file is read once for all the checks)."""
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import in the file (or in `source`, as if it were that
    file), relative ones made absolute; for `from a import b` both `a` and `a.b` (b may be a
    module)."""
    tree = parsed(path) if source is None else ast.parse(source, str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names if a.name != "*"]
    return found


def _is(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def forbidden_imports(files: list[Path], roots: tuple[str, ...]) -> list[str]:
    return sorted({f"{p.relative_to(ROOT)}:{line}: imports {mod}"
                   for p in files for line, mod in imports(p) if _is(mod, roots)})


def _string_texts(tree: ast.AST):
    """(line, text) of every string literal; an f-string with each {…} as 'x'."""
    inside_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
            inside_fstrings.update(id(v) for v in node.values)
            yield node.lineno, text
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in inside_fstrings):
            yield node.lineno, node.value


def _allowed_call(path: Path, call: ast.Call) -> bool:
    # torch attention layers name a sub-module `query` (core/models/mirai.py: self.query(x));
    # exactly that is allowed: a method of `self` called inside mamview/core/models
    return (call.func.attr == "query" and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "self"
            and (PACKAGE / "core" / "models") in path.parents)


def sql_findings(path: Path, source: str | None = None) -> list[str]:
    """Every SQL statement in a string literal and every call that runs SQL in one file."""
    tree = parsed(path) if source is None else ast.parse(source, str(path))
    where = path.relative_to(ROOT) if path.is_absolute() and ROOT in path.parents else path
    found = [f"{where}:{line}: SQL in a string: {text.strip()[:60]!r}"
             for line, text in _string_texts(tree) if SQL_STATEMENT.search(text)]
    found += [f"{where}:{node.lineno}: calls .{node.func.attr}()"
              for node in ast.walk(tree)
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in SQL_CALLS and not _allowed_call(path, node)]
    return sorted(set(found))


def outside_the_cache() -> list[Path]:
    """The project's own code that must not speak SQL: the package but core/cache, and tools/
    (tests may read the real database files they check)."""
    return [p for p in sources(PACKAGE) + sources(ROOT / "tools") if CACHE not in p.parents]


# ---------------------------------------------------------------- no Qt in the core


def test_no_module_under_core_imports_qt():
    files = sources(PACKAGE / "core")
    assert len(files) > 30 and PACKAGE / "core" / "cache" / "reads.py" in files
    assert forbidden_imports(files, QT) == []


@pytest.mark.parametrize("part", ["core/services", "core/session.py"])
def test_the_services_and_the_session_import_no_qt(part):
    where = PACKAGE / part
    if part.endswith(".py"):
        if not where.exists():
            pytest.skip(f"mamview/{part} is not written yet")
        files = [where]
    else:
        files = sources(where)
        assert files, f"mamview/{part} holds no modules"
    assert forbidden_imports(files, QT) == []


def test_the_import_check_sees_every_form_of_import():
    probe = PACKAGE / "core" / "net" / "probe.py"  # never written: its place resolves `...`
    found = {mod for _, mod in imports(probe, (
        "import PySide6.QtCore\nfrom pyqtgraph import PlotWidget\n"
        "def f():\n    from ...qt import bridge\n"
        "from mamview import qt\nimport json\nfrom . import scp\n"))}
    assert "mamview.core.net.scp" in found and "json" in found
    assert {m for m in found if _is(m, QT)} == {
        "PySide6.QtCore", "pyqtgraph", "pyqtgraph.PlotWidget", "mamview.qt", "mamview.qt.bridge"}
    assert not _is("mamview.qtx", QT) and _is("sqlite_utils.db", SQLITE)


# ---------------------------------------------------------------- SQL only in core/cache


def test_no_module_outside_the_cache_imports_sqlite():
    files = outside_the_cache()
    assert PACKAGE / "core" / "net" / "scp.py" in files and CACHE / "db.py" not in files
    assert forbidden_imports(files, SQLITE) == []


def test_no_module_outside_the_cache_holds_or_runs_sql():
    found = [f for p in outside_the_cache() for f in sql_findings(p)]
    assert found == []


def test_the_sql_check_finds_statements_and_calls_but_not_english():
    path = ROOT / "mamview" / "core" / "net" / "example.py"
    caught = sql_findings(path, (
        'conn.execute("SELECT 1 FROM images WHERE sop_instance_uid = ? AND NOT missing", [u])\n'
        'db.executemany("insert into scores (k) values (?)", rows)\n'
        'q = f"SELECT DISTINCT exam_key FROM images WHERE path IN ({marks})"\n'
        's = "UPDATE images SET missing = 1"\n'
        'db.query(s)\n'
        't = """\n    CREATE TABLE t (a)"""\n'
        'p = "PRAGMA journal_mode"\n'
        'b = "BEGIN IMMEDIATE"\n'
        'n = "SELECT count(*) FROM sqlite_master"\n'
        'j = "e.exam_date FROM exams e JOIN patients p ON p.patient_key = e.patient_key"\n'))
    assert len([c for c in caught if "SQL in a string" in c]) == 9, caught
    assert len([c for c in caught if "calls ." in c]) == 3, caught
    assert sql_findings(path, (
        '"""Create the library folders; delete preview temp files; update the driver."""\n'
        'print("Select a woman first.", "select → ", "Drop-in for the service")\n'
        'print("Select the files from a folder you trust; with them as (the inputs)")\n'
        'x = f"begin {n} of {m}"\n'
        'self.query(x)  # outside core/models this too is reported\n')) == [
        "mamview/core/net/example.py:5: calls .query()"]
    models = ROOT / "mamview" / "core" / "models" / "example.py"
    assert sql_findings(models, "y = self.query(x)\n") == []
    assert sql_findings(models, "y = db.query(x)\n") != []


# ---------------------------------------------------------------- the layout


LAYOUT = ("mamview/cli/__init__.py", "mamview/bench/__init__.py",
          "mamview/core/services/__init__.py", "mamview/core/reports/__init__.py",
          "mamview/core/models/official/__init__.py", "mamview/core/models/converted.py",
          "tools/train_demo.py")


@pytest.mark.parametrize("path", LAYOUT)
def test_the_layout_is_what_the_docs_describe(path):
    assert (ROOT / path).is_file(), f"{path} is missing (see ../shared/design/architecture.md)"


# ---------------------------------------------------------------- import-linter


def test_the_import_linter_contracts_hold():
    pytest.importorskip("importlinter")
    tool = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which(
        "lint-imports")
    assert tool, "import-linter is installed but its lint-imports command is not on the path"
    out = subprocess.run([tool, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout, out.stdout

# What the window needs to start and to name the model it will use: none of it may pull in torch
# (about 1 s and 300 MB); the model loads in the inference process.
TORCH_FREE = ("mamview.core.models.registry", "mamview.core.cache.reads", "mamview.core.worklist",
              "mamview.core.reference", "mamview.qt.trajectory_chart", "mamview.qt.main_window",
              "mamview.cli")


def _run_ok(code: str) -> None:
    """Run `code` in a fresh interpreter (offscreen Qt); it must exit 0 and print 'ok'."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_window_and_the_registry_listing_import_without_torch():
    code = ("import importlib, sys\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name + ' imported torch'\n"
            "print('ok')\n")
    _run_ok(code)


def test_the_window_imports_neither_pandas_nor_pydicom_and_pandas_still_works_after():
    """Start-up cost: sqlite-utils would pull in pandas (0.25–0.33 s) and the preview and
    worklist modules pydicom (0.2 s) before the window is shown; both load when needed."""
    code = ("import sys\n"
            "import mamview.qt.main_window, mamview.qt.app\n"
            "assert 'pandas' not in sys.modules and 'pydicom' not in sys.modules, "
            "[m for m in ('pandas', 'pydicom') if m in sys.modules]\n"
            "import pandas, sqlite_utils.db\n"
            "from mamview.core.analytics import cohort\n"
            "assert cohort.pd is pandas and sqlite_utils.db.pd is None\n"
            "print('ok')\n")
    _run_ok(code)


def test_the_registry_lists_models_without_torch(tmp_path):
    code = ("import sys\n"
            "from mamview.core.models import registry\n"
            "from mamview.core.paths import library\n"
            f"entries = registry.list_models(library({str(tmp_path)!r}))\n"
            "assert any(e.model_id == 'demo' and e.available for e in entries), entries\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n")
    _run_ok(code)


WINDOW_START = """
import sys, time
from mamview.core.paths import library
from mamview.qt.app import application
from mamview.qt.main_window import MainWindow

def main():
    app = application()
    win = MainWindow(library(sys.argv[1]), start_inference=False)
    win.show()
    deadline = time.monotonic() + 100
    while not win.check_results and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    gpu = [r for r in win.check_results if r.name == "gpu"]
    print(gpu[0].level if gpu else "no gpu check", "torch" in sys.modules)
    win.shutdown()

if __name__ == "__main__":
    main()
"""


def test_the_window_starts_and_checks_the_gpu_without_importing_torch(tmp_path):
    script = tmp_path / "start.py"
    script.write_text(WINDOW_START)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "home")], capture_output=True,
                         text=True, env=env, timeout=150)
    assert out.returncode == 0, out.stderr
    # the probe ran (in a child process) and found torch usable; the window never loaded it
    assert out.stdout.split()[-2:] == ["ok", "False"], out.stdout + out.stderr
