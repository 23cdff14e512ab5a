"""DICOM Comprehensive SR of one exam's risk score, built with highdicom.

The report holds the cumulative risk for years 1..5 (NUM, UCUM "%"), the model's identity
(TID 4019 Algorithm Name / Version, plus weights and calibrator hashes and the preprocessing
version), its intended-use label ("not for clinical use" for the demo model) and IMAGE
references to the four input SOP instances, which also go into the Current Requested Procedure
Evidence. Patient and study come from the input images, so a PACS files the SR with the exam.

Concepts without a standard code use the private scheme 99MAMVIEW (declared in the Coding
Scheme Identification Sequence). UIDs derive from the score's cache key, so writing the same
score again gives the same instance (a PACS sees a duplicate, not a second report).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from mamview import __version__

SCHEME = "99MAMVIEW"
TITLE = Code("RISK-REPORT", SCHEME, "Image-based breast cancer risk assessment")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
SOURCE = Code("121112", "DCM", "Source of Measurement")
WEIGHTS = Code("WEIGHTS-SHA256", SCHEME, "Model weights SHA-256")
CALIBRATOR = Code("CALIBRATOR", SCHEME, "Calibrator")
PREPROCESSING = Code("PREPROCESSING", SCHEME, "Preprocessing version")
MODEL_ID = Code("MODEL-ID", SCHEME, "Model identifier")
INTENDED_USE = Code("INTENDED-USE", SCHEME, "Intended use")
DEVICE = Code("DEVICE", SCHEME, "Compute device")
PERCENT = Code("%", "UCUM", "percent")
SERIES_NUMBER = 9701


def risk_code(year: int) -> Code:
    """Concept of the cumulative risk within `year` years (1..5)."""
    return Code(f"RISK-Y{year}", SCHEME, f"Cumulative breast cancer risk within {year} years"
                if year > 1 else "Cumulative breast cancer risk within 1 year")


def risk_percent_values(risk_fractions: Sequence[float]) -> list[float]:
    """Fractions → percent rounded to 4 decimals (what the SR stores, and what a reader
    reading it back must find)."""
    return [round(float(x) * 100.0, 4) for x in risk_fractions]


def sr_text(text: str) -> str:
    """Text for the SR's own items in plain ASCII (valid in every character set, and dcmtk's
    checker does not support UTF-8): dashes and quotes folded, anything else replaced."""
    folded = text.replace("\u2014", "-").replace("\u2013", "-").replace("\u2019", "'")
    return folded.encode("ascii", "replace").decode("ascii")


def build_exam_sr(score: dict, evidence: Sequence[Dataset], *, model_name: str,
                  model_label: str) -> Dataset:
    """The Comprehensive SR of one 'ok' score row (core.cache.reads) and the header datasets
    of its input images (`evidence`, in input order)."""
    import highdicom as hd

    if score.get("status") != "ok" or len(score.get("risk", [])) < 5:
        raise ValueError("only a computed score with five yearly risks can be reported")
    if not evidence:
        raise ValueError("the SR needs the input images' headers")
    rel = hd.sr.RelationshipTypeValues
    items = [
        hd.sr.TextContentItem(ALGORITHM_NAME, sr_text(model_name), relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(ALGORITHM_VERSION, str(score["model_version"]) or "unknown",
                              relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(MODEL_ID, score["model_id"], relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(WEIGHTS, score["weights_sha256"] or "unknown",
                              relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(CALIBRATOR, score.get("calibrator") or "none",
                              relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(PREPROCESSING, str(score["preprocessing_version"]),
                              relationship_type=rel.CONTAINS),
        hd.sr.TextContentItem(INTENDED_USE, sr_text(model_label or "research use"),
                              relationship_type=rel.CONTAINS),
    ]
    if score.get("device"):
        items.append(hd.sr.TextContentItem(DEVICE, score["device"], relationship_type=rel.CONTAINS))
    for year, value in enumerate(risk_percent_values(score["risk"][:5]), start=1):
        items.append(hd.sr.NumContentItem(risk_code(year), value, PERCENT,
                                          relationship_type=rel.CONTAINS))
    for ds in evidence:
        items.append(hd.sr.ImageContentItem(SOURCE, ds.SOPClassUID, ds.SOPInstanceUID,
                                            relationship_type=rel.CONTAINS))
    root = hd.sr.ContainerContentItem(TITLE, is_content_continuous=False)
    root.ContentSequence = items
    seed = ["mamview-sr", score["cache_key"]]
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence), content=root,
        series_instance_uid=generate_uid(entropy_srcs=seed + ["series"]),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(entropy_srcs=seed + ["sop"]),
        instance_number=1, manufacturer="mamview", is_complete=True,
        series_description="AI risk score (mamview)",
    )
    charset = evidence[0].get("SpecificCharacterSet")
    if charset:  # the copied patient name is in the images' character set
        sr.SpecificCharacterSet = charset
    sr.SoftwareVersions = f"mamview {__version__}"
    sr.ContentDate, sr.ContentTime = _content_datetime(score.get("computed_at", ""), sr)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "mamview local codes"
    scheme.CodingSchemeResponsibleOrganization = "mamview project"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def _content_datetime(computed_at: str, sr: Dataset) -> tuple[str, str]:
    """The score's computation time as DICOM DA/TM (falls back to highdicom's 'now')."""
    digits = "".join(c for c in computed_at[:19] if c.isdigit())
    if len(digits) == 14:
        return digits[:8], digits[8:]
    return sr.ContentDate, sr.ContentTime


# Type 2 attributes of the Patient and General Study modules that the SR copies from its
# evidence; real archives sometimes omit them, and an empty value is what the standard allows
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                 "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


def read_evidence(paths: Sequence[str]) -> list[Dataset]:
    """Headers of the input images (no pixel data), as SR evidence; absent Type 2 patient and
    study attributes are added empty (in memory only: the user's files are never written)."""
    out = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for kw in _TYPE2_COPIED:
            if kw not in ds:
                setattr(ds, kw, "")
        out.append(ds)
    return out


def write_exam_sr(db, exam_key: str, out_dir: str | Path, *, model=None, model_id: str | None = None,
                  model_name: str = "", model_label: str = "") -> Path:
    """Write the SR of an exam's *current* 'ok' score of `model` (a ModelRef from
    `reads.choose_model`, else `model_id`, else the newest model) into `out_dir`.

    Raises ValueError (with a message for the user) when the exam has no current score (a
    stale one, whose model or input changed, is not reported) or an input image is no longer
    on disk.
    """
    from mamview.core.cache import reads

    model = model if model is not None else model_id
    score = reads.scores_for_exams(db, [exam_key], model).get(exam_key)
    name = getattr(model, "model_id", model)
    if not score or score["status"] != "ok":
        raise ValueError(f"exam {exam_key} has no computed score"
                         + (f" of model {name}" if name else ""))
    from mamview.core.cache import reads

    paths = reads.image_paths(db, exam_key)
    missing = [u for u in score["input_uids"] if u not in paths or not Path(paths[u]).is_file()]
    if missing:
        raise ValueError(f"exam {exam_key}: {len(missing)} input image(s) are no longer on disk")
    evidence = read_evidence([paths[u] for u in score["input_uids"]])
    sr = build_exam_sr(score, evidence, model_name=model_name or score["model_id"],
                       model_label=model_label)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    date = (evidence[0].get("StudyDate", "") or "nodate")
    pid = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(evidence[0].PatientID))
    path = out / f"SR_{pid}_{date}_{score['model_id']}.dcm"
    tmp = path.with_suffix(".tmp")
    sr.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def read_sr_values(path: str | Path) -> dict:
    """What an SR written here says: yearly risks (percent), model fields, referenced UIDs."""
    ds = pydicom.dcmread(path)
    out: dict = {"risk_percent": {}, "text": {}, "images": []}
    for item in ds.ContentSequence:
        code = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "NUM":
            year = int(code.removeprefix("RISK-Y"))
            out["risk_percent"][year] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT":
            out["text"][item.ConceptNameCodeSequence[0].CodeMeaning] = item.TextValue
        elif item.ValueType == "IMAGE":
            out["images"].append(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return out
