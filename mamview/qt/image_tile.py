"""One mammogram on screen: a pyqtgraph ViewBox with the image, chest wall justified to the
inner edge, unobtrusive labels in the outer top corner, and the reading tools (zoom/pan,
window/level by right-drag, invert, magnifier, fit, 1:1).

The tile holds the image already in hanging orientation (the cache's preview, later the
full-resolution render); it never decodes anything itself: it asks its owner through
`needFullRes` and the owner runs the decode on a worker.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QLabel

from mamview.core.domain import domain_label

pg.setConfigOptions(imageAxisOrder="row-major", antialias=False)

BACKGROUND = "#000000"
# an image outside the model's validated domain: readable on any image, never mistaken for a score
DOMAIN_STYLE = ("color: #ffcf66; background: rgba(90, 60, 0, 200); font-size: 11px; "
                "font-weight: bold; padding: 1px 4px; border-radius: 2px;")
LABEL_STYLE = ("color: rgba(200, 200, 200, 190); background: transparent; "
               "font-size: 11px; font-family: sans-serif;")
LOUPE_SIZE = 240
LOUPE_ZOOM = 3.0
# zoomed in past this many screen pixels per preview pixel, the preview is too coarse
FULL_RES_TRIGGER = 1.25


def gray_image(array: np.ndarray) -> QImage:
    """uint8 (rows, cols) → a QImage that owns its copy of the pixels."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = a.shape
    return QImage(a.data, w, h, a.strides[0], QImage.Format.Format_Grayscale8).copy()


class _ReadingViewBox(pg.ViewBox):
    """Left drag pans, wheel zooms (pyqtgraph defaults); right drag is window/level."""

    def __init__(self, tile: "ImageTile"):
        super().__init__(lockAspect=True, invertY=True, enableMenu=False)
        self._tile = tile
        self._wl_start: tuple[float, float] | None = None

    def mouseDragEvent(self, ev, axis=None):
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
        self._caption = QLabel(self)
        self._score = QLabel(self)
        self._message = QLabel(self)
        self._domain = QLabel(self)  # 'DIGITISED FILM — outside the model's domain'
        self._domain.setStyleSheet(DOMAIN_STYLE)
        self._domain.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._domain.hide()
        for lab in (self._caption, self._score):
            lab.setStyleSheet(LABEL_STYLE)
            lab.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._message.setStyleSheet("color: #777; background: transparent; font-size: 13px;")
        self._message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._message.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._loupe = QLabel(self)
        self._loupe.setFixedSize(LOUPE_SIZE, LOUPE_SIZE)
        self._loupe.setStyleSheet("border: 1px solid #8aa; background: black;")
        self._loupe.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self._loupe.hide()
        self.setMouseTracking(True)
        self.vb.sigRangeChangedManually.connect(self._on_user_range)
        self.vb.sigRangeChanged.connect(self._check_resolution)

    # ---------------------------------------------------------------- content

    def set_content(self, label: str, laterality: str, exam_key: str, caption: str,
                    score_text: str, image_row: dict | None, array: np.ndarray | None,
                    message: str = "") -> None:
        """Show one image (a hanging-oriented uint8 preview) or, without one, a message."""
        self.label, self.laterality, self.exam_key = label, laterality, exam_key
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
        self._apply_window()
        self._place_labels()
        self.fit()

    def set_score_text(self, text: str) -> None:
        self._score.setText(text)
        self._place_labels()

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

    def _check_resolution(self, *_):
        if (self.array is not None and not self.full_res and not self.full_res_requested
                and self.image_row is not None and not self._fitted
                and self.pixels_per_preview_pixel() > FULL_RES_TRIGGER
                and (self.image_row.get("rows") or 0) > self.preview_shape[0]):
            self.full_res_requested = True
            self.needFullRes.emit(self)

    # ---------------------------------------------------------------- grey levels

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

    def displayed_array(self) -> np.ndarray | None:
        """The image as shown (window and invert applied), uint8, no overlays."""
        if self.array is None:
            return None
        lo = self.window_center - self.window_width / 2
        scaled = (self.array.astype(np.float32) - lo) * (255.0 / self.window_width)
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return 255 - out if self.inverted else out

    def tile_image(self) -> QImage | None:
        """The displayed image at the current window/level, without text overlays."""
        arr = self.displayed_array()
        return None if arr is None else gray_image(arr)

    # ---------------------------------------------------------------- overlays and magnifier

    def _place_labels(self) -> None:
        """Labels in the outer corners (away from the chest wall, where there is air)."""
        m = 6
        w = self.width()
        if self.domain_text:  # a narrow tile keeps the category, the rest is elided
            self._domain.ensurePolished()
            self._domain.setText(self._domain.fontMetrics().elidedText(
                self.domain_text, Qt.TextElideMode.ElideRight, max(40, w - 2 * m - 10)))
        for lab in (self._caption, self._score, self._domain):
            lab.adjustSize()
        outer_left = self.chest_wall_right or not self.laterality
        x_cap = m if outer_left else w - self._caption.width() - m
        x_score = m if outer_left else w - self._score.width() - m
        self._caption.move(x_cap, m)
        x_domain = m if outer_left else w - self._domain.width() - m
        self._domain.move(x_domain, m + self._caption.height() + 2)
        self._score.move(x_score, self.height() - self._score.height() - m)
        self._message.setGeometry(0, 0, w, self.height())

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
        super().mouseMoveEvent(ev)
        if self.magnifier and self.array is not None:
            self._show_loupe(ev.position())

    def leaveEvent(self, ev):
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
