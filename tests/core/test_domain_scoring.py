"""End to end (issue 13): a digitised-film exam and a digital exam imported, scored with the
bundled demo model through the CLI. The film exam is unscorable with the domain reason unless
asked; asked, it is scored with the flag, and the flag is in `exams --json`, the trajectory
JSON, the CSV and the SR. An exam with ML obliques is scored with ML as MLO, recorded."""

import csv
import io
import json
import shutil
import subprocess

import pytest
from pydicom.uid import generate_uid

from mamview import cli
from mamview.core import paths
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.domain import ScoreState
from mamview.core.ingest import run_import
from mamview.core.reports import sr
from tests.core.test_ingest import consume, write_exam
from tests.factories import write_mammogram
from tests.scoring import demo_ref
from tests.study_objects import write_digitised_film

FILM_REASON = "outside the model's validated domain: digitised film"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("domain")
    study = generate_uid()
    for lat, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")):
        write_digitised_film(root / "in" / "film" / f"{lat}{view}.dcm", patient_id="F1",
                             study_date="20100301", study_uid=study, laterality=lat, view=view)
    write_exam(root / "in" / "digital", pid="F1", date="20140301", shape=(320, 256))
    ml_study = generate_uid()
    for lat, view in (("R", "CC"), ("L", "CC"), ("R", "ML"), ("L", "ML")):
        write_mammogram(root / "in" / "ml" / f"{lat}{view}.dcm", patient_id="M1",
                        study_date="20200601", study_uid=ml_study, laterality=lat, view=view,
                        shape=(320, 256))
    lib = paths.library(root / "home")
    consume(run_import(lib, [root / "in"], make_previews=False))
    return lib


def _cli(lib, capsys, *args) -> str:
    capsys.readouterr()
    assert cli.main(["--home", str(lib.home), *args]) == 0
    return capsys.readouterr().out


def _exams(lib, capsys, patient) -> dict[str, dict]:
    rows = json.loads(_cli(lib, capsys, "exams", patient, "--model", "demo",
                           "--json"))
    return {e["exam_date"]: e for e in rows}


def test_film_is_kept_out_of_scoring_unless_asked(library, capsys):
    lib = library
    out = _cli(lib, capsys, "score", "--model", "demo", "--device", "cpu")
    assert f"Not scored, {FILM_REASON}: 1" in out and "--include-out-of-domain" in out

    exams = _exams(lib, capsys, "F1")
    film, digital = exams["2010-03-01"], exams["2014-03-01"]
    assert [im["label"] for im in film["images"]] == ["RCC", "LCC", "RMLO", "LMLO"]  # viewable
    assert film["incomplete_reason"] == FILM_REASON
    assert (film["score"]["state"], film["score"]["reason"]) == ("unscorable", FILM_REASON)
    assert digital["score"]["state"] == "current" and digital["score"]["out_of_domain"] is False

    db = connect(lib.database)
    try:
        ek = film["exam_key"]
        # the refusal is stored, and does not stand in the way once the domain is included
        (refusal,) = [r for r in db.query("SELECT * FROM scores WHERE exam_key = ?", [ek])]
        assert refusal["status"] == "unscorable" and refusal["reason"] == FILM_REASON
        again = reads.current_scores(db, [ek], demo_ref(), include_out_of_domain=True)[ek]
        assert again.state == ScoreState.PENDING
    finally:
        db.close()

    out = _cli(lib, capsys, "score", "--model", "demo", "--device", "cpu",
               "--include-out-of-domain")
    assert "outside the model's validated domain, on request" in out
    exams = _exams(lib, capsys, "F1")
    film = exams["2010-03-01"]
    assert film["score"]["state"] == "current"
    assert film["score"]["out_of_domain"] is True
    assert film["score"]["domain"] == "digitised film"
    assert exams["2014-03-01"]["score"]["out_of_domain"] is False

    db = connect(lib.database)
    try:
        keys = {r["status"]: r["cache_key"] for r in db.query(
            "SELECT status, cache_key FROM scores WHERE exam_key = ?", [film["exam_key"]])}
        # a flagged score has its own key: it never collides with an unflagged one
        assert keys["ok"].endswith(":domain=digitised film")
        assert keys["unscorable"].endswith(":outside-domain")
        # without the flag the read paths still show the score computed on request, flagged
        s = reads.current_scores(db, [film["exam_key"]], demo_ref())[film["exam_key"]]
        assert s.state == ScoreState.CURRENT and s.domain == "digitised film"
    finally:
        db.close()

    traj = json.loads(_cli(lib, capsys, "trajectory", "F1", "--model", "demo", "--json"))
    by_date = {p["exam_date"]: p for p in traj["points"]}
    assert by_date["2010-03-01"]["out_of_domain"] is True
    assert by_date["2010-03-01"]["domain"] == "digitised film"
    assert by_date["2014-03-01"]["out_of_domain"] is False
    assert any("outside the model's validated domain (digitised film)" in n for n in traj["notes"])
    assert {e["exam_date"]: e["out_of_domain"] for e in traj["exams"]} == {
        "2010-03-01": True, "2014-03-01": False}

    csv_out = _cli(lib, capsys, "trajectory", "F1", "--model", "demo", "--csv")
    rows = list(csv.DictReader(io.StringIO(csv_out)))
    assert [r["validated_domain"] for r in rows] == ["outside (digitised film)", "inside"]

    out_dir = lib.home / "sr"
    _cli(lib, capsys, "sr", "F1", "--model", "demo", "--out", str(out_dir))
    values = sorted((sr.read_sr_values(p) for p in out_dir.glob("*.dcm")),
                    key=lambda v: v["text"]["Validated domain"])
    assert [v["text"]["Validated domain"] for v in values] == ["inside", "outside (digitised film)"]
    if shutil.which("dsrdump"):  # the film's SR is as valid as any (no Image Library entry)
        for path in out_dir.glob("*.dcm"):
            proc = subprocess.run(["dsrdump", "-Ee", str(path)], capture_output=True, text=True,
                                  timeout=60)
            assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_ml_obliques_are_scored_as_mlo_with_the_mapping_recorded(library, capsys):
    lib = library
    _cli(lib, capsys, "score", "--model", "demo", "--device", "cpu", "--patient", "M1")
    (exam,) = _exams(lib, capsys, "M1").values()
    assert exam["complete"] is True
    assert exam["score"]["state"] == "current"
    assert exam["score"]["view_mapping"] == "RML→RMLO, LML→LMLO"
    assert exam["score"]["out_of_domain"] is False
    db = connect(lib.database)
    try:
        (row,) = db.query("SELECT * FROM scores WHERE exam_key = ? AND status = 'ok'",
                          [exam["exam_key"]])
        by_uid = {im["sop_instance_uid"]: im["label"] for im in exam["images"]}
        # the model read the ML files in the MLO places (RCC, LCC, RMLO, LMLO order)
        assert [by_uid[u] for u in json.loads(row["input_uids"])] == ["RCC", "LCC", "RML", "LML"]
        assert row["view_mapping"] == "RML→RMLO, LML→LMLO"
    finally:
        db.close()
    out_dir = lib.home / "sr-ml"
    _cli(lib, capsys, "sr", "M1", "--model", "demo", "--out", str(out_dir))
    (path,) = out_dir.glob("*.dcm")
    assert sr.read_sr_values(path)["text"]["View mapping"] == "RML->RMLO, LML->LMLO"


def test_an_mlo_is_preferred_to_an_ml(tmp_path):
    from mamview.core.cache import writes
    from mamview.core.dicom.headers import read_header
    from mamview.core.services.inference import exam_inputs, view_mapping

    study = generate_uid()
    files = write_exam(tmp_path / "e", pid="P", date="20200101", study_uid=study)
    files.append(write_mammogram(tmp_path / "e" / "RML.dcm", patient_id="P", study_date="20200101",
                                 study_uid=study, laterality="R", view="ML"))
    db = connect(tmp_path / "cache.sqlite")
    writes.write_batch(db, [read_header(p) for p in files], [])
    (exam,) = reads.list_exams(db)
    rows = exam_inputs(db, exam["exam_key"])
    assert [r["label"] for r in rows] == ["RCC", "LCC", "RMLO", "LMLO"] and view_mapping(rows) == ""
    db.close()


def _film_library(tmp_path):
    study = generate_uid()
    for lat, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")):
        write_digitised_film(tmp_path / "in" / f"{lat}{view}.dcm", patient_id="F9",
                             study_date="20080101", study_uid=study, laterality=lat, view=view)
    lib = paths.library(tmp_path / "home")
    consume(run_import(lib, [tmp_path / "in"], make_previews=False))
    db = connect(lib.database)
    (key,) = [r[0] for r in db.execute("SELECT exam_key FROM exams")]
    db.close()
    return lib, key


def _answers(events, gen):
    from mamview.core.services.inference import ExamScored, ExamUnscorable

    return [ev for ev in events if isinstance(ev, (ExamScored, ExamUnscorable))
            and ev.generation == gen]


def test_each_request_may_include_the_domain(tmp_path):
    from mamview.core.models import registry
    from mamview.core.services.inference import GenerationDone, InferenceService

    lib, key = _film_library(tmp_path)
    entry = registry.resolve(lib, "demo")
    svc = InferenceService(lib.database, lambda dev: registry.load(entry, dev), device="cpu")
    events = []
    try:
        for include in (None, True):
            gen = svc.submit([key], include_out_of_domain=include)
            while True:
                ev = svc.next_event(timeout=120)
                events.append(ev)
                if isinstance(ev, GenerationDone) and ev.generation == gen:
                    break
            (answer,) = _answers(events, gen)
            if include:
                assert answer.domain == "digitised film" and len(answer.risk) == 5
            else:
                assert answer.reason == FILM_REASON
    finally:
        svc.shutdown()


def test_the_child_process_passes_the_setting_through(tmp_path):
    import threading

    from mamview.core.services.inference import ExamScored
    from mamview.core.services.inference_process import InferenceProcess

    lib, key = _film_library(tmp_path)
    got, done = [], threading.Event()

    def on_event(ev):
        got.append(ev)
        if isinstance(ev, ExamScored) or getattr(ev, "reason", None):
            done.set()

    proc = InferenceProcess(lib.database, lib.home, "demo", device="cpu", on_event=on_event,
                            include_out_of_domain=True).start()
    try:
        gen = proc.submit([key])
        assert done.wait(180), got
    finally:
        proc.shutdown(timeout=30)
    (answer,) = _answers(got, gen)
    assert isinstance(answer, ExamScored) and answer.domain == "digitised film"
