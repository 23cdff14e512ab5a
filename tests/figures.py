"""Helpers for tests that read an exported figure's layout."""

from __future__ import annotations

from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage, QPainter

from mamview.qt import export


def figure_cells(content, tiles) -> list[QRectF]:
    """The tile cells `export.paint_figure` lays out for `content`, painted on a scratch page."""
    scratch = QImage(int(export.PAGE_W), int(export.PAGE_H), QImage.Format.Format_RGB32)
    p = QPainter(scratch)
    try:
        return export.paint_figure(p, content, tiles)
    finally:
        p.end()
