"""Import end to end on real DICOM files and a real SQLite cache."""

import os
import shutil
import sqlite3

import pytest
from pydicom import dcmread

from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.ingest import ProblemFound, run_import
from mamview.core.paths import Library
from tests.factories import (
    write_corrupt_pixels_copy,
    write_mammogram,
    write_other_modality,
    write_pdf,
    write_tomosynthesis,
    write_truncated_copy,
)


def consume(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return stop.value, events


def write_exam(folder, pid="P1", date="20240105", ts=None, **kw):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for lat, view, orient in (("R", "CC", ("P", "L")), ("L", "CC", ("A", "R")),
                              ("R", "MLO", ("P", "FL")), ("L", "MLO", ("A", "FR"))):
        extra = {"transfer_syntax": ts} if ts else {}
        out.append(write_mammogram(folder / f"{lat}{view}.dcm", patient_id=pid, study_date=date,
                                   laterality=lat, view=view, orientation=orient, **extra, **kw))
    return out


def snapshot(db_path):
    """Table contents without volatile columns, to compare two caches."""
    con = sqlite3.connect(db_path)
    out = {}
    for table in ("patients", "exams", "images", "files", "problems", "previews"):
        rows = con.execute(f"SELECT * FROM {table}").fetchall()
        out[table] = sorted(map(repr, rows))
    con.close()
    return out


@pytest.fixture
def lib(tmp_path):
    return Library(tmp_path / "lib")


def test_mixed_folder_imports_every_mammogram_and_explains_the_rest(tmp_path, lib):
    src = tmp_path / "in"
    good = write_exam(src / "exam1")
    write_other_modality(src / "other" / "ct.dcm", modality="CT")
    write_other_modality(src / "other" / "mr.dcm", modality="MR")
    write_other_modality(src / "other" / "us.dcm", modality="US")
    write_pdf(src / "report.pdf")
    (src / "empty.dcm").write_bytes(b"")
    write_truncated_copy(good[0], src / "bad" / "truncated.dcm")
    write_mammogram(src / "j2k" / "ok.dcm", patient_id="P2", transfer_syntax="1.2.840.10008.1.2.4.90")
    other = write_mammogram(tmp_path / "scratch.dcm", patient_id="P3", laterality="L",
                            transfer_syntax="1.2.840.10008.1.2.4.90")
    write_corrupt_pixels_copy(other, src / "bad" / "corrupt.dcm")
    write_tomosynthesis(src / "dbt.dcm")
    before = {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}

    summary, events = consume(run_import(lib, [src]))

    # 4 views + the good J2K image + the corrupt one, indexed but marked undecodable
    assert summary.totals["images"] == 6
    assert summary.totals["patients"] == 3
    db = connect(lib.database)
    problems = {os.path.basename(p["path"]): p["reason"] for p in reads.list_problems(db)}
    assert problems == {
        "ct.dcm": "not a mammogram", "mr.dcm": "not a mammogram", "us.dcm": "not a mammogram",
        "report.pdf": "not DICOM", "empty.dcm": "empty file", "truncated.dcm": "truncated",
        "corrupt.dcm": "corrupt pixel data",
    }
    # the tomosynthesis object is a member of its study, listed with it, not a problem
    assert summary.objects == 1
    assert [(os.path.basename(r[0]), r[1]) for r in db.execute(
        "SELECT path, kind FROM study_objects")] == [("dbt.dcm", "tomosynthesis")]
    assert all(p["detail"] or p["reason"] == "empty file" for p in reads.list_problems(db))
    # the user's files are untouched
    assert before == {p: p.stat().st_mtime_ns for p in src.rglob("*") if p.is_file()}
    assert summary.skipped["not a mammogram"] == 3
    assert summary.previews == 5 and summary.preview_failures == 1


def test_second_import_adds_nothing(tmp_path, lib):
    write_exam(tmp_path / "in")
    first, _ = consume(run_import(lib, [tmp_path / "in"]))
    snap = snapshot(lib.database)
    second, _ = consume(run_import(lib, [tmp_path / "in"]))
    assert (first.added, second.added, second.updated, second.unchanged) == (4, 0, 0, 4)
    assert second.previews == 0
    assert snapshot(lib.database) == snap


def test_changed_file_is_reread_and_deleted_file_noticed(tmp_path, lib):
    files = write_exam(tmp_path / "in")
    consume(run_import(lib, [tmp_path / "in"]))
    # rewrite one file as another woman's image; delete another
    write_mammogram(files[0], patient_id="P9", laterality="R", view="CC")
    files[1].unlink()
    summary, _ = consume(run_import(lib, [tmp_path / "in"]))
    assert summary.updated == 0 and summary.added == 1 and summary.missing == 1
    db = connect(lib.database)
    assert {p["patient_id"] for p in reads.list_patients(db)} == {"P1", "P9"}
    missing = [p for p in reads.list_problems(db) if p["reason"] == "file missing"]
    assert [m["path"] for m in missing] == [str(files[1])]
    (exam,) = reads.list_exams(db, reads.find_patient_keys(db, "P1"))
    assert not exam["complete"]


def test_interrupted_import_completes_to_the_same_database(tmp_path):
    src = tmp_path / "in"
    for i in range(6):
        write_exam(src / f"w{i}" / "e1", pid=f"W{i}", date="20220301")
        write_exam(src / f"w{i}" / "e2", pid=f"W{i}", date="20230301")

    whole = Library(tmp_path / "whole")
    consume(run_import(whole, [src]))

    from mamview.core import ingest

    cut = Library(tmp_path / "cut")
    old = ingest.BATCH_SIZE
    ingest.BATCH_SIZE = 10
    try:
        gen = run_import(cut, [src])
        for ev in gen:  # stop as a killed process would, half-way through indexing
            if getattr(ev, "phase", "") == "indexing" and ev.done >= 20:
                break
        gen.close()
    finally:
        ingest.BATCH_SIZE = old
    partial = connect(cut.database)
    assert 0 < reads.counts(partial)["images"] < 48
    partial.close()
    consume(run_import(cut, [src]))

    a, b = snapshot(whole.database), snapshot(cut.database)
    # preview file names live under different library folders but are relative, so equal
    assert a == b


def test_duplicate_files_are_reported(tmp_path, lib):
    files = write_exam(tmp_path / "in")
    shutil.copy(files[0], tmp_path / "in" / "copy-of-rcc.dcm")
    summary, _ = consume(run_import(lib, [tmp_path / "in"]))
    assert summary.totals["images"] == 4
    assert summary.skipped["duplicate"] == 1


def test_missing_path_is_a_problem_not_a_crash(tmp_path, lib):
    summary, events = consume(run_import(lib, [tmp_path / "does-not-exist"]))
    assert summary.skipped["not found"] == 1
    db = connect(lib.database)
    assert [(p["path"], p["reason"]) for p in reads.list_problems(db)] == [
        (str(tmp_path / "does-not-exist"), "not found")]


def test_image_without_view_tags_is_unknown(tmp_path, lib):
    write_mammogram(tmp_path / "in" / "x.dcm", with_view_code=False, view_position=False,
                    laterality="R", view="CC", extra={"SeriesDescription": ""})
    consume(run_import(lib, [tmp_path / "in"]))
    db = connect(lib.database)
    (exam,) = reads.list_exams(db)
    (img,) = exam["images"]
    assert (img["view"], img["view_source"]) == ("UNKNOWN", "none")
    assert img["laterality"] == "R"


def test_dicomdir_imports_the_files_it_names(tmp_path, lib):
    from tests.factories import write_dicomdir

    dicomdir = write_dicomdir(tmp_path / "cd")
    summary, _ = consume(run_import(lib, [dicomdir]))
    assert summary.totals["images"] == 2 and not summary.skipped
    db = connect(lib.database)
    (exam,) = reads.list_exams(db)
    assert sorted(im["label"] for im in exam["images"]) == ["LCC", "RCC"]
    assert all(str(tmp_path / "cd") in im["path"] for im in exam["images"])


def test_preview_names_are_hashes_inside_the_previews_folder(lib):
    from mamview.core import safety
    from mamview.core.ingest import preview_file, preview_name, stored_preview

    for uid in ("1.2.3", "../../../../x", "/etc/passwd", "a" * 300):
        rel = preview_name(uid)
        name = safety.hashed_name(uid, ".png")
        assert rel == f"{name[:2]}/{name}"
        assert preview_file(lib, uid) == (lib.previews / rel).resolve()
    legacy = "ab/1.2.3.png"  # rows written before names were hashed keep working
    assert stored_preview(lib, legacy) == (lib.previews / legacy).resolve()
    assert stored_preview(lib, "../../etc/passwd") is None
    assert stored_preview(lib, "/etc/passwd") is None


def test_a_preview_that_cannot_be_written_is_a_problem_for_that_image_alone(tmp_path, lib):
    from mamview.core.ingest import PREVIEW_NOT_WRITTEN, preview_name

    files = write_exam(tmp_path / "in")
    blocked = files[1]
    uid = str(dcmread(blocked, stop_before_pixels=True).SOPInstanceUID)
    lib.ensure()
    shard = lib.previews / preview_name(uid).split("/")[0]
    shard.write_bytes(b"a file where the shard folder should be")

    summary, _ = consume(run_import(lib, [tmp_path / "in"]))

    db = connect(lib.database)
    assert summary.preview_failures == 1 and summary.previews == 3
    problems = {p["path"]: p["reason"] for p in reads.list_problems(db)}
    assert problems == {str(blocked): PREVIEW_NOT_WRITTEN}
    assert db.execute("SELECT decode_error FROM images WHERE sop_instance_uid = ?", [uid]).fetchone() == ("",)

    shard.unlink()
    summary, _ = consume(run_import(lib, [tmp_path / "in"]))
    assert summary.previews == 1
    assert reads.list_problems(db) == []


def test_orphan_temp_files_are_removed_only_when_old(lib):
    import time

    from mamview.core.ingest import remove_orphan_temp_files

    lib.ensure()
    shard = lib.previews / "ab"
    shard.mkdir()
    old, fresh, png = shard / "x.png.1.tmp", shard / "y.png.2.tmp", shard / "z.png"
    for p in (old, fresh, png):
        p.write_bytes(b"x")
    os.utime(old, (time.time() - 3600,) * 2)
    os.utime(png, (time.time() - 3600,) * 2)
    assert remove_orphan_temp_files(lib) == 1
    assert not old.exists() and fresh.exists() and png.exists()


def test_a_file_name_that_cannot_be_stored_is_a_problem_alone(tmp_path, lib):
    from mamview.core.ingest import UNUSABLE_NAME, find_files

    files = write_exam(tmp_path / "in")
    bad = os.fsencode(str(tmp_path / "in")) + b"/caf\xe9.dcm"
    shutil.copyfile(files[0], bad)
    found, problems = find_files([tmp_path / "in"])
    assert found == sorted(str(f) for f in files)
    assert [(p.path, p.reason) for p in problems] == [(str(tmp_path / "in") + "/caf\\xe9.dcm", UNUSABLE_NAME)]


def test_ensure_never_locks_a_shared_folder(tmp_path):
    import stat as st

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp given as --home
    lib = Library(shared).ensure()
    assert st.S_IMODE(shared.stat().st_mode) == 0o1777
    assert st.S_IMODE(lib.previews.stat().st_mode) == 0o700


def test_the_walk_without_fwalk_finds_the_same_files(tmp_path, monkeypatch):
    from mamview.core.ingest import find_files

    files = write_exam(tmp_path / "in" / "a")
    write_mammogram(tmp_path / "in" / ".hidden" / "x.dcm")
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"not read in a walk")
    os.symlink(tmp_path / "in" / "a", tmp_path / "in" / "link")  # links to folders are not followed
    with_fds = find_files([tmp_path / "in"])
    monkeypatch.delattr(os, "fwalk")  # as on Windows
    assert find_files([tmp_path / "in"]) == with_fds
    assert with_fds == (sorted(str(f) for f in files), [])


def test_an_implausible_window_is_listed_as_a_problem_and_the_preview_still_made(tmp_path, lib):
    src = tmp_path / "src"
    src.mkdir()
    bad = write_mammogram(src / "bad.dcm", window=(-1e6, 10.0))
    write_mammogram(src / "good.dcm", sop_uid="1.2.826.0.1.3680043.8.498.77")
    summary, events = consume(run_import(lib, [src]))
    assert summary.previews == 2
    db = connect(lib.database)
    problems = {r["path"]: r for r in db.query("SELECT * FROM problems")}
    assert list(problems) == [str(bad)]
    assert problems[str(bad)]["reason"] == "shown differently"
    assert "own range is shown" in problems[str(bad)]["detail"]
    assert any(getattr(e, "problem", None) and e.problem.reason == "shown differently" for e in events)


def test_study_members_from_disk_are_filed_with_their_exam(tmp_path, lib, capsys):
    """A folder as a PACS exports it: the four images with a presentation state, key objects
    and a CAD SR of the same study. The images make the exam; the others are listed with it."""
    from mamview.cli import main
    from tests.study_objects import write_study_objects

    images = write_exam(tmp_path / "in" / "exam")
    members = write_study_objects(images, tmp_path / "in" / "objects")
    summary, events = consume(run_import(lib, [tmp_path / "in"]))
    assert (summary.added, summary.objects) == (4, 3)
    assert not [e for e in events if isinstance(e, ProblemFound)]
    db = connect(lib.database)
    exams = reads.list_exams(db)
    assert len(exams) == 1 and exams[0]["complete"]
    got = reads.study_objects(db, [exams[0]["exam_key"]])[exams[0]["exam_key"]]
    assert {os.path.basename(o["path"]): o["kind"] for o in got} == {
        "PR.dcm": "presentation state", "KO.dcm": "key objects", "CADSR.dcm": "CAD SR"}
    db.close()
    # a second import reads nothing again
    again, _ = consume(run_import(lib, [tmp_path / "in"]))
    assert (again.added, again.objects, again.unchanged) == (0, 0, 4 + len(members))
    assert main(["--home", str(lib.home), "exams"]) == 0
    assert "+ 1 CAD SR, 1 key objects, 1 presentation state" in capsys.readouterr().out
    # a member whose file is gone is no longer listed
    members[0].unlink()
    consume(run_import(lib, [tmp_path / "in"]))
    db = connect(lib.database)
    left = reads.study_objects(db, [exams[0]["exam_key"]])[exams[0]["exam_key"]]
    assert {o["kind"] for o in left} == {"key objects", "CAD SR"}
    db.close()
