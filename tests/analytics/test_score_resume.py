"""Archive-scale scoring: a SIGKILLed `mamview score` resumes without recomputing finished
exams; the cohort analysis runs end to end on scores read from the cache."""

import csv
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mamview import cli
from mamview.core import paths
from mamview.core.demo_data import generate_cohort
from mamview.core.ingest import run_import
from mamview.core.models.registry import DEMO_LABEL
from tests.analytics.conftest import drain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_library(tmp_path_factory):
    """Eight synthetic women (two usable cases) (small images) imported into a fresh library."""
    root = tmp_path_factory.mktemp("resume")
    cohort = root / "cohort"
    generate_cohort(cohort, n_patients=8, size="small", seed=0)
    lib = paths.library(root / "home")
    drain(run_import(lib, sorted(p for p in cohort.iterdir() if p.is_dir()), make_previews=False))
    return lib, cohort


def _ok_scores(db_path):
    con = sqlite3.connect(db_path, timeout=10)
    try:
        return {r[0]: r[1] for r in con.execute(
            "SELECT exam_key, computed_at || '#' || score_id FROM scores WHERE status = 'ok'")}
    finally:
        con.close()


def _score_cmd(lib):
    return [sys.executable, "-m", "mamview", "--home", str(lib.home), "score", "--model", "demo",
            "--batch-size", "2", "--device", "cpu"]


def test_killed_score_run_resumes_without_recomputing(demo_library):
    lib, _ = demo_library
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(_score_cmd(lib), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        deadline = time.monotonic() + 120
        done = {}
        # kill once at least one batch is saved and before the run can finish
        while time.monotonic() < deadline and proc.poll() is None:
            if lib.database.exists():
                done = _ok_scores(lib.database)
                if len(done) >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    before = _ok_scores(lib.database)  # what the killed run left (≥ what we saw)
    assert len(before) >= 2

    rerun = subprocess.run(_score_cmd(lib), capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    m = re.search(r"Scored (\d+) exams \((\d+) computed, (\d+) already in the cache\)", rerun.stdout)
    assert m, rerun.stdout
    total, computed, cached = map(int, m.groups())
    after = _ok_scores(lib.database)
    assert cached == len(before) and computed == len(after) - len(before)
    assert computed > 0 and total == cached + computed  # the kill left work to do
    # the finished exams were not computed again: their rows are untouched
    assert {k: after[k] for k in before} == before
    assert "Throughput:" in rerun.stdout and "exams/s" in rerun.stdout
    assert "exam/s" in rerun.stderr or "s/exam" in rerun.stderr  # tqdm rate and ETA



def test_cohort_on_cached_scores_end_to_end(demo_library, tmp_path, capsys):
    lib, cohort = demo_library
    assert cli.main(["--home", str(lib.home), "score", "--model", "demo", "--device", "cpu"]) == 0
    capsys.readouterr()
    out = tmp_path / "report"
    assert cli.main(["--home", str(lib.home), "cohort", "--outcomes",
                     str(cohort / "outcomes.csv"), "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["model"] == f"demo — {DEMO_LABEL}"  # every exported number names its model
    # a woman is left out only for a stated reason (the generator drops a view from one
    # woman's last exam, so she may have no scorable exam)
    left_out = sum(n for why, n in rep["excluded"].items() if why.startswith(("women", "cases")))
    assert rep["women"] + left_out == 8 and rep["cases"] >= 2
    idx = {(y["group"], y["year"]): y["median"] for y in rep["yearly"]}
    # the demo model sees the cases' rise in the pixels: their index scores sit above controls'
    assert idx["cases", 0] > idx["controls", 0]
    # every output the report lists was written into --out, and says what the report says
    files = {k: Path(v) for k, v in rep["files"].items()}
    assert set(files) == {"results_csv", "yearly_csv", "women_csv", "report_json", "figure_png",
                          "figure_pdf"}
    assert all(p.parent == out and p.stat().st_size > 0 for p in files.values())
    assert files["figure_png"].read_bytes().startswith(b"\x89PNG")
    assert json.loads(files["report_json"].read_text())["model"] == rep["model"]
    with open(files["results_csv"], newline="", encoding="utf-8") as f:
        counts = {r["name"]: int(r["value"]) for r in csv.DictReader(f) if r["section"] == "cohort"}
    assert counts == {k: rep[k] for k in ("women", "cases", "controls", "exams")}
