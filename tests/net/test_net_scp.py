"""The storage node against dcmtk's storescu/echoscu on loopback: store, index, score,
duplicates, a truncated instance, allow-lists, restart."""

from __future__ import annotations

import csv
import os
import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from mamview.core.cache import reads
from mamview.core.cache import db as cache_db
from mamview.core.cache.db import connect
from mamview.core.ingest import run_import
from mamview.core.models.registry import DEMO_LABEL
from mamview.bench import dcmtk
from mamview.core.net import scp
from mamview.core.net.nodes import PacsNode
from mamview.core.net.qr import send_files
from mamview.core.paths import library
from tests.factories import write_truncated_copy
from tests.net.conftest import LOOPBACK, Recorder, cohort_folders, needs_dcmtk, run

pytestmark = [needs_dcmtk, pytest.mark.timeout(300)]  # a hung peer fails the test, never CI


def db_rows(lib, sql, args=()):
    conn = sqlite3.connect(lib.database)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def open_database_files(lib) -> list[str]:
    """The library's database files (the file, its -wal and -shm) that this process has open:
    every sqlite connection holds the file and, under WAL, its -wal and -shm."""
    names = {os.path.realpath(f"{lib.database}{suffix}") for suffix in ("", "-wal", "-shm")}
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
        if target in names:
            held.append(target)
    return sorted(held)


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                                reason="counts open files through /proc (Linux)")


def inbox_files(lib):
    return sorted(p for p in lib.inbox.rglob("*.dcm"))


def push(node, paths, scu_config, calling_ae="MODALITY", extra=()):
    cmd = dcmtk.storescu_command(LOOPBACK, node.bound_port, node.ae_title, paths, scu_config,
                                 calling_ae)
    return run(cmd[:1] + list(extra) + cmd[1:])


@pytest.mark.slow
def test_pushed_cohort_is_stored_indexed_and_scored_and_a_second_push_adds_nothing(
        home, cohort, scu_config):
    lib = library(home)
    rec = Recorder()
    expected = {r["sop_instance_uid"]: r for r in csv.DictReader(open(cohort / "images.csv"))}
    with scp.StorageNode(lib, port=0, host=LOOPBACK, on_event=rec, device="cpu",
                         allow_any=True) as node:
        r = push(node, cohort_folders(cohort), scu_config)
        assert r.returncode == 0, r.stderr
        assert node.wait_idle(180)
        stored = {uid for (uid,) in db_rows(lib, "SELECT sop_instance_uid FROM images")}
        assert stored == set(expected)
        assert len(inbox_files(lib)) == len(expected)
        # every image indexed from the inbox, in the hashed patient/study layout, with a preview
        for uid, path, pid, study in db_rows(
                lib, "SELECT i.sop_instance_uid, i.path, p.patient_id, i.study_uid FROM images i "
                     "JOIN patients p ON p.patient_key = i.patient_key"):
            assert path == str(scp.inbox_path(lib.inbox.resolve(), pid, study, uid))
        assert db_rows(lib, "SELECT count(*) FROM previews")[0][0] == len(expected)
        assert not list((lib.inbox / scp.INCOMING).iterdir())  # no temporary file left

        # every exam with its four views was scored with the demo model, and said so
        db = connect(lib.database)
        exams = reads.list_exams(db)
        db.close()
        complete = {e["exam_key"] for e in exams if e["complete"]}
        assert 0 < len(complete) < len(exams)  # the cohort has an exam with a missing view
        assert {e.exam_key for e in rec.of(scp.ExamComplete)} == complete
        scored = {ek: (mid, status) for ek, mid, status in db_rows(
            lib, "SELECT exam_key, model_id, status FROM scores")}
        assert set(scored) == complete
        assert all(v == ("demo", "ok") for v in scored.values())
        assert {e.model_label for e in rec.of(scp.ExamScored)} == {DEMO_LABEL}
        n_images, n_scores = len(stored), len(scored)

        # the same cohort again: every C-STORE succeeds, nothing is added
        r = push(node, cohort_folders(cohort), scu_config)
        assert r.returncode == 0, r.stderr
        assert node.wait_idle(120)
        assert node.stats.duplicates == len(expected)
        assert node.stats.received == len(expected) and node.stats.failed == 0
    assert len(inbox_files(lib)) == n_images
    assert db_rows(lib, "SELECT count(*) FROM images")[0][0] == n_images
    assert db_rows(lib, "SELECT count(*) FROM scores")[0][0] == n_scores
    log = (lib.logs / scp.LOG_FILE_NAME).read_text()
    assert "exam scored" in log and DEMO_LABEL in log


def _short_pixel_copy(src, dst):
    """A well-formed instance whose Pixel Data stops halfway (what storescu will still send)."""
    ds = pydicom.dcmread(src)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_a_truncated_instance_gets_a_failure_status_and_the_association_goes_on(
        home, tmp_path, cohort, scu_config):
    lib = library(home)
    rec = Recorder()
    explicit = [r for r in csv.DictReader(open(cohort / "images.csv"))
                if r["transfer_syntax_uid"] == "1.2.840.10008.1.2.1"]
    good = [cohort / r["path"] for r in explicit[:3]]
    bad = _short_pixel_copy(good[0], tmp_path / "short.dcm")
    with scp.StorageNode(lib, port=0, host=LOOPBACK, on_event=rec, score=False,
                         allow_any=True) as node:
        # storescu sends the bad one between good ones, in one association
        r = push(node, [good[1], bad, good[2]], scu_config, extra=["-v"])
        assert r.returncode == 0, r.stderr
        assert "Received Store Response (Error" in r.stderr or "C000" in r.stderr, r.stderr
        # a file cut off mid-transfer, sent as its raw bytes by a pynetdicom peer
        cut = write_truncated_copy(good[0], tmp_path / "cut.dcm")
        sent = send_files(PacsNode("MAMVIEW", LOOPBACK, node.bound_port), [cut, good[0]],
                          "OTHERSCU")
        assert sent.sent == 1 and [p for p, _ in sent.failed] == [str(cut)]
        assert "0xC000" in sent.failed[0][1]
        assert node.wait_idle(60)
    failed = rec.of(scp.InstanceFailed)
    assert [f.status for f in failed] == [scp.CANNOT_UNDERSTAND] * 2
    assert all("truncated" in f.reason for f in failed)
    stored = {uid for (uid,) in db_rows(lib, "SELECT sop_instance_uid FROM images")}
    assert stored == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in good}
    assert len(inbox_files(lib)) == 3
    assert not list((lib.inbox / scp.INCOMING).iterdir())
    assert "refused" in (lib.logs / scp.LOG_FILE_NAME).read_text()


def test_a_calling_ae_title_not_on_the_allow_list_is_rejected(home, cohort, scu_config):
    lib = library(home)
    rec = Recorder()
    one = next(cohort.rglob("*.dcm"))
    with scp.StorageNode(lib, port=0, host=LOOPBACK, allowed_aes=["MODALITY"], on_event=rec,
                         score=False) as node:
        r = push(node, [one], scu_config, calling_ae="INTRUDER")
        assert r.returncode != 0
        assert "Association Rejected" in r.stderr, r.stderr
        ok = run(["echoscu", "-aet", "MODALITY", "-aec", node.ae_title, LOOPBACK,
                  str(node.bound_port)], timeout=30)
        assert ok.returncode == 0, ok.stderr
        assert node.wait_idle(30)
    assert [e.calling_ae for e in rec.of(scp.AssociationRefused)] == ["INTRUDER"]
    assert inbox_files(lib) == []
    assert node.stats.received == 0


def test_a_peer_address_not_on_the_allow_list_is_refused(home):
    lib = library(home)
    with scp.StorageNode(lib, port=0, host=LOOPBACK, allowed_hosts=["10.9.9.9"],
                         score=False) as node:
        r = run(["echoscu", "-aec", node.ae_title, LOOPBACK, str(node.bound_port)], timeout=30)
        assert r.returncode != 0
    with scp.StorageNode(lib, port=0, host=LOOPBACK, allowed_hosts=["127.0.0.0/8"],
                         score=False) as node:
        r = run(["echoscu", "-aec", node.ae_title, LOOPBACK, str(node.bound_port)], timeout=30)
        assert r.returncode == 0, r.stderr


def test_restart_reindexes_the_inbox(home, cohort, scu_config):
    """Files received but not indexed (cache lost, crash before indexing, a copy while the
    node was down) are indexed at the next start; half-received temporary files are dropped."""
    lib = library(home)
    folders = cohort_folders(cohort)
    with scp.StorageNode(lib, port=0, host=LOOPBACK, score=False, allow_any=True) as node:
        assert push(node, folders[:1], scu_config).returncode == 0
        assert node.wait_idle(60)
    n = len(inbox_files(lib))
    assert n > 0
    for suffix in ("", "-wal", "-shm"):  # the cache is gone, the inbox is not
        (lib.home / f"cache.sqlite{suffix}").unlink(missing_ok=True)
    (lib.inbox / scp.INCOMING / "dead.part").write_bytes(b"half a file")
    with scp.StorageNode(lib, port=0, host=LOOPBACK, score=False, allow_any=True) as node:
        assert node.wait_idle(60)
    assert db_rows(lib, "SELECT count(*) FROM images")[0][0] == n
    assert not (lib.inbox / scp.INCOMING / "dead.part").exists()


def test_a_port_in_use_is_a_clear_oserror(home):
    lib = library(home)
    with scp.StorageNode(lib, port=0, host=LOOPBACK, score=False, allow_any=True) as node:
        with pytest.raises(OSError):
            scp.StorageNode(lib, port=node.bound_port, host=LOOPBACK, score=False,
                            allow_any=True).start()


def test_inbox_names_are_hashes_that_stay_in_the_inbox(tmp_path):
    inbox = tmp_path / "inbox"
    p = scp.inbox_path(inbox, "../../etc", "1.2.3", "1.2.3.4")
    assert p.parent.parent.parent == inbox
    assert all(len(part) == 32 for part in (p.parent.parent.name, p.parent.name, p.stem))
    assert p.suffix == ".dcm" and ".." not in p.parts
    assert scp.inbox_path(inbox, "", "1.2", "1.3") != scp.inbox_path(inbox, "", "1.2", "1.4")


def test_an_exam_is_complete_when_its_fourth_view_arrives(home, cohort, scu_config):
    lib = library(home)
    rec = Recorder()
    rows = [r for r in csv.DictReader(open(cohort / "images.csv"))
            if r["patient_id"] == "D1-0001"]
    date = rows[0]["exam_date"]
    views = [cohort / r["path"] for r in rows if r["exam_date"] == date]
    assert len(views) == 4
    with scp.StorageNode(lib, port=0, host=LOOPBACK, on_event=rec, score=False,
                         allow_any=True) as node:
        assert push(node, views[:3], scu_config).returncode == 0
        assert node.wait_idle(60)
        assert rec.of(scp.ExamComplete) == []
        assert push(node, views[3:], scu_config).returncode == 0
        assert node.wait_idle(60)
    assert [e.exam_date for e in rec.of(scp.ExamComplete)] == [date]
    assert [e.patient_id for e in rec.of(scp.ExamComplete)] == ["D1-0001"]


def test_files_in_the_old_inbox_layout_still_import_and_count_as_duplicates(
        home, cohort, scu_config):
    """Instances received before inbox names were hashed (`<PatientID>/<StudyUID>/<SOP>.dcm`)
    are indexed at start; the same instance pushed again is a duplicate, not a second file."""
    import shutil

    lib = library(home)
    one = next(cohort.rglob("*.dcm"))
    ds = pydicom.dcmread(one, stop_before_pixels=True)
    old = lib.inbox / ds.PatientID / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    old.parent.mkdir(parents=True)
    shutil.copyfile(one, old)
    with scp.StorageNode(lib, port=0, host=LOOPBACK, score=False, allowed_aes=["MODALITY"],
                         make_previews=False) as node:
        assert node.wait_idle(60)
        assert db_rows(lib, "SELECT path FROM images") == [(str(old.resolve()),)]
        assert push(node, [one], scu_config).returncode == 0
        assert node.wait_idle(60)
        assert node.stats.duplicates == 1 and node.stats.received == 0
    assert inbox_files(lib) == [old]


@needs_proc
def test_the_node_closes_every_database_connection_it_opens(home, cohort, scu_config):
    """The indexer's connection lives as long as its thread; each duplicate check from an
    association's thread opens a read-only one and closes it. After stop none is left open."""
    lib = library(home)
    folder = cohort_folders(cohort)[0]
    # imported from the files first: pushing them again is a duplicate found in the index
    summary = None
    gen = run_import(lib, [folder], make_previews=False)
    while summary is None:
        try:
            next(gen)
        except StopIteration as stop:
            summary = stop.value
    n = summary.added
    assert n > 0 and open_database_files(lib) == []
    with scp.StorageNode(lib, port=0, host=LOOPBACK, score=False, allow_any=True) as node:
        assert node.wait_idle(60)
        assert open_database_files(lib)  # the indexer's connection: the count sees it
        assert push(node, [folder], scu_config).returncode == 0
        assert node.wait_idle(60)
        assert (node.stats.duplicates, node.stats.received) == (n, 0)
    assert not node.indexer_alive
    assert open_database_files(lib) == []
    assert inbox_files(lib) == []


@needs_proc
def test_a_read_for_the_node_closes_its_connection_even_when_it_fails(home):
    lib = library(home)
    with cache_db.opened(lib.database) as db:
        assert open_database_files(lib)
        assert not reads.has_present_image(db, "1.2.3")
    assert open_database_files(lib) == []
    with pytest.raises(cache_db.DatabaseError):
        with cache_db.reading(lib.database) as db:
            assert open_database_files(lib)
            db.execute("SELECT nothing FROM nowhere")
    assert open_database_files(lib) == []


def test_every_object_of_a_study_is_stored_and_disk_and_network_classify_alike(home, tmp_path):
    """CR images with Modality MG are mammograms over the network as on disk; a presentation
    state, key objects and a CAD SR are filed with their study; a CT of another study is refused
    with a failure status that names why; JPEG Extended is not even offered a context."""
    from pydicom.uid import JPEGExtended12Bit
    from tests.factories import write_exam, write_other_modality
    from tests.study_objects import write_study_objects

    lib = library(home)
    src = tmp_path / "study"
    study = generate_uid()
    images = write_exam(src, "CR1", "20240101", study_uid=study, shape=(64, 52),
                        extra={"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"})  # CR Image
    members = write_study_objects(images, src / "objects")
    ct = write_other_modality(tmp_path / "ct.dcm", modality="CT")
    with scp.StorageNode(lib, port=0, host=LOOPBACK, score=False, allow_any=True) as node:
        assert JPEGExtended12Bit not in scp.TRANSFER_SYNTAXES
        sent = send_files(PacsNode("MAMVIEW", LOOPBACK, node.bound_port),
                          images + members + [ct], "OTHERSCU")
        assert sent.sent == 7, sent.failed
        assert [p for p, _ in sent.failed] == [str(ct)]
        assert node.wait_idle(60)
    kinds = dict(db_rows(lib, "SELECT kind, count(*) FROM study_objects GROUP BY kind"))
    assert kinds == {"CAD SR": 1, "key objects": 1, "presentation state": 1}
    assert len(db_rows(lib, "SELECT 1 FROM images WHERE patient_key LIKE '%CR1'")) == 4
    # the same files imported from disk land in the same tables with the same kinds
    other = library(tmp_path / "disk-home")
    from mamview.core.ingest import drain
    drain(run_import(other, [src], make_previews=False))
    assert dict(db_rows(other, "SELECT kind, count(*) FROM study_objects GROUP BY kind")) == kinds
