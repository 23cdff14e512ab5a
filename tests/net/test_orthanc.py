"""mamview against a real PACS: Orthanc (the Debian package), on loopback, stopped by PID.

Each test is one scenario a PACS administrator would try: Orthanc pushing a study to
`mamview listen`, and mamview sending its SR to Orthanc and reading it back over Orthanc's REST API.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pydicom
import pytest

from mamview.cli import main
from mamview.core.cache import reads
from mamview.core.cache.db import connect_read_only
from mamview.core.reports import sr
from tests.net.conftest import LOOPBACK, cohort_folders, free_port, wait_for_text
from tests.analytics.conftest import scored_library  # noqa: F401 - a fixture
from tests.net.orthanc import Orthanc, needs_orthanc

pytestmark = [needs_orthanc, pytest.mark.timeout(300)]


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
        wait_for_text(err, "listening on", proc)
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
                "--our-ae", "MAMVIEW", "--port", str(node_port), "--host", LOOPBACK, "--all",
                "--score"]
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
        # the images are previewed and scored (on arrival, with --score); the members are not
        from mamview.core.paths import library

        db = connect_read_only(home / "cache.sqlite")
        try:
            model = reads.choose_model(library(home), None, db)
            states = reads.current_scores(db, exams, model)
            previewed = {im["sop_instance_uid"] for ek in exams for im in reads.exam_images(db, ek)
                         if reads.preview_row(db, im["sop_instance_uid"]) is not None}
        finally:
            db.close()
        assert {s.state.value for s in states.values()} == {"current"}, states
        assert previewed == got
    finally:
        pacs.stop()


# ---------------------------------------------------------------- query/retrieve as an administrator sees it


def test_orthanc_refusals_name_their_cause(home, tmp_path, procs, priors, capsys):
    """A calling AE Orthanc does not list, a move destination it does not know, and a known
    destination nothing answers at: each message says what to fix, never just 0xC000."""
    from mamview.core.net.nodes import NetError, PacsNode
    from mamview.core.net.qr import fetch_priors, find_studies
    from mamview.core.paths import library

    pacs = Orthanc(tmp_path / "orthanc", {"MAMVIEW": (LOOPBACK, free_port())}, procs=procs)
    try:
        pacs.upload(sorted(priors.rglob("*.dcm")))
        node = PacsNode.parse(pacs.address)
        words = ("the PACS does not know our AE title STRANGER (association rejected: calling "
                 "AE not recognized)")
        with pytest.raises(NetError, match=words.replace("(", r"\(").replace(")", r"\)")):
            find_studies(node, "BENCH0001", "STRANGER")
        assert main(["--home", str(home), "echo", pacs.address, "--our-ae", "STRANGER"]) == 2
        assert words in capsys.readouterr().err
        assert main(["--home", str(home), "echo", pacs.address]) == 0
        lib = library(home)
        summary = fetch_priors(lib, "BENCH0001", node, "MAMVIEW", move_destination="NOWHERE")
        assert summary.studies_fetched == 0 and len(summary.failures) == 3
        assert all("the PACS does not know the move destination NOWHERE: add it to its "
                   "modalities" in f and "0xC000" in f for f in summary.failures), summary.failures
        # MAMVIEW is listed, but nothing listens at its port: the same fix, in its modalities
        summary = fetch_priors(lib, "BENCH0001", node, "MAMVIEW")
        assert summary.studies_fetched == 0 and summary.failures
        assert all("correct the host and port it has for MAMVIEW" in f
                   for f in summary.failures), summary.failures
    finally:
        pacs.stop()


def test_fetch_priors_from_orthanc_sends_her_issuer_and_leaves_newer_studies(home, tmp_path,
                                                                            procs, priors):
    """Orthanc holds her three exams (issuer HOSP_A) and another woman's under the same
    PatientID (HOSP_B); her middle exam is here. Only her older exam comes; the newer is left."""
    from mamview.core.net.nodes import PacsNode
    from mamview.core.net.qr import fetch_priors, library_study_uids
    from mamview.core.net.scp import StorageNode
    from mamview.core.paths import library
    from tests.net.test_net_qr import _by_date, _with_issuer, study_uids

    dates = _by_date(sorted(str(p) for p in priors.rglob("*.dcm")))
    hers = _by_date(_with_issuer([f for d in dates.values() for f in d], "HOSP_A",
                                 tmp_path / "a"))
    other = _with_issuer(dates[min(dates)], "HOSP_B", tmp_path / "b", new_uids=True)
    oldest, middle, newest = hers
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"MAMVIEW": (LOOPBACK, node_port)}, procs=procs)
    try:
        pacs.upload([f for fs in hers.values() for f in fs] + other)
        assert main(["--home", str(home), "import", "--no-previews", *hers[middle]]) == 0
        lib = library(home)
        with StorageNode(lib, "MAMVIEW", port=node_port, host=LOOPBACK, score=False,
                         allowed_aes=[pacs.aet]) as sink:
            summary = fetch_priors(lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW")
            assert sink.wait_idle(60)
        assert summary.ok and summary.issuer == "HOSP_A"
        assert (summary.studies_found, summary.already_in_library, summary.newer_left,
                summary.studies_fetched, summary.instances_moved) == (3, 1, 1, 1, 4)
        assert library_study_uids(lib) == study_uids(hers[oldest] + hers[middle])
    finally:
        pacs.stop()


def _restart_with_permissions(pacs: Orthanc, procs, node_port: int, **allow) -> None:
    """Stop `pacs` and start it again (same storage, ports and log folder) with MAMVIEW
    listed with these permissions (AllowFind=False …); `pacs.stop()` stops the new process."""
    import json

    from tests.net.conftest import wait_for_port

    pacs.stop()
    config = json.loads(pacs.config_path.read_text())
    config["DicomModalities"] = {"mamview": {"AET": "MAMVIEW", "Host": LOOPBACK,
                                             "Port": node_port, **allow}}
    pacs.config_path.write_text(json.dumps(config))
    pacs.log = open(pacs.folder / "orthanc-restarted.log", "a")  # `stop()` closes it
    pacs.proc = procs.start([pacs.proc.args[0], "--no-jobs", str(pacs.config_path)],
                            stdout=pacs.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_port(pacs.http_port)
    wait_for_port(pacs.dicom_port)


def test_orthanc_permissions_that_refuse_us_are_named_not_timeouts(home, tmp_path, procs,
                                                                    priors):
    """Orthanc ends the association on a request its permissions refuse: the message says
    that, at once, instead of "stopped answering (timeout or aborted)"."""
    from mamview.core.net.nodes import NetError, PacsNode
    from mamview.core.net.qr import fetch_priors, find_studies
    from mamview.core.paths import library

    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", {"MAMVIEW": (LOOPBACK, node_port)}, procs=procs)
    try:
        pacs.upload(sorted(priors.rglob("*.dcm")))
        node = PacsNode.parse(pacs.address)
        _restart_with_permissions(pacs, procs, node_port, AllowFind=False)
        # the words say it came at once: a timeout reads "did not answer … within"
        with pytest.raises(NetError, match=r"ended the association instead of answering the "
                                           r"query \(C-FIND\): it may not allow our AE title "
                                           r"MAMVIEW"):
            find_studies(node, "BENCH0001", "MAMVIEW", timeout=30)
        _restart_with_permissions(pacs, procs, node_port, AllowFind=True, AllowMove=False)
        summary = fetch_priors(library(home), "BENCH0001", node, "MAMVIEW")
        assert summary.studies_found == 3 and summary.studies_fetched == 0
        assert summary.failures and all(
            "ended the association instead of answering the retrieve (C-MOVE)" in f
            for f in summary.failures), summary.failures
    finally:
        pacs.stop()
