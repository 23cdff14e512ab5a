"""Calibration of distances on a mammogram: millimetres per pixel and where that figure comes from.

A projection mammogram's ImagerPixelSpacing is measured at the detector; an object in the breast
is magnified on its way there, so the spacing in the breast is ImagerPixelSpacing divided by
EstimatedRadiographicMagnificationFactor when the file gives one. PixelSpacing (already calibrated
to the patient, or a digitiser's) is the fallback; with neither, a distance is only in pixels.
Header values are untrusted: implausible ones are ignored, never used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

# plausible ranges: a mammography detector pixel is 0.05–0.2 mm, film digitisers go coarser
_SPACING_MM = (0.001, 5.0)
_MAGNIFICATION = (1.0, 3.0)  # geometric magnification is ≥ 1; a magnification view reaches ~2


@dataclass(frozen=True)
class Calibration:
    """Millimetres per pixel (between rows, between columns) and a sentence saying why."""

    row_mm: float
    col_mm: float
    source: str  # e.g. 'ImagerPixelSpacing 0.1 mm ÷ magnification 1.1'


UNCALIBRATED = "uncalibrated (pixels): the file gives no pixel spacing"


def _pair(value) -> tuple[float, float] | None:
    try:
        values = [float(v) for v in (value or ())]
    except (TypeError, ValueError):
        return None
    if len(values) < 2 or not all(math.isfinite(v) and _SPACING_MM[0] <= v <= _SPACING_MM[1]
                                  for v in values[:2]):
        return None
    return values[0], values[1]


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def calibration_from(fields: dict) -> Calibration | None:
    """The calibration from header values (keyword → value); None when the file gives none
    that is plausible."""
    imager = _pair(fields.get("ImagerPixelSpacing"))
    if imager is not None:
        source = f"ImagerPixelSpacing {_fmt(imager[0])} mm"
        if imager[0] != imager[1]:
            source = f"ImagerPixelSpacing {_fmt(imager[0])}×{_fmt(imager[1])} mm"
        mag = _number(fields.get("EstimatedRadiographicMagnificationFactor"))
        if mag is not None and _MAGNIFICATION[0] <= mag <= _MAGNIFICATION[1]:
            if mag != 1.0:
                return Calibration(imager[0] / mag, imager[1] / mag,
                                   f"{source} ÷ magnification {_fmt(mag)}")
            return Calibration(imager[0], imager[1], f"{source} (magnification 1)")
        note = " (magnification factor implausible, not applied)" if mag is not None else (
            " at the detector (no magnification factor)")
        return Calibration(imager[0], imager[1], source + note)
    plain = _pair(fields.get("PixelSpacing"))
    if plain is not None:
        return Calibration(plain[0], plain[1], f"PixelSpacing {_fmt(plain[0])} mm")
    return None


_TAGS = ("ImagerPixelSpacing", "PixelSpacing", "EstimatedRadiographicMagnificationFactor")


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """The calibration of a DICOM file, from its header only (no pixels); None when the file
    gives none or cannot be read (a regular file only: never blocks on a FIFO)."""
    import pydicom

    from mamview.core.dicom.headers import open_regular

    try:
        f = open_regular(path)
        if f is None:
            return None
        with f:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True, specific_tags=list(_TAGS))
            return calibration_from({k: ds.get(k) for k in _TAGS})
    except Exception:  # an unreadable header: the distance stays in pixels
        return None


def oriented(cal: Calibration | None, transposed: bool) -> Calibration | None:
    """The calibration of the image as hung: a transposed image swaps rows and columns."""
    if cal is None or not transposed:
        return cal
    return Calibration(cal.col_mm, cal.row_mm, cal.source)


def distance_mm(p0, p1, row_mm: float, col_mm: float) -> float:
    """Length of the segment p0→p1 ((x, y) image pixels: x along columns, y along rows)."""
    return math.hypot((p1[0] - p0[0]) * col_mm, (p1[1] - p0[1]) * row_mm)


def distance_text(p0, p1, spacing: tuple[float, float] | None) -> str:
    """'12.3 mm', or '123 px (uncalibrated)' without a spacing."""
    if spacing:
        return f"{distance_mm(p0, p1, spacing[0], spacing[1]):.1f} mm"
    return f"{math.hypot(p1[0] - p0[0], p1[1] - p0[1]):.0f} px (uncalibrated)"
