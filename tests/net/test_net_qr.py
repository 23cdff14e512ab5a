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
        summary = fetch_priors(lib, "BENCH0001", PacsNode.parse(pacs.address), "MAMVIEW",
                               progress=lambda done, total, study: seen.append((done, total)))
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
    assert all("NOWHERE" in f or "move destination" in f for f in summary.failures)


def test_echo_against_dcmqrscp(home, pacs, capsys):
    assert main(["--home", str(home), "echo", pacs.address]) == 0
    assert "answered C-ECHO" in capsys.readouterr().out


def test_refusals_give_a_clear_message_not_a_traceback(home, pacs, capsys):
    # a PACS that does not know the called AE title
    wrong_ae = f"NOTPACS@{LOOPBACK}:{pacs.port}"
    assert main(["--home", str(home), "echo", wrong_ae]) == 2
    err = capsys.readouterr().err
    assert ("rejected the association" in err or "aborted the association" in err) and (
        "Traceback" not in err)
    # nothing listens there
    closed = f"PACS@{LOOPBACK}:{free_port()}"
    assert main(["--home", str(home), "echo", closed]) == 2
    err = capsys.readouterr().err
    assert "could not reach" in err and "Traceback" not in err
    assert main(["--home", str(home), "fetch-priors", "BENCH0001", "--pacs", closed,
                 "--port", "0", "--host", LOOPBACK]) == 2
    err = capsys.readouterr().err
    assert "could not reach" in err and "Traceback" not in err
    # dcmqrscp (fork mode) usually rejects an unknown called AE title, now and then it aborts
    # instead; either way the user gets a sentence naming the node, not a traceback
    with pytest.raises(NetError, match=r"NOTPACS@.* (rejected|aborted) the association"):
        find_studies(PacsNode.parse(wrong_ae), "BENCH0001", "MAMVIEW")
    # a malformed address
    assert main(["--home", str(home), "echo", "PACS@localhost"]) == 2
    assert "AE@host:port" in capsys.readouterr().err


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
