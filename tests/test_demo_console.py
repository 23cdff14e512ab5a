"""The console main job (issue 14, item 1): `mamview demo --no-gui`, and `mamview demo` without a
display, writes, imports and scores the demo cohort, then prints every woman's trajectory with
the demo label; and `demo-data` seeds that never share PatientIDs (item 10)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re

import pytest

from mamview.cli import gui as cli_gui
from mamview.cli import main
from mamview.core.demo_data import demo_patient_id, make_women
from mamview.core.models.registry import DEMO_LABEL
from mamview.core.paths import resources_dir

needs_demo_model = pytest.mark.skipif(
    not (resources_dir() / "demo_model" / "weights.pt").is_file(),
    reason="the demo weights are not bundled in this build")


def run(*argv: str) -> tuple[int, str, str]:
    """`mamview ARGV` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    """A library after one console demo of three women (DEMO0003's only exam lacks LMLO)."""
    home = tmp_path_factory.mktemp("demo-console") / "home"
    status, out, err = run("--home", str(home), "demo", "--no-gui", "--patients", "3")
    assert status == 0, err
    return home, out, err


def _truth(home):
    with open(home / "demo-cohort" / "ground_truth.csv", newline="") as f:
        return list(csv.DictReader(f))


@needs_demo_model
def test_console_demo_scores_and_prints_every_trajectory(demo_home):
    home, out, err = demo_home
    assert "Library: 3 patients" in out
    assert "Scoring (demo)" in err  # the progress bar, on stderr
    truth = _truth(home)
    scorable = [r for r in truth if r["patient_id"] != "DEMO0003"]
    m = re.search(r"Scored (\d+) exams \((\d+) computed, 0 already in the cache\)", out)
    assert m and int(m.group(1)) == int(m.group(2)) == len(scorable)
    # the label above and below the tables, the tables in between
    banner = f"── {DEMO_LABEL} ──"
    lines = out.splitlines()
    top, bottom = lines.index(banner), len(lines) - 1 - lines[::-1].index(banner)
    tables = lines[top + 1:bottom]
    assert top < bottom and all(f"{pid}  DEMO^" in "\n".join(tables)
                                for pid in ("DEMO0001", "DEMO0002", "DEMO0003"))
    # one row per exam: date, 5-year risk, change since prior (none on a woman's first exam)
    firsts = {}
    for r in truth:
        firsts.setdefault(r["patient_id"], r["exam_date"])
    for r in scorable:
        row = next(line for line in tables if line.strip().startswith(r["exam_date"]))
        cells = row.split()
        assert re.fullmatch(r"\d+\.\d%", cells[1]), row
        assert (cells[2] == "—") == (r["exam_date"] == firsts[r["patient_id"]]), row
        if cells[2] != "—":
            assert re.fullmatch(r"[+-]\d+\.\d\d", cells[2]) and cells[3] == "pp", row
    (missing,) = [r for r in truth if r["patient_id"] == "DEMO0003"]
    row = next(line for line in tables if line.strip().startswith(missing["exam_date"]))
    assert "not scored: missing LMLO" in row
    # the case among them rises: her flags say so on the exam where it shows
    assert any("rising" in line for line in tables)
    assert "mamview trajectory DEMO0001" in lines[-1]


@needs_demo_model
def test_trajectory_works_after_the_console_demo(demo_home):
    home, out, _ = demo_home
    status, text, _ = run("--home", str(home), "trajectory", "DEMO0001")
    assert status == 0
    assert "no scored exam" not in text and "Latest 5-year risk" in text
    latest = re.search(r"Latest 5-year risk:\s+(\d+\.\d)%", text).group(1)
    last_row = [line for line in out.splitlines() if line.startswith("  20")]
    # DEMO0001's newest exam in the demo's table shows the same risk
    last_date = max(r["exam_date"] for r in _truth(home) if r["patient_id"] == "DEMO0001")
    assert any(line.split()[:2] == [last_date, f"{latest}%"] for line in last_row)


@needs_demo_model
def test_a_second_demo_computes_nothing_again(demo_home):
    home, _, _ = demo_home
    status, out, _ = run("--home", str(home), "demo", "--no-gui", "--patients", "3")
    assert status == 0
    assert "Using the demo cohort already in" in out
    assert re.search(r"Scored \d+ exams \(0 computed, \d+ already in the cache\)", out)
    assert f"── {DEMO_LABEL} ──" in out


@needs_demo_model
def test_demo_without_a_display_runs_the_console_demo(demo_home, monkeypatch):
    home, _, _ = demo_home
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_gui.sys, "platform", "linux")
    status, out, err = run("--home", str(home), "demo", "--patients", "3")
    assert status == 0
    assert "No display to open a window on: running the console demo" in err
    assert out.count(f"── {DEMO_LABEL} ──") == 2 and "DEMO0002  DEMO^" in out


@needs_demo_model
def test_the_demo_scores_and_shows_only_its_own_women(tmp_path):
    home = tmp_path / "home"
    other = tmp_path / "other"
    assert run("--home", str(home), "demo-data", "--out", str(other), "--patients", "1",
               "--seed", "5")[0] == 0
    assert run("--home", str(home), "import", str(other))[0] == 0
    status, out, _ = run("--home", str(home), "demo", "--no-gui", "--patients", "1")
    assert status == 0
    assert "DEMO0001  DEMO^" in out and "D5-0001" not in out
    status, text, _ = run("--home", str(home), "trajectory", "D5-0001")
    assert status == 0 and "no scored exam" in text


def test_seeds_write_distinct_patient_ids(tmp_path):
    assert [w.patient_id for w in make_women(3, 0)] == ["DEMO0001", "DEMO0002", "DEMO0003"]
    assert [w.patient_id for w in make_women(2, 7)] == ["D7-0001", "D7-0002"]
    assert demo_patient_id(11, 4242) == "D4242-0012"
    home = tmp_path / "home"
    for seed in ("0", "7"):
        out = tmp_path / f"seed{seed}"
        status, _, err = run("--home", str(home), "demo-data", "--out", str(out),
                             "--patients", "2", "--seed", seed)
        assert status == 0, err
        assert run("--home", str(home), "import", str(out), "--json")[0] == 0
    status, out, _ = run("--home", str(home), "patients", "--json")
    # two cohorts, four women: none merged into another's exams
    assert [p["patient_id"] for p in json.loads(out)] == ["D7-0001", "D7-0002",
                                                           "DEMO0001", "DEMO0002"]


def test_a_seed_out_of_range_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "c"
    status, _, err = run("--home", str(tmp_path / "h"), "demo-data", "--out", str(out),
                         "--seed", "-1")
    assert status == 2 and "seed must be between 0 and" in err and not out.exists()


def test_demo_data_help_names_the_patient_ids_of_a_seed(capsys):
    with pytest.raises(SystemExit):
        main(["demo-data", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "DEMO0001" in text and "D<seed>-0001" in text
