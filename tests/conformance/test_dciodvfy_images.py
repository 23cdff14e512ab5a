"""Every image `mamview demo-data` writes passes dicom3tools' `dciodvfy` with 0 errors.

One file per (transfer syntax, vendor, spot view) the generator can produce; `.ci/run` installs
dicom3tools. Warnings are allowed: View Position CC/MLO is what every mammography vendor writes,
although the DX module's defined terms do not list it.
"""

from __future__ import annotations

import shutil
import subprocess

import pydicom
import pytest

from mamview.core.demo_data import SYNTAXES, VENDORS, generate_cohort, write_patient

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                reason="dicom3tools (dciodvfy) not installed")


def _kind(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    spot = bool(ds.ViewCodeSequence[0].ViewModifierCodeSequence)
    return str(ds.file_meta.TransferSyntaxUID), str(ds.Manufacturer), spot


def _errors(path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_every_kind_of_generated_image_passes_dciodvfy(tmp_path):
    generate_cohort(tmp_path / "cohort", n_patients=12, size="small", seed=3)
    write_patient(tmp_path / "one", n_exams=1, size="small", transfer_syntax="rle")
    chosen = {}
    for path in sorted(tmp_path.rglob("*.dcm")):
        chosen.setdefault(_kind(path), path)
    syntaxes = {k[0] for k in chosen}
    vendors = {k[1] for k in chosen}
    # the test is only worth something if it saw every syntax, every vendor and a spot view
    assert syntaxes == {str(s) for s in SYNTAXES.values()}, syntaxes
    assert vendors == {v["name"][0] for v in VENDORS.values()}, vendors
    assert any(k[2] for k in chosen)
    failures = {str(p.relative_to(tmp_path)): errs for p in chosen.values() if (errs := _errors(p))}
    assert not failures, failures


def test_dciodvfy_finds_an_error_in_a_broken_image(tmp_path):
    """The check above can fail: remove a Type 1 attribute and dciodvfy reports it."""
    write_patient(tmp_path / "one", n_exams=1, size="small", transfer_syntax="explicit")
    path = sorted(tmp_path.rglob("*.dcm"))[0]
    ds = pydicom.dcmread(path)
    del ds.OrganExposed
    ds.save_as(path)
    assert any("OrganExposed" in e for e in _errors(path))
