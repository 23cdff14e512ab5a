"""Writers of small, real DICOM files for tests (pydicom, proper file meta, no mocks).

Every writer returns the path it wrote. Images are tiny (256×208 by default) so a test can write
dozens of them in well under a second.

The synthetic mammogram is drawn first in the *hanging* orientation (the way mamview shows it:
right breast with its chest wall on the right edge, left breast on the left edge, axilla / lateral
side at the top) and then flipped into the stored orientation that `orientation` describes, so the
pixels always agree with the PatientOrientation tag written next to them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filereader import dcmread
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

MG_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
MG_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
BREAST_TOMOSYNTHESIS = UID("1.2.840.10008.5.1.4.1.1.13.1.3")
CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")
BASIC_TEXT_SR = UID("1.2.840.10008.5.1.4.1.1.88.11")

# Use this as `orientation=` to get what scanners usually write for the side and view.
STANDARD = "standard"

# CID 4014 / 4015 codes by the names mamview uses (SCT; pydicom's code dictionary is the source).
VIEW_CODES = {
    "CC": codes.cid4014.CranioCaudal,
    "MLO": codes.cid4014.MedioLateralObliqueProjection,
    "ML": codes.cid4014.MedioLateralProjection,
    "LM": codes.cid4014.LateroMedial,
    "LMO": codes.cid4014.LateroMedialOblique,
    "FB": codes.cid4014.CaudoCranial,
    "XCCL": codes.cid4014.CranioCaudalExaggeratedLaterally,
    "XCCM": codes.cid4014.CranioCaudalExaggeratedMedially,
    "SIO": codes.cid4014.SuperolateralToInferomedialOblique,
    "ISO": codes.cid4014.InferomedialToSuperolateralOblique,
    "SPECIMEN": codes.cid4014.TissueSpecimenFromBreast,
}
MODIFIER_CODES = {
    "spot compression": codes.cid4015.SpotCompression,
    "magnification": codes.cid4015.Magnification,
    "implant displaced": codes.cid4015.ImplantDisplaced,
    "cleavage": codes.cid4015.Cleavage,
    "axillary tail": codes.cid4015.AxillaryTail,
    "rolled lateral": codes.cid4015.RolledLateral,
    "rolled medial": codes.cid4015.RolledMedial,
    "nipple in profile": codes.cid4015.NippleInProfile,
}
# Old SNOMED-RT values of a few codes, for files written the way older modalities do.
SRT_VIEW_CODES = {"CC": "R-10242", "MLO": "R-10226", "ML": "R-10224", "LM": "R-10228"}
SRT_MODIFIER_CODES = {"spot compression": "R-102D7", "magnification": "R-102D6"}

_CC_LIKE = {"CC", "XCCL", "XCCM", "FB"}


def standard_orientation(laterality: str, view: str) -> tuple[str, str]:
    """PatientOrientation that scanners usually write (RCC P\\L, LCC A\\R, RMLO P\\FL, LMLO A\\FR)."""
    row = "P" if laterality == "R" else "A"
    if view in _CC_LIKE:
        col = "L" if laterality == "R" else "R"
    else:
        col = "FL" if laterality == "R" else "FR"
    return (row, col)


def breast_pixels(
    laterality: str = "R",
    view: str = "CC",
    shape: tuple[int, int] = (256, 208),
    *,
    bits_stored: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """A breast-like uint16 image in hanging orientation (MONOCHROME2: air dark, tissue bright).

    A half-ellipse of tissue leans on the chest-wall edge (right edge for R, left edge for L); it
    sits a little above the middle, and oblique views get a bright pectoral wedge in the top corner,
    so that both a horizontal and a vertical flip change the picture.
    """
    rows, cols = shape
    top = 2**bits_stored - 1
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    # distance from the chest wall, 0 at the wall, 1 at the opposite edge
    d = (cols - 1 - x) / (cols - 1) if laterality != "L" else x / (cols - 1)
    cy = 0.45 * rows
    r = np.sqrt((d / 0.8) ** 2 + ((y - cy) / (0.42 * rows)) ** 2)
    tissue = r < 1.0
    img = np.full(shape, 0.02 * top)
    # thicker (brighter) near the chest wall, with soft texture
    texture = 0.05 * np.sin(x / 5.0) * np.cos(y / 7.0)
    img[tissue] = (0.35 + 0.45 * (1 - r[tissue]) + texture[tissue]) * top
    if view not in _CC_LIKE:
        wedge = (y < 0.35 * rows) & (d < 0.3 * (1 - y / (0.35 * rows)))
        img[wedge] = 0.9 * top
    img += rng.normal(0, 0.003 * top, shape)
    return np.clip(np.rint(img), 0, top).astype(np.uint16)


def _stored_flips(orientation: Sequence[str] | None, laterality: str, view: str) -> tuple[bool, bool]:
    """Flips that turn the hanging picture into the stored one the orientation describes.

    Deliberately simple and independent of mamview's display code, so tests are not circular.
    """
    if not orientation or laterality not in ("R", "L"):
        return (False, False)
    want_row, want_col = standard_orientation(laterality, view)
    row, col = orientation[0], orientation[1]
    flip_lr = ("A" in row) != ("A" in want_row)
    if view in _CC_LIKE:
        flip_ud = ("L" in col) != ("L" in want_col)
    else:
        flip_ud = "H" in col
    return (flip_lr, flip_ud)


def _code_item(code: Any, scheme: str = "SCT", value: str | None = None) -> Dataset:
    item = Dataset()
    item.CodeValue = value or code.value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = code.meaning
    return item


def _view_code_sequence(view: str, modifiers: Iterable[str], scheme: str) -> DicomSequence:
    old = scheme in ("SRT", "SNM3")
    item = _code_item(VIEW_CODES[view], scheme, SRT_VIEW_CODES.get(view) if old else None)
    mods = []
    for name in modifiers:
        value = SRT_MODIFIER_CODES.get(name) if old else None
        mods.append(_code_item(MODIFIER_CODES[name], scheme, value))
    item.ViewModifierCodeSequence = DicomSequence(mods)
    return DicomSequence([item])


def _voi_lut_sequence(voi_lut: Any) -> DicomSequence:
    """`voi_lut` is (first_mapped, bits, data) or a list of those."""
    luts = voi_lut if isinstance(voi_lut, list) else [voi_lut]
    items = []
    for i, (first, bits, data) in enumerate(luts):
        data = [int(v) for v in data]
        item = Dataset()
        item.LUTDescriptor = [len(data) % 65536, first, bits]
        item.LUTExplanation = f"LUT {i + 1}"
        item.LUTData = data
        item["LUTData"].VR = "US"
        items.append(item)
    return DicomSequence(items)


def _file_meta(sop_class: str, sop_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    return meta


def _save(ds: Dataset, path: Path, transfer_syntax: str, arr: np.ndarray) -> Path:
    """Store `arr` in `ds` with the wanted transfer syntax and write the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ts = UID(transfer_syntax)
    if ts.is_compressed:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        kwargs: dict[str, Any] = {}
        if ts == JPEG2000:
            kwargs["j2k_cr"] = [20]
        ds.compress(ts, arr, generate_instance_uid=False, **kwargs)
    else:
        ds.PixelData = np.ascontiguousarray(arr).tobytes()
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(path, enforce_file_format=True)
    return path


def write_mammogram(
    path: str | os.PathLike,
    *,
    patient_id: str = "P1",
    patient_name: str = "DOE^JANE",
    study_date: str = "20200101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    laterality: str = "R",
    view: str = "CC",
    pixels: np.ndarray | None = None,
    shape: tuple[int, int] = (256, 208),
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    orientation: Sequence[str] | str | None = STANDARD,
    stored_flip: tuple[bool, bool] | None = None,
    with_view_code: bool = True,
    view_code_scheme: str = "SCT",
    with_laterality: bool = True,
    view_position: bool | str = True,
    window: tuple[float, float] | list[tuple[float, float]] | None = (2048.0, 4096.0),
    voi_function: str | None = None,
    voi_lut: Any = None,
    presentation_intent: str = "FOR PRESENTATION",
    modifiers: Sequence[str] = (),
    manufacturer: str = "ACME",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one 2-D mammogram and return its path.

    - `pixels`: stored values to write as they are; default a synthetic breast (see `breast_pixels`)
      flipped to agree with `orientation` (or by `stored_flip` = (lr, ud) when given).
    - `orientation`: `STANDARD` (default) writes the usual value for the side and view,
      a (row, col) pair writes that, None omits PatientOrientation.
    - `photometric="MONOCHROME1"` stores the synthetic image inverted, so it displays the same.
    - `window`: one (center, width) pair, a list of pairs (several presets) or None.
    - `voi_lut`: (first_mapped, bits, data) or a list of those, written as VOILUTSequence.
    - `view_position`: True writes the view name, a string writes that text, False omits it.
    - `extra`: keyword → value set last (e.g. {"SeriesDescription": "R CC", "Modality": "DX"}).
    """
    path = Path(path)
    if orientation == STANDARD:
        orientation = standard_orientation(laterality, view) if laterality in ("R", "L") else None
    if pixels is None:
        arr = breast_pixels(laterality, view, shape, bits_stored=bits_stored)
        flip_lr, flip_ud = stored_flip or _stored_flips(orientation, laterality, view)
        if flip_lr:
            arr = arr[:, ::-1]
        if flip_ud:
            arr = arr[::-1, :]
        if photometric == "MONOCHROME1":
            arr = (2**bits_stored - 1) - arr
        arr = np.ascontiguousarray(arr)
    else:
        arr = np.asarray(pixels)

    for_processing = presentation_intent == "FOR PROCESSING"
    sop_class = MG_FOR_PROCESSING if for_processing else MG_FOR_PRESENTATION
    sop_uid = sop_uid or generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = "MG"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19600101"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.ContentDate = study_date
    ds.AccessionNumber = "A" + study_date
    ds.StudyID = "1"
    ds.StudyDescription = "MAMMO SCREENING"
    ds.Manufacturer = manufacturer
    ds.ManufacturerModelName = "Synth 1"
    ds.PresentationIntentType = presentation_intent
    ds.ImageType = ["DERIVED" if not for_processing else "ORIGINAL", "PRIMARY"]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BreastImplantPresent = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    if with_laterality:
        ds.ImageLaterality = laterality
    if view_position:
        ds.ViewPosition = view_position if isinstance(view_position, str) else view
    if with_view_code and view in VIEW_CODES:
        ds.ViewCodeSequence = _view_code_sequence(view, modifiers, view_code_scheme)
    if orientation:
        ds.PatientOrientation = list(orientation)

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored if arr.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.RescaleType = "US"
    if window is not None:
        pairs = window if isinstance(window, list) else [window]
        ds.WindowCenter = [float(c) for c, _ in pairs] if len(pairs) > 1 else float(pairs[0][0])
        ds.WindowWidth = [float(w) for _, w in pairs] if len(pairs) > 1 else float(pairs[0][1])
        expl = [f"WINDOW{i + 1}" for i in range(len(pairs))]
        ds.WindowCenterWidthExplanation = expl if len(expl) > 1 else expl[0]
    if voi_function:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        ds.VOILUTSequence = _voi_lut_sequence(voi_lut)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return _save(ds, path, transfer_syntax, arr)


STANDARD_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))


def write_exam(folder: str | os.PathLike, patient_id: str = "P1", study_date: str = "20200101",
               *, study_uid: str | None = None, views=STANDARD_VIEWS, **kw: Any) -> list[Path]:
    """One exam as one study: a `write_mammogram` per (laterality, view) in `folder`, named
    'RCC.dcm' …; the study UID derives from the patient and date unless given. `kw` goes to
    every image (shape, patient_name, manufacturer, extra, …)."""
    study = study_uid or generate_uid(entropy_srcs=[patient_id, study_date])
    return [write_mammogram(Path(folder) / f"{lat}{view}.dcm", patient_id=patient_id,
                            study_date=study_date, study_uid=study, laterality=lat, view=view, **kw)
            for lat, view in views]


def write_other_modality(path: str | os.PathLike, modality: str = "CT") -> Path:
    """Write a tiny, valid non-mammography image (CT, MR or US)."""
    sop_class = {"CT": CT_IMAGE, "MR": MR_IMAGE, "US": US_IMAGE}[modality]
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(sop_class, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientID, ds.PatientName = "P9", "OTHER^PATIENT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return _save(ds, Path(path), ExplicitVRLittleEndian, np.zeros((16, 16), np.uint16))


def write_sr(path: str | os.PathLike) -> Path:
    """Write a minimal Basic Text SR (a DICOM object that is not an image)."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(BASIC_TEXT_SR, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "SR"
    ds.PatientID = "P1"
    ds.ValueType = "CONTAINER"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_pdf(path: str | os.PathLike) -> Path:
    """Write a small PDF file (something users drop into DICOM folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    return path


def write_truncated_copy(src: str | os.PathLike, dst: str | os.PathLike, keep_fraction: float = 0.6) -> Path:
    """Copy the first `keep_fraction` of `src` to `dst` (an interrupted copy)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def write_corrupt_pixels_copy(src: str | os.PathLike, dst: str | os.PathLike, seed: int = 1) -> Path:
    """Copy a compressed (J2K or RLE) file with its codestream replaced by garbage of the same size.

    The header and the encapsulation items stay valid, so a header scan passes and decoding fails.
    """
    ds = dcmread(src)
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        raise ValueError("write_corrupt_pixels_copy needs a compressed source file")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    rng = np.random.default_rng(seed)
    # keep the first two bytes (J2K SOC marker / RLE segment count byte) so it still looks like a stream
    garbage = frame[:2] + rng.integers(0, 256, len(frame) - 2, dtype=np.uint8).tobytes()
    if ds.file_meta.TransferSyntaxUID == RLELossless:
        garbage = (200).to_bytes(4, "little") + garbage[4:]  # impossible segment count
    ds.PixelData = encapsulate([garbage])
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def write_tomosynthesis(path: str | os.PathLike, frames: int = 3) -> Path:
    """Write a small multi-frame Breast Tomosynthesis Image (recognised and skipped by mamview)."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(BREAST_TOMOSYNTHESIS, sop_uid, ExplicitVRLittleEndian)
    ds.SOPClassUID, ds.SOPInstanceUID = BREAST_TOMOSYNTHESIS, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MG"
    ds.PatientID, ds.PatientName = "P1", "DOE^JANE"
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = 32, 24
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    frame_item = Dataset()
    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    frame_item.FrameAnatomySequence = DicomSequence([anatomy])
    ds.SharedFunctionalGroupsSequence = DicomSequence([frame_item])
    return _save(ds, Path(path), ExplicitVRLittleEndian, np.zeros((frames, 32, 24), np.uint16))


def write_dicomdir(folder: str | os.PathLike, sources: Iterable[str | os.PathLike] | None = None) -> Path:
    """Write a DICOMDIR file set into `folder` and return the DICOMDIR path.

    `sources` are DICOM files to put in the set (copied under pydicom's own names); by default an
    RCC and an LCC mammogram of one study.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if sources is None:
        staging = folder.parent / (folder.name + "-src")
        study = generate_uid()
        sources = [
            write_mammogram(staging / "rcc.dcm", laterality="R", study_uid=study),
            write_mammogram(staging / "lcc.dcm", laterality="L", study_uid=study),
        ]
    fs = FileSet()
    for src in sources:
        fs.add(dcmread(src))
    fs.write(folder)
    return folder / "DICOMDIR"


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file (small helper so tests do not need shutil)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


__all__ = [
    "BREAST_TOMOSYNTHESIS",
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRLittleEndian",
    "ImplicitVRLittleEndian",
    "JPEG2000",
    "JPEG2000Lossless",
    "MG_FOR_PRESENTATION",
    "MG_FOR_PROCESSING",
    "RLELossless",
    "STANDARD",
    "breast_pixels",
    "copy_file",
    "standard_orientation",
    "write_corrupt_pixels_copy",
    "write_dicomdir",
    "write_mammogram",
    "write_other_modality",
    "write_pdf",
    "write_sr",
    "write_tomosynthesis",
    "write_truncated_copy",
]
