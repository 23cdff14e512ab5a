"""The synthetic cohort: real DICOM files, ground truth in CSVs, and import of 20 women end to end."""

import csv
import hashlib
import json
import math

import numpy as np
import pydicom
import pytest
from scipy.ndimage import gaussian_filter, maximum_filter
from scipy.stats import spearmanr

from mamview.cli import main
from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.demo_data import case_risk, generate_cohort, risk_features
from mamview.core.ingest import preview_file, run_import
from mamview.core.paths import Library
from mamview.core.previews import load_png
from tests.core.test_ingest import consume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    summary = generate_cohort(out, n_patients=20, size="small", seed=3)
    return out, summary


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def imported(cohort, tmp_path_factory):
    out, _ = cohort
    lib = Library(tmp_path_factory.mktemp("lib"))
    summary, _ = consume(run_import(lib, [out]))
    return lib, summary


def test_counts_and_csvs_agree(cohort):
    out, s = cohort
    images = read_csv(out / "images.csv")
    truth = read_csv(out / "ground_truth.csv")
    outcomes = read_csv(out / "outcomes.csv")
    assert (s.patients, s.exams, s.images) == (20, len(truth), len(images))
    assert len(outcomes) == 20 and 0 < s.cases < 20
    assert sum(1 for _ in out.rglob("*.dcm")) == s.images
    # the truth never leaks into the DICOM files
    ds = pydicom.dcmread(out / images[0]["path"])
    assert "risk" not in str(ds).lower() and "case" not in str(ds.SeriesDescription).lower()


def test_every_syntax_and_vendor_variant_decodes(cohort):
    out, _ = cohort
    images = read_csv(out / "images.csv")
    seen = {}
    for row in images:
        seen.setdefault((row["transfer_syntax_uid"], row["photometric"]), row)
    assert {k[0] for k in seen} >= {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90",
                                   "1.2.840.10008.1.2.5"}
    assert "MONOCHROME1" in {k[1] for k in seen}
    for row in seen.values():
        ds = pydicom.dcmread(out / row["path"])
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns) and arr.max() < 2 ** ds.BitsStored
    vois = {pydicom.dcmread(out / r["path"], stop_before_pixels=True).VOILUTFunction
            for r in images}
    assert vois == {"LINEAR", "SIGMOID"}
    assert any(r["stored_flip_lr"] == "1" for r in images)
    assert any(r["stored_flip_ud"] == "1" for r in images)


def test_deterministic_for_a_seed(tmp_path):
    def digest(folder):
        # decoded pixels and UIDs: the J2K encoder's bytes may differ run to run, not its content
        h = hashlib.sha256()
        for p in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(p)
            h.update(ds.SOPInstanceUID.encode() + ds.pixel_array.tobytes())
        return h.hexdigest()

    generate_cohort(tmp_path / "a", n_patients=3, seed=11)
    generate_cohort(tmp_path / "b", n_patients=3, seed=11)
    generate_cohort(tmp_path / "c", n_patients=3, seed=12)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


def test_refuses_a_folder_that_is_not_a_cohort(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(ValueError, match="not empty"):
        generate_cohort(tmp_path, n_patients=1)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_cases_rise_and_controls_stay_flat(cohort):
    out, _ = cohort
    truth = read_csv(out / "ground_truth.csv")
    by = {}
    for r in truth:
        by.setdefault((r["group"], r["patient_id"]), []).append(float(r["risk_5y_percent"]))
    case_last = [v[-1] for (g, _), v in by.items() if g == "case"]
    case_first = [v[0] for (g, _), v in by.items() if g == "case"]
    controls = [x for (g, _), v in by.items() if g == "control" for x in v]
    assert 1.7 < np.median(controls) < 2.4 and np.percentile(controls, 90) < 3.0
    assert np.median(case_last) > 4.5 and np.median(case_last) > 1.8 * np.median(case_first)
    assert case_risk(6) == pytest.approx(2.1) and case_risk(0) == pytest.approx(6.6)
    # fastest in the last two years
    assert case_risk(0) - case_risk(2) > case_risk(2) - case_risk(4) > case_risk(4) - case_risk(6)


def test_import_of_twenty_women_reports_the_right_counts(cohort, imported):
    out, s = cohort
    lib, summary = imported
    assert summary.totals["patients"] == 20
    assert summary.totals["exams"] == s.exams
    assert summary.totals["images"] == s.images
    assert summary.previews == s.images and not summary.skipped.get("corrupt pixel data")
    db = connect(lib.database)
    exams = reads.list_exams(db)
    incomplete = [e for e in exams if not e["complete"]]
    assert [e["incomplete_reason"] for e in incomplete] == ["missing LMLO"]
    spot = [im for e in exams for im in e["images"] if im["view_modifiers"]]
    assert [im["view_modifiers"] for im in spot] == [["spot compression"]]
    # a second import adds nothing
    again, _ = consume(run_import(lib, [out]))
    assert (again.added, again.updated, again.previews) == (0, 0, 0)


def test_hung_orientation_view_and_side_match_the_truth(cohort, imported):
    out, _ = cohort
    lib, _ = imported
    db = connect(lib.database)
    truth = {r["sop_instance_uid"]: r for r in read_csv(out / "images.csv")}
    rows = list(db.query("SELECT sop_instance_uid, laterality, view FROM images"))
    assert len(rows) == len(truth)
    for r in rows:
        t = truth[r["sop_instance_uid"]]
        assert (r["laterality"], r["view"]) == (t["laterality"], t["view"])
        if t["modifiers"]:
            continue
        px = load_png(preview_file(lib, r["sop_instance_uid"])).astype(float)
        w = px.shape[1]
        left, right = px[:, : w // 10].mean(), px[:, -(w // 10):].mean()
        # chest walls back to back: right breast's at its right edge, left breast's at its left
        if t["laterality"] == "R":
            assert right > left + 10, t["path"]
        else:
            assert left > right + 10, t["path"]
        if t["view"] == "MLO":  # pectoral muscle at the top, next to the chest wall
            cw = px[:, -(w // 8):] if t["laterality"] == "R" else px[:, : w // 8]
            h = px.shape[0]
            assert cw[: h // 6].mean() > cw[-(h // 6):].mean(), t["path"]


def test_risk_is_expressed_in_the_pixels(cohort):
    """A crude hand-made feature (bright specks at 256 rows) already tracks the hidden risk."""
    out, _ = cohort
    truth = {(r["patient_id"], r["exam_date"]): float(r["risk_5y_percent"])
             for r in read_csv(out / "ground_truth.csv")}
    feats, risks = [], []
    for (pid, day), risk in list(truth.items())[:40]:
        folder = out / pid / day.replace("-", "")
        score = 0.0
        for p in folder.glob("?CC.dcm"):
            ds = pydicom.dcmread(p)
            top = 2 ** ds.BitsStored - 1
            a = ds.pixel_array.astype(float)
            if ds.PhotometricInterpretation == "MONOCHROME1":
                a = top - a
            a = (a - 40) / (top - 80)  # back to the generator's 0..1 attenuation scale
            k = max(1, a.shape[0] // 256)
            a = a[::k, ::k]
            hp = a - gaussian_filter(a, 2)
            score += ((hp == maximum_filter(hp, 5)) & (hp > 0.1)).sum()
        feats.append(score)
        risks.append(math.log(risk))
    rho = spearmanr(feats, risks).statistic
    assert rho > 0.8, rho
    assert risk_features(6.6)["specks"] > risk_features(2.0)["specks"]


def test_cli_demo_data_then_import(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["--home", str(tmp_path / "h"), "demo-data", "--out", str(out),
                 "--patients", "2"]) == 0
    assert main(["--home", str(tmp_path / "h"), "import", str(out), "--json"]) == 0
    assert main(["--home", str(tmp_path / "h"), "exams", "DEMO0001", "--json"]) == 0
    text = capsys.readouterr().out
    assert '"label": "RCC"' in text and '"view_source": "ViewCodeSequence"' in text
    assert main(["--home", str(tmp_path / "h"), "exams", "NOBODY"]) == 2


def test_killed_import_process_completes_to_the_same_database(cohort, imported, tmp_path):
    """SIGKILL a real `mamview import` half-way; running it again gives the same cache."""
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from tests.core.test_ingest import snapshot

    out, s = cohort
    home = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mamview", "--home", str(home), "import", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    n = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            con = sqlite3.connect(home / "cache.sqlite", timeout=1)
            n = con.execute("SELECT count(*) FROM previews").fetchone()[0]
            con.close()
        except sqlite3.Error:
            n = 0
        if n >= s.images // 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 0 < n < s.images, "the import was not caught half-way"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    lib, _ = imported
    assert snapshot(home / "cache.sqlite") == snapshot(lib.database)


def test_cli_demo_loads_the_cohort_into_the_library(tmp_path, capsys):
    home = str(tmp_path / "h")
    assert main(["--home", home, "demo", "--no-gui", "--patients", "3"]) == 0
    out = capsys.readouterr().out
    assert "Library: 3 patients" in out and "Skipped" not in out
    assert main(["--home", home, "problems"]) == 0
    assert "No problems recorded." in capsys.readouterr().out
    assert main(["--home", home, "patients", "--json"]) == 0
    assert [p["patient_id"] for p in json.loads(capsys.readouterr().out)] == [
        "DEMO0001", "DEMO0002", "DEMO0003"]
