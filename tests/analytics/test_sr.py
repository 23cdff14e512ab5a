"""The per-exam Comprehensive SR: valid per dcmtk's dsrdump, same values through pydicom,
and sent to a real dcmtk storescp peer."""

import hashlib
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
    path = next(f for f in files if pydicom.dcmread(f, stop_before_pixels=True).StudyDate
                == "20230315")
    dump = _dsrdump_clean(path)
    assert "Comprehensive SR" in dump and "Cumulative breast cancer risk within 5 years" in dump
    assert '"Imaging Measurement Report"' in dump and "(71651007,SCT,\"Mammography\")" in dump

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
    template = ds.ContentTemplateSequence[0]
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
    # UIDs are ours, not pydicom's shared prefix: 2.25 name-based UUIDs unless a root is set
    assert ds.SOPInstanceUID.startswith("2.25.") and ds.SeriesInstanceUID.startswith("2.25.")
    assert path.name == f"SR_{hashlib.sha256(ds.SOPInstanceUID.encode()).hexdigest()[:20]}.dcm"
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


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_every_sr_passes_dciodvfy(scored_library, tmp_path):
    lib, _ = scored_library
    out = tmp_path / "sr"
    assert cli.main(["--home", str(lib.home), "sr", "P7", "--out", str(out)]) == 0
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3
    for f in files:
        proc = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (f.name, errors)


def test_sr_uids_under_a_site_root_and_names_never_from_headers(scored_library, tmp_path):
    lib, keys = scored_library
    db = connect(lib.database)
    try:
        ek = keys["2023-03-15"]
        score = reads.scores_for_exams(db, [ek])[ek]
        paths = reads.image_paths(db, ek)
        evidence = sr.read_evidence([paths[u] for u in score["input_uids"]])
        for ds in evidence:  # a hostile header value (in memory only) changes no UID rule
            ds.PatientID = "../../escape"
        built = sr.build_exam_sr(score, evidence, model_name="demo", model_label="",
                                 uid_root="1.2.826.0.1.99999.")
        assert built.SOPInstanceUID.startswith("1.2.826.0.1.99999.")
        assert len(built.SOPInstanceUID) <= 64 and built.SOPInstanceUID[-1] != "."
        again = sr.build_exam_sr(score, evidence, model_name="demo", model_label="",
                                 uid_root="1.2.826.0.1.99999.")
        assert again.SOPInstanceUID == built.SOPInstanceUID  # deterministic: resend is a duplicate
        for bad in ("1.2.3", "1.02.3.", "a.b.", "1." * 30):
            with pytest.raises(ValueError):
                sr.check_uid_root(bad)
        out = tmp_path / "out"
        path = sr.write_exam_sr(db, ek, out, model_id="demo", uid_root="1.2.826.0.1.99999.")
        assert path.parent == out and path.name.startswith("SR_") and "escape" not in path.name
        assert pydicom.dcmread(path).SOPInstanceUID.startswith("1.2.826.0.1.99999.")
    finally:
        db.close()


def test_sr_command_takes_the_uid_root_from_the_option_or_the_settings(scored_library, tmp_path,
                                                                       capsys):
    from mamview.core import settings as user_settings

    lib, _ = scored_library
    args = ["--home", str(lib.home), "sr", "P7", "--date", "2023-03-15"]
    assert cli.main(args + ["--out", str(tmp_path / "a"), "--uid-root", "1.2.826.0.1.424242."]) == 0
    assert pydicom.dcmread(next((tmp_path / "a").glob("*.dcm"))).SOPInstanceUID.startswith(
        "1.2.826.0.1.424242.")
    s = user_settings.load(lib.settings_file)
    s.uid_root = "1.3.6.1.4.1.99999."
    user_settings.save(s, lib.settings_file)
    assert cli.main(args + ["--out", str(tmp_path / "b")]) == 0
    assert pydicom.dcmread(next((tmp_path / "b").glob("*.dcm"))).SOPInstanceUID.startswith(
        "1.3.6.1.4.1.99999.")
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "c"), "--uid-root", "1.2.x"]) == 2
    assert "UID root" in capsys.readouterr().err
