"""DICOM Comprehensive SR of one exam's risk score: a TID 1500 Measurement Report (highdicom).

The report (title DCM 126000 "Imaging Measurement Report", procedure SCT 71651007 "Mammography")
holds one measurement group: the cumulative risk for years 1..5 (NUM, UCUM "%"), finding site
SCT 76752008 "Breast", the model as TID 4019 Algorithm Identification (name, version; its weights
and calibrator hashes, preprocessing version, model id, device and intended-use label as algorithm
parameters "key: value"), and the four input images as its source images and in the Image Library;
they are also the Current Requested Procedure Evidence. Patient and study come from the inputs, so
a PACS files the SR with the exam. Only the yearly risks have no standard code: they use the
private scheme 99MAMVIEW (declared in the Coding Scheme Identification Sequence).

UIDs derive from the score's cache key (the same score written again is the same instance: a PACS
sees a duplicate, not a second report), under `uid_root` when the site has one, else as 2.25
UUIDs (name-based, ISO/IEC 9834-8). File names are hashes: no header value names a file.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from mamview import __version__

SCHEME = "99MAMVIEW"
PROCEDURE = Code("71651007", "SCT", "Mammography")
BREAST = Code("76752008", "SCT", "Breast")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
PERCENT = Code("%", "UCUM", "percent")
SERIES_NUMBER = 9701
# the algorithm parameters, as "key: value" (read back by read_sr_values under these names)
MODEL_ID, WEIGHTS, CALIBRATOR = "Model identifier", "Model weights SHA-256", "Calibrator"
PREPROCESSING, DEVICE, INTENDED_USE = "Preprocessing version", "Compute device", "Intended use"
VALIDATED_DOMAIN, VIEW_MAPPING = "Validated domain", "View mapping"
# namespace of the name-based UUIDs behind our 2.25 UIDs (fixed: the same score, the same UID)
_UID_NAMESPACE = uuid.UUID("5f0e6d1c-8b1e-5a57-9d1e-6d616d766965")
_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")


def risk_code(year: int) -> Code:
    """Concept of the cumulative risk within `year` years (1..5)."""
    return Code(f"RISK-Y{year}", SCHEME, f"Cumulative breast cancer risk within {year} years"
                if year > 1 else "Cumulative breast cancer risk within 1 year")


def risk_percent_values(risk_fractions: Sequence[float]) -> list[float]:
    """Fractions → percent rounded to 4 decimals (what the SR stores, and what a reader
    reading it back must find): `domain.risk_percent`."""
    from mamview.core.domain import risk_percent

    return list(risk_percent(risk_fractions))


def sr_text(text: str) -> str:
    """Text for the SR's own items in plain ASCII (valid in every character set, and dcmtk's
    checker does not support UTF-8): dashes and quotes folded, anything else replaced."""
    folded = (text.replace("\u2192", "->").replace("\u2014", "-").replace("\u2013", "-")
              .replace("\u2019", "'"))
    return folded.encode("ascii", "replace").decode("ascii")


def check_uid_root(root: str) -> str:
    """`root` if it can prefix our UIDs (digits and dots, no leading zeros, ending in '.', at
    most 40 characters so the rest fits in 64); '' stays '' (2.25 UUIDs). Else ValueError."""
    if root and (len(root) > 40 or not _ROOT.match(root)):
        raise ValueError(f"UID root {root!r} is not of the form 1.2.840.99999. "
                         "(digits and dots, ending in a dot, at most 40 characters)")
    return root


def make_uid(seed: Sequence[str], root: str = "") -> str:
    """A UID derived from `seed`: under `root`, else 2.25.<name-based UUID>."""
    name = "\x1f".join(seed)
    if root:
        return generate_uid(prefix=check_uid_root(root), entropy_srcs=[name])
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def build_exam_sr(score: dict, evidence: Sequence[Dataset], *, model_name: str,
                  model_label: str, uid_root: str = "") -> Dataset:
    """The Comprehensive SR of one 'ok' score row (core.cache.reads) and the header datasets
    of its input images (`evidence`, in input order)."""
    import highdicom as hd

    if score.get("status") != "ok" or len(score.get("risk", [])) < 5:
        raise ValueError("only a computed score with five yearly risks can be reported")
    if not evidence:
        raise ValueError("the SR needs the input images' headers")
    seed = ["mamview-sr", score["cache_key"]]
    params = [f"{MODEL_ID}: {score['model_id']}",
              f"{WEIGHTS}: {score['weights_sha256'] or 'unknown'}",
              f"{CALIBRATOR}: {score.get('calibrator') or 'none'}",
              f"{PREPROCESSING}: {score['preprocessing_version']}",
              f"{INTENDED_USE}: {sr_text(model_label or 'research use')}",
              # "inside", or "outside (digitised film)": a score computed on request
              f"{VALIDATED_DOMAIN}: " + (f"outside ({sr_text(score['domain'])})"
                                         if score.get("domain") else "inside")]
    if score.get("view_mapping"):
        params.append(f"{VIEW_MAPPING}: {sr_text(score['view_mapping'])}")
    if score.get("device"):
        params.append(f"{DEVICE}: {score['device']}")
    algorithm = hd.sr.AlgorithmIdentification(
        name=sr_text(model_name), version=str(score["model_version"]) or "unknown",
        parameters=params)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=make_uid(seed + ["tracking"], uid_root),
                                                     identifier="breast cancer risk"),
        algorithm_id=algorithm, finding_sites=[hd.sr.FindingSite(BREAST)],
        measurements=[hd.sr.Measurement(name=risk_code(year), value=value, unit=PERCENT)
                      for year, value in enumerate(risk_percent_values(score["risk"][:5]), 1)],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                       for ds in evidence])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=make_uid(["mamview-device"], uid_root), name="mamview", manufacturer_name="mamview",
        model_name=sr_text(model_name)[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    # the Image Library (optional in TID 1500) lists the images its descriptors can be made
    # of: a digitised film has no ImagerPixelSpacing (it stays a source image all the same)
    described = [ds for ds in evidence if _describable(ds)]
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=PROCEDURE,
                                     imaging_measurements=[group],
                                     referenced_images=described or None)
    sr = hd.sr.ComprehensiveSR(
        evidence=list(evidence), content=report[0],
        series_instance_uid=make_uid(seed + ["series"], uid_root),
        series_number=SERIES_NUMBER,
        sop_instance_uid=make_uid(seed + ["sop"], uid_root),
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


_PROJECTION_MODALITIES = ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")


def _describable(ds: Dataset) -> bool:
    """Whether highdicom can write an Image Library entry (TID 1603) for the image: a
    projection image needs ImagerPixelSpacing and a two-valued PatientOrientation."""
    if ds.get("Modality") not in _PROJECTION_MODALITIES:
        return True
    orientation = ds.get("PatientOrientation") or ()
    return len(ds.get("ImagerPixelSpacing") or ()) == 2 and len(orientation) == 2


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
                  model_name: str = "", model_label: str = "", uid_root: str = "") -> Path:
    """Write the SR of an exam's *current* 'ok' score of `model` (a ModelRef from
    `reads.choose_model`, else `model_id`, else the newest model) into `out_dir`, as
    `SR_<hash of its SOP Instance UID>.dcm`.

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
    paths = reads.image_paths(db, exam_key)
    missing = [u for u in score["input_uids"] if u not in paths or not Path(paths[u]).is_file()]
    if missing:
        raise ValueError(f"exam {exam_key}: {len(missing)} input image(s) are no longer on disk")
    evidence = read_evidence([paths[u] for u in score["input_uids"]])
    sr = build_exam_sr(score, evidence, model_name=model_name or score["model_id"],
                       model_label=model_label, uid_root=uid_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"SR_{hashlib.sha256(str(sr.SOPInstanceUID).encode()).hexdigest()[:20]}.dcm"
    tmp = path.with_suffix(".tmp")
    sr.save_as(tmp, enforce_file_format=True)
    tmp.replace(path)
    return path


def _items(node: Dataset):
    """Every content item under `node`, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def read_sr_values(path: str | Path) -> dict:
    """What an SR written here says: yearly risks (percent), the algorithm's name, version and
    parameters (by their names), and the source images' SOP Instance UIDs (in input order)."""
    ds = pydicom.dcmread(path)
    out: dict = {"risk_percent": {}, "text": {}, "images": []}
    for item in _items(ds):
        concept = item.ConceptNameCodeSequence[0]
        if item.ValueType == "NUM" and concept.CodingSchemeDesignator == SCHEME:
            year = int(concept.CodeValue.removeprefix("RISK-Y"))
            out["risk_percent"][year] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT" and concept.CodeValue == ALGORITHM_PARAMETERS.value:
            key, _, value = item.TextValue.partition(": ")
            out["text"][key] = value
        elif item.ValueType == "TEXT":
            out["text"][concept.CodeMeaning] = item.TextValue
        elif item.ValueType == "IMAGE" and concept.CodeValue == "121112":  # Source of Measurement
            out["images"].append(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return out
