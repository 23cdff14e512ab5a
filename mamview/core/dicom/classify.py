"""Which breast and which view an image shows, and whether it is a 2-D mammogram at all.

Every decision carries the attribute that made it (`Classified.source`), strongest first:
coded attributes, then ViewPosition, then free text. An image whose side or view cannot be decided
is marked unknown, never guessed. Codes come from pydicom's CID 4014/4015 dictionaries; old
SNOMED-RT (SRT, also written SNM3) codes are matched through pydicom's SRT→SCT mapping.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from mamview.core.domain import (DOMAIN_CR, DOMAIN_FILM, DOMAIN_FOR_PROCESSING, DOMAIN_LOSSY,
                                 DOMAIN_SYNTHETIC, Classified, Laterality, Source, View,
                                 join_domain)


class DatasetLike(Protocol):
    """What these functions need: a pydicom Dataset, or headers.FastFields over one."""

    def get(self, keyword: str, default: Any = None) -> Any: ...

    def __contains__(self, keyword: str) -> bool: ...


# --- SOP classes ------------------------------------------------------------------------------

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
BREAST_TOMOSYNTHESIS = "1.2.840.10008.5.1.4.1.1.13.1.3"
# DBT projection images (For Presentation / For Processing): also tomosynthesis acquisitions
BREAST_PROJECTION = ("1.2.840.10008.5.1.4.1.1.13.1.4", "1.2.840.10008.5.1.4.1.1.13.1.5")
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

# Reason categories shared with headers.py (stable strings: ingest and the GUI group by them).
NOT_A_MAMMOGRAM = "not a mammogram"
TOMOSYNTHESIS = "tomosynthesis"
NOT_AN_IMAGE = "not an image"

# Storage classes that are images even though "Image" is not in their name
_IMAGE_CLASS_WORDS = ("Image", "Photograph", "Video")

# --- codes --------------------------------------------------------------------------------------

_VIEW_CODES: dict[View, Code] = {
    View.CC: codes.cid4014.CranioCaudal,
    View.MLO: codes.cid4014.MedioLateralObliqueProjection,
    View.ML: codes.cid4014.MedioLateralProjection,
    View.LM: codes.cid4014.LateroMedial,
    View.LMO: codes.cid4014.LateroMedialOblique,
    View.FB: codes.cid4014.CaudoCranial,
    View.XCCL: codes.cid4014.CranioCaudalExaggeratedLaterally,
    View.XCCM: codes.cid4014.CranioCaudalExaggeratedMedially,
    View.SIO: codes.cid4014.SuperolateralToInferomedialOblique,
    View.ISO: codes.cid4014.InferomedialToSuperolateralOblique,
    View.SPECIMEN: codes.cid4014.TissueSpecimenFromBreast,
}
# Deprecated SNOMED codes still seen for XCCL / XCCM (PS3.16 CID 4014 notes)
_DEPRECATED_VIEW_CODES = {"Y-X1770": View.XCCL, "Y-X1771": View.XCCM}

_MODIFIER_CODES: dict[str, Code] = {
    "spot compression": codes.cid4015.SpotCompression,
    "magnification": codes.cid4015.Magnification,
    "implant displaced": codes.cid4015.ImplantDisplaced,
    "cleavage": codes.cid4015.Cleavage,
    "axillary tail": codes.cid4015.AxillaryTail,
    "rolled lateral": codes.cid4015.RolledLateral,
    "rolled medial": codes.cid4015.RolledMedial,
    "rolled inferior": codes.cid4015.RolledInferior,
    "rolled superior": codes.cid4015.RolledSuperior,
    "nipple in profile": codes.cid4015.NippleInProfile,
    "anterior compression": codes.cid4015.AnteriorCompression,
    "infra-mammary fold": codes.cid4015.InfraMammaryFold,
    "axillary tissue": codes.cid4015.AxillaryTissue,
    "tangential": codes.cid4015.Tangential,
}

# --- text ---------------------------------------------------------------------------------------

_VIEW_WORDS = {v.value: v for v in View if v not in (View.UNKNOWN, View.SPECIMEN)}
# Spelled-out projection names; oblique forms are listed before the plain ones they contain.
_VIEW_PHRASES = (
    (re.compile(r"MEDIO\W*LATERAL\W*OBLIQUE"), View.MLO),
    (re.compile(r"LATERO\W*MEDIAL\W*OBLIQUE"), View.LMO),
    (re.compile(r"MEDIO\W*LATERAL"), View.ML),
    (re.compile(r"LATERO\W*MEDIAL"), View.LM),
    (re.compile(r"CRANIO\W*CAUDAL"), View.CC),
    (re.compile(r"CAUDO\W*CRANIAL"), View.FB),
    (re.compile(r"\bSPECIMEN\b"), View.SPECIMEN),
)
_SIDE_WORDS = {
    "R": Laterality.RIGHT, "RT": Laterality.RIGHT, "RIGHT": Laterality.RIGHT,
    "L": Laterality.LEFT, "LT": Laterality.LEFT, "LEFT": Laterality.LEFT,
    "B": Laterality.BOTH, "BILATERAL": Laterality.BOTH, "BOTH": Laterality.BOTH,
    # localized forms seen in European archives
    "DEX": Laterality.RIGHT, "DEXTER": Laterality.RIGHT, "DEXTRA": Laterality.RIGHT,
    "SIN": Laterality.LEFT, "SINISTER": Laterality.LEFT, "SINISTRA": Laterality.LEFT,
    "DROIT": Laterality.RIGHT, "DROITE": Laterality.RIGHT, "GAUCHE": Laterality.LEFT,
    "RECHTS": Laterality.RIGHT, "LINKS": Laterality.LEFT,
    "DERECHA": Laterality.RIGHT, "DERECHO": Laterality.RIGHT,
    "IZQUIERDA": Laterality.LEFT, "IZQUIERDO": Laterality.LEFT,
    "DESTRA": Laterality.RIGHT, "DESTRO": Laterality.RIGHT, "SINISTRO": Laterality.LEFT,
    "HOGER": Laterality.RIGHT, "HÖGER": Laterality.RIGHT, "VÄNSTER": Laterality.LEFT,
    "VANSTER": Laterality.LEFT,
}
_MODIFIER_WORDS = {
    "SPOT": "spot compression",
    "MAG": "magnification",
    "MAGNIFICATION": "magnification",
    "ID": "implant displaced",
    "EKLUND": "implant displaced",
    "CV": "cleavage",
}  # AT, RL, RM are left out on purpose: too easily part of other text
_TEXT_KEYWORDS = ("SeriesDescription", "ProtocolName", "ImageComments")
_TOKEN = re.compile(r"[A-Z0-9ÄÖÅ]+")


def _text(value: object) -> str:
    """Upper-case, single-spaced text of an attribute value (multi-valued values joined)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = " ".join(str(v) for v in value)  # type: ignore[union-attr]
    return " ".join(str(value).upper().split())


def _side_value(value: object) -> Laterality | None:
    """Laterality for an R/L/B code string; None for empty or U (unpaired) or anything else."""
    text = _text(value)
    return {"R": Laterality.RIGHT, "L": Laterality.LEFT, "B": Laterality.BOTH}.get(text)


def _split_side_view(token: str) -> tuple[Laterality | None, View | None]:
    """Read one token such as 'RMLO', 'LCC', 'MLO', 'R', 'LEFT' (a view word wins over a prefix)."""
    if token in _VIEW_WORDS:
        return None, _VIEW_WORDS[token]
    if token in _SIDE_WORDS:
        return _SIDE_WORDS[token], None
    if len(token) > 2 and token[0] in "RL" and token[1:] in _VIEW_WORDS:
        return _SIDE_WORDS[token[0]], _VIEW_WORDS[token[1:]]
    return None, None


def _scan_text(text: str) -> tuple[set[Laterality], set[View]]:
    """All sides and views named in a text (callers treat more than one as undecided)."""
    sides: set[Laterality] = set()
    views: set[View] = set()
    rest = text
    for pattern, view in _VIEW_PHRASES:
        if pattern.search(rest):
            views.add(view)
            rest = pattern.sub(" ", rest)
    for token in _TOKEN.findall(rest):
        side, view = _split_side_view(token)
        if side is not None:
            sides.add(side)
        if view is not None:
            views.add(view)
    return sides, views


def _first_item(ds: DatasetLike, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def _frame_laterality(ds: DatasetLike) -> str:
    """FrameLaterality from the shared (or first per-frame) functional groups, if any."""
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = _first_item(ds, keyword)
        if group is None:
            continue
        anatomy = _first_item(group, "FrameAnatomySequence")
        if anatomy is not None and anatomy.get("FrameLaterality"):
            return str(anatomy.FrameLaterality)
    return ""


def laterality(ds: DatasetLike) -> Classified:
    """Which breast the image shows, and which attribute said so.

    Order: ImageLaterality → FrameLaterality → Laterality → ViewPosition ("RMLO", "RIGHT CC")
    → SeriesDescription / ProtocolName / ImageComments → a misused PatientOrientation
    ("RCC", the last resort) → UNKNOWN (Source.NONE). Text that names both sides decides nothing.
    """
    coded = (
        (ds.get("ImageLaterality"), Source.IMAGE_LATERALITY),
        (_frame_laterality(ds), Source.FRAME_LATERALITY),
        (ds.get("Laterality"), Source.LATERALITY),
    )
    for value, source in coded:
        side = _side_value(value)
        if side is not None:
            return Classified(side.value, source, _text(value))

    texts = [(_text(ds.get("ViewPosition")), Source.VIEW_POSITION)]
    texts += [(_text(ds.get(k)), Source.DESCRIPTION) for k in _TEXT_KEYWORDS]
    for text, source in texts:
        if not text:
            continue
        sides, _ = _scan_text(text)
        if len(sides) == 1:
            return Classified(sides.pop().value, source, text)
    side, _, text = _misused_orientation(ds)
    if side is not None:
        return Classified(side.value, Source.PATIENT_ORIENTATION, text)
    return Classified(Laterality.UNKNOWN.value, Source.NONE)


# the direction letters PatientOrientation is made of (PS3.3 C.7.6.1.1.1; "H"/"F" head/foot)
_ORIENTATION_LETTERS = set("APRLHF")


def _misused_orientation(ds: DatasetLike) -> tuple[Laterality | None, View | None, str]:
    """Side and view from a PatientOrientation that holds a view ("CC", "RMLO") instead of
    directions, as some digitised-film archives write it; directions ("P", "L") say nothing
    here. Used only when every other attribute is silent, and recorded as the source."""
    value = ds.get("PatientOrientation")
    if value is None or value == "":
        return None, None, ""
    values = [value] if isinstance(value, str) else list(value)  # type: ignore[arg-type]
    sides: set[Laterality] = set()
    views: set[View] = set()
    for token in (_text(v) for v in values):
        if not token or set(token) <= _ORIENTATION_LETTERS:
            continue  # a real direction such as "P", "FL"
        side, found = _split_side_view(token)
        if found is not None:  # a side is read only together with a view ("RCC")
            views.add(found)
            if side is not None:
                sides.add(side)
    text = _text(value)
    return (sides.pop() if len(sides) == 1 else None), (views.pop() if len(views) == 1 else None), text


def _code_of(item: Dataset) -> Code | None:
    """The coded concept of a code-sequence item; SNM3 is read as SRT (the same codes)."""
    value = item.get("CodeValue") or item.get("LongCodeValue")
    scheme = _text(item.get("CodingSchemeDesignator"))
    if not value or not scheme:
        return None
    if scheme == "SNM3":
        scheme = "SRT"
    return Code(str(value).strip(), scheme, str(item.get("CodeMeaning", "")))


def _view_from_code(code: Code) -> View | None:
    if code.value in _DEPRECATED_VIEW_CODES:
        return _DEPRECATED_VIEW_CODES[code.value]
    for view, known in _VIEW_CODES.items():
        if code == known:  # pydicom maps SRT codes to their SCT equivalents here
            return view
    return None


def view(ds: DatasetLike) -> Classified:
    """The mammographic projection (CID 4014), and which attribute decided it.

    Order: ViewCodeSequence (SCT, SRT/SNM3) → ViewPosition ("MLO", "RMLO", "L CC")
    → description text → a misused PatientOrientation ("CC", the last resort) → UNKNOWN. ML and
    MLO are different views; text naming two views decides nothing.
    """
    item = _first_item(ds, "ViewCodeSequence")
    code = _code_of(item) if item is not None else None
    if code is not None:
        found = _view_from_code(code)
        if found is not None:
            detail = f"{code.scheme_designator}:{code.value}"
            return Classified(found.value, Source.VIEW_CODE_SEQUENCE, detail)

    texts = [(_text(ds.get("ViewPosition")), Source.VIEW_POSITION)]
    texts += [(_text(ds.get(k)), Source.DESCRIPTION) for k in _TEXT_KEYWORDS]
    for text, source in texts:
        if not text:
            continue
        _, views = _scan_text(text)
        if len(views) == 1:
            return Classified(views.pop().value, source, text)
    _, found, text = _misused_orientation(ds)
    if found is not None:
        return Classified(found.value, Source.PATIENT_ORIENTATION, text)
    return Classified(View.UNKNOWN.value, Source.NONE)


def _modifier_items(ds: DatasetLike) -> list[Dataset] | None:
    """Items of ViewModifierCodeSequence inside the view item (or at top level, as some write it).

    None when the file has no such sequence at all (an empty sequence is a coded "no modifier").
    """
    for holder in (_first_item(ds, "ViewCodeSequence"), ds):
        if holder is not None and "ViewModifierCodeSequence" in holder:
            return list(holder.get("ViewModifierCodeSequence") or ())
    return None


def view_modifiers(ds: DatasetLike) -> tuple[str, ...]:
    """View modifiers (CID 4015) as words, e.g. ("spot compression", "magnification").

    Codes decide; only when the file has no modifier sequence at all are words such as SPOT, MAG
    or ID (implant displaced) in ViewPosition and the descriptions used. Duplicates removed.
    """
    found: list[str] = []
    items = _modifier_items(ds)
    if items is not None:
        for code in filter(None, map(_code_of, items)):
            for name, known in _MODIFIER_CODES.items():
                if code == known and name not in found:  # SRT codes match via pydicom's mapping
                    found.append(name)
        return tuple(found)
    texts = [_text(ds.get("ViewPosition"))] + [_text(ds.get(k)) for k in _TEXT_KEYWORDS]
    for text in texts:
        for token in _TOKEN.findall(text):
            name = _MODIFIER_WORDS.get(token)
            if name and name not in found:
                found.append(name)
    return tuple(found)


def sop_class_uid(ds: DatasetLike) -> str:
    """SOPClassUID, or the file meta's MediaStorageSOPClassUID when the dataset lacks it."""
    uid = ds.get("SOPClassUID") or getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
    return str(uid or "").strip()


def sop_class_name(uid: str) -> str:
    """Readable name of a SOP class UID ('CT Image Storage'), or the UID itself when unknown."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "no SOP class")


def is_image_class(uid: str) -> bool:
    """True for storage classes that hold images (by pydicom's UID dictionary name).

    Unknown (e.g. private) classes count as images, so they get the more useful modality check.
    """
    name = sop_class_name(uid)
    if name == uid or name == "no SOP class":
        return True
    return any(word in name for word in _IMAGE_CLASS_WORDS)


def kind_detail(ds: DatasetLike) -> str:
    """'Modality CT, CT Image Storage' — what a rejected file is, for Problem.detail."""
    modality = _text(ds.get("Modality")) or "none"
    detail = f"Modality {modality}, {sop_class_name(sop_class_uid(ds))}"
    frames = ds.get("NumberOfFrames")
    if frames is not None and as_int(frames) > 1:
        detail += f", {as_int(frames)} frames"
    return detail


def as_int(value: object, default: int = 0) -> int:
    """An IS/US value as int, or `default` when missing or not a number."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def mammogram_kind(ds: DatasetLike) -> tuple[bool, str]:
    """Whether the dataset is a 2-D mammogram image; else (False, reason category).

    Accepted: the MG For Presentation / For Processing classes, DX or CR image storage with
    Modality MG (CR mammography systems write those), and digitised film (`is_digitised_film`;
    outside the model's domain, see `image_domain`). Rejected with a reason: non-image objects
    ("not an image"), breast tomosynthesis / projection objects and multi-frame MG
    ("tomosynthesis"), everything else ("not a mammogram"). Use `kind_detail` for the specifics.
    """
    uid = sop_class_uid(ds)
    modality = _text(ds.get("Modality"))
    if uid == MEDIA_STORAGE_DIRECTORY or not is_image_class(uid):
        return False, NOT_AN_IMAGE
    if uid == BREAST_TOMOSYNTHESIS or uid in BREAST_PROJECTION:
        return False, TOMOSYNTHESIS
    mammo_class = uid in (MG_FOR_PRESENTATION, MG_FOR_PROCESSING)
    radiograph_class = uid in (DX_FOR_PRESENTATION, DX_FOR_PROCESSING, CR_IMAGE)
    if not (mammo_class or (radiograph_class and modality == "MG") or is_digitised_film(ds)):
        return False, NOT_A_MAMMOGRAM
    if as_int(ds.get("NumberOfFrames"), 1) > 1:
        return False, TOMOSYNTHESIS
    return True, ""


# --- the model's validated domain ---------------------------------------------------------------

# Transfer syntaxes that are lossy by definition (PS3.5 A.4.1: JPEG Baseline and Extended);
# others say so through LossyImageCompression, which PS3.3 C.7.6.1.1.5 requires once lossy.
_LOSSY_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
# Synthesised 2D views: PS3.3 C.8.11.7.1.4 (Table C.8-74d) defines Image Type Value 4
# GENERATED_2D, "mathematically generated 2D view"; older files name only the vendor's
# product (Hologic C-View, GE V-Preview, Fujifilm S-View, Siemens Insight 2D).
_GENERATED_2D = "GENERATED_2D"
_SYNTHETIC_WORDS = re.compile(r"\b(C-?VIEW|V-?PREVIEW|S-?VIEW|INSIGHT\W?2D|"
                              r"SYNTHE[SZ]I[SZ]ED\W?2D|SYNTHETIC\W?2D)\b")


def is_digitised_film(ds: DatasetLike) -> bool:
    """A film mammogram digitised into a Secondary Capture: an SC image class, Modality MG or
    BodyPartExamined BREAST, one grey frame of pixels (the form of public research archives;
    a colour screenshot stays a study member)."""
    name = sop_class_name(sop_class_uid(ds))
    breast = _text(ds.get("Modality")) == "MG" or _text(ds.get("BodyPartExamined")) == "BREAST"
    grey = as_int(ds.get("SamplesPerPixel"), 1) == 1 and as_int(ds.get("NumberOfFrames"), 1) <= 1
    return "Secondary Capture" in name and breast and grey and "Rows" in ds


def is_synthetic_2d(ds: DatasetLike) -> bool:
    """A 2-D view computed from a tomosynthesis acquisition (see _GENERATED_2D above)."""
    if any(_text(v) == _GENERATED_2D for v in (ds.get("ImageType") or ())):
        return True
    text = " ".join(_text(ds.get(k)) for k in ("DerivationDescription", "SeriesDescription"))
    return bool(_SYNTHETIC_WORDS.search(text))


def image_domain(ds: DatasetLike) -> str:
    """Why a mammogram image is outside the risk model's validated domain (full-field digital,
    For Presentation, not lossy, acquired as 2-D), as the DOMAIN_* categories joined by ', ';
    '' when inside."""
    uid = sop_class_uid(ds)
    parts = []
    if is_digitised_film(ds):
        parts.append(DOMAIN_FILM)
    if uid == CR_IMAGE:
        parts.append(DOMAIN_CR)
    if is_synthetic_2d(ds):
        parts.append(DOMAIN_SYNTHETIC)
    intent = _text(ds.get("PresentationIntentType"))
    if intent == "FOR PROCESSING" or (not intent and uid in (MG_FOR_PROCESSING, DX_FOR_PROCESSING)):
        parts.append(DOMAIN_FOR_PROCESSING)
    syntax = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID") or "")
    if _text(ds.get("LossyImageCompression")) == "01" or syntax in _LOSSY_SYNTAXES:
        parts.append(DOMAIN_LOSSY)
    return join_domain(parts)


# --- the other objects of a breast imaging study ------------------------------------------------

MAMMOGRAPHY_CAD_SR = "1.2.840.10008.5.1.4.1.1.88.50"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
# the kinds a study member can be (stable strings: stored in the cache and shown)
CAD_SR, SR, PRESENTATION_STATE, KEY_OBJECTS = "CAD SR", "SR", "presentation state", "key objects"
SECONDARY_CAPTURE, DOCUMENT, OTHER_OBJECT = "secondary capture", "document", "other object"
# modalities a breast study's non-image objects carry (OT: secondary captures, DOC: PDFs)
_STUDY_MODALITIES = {"MG", "SR", "PR", "KO", "OT", "DOC", ""}


def study_object_kind(ds: DatasetLike) -> str | None:
    """The kind of a non-mammogram object that belongs with a breast imaging study, or None
    when it does not (a CT, an ultrasound clip: those stay "not a mammogram" problems).

    Members: SRs (CAD SR apart), presentation states, key object selections, secondary
    captures, encapsulated documents, and tomosynthesis / multi-frame MG; an object of any
    other class counts when its Modality is MG or its BodyPartExamined is BREAST.
    """
    uid = sop_class_uid(ds)
    name = sop_class_name(uid)
    modality = _text(ds.get("Modality"))
    breast = modality == "MG" or _text(ds.get("BodyPartExamined")) == "BREAST"
    if uid == MEDIA_STORAGE_DIRECTORY or not uid:
        return None
    if uid == BREAST_TOMOSYNTHESIS or uid in BREAST_PROJECTION or (
            modality == "MG" and as_int(ds.get("NumberOfFrames"), 1) > 1):
        return TOMOSYNTHESIS
    if uid == MAMMOGRAPHY_CAD_SR:
        return CAD_SR
    if uid == KEY_OBJECT_SELECTION:
        return KEY_OBJECTS
    if "Presentation State" in name:
        return PRESENTATION_STATE if modality in _STUDY_MODALITIES or breast else None
    if name.endswith(" SR") or " SR " in name or "Structured Report" in name:
        return SR if modality in _STUDY_MODALITIES or breast else None
    if "Secondary Capture" in name:
        return SECONDARY_CAPTURE if modality in _STUDY_MODALITIES or breast else None
    if "Encapsulated" in name:
        return DOCUMENT if modality in _STUDY_MODALITIES or breast else None
    return OTHER_OBJECT if breast else None

