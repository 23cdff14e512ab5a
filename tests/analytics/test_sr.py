"""The per-exam Comprehensive SR: valid per dcmtk's dsrdump, same values through pydicom,
and sent to a real dcmtk storescp peer."""

import shutil
import socket
import subprocess
import time

import pydicom
import pytest

from mamview import cli
from mamview.core.reports import sr
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.models.registry import DEMO_LABEL

needs_dcmtk = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")


def _dsrdump_clean(path):
    proc = subprocess.run(["dsrdump", "-Ee", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no errors and no warnings
    return proc.stdout


@needs_dcmtk
def test_sr_is_valid_and_round_trips(scored_library, tmp_path, capsys):
    lib, keys = scored_library
    out = tmp_path / "sr"
    assert cli.main(["--home", str(lib.home), "sr", "P7", "--out", str(out)]) == 0
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3  # the three scored exams; the unscorable one has no report
    text = capsys.readouterr().out
    assert "Wrote" in text

    db = connect(lib.database)
    score = reads.scores_for_exams(db, [keys["2023-03-15"]])[keys["2023-03-15"]]
    db.close()
    path = next(f for f in files if "20230315" in f.name)
    dump = _dsrdump_clean(path)
    assert "Comprehensive SR" in dump and "Cumulative breast cancer risk within 5 years" in dump

    got = sr.read_sr_values(path)
    assert got["risk_percent"] == {y: pytest.approx(v) for y, v in
                                   zip(range(1, 6), sr.risk_percent_values(score["risk"]))}
    assert got["risk_percent"][5] == pytest.approx(3.5)
    assert got["images"] == score["input_uids"]  # the four inputs, in model order
    assert got["text"]["Model identifier"] == "demo"
    assert got["text"]["Model weights SHA-256"] == score["weights_sha256"]
    assert got["text"]["Algorithm Version"] == score["model_version"]
    assert "not for clinical use" in got["text"]["Intended use"]
    assert got["text"]["Intended use"] == sr.sr_text(DEMO_LABEL)

    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert ds.PatientID == "P7" and ds.Modality == "SR"
    studies = list(ds.CurrentRequestedProcedureEvidenceSequence) + list(
        ds.get("PertinentOtherEvidenceSequence", []))
    evidence = {ref.ReferencedSOPInstanceUID for st in studies
                for se in st.ReferencedSeriesSequence for ref in se.ReferencedSOPSequence}
    assert evidence == set(score["input_uids"])
    assert ds.StudyInstanceUID == pydicom.dcmread(
        next((lib.home.parent / "files" / "P7" / "20230315").glob("*.dcm"))).StudyInstanceUID

    # the same score gives the same instance (a PACS sees a duplicate, not a second report)
    again = tmp_path / "again"
    assert cli.main(["--home", str(lib.home), "sr", "P7", "--date", "2023-03-15",
                     "--out", str(again)]) == 0
    assert pydicom.dcmread(next(again.glob("*.dcm"))).SOPInstanceUID == ds.SOPInstanceUID


def test_sr_refuses_exams_without_a_score(scored_library, tmp_path, capsys):
    lib, keys = scored_library
    rc = cli.main(["--home", str(lib.home), "sr", keys["2022-03-01"], "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr()
    assert "has no computed score" in err.out and "no SR written" in err.err
    assert cli.main(["--home", str(lib.home), "sr", "NOBODY", "--out", str(tmp_path)]) == 2
    assert cli.main(["--home", str(lib.home), "sr", "P7", "--out", str(tmp_path),
                     "--send", "nonsense"]) == 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_dcmtk
@pytest.mark.skipif(shutil.which("storescp") is None, reason="dcmtk storescp not installed")
def test_sr_is_sent_to_a_real_storescp(scored_library, tmp_path, capsys):
    lib, _ = scored_library
    inbox = tmp_path / "pacs"
    inbox.mkdir()
    port = _free_port()
    peer = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(inbox), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        rc = cli.main(["--home", str(lib.home), "sr", "P7", "--out", str(tmp_path / "sr"),
                       "--send", f"PACS@127.0.0.1:{port}"])
        assert rc == 0, capsys.readouterr()
        assert "Sent 3 of 3" in capsys.readouterr().out
        deadline = time.monotonic() + 10
        while len(list(inbox.iterdir())) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        received = sorted(inbox.iterdir())
        assert len(received) == 3
        assert all(pydicom.dcmread(p).Modality == "SR" for p in received)
    finally:
        peer.terminate()
        peer.wait(timeout=10)
