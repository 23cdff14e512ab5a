"""Domain vocabulary shared by every layer: views, sides, scanned image headers, problems.

Plain frozen dataclasses and string enums, so values can go into SQLite and JSON unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Sequence

from mamview.core.models.identity import ModelIdentity


class Laterality(StrEnum):
    """Which breast an image shows."""

    RIGHT = "R"
    LEFT = "L"
    BOTH = "B"
    UNKNOWN = "U"


class View(StrEnum):
    """Mammographic projection (DICOM CID 4014)."""

    CC = "CC"
    MLO = "MLO"
    ML = "ML"
    LM = "LM"
    LMO = "LMO"
    FB = "FB"
    XCCL = "XCCL"
    XCCM = "XCCM"
    SIO = "SIO"
    ISO = "ISO"
    SPECIMEN = "SPECIMEN"
    UNKNOWN = "UNKNOWN"


class Source(StrEnum):
    """Which DICOM attribute decided a laterality, view or orientation (shown to the user)."""

    IMAGE_LATERALITY = "ImageLaterality"
    FRAME_LATERALITY = "FrameLaterality"
    LATERALITY = "Laterality"
    VIEW_CODE_SEQUENCE = "ViewCodeSequence"
    VIEW_POSITION = "ViewPosition"
    DESCRIPTION = "description"  # SeriesDescription / ProtocolName / ImageComments text
    PATIENT_ORIENTATION = "PatientOrientation"
    INTENSITY = "intensity"  # decided from the pixels, used only when tags are missing
    NONE = "none"


class PresentationIntent(StrEnum):
    """PresentationIntentType (0008,0068)."""

    FOR_PRESENTATION = "FOR PRESENTATION"
    FOR_PROCESSING = "FOR PROCESSING"
    UNKNOWN = ""


# The four views a screening exam needs, keyed as they are shown (RCC, LCC, RMLO, LMLO).
STANDARD_VIEWS: tuple[tuple[Laterality, View], ...] = (
    (Laterality.RIGHT, View.CC),
    (Laterality.LEFT, View.CC),
    (Laterality.RIGHT, View.MLO),
    (Laterality.LEFT, View.MLO),
)


def view_label(laterality: str, view: str) -> str:
    """Short label such as 'RCC' or 'LMLO' ('?' for an unknown side or view)."""
    side = laterality if laterality in ("R", "L", "B") else "?"
    return side + (view if view and view != View.UNKNOWN else "?")


@dataclass(frozen=True)
class WindowPreset:
    """One VOI window from the file (WindowCenter/Width pair or a VOI LUT Sequence item)."""

    center: float | None
    width: float | None
    function: str = "LINEAR"  # LINEAR, LINEAR_EXACT or SIGMOID
    explanation: str = ""
    lut_index: int | None = None  # index into VOILUTSequence when this preset is a LUT


@dataclass(frozen=True)
class Classified:
    """A decided value and the attribute that decided it."""

    value: str
    source: Source
    detail: str = ""  # e.g. the raw code or text that matched


@dataclass(frozen=True)
class ImageHeader:
    """What a header-only scan learns about one DICOM file; enough to index it in the cache."""

    path: str
    size: int
    mtime_ns: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    patient_id: str
    patient_name: str = ""
    patient_birth_date: str = ""  # YYYYMMDD or ""
    issuer_of_patient_id: str = ""
    study_date: str = ""  # YYYYMMDD or ""
    study_time: str = ""
    content_date: str = ""
    accession_number: str = ""
    study_description: str = ""
    series_description: str = ""
    manufacturer: str = ""
    manufacturer_model: str = ""
    rows: int = 0
    columns: int = 0
    bits_allocated: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    photometric: str = ""
    number_of_frames: int = 1
    presentation_intent: PresentationIntent = PresentationIntent.UNKNOWN
    laterality: Classified = field(default_factory=lambda: Classified("U", Source.NONE))
    view: Classified = field(default_factory=lambda: Classified("UNKNOWN", Source.NONE))
    view_modifiers: tuple[str, ...] = ()  # e.g. ("spot compression",)
    patient_orientation: tuple[str, ...] = ()  # e.g. ("P", "L")
    image_type: tuple[str, ...] = ()
    window_presets: tuple[WindowPreset, ...] = ()
    pixel_spacing: tuple[float, float] | None = None  # ImagerPixelSpacing, else PixelSpacing (mm)
    breast_implant_present: str = ""
    burned_in_annotation: str = ""
    lossy_compression: str = ""
    # why the image is outside the risk model's validated domain ('' = inside): the
    # DOMAIN_* categories, comma-separated (classify.image_domain)
    domain: str = ""
    # when the image was taken, to choose among repeats of one view (normalised by the scan)
    acquisition_date: str = ""  # YYYYMMDD or "" (AcquisitionDate, else AcquisitionDateTime)
    acquisition_time: str = ""  # HHMMSS.ffffff or ""
    content_time: str = ""  # HHMMSS.ffffff or ""
    instance_number: int | None = None

    @property
    def label(self) -> str:
        """'RCC', 'LMLO', '?MLO' …"""
        return view_label(self.laterality.value, self.view.value)

    @property
    def is_standard_view(self) -> bool:
        """True for an unmodified RCC/LCC/RMLO/LMLO (no spot, magnification, … modifier)."""
        key = (self.laterality.value, self.view.value)
        return not self.view_modifiers and key in {(s.value, v.value) for s, v in STANDARD_VIEWS}


# ---------------------------------------------------------------- the model's validated domain
# Mirai was trained and validated on full-field digital For Presentation mammograms; images of
# these kinds are shown and labelled but scored only on request (stable strings: stored, shown).
DOMAIN_FILM = "digitised film"
DOMAIN_CR = "computed radiography"
DOMAIN_SYNTHETIC = "synthetic 2D"
DOMAIN_FOR_PROCESSING = "for processing"
DOMAIN_LOSSY = "lossy compressed"
DOMAIN_ORDER = (DOMAIN_FILM, DOMAIN_CR, DOMAIN_SYNTHETIC, DOMAIN_FOR_PROCESSING, DOMAIN_LOSSY)


def domain_parts(domain: str) -> tuple[str, ...]:
    """The categories of a stored domain string ('digitised film, lossy compressed'), in order."""
    found = {p.strip() for p in (domain or "").split(",") if p.strip()}
    return tuple(c for c in DOMAIN_ORDER if c in found) + tuple(sorted(found - set(DOMAIN_ORDER)))


def join_domain(parts) -> str:
    """One domain string of several categories (duplicates dropped, in DOMAIN_ORDER)."""
    return ", ".join(domain_parts(", ".join(parts)))


def domain_reason(domain: str) -> str:
    """Why an exam is not scored: "outside the model's validated domain: digitised film"."""
    return f"outside the model's validated domain: {join_domain([domain])}"


def domain_label(domain: str) -> str:
    """The label on a tile, strip button or export caption ('' when inside the domain)."""
    parts = domain_parts(domain)
    return f"{' + '.join(parts).upper()} — outside the model's domain" if parts else ""


@dataclass(frozen=True)
class Problem:
    """A file that could not be used, and why (shown in `mamview problems` and the GUI)."""

    path: str
    reason: str  # short category: 'not DICOM', 'truncated', 'not a mammogram', …
    detail: str = ""


@dataclass(frozen=True)
class StudyObject:
    """A non-image object filed with a breast imaging study (CAD SR, presentation state, key
    objects, …): stored and listed with its exam, never previewed or scored."""

    path: str
    size: int
    mtime_ns: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    kind: str  # 'CAD SR', 'SR', 'presentation state', 'key objects', 'tomosynthesis', …
    modality: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    study_date: str = ""  # YYYYMMDD or ""
    content_date: str = ""
    manufacturer: str = ""


# ---------------------------------------------------------------- scores as read


class ScoreState(StrEnum):
    """What the library knows about one exam's score for the model shown.

    CURRENT: a stored score whose cache key matches today's model and input files.
    STALE: a stored score of this model id whose key no longer matches (new weights, version,
    calibrator or preprocessing, or an input file changed): shown as pending, re-queued.
    PENDING: nothing stored yet. UNSCORABLE: the exam cannot be scored (the reason says why).
    """

    CURRENT = "current"
    STALE = "stale"
    PENDING = "pending"
    UNSCORABLE = "unscorable"


def risk_percent(risk: Sequence[float]) -> tuple[float, ...]:
    """Cumulative risk fractions → percent, rounded to 4 decimals: the one conversion every
    output (window, chart, export, SR, CSV, trajectory) uses, so they never disagree."""
    return tuple(round(100.0 * float(x), 4) for x in risk)


# What every view says about a stale score while it waits to be computed again.
STALE_REASON = "recomputing: model or image changed"


@dataclass(frozen=True, init=False)
class ModelRef(ModelIdentity):
    """The model whose scores are shown: its identity (what its scores' keys are checked
    against, inherited from ModelIdentity, so written once) plus what the listing knows.

    `installed` is False for a model id named by the user (or found in stored scores) that
    this installation cannot run: its identity fields are then empty and its stored scores are
    checked against their own recorded identity, so only a changed input file makes them stale.
    The constructor keeps its historical order and defaults (model_id, name, label, version, …).
    """

    installed: bool = False
    reason: str = ""  # why it is not installed, when it is not

    def __init__(self, model_id: str, name: str = "", label: str = "", version: str = "",
                 weights_sha256: str = "", calibrator_id: str = "", calibrator_sha256: str = "",
                 preprocessing_version: str = "", clinically_validated: bool = False,
                 installed: bool = False, reason: str = "", extra: dict | None = None):
        values = {"model_id": model_id, "name": name, "label": label, "version": version,
                  "weights_sha256": weights_sha256, "calibrator_id": calibrator_id,
                  "calibrator_sha256": calibrator_sha256,
                  "preprocessing_version": preprocessing_version,
                  "clinically_validated": clinically_validated, "installed": installed,
                  "reason": reason, "extra": dict(extra or {})}
        for key, value in values.items():
            object.__setattr__(self, key, value)  # frozen: the dataclass way to set fields

    @classmethod
    def from_identity(cls, identity: ModelIdentity, *, model_id: str | None = None,
                      name: str | None = None, label: str | None = None,
                      clinically_validated: bool | None = None, installed: bool = True,
                      reason: str = "") -> "ModelRef":
        """The ref of a model whose identity is known; the listing fields default to the
        identity's (the registry passes its own id and display-safe name and label)."""
        return cls(identity.model_id if model_id is None else model_id,
                   identity.name if name is None else name,
                   identity.label if label is None else label, identity.version,
                   identity.weights_sha256, identity.calibrator_id, identity.calibrator_sha256,
                   identity.preprocessing_version,
                   identity.clinically_validated if clinically_validated is None
                   else clinically_validated, installed, reason, identity.extra)

    def identity(self) -> dict:
        """id, version and weights hash (what `--json` outputs report)."""
        return {"model_id": self.model_id, "model_version": self.version,
                "weights_sha256": self.weights_sha256}


@dataclass(frozen=True)
class ScoredExam:
    """One exam's score for one model, as every read path sees it (core.cache.reads)."""

    exam_key: str
    state: ScoreState
    risk: tuple[float, ...] = ()  # cumulative fractions, years 1..5 (CURRENT only)
    reason: str = ""  # why UNSCORABLE, or STALE_REASON
    model_id: str = ""
    model_version: str = ""  # of the stored score (the stale one for STALE)
    weights_sha256: str = ""
    calibrator: str = ""
    preprocessing_version: str = ""
    device: str = ""
    computed_at: str = ""
    input_uids: tuple[str, ...] = ()
    # the stored score's inputs outside the model's validated domain ('' = all inside; set
    # only on scores computed on request), and views used for others ('RML→RMLO')
    domain: str = ""
    view_mapping: str = ""

    @property
    def out_of_domain(self) -> bool:
        """True for a score computed on request from images outside the validated domain."""
        return bool(self.domain)

    @property
    def five_year_percent(self) -> float | None:
        """The 5-year risk in percent of a current score, else None."""
        ok = self.state == ScoreState.CURRENT and len(self.risk) >= 5
        return risk_percent(self.risk[4:5])[0] if ok else None

    def identity(self) -> dict:
        """The stored score's model id, version and weights hash (empty when none is stored)."""
        return {"model_id": self.model_id, "model_version": self.model_version,
                "weights_sha256": self.weights_sha256}

    def as_dict(self) -> dict:
        """JSON-ready: state, 5-year percent, reason and the stored model identity."""
        return {"state": self.state.value, "risk": list(self.risk),
                "five_year_percent": self.five_year_percent, "reason": self.reason,
                **self.identity(), "computed_at": self.computed_at,
                "out_of_domain": self.out_of_domain, "domain": self.domain,
                "view_mapping": self.view_mapping}
