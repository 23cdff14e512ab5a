"""Render resources/icons/mamview.svg to the PNG sizes desktops and installers ask for.

Run after editing the SVG: `python packaging/make_icons.py` (needs PySide6; no display).
The PNGs are committed so a build needs no SVG renderer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    icons = Path(__file__).resolve().parent.parent / "resources" / "icons"
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (QPainter needs it)
    renderer = QSvgRenderer(str(icons / "mamview.svg"))
    if not renderer.isValid():
        print(f"cannot read {icons / 'mamview.svg'}", file=sys.stderr)
        return 1
    for size in SIZES:
        img = QImage(size, size, QImage.Format.Format_ARGB32)
        img.fill(Qt.GlobalColor.transparent)
        painter = QPainter(img)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        out = icons / f"mamview-{size}.png"
        img.save(str(out))
        print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
