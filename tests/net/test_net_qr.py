"""Query/retrieve, echo and send against dcmtk's dcmqrscp acting as a small PACS."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pydicom
import pytest

from mamview.cli import main
from mamview.core.net.nodes import NetError, PacsNode, echo
from mamview.core.net.qr import fetch_priors, find_studies, library_study_uids, send_files
from mamview.core.net.scp import StorageNode
from mamview.core.paths import library
from tests.factories import write_sr
from tests.net.conftest import LOOPBACK, free_port, needs_dcmtk
from tests.net.test_net_scp import needs_proc, open_database_files

pytestmark = [needs_dcmtk, pytest.mark.timeout(300)]  # a hung peer fails the test, never CI


def study_uids(files) -> set[str]:
    return {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}


def library_images(lib) -> list[tuple[str, str]]:
    conn = sqlite3.connect(lib.database)
    try:
        return conn.execute("SELECT sop_instance_uid, study_uid FROM images").fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_fetch_priors_brings_every_prior_study_in(home, pacs, capsys):
    lib = library(home)
    args = ["--home", str(home), "fetch-priors", "BENCH0001", "--pacs", pacs.address,
            "--our-ae", "MAMVIEW", "--port", str(pacs.node_port), "--host", LOOPBACK]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 studies of BENCH0001" in out and "3 fetched (12 images)" in out
    images = library_images(lib)
    assert {uid for uid, _ in images} == {
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in pacs.files}
    assert {s for _, s in images} == study_uids(pacs.files)
    # the exams are complete in the library: four views each
    assert main(["--home", str(home), "exams", "BENCH0001"]) == 0
    listing = capsys.readouterr().out
    assert listing.count("complete") == 3

    # again: everything is already here, nothing is moved
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 already in the library, 0 fetched" in out
    assert len(library_images(lib)) == 12


def test_fetch_priors_skips_studies_already_in_the_library(home, pacs):
    lib = library(home)
    studies = find_studies(PacsNode.parse(pacs.address), "BENCH0001", "MAMVIEW")
    assert [s.study_instance_uid for s in studies] and len(studies) == 3
    assert [s.study_date for s in studies] == sorted(s.study_date for s in studies)
    # the oldest study is in the library already (imported from files)
    oldest = [f for f in pacs.files
              if pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID
              == studies[0].study_instance_uid]
    assert main(["--home", str(home), "import", "--no-previews", *oldest]) == 0
    seen = []
    with StorageNode(lib, "MAMVIEW", port=pacs.node_port, host=LOOPBACK, score=False,
                     allowed_aes=["PACS"]) as node:
        # all_studies: the two missing studies are newer than the one she has here
        summary = fetch_priors(lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW",
                               progress=lambda done, total, study: seen.append((done, total)),
                               all_studies=True)
        assert node.wait_idle(60)
    assert (summary.studies_found, summary.already_in_library, summary.studies_fetched) == (3, 1, 2)
    assert summary.instances_moved == 8 and summary.ok
    assert seen == [(0, 2), (1, 2), (2, 2)]
    assert node.stats.received == 8
    assert library_study_uids(lib) == study_uids(pacs.files)
    if Path("/proc/self/fd").is_dir():  # the lookup, the node and its threads closed theirs
        assert open_database_files(lib) == []


@needs_proc
def test_the_library_lookup_opens_a_missing_database_and_closes_it(home):
    lib = library(home)
    assert library_study_uids(lib) == set()
    assert lib.database.is_file()
    assert open_database_files(lib) == []


def test_an_unknown_move_destination_is_reported_per_study(home, pacs):
    lib = library(home)
    summary = fetch_priors(lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW",
                           move_destination="NOWHERE")
    assert summary.studies_fetched == 0 and not summary.ok
    assert len(summary.failures) == 3
    # dcmqrscp answers 0xA801: the cause, named, and what the administrator does about it
    assert all("the PACS does not know the move destination NOWHERE: add it to its modalities"
               in f for f in summary.failures), summary.failures


def test_a_move_destination_nothing_answers_at_is_named(home, pacs):
    # the PACS knows MAMVIEW at pacs.node_port, where no node runs
    summary = fetch_priors(library(home), "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW")
    assert summary.studies_fetched == 0 and summary.instances_failed == 12
    assert len(summary.failures) == 3
    assert all("could not deliver the images to MAMVIEW" in f and "nothing accepted them" in f
               for f in summary.failures), summary.failures


def test_echo_against_dcmqrscp(home, pacs, capsys):
    assert main(["--home", str(home), "echo", pacs.address]) == 0
    assert "answered C-ECHO" in capsys.readouterr().out


def test_refusals_give_a_clear_message_not_a_traceback(home, pacs, capsys):
    # a PACS that does not know the called AE title
    wrong_ae = f"NOTPACS@{LOOPBACK}:{pacs.port}"
    assert main(["--home", str(home), "echo", wrong_ae]) == 2
    err = capsys.readouterr().err
    # dcmqrscp (fork mode) usually rejects an unknown called AE title, now and then it aborts
    # instead; either way the user gets the cause in a sentence naming the node
    assert ("does not answer to the AE title NOTPACS (association rejected: called AE title "
            "not recognised)" in err or "aborted the association as it was being made" in err)
    assert "NOTPACS@" in err and "Traceback" not in err
    # nothing listens there
    port = free_port()
    closed = f"PACS@{LOOPBACK}:{port}"
    assert main(["--home", str(home), "echo", closed]) == 2
    err = capsys.readouterr().err
    assert f"could not reach {closed}: nothing answers at {LOOPBACK}:{port}" in err
    assert "Traceback" not in err
    assert main(["--home", str(home), "fetch-priors", "BENCH0001", "--pacs", closed,
                 "--port", "0", "--host", LOOPBACK]) == 2
    err = capsys.readouterr().err
    assert f"nothing answers at {LOOPBACK}:{port}" in err and "Traceback" not in err
    with pytest.raises(NetError, match=r"NOTPACS@.*(called AE title not recognised|aborted)"):
        find_studies(PacsNode.parse(wrong_ae), "BENCH0001", "MAMVIEW")
    # a malformed address
    assert main(["--home", str(home), "echo", "PACS@localhost"]) == 2
    assert "AE@host:port" in capsys.readouterr().err


def test_a_caller_the_pacs_does_not_accept_gets_the_reason(home, strict_pacs, capsys):
    node = PacsNode.parse(strict_pacs.address)
    assert len(find_studies(node, "BENCH0001", "MAMVIEW")) == 3  # the caller it knows
    # dcmqrscp answers a caller it does not list with "called AE title not recognised":
    # the message gives pynetdicom's reason and names our AE title as a possible cause
    with pytest.raises(NetError) as info:
        find_studies(node, "BENCH0001", "STRANGER")
    msg = str(info.value)
    assert "association rejected: called AE title not recognised" in msg
    assert "does not accept our AE title STRANGER" in msg
    assert main(["--home", str(home), "echo", strict_pacs.address, "--our-ae", "STRANGER"]) == 2
    err = capsys.readouterr().err
    assert "does not accept our AE title STRANGER" in err and "Traceback" not in err
    assert main(["--home", str(home), "echo", strict_pacs.address]) == 0


def test_a_pacs_at_its_association_limit_says_to_try_again(home, tmp_path, procs, capsys):
    from pynetdicom.sop_class import Verification

    from mamview.core.net.nodes import make_ae
    from tests.net.conftest import start_dcmqrscp

    busy = start_dcmqrscp(tmp_path, procs, [], name="pacs-busy", max_associations=1)
    ae = make_ae("OTHER")
    ae.add_requested_context(Verification)
    held = ae.associate(LOOPBACK, busy.port, ae_title="PACS")  # the one it serves
    try:
        assert held.is_established
        assert main(["--home", str(home), "echo", busy.address]) == 2
        err = capsys.readouterr().err
        assert "association rejected: local limit exceeded); try again later" in err
        with pytest.raises(NetError, match="local limit exceeded"):
            find_studies(PacsNode.parse(busy.address), "BENCH0001", "MAMVIEW")
    finally:
        held.release()


def test_a_patient_root_only_pacs_is_asked_at_patient_then_study_level(home, patient_root_pacs):
    lib = library(home)
    node = PacsNode.parse(patient_root_pacs.address)
    studies = find_studies(node, "BENCH0001", "MAMVIEW")
    assert {s.study_instance_uid for s in studies} == study_uids(patient_root_pacs.files)
    assert find_studies(node, "NOBODY", "MAMVIEW") == []  # no such woman at PATIENT level
    with StorageNode(lib, "MAMVIEW", port=patient_root_pacs.node_port, host=LOOPBACK,
                     score=False, allowed_aes=["PACS"]) as sink:
        summary = fetch_priors(lib, "BENCH0001", node, "MAMVIEW")
        assert sink.wait_idle(60)
    assert summary.query_model == "Patient Root" and summary.ok
    assert (summary.studies_found, summary.studies_fetched, summary.instances_moved) == (3, 3, 12)
    assert library_study_uids(lib) == study_uids(patient_root_pacs.files)


def test_a_node_without_query_retrieve_says_which_services_it_lacks(home):
    # a storage-only node (ours: dcmqrscp cannot be told to drop every Q/R model)
    with StorageNode(library(home), "STORE", port=0, host=LOOPBACK, score=False,
                     allowed_aes=["MAMVIEW"]) as store:
        node = PacsNode("STORE", LOOPBACK, store.bound_port)
        with pytest.raises(NetError) as info:
            find_studies(node, "BENCH0001", "MAMVIEW")
        assert echo(node, "MAMVIEW").ok  # it is there, and answers
    msg = str(info.value)
    assert "accepted the association but offers none of the services we asked for" in msg
    assert "Study Root Query/Retrieve Information Model - FIND" in msg
    assert "Patient Root Query/Retrieve Information Model - FIND" in msg


def _by_date(files) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in files:
        out.setdefault(pydicom.dcmread(f, stop_before_pixels=True).StudyDate, []).append(f)
    return dict(sorted(out.items()))


def test_by_default_only_studies_before_her_latest_exam_come(home, pacs, capsys):
    lib = library(home)
    dates = _by_date(pacs.files)
    oldest, middle, newest = dates
    # her middle exam is here: the oldest is a prior, the newest is not
    assert main(["--home", str(home), "import", "--no-previews", *dates[middle]]) == 0
    capsys.readouterr()
    args = ["--home", str(home), "fetch-priors", "BENCH0001", "--pacs", pacs.address,
            "--port", str(pacs.node_port), "--host", LOOPBACK]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "3 studies of BENCH0001; 1 already in the library, 1 fetched (4 images)" in out
    iso = f"{middle[:4]}-{middle[4:6]}-{middle[6:]}"
    assert f"1 newer or undated studies left on the PACS (not before her latest exam here, " \
           f"{iso}); fetch them with --all" in out
    assert library_study_uids(lib) == study_uids(dates[oldest] + dates[middle])
    assert main(args + ["--all"]) == 0
    out = capsys.readouterr().out
    assert "2 already in the library, 1 fetched (4 images)" in out and "newer" not in out
    assert library_study_uids(lib) == study_uids(pacs.files)


def _with_issuer(files, issuer: str, out: Path, new_uids: bool = False) -> list[str]:
    """Copies of `files` whose IssuerOfPatientID is `issuer` (with fresh UIDs: another woman)."""
    from pydicom.uid import generate_uid

    made, uids = [], {}
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        ds.IssuerOfPatientID = issuer
        if new_uids:
            for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
                old = str(ds.get(kw))
                setattr(ds, kw, uids.setdefault(old, generate_uid()))
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{issuer}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        made.append(str(path))
    return made


def test_the_issuer_she_has_here_keeps_another_womans_studies_out(home, tmp_path, procs, priors):
    from tests.net.conftest import start_dcmqrscp

    dates = _by_date(sorted(str(p) for p in priors.rglob("*.dcm")))
    hers = _with_issuer([f for d in dates.values() for f in d], "HOSP_A", tmp_path / "a")
    # another hospital's woman with the same PatientID (and, here, the same study dates)
    other = _with_issuer(dates[min(dates)], "HOSP_B", tmp_path / "b", new_uids=True)
    pacs = start_dcmqrscp(tmp_path, procs, hers + other)
    lib = library(home)
    newest = _by_date(hers)[max(dates)]
    assert main(["--home", str(home), "import", "--no-previews", *newest]) == 0
    with StorageNode(lib, "MAMVIEW", port=pacs.node_port, host=LOOPBACK, score=False,
                     allowed_aes=["PACS"]) as sink:
        summary = fetch_priors(lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW")
        assert sink.wait_idle(60)
    assert summary.issuer == "HOSP_A" and summary.query_model == "Study Root" and summary.ok
    assert (summary.studies_found, summary.already_in_library, summary.studies_fetched) == (3, 1, 2)
    assert library_study_uids(lib) == study_uids(hers)
    # without the issuer, the PACS answers for both women
    assert len(find_studies(PacsNode.parse(pacs.address), "BENCH0001", "MAMVIEW")) == 4


def test_patient_root_asks_for_her_issuer_at_patient_level(home, tmp_path, procs, priors):
    from tests.net.conftest import start_dcmqrscp

    dates = _by_date(sorted(str(p) for p in priors.rglob("*.dcm")))
    other = _with_issuer(dates[min(dates)], "HOSP_B", tmp_path / "b", new_uids=True)
    pacs = start_dcmqrscp(tmp_path, procs, other, flags=["-QS"])
    node = PacsNode.parse(pacs.address)
    # the PACS holds only the other hospital's woman: none of hers, though the ID is the same
    assert find_studies(node, "BENCH0001", "MAMVIEW", issuer="HOSP_A") == []
    assert len(find_studies(node, "BENCH0001", "MAMVIEW", issuer="HOSP_B")) == 1
    assert len(find_studies(node, "BENCH0001", "MAMVIEW")) == 1
    # the library's issuer for her is the one sent
    lib = library(home)
    hers = _with_issuer(dates[max(dates)], "HOSP_A", tmp_path / "a")
    assert main(["--home", str(home), "import", "--no-previews", *hers]) == 0
    summary = fetch_priors(lib, "BENCH0001", node, "MAMVIEW")
    assert (summary.issuer, summary.query_model, summary.studies_found) == (
        "HOSP_A", "Patient Root", 0)


def test_cancel_between_studies_stops_the_fetch(home, pacs):
    import threading

    lib = library(home)
    cancel = threading.Event()

    def progress(done, total, study):
        if done == 1:
            cancel.set()  # the first study has come; the others are not asked for

    with StorageNode(lib, "MAMVIEW", port=pacs.node_port, host=LOOPBACK, score=False,
                     allowed_aes=["PACS"]) as sink:
        summary = fetch_priors(lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW",
                               progress=progress, cancel=cancel)
        assert sink.wait_idle(60)
    assert summary.cancelled and not summary.ok
    assert (summary.studies_fetched, summary.instances_moved) == (1, 4)
    assert len(library_study_uids(lib)) == 1
    assert "Cancelled" in " ".join(summary.lines())


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def test_cancel_during_a_transfer_sends_c_cancel_and_the_pacs_stops(home, pacs, caplog):
    """Our node holds the first image's C-STORE until the C-CANCEL has gone out; dcmqrscp then
    ends the move with 0xFE00 and no further study is asked for."""
    import logging
    import threading

    from mamview.core.net.scp import InstanceStored

    lib = library(home)
    cancel, release = threading.Event(), threading.Event()

    def on_event(ev):
        if isinstance(ev, InstanceStored) and not cancel.is_set():
            cancel.set()
            release.wait(60)

    caplog.set_level(logging.INFO, logger="mamview.net")
    with StorageNode(lib, "MAMVIEW", port=pacs.node_port, host=LOOPBACK, score=False,
                     allowed_aes=["PACS"], on_event=on_event) as sink:
        out = {}
        worker = threading.Thread(target=lambda: out.setdefault("s", fetch_priors(
            lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW", cancel=cancel)))
        worker.start()
        try:
            _wait(lambda: "sent C-CANCEL" in caplog.text, "the C-CANCEL")
        finally:
            release.set()
            worker.join(120)
        assert sink.wait_idle(60)
    summary = out["s"]
    assert summary.cancelled and summary.failures == []
    assert summary.studies_fetched == 0 and summary.instances_moved < 4
    assert sink.stats.received < 4
    # the PACS got it and ended the move so
    assert "0xfe00: Cancel" in Path(pacs.log).read_text()


def test_ctrl_c_cancels_the_cli_cleanly(home, pacs, procs, tmp_path):
    """SIGINT to `mamview fetch-priors` during a transfer: C-CANCEL, summary, exit 130."""
    import signal
    import subprocess
    import sys
    import threading

    from mamview.core.net.scp import InstanceStored

    lib = library(home)
    arrived, release = threading.Event(), threading.Event()

    def on_event(ev):
        if isinstance(ev, InstanceStored) and not arrived.is_set():
            arrived.set()
            release.wait(60)

    err = tmp_path / "fetch.err"
    # our node holds the port: the command uses it, and we hold the transfer mid-study
    with StorageNode(lib, "MAMVIEW", port=pacs.node_port, host=LOOPBACK, score=False,
                     allowed_aes=["PACS"], on_event=on_event):
        proc = procs.start([sys.executable, "-m", "mamview", "--home", str(home),
                            "fetch-priors", "BENCH0001", "--pacs", pacs.address,
                            "--port", str(pacs.node_port), "--host", LOOPBACK],
                           stdout=subprocess.PIPE, stderr=open(err, "w"),
                           stdin=subprocess.DEVNULL, text=True)
        try:
            assert arrived.wait(60)
            proc.send_signal(signal.SIGINT)
            _wait(lambda: "Cancelling" in err.read_text(), "the cancel notice")
        finally:
            release.set()
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err.read_text())
    assert "Cancelled: the studies not yet fetched stay on the PACS." in out
    assert "Traceback" not in err.read_text()
    assert len(library_study_uids(lib)) <= 1


def test_send_files_stores_a_report_and_an_image_on_the_pacs(home, pacs, tmp_path, cohort):
    node = PacsNode.parse(pacs.address)
    sr = write_sr(tmp_path / "report.dcm")
    # a JPEG 2000 image: dcmqrscp takes only uncompressed objects, so it is decompressed
    row = next(r for r in csv.DictReader(open(cohort / "images.csv"))
               if r["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90")
    image = cohort / row["path"]
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    summary = send_files(node, [sr, image, junk], "MAMVIEW")
    assert summary.sent == 2
    assert [p for p, _ in summary.failed] == [str(junk)]
    # the PACS now answers for the report's patient
    found = find_studies(node, "P1", "MAMVIEW", modality=None)
    assert [s.study_instance_uid for s in found] == [
        pydicom.dcmread(sr).StudyInstanceUID]
    found = find_studies(node, row["patient_id"], "MAMVIEW")
    assert [s.study_instance_uid for s in found] == [
        pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID]
    assert echo(node, "MAMVIEW").ok
