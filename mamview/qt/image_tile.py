"""One mammogram on screen: a pyqtgraph ViewBox with the image, chest wall justified to the
inner edge, text overlays in the outer corners (away from the chest wall, where there is air;
fitted to narrow tiles and moved off tissue when zoomed, see `_place_labels`),
and the reading tools (zoom/pan, window/level by right-drag, invert, magnifier, fit, 1:1,
distance and arrow marks by left-drag in a tool mode, a key-image badge).

Marks live in image pixels of the full-resolution image as hung (x along its columns, y along
its rows); the tile draws them over the preview or the full-resolution render alike, and
`tile_image()` hands them to the export with the picture (`MARKS_TEXT_KEY`). The tile stores
nothing: it says `markDrawn` and its owner (mamview.qt.reading_tools) writes the cache and hands
the image's marks back with `set_marks`.

The tile holds the image already in hanging orientation (the cache's preview, later the
full-resolution render); it never decodes anything itself: it asks its owner through
`needFullRes` and the owner runs the decode on a worker.
"""

from __future__ import annotations

import json
import math
import time
from typing import Callable

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QFontMetricsF, QImage, QPainter, QPen, QPixmap, QPolygonF
from PySide6.QtWidgets import QLabel

from mamview.core import measure
from mamview.core.domain import domain_label

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

BACKGROUND = "#000000"
# an image outside the model's validated domain: readable on any image, never mistaken for a score
DOMAIN_STYLE = ("color: #ffcf66; background: rgba(90, 60, 0, 200); font-size: 11px; "
                "font-weight: bold; padding: 1px 4px; border-radius: 2px;")
# a faint dark backing: invisible on air, keeps the text readable where zoom puts it on tissue
# (the font is set per label: a narrow tile steps it down, see `fit_overlay`)
LABEL_STYLE = ("color: rgba(210, 210, 210, 210); background: rgba(0, 0, 0, 140); "
               "padding: 0px 3px; border-radius: 2px;")
# the text overlays' font sizes (px), first choice first: a narrow tile wraps the text at its
# separators, then steps down, and elides only at the smallest
OVERLAY_SIZES = (11, 10, 9)
# where an overlay's text may break, strongest first: 'RMLO   prior · 2024-05-17'
OVERLAY_BREAKS = ("   ", " · ", " ")
# a preview grey above this is tissue, not air (previews are hung with air dark)
TISSUE_LEVEL = 40
KEY_STYLE = ("color: #111; background: #ffd24a; font-size: 11px; font-weight: bold; "
             "padding: 1px 4px; border-radius: 2px;")
MARK_COLOR = QColor("#4fd6ff")
ARROW_COLOR = QColor("#ffd24a")
# the text key under which `tile_image()` hands the marks (JSON, in that image's pixels) over
MARKS_TEXT_KEY = "mamview-marks"
_DRAG_BUTTONS = Qt.MouseButton.LeftButton | Qt.MouseButton.MiddleButton | Qt.MouseButton.RightButton
LOUPE_SIZE = 240
LOUPE_ZOOM = 3.0
# zoomed in past this many screen pixels per preview pixel, the preview is too coarse
FULL_RES_TRIGGER = 1.25


def gray_image(array: np.ndarray) -> QImage:
    """uint8 (rows, cols) → a QImage that owns its copy of the pixels."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = a.shape
    return QImage(a.data, w, h, a.strides[0], QImage.Format.Format_Grayscale8).copy()


_FONTS: dict[int, tuple[QFont, QFontMetricsF]] = {}


def overlay_font(px: int) -> tuple[QFont, QFontMetricsF]:
    """The overlays' font at `px` pixels and its metrics (made once per size)."""
    if px not in _FONTS:
        font = QFont()
        font.setFamilies(["sans-serif"])
        font.setPixelSize(px)
        _FONTS[px] = font, QFontMetricsF(font)
    return _FONTS[px]


def wrap_text(text: str, fits: Callable[[str], bool], breaks=OVERLAY_BREAKS) -> list[str]:
    """`text` as lines that each pass `fits`, broken at the strongest separator first (the
    separator itself is dropped at a break); a line that cannot be broken further stays."""
    if fits(text) or not breaks:
        return [text]
    sep, weaker = breaks[0], breaks[1:]
    if sep not in text:
        return wrap_text(text, fits, weaker)
    lines: list[str] = []
    for part in text.split(sep):
        if lines and fits(lines[-1] + sep + part):
            lines[-1] += sep + part
        else:
            lines.append(part)
    return [w for line in lines for w in wrap_text(line, fits, weaker)]


def fit_overlay(text: str, room: float, max_lines: int) -> tuple[int, list[str]]:
    """The font size and lines that show `text` within `room` px: the largest size at which it
    wraps into two whole lines, else into `max_lines`, else the smallest size with the lines
    elided (each keeps its start, which says what it is)."""
    for limit in sorted({min(2, max_lines), max_lines}):
        for px in OVERLAY_SIZES:
            fm = overlay_font(px)[1]
            lines = wrap_text(text, lambda t: fm.horizontalAdvance(t) <= room)
            if len(lines) <= limit and all(fm.horizontalAdvance(t) <= room for t in lines):
                return px, lines
    px = OVERLAY_SIZES[-1]
    fm = overlay_font(px)[1]
    lines = wrap_text(text, lambda t: fm.horizontalAdvance(t) <= room)
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [" ".join(lines[max_lines - 1:])]
    return px, [fm.elidedText(t, Qt.TextElideMode.ElideRight, max(1.0, room)) for t in lines]


class _Overlay(QLabel):
    """A text overlay on a tile. `text()` is what it says in full; what it shows is fitted to
    the room it is given (`fit`): wrapped at its separators, a smaller font, elided last."""

    PAD = 8  # the style's horizontal padding and a pixel of slack

    def __init__(self, parent, max_lines: int):
        super().__init__(parent)
        self.max_lines = max_lines
        self._full = ""
        self._fitted: tuple | None = None
        self.setStyleSheet(LABEL_STYLE)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        self._full = text or ""
        self._fitted = None
        super().setText(self._full)

    def text(self) -> str:
        return self._full

    def shown_text(self) -> str:
        """What the tile shows (lines joined by newlines)."""
        return super().text()

    def fit(self, room: int) -> None:
        """Show the text within `room` px of width (label padding included)."""
        if self._fitted == (self._full, room):
            return
        self._fitted = (self._full, room)
        px, lines = fit_overlay(self._full, room - self.PAD, self.max_lines)
        font = overlay_font(px)[0]
        if self.font() != font:
            self.setFont(font)
        super().setText("\n".join(lines))
        self.adjustSize()

    def set_right(self, right: bool) -> None:
        """Align the lines with the corner the label sits in."""
        align = Qt.AlignmentFlag.AlignRight if right else Qt.AlignmentFlag.AlignLeft
        if not self.alignment() & align:
            self.setAlignment(align | Qt.AlignmentFlag.AlignVCenter)


class _ReadingViewBox(pg.ViewBox):
    """Left drag pans, wheel zooms (pyqtgraph defaults); right drag is window/level."""

    def __init__(self, tile: "ImageTile"):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._tile = tile
        self._wl_start: tuple[float, float] | None = None

    def mouseDragEvent(self, ev, axis=None):
        if ev.button() == Qt.MouseButton.LeftButton and self._tile.tool:
            ev.accept()  # a tool mode: left drag draws the mark instead of panning
            p0 = self.mapSceneToView(ev.buttonDownScenePos())
            p1 = self.mapSceneToView(ev.scenePos())
            self._tile._drag_mark((p0.x(), p0.y()), (p1.x(), p1.y()), ev.isFinish())
            return
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()
            if ev.isStart():
                self._wl_start = (self._tile.window_center, self._tile.window_width)
            if self._wl_start is None:
                return
            delta = ev.screenPos() - ev.buttonDownScreenPos()
            c0, w0 = self._wl_start
            # horizontal: width, vertical: centre (drag up = brighter), as most PACS do
            self._tile.set_window(c0 - delta.y() * 0.5, max(1.0, w0 + delta.x() * 0.8))
            if ev.isFinish():
                self._wl_start = None
            return
        super().mouseDragEvent(ev, axis)

    def mouseClickEvent(self, ev):
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()  # no context menu: right button belongs to window/level
            return
        super().mouseClickEvent(ev)


class ImageTile(pg.GraphicsView):
    """A single view (e.g. RCC of one exam) in the hanging grid."""

    rangeChangedByUser = Signal(object)  # this tile, after a zoom/pan
    needFullRes = Signal(object)  # this tile: decode the original at full resolution
    windowChanged = Signal(object)  # this tile, after window/level or invert
    activated = Signal(object)  # this tile was clicked
    # this tile and the new mark: {'kind', 'points' (image px), 'spacing', 'spacing_source'}
    markDrawn = Signal(object, object)

    def __init__(self, parent=None):
        super().__init__(parent, background=BACKGROUND)
        self.setFrameShape(pg.QtWidgets.QFrame.Shape.NoFrame)
        self.vb = _ReadingViewBox(self)
        self.vb.setBorder(None)
        self.setCentralItem(self.vb)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.vb.addItem(self.image_item)
        self.label = ""  # 'RCC'
        self.domain_text = ""  # the label of an image outside the model's domain, else ''
        self.laterality = ""  # 'R' / 'L'
        self.exam_key = ""
        self.image_row: dict | None = None
        self.array: np.ndarray | None = None  # what is displayed (preview or full)
        self.preview_shape: tuple[int, int] = (0, 0)
        self.full_res = False
        self.full_res_requested = False
        self.preset_index: int | None = None  # file preset rendered at full res; None = preview's
        self.window_center = 127.5
        self.window_width = 255.0
        self.inverted = False
        self.magnifier = False
        self.last_paint = 0.0
        self._fitted = True  # refit on resize until the user zooms/pans
        self._setting_range = False
        self.overlays_visible = True  # the text overlays (H hides them; marks stay)
        # whether this tile carries its exam's risk caption: one per exam of the hanging, so
        # whoever lays out the tiles sets it (mamview.qt.reading_tools does for the grid)
        self.show_score = True
        self.tool = ""  # '', 'distance' or 'arrow': what a left drag does ('' pans)
        self.marks: list[dict] = []  # this image's distances and arrows, image pixels
        self.key_image = False
        self.hovered = False
        self._draft: dict | None = None  # the mark being dragged
        self._caption = _Overlay(self, 3)  # 'RMLO   prior · 2024-05-17'
        self._score = _Overlay(self, 2)  # '5-yr risk 2.3% · demo model'
        self._readout = _Overlay(self, 2)  # 'WC 2048 WW 4096 · 0.42×'
        self._corner_of: dict[str, str] = {}  # 'top'/'bottom' group → where it stands now
        self._placed: tuple | None = None  # what the labels were last placed for
        self._to_array: tuple[float, float, float, float] | None = None  # tile → array px
        self._key = QLabel("★ KEY IMAGE", self)
        self._key.setStyleSheet(KEY_STYLE)
        self._key.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._key.hide()
        self._message = QLabel(self)
        self._domain = QLabel(self)  # 'DIGITISED FILM — outside the model's domain'
        self._domain.setStyleSheet(DOMAIN_STYLE)
        self._domain.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._domain.hide()
        self._message.setStyleSheet("color: #777; background: transparent; font-size: 13px;")
        self._message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._message.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._loupe = QLabel(self)
        self._loupe.setFixedSize(LOUPE_SIZE, LOUPE_SIZE)
        self._loupe.setStyleSheet("border: 1px solid #8aa; background: black;")
        self._loupe.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._loupe.hide()
        self._marks_item = _MarksItem(self)
        self.vb.addItem(self._marks_item)
        self.setMouseTracking(True)
        self.vb.sigRangeChangedManually.connect(self._on_user_range)
        self.vb.sigRangeChanged.connect(self._check_resolution)
        self.vb.sigRangeChanged.connect(self._on_range)

    # ---------------------------------------------------------------- content

    def set_content(self, label: str, laterality: str, exam_key: str, caption: str,
                    score_text: str, image_row: dict | None, array: np.ndarray | None,
                    message: str = "") -> None:
        """Show one image (a hanging-oriented uint8 preview) or, without one, a message."""
        self.label, self.laterality, self.exam_key = label, laterality, exam_key
        if (image_row or {}).get("sop_instance_uid") != (self.image_row or {}).get("sop_instance_uid"):
            self.marks, self.key_image, self._draft = [], False, None  # the owner hands them again
        self.image_row = image_row
        self.full_res = self.full_res_requested = False
        self.preset_index = None
        self._caption.setText(caption)
        self._score.setText(score_text)
        self.domain_text = domain_label((image_row or {}).get("domain") or "")
        self._domain.setToolTip(self.domain_text)
        self._domain.setVisible(bool(self.domain_text))
        if array is None:
            self.array = None
            self.preview_shape = (0, 0)
            self.image_item.clear()
            self._message.setText(message or f"no {label}")
            self._message.show()
        else:
            self._message.hide()
            self.array = array
            self.preview_shape = array.shape
            self.image_item.setImage(array, autoLevels=False)
            self.image_item.setRect(QRectF(0, 0, array.shape[1], array.shape[0]))
        self._marks_item.changed()
        self._apply_window()
        self._place_labels()
        self.fit()

    def set_score_text(self, text: str) -> None:
        self._score.setText(text)
        self._place_labels()

    def set_show_score(self, on: bool) -> None:
        """Carry the exam's risk caption on this tile (one tile per exam of a hanging does)."""
        if self.show_score == bool(on):
            return  # called for every tile of every hanging: keep switching women cheap
        self.show_score = bool(on)
        self._place_labels()

    def set_overlays_visible(self, on: bool) -> None:
        """Show or hide the text overlays (captions, risk, readout, domain); marks stay."""
        if self.overlays_visible == bool(on):
            return
        self.overlays_visible = bool(on)
        self._place_labels()

    @property
    def sop_uid(self) -> str:
        return (self.image_row or {}).get("sop_instance_uid") or ""

    def set_full_res(self, array: np.ndarray, preset_index: int | None) -> None:
        """Replace the preview by the full-resolution render, in the same scene coordinates."""
        if self.array is None:
            return
        self.full_res = True
        self.preset_index = preset_index
        self.array = array
        rng = self.vb.viewRange()
        self.image_item.setImage(array, autoLevels=False)
        h, w = self.preview_shape
        self.image_item.setRect(QRectF(0, 0, w, h))
        self._apply_window()
        self._setting_range = True
        self.vb.setRange(xRange=rng[0], yRange=rng[1], padding=0)
        self._setting_range = False

    # ---------------------------------------------------------------- geometry

    @property
    def chest_wall_right(self) -> bool:
        """Hanging orientation puts the right breast's chest wall on its right edge."""
        return self.laterality == "R"

    def _viewport_size(self) -> tuple[float, float]:
        r = self.vb.boundingRect()
        return max(1.0, r.width()), max(1.0, r.height())

    def _anchored_range(self, scale: float, center_y: float | None = None):
        """View ranges at `scale` screen px per preview px, image against the chest-wall edge."""
        h, w = self.preview_shape
        vw, vh = self._viewport_size()
        xr, yr = vw / scale, vh / scale
        x0 = w - xr if self.chest_wall_right else 0.0
        cy = h / 2 if center_y is None else center_y
        return (x0, x0 + xr), (cy - yr / 2, cy + yr / 2)

    def fit(self) -> None:
        """Whole image in the tile, chest wall on the inner edge (back to back with its pair)."""
        self._fitted = True
        h, w = self.preview_shape
        if not h or not w:
            return
        vw, vh = self._viewport_size()
        xr, yr = self._anchored_range(min(vw / w, vh / h))
        self._set_range(xr, yr)

    def one_to_one(self) -> None:
        """One screen pixel per pixel of the original image, chest wall on the inner edge."""
        h, w = self.preview_shape
        if not h or not w or self.image_row is None:
            return
        cols = self.image_row.get("columns") or w
        self._fitted = False
        xr, yr = self._anchored_range(cols / w)
        self._set_range(xr, yr)
        self.rangeChangedByUser.emit(self)

    def reset(self) -> None:
        """Fit, default window, no invert."""
        self.inverted = False
        self.window_center, self.window_width = 127.5, 255.0
        self._apply_window()
        self.fit()
        self.windowChanged.emit(self)

    def _set_range(self, xr, yr) -> None:
        self._setting_range = True
        try:
            self.vb.setRange(xRange=xr, yRange=yr, padding=0)
        finally:
            self._setting_range = False

    def normalized_range(self) -> tuple[float, float, float, float] | None:
        """View range as fractions of the image (x0, x1, y0, y1); for synchronised tiles."""
        h, w = self.preview_shape
        if not h or not w:
            return None
        (x0, x1), (y0, y1) = self.vb.viewRange()
        return x0 / w, x1 / w, y0 / h, y1 / h

    def set_normalized_range(self, rng, mirror: bool) -> None:
        """Follow another tile; `mirror` when its breast is the other side (back to back)."""
        h, w = self.preview_shape
        if not h or not w:
            return
        x0, x1, y0, y1 = rng
        if mirror:
            x0, x1 = 1 - x1, 1 - x0
        self._fitted = False
        self._set_range((x0 * w, x1 * w), (y0 * h, y1 * h))

    def _on_user_range(self, *_):
        if self._setting_range:
            return
        self._fitted = False
        self.rangeChangedByUser.emit(self)

    def pixels_per_preview_pixel(self) -> float:
        h, w = self.preview_shape
        if not w:
            return 0.0
        (x0, x1), _ = self.vb.viewRange()
        vw, _ = self._viewport_size()
        return vw / max(1e-6, x1 - x0)

    def _transposed(self) -> bool:
        """Whether the image was hung with rows and columns swapped (from the shapes: the
        preview keeps the hung image's aspect)."""
        h, w = self.preview_shape
        row = self.image_row or {}
        rows, cols = row.get("rows") or 0, row.get("columns") or 0
        if not (h and w and rows and cols) or rows == cols:
            return False
        return abs(w / h - rows / cols) < abs(w / h - cols / rows)

    def image_scale(self) -> float:
        """Full-resolution image pixels per preview (scene) pixel."""
        h, w = self.preview_shape
        if not w:
            return 1.0
        row = self.image_row or {}
        full_w = (row.get("rows") if self._transposed() else row.get("columns")) or w
        return full_w / w

    def zoom_factor(self) -> float:
        """Screen pixels per pixel of the original image (1.0 at 1:1)."""
        return self.pixels_per_preview_pixel() / max(1e-9, self.image_scale())

    def _check_resolution(self, *_):
        if (self.array is not None and not self.full_res and not self.full_res_requested
                and self.image_row is not None and not self._fitted
                and self.pixels_per_preview_pixel() > FULL_RES_TRIGGER
                and (self.image_row.get("rows") or 0) > self.preview_shape[0]):
            self.full_res_requested = True
            self.needFullRes.emit(self)

    # ---------------------------------------------------------------- grey levels

    def window_readout(self) -> str:
        """Window centre/width in the file's stored values when a linear preset maps the shown
        grey levels to them (the preview's first preset, or the one rendered), else in percent
        of the shown grey range."""
        presets = (self.image_row or {}).get("window_presets") or []
        base = presets[self.preset_index if self.preset_index is not None else 0] if (
            presets and (self.preset_index or 0) < len(presets)) else None
        try:
            c0, w0 = float(base["center"]), float(base["width"])
        except (TypeError, KeyError, ValueError):
            base = None
        if base is None or not (w0 > 0 and math.isfinite(c0) and math.isfinite(w0)):
            return (f"WC {self.window_center / 2.55:.0f}% WW {self.window_width / 2.55:.0f}%")
        frac = self.window_center / 255.0
        if (self.image_row or {}).get("photometric") == "MONOCHROME1":
            frac = 1.0 - frac  # shown bright = low stored value
        center = c0 - w0 / 2 + frac * w0
        return f"WC {center:.0f} WW {self.window_width / 255.0 * w0:.0f}"

    def readout_text(self) -> str:
        """The live readout: window centre/width and zoom (e.g. 'WC 2100 WW 3400 · 1.8×')."""
        if self.array is None:
            return ""
        z = self.zoom_factor()
        zoom = "1:1" if abs(z - 1.0) < 0.005 else f"{z:.2g}×" if z < 10 else f"{z:.0f}×"
        return f"{self.window_readout()} · {zoom}"

    def _update_readout(self, *_):
        text = self.readout_text()
        if text != self._readout.text():
            self._readout.setText(text)
            self._place_labels()

    def _on_range(self, *_):
        """After a zoom or pan: the readout, and the labels' corners (tissue moved under them)."""
        text = self.readout_text()
        if text != self._readout.text():
            self._readout.setText(text)
        self._place_labels()

    def set_window(self, center: float, width: float) -> None:
        """Window in display units (0..255 of the rendered image)."""
        self.window_center, self.window_width = float(center), float(max(1.0, width))
        self._apply_window()
        self.windowChanged.emit(self)

    def set_inverted(self, on: bool) -> None:
        self.inverted = bool(on)
        self._apply_window()
        self.windowChanged.emit(self)

    def _lut(self) -> np.ndarray:
        ramp = np.arange(256, dtype=np.uint8)
        return ramp[::-1].copy() if self.inverted else ramp

    def _apply_window(self) -> None:
        lo = self.window_center - self.window_width / 2
        hi = self.window_center + self.window_width / 2
        if self.array is not None:
            self.image_item.setLevels((lo, hi))
            self.image_item.setLookupTable(self._lut())
        if hasattr(self, "_readout"):
            self._update_readout()

    def displayed_array(self) -> np.ndarray | None:
        """The image as shown (window and invert applied), uint8, no overlays."""
        if self.array is None:
            return None
        lo = self.window_center - self.window_width / 2
        scaled = (self.array.astype(np.float32) - lo) * (255.0 / self.window_width)
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return 255 - out if self.inverted else out

    def tile_image(self) -> QImage | None:
        """The displayed image at the current window/level, without text overlays; its marks
        (and the key-image flag) ride along as JSON text `MARKS_TEXT_KEY`, in its own pixels."""
        arr = self.displayed_array()
        if arr is None:
            return None
        img = gray_image(arr)
        if self.marks or self.key_image:
            f = arr.shape[1] / (self.preview_shape[1] * self.image_scale())  # image → array px
            marks = [dict(m, points=[(x * f, y * f) for x, y in m["points"]])
                     for m in self.marks]
            img.setText(MARKS_TEXT_KEY, json.dumps({"marks": marks, "key": self.key_image}))
        return img

    # ---------------------------------------------------------------- marks

    def set_marks(self, marks: list[dict]) -> None:
        """This image's marks (as `reads.annotations` gives them): distances and arrows are
        drawn, a 'key' mark shows the key-image badge."""
        drawn = [m for m in marks if m.get("kind") in ("distance", "arrow")
                 and len(m.get("points") or ()) >= 2]
        key = any(m.get("kind") == "key" for m in marks)
        if drawn == self.marks and key == self.key_image:
            return
        self.marks, self.key_image = drawn, key
        self._marks_item.changed()
        self._place_labels()

    def set_tool(self, tool: str) -> None:
        """'distance', 'arrow' or '' (left drag pans again)."""
        tool = tool if tool in ("distance", "arrow") else ""
        if tool == self.tool:
            return
        self.tool = tool
        self._draft = None
        self._marks_item.changed()
        if self.tool:
            self.setCursor(Qt.CursorShape.CrossCursor)
        else:
            self.unsetCursor()

    def calibration(self) -> measure.Calibration | None:
        """mm per pixel of the image as hung, read once from the file's header (None: pixels)."""
        uid = self.sop_uid
        if not uid or not (self.image_row or {}).get("path"):
            return None
        if uid not in _CALIBRATIONS:
            if len(_CALIBRATIONS) > 4096:
                _CALIBRATIONS.clear()
            _CALIBRATIONS[uid] = measure.read_calibration(self.image_row["path"])
        return measure.oriented(_CALIBRATIONS[uid], self._transposed())

    def new_mark(self, kind: str, p0, p1) -> dict:
        """A mark from p0 to p1 (image pixels); a distance carries its calibration."""
        mark = {"kind": kind, "points": [tuple(map(float, p0)), tuple(map(float, p1))],
                "spacing": None, "spacing_source": ""}
        if kind == "distance":
            cal = self.calibration()
            mark["spacing"] = (cal.row_mm, cal.col_mm) if cal else None
            mark["spacing_source"] = cal.source if cal else measure.UNCALIBRATED
        return mark

    def draw_mark(self, kind: str, p0, p1) -> dict:
        """Draw a mark as the mouse would (image pixels) and say `markDrawn`; returns it."""
        mark = self.new_mark(kind, p0, p1)
        self.markDrawn.emit(self, mark)
        return mark

    def _drag_mark(self, p0, p1, finished: bool) -> None:
        """A tool drag in scene (preview) coordinates, from the view box."""
        if self.array is None or not self.tool:
            return
        f = self.image_scale()
        a, b = (p0[0] * f, p0[1] * f), (p1[0] * f, p1[1] * f)
        if self._draft is None or self._draft["kind"] != self.tool:
            self._draft = self.new_mark(self.tool, a, b)
        self._draft["points"] = [a, b]
        if finished:
            draft, self._draft = self._draft, None
            # a click without a drag makes no mark
            if math.hypot(p1[0] - p0[0], p1[1] - p0[1]) * self.pixels_per_preview_pixel() >= 3:
                self.markDrawn.emit(self, draft)
        self._marks_item.changed()

    def drawn_marks(self) -> list[dict]:
        return self.marks + ([self._draft] if self._draft else [])

    # ---------------------------------------------------------------- overlays and magnifier

    def _place_labels(self) -> None:
        """Text in the two outer corners (away from the chest wall, where there is air): view
        and date, the domain warning and the key-image badge on top; the risk caption (on the
        tile that carries it) and the live readout at the bottom. Each fits the tile's width
        (`fit_overlay`). A group whose outer corner lies on tissue (zoomed in) moves where
        there is clearly less: the inner corner of its edge, or for the bottom group under
        the top one. Without the height for both groups the readout goes first."""
        if not hasattr(self, "_key"):
            return
        m = 6
        w, h = self.width(), self.height()
        state = (w, h, self.overlays_visible, self.show_score, self.key_image, self.domain_text,
                 self._caption.text(), self._score.text(), self._readout.text(),
                 id(self.array), self.laterality,
                 tuple(map(tuple, self.vb.viewRange())) if self.array is not None else None)
        if state == self._placed:
            return  # called after every change of any kind: most calls change nothing
        self._placed = state
        self._to_array = self._array_map()
        # at most 4/5 of the width: neighbouring tiles' captions must not read as one line;
        # in steps of 8 px, so that tiles a pixel apart in width show their text alike
        room = max(40, min(w - 2 * m, int(w * 0.8)) // 8 * 8)
        shown = self.overlays_visible
        if self.domain_text:  # a narrow tile keeps the category, the rest is elided
            self._domain.ensurePolished()
            self._domain.setText(self._domain.fontMetrics().elidedText(
                self.domain_text, Qt.TextElideMode.ElideRight, max(40, w - 2 * m - 10)))
            self._domain.adjustSize()
        self._caption.setVisible(shown and bool(self._caption.text()))
        self._domain.setVisible(shown and bool(self.domain_text))
        self._score.setVisible(shown and self.show_score and bool(self._score.text()))
        self._readout.setVisible(shown and bool(self._readout.text()))
        self._key.setVisible(self.key_image and self.array is not None)  # a mark, not text
        if self._key.isVisibleTo(self):
            self._key.adjustSize()
        for lab in (self._caption, self._score, self._readout):
            if lab.isVisibleTo(self):
                lab.fit(room)
        top = [lab for lab in (self._caption, self._domain, self._key) if lab.isVisibleTo(self)]
        # the risk caption lowest, the readout above it
        bottom = [lab for lab in (self._readout, self._score) if lab.isVisibleTo(self)]

        def height(labels) -> int:
            return sum(lab.height() + 2 for lab in labels)

        if self._readout in bottom and height(top) + height(bottom) + 2 * m > h:
            self._readout.hide()  # the least needed: the window and zoom are set, not read
            bottom.remove(self._readout)
        outer_left = self.chest_wall_right or not self.laterality
        top_left, top_h = outer_left, height(top)
        if top:
            gw, gh = max(lab.width() for lab in top), top_h - 2
            at = {"outer": (outer_left, m), "inner": (not outer_left, m)}
            top_left = at[self._corner("top", at, gw, gh)][0]
            self._stack(top, top_left, m)
        if bottom:
            gw, gh = max(lab.width() for lab in bottom), height(bottom) - 2
            at = {"outer": (outer_left, h - m - gh), "inner": (not outer_left, h - m - gh)}
            if top and m + top_h + gh <= h - m:  # room under the top group
                at["under top"] = (top_left, m + top_h)
            self._stack(bottom, at[self._corner("bottom", at, gw, gh)][0],
                        at[self._corner_of["bottom"]][1])
        self._message.setGeometry(0, 0, w, h)

    def _stack(self, labels, left: bool, y: int) -> None:
        m, w = 6, self.width()
        for lab in labels:
            lab.move(m if left else w - lab.width() - m, y)
            if isinstance(lab, _Overlay):
                lab.set_right(not left)
            y += lab.height() + 2

    def _corner(self, group: str, at: dict, gw: int, gh: int) -> str:
        """Where a group of labels (gw × gh) goes among `at` (name → (left, y), the first one
        its usual corner): elsewhere only when tissue lies under the usual one and the other
        is clearly freer; a smaller margin to stay, so that the text does not hop at every
        step of a pan."""
        m, w = 6, self.width()

        def tissue(name: str) -> float:
            left, y = at[name]
            return self.tissue_under(QRectF(m if left else w - gw - m, y, gw, gh))

        usual = next(iter(at))
        on_usual = tissue(usual)
        if on_usual <= 0.1:
            self._corner_of[group] = usual
            return usual  # the usual case: air there (the other corners are not looked at)
        now = self._corner_of.get(group, usual)
        now = now if now in at else usual
        cost = {name: on_usual if name == usual else tissue(name) for name in at}
        best = min(cost, key=cost.get)  # the first of equals: the usual corner first
        if best != now and cost[best] < cost[now] - (0.25 if now == usual else 0.05):
            now = best
        self._corner_of[group] = now
        return now

    def _array_map(self) -> tuple[float, float, float, float] | None:
        """(ax, bx, ay, by): tile pixel (x, y) → pixel (ax·x + bx, ay·y + by) of the array
        shown, as zoomed and panned now (the view is never rotated)."""
        h, w = self.preview_shape
        if self.array is None or not h or not w:
            return None
        p0 = self.vb.mapSceneToView(self.mapToScene(0, 0))
        p1 = self.vb.mapSceneToView(self.mapToScene(100, 100))
        sy, sx = self.array.shape[0] / h, self.array.shape[1] / w  # preview → array pixels
        ax, ay = (p1.x() - p0.x()) / 100 * sx, (p1.y() - p0.y()) / 100 * sy
        return ax, p0.x() * sx, ay, p0.y() * sy

    def tissue_under(self, rect: QRectF) -> float:
        """The fraction of `rect` (tile pixels) that shows tissue of the image as it is zoomed
        and panned now (0 on air, outside the image or without one)."""
        if self._placed is None or self._to_array is None:
            self._to_array = self._array_map()
        if self._to_array is None or rect.isEmpty():
            return 0.0
        ax, bx, ay, by = self._to_array
        x0, x1 = sorted((ax * rect.left() + bx, ax * rect.right() + bx))
        y0, y1 = sorted((ay * rect.top() + by, ay * rect.bottom() + by))
        area = max(1e-6, (x1 - x0) * (y1 - y0))
        rows, cols = self.array.shape[:2]
        cx0, cx1 = int(max(0, x0)), int(min(cols, math.ceil(x1)))
        cy0, cy1 = int(max(0, y0)), int(min(rows, math.ceil(y1)))
        if cx1 <= cx0 or cy1 <= cy0:
            return 0.0
        step = max(1, int(max(cx1 - cx0, cy1 - cy0) / 48))  # a few thousand samples at most
        sample = self.array[cy0:cy1:step, cx0:cx1:step]
        inside = (cx1 - cx0) * (cy1 - cy0) / area
        return float(np.count_nonzero(sample > TISSUE_LEVEL)) / sample.size * min(1.0, inside)

    def paintEvent(self, ev):
        super().paintEvent(ev)
        self.last_paint = time.perf_counter()  # `mamview bench gui` waits for this

    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        if not hasattr(self, "_loupe"):
            return  # pyqtgraph calls this from its own __init__, before ours has run
        self._place_labels()
        if self._fitted:
            self.fit()

    def set_magnifier(self, on: bool) -> None:
        self.magnifier = bool(on)
        if not on:
            self._loupe.hide()

    def mouseMoveEvent(self, ev):
        if ev.buttons() & _DRAG_BUTTONS:
            # pyqtgraph's scene drops a move that comes within 1/mouseRateLimit s (10 ms) of
            # the last one it took, even while a button is held: a drag whose moves all come
            # that fast (a quick flick, moves queued while the GUI was busy, or the one right
            # after a tool drag) never starts and ends as a click, so it does not pan, and a
            # drag that pauses leaves its line or pan short of the cursor. Drags get every move.
            limit = pg.getConfigOption("mouseRateLimit")
            pg.setConfigOption("mouseRateLimit", 0)
            try:
                super().mouseMoveEvent(ev)
            finally:
                pg.setConfigOption("mouseRateLimit", limit)
        else:  # hovering keeps the limit
            super().mouseMoveEvent(ev)
        if self.magnifier and self.array is not None:
            self._show_loupe(ev.position())

    def enterEvent(self, ev):
        self.hovered = True
        super().enterEvent(ev)

    def leaveEvent(self, ev):
        self.hovered = False
        self._loupe.hide()
        super().leaveEvent(ev)

    def mousePressEvent(self, ev):
        self.activated.emit(self)
        super().mousePressEvent(ev)

    def _show_loupe(self, pos: QPointF) -> None:
        """A glass LOUPE_ZOOM × the current zoom, from the best pixels the tile holds."""
        scene_pt = self.mapToScene(pos.toPoint())
        pt = self.vb.mapSceneToView(scene_pt)
        h, w = self.preview_shape
        arr = self.displayed_array()
        if arr is None or not (0 <= pt.x() < w and 0 <= pt.y() < h):
            self._loupe.hide()
            return
        sy, sx = arr.shape[0] / h, arr.shape[1] / w  # preview → displayed-array pixels
        span = LOUPE_SIZE / (LOUPE_ZOOM * max(1e-6, self.pixels_per_preview_pixel()))
        half = span / 2
        x0, x1 = int(max(0, (pt.x() - half) * sx)), int(min(arr.shape[1], (pt.x() + half) * sx))
        y0, y1 = int(max(0, (pt.y() - half) * sy)), int(min(arr.shape[0], (pt.y() + half) * sy))
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        img = gray_image(arr[y0:y1, x0:x1]).scaled(
            LOUPE_SIZE, LOUPE_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.FastTransformation)
        self._loupe.setPixmap(QPixmap.fromImage(img))
        p = pos.toPoint()
        self._loupe.move(min(max(0, p.x() - LOUPE_SIZE // 2), max(0, self.width() - LOUPE_SIZE)),
                         min(max(0, p.y() - LOUPE_SIZE // 2), max(0, self.height() - LOUPE_SIZE)))
        self._loupe.show()
        self._loupe.raise_()


_CALIBRATIONS: dict[str, measure.Calibration | None] = {}  # SOP UID → from its header


class _MarksItem(pg.GraphicsObject):
    """The tile's marks, over the image in scene coordinates; lines and text in screen pixels."""

    def __init__(self, tile: ImageTile):
        super().__init__()
        self._tile = tile
        self.setZValue(10)
        # display only: its large bounding box must not take the drags that pan the image
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def changed(self) -> None:
        self.prepareGeometryChange()
        self.update()

    def boundingRect(self) -> QRectF:
        h, w = self._tile.preview_shape
        return QRectF(-w, -h, 3 * w, 3 * h)  # labels may stand past the image's edge

    def paint(self, p: QPainter, *_):
        marks = self._tile.drawn_marks()
        if not marks or self._tile.array is None:
            return
        f = self._tile.image_scale()
        tr = p.transform()
        p.save()
        try:
            p.resetTransform()
            draw_marks(p, marks, lambda x, y: tr.map(QPointF(x / f, y / f)),
                       bounds=QRectF(self._tile.viewport().rect()))
        finally:
            p.restore()


def _mark_font(size: float, bold: bool = False) -> QFont:
    font = QFont()
    font.setPixelSize(max(1, round(size)))
    font.setBold(bold)
    return font


def draw_marks(p: QPainter, marks: list[dict], to_device: Callable[[float, float], QPointF],
               unit: float = 1.0, bounds: QRectF | None = None) -> None:
    """Draw distances (line, end ticks, 'mm' and where the spacing came from) and arrows (tip
    at the second point) on a painter in device coordinates; `to_device` maps image pixels,
    `unit` scales line widths and text (1 = screen pixels), a distance's label is kept inside
    `bounds` while its segment shows. Shared by the tile and the export."""
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    halo = QPen(QColor(0, 0, 0, 200), 3.2 * unit)
    for m in marks:
        pts = m.get("points") or ()
        if len(pts) < 2:
            continue
        a, b = to_device(*pts[0]), to_device(*pts[1])
        color = MARK_COLOR if m.get("kind") == "distance" else ARROW_COLOR
        dx, dy = b.x() - a.x(), b.y() - a.y()
        length = math.hypot(dx, dy) or 1.0
        ux, uy = dx / length, dy / length
        for pen in (halo, QPen(color, 1.4 * unit)):
            p.setPen(pen)
            p.drawLine(a, b)
            if m.get("kind") == "distance":
                t = 5 * unit  # ticks across both ends
                for c in (a, b):
                    p.drawLine(QPointF(c.x() - uy * t, c.y() + ux * t),
                               QPointF(c.x() + uy * t, c.y() - ux * t))
        if m.get("kind") == "arrow":
            head, half = 13 * unit, 5.5 * unit
            base = QPointF(b.x() - ux * head, b.y() - uy * head)
            tri = QPolygonF([b, QPointF(base.x() - uy * half, base.y() + ux * half),
                             QPointF(base.x() + uy * half, base.y() - ux * half)])
            p.setPen(QPen(QColor(0, 0, 0, 200), 1.0 * unit))
            p.setBrush(QBrush(color))
            p.drawPolygon(tri)
            p.setBrush(Qt.BrushStyle.NoBrush)
            continue
        if m.get("kind") != "distance":
            continue
        lines = [measure.distance_text(pts[0], pts[1], m.get("spacing")),
                 m.get("spacing_source") or ""]
        fonts = [_mark_font(12 * unit, True), _mark_font(9 * unit)]
        widths = [QFontMetricsF(fn).horizontalAdvance(t) for fn, t in zip(fonts, lines)]
        heights = [QFontMetricsF(fn).height() for fn in fonts]
        if bounds is not None and max(widths) + 10 * unit > bounds.width():
            # a narrow tile: the figure stays whole, the source is elided (its start says which)
            room = max(20.0, bounds.width() - 10 * unit)
            lines[1] = QFontMetricsF(fonts[1]).elidedText(lines[1], Qt.TextElideMode.ElideRight, room)
            widths[1] = QFontMetricsF(fonts[1]).horizontalAdvance(lines[1])
        bw, bh = max(widths) + 6 * unit, sum(heights) + 3 * unit
        # beside the segment's middle, off the line on the side of its normal that points up
        nx, ny = (uy, -ux) if -ux <= 0 else (-uy, ux)
        mid = QPointF((a.x() + b.x()) / 2 + nx * 10 * unit, (a.y() + b.y()) / 2 + ny * 10 * unit)
        x = mid.x() - (bw if nx < -0.3 else 0 if nx > 0.3 else bw / 2)
        y = mid.y() - (bh if ny < -0.3 else 0 if ny > 0.3 else bh / 2)
        if bounds is not None and bounds.intersects(QRectF(a, b).normalized().adjusted(-1, -1, 1, 1)):
            x = max(min(x, bounds.right() - bw - 2), bounds.left() + 2)
            y = min(max(y, bounds.top() + 2), bounds.bottom() - bh - 2)
        p.fillRect(QRectF(x, y, bw, bh), QColor(0, 0, 0, 170))
        yy = y + 1.5 * unit
        for fn, t, hh, col in zip(fonts, lines, heights, (color, QColor("#b9c3cc"))):
            p.setFont(fn)
            p.setPen(col)
            p.drawText(QRectF(x + 3 * unit, yy, bw, hh),
                       int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), t)
            yy += hh
