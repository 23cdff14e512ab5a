"""Two women sharing a PatientID are never merged silently: the conflict is found from the
birth dates and names their images carry, and shown in `patients`, `problems` and the worklist."""

from __future__ import annotations

import json

from mamview.cli import main
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.ingest import drain, run_import
from mamview.core.paths import library
from tests.factories import write_exam

def _exam(folder, pid, date, birth, name="DOE^JANE"):
    write_exam(folder / pid / date, pid, date, shape=(64, 52), patient_name=name,
               extra={"PatientBirthDate": birth})


def test_one_patient_id_with_two_birth_dates_is_an_identity_conflict(home, tmp_path, capsys):
    src = tmp_path / "files"
    _exam(src, "P1", "20200101", "19570430")
    _exam(src, "P1", "20210101", "19561028")  # another woman, same ID (the case)
    _exam(src, "P2", "20200101", "19600101")
    _exam(src, "P2", "20210101", "19600101", name="DOE^J")  # one woman, a shorter spelling
    _exam(src, "P3", "20200101", "19600101", name="DOE^JANE")
    _exam(src, "P3", "20210101", "19600101", name="ROE^ANNA")  # a clearly different name
    lib = library(home)
    drain(run_import(lib, [src], make_previews=False))
    db = connect(lib.database)
    try:
        by_id = {r["patient_id"]: r["patient_key"] for r in reads.list_patients(db)}
        conflicts = reads.identity_conflicts(db)
        assert set(conflicts) == {by_id["P1"], by_id["P3"]}
        assert "2 birth dates (1956-10-28, 1957-04-30)" in conflicts[by_id["P1"]]
        assert "2 names" in conflicts[by_id["P3"]]
        assert reads.identity_conflicts(db, [by_id["P2"]]) == {}
    finally:
        db.close()

    assert main(["--home", str(home), "problems", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    flagged = [r for r in rows if r["reason"] == "identity conflict"]
    assert [r["path"] for r in flagged] == ["patient ID P1", "patient ID P3"]
    assert main(["--home", str(home), "patients"]) == 0
    text = capsys.readouterr().out
    assert text.count("identity conflict") == 2


def test_the_worklist_and_the_chart_flag_the_conflict(home, tmp_path, qtbot):
    from mamview.qt.main_window import MainWindow

    src = tmp_path / "files"
    _exam(src, "P1", "20200101", "19570430")
    _exam(src, "P1", "20210101", "19561028")
    _exam(src, "P2", "20200101", "19600101")
    lib = library(home)
    drain(run_import(lib, [src], make_previews=False))
    win = MainWindow(lib, start_inference=False)
    qtbot.addWidget(win)
    try:
        rows = {r.patient_id: r for r in win.patient_list.rows.values()}
        assert rows["P1"].identity_conflict and not rows["P2"].identity_conflict
        assert rows["P2"].birth_date == "19600101" and rows["P2"].age is not None
        table = win.patient_list.table
        marks = {table.item(i, 1).text(): table.item(i, 0).text() for i in range(table.rowCount())}
        assert marks == {"P1": "⚠", "P2": ""}
        ages = {table.item(i, 1).text(): table.item(i, 3).text() for i in range(table.rowCount())}
        assert ages["P2"] == str(rows["P2"].age)
        win.show_patient(rows["P1"].patient_key)
        assert win.chart.identity_banner.isVisibleTo(win.chart)
        assert "birth dates" in win.chart.identity_banner.text()
        win.show_patient(rows["P2"].patient_key)
        assert not win.chart.identity_banner.isVisibleTo(win.chart)
    finally:
        win.shutdown()


def test_trajectory_says_so_and_the_cohort_leaves_her_out(home, tmp_path, capsys):
    from tests.scoring import save_current_score

    src = tmp_path / "files"
    _exam(src, "P1", "20200101", "19570430")
    _exam(src, "P1", "20210101", "19561028")
    for pid in ("P2", "P3", "P4", "P5"):
        _exam(src, pid, "20200101", "19600101")
        _exam(src, pid, "20210101", "19600101")
    lib = library(home)
    drain(run_import(lib, [src], make_previews=False))
    db = connect(lib.database)
    try:
        for ex in reads.list_exams(db):
            save_current_score(db, ex["exam_key"], [0.004 * k for k in range(1, 6)], "demo")
    finally:
        db.close()
    assert main(["--home", str(home), "trajectory", "P1"]) == 0
    assert "⚠ identity conflict" in capsys.readouterr().out
    assert main(["--home", str(home), "trajectory", "P1", "--json"]) == 0
    assert "2 birth dates" in json.loads(capsys.readouterr().out)["identity_conflict"]
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("patient_id,case,diagnosis_date\nP1,1,2022-01-01\nP2,1,2022-01-01\n"
                        "P3,1,2022-01-01\nP4,0,\nP5,0,\n")
    assert main(["--home", str(home), "cohort", "--outcomes", str(outcomes), "--out",
                 str(tmp_path / "cohort")]) == 0
    out = capsys.readouterr().out
    # P1 is left out and counted, with the reason; the others are analysed
    assert "identity conflict" in out and "2 cases" in out
