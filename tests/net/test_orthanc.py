"""mamview against a real PACS: Orthanc (the Debian package), on loopback, stopped by PID.

Each test is one scenario a PACS administrator would try: Orthanc pushing a study to
`mamview listen`, and mamview sending its SR to Orthanc and reading it back over Orthanc's REST API.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pydicom
import pytest

from mamview.cli import main
from mamview.core.cache import reads
from mamview.core.cache.db import connect_read_only
from mamview.core.reports import sr
from tests.net.conftest import LOOPBACK, cohort_folders, free_port
from tests.analytics.conftest import scored_library  # noqa: F401 - a fixture
from tests.net.orthanc import Orthanc, needs_orthanc

pytestmark = [needs_orthanc, pytest.mark.timeout(300)]


def _wait_for_text(path, text, proc, timeout=60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if proc.poll() is not None:
            raise AssertionError(f"mamview listen exited early ({proc.returncode}): {content}")
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} did not appear in {path} within {timeout} s")


def test_orthanc_pushes_a_study_to_mamview_listen(home, tmp_path, procs, cohort):
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"MAMVIEW": (LOOPBACK, node_port)}, procs=procs)
    try:
        folder = cohort_folders(cohort)[0]
        files = sorted(folder.rglob("*.dcm"))
        pacs.upload(files)
        err = tmp_path / "listen.err"
        proc = procs.start([sys.executable, "-m", "mamview", "--home", str(home), "listen",
                            "--port", str(node_port), "--ae-title", "MAMVIEW", "--host", LOOPBACK,
                            "--allow-ae", pacs.aet, "--no-score"],
                           stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                           stdin=subprocess.DEVNULL)
        _wait_for_text(err, "listening on", proc)
        patients = pacs.get("/patients")
        answer = pacs.post("/modalities/mamview/store",
                           {"Resources": patients, "Synchronous": True})
        assert answer.get("FailedInstancesCount", 0) == 0, answer
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert f"Received {len(files)} instances" in err.read_text()
        db = connect_read_only(home / "cache.sqlite")
        try:
            got = {im["sop_instance_uid"] for ex in reads.list_exams(db)
                   for im in reads.exam_images(db, ex["exam_key"])}
        finally:
            db.close()
        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert got == sent
    finally:
        pacs.stop()



def test_sr_send_files_the_report_in_the_image_study_and_a_resend_adds_nothing(
        scored_library, tmp_path, procs, capsys):
    lib, keys = scored_library
    pacs = Orthanc(tmp_path / "orthanc", {"MAMVIEW": (LOOPBACK, free_port())}, procs=procs)
    try:
        images = sorted((lib.home.parent / "files" / "P7" / "20230315").glob("*.dcm"))
        pacs.upload(images)
        args = ["--home", str(lib.home), "sr", "P7", "--date", "2023-03-15",
                "--out", str(tmp_path / "sr"), "--send", pacs.address]
        assert main(args) == 0, capsys.readouterr()
        assert main(args) == 0  # the same score again: the same instance
        srs = [t for t in pacs.instances() if t.get("Modality") == "SR"]
        assert len(srs) == 1
        study = pydicom.dcmread(images[0], stop_before_pixels=True).StudyInstanceUID
        assert srs[0]["StudyInstanceUID"] == study
        assert srs[0]["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.33"
        # read back over REST: the yearly risks and the model as written
        found = pacs.post("/tools/lookup", srs[0]["SOPInstanceUID"].encode())
        copy = tmp_path / "back.dcm"
        copy.write_bytes(pacs.get(f"/instances/{found[0]['ID']}/file"))
        got = sr.read_sr_values(copy)
        db = connect_read_only(lib.database)
        try:
            score = reads.scores_for_exams(db, [keys["2023-03-15"]])[keys["2023-03-15"]]
        finally:
            db.close()
        assert got["risk_percent"] == dict(zip(range(1, 6), sr.risk_percent_values(score["risk"])))
        assert got["text"]["Model weights SHA-256"] == score["weights_sha256"]
    finally:
        pacs.stop()


def test_fetch_priors_from_orthanc_of_studies_that_hold_non_image_objects(home, tmp_path, procs,
                                                                         priors):
    """Real studies hold a presentation state, key objects and a CAD SR beside the images:
    every earlier exam arrives, every object is stored, the images are indexed."""
    from tests.study_objects import write_study_objects

    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"MAMVIEW": (LOOPBACK, node_port)}, procs=procs)
    try:
        images = sorted(priors.rglob("*.dcm"))
        extra = []
        for study in sorted({p.parent for p in images}):
            extra += write_study_objects(sorted(study.glob("*.dcm")), tmp_path / "objs" / study.name)
        pacs.upload(images + extra)
        args = ["--home", str(home), "fetch-priors", "BENCH0001", "--pacs", pacs.address,
                "--our-ae", "MAMVIEW", "--port", str(node_port), "--host", LOOPBACK]
        rc = main(args)
        assert rc == 0
        db = connect_read_only(home / "cache.sqlite")
        try:
            exams = [ex["exam_key"] for ex in reads.list_exams(db)]
            got = {im["sop_instance_uid"] for ek in exams for im in reads.exam_images(db, ek)}
            members = reads.study_objects(db, exams)
        finally:
            db.close()
        assert got == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                       for f in images}
        # each exam lists its members by kind; none of them became an image or a problem
        assert len(exams) == 3
        assert all(reads.object_counts(members[ek]) == {
            "CAD SR": 1, "key objects": 1, "presentation state": 1} for ek in exams), members
        stored = sorted((home / "inbox").rglob("*.dcm"))
        assert len(stored) == len(images) + len(extra)
    finally:
        pacs.stop()
