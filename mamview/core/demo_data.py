"""Synthetic serial screening mammograms, written as real DICOM files, with a hidden ground truth.

Each woman has 1–7 yearly exams of four standard views. Breasts are drawn procedurally (outline
with a skin line, nipple, pectoral muscle on MLO, fibroglandular texture whose density varies
between women and falls slowly with age). Most women ("controls") keep a flat 5-year risk near
2%; about one in five ("cases") rise towards 6–7% at their last exam, fastest in the last two
years, as in the cohort study our users follow (risk-science.md §1.4). The risk is written into
the pixels as calcification-like bright specks and a faint density whose number and contrast
grow with log(risk) (`risk_features`), so a model can learn it; a lead marker pins every image's
brightest value, so the speck contrast survives a per-image min-max window. The truth goes into
sidecar CSVs, never into the DICOM files. PatientIDs are DEMO0001… for seed 0 and
D{seed}-0001… for other seeds (`demo_patient_id`), so two cohorts never merge.

The files vary the way real archives do: three transfer syntaxes, two matrix sizes, a
MONOCHROME1 vendor, a SIGMOID VOI vendor, images stored mirrored with a matching
PatientOrientation, one exam with a missing view and one with an extra spot-compression view.
"""

from __future__ import annotations

import csv
import math
import zlib
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MARKER = ".mamview-demo-cohort"
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}

# rows × columns, bits stored, pixel spacing (mm)
VENDORS = {
    "HOLO": {"name": ("DemoRay", "Selena 3D"), "small": (512, 416), "full": (3328, 2560),
             "bits": 12, "spacing": 0.07, "photometric": "MONOCHROME2", "voi": "LINEAR"},
    "GEN": {"name": ("Gen Medical", "Senno Pristine"), "small": (640, 512), "full": (4096, 3328),
            "bits": 14, "spacing": 0.1, "photometric": "MONOCHROME2", "voi": "SIGMOID"},
    "FUJ": {"name": ("Fujo", "Amuleto"), "small": (512, 416), "full": (3328, 2560),
            "bits": 12, "spacing": 0.07, "photometric": "MONOCHROME1", "voi": "LINEAR"},
}
VIEW_CODES = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
SPOT_CODE = ("399055006", "spot compression")
BREAST_CODE = ("76752008", "Breast")
FIRST_NAMES = ["ALICE", "BEATRIZ", "CHLOE", "DANA", "ELIF", "FATIMA", "GRACE", "HANA", "INES",
               "JOY", "KAREN", "LENA", "MARIA", "NOOR", "OLGA", "PRIYA", "QIN", "ROSA", "SARA",
               "TARA", "UMA", "VERA", "WEN", "XENIA", "YARA", "ZOE"]


# ---------------------------------------------------------------- ground truth


@dataclass(frozen=True)
class Woman:
    """One synthetic woman and how her files vary."""

    index: int
    patient_id: str
    name: str
    birth: date
    case: bool
    density: float  # 0 (fatty) .. 1 (extremely dense) at age 50
    baseline_risk: float  # percent
    exam_dates: tuple[date, ...]
    diagnosis: date | None
    vendor: str
    syntax: str
    stored_flip: tuple[bool, bool]  # mirrored left-right / up-down relative to the hanging
    missing_view: str = ""  # label of a view left out of her last exam
    spot_view: str = ""  # label of an extra spot-compression view in her last exam


def case_risk(years_before_diagnosis: float) -> float:
    """Median trajectory of cases: 2.1% six years before diagnosis → 6.6% at the index exam,
    rising fastest in the last two years."""
    t = min(max(years_before_diagnosis, 0.0), 6.0)
    return 2.1 + 4.5 * ((6.0 - t) / 6.0) ** 2.5


def exam_risk(w: Woman, when: date, rng: np.random.Generator) -> float:
    """Ground-truth 5-year risk (percent) of one exam."""
    age = (when - w.birth).days / 365.25
    if w.case and w.diagnosis is not None:
        r = case_risk((w.diagnosis - when).days / 365.25) * w.baseline_risk / 2.0
    else:
        r = w.baseline_risk * (1 + 0.004 * (age - 55))  # nearly flat, slight age effect
    return float(max(0.8, r * math.exp(rng.normal(0, 0.04))))


def tissue_density(w: Woman, when: date) -> float:
    """Fibroglandular density at an exam: falls slowly with age."""
    age = (when - w.birth).days / 365.25
    return float(np.clip(w.density - 0.01 * (age - 50), 0.02, 1.0))


#: Seeds are kept below 2**32 so that a PatientID (`D{seed}-0001`, VR LO) stays short.
MAX_SEED = 2**32 - 1


def demo_patient_id(index: int, seed: int) -> str:
    """The PatientID of woman `index` (from 0) of the cohort of `seed`: DEMO0001… for seed 0
    (what the docs, the tests and the bundled model's training use), D{seed}-0001… for any
    other seed, so cohorts of different seeds imported into one library stay different
    women instead of merging into one woman's exams."""
    return f"DEMO{index + 1:04d}" if seed == 0 else f"D{seed}-{index + 1:04d}"


def make_women(n: int, seed: int) -> list[Woman]:
    """The cohort's women, deterministic for a seed (0 ≤ seed ≤ MAX_SEED)."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"the seed must be between 0 and {MAX_SEED}")
    rng = np.random.default_rng(seed)
    women = []
    for i in range(n):
        case = i % 5 == 1 or (n >= 10 and rng.random() < 0.05)
        n_exams = int(rng.integers(3, 8)) if case else int(rng.integers(1, 8))
        last = date(2025, 1, 15) + timedelta(days=int(rng.integers(0, 500)))
        dates = [last]
        for _ in range(n_exams - 1):
            dates.insert(0, dates[0] - timedelta(days=int(365 + rng.integers(-25, 26))))
        age_last = float(rng.uniform(45, 74))
        birth = last - timedelta(days=int(age_last * 365.25))
        diagnosis = last + timedelta(days=int(rng.integers(60, 330))) if case else None
        vendor = "GEN" if i % 4 == 3 else ("FUJ" if i % 6 == 4 else "HOLO")
        women.append(Woman(
            index=i, patient_id=demo_patient_id(i, seed),
            name=f"DEMO^{FIRST_NAMES[i % len(FIRST_NAMES)]}{'' if i < 26 else i // 26}",
            birth=birth, case=case, density=float(rng.beta(2.2, 2.5)),
            baseline_risk=float(rng.uniform(1.8, 2.3)), exam_dates=tuple(dates),
            diagnosis=diagnosis, vendor=vendor, syntax=("explicit", "jpeg2000", "rle")[i % 3],
            stored_flip=(i % 7 == 2, i % 7 == 5),
            missing_view="LMLO" if i == 2 else "", spot_view="RCC" if i == 3 else "",
        ))
    return women


# ---------------------------------------------------------------- pixels


def risk_features(risk_percent: float) -> dict:
    """How a risk shows in the image: speck count, speck contrast and a faint density's
    contrast, all growing with log(risk). Pure, so tests and the model trainer can use it.

    The contrast is continuous in log(risk) (controls at 2.0 % vs 2.4 % differ by ~0.05 in
    attenuation, about nine times the pixel noise), so a network can order women whose speck
    counts tie; the count alone moves in whole specks and cannot."""
    z = math.log(max(risk_percent, 0.5) / 1.5)  # ≈0.29 at 2%, ≈1.5 at 6.6%
    return {"specks": int(round(2 + 10 * z)), "speck_contrast": max(0.03, 0.06 + 0.3 * z),
            "mass_contrast": 0.05 * z}


#: Attenuation scale of the tissue (fat, glands, skin, nipple, muscle), leaving headroom below
#: the marker for the risk specks so they are not clipped on dense tissue.
TISSUE_SCALE = 0.72


def _smooth_noise(shape, scale: int, rng: np.random.Generator) -> np.ndarray:
    small = rng.standard_normal((max(2, shape[0] // scale), max(2, shape[1] // scale)))
    img = Image.fromarray(small.astype(np.float32), mode="F").resize(
        (shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


def draw_breast(shape: tuple[int, int], view: str, density: float, risk_percent: float,
                rng: np.random.Generator) -> np.ndarray:
    """A right breast in the standard hanging frame (chest wall at the right edge, nipple
    pointing left, axilla/lateral side up), as floats in 0..1 (1 = most attenuating)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    cy = h * (0.50 if view == "CC" else 0.55) + rng.normal(0, 0.02) * h
    depth = w * rng.uniform(0.62, 0.78)
    half_h = h * (rng.uniform(0.36, 0.42) if view == "CC" else rng.uniform(0.42, 0.48))
    # normalised radius: 1 on the skin line
    r = np.sqrt(((w - 1 - x) / depth) ** 2 + ((y - cy) / half_h) ** 2)
    inside = r < 1.0
    thickness = np.clip(1.0 - r ** 4, 0, 1) ** 0.5  # compressed breast thins at the edge
    fat = 0.30 * thickness
    texture = 0.7 * _smooth_noise(shape, 24, rng) + 0.3 * _smooth_noise(shape, 12, rng)
    gland_zone = np.clip(1.2 - r, 0, 1) * np.clip((w - x) / (0.25 * w) * 0.3 + 0.7, 0, 1)
    gland = np.clip(texture * 0.5 + density - 0.35, 0, 1) * gland_zone * (0.25 + 0.45 * density)
    # tissue kept below ~0.7 so that specks on dense tissue stay below the lead marker (1.0)
    img = TISSUE_SCALE * (fat + gland) * inside
    skin = (r > 0.965) & inside
    img[skin] += TISSUE_SCALE * 0.10
    # nipple at the tip
    ny, nx = cy, w - 1 - depth
    nipple = ((x - nx) ** 2 + (y - ny) ** 2) < (0.012 * h) ** 2
    img[nipple] = TISSUE_SCALE * 0.42
    if view == "MLO":
        # pectoral muscle: a bright wedge along the chest wall, widest at the top
        top_w = w * rng.uniform(0.22, 0.30)
        reach = h * rng.uniform(0.45, 0.60)
        edge = top_w * (1 - y / reach) - (w - 1 - x)  # > 0 inside the muscle
        pect = edge > 0
        soft = np.clip(edge / (0.03 * w), 0, 1)
        muscle = TISSUE_SCALE * (0.46 + 0.04 * _smooth_noise(shape, 32, rng))
        img = np.where(pect, img * (1 - soft) + muscle * soft, img)
        inside = inside | pect
    _add_risk_signal(img, inside & ~skin, r, risk_percent, rng, h)
    img += rng.normal(0, 0.006, size=shape).astype(np.float32) * inside
    _add_marker(img)
    return np.clip(img, 0, 1)


def _add_marker(img: np.ndarray) -> None:
    """A lead laterality-marker-like block (fully attenuating) in the empty upper corner in
    front of the nipple. Real mammograms carry one; here it also pins every image's maximum at
    1.0, so the per-image min-max window Mirai applies no longer rescales the risk specks by
    whatever tissue happens to be brightest."""
    h, w = img.shape
    y0, x0, mh, mw = int(0.03 * h), int(0.04 * w), max(3, int(0.035 * h)), max(2, int(0.025 * w))
    img[y0:y0 + mh, x0:x0 + mw] = 1.0
    t = max(1, mh // 4)  # hollow it out like a letter
    img[y0 + t:y0 + mh - t, x0 + t:x0 + mw] = 0.0


def _add_risk_signal(img, region, r, risk_percent, rng, h) -> None:
    f = risk_features(risk_percent)
    ys, xs = np.nonzero(region & (r < 0.85))
    if len(ys) == 0:
        return
    rad = max(1.0, 0.006 * h)  # ~1.5 px sigma after downsampling to 256 rows
    for _ in range(f["specks"]):
        k = int(rng.integers(len(ys)))
        cy, cx = ys[k], xs[k]
        y0, y1 = int(max(cy - 3 * rad, 0)), int(min(cy + 3 * rad + 1, img.shape[0]))
        x0, x1 = int(max(cx - 3 * rad, 0)), int(min(cx + 3 * rad + 1, img.shape[1]))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += f["speck_contrast"] * np.exp(
            -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad ** 2))
    if f["mass_contrast"] > 0:
        k = int(rng.integers(len(ys)))
        cy, cx = ys[k], xs[k]
        s = 0.05 * h
        y0, y1 = int(max(cy - 3 * s, 0)), int(min(cy + 3 * s + 1, img.shape[0]))
        x0, x1 = int(max(cx - 3 * s, 0)), int(min(cx + 3 * s + 1, img.shape[1]))
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += f["mass_contrast"] * np.exp(
            -((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s ** 2)) * region[y0:y1, x0:x1]


# ---------------------------------------------------------------- DICOM


def _orientation(lat: str, view: str, flip_lr: bool, flip_ud: bool) -> list[str]:
    """PatientOrientation of the stored pixels (standard: RCC P\\L, LCC A\\R, RMLO P\\FL,
    LMLO A\\FR), after mirroring."""
    row = "P" if lat == "R" else "A"
    col = ("L" if lat == "R" else "R") if view == "CC" else ("FL" if lat == "R" else "FR")
    swap = {"A": "P", "P": "A", "L": "R", "R": "L", "F": "H", "H": "F"}
    if flip_lr:
        row = "".join(swap[c] for c in row)
    if flip_ud:
        col = "".join(swap[c] for c in col)
    return [row, col]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def write_image(path: Path, w: Woman, when: date, study_uid: str, lat: str, view: str,
                pixels01: np.ndarray, *, seed: int, spot: bool = False,
                accession: str = "") -> Dataset:
    """Write one mammogram (pixels in the standard R frame; mirrored for L and stored flips)."""
    v = VENDORS[w.vendor]
    arr = pixels01[:, ::-1] if lat == "L" else pixels01
    flip_lr, flip_ud = w.stored_flip
    if flip_lr:
        arr = arr[:, ::-1]
    if flip_ud:
        arr = arr[::-1, :]
    top = 2 ** v["bits"] - 1
    stored = np.clip(40 + arr * (top - 80), 0, top).astype(np.uint16)
    if v["photometric"] == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    label = f"{lat}{view}"
    src = [str(seed), w.patient_id, when.isoformat(), label + ("spot" if spot else "")]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid(entropy_srcs=src + ["sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName, ds.PatientID, ds.PatientSex = w.name, w.patient_id, "F"
    ds.PatientBirthDate = w.birth.strftime("%Y%m%d")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=src + ["series"])
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = "091500"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.SeriesNumber = 1 + ["RCC", "LCC", "RMLO", "LMLO"].index(label) + (10 if spot else 0)
    ds.InstanceNumber = 1
    ds.StudyDescription = "MAMMO SCREENING BILATERAL"
    ds.SeriesDescription = f"{'R' if lat == 'R' else 'L'} {view}" + (" SPOT" if spot else "")
    ds.Modality = "MG"
    ds.Manufacturer, ds.ManufacturerModelName = v["name"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ImageLaterality = lat
    ds.ViewPosition = view
    code = _code(*VIEW_CODES[view])
    # Type 2 in the MG IOD: present (empty) when the view has no modifier
    code.ViewModifierCodeSequence = Sequence([_code(*SPOT_CODE)] if spot else [])
    ds.ViewCodeSequence = Sequence([code])
    ds.AnatomicRegionSequence = Sequence([_code(*BREAST_CODE)])
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.DetectorType = "DIRECT"
    ds.AcquisitionContextSequence = Sequence([])
    ds.ReferringPhysicianName = ""
    ds.PatientOrientation = _orientation(lat, view, flip_lr, flip_ud)
    ds.BodyPartExamined = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = [v["spacing"], v["spacing"]]
    ds.PixelSpacing = [v["spacing"], v["spacing"]]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = v["photometric"]
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, v["bits"], v["bits"] - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "INVERSE" if v["photometric"] == "MONOCHROME1" else "IDENTITY"
    # for presentation: log of the X-ray intensity; dense tissue (less intensity) displays white
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if v["photometric"] == "MONOCHROME2" else 1
    center, width = 40 + 0.33 * (top - 80), 0.62 * (top - 80)
    if v["photometric"] == "MONOCHROME1":
        center = top - center
    ds.WindowCenter, ds.WindowWidth = [round(center), round(center * 1.05)], [round(width), round(width * 0.8)]
    ds.WindowCenterWidthExplanation = ["NORMAL", "HARDER"]
    ds.VOILUTFunction = v["voi"]
    ds.LossyImageCompression = "00"

    syntax = SYNTAXES[w.syntax]
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.tobytes()
    else:
        # keep our deterministic SOP Instance UID (pydicom makes a new one by default)
        ds.compress(syntax, np.ascontiguousarray(stored), encoding_plugin="pylibjpeg",
                    generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


# ---------------------------------------------------------------- cohort


@dataclass(frozen=True)
class CohortSummary:
    """What `generate_cohort` wrote."""

    out_dir: Path
    patients: int
    exams: int
    images: int
    cases: int
    ground_truth_csv: Path = field(default=Path())
    outcomes_csv: Path = field(default=Path())
    images_csv: Path = field(default=Path())


def _check_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ValueError(f"{out} is not empty and is not a demo cohort; choose an empty folder")


def generate_cohort(out_dir, n_patients: int = 20, size: str = "small", seed: int = 0,
                    progress: Callable[[int, int], None] | None = None,
                    women: list[Woman] | None = None) -> CohortSummary:
    """Write a synthetic cohort of serial mammograms and its ground-truth CSVs into `out_dir`."""
    if size not in ("small", "full"):
        raise ValueError("size must be 'small' or 'full'")
    if n_patients < 1:
        raise ValueError("the cohort needs at least one woman")
    women = women if women is not None else make_women(n_patients, seed)  # checks the seed
    out = Path(out_dir)
    _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("synthetic data written by mamview demo-data\n")
    plan = []
    for w in women:
        for k, when in enumerate(w.exam_dates):
            last = k == len(w.exam_dates) - 1
            labels = ["RCC", "LCC", "RMLO", "LMLO"]
            if last and w.missing_view:
                labels.remove(w.missing_view)
            if last and w.spot_view:
                labels.append(w.spot_view + "+spot")
            plan.append((w, when, labels))
    total = sum(len(p[2]) for p in plan)
    done = 0
    truth_rows, image_rows = [], []
    for w, when, labels in plan:
        rng = np.random.default_rng([seed, w.index, when.toordinal()])
        risk = exam_risk(w, when, rng)
        dens = tissue_density(w, when)
        study_uid = generate_uid(entropy_srcs=[str(seed), w.patient_id, when.isoformat(), "study"])
        truth_rows.append({
            "patient_id": w.patient_id, "exam_date": when.isoformat(),
            "study_instance_uid": study_uid,
            "age": round((when - w.birth).days / 365.25, 1), "density": round(dens, 3),
            "risk_5y_percent": round(risk, 3), "group": "case" if w.case else "control",
        })
        shape = VENDORS[w.vendor][size]
        for label in labels:
            spot = label.endswith("+spot")
            lat, view = label[0], label[1:].replace("+spot", "")
            vrng = np.random.default_rng([seed, w.index, when.toordinal(), zlib.crc32(label.encode())])
            px = draw_breast(shape, view, dens, risk, vrng)
            if spot:  # a magnified-looking crop of the same breast
                h, wd = shape
                crop = px[h // 4: 3 * h // 4, wd // 3:]
                px = np.asarray(Image.fromarray(crop, mode="F").resize((wd, h), Image.BILINEAR))
            rel = Path(w.patient_id) / when.strftime("%Y%m%d") / f"{label.replace('+', '_')}.dcm"
            ds = write_image(out / rel, w, when, study_uid, lat, view, px, seed=seed, spot=spot,
                             accession=f"A{w.index + 1:04d}{when:%y%m%d}")
            image_rows.append({
                "path": rel.as_posix(), "sop_instance_uid": ds.SOPInstanceUID,
                "patient_id": w.patient_id, "exam_date": when.isoformat(), "laterality": lat,
                "view": view, "modifiers": "spot compression" if spot else "",
                "transfer_syntax_uid": SYNTAXES[w.syntax], "photometric":
                VENDORS[w.vendor]["photometric"], "stored_flip_lr": int(w.stored_flip[0]),
                "stored_flip_ud": int(w.stored_flip[1]), "vendor": w.vendor,
            })
            done += 1
            if progress:
                progress(done, total)
    outcomes = [{"patient_id": w.patient_id,
                 "diagnosis_date": w.diagnosis.isoformat() if w.diagnosis else ""} for w in women]
    gt, oc, im = out / "ground_truth.csv", out / "outcomes.csv", out / "images.csv"
    _write_csv(gt, truth_rows)
    _write_csv(oc, outcomes)
    _write_csv(im, image_rows)  # written last: its presence marks a finished cohort
    return CohortSummary(out, len(women), len(plan), len(image_rows),
                         sum(w.case for w in women), gt, oc, im)


def write_patient(out_dir, n_exams: int = 6, size: str = "small", transfer_syntax: str = "jpeg2000",
                  seed: int = 0) -> CohortSummary:
    """One woman with `n_exams` complete yearly exams in one transfer syntax (for benchmarks)."""
    if transfer_syntax not in SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {', '.join(SYNTAXES)}")
    last = date(2025, 6, 1)
    dates = tuple(last - timedelta(days=365 * k) for k in reversed(range(n_exams)))
    w = Woman(0, "BENCH0001", "BENCH^ONE", date(1965, 3, 1), False, 0.5, 2.0, dates, None,
              "HOLO", transfer_syntax, (False, False))
    return generate_cohort(out_dir, 1, size, seed, women=[w])


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        if rows:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    tmp.replace(path)
