"""Display pipeline for mammograms as pure functions on numpy arrays.

Stages, in the order of PS3.3 C.11 (rule D3): stored values → modality LUT / rescale → VOI (window
with LINEAR, LINEAR_EXACT or SIGMOID, or a VOI LUT Sequence table) → presentation (MONOCHROME1 is
inverted after VOI, then the user's invert toggle) → orientation flips for the mirrored hanging
(right breast shown with its chest wall on the right edge, left breast on the left edge, so the two
chest walls meet in the middle of the screen).

Everything a stage needs comes from a frozen `DisplayParams`, read once per file by
`display_params(ds)`; the functions themselves never touch pydicom.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset

from mamview.core.dicom import classify
from mamview.core.domain import Laterality, Source, View, WindowPreset

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# Views shown like a CC (lateral side at the top); all others are shown axilla-up like an MLO.
CC_LIKE_VIEWS = frozenset({View.CC.value, View.XCCL.value, View.XCCM.value, View.FB.value})


@dataclass(frozen=True)
class LutTable:
    """A LUT from the file: descriptor (entries, first mapped value, bits) and its data."""

    first_mapped: int
    bits: int
    data: tuple[int, ...]
    explanation: str = ""


@dataclass(frozen=True)
class DisplayParams:
    """Everything the display stages need from one file's header."""

    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    modality_lut: LutTable | None = None
    window_presets: tuple[WindowPreset, ...] = ()
    voi_luts: tuple[LutTable, ...] = ()
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    pixel_representation: int = 0
    patient_orientation: tuple[str, ...] = ()
    laterality: str = Laterality.UNKNOWN.value
    view: str = View.UNKNOWN.value
    # what the header said that could not be used, and what is shown instead (one line each)
    notes: tuple[str, ...] = ()
    # False when RescaleSlope / RescaleIntercept are not finite numbers (then 1 and 0 are used)
    rescale_finite: bool = True


class Flips(NamedTuple):
    """How a stored image is turned for the hanging: optional transpose first, then the flips."""

    flip_lr: bool
    flip_ud: bool
    source: Source
    transpose: bool = False


NO_FLIPS = Flips(False, False, Source.NONE)


# --- reading parameters -------------------------------------------------------------------------


def _floats(value: object) -> list[float]:
    """DS / IS values as floats; values that are not numbers are dropped."""
    if value is None or value == "":
        return []
    single = isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")
    out = []
    for v in [value] if single else value:  # type: ignore[union-attr]
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return out


def _strings(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()]
    try:
        return [str(v).strip() for v in value]  # type: ignore[union-attr]
    except TypeError:
        return [str(value).strip()]


def _valid_width(function: str, width: float) -> bool:
    # PS3.3 C.11.2.1.2: LINEAR needs width >= 1, the others width > 0
    return width >= 1 if function == "LINEAR" else width > 0


def window_presets(ds: Dataset) -> tuple[WindowPreset, ...]:
    """The file's usable VOI presets: each WindowCenter/Width pair, then each VOI LUT Sequence item.

    Window pairs come first because they carry VOILUTFunction (often SIGMOID in MG); a preset with
    `lut_index` set stands for a VOI LUT Sequence table. Pairs with an invalid width and windows
    that cannot show this image (`window_notes` says why) are skipped, so the header row and the
    display pipeline number the presets the same way.
    """
    presets = [p for p, reason in _window_pairs(ds) if reason is None]
    for i, item in enumerate(ds.get("VOILUTSequence") or ()):
        text = str(item.get("LUTExplanation") or "").strip()
        presets.append(WindowPreset(None, None, "LINEAR", text, lut_index=i))
    return tuple(presets)


def window_notes(ds: Dataset) -> tuple[str, ...]:
    """Why each skipped window pair of the file was skipped (one line each)."""
    return tuple(reason for _, reason in _window_pairs(ds) if reason is not None)


def _window_pairs(ds: Dataset) -> list[tuple[WindowPreset, str | None]]:
    """Every WindowCenter/Width pair with the reason it is unusable (None if it is usable)."""
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    centers = _floats(ds.get("WindowCenter"))
    widths = _floats(ds.get("WindowWidth"))
    explanations = _strings(ds.get("WindowCenterWidthExplanation"))
    low, high = modality_range(ds)
    out = []
    for i, (center, width) in enumerate(zip(centers, widths)):
        text = explanations[i] if i < len(explanations) else ""
        preset = WindowPreset(center, width, function, text)
        out.append((preset, _window_problem(function, center, width, low, high)))
    return out


# A window this many times wider than the whole range leaves the image a few grey levels.
MAX_WIDTH_TO_RANGE = 64


def _window_problem(function: str, center: float, width: float, low: float, high: float) -> str | None:
    """Why a window cannot show values in [low, high], or None when it can."""
    shown = f"window {center:g}/{width:g} (centre/width)"
    if not (np.isfinite(center) and np.isfinite(width)) or not _valid_width(function, width):
        return f"{shown} is not a valid window; the image's own range is shown"
    if center + width / 2 < low or center - width / 2 > high:
        return (f"{shown} lies outside the image's range {low:g}..{high:g}; the image's own "
                f"range is shown")
    if width > MAX_WIDTH_TO_RANGE * max(high - low, 1.0):
        return (f"{shown} is far wider than the image's range {low:g}..{high:g}; the image's own "
                f"range is shown")
    return None


def _rescale(ds: Dataset) -> tuple[float, float, bool]:
    """(slope, intercept, finite): a missing or zero slope is 1; non-finite values give (1, 0, False)."""
    slope = (_floats(ds.get("RescaleSlope")) or [1.0])[0] or 1.0
    intercept = (_floats(ds.get("RescaleIntercept")) or [0.0])[0]
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        return 1.0, 0.0, False
    return slope, intercept, True


def stored_range(ds: Dataset) -> tuple[int, int]:
    """The values BitsStored and PixelRepresentation allow (BitsStored clamped to 1..32)."""
    bits = int((_floats(ds.get("BitsStored")) or _floats(ds.get("BitsAllocated")) or [16])[0])
    bits = min(max(bits, 1), 32)
    if int((_floats(ds.get("PixelRepresentation")) or [0])[0]) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def modality_range(ds: Dataset) -> tuple[float, float]:
    """The range of modality values (what VOI windows apply to) the header allows."""
    if ds.get("ModalityLUTSequence"):
        table = _lut_table(ds.ModalityLUTSequence[0])
        if table is not None:
            return float(min(table.data)), float(max(table.data))
    low, high = stored_range(ds)
    slope, intercept, _ = _rescale(ds)
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return float(ends[0]), float(ends[1])


def _lut_values(item: Dataset) -> np.ndarray:
    """LUT Data as integers (US/SS values, or OW bytes read as little-endian 16-bit words)."""
    data = item.get("LUTData")
    if data is None:
        return np.zeros(0, np.int64)
    if isinstance(data, (bytes, bytearray)):
        return np.frombuffer(data, dtype="<u2").astype(np.int64)
    if isinstance(data, int):
        return np.array([data], np.int64)
    return np.asarray(list(data), dtype=np.int64)


def _lut_table(item: Dataset) -> LutTable | None:
    """One LUT item; malformed tables (no data, bad descriptor) give None (D5: expect them)."""
    descriptor = [int(v) for v in _floats(item.get("LUTDescriptor"))]
    data = _lut_values(item)
    if len(descriptor) != 3 or data.size == 0:
        return None
    _, first, bits = descriptor
    # some writers put the wrong bit depth in the descriptor; trust the data when it is larger
    bits = max(bits if 1 <= bits <= 16 else 16, int(data.max()).bit_length())
    return LutTable(first, bits, tuple(int(v) for v in data), str(item.get("LUTExplanation") or ""))


def _orientation(ds: Dataset) -> tuple[str, ...]:
    return tuple(s.upper() for s in _strings(ds.get("PatientOrientation")) if s)


def display_params(ds: Dataset) -> DisplayParams:
    """Read the display attributes of one dataset once (header-only reads are enough)."""
    modality_lut = None
    if ds.get("ModalityLUTSequence"):
        modality_lut = _lut_table(ds.ModalityLUTSequence[0])
    slope, intercept, rescale_finite = _rescale(ds)
    notes = list(window_notes(ds))
    if not rescale_finite:
        notes.insert(0, "RescaleSlope or RescaleIntercept is not a finite number; stored values "
                        "are shown")
    luts = [_lut_table(item) for item in ds.get("VOILUTSequence") or ()]
    presets = window_presets(ds)
    if any(t is None for t in luts):
        # drop presets that point at unusable tables and renumber the usable ones
        usable = [i for i, t in enumerate(luts) if t is not None]
        presets = tuple(
            p if p.lut_index is None else replace(p, lut_index=usable.index(p.lut_index))
            for p in presets
            if p.lut_index is None or p.lut_index in usable
        )
        luts = [t for t in luts if t is not None]
    bits_stored = int((_floats(ds.get("BitsStored")) or _floats(ds.get("BitsAllocated")) or [16])[0])
    return DisplayParams(
        rescale_slope=slope,
        rescale_intercept=intercept,
        modality_lut=modality_lut,
        window_presets=presets,
        voi_luts=tuple(luts),  # type: ignore[arg-type]
        photometric=str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper(),
        bits_stored=bits_stored,
        pixel_representation=int((_floats(ds.get("PixelRepresentation")) or [0])[0]),
        patient_orientation=_orientation(ds),
        laterality=classify.laterality(ds).value,
        view=classify.view(ds).value,
        notes=tuple(notes),
        rescale_finite=rescale_finite,
    )


# --- modality and VOI ---------------------------------------------------------------------------


def _lookup(arr: np.ndarray, table: LutTable) -> np.ndarray:
    """Table lookup; inputs below / above the mapped range take the first / last entry."""
    data = np.asarray(table.data, dtype=np.float32)
    values = np.asarray(arr)
    if values.dtype.kind == "f":  # e.g. block-averaged previews: nearest table entry
        values = np.rint(values)
    index = np.clip(values.astype(np.int64) - table.first_mapped, 0, data.size - 1)
    return data[index]


def apply_modality(arr: np.ndarray, params: DisplayParams) -> np.ndarray:
    """Stored values → modality values (float32): Modality LUT if present, else slope/intercept."""
    if params.modality_lut is not None:
        return _lookup(arr, params.modality_lut)
    out = np.asarray(arr, dtype=np.float32)
    if params.rescale_slope != 1.0 or params.rescale_intercept != 0.0:
        with np.errstate(over="ignore"):  # overflow gives inf: callers check for non-finite values
            out = out * np.float32(params.rescale_slope) + np.float32(params.rescale_intercept)
    return out


def default_window(arr: np.ndarray) -> WindowPreset:
    """A LINEAR window from the 0.5th to the 99.5th percentile of the image (for files without VOI).

    Percentiles rather than min/max so that a few hot or dead pixels and burned-in markers do not
    flatten the breast; computed on a subsample because it only needs to be roughly right.
    """
    step = max(1, int(np.sqrt(arr.size / 250_000)))
    sample = np.asarray(arr[::step, ::step], dtype=np.float32)
    low, high = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    width = max(high - low, 1.0)
    return WindowPreset(center=low + width / 2, width=width, function="LINEAR", explanation="auto")


def with_window(preset: WindowPreset, center: float, width: float) -> WindowPreset:
    """Interactive window/level: new center and width, same VOI function (the OHIF bug, D4).

    A VOI LUT preset becomes a LINEAR window when dragged (a table cannot be re-centered).
    """
    function = preset.function if preset.lut_index is None else "LINEAR"
    minimum = 1.0 if function == "LINEAR" else 1e-6
    return WindowPreset(center, max(float(width), minimum), function, preset.explanation, None)


def resolve_preset(arr: np.ndarray, params: DisplayParams, preset: int | WindowPreset = 0) -> WindowPreset:
    """The preset to apply: the file's preset at an index, a given preset, or the automatic one."""
    if isinstance(preset, WindowPreset):
        return preset
    if 0 <= preset < len(params.window_presets):
        return params.window_presets[preset]
    return default_window(arr)


def window(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Windowing to 0..1 (float32) per PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID)."""
    x = np.asarray(arr, dtype=np.float32)
    function = function.upper()
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflows to inf far below the center: y = 0, correct
            out = 1.0 / (1.0 + np.exp(-4.0 * (x - np.float32(center)) / np.float32(width)))
        return out.astype(np.float32)
    if function == "LINEAR_EXACT":
        low, span = center - width / 2, width
    else:  # LINEAR: the standard's half-pixel shifted form
        low, span = (center - 0.5) - (width - 1) / 2, width - 1
    if span <= 0:  # LINEAR with width 1: a threshold at the center
        return (x > low).astype(np.float32)
    out = (x - np.float32(low)) / np.float32(span)
    return np.clip(out, 0.0, 1.0, out=out)


def apply_voi(arr: np.ndarray, params: DisplayParams, preset: int | WindowPreset = 0) -> np.ndarray:
    """Modality values → 0..1 (float32) through a window preset or a VOI LUT Sequence table.

    `preset` is an index into `params.window_presets` or a WindowPreset (e.g. from `with_window`).
    With no preset in the file (or an index past the end) a percentile window is used.
    """
    chosen = resolve_preset(arr, params, preset)
    if chosen.lut_index is not None:
        if not 0 <= chosen.lut_index < len(params.voi_luts):
            return apply_voi(arr, params, default_window(arr))
        table = params.voi_luts[chosen.lut_index]
        return _lookup(arr, table) / np.float32(2**table.bits - 1)
    assert chosen.center is not None and chosen.width is not None
    return window(arr, chosen.center, chosen.width, chosen.function)


def apply_presentation(arr01: np.ndarray, params: DisplayParams, invert: bool = False) -> np.ndarray:
    """MONOCHROME1 → minimum is white (after VOI, rule D6), then the user's invert on top."""
    flip = (params.photometric == "MONOCHROME1") != bool(invert)
    return (1.0 - arr01).astype(np.float32) if flip else arr01


# --- orientation --------------------------------------------------------------------------------


def _axis_letters(value: str) -> tuple[str, str]:
    """(A/P letter, other letters) of one PatientOrientation value such as 'P', 'FL', 'AL'."""
    ap = "".join(c for c in value if c in "AP")
    return ap, "".join(c for c in value if c not in "AP")


def orientation_flips(patient_orientation: tuple[str, ...] | list[str], laterality: str, view: str) -> Flips:
    """Flips that bring a stored image into the hanging orientation, from PatientOrientation only.

    Targets (what scanners usually write): right breast rows 'P', left breast rows 'A' (chest
    walls meet in the middle of the screen); CC-like views have the lateral side at the top
    (RCC columns 'L', LCC columns 'R'); other views have the feet at the bottom (columns with 'F').
    If the A/P axis runs down the columns the image is stored rotated: `transpose` is set and the
    flips apply to the transposed image. Returns NO_FLIPS (Source.NONE) when the tag is missing or
    does not say where the chest wall is, or the side is unknown; a vertical flip is only made when
    the column value names the needed direction.
    """
    if laterality not in (Laterality.RIGHT.value, Laterality.LEFT.value):
        return NO_FLIPS
    values = [str(v).strip().upper() for v in patient_orientation or ()]
    if len(values) != 2:
        return NO_FLIPS
    row, col = values
    transpose = False
    row_ap, _ = _axis_letters(row)
    col_ap, _ = _axis_letters(col)
    if len(row_ap) != 1:
        if len(col_ap) != 1:
            return NO_FLIPS
        row, col, row_ap, transpose = col, row, col_ap, True
    right = laterality == Laterality.RIGHT.value
    flip_lr = row_ap != ("P" if right else "A")
    if view in CC_LIKE_VIEWS:
        lateral = "L" if right else "R"  # the patient's side that is lateral for this breast
        medial = "R" if right else "L"
        flip_ud = medial in col and lateral not in col
    elif view == View.UNKNOWN.value:
        flip_ud = False  # no rule for the vertical without a view
    else:
        flip_ud = "H" in col and "F" not in col
    return Flips(flip_lr, flip_ud, Source.PATIENT_ORIENTATION, transpose)


def intensity_flip_lr(arr: np.ndarray, laterality: str) -> tuple[bool, Source]:
    """Horizontal flip decided from the pixels when PatientOrientation cannot be used.

    `arr` is display-ready (background dark). The breast lies against the chest-wall edge, so the
    outer tenth of columns on that side carries much more signal than the nipple side. Returns
    (flip_lr, Source.INTENSITY), or (False, Source.NONE) when the side is unknown or the two edges
    are too alike to tell. Never decides a vertical flip.
    """
    if laterality not in (Laterality.RIGHT.value, Laterality.LEFT.value) or arr.ndim != 2 or arr.shape[1] < 4:
        return False, Source.NONE
    band = max(1, arr.shape[1] // 10)
    left = float(np.mean(arr[:, :band]))
    right = float(np.mean(arr[:, -band:]))
    spread = float(np.max(arr)) - float(np.min(arr))
    if spread <= 0 or abs(left - right) < 0.05 * spread:
        return False, Source.NONE
    chest_wall_left = left > right
    want_left = laterality == Laterality.LEFT.value
    return chest_wall_left != want_left, Source.INTENSITY


def apply_flips(arr: np.ndarray, flips: Flips) -> np.ndarray:
    """Apply a Flips (transpose first, then left-right, then up-down); returns a contiguous array."""
    if flips.transpose:
        arr = arr.T
    if flips.flip_lr:
        arr = arr[:, ::-1]
    if flips.flip_ud:
        arr = arr[::-1, :]
    return np.ascontiguousarray(arr)


def to_uint8(arr01: np.ndarray) -> np.ndarray:
    """0..1 floats → 0..255 bytes (rounded)."""
    out = np.clip(arr01, 0.0, 1.0) * np.float32(255.0)
    return np.rint(out, out=out).astype(np.uint8)


def render(
    arr_stored: np.ndarray,
    params: DisplayParams,
    preset: int | WindowPreset = 0,
    invert: bool = False,
    orient: bool = True,
) -> tuple[np.ndarray, Flips]:
    """All stages: stored values → uint8 image ready to hang, and the flips that were applied.

    Orientation comes from PatientOrientation; when that cannot be used, the horizontal flip is
    taken from the pixels (Source.INTENSITY) and no vertical flip is made. The pixel check uses the
    image before the user's invert so the toggle cannot change the flip.
    """
    values = apply_modality(arr_stored, params)
    if not np.isfinite(values).all():  # e.g. a huge slope overflowing float32: show stored values
        values = np.asarray(arr_stored, dtype=np.float32)
    shown = apply_presentation(apply_voi(values, params, preset), params)
    flips = NO_FLIPS
    if orient:
        flips = orientation_flips(params.patient_orientation, params.laterality, params.view)
        if flips.source == Source.NONE:
            flip_lr, source = intensity_flip_lr(shown, params.laterality)
            flips = Flips(flip_lr, False, source)
    if invert:
        shown = 1.0 - shown
    return apply_flips(to_uint8(shown), flips), flips
