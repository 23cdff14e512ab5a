"""The non-image objects a real screening study holds beside its four images, written with
highdicom / pydicom into the images' own study: a grayscale presentation state, a key object
selection, a Mammography CAD SR and a digitised-film secondary capture (the form of public
research archives: Secondary Capture, Modality MG, BodyPartExamined BREAST).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def _headers(paths: Sequence[Path]) -> list[Dataset]:
    """The images' headers, with the Type 2 patient/study attributes highdicom copies (a test
    image may lack some; an empty value is what the standard allows)."""
    out = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                   "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
            if kw not in ds:
                setattr(ds, kw, "")
        out.append(ds)
    return out


def write_presentation_state(images: Sequence[Path], out: Path) -> Path:
    """A GSPS referencing the study's images (what a workstation saves after window/level)."""
    import highdicom as hd

    refs = _headers(images)
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=refs, series_instance_uid=generate_uid(), series_number=90,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="TestPACS",
        manufacturer_model_name="Reader", software_versions="1", device_serial_number="1",
        content_label="READER_WL")
    out.parent.mkdir(parents=True, exist_ok=True)
    gsps.save_as(out, enforce_file_format=True)
    return out


def write_key_objects(images: Sequence[Path], out: Path) -> Path:
    """A key object selection ("For Teaching") of the study's first image."""
    import highdicom as hd

    refs = _headers(images)
    content = hd.ko.KeyObjectSelection(document_title=codes.DCM.ForTeaching,
                                       referenced_objects=refs[:1])
    ko = hd.ko.KeyObjectSelectionDocument(
        evidence=refs[:1], content=content, series_instance_uid=generate_uid(), series_number=91,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="TestPACS")
    out.parent.mkdir(parents=True, exist_ok=True)
    ko.save_as(out, enforce_file_format=True)
    return out


def write_cad_sr(images: Sequence[Path], out: Path) -> Path:
    """A Mammography CAD SR of the study (a minimal document: title and image references)."""
    first = _headers(images)[0]
    ds = Dataset()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
               "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        setattr(ds, kw, first.get(kw, ""))
    ds.SOPClassUID, ds.SOPInstanceUID = MAMMOGRAPHY_CAD_SR, generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 92, 1
    ds.Modality, ds.Manufacturer = "SR", "TestCAD"
    ds.ContentDate, ds.ContentTime = ds.StudyDate, "100000"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = (
        "111036", "DCM", "Mammography CAD Report")
    ds.ConceptNameCodeSequence = [title]
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ContentSequence = []
    _meta(ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def write_digitised_film(out: Path, *, patient_id: str, study_date: str, study_uid: str,
                         laterality: str, view: str, shape=(512, 320)) -> Path:
    """A film mammogram digitised into a Secondary Capture (Modality MG, BREAST, 16 bits)."""
    rng = np.random.default_rng(abs(hash((patient_id, study_date, laterality, view))) % 2**32)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((xx / cols) ** 2 + ((yy - rows / 2) / (rows / 2)) ** 2) < 1
    if laterality == "L":
        breast = breast[:, ::-1]
    pixels = (breast * (20000 + rng.normal(0, 3000, shape))).clip(0, 65535).astype(np.uint16)
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
        "FILM^JANE", patient_id, "19550101", "F")
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, study_date, "090000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
    ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = generate_uid(), 1, 1
    ds.Modality, ds.ConversionType, ds.BodyPartExamined = "MG", "DF", "BREAST"
    ds.ImageLaterality, ds.Laterality, ds.ViewPosition = laterality, laterality, view
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.SeriesDescription = f"{laterality} {view} digitized film"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    _meta(ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def write_study_objects(images: Sequence[Path], folder: Path) -> list[Path]:
    """Presentation state, key objects and CAD SR for the study of `images`, in `folder`."""
    return [write_presentation_state(images, folder / "PR.dcm"),
            write_key_objects(images, folder / "KO.dcm"),
            write_cad_sr(images, folder / "CADSR.dcm")]


def _meta(ds: Dataset) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
