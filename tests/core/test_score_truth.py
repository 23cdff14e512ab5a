"""One source of truth for scores: a stored score whose key no longer matches today's model
or input files is *stale* on every read path until it is computed again (issue 12).

Real DICOM files, a real import, the real demo model through `mamview score`."""

import json
import os
from dataclasses import replace

import pytest

from mamview import cli
from mamview.core import worklist
from mamview.core.reports import figure as report
from mamview.core.analytics import trajectory
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.domain import STALE_REASON, ScoreState
from mamview.core.ingest import drain, run_import
from mamview.core.paths import library
from tests.factories import write_mammogram
from tests.scoring import demo_ref, save_current_score

DATES = ("20200302", "20220307")


def _import(lib, src):
    drain(run_import(lib, [src], make_previews=False))


@pytest.fixture
def two_exams(home, tmp_path):
    """Woman T1 with two complete exams (320×256 views), imported."""
    lib = library(home).ensure()
    src = tmp_path / "dicom"
    for d in DATES:
        for lat in "RL":
            for view in ("CC", "MLO"):
                write_mammogram(src / d / f"{lat}{view}.dcm", patient_id="T1", study_date=d,
                                laterality=lat, view=view, shape=(320, 256))
    _import(lib, src)
    db = connect(lib.database)
    keys = [r[0] for r in reads.exam_dates(db)]
    pk = reads.exam_dates(db)[0][1]
    db.close()
    return lib, src, pk, keys


def _cli_json(capsys, lib, *args):
    assert cli.main(["--home", str(lib.home), *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _every_read_path(lib, pk, capsys) -> dict:
    """The newest exam's state as each read path reports it."""
    exams = _cli_json(capsys, lib, "exams", "T1")
    traj = _cli_json(capsys, lib, "trajectory", "T1")
    db = connect(lib.database)
    try:
        model = reads.choose_model(lib, None, db)
        shown = worklist.patient_exams(db, pk, model)[-1].score
        latest = worklist.latest_scores(db, model).get(pk)
        points = trajectory.points_for_patient(db, pk, model)
        content = report.build_export_content(db, pk, None, None, "4up", False, lib=lib)
    finally:
        db.close()
    return {"exams": exams[-1]["score"], "trajectory": traj["exams"][-1], "shown": shown,
            "latest": latest, "points": points, "export": content.chart_points[-1],
            "model": traj["model"]}


@pytest.mark.slow
def test_touched_input_is_stale_everywhere_until_rescored(two_exams, capsys):
    lib, src, pk, keys = two_exams
    assert cli.main(["--home", str(lib.home), "score", "--model", "demo", "--device", "cpu"]) == 0
    capsys.readouterr()
    before = _every_read_path(lib, pk, capsys)
    assert before["exams"]["state"] == "current" and before["trajectory"]["state"] == "current"
    assert before["exams"]["model_id"] == "demo"
    assert before["exams"]["weights_sha256"] == demo_ref().weights_sha256
    assert before["model"]["weights_sha256"] == demo_ref().weights_sha256
    assert before["shown"].state == ScoreState.CURRENT and len(before["points"]) == 2
    five_year = before["exams"]["five_year_percent"]
    assert before["latest"][1] == pytest.approx(five_year)

    # an input file changes (same exam, same SOP UID): re-indexed with its new mtime
    f = src / DATES[-1] / "LMLO.dcm"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    _import(lib, src)

    stale = _every_read_path(lib, pk, capsys)
    assert stale["exams"]["state"] == "stale" and stale["exams"]["five_year_percent"] is None
    assert stale["exams"]["reason"] == STALE_REASON
    assert stale["exams"]["model_id"] == "demo"  # the stored (stale) score's identity
    assert stale["trajectory"]["state"] == "stale"
    assert stale["shown"].state == ScoreState.STALE
    assert stale["shown"].reason == STALE_REASON and stale["shown"].five_year_percent is None
    assert stale["latest"][0] == "2020-03-02"  # the older, still current exam
    assert [p.exam_key for p in stale["points"]] == [keys[0]]
    assert stale["export"].state == ScoreState.STALE and stale["export"].reason == STALE_REASON
    assert stale["export"].risk_percent is None

    assert cli.main(["--home", str(lib.home), "score", "--model", "demo", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "1 computed" in out and "Recomputed 1 exam(s) whose stored score was stale" in out
    after = _every_read_path(lib, pk, capsys)
    assert after["exams"]["state"] == "current" and after["trajectory"]["state"] == "current"
    assert after["shown"].state == ScoreState.CURRENT and len(after["points"]) == 2
    assert after["export"].state == report.SCORED
    assert after["exams"]["five_year_percent"] == pytest.approx(five_year, abs=1e-6)


def test_new_weights_under_the_same_id_make_every_score_stale(two_exams):
    lib, _, pk, keys = two_exams
    db = connect(lib.database)
    try:
        for ek in keys:
            save_current_score(db, ek, [0.004, 0.008, 0.012, 0.016, 0.02])
        installed = demo_ref()
        assert {s.state for s in reads.current_scores(db, keys, installed).values()} == {
            ScoreState.CURRENT}
        new = replace(installed, weights_sha256="00" * 32, version="new")
        states = reads.current_scores(db, keys, new)
        assert {s.state for s in states.values()} == {ScoreState.STALE}
        assert states[keys[0]].model_version == installed.version  # what is stored, and old
        assert trajectory.points_for_patient(db, pk, new) == []
        assert [e.score.state for e in worklist.patient_exams(db, pk, new)] == [ScoreState.STALE] * 2
        assert worklist.latest_scores(db, new) == {}
        # by bare id (a model this build cannot run): checked against its recorded identity
        assert {s.state for s in reads.current_scores(db, keys, "demo").values()} == {
            ScoreState.CURRENT}
    finally:
        db.close()


def test_states_pending_and_unscorable(two_exams, tmp_path):
    lib, src, pk, keys = two_exams
    db = connect(lib.database)
    try:
        ref = demo_ref()
        assert {s.state for s in reads.current_scores(db, keys, ref).values()} == {
            ScoreState.PENDING}
        save_current_score(db, keys[0], [], status="unscorable", reason="too small")
        s = reads.current_scores(db, keys, ref)[keys[0]]
        assert s.state == ScoreState.UNSCORABLE and s.reason == "too small"
    finally:
        db.close()


def test_a_trajectory_that_mixes_model_versions_says_so():
    import datetime as dt

    a = trajectory.ScorePoint(dt.date(2020, 1, 1), 2.0, "mirai", model_version="1",
                              weights_sha256="aa" * 32)
    b = replace(a, exam_date=dt.date(2022, 1, 1), risk_percent=2.5, weights_sha256="bb" * 32)
    notes = trajectory.analyze([a, b]).notes
    assert any("model changed on 2022-01-01" in n and "weights aaaaaaaa" in n for n in notes)
    assert not any("model changed" in n for n in trajectory.analyze([a, replace(
        b, weights_sha256=a.weights_sha256)]).notes)


def test_the_image_on_screen_is_the_image_scored(home, tmp_path):
    """A repeated view: the screen hangs the repeat the score was computed from (the last
    acquired), not the last by file name."""
    from mamview.core.services.inference import exam_inputs

    lib = library(home).ensure()
    src = tmp_path / "dicom"
    for lat in "RL":
        for view in ("CC", "MLO"):
            write_mammogram(src / f"{lat}{view}.dcm", patient_id="R1", study_date="20210104",
                            laterality=lat, view=view, shape=(320, 256),
                            extra={"AcquisitionDate": "20210104", "AcquisitionTime": "101500"})
    # "A_repeat" sorts before "LMLO" by name but was acquired last
    write_mammogram(src / "A_repeat.dcm", patient_id="R1", study_date="20210104",
                    laterality="L", view="MLO", shape=(320, 256),
                    extra={"AcquisitionDate": "20210104", "AcquisitionTime": "103000"})
    _import(lib, src)
    db = connect(lib.database)
    try:
        (ek, pk, _), = reads.exam_dates(db)
        scored = {r["label"]: r["path"] for r in exam_inputs(db, ek)}
        (info,) = worklist.patient_exams(db, pk, demo_ref())
        assert info.image_for("LMLO")["path"] == scored["LMLO"]
        assert scored["LMLO"].endswith("A_repeat.dcm")
    finally:
        db.close()


@pytest.mark.slow
def test_an_unscorable_exam_is_looked_at_again_when_its_file_is_replaced(home, tmp_path, capsys):
    lib = library(home).ensure()
    src = tmp_path / "dicom"
    for lat in "RL":
        for view in ("CC", "MLO"):
            # the RCC is a 64×64 "image": unscorable until the file is replaced by a real one
            shape = (64, 64) if (lat, view) == ("R", "CC") else (320, 256)
            write_mammogram(src / f"{lat}{view}.dcm", patient_id="U1", laterality=lat, view=view,
                            shape=shape, sop_uid=f"1.2.826.0.1.3680043.8.498.9{'RL'.index(lat)}{len(view)}")
    _import(lib, src)
    score = ["--home", str(lib.home), "score", "--model", "demo", "--device", "cpu"]
    assert cli.main(score) == 0
    capsys.readouterr()
    assert _cli_json(capsys, lib, "exams", "U1")[0]["score"]["state"] == "unscorable"
    rcc = src / "RCC.dcm"
    write_mammogram(rcc, patient_id="U1", laterality="R", view="CC", shape=(320, 256),
                    sop_uid="1.2.826.0.1.3680043.8.498.902")
    _import(lib, src)
    # the stored "unscorable" no longer matches its files: stale, shown as recomputing
    assert _cli_json(capsys, lib, "exams", "U1")[0]["score"]["state"] == "stale"
    assert cli.main(score) == 0
    capsys.readouterr()
    assert _cli_json(capsys, lib, "exams", "U1")[0]["score"]["state"] == "current"
