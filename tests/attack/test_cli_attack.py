"""The command line under bad conditions: every failure is one line on stderr and a documented
exit status, never a traceback (issue 11, item 4 and the terminal part of 6).

The CLI runs for real: in a subprocess (`python -m mamview`) where the process itself matters
(exit status, what reaches stderr, a closed pipe, another user), in-process through
`mamview.cli.main` where only the output does. Libraries, DICOM files and SQLite files are real.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mamview.cli import main
from tests.factories import write_mammogram

# pydicom says so when a name holds an ESC that is no ISO 2022 escape: that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:Found unknown escape sequence")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
ESC_ID = "EVIL\x1b[2J"  # CSI "erase display"
ESC_NAME = "A\x1b]0;pwned\x07^B\x1b[31m"  # OSC "set window title", BEL, SGR red


def run(home: Path, *args: str, as_nobody: bool = False, cwd: Path | None = None,
        script: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`mamview --home HOME ARGS…` in a fresh process (stdout, stderr as bytes)."""
    entry = ["-c", script] if script else ["-m", "mamview"]
    cmd = [sys.executable, *entry, "--home", str(home), *args]
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", PYTHONDONTWRITEBYTECODE="1")
    if as_nobody:
        cmd = NOBODY + cmd
        env["HOME"] = str(cwd or tempfile.gettempdir())
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env=env,
                          cwd=cwd or tempfile.gettempdir())


def one_line(err: bytes | str) -> str:
    """The single `mamview: …` line of stderr; fails on a traceback or any other line."""
    text = err.decode("utf-8", "replace") if isinstance(err, bytes) else err
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mamview: "), text
    return lines[0]


@pytest.fixture
def shared():
    """A temp folder other users can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="mamview-cli-attack-"))
    d.chmod(0o755)
    if any(not p.stat().st_mode & stat.S_IXOTH for p in d.parents):
        shutil.rmtree(d)
        pytest.skip(f"other users cannot reach {d.parent} (set TMPDIR to a shared folder)")
    if not _nobody_can_run_mamview():
        shutil.rmtree(d)
        pytest.skip("user nobody cannot run this Python or import mamview (a private checkout)")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _nobody_can_run_mamview() -> bool:
    res = subprocess.run(NOBODY + [sys.executable, "-c", "import mamview.cli"], cwd="/",
                         capture_output=True, timeout=60)
    return res.returncode == 0


def _open_to_all(root: Path) -> None:
    """Readable, not writable, by other users (the library is made private by default)."""
    for dirpath, dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def _library_with(home: Path, files: Path, capsys) -> None:
    assert main(["--home", str(home), "import", "--json", "--no-previews", str(files)]) == 0
    capsys.readouterr()


# ---------------------------------------------------------------- missing paths


def test_import_of_a_missing_path_names_it_and_exits_1(tmp_path):
    missing = tmp_path / "no such folder"
    res = run(tmp_path / "lib", "import", "--json", "--no-previews", str(missing))
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert str(missing) in line and "not found" in line
    assert json.loads(res.stdout)["files_seen"] == 0


def test_a_mix_of_existing_and_missing_paths_imports_what_exists(tmp_path, capsys):
    good = write_mammogram(tmp_path / "files" / "a.dcm", patient_id="MIX1")
    missing = tmp_path / "gone.dcm"
    home = tmp_path / "lib"
    assert main(["--home", str(home), "import", "--json", "--no-previews",
                 str(good), str(missing)]) == 1
    assert str(missing) in one_line(capsys.readouterr().err)
    assert main(["--home", str(home), "patients", "--json"]) == 0
    assert [r["patient_id"] for r in json.loads(capsys.readouterr().out)] == ["MIX1"]


# ---------------------------------------------------------------- unusable library


@pytest.mark.parametrize("command", [
    ["import", "--json", "{files}"],
    ["demo", "--no-gui", "--patients", "1"],
    ["patients"],
    ["exams"],
    ["problems"],
    ["trajectory", "--all"],
    ["score"],
    ["models", "install", "{files}"],
    ["sr", "P1", "--out", "{out}"],
    ["cohort", "--outcomes", "{outcomes}", "--out", "{out}"],
])
def test_a_file_where_the_library_should_be_is_one_line_for_every_command(
        tmp_path, capsys, command):
    # a file in the way stops root too, unlike permission bits
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the library folder should go")
    files = tmp_path / "files"
    write_mammogram(files / "a.dcm")
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("patient_id,diagnosis_date\nP1,\n")
    values = {"files": str(files), "out": str(tmp_path / "out"), "outcomes": str(outcomes)}
    argv = [a.format(**values) for a in command]
    home = blocker / "lib"
    assert main(["--home", str(home), *argv]) == 2
    line = one_line(capsys.readouterr().err)
    assert str(home) in line and "internal error" not in line


def test_a_damaged_database_is_one_line_that_names_it(tmp_path):
    home = tmp_path / "lib"
    home.mkdir()
    (home / "cache.sqlite").write_bytes(b"this is not a database, " * 200)
    res = run(home, "patients")
    assert res.returncode == 2
    line = one_line(res.stderr)
    assert str(home / "cache.sqlite") in line and "damaged" in line


needs_other_user = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run as another user (permission bits do not stop root)")


@needs_other_user
def test_a_read_only_library_can_still_be_read(shared, capsys):
    files = shared / "files"
    write_mammogram(files / "a.dcm", patient_id="RO1", patient_name="READ^ONLY")
    home = shared / "lib"
    _library_with(home, files, capsys)
    _open_to_all(shared)
    out = {}
    for args in (["patients", "--json"], ["exams", "--json"], ["problems"],
                 ["trajectory", "RO1"]):
        res = run(home, *args, as_nobody=True, cwd=shared)
        assert res.returncode == 0, (args, res.stderr)
        assert b"Traceback" not in res.stderr and b"read-only" in res.stderr
        out[args[0]] = res.stdout
    assert [r["patient_id"] for r in json.loads(out["patients"])] == ["RO1"]
    assert [e["patient_id"] for e in json.loads(out["exams"])] == ["RO1"]
    assert b"Patient RO1" in out["trajectory"]
    # read as an immutable file: no -wal/-shm could be made, none was
    assert not [p for p in home.iterdir() if p.name.startswith("cache.sqlite-")]


@needs_other_user
def test_a_read_only_library_refuses_writing_commands_in_one_line(shared, capsys):
    files = shared / "files"
    write_mammogram(files / "a.dcm", patient_id="RO2")
    home = shared / "lib"
    _library_with(home, files, capsys)
    _open_to_all(shared)
    before = sorted(p.name for p in home.rglob("*"))
    for args in (["import", "--json", str(files)], ["demo", "--no-gui", "--patients", "1"],
                 ["gui"]):
        res = run(home, *args, as_nobody=True, cwd=shared)
        assert res.returncode == 2, (args, res.stderr)
        line = one_line(res.stderr)
        assert str(home) in line and "internal error" not in line
    assert sorted(p.name for p in home.rglob("*")) == before


@needs_other_user
def test_reading_a_library_that_does_not_exist_in_a_read_only_place_says_so(shared):
    _open_to_all(shared)
    res = run(shared / "lib", "patients", as_nobody=True, cwd=shared)
    assert res.returncode == 2
    assert "no library database" in one_line(res.stderr)


# ---------------------------------------------------------------- pipes


def test_a_closed_pipe_ends_quietly(tmp_path, capsys):
    files = tmp_path / "files"
    for i in range(3):
        write_mammogram(files / f"{i}.dcm", patient_id=f"PIPE{i}")
    home = tmp_path / "lib"
    _library_with(home, files, capsys)
    # the reader is gone before mamview writes a byte, as after `| head -1` on long output
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "mamview", "--home", str(home), "patients"],
                            stdout=w, stderr=subprocess.PIPE)
    os.close(w)
    os.close(r)
    err = proc.communicate(timeout=60)[1]
    assert err == b""
    assert proc.returncode == 141


def test_problems_into_head_ends_quietly_when_head_stops_reading(tmp_path):
    from mamview.core.cache import writes
    from mamview.core.cache.db import connect, write_transaction

    home = tmp_path / "lib"
    db = connect(home / "cache.sqlite")
    with write_transaction(db):  # one transaction: 3000 rows in milliseconds
        for i in range(3000):  # ~200 KB of output, more than a pipe holds
            writes.record_problem(db, f"/media/cd/IMAGES/IM{i:06d}", "not DICOM", "a text file")
    db.close()
    script = (f"{sys.executable} -m mamview --home '{home}' problems 2>'{tmp_path}/err' "
              f"| head -1; echo ${{PIPESTATUS[0]}} >'{tmp_path}/rc'")
    res = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60)
    assert res.stdout.startswith(b"not DICOM") and res.stdout.count(b"\n") == 1
    assert (tmp_path / "err").read_bytes() == b""
    assert (tmp_path / "rc").read_text().strip() == "141"


# ---------------------------------------------------------------- control characters


@pytest.fixture
def escape_library(tmp_path, capsys):
    files = tmp_path / "files"
    write_mammogram(files / "evil.dcm", patient_id=ESC_ID, patient_name=ESC_NAME)
    (files / "bad\x1b[31mname.txt").write_text("not a DICOM file")
    home = tmp_path / "lib"
    _library_with(home, files, capsys)
    return home


def test_control_characters_from_headers_are_escaped_on_the_terminal(escape_library):
    res = run(escape_library, "patients")
    assert res.returncode == 0
    assert b"\x1b" not in res.stdout and b"\x07" not in res.stdout
    assert b"EVIL\\x1b[2J" in res.stdout and b"A\\x1b]0;pwned\\x07" in res.stdout


def test_exams_problems_and_trajectory_escape_too(escape_library, capsys):
    home = str(escape_library)
    assert main(["--home", home, "exams"]) == 0
    assert main(["--home", home, "trajectory", ESC_ID]) == 0
    assert main(["--home", home, "problems"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("EVIL\\x1b[2J") == 2
    assert "bad\\x1b[31mname.txt" in out


def test_json_output_keeps_the_values_and_escapes_them(escape_library):
    res = run(escape_library, "patients", "--json")
    assert res.returncode == 0
    assert b"\x1b" not in res.stdout and b"\\u001b" in res.stdout
    row = json.loads(res.stdout)[0]
    assert (row["patient_id"], row["name"]) == (ESC_ID, ESC_NAME)


# ---------------------------------------------------------------- internal errors


# a command that fails in a way no handler expects (the handler is real; the bug is planted)
PLANTED = """
import sys
from mamview.cli import library, main

class Panic(BaseException):  # like pyo3's PanicException from a native decoder
    pass

def failing(args, lib):
    raise {exc}

library.cmd_problems = failing
sys.exit(main(sys.argv[1:] + ["problems"]))
"""


def test_an_internal_error_is_one_line_that_points_at_debug(tmp_path):
    res = run(tmp_path / "lib", script=PLANTED.format(exc='ZeroDivisionError("boom\\\\nline 2")'))
    assert res.returncode == 1
    line = one_line(res.stderr)
    assert line.startswith("mamview: internal error: ZeroDivisionError: boom")
    assert "--debug" in line


def test_debug_shows_the_traceback(tmp_path):
    res = run(tmp_path / "lib", "--debug", script=PLANTED.format(exc='ZeroDivisionError("boom")'))
    assert res.returncode == 1
    err = res.stderr.decode()
    assert "Traceback (most recent call last)" in err and "in failing" in err
    assert err.rstrip().splitlines()[-1] == "mamview: internal error: ZeroDivisionError: boom"


def test_a_native_panic_and_an_interrupt_are_one_line(tmp_path):
    res = run(tmp_path / "lib", script=PLANTED.format(exc='Panic("index out of bounds")'))
    assert res.returncode == 1
    assert "Panic: index out of bounds" in one_line(res.stderr)
    res = run(tmp_path / "lib", script=PLANTED.format(exc="KeyboardInterrupt()"))
    assert res.returncode == 130
    assert one_line(res.stderr) == "mamview: interrupted"


def test_the_database_error_classes_match_real_sqlite_failures(tmp_path):
    from mamview.core.cache.db import database_error

    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage " * 600)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(bad).execute("SELECT * FROM sqlite_master").fetchall()
    assert "damaged" in str(database_error(caught.value, bad))
    good = tmp_path / "good.sqlite"
    sqlite3.connect(good).close()
    ro = sqlite3.connect(f"file:{good}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        ro.execute("CREATE TABLE t (x)")
    assert "read-only" in str(database_error(caught.value, good))
    with pytest.raises(sqlite3.OperationalError) as caught:
        ro.execute("SELECT nothing FROM nowhere")
    assert database_error(caught.value, good) is None  # a bug, not the library's state
