"""Tumour-board figure: the current hanging, the risk trajectory and its metrics, as PNG or PDF.

What the figure says is decided by `mamview.core.reports.figure.build_export_content`; this module only
draws it. The chart is rendered from the content's data into a fresh, hidden TrajectoryChart (never
grabbed from the live widget), so a de-identified figure shows years relative to the latest exam
instead of dates. Tile images come from the window (`window_tile_images`) as
(tile key, QImage) pairs; a tile key is '<exam_key>|<view label>' (e.g. '|P1|2020-03-16|RCC'),
followed by '|<SOP UID>' where the cell hangs an additional view (a spot, an implant-displaced
view: `core.hanging.place_views`), so the figure shows what the screen hangs.
Their captions are always the content's, never the key, because keys hold the patient ID.
The tiles hang in the cells of the content's `Hanging` (`mamview.core.hanging`, the screen's own
plan): same rows and columns, each image pushed against its cell's chest-wall edge as on screen,
so the right and left breasts meet back to back; an empty cell says what the screen says.
A tile the content marks withheld (burned-in annotation in a de-identified figure) is drawn blank
with a note, whatever image the window hands in for it.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from pathlib import Path

from PySide6.QtCore import QMarginsF, QPoint, QPointF, QRectF, QSize, QSizeF, Qt
from PySide6.QtGui import (QColor, QFont, QFontMetricsF, QGuiApplication, QImage, QPageLayout,
                           QPageSize, QPainter, QPalette, QPdfWriter, QPen)
from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout,
                               QLabel, QLineEdit, QMessageBox, QPushButton, QVBoxLayout, QWidget)

from mamview.core import reference
from mamview.core.domain import domain_label
from mamview.core.reports.figure import (SCORED, WITHHELD_NOTE, ExportContent, new_pseudonym,
                                         stable_pseudonym, tile_key)
from mamview.qt.trajectory_chart import ChartPoint, TrajectoryChart

# Logical page (landscape, about A4 proportions); PNGs are drawn at SCALE × this size.
PAGE_W, PAGE_H = 1600.0, 1000.0
SCALE = 2.0
MARGIN = 24.0
_BG, _FG, _DIM, _ACCENT = QColor("#101214"), QColor("#d5dae0"), QColor("#8a929c"), QColor("#ffb454")
_DEMO_BG, _DEMO_FG = QColor("#5a3d00"), QColor("#ffd27a")
# de-identified charts need some calendar date to hang relative years on; it is never drawn
_RELATIVE_ANCHOR = datetime.date(2000, 1, 1)


def chart_points(content: ExportContent) -> list[ChartPoint]:
    """The content's exams as ChartPoints keyed 'e0', 'e1' … (no real key ever reaches Qt)."""
    out = []
    for i, p in enumerate(content.chart_points):
        when = p.exam_date if p.exam_date is not None else (
            _RELATIVE_ANCHOR + datetime.timedelta(days=round(p.years_from_latest * 365.25)))
        out.append(ChartPoint(f"e{i}", when, p.state,
                              p.risk_percent if p.state == SCORED else None,
                              p.yearly_percent, content.model_name, p.reason, p.domain))
    return out


def _chart_widget(content: ExportContent, size: QSize) -> TrajectoryChart:
    chart = TrajectoryChart(relative_years=content.relative_years)
    chart.setAttribute(Qt.WidgetAttribute.WA_DontShowOnScreen, True)
    chart.resize(size)
    chart.set_patient(chart_points(content), content.model_name, content.is_demo,
                      content.thresholds)
    key = lambda i: f"e{i}" if i is not None else None  # noqa: E731
    chart.set_current(key(content.current_index), key(content.prior_index))
    chart.show()  # hidden (WA_DontShowOnScreen) but laid out, so pyqtgraph sizes its scene
    QGuiApplication.processEvents()
    return chart


def _font(size: float, bold: bool = False) -> QFont:
    # pixel sizes in logical page units: the painter's scale (2× PNG, 300 dpi PDF) does the rest,
    # independent of the device's DPI
    f = QFont()
    f.setPixelSize(max(1, round(size)))
    f.setBold(bold)
    return f


def _text(p: QPainter, rect: QRectF, text: str, size: float, color: QColor,
          bold: bool = False, flags=Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop) -> float:
    """Draw wrapped text in rect; return the height used."""
    p.setFont(_font(size, bold))
    p.setPen(color)
    used = p.boundingRect(rect, int(flags) | int(Qt.TextFlag.TextWordWrap), text)
    p.drawText(rect, int(flags) | int(Qt.TextFlag.TextWordWrap), text)
    return used.height()


def _match_images(content: ExportContent, tile_images) -> list[QImage | None]:
    """Each content tile's image: by tile key, else by position when the counts agree."""
    by_key = {str(k): img for k, img in tile_images or []}
    out = [by_key.get(t.tile_key) for t in content.tiles]
    if not any(out) and tile_images and len(tile_images) == len(content.tiles):
        out = [img for _, img in tile_images]
    return out


def paint_figure(p: QPainter, content: ExportContent, tile_images=()) -> list[QRectF]:
    """Draw the whole figure on a painter whose logical page is PAGE_W × PAGE_H; return each
    content tile's cell in page units (where its image, or its withheld note, was drawn)."""
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    p.fillRect(QRectF(0, 0, PAGE_W, PAGE_H), _BG)
    x0, w = MARGIN, PAGE_W - 2 * MARGIN
    y = MARGIN

    # title block
    y += _text(p, QRectF(x0, y, w, 40), content.title_lines[0], 22, _FG, bold=True)
    for line in content.title_lines[1:]:
        y += _text(p, QRectF(x0, y + 2, w, 30), line, 14, _DIM) + 2
    y += 6
    if content.is_demo:
        band = QRectF(x0, y, w, 24)
        p.fillRect(band, _DEMO_BG)
        _text(p, band, "DEMO — " + content.model_label, 14, _DEMO_FG, bold=True,
              flags=Qt.AlignmentFlag.AlignCenter)
        y += 30

    footer_h = 96.0
    body = QRectF(x0, y, w, PAGE_H - MARGIN - footer_h - y)
    tiles_w = body.width() * 0.56
    cells = _paint_tiles(p, content, _match_images(content, tile_images),
                         QRectF(body.left(), body.top(), tiles_w - 12, body.height()))
    right = QRectF(body.left() + tiles_w, body.top(), body.width() - tiles_w, body.height())
    chart_h = right.height() * 0.60
    _paint_chart(p, content, QRectF(right.left(), right.top(), right.width(), chart_h))
    _paint_metrics(p, content, QRectF(right.left(), right.top() + chart_h + 8, right.width(),
                                      right.height() - chart_h - 8))

    # footer: model, disclaimer, provenance
    fy = PAGE_H - MARGIN - footer_h + 6
    p.setPen(QPen(QColor("#2a2f36"), 1))
    p.drawLine(QPointF(x0, fy - 4), QPointF(x0 + w, fy - 4))
    if content.withheld_line:
        # on the model line's row, right-aligned: the footer keeps its height
        _text(p, QRectF(x0 + w * 0.64, fy, w * 0.36, 30), "⚠ " + content.withheld_line, 13,
              _ACCENT, bold=True, flags=Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
    fy += _text(p, QRectF(x0, fy, w * (0.63 if content.withheld_line else 1), 30),
                content.model_line, 13, _FG, bold=True)
    fy += _text(p, QRectF(x0, fy + 2, w, 30), content.disclaimer, 13, _ACCENT, bold=True) + 4
    _text(p, QRectF(x0, fy, w, PAGE_H - fy), "  ·  ".join(content.provenance), 10.5, _DIM)
    return cells


def _paint_tiles(p: QPainter, content: ExportContent, images, area: QRectF) -> list[QRectF]:
    rows, cols = content.grid
    if not content.tiles:
        _text(p, area, "No images", 16, _DIM, flags=Qt.AlignmentFlag.AlignCenter)
        return []
    gap = 4.0
    cells = []
    cw, ch = (area.width() - gap * (cols - 1)) / cols, (area.height() - gap * (rows - 1)) / rows
    for i, (tile, img) in enumerate(zip(content.tiles, images)):
        r, c = (tile.cell.row, tile.cell.column) if tile.cell is not None else divmod(i, cols)
        cell = QRectF(area.left() + c * (cw + gap), area.top() + r * (ch + gap), cw, ch)
        cells.append(cell)
        p.fillRect(cell, Qt.GlobalColor.black)
        if tile.withheld:
            _paint_withheld(p, cell.adjusted(0, 0, 0, -18))
        elif img is not None and not img.isNull():
            target = _image_target(cell.adjusted(0, 0, 0, -18), img, tile)
            p.drawImage(target, img)
            _paint_marks(p, img, target, tile)
        else:
            _text(p, cell, tile.message or "image not available", 12, _DIM,
                  flags=Qt.AlignmentFlag.AlignCenter)
        if tile.domain:  # its own line at the top: the caption below may be elided
            _paint_domain(p, QRectF(cell.left(), cell.top(), cell.width(), 18), tile.domain)
        cap = QRectF(cell.left(), cell.bottom() - 18, cell.width(), 18)
        p.fillRect(cap, QColor(0, 0, 0, 190))
        highlight = content.current_index is not None and tile.exam_index == content.current_index
        p.setFont(_font(11.5))
        p.setPen(_ACCENT if highlight and content.grid[0] * content.grid[1] > 4 else _FG)
        box = cap.adjusted(4, 0, -4, 0)
        # one line: a narrow tile elides the end (the score stays in the chart and metrics)
        text = QFontMetricsF(p.font()).elidedText(tile.caption, Qt.TextElideMode.ElideRight,
                                                  box.width())
        p.drawText(box, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)
    return cells


def _paint_marks(p: QPainter, img: QImage, target: QRectF, tile) -> None:
    """The reader's distances, arrows and key-image badge that the screen's tile handed over
    with its image (in that image's pixels), drawn where the image went."""
    import json

    from mamview.qt.image_tile import MARKS_TEXT_KEY, draw_marks

    try:
        data = json.loads(img.text(MARKS_TEXT_KEY) or "{}")
    except ValueError:
        return
    sx, sy = target.width() / img.width(), target.height() / img.height()
    p.save()
    try:
        p.setClipRect(target)
        draw_marks(p, data.get("marks") or [],
                   lambda x, y: QPointF(target.left() + x * sx, target.top() + y * sy), 0.8,
                   bounds=target)
    finally:
        p.restore()
    if data.get("key"):
        p.setFont(_font(10.5, bold=True))
        label = "★ KEY IMAGE"
        w = QFontMetricsF(p.font()).horizontalAdvance(label) + 8
        # the outer corner, away from the chest wall as on screen
        right_breast = tile.cell is not None and tile.cell.chest_wall == "right"
        x = target.left() + 4 if right_breast or tile.cell is None else target.right() - w - 4
        badge = QRectF(x, target.top() + 20, w, 16)
        p.fillRect(badge, QColor("#ffd24a"))
        p.setPen(QColor("#111111"))
        p.drawText(badge, int(Qt.AlignmentFlag.AlignCenter), label)


def _paint_domain(p: QPainter, band: QRectF, domain: str) -> None:
    """The label of an image outside the model's validated domain, across a tile's top."""
    p.fillRect(band, QColor(90, 60, 0, 215))
    p.setFont(_font(11, bold=True))
    p.setPen(QColor("#ffcf66"))
    box = band.adjusted(4, 0, -4, 0)
    text = QFontMetricsF(p.font()).elidedText(domain_label(domain), Qt.TextElideMode.ElideRight,
                                              box.width())
    p.drawText(box, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)


def _image_target(area: QRectF, img: QImage, tile) -> QRectF:
    """Where a tile's image goes in its cell: fitted whole, centred vertically, and pushed
    against the chest-wall edge (right for the right breast), as the screen's tile does. The
    images come already turned for hanging, so the pair meets back to back across the gap."""
    s = min(area.width() / img.width(), area.height() / img.height())
    iw, ih = img.width() * s, img.height() * s
    side = tile.cell.chest_wall if tile.cell is not None else None
    x = {"right": area.right() - iw, "left": area.left()}.get(side, area.center().x() - iw / 2)
    return QRectF(x, area.top() + (area.height() - ih) / 2, iw, ih)


def _paint_withheld(p: QPainter, area: QRectF) -> None:
    """A withheld tile: blank, framed in the accent colour, with the note in its middle."""
    p.save()
    try:
        p.setPen(QPen(_ACCENT, 1.5, Qt.PenStyle.DashLine))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(area.adjusted(6, 6, -6, -6))
    finally:
        p.restore()
    _text(p, area.adjusted(12, 12, -12, -12), "⚠\n" + WITHHELD_NOTE, 13, _ACCENT, bold=True,
          flags=Qt.AlignmentFlag.AlignCenter)


def _paint_chart(p: QPainter, content: ExportContent, area: QRectF) -> None:
    chart = _chart_widget(content, QSize(int(area.width()), int(area.height())))
    try:
        chart.demo_banner.setVisible(False)  # the figure has its own banner across the top
        chart.layout().activate()
        QGuiApplication.processEvents()
        p.save()
        try:
            p.translate(area.topLeft())
            chart.render(p, QPoint(0, 0))
        finally:
            p.restore()
    finally:
        chart.close()
        chart.deleteLater()


def _paint_metrics(p: QPainter, content: ExportContent, area: QRectF) -> None:
    p.fillRect(area, QColor("#15181c"))
    inner = area.adjusted(10, 8, -10, -8)
    y = inner.top()
    y += _text(p, QRectF(inner.left(), y, inner.width(), 20), content.metrics_heading, 14,
               _ACCENT, bold=True) + 4
    if content.flags:
        y += _text(p, QRectF(inner.left(), y, inner.width(), 20),
                   "⚑ " + ", ".join(content.flags), 12.5, _ACCENT, bold=True) + 3
    label_w = inner.width() * 0.38
    fm = QFontMetricsF(_font(12))
    for label, value in content.metrics_rows:
        if y + fm.height() > inner.bottom():
            _text(p, QRectF(inner.left(), y, inner.width(), 16), "…", 12, _DIM)
            break
        h1 = _text(p, QRectF(inner.left(), y, label_w - 6, 60), label, 12, _DIM)
        h2 = _text(p, QRectF(inner.left() + label_w, y, inner.width() - label_w, 60), value,
                   12, _FG)
        y += max(h1, h2) + 2


def render_figure(content: ExportContent, tile_images=(), scale: float = SCALE) -> QImage:
    """The figure as an image, `scale` × the logical page (2× for high-DPI screens and print),
    with model, provenance and disclaimer as PNG text chunks (never a de-identified name/ID)."""
    img = QImage(int(PAGE_W * scale), int(PAGE_H * scale), QImage.Format.Format_RGB32)
    img.setDotsPerMeterX(int(96 * scale / 0.0254))
    img.setDotsPerMeterY(int(96 * scale / 0.0254))
    img.fill(_BG)
    p = QPainter(img)
    try:
        p.scale(scale, scale)
        paint_figure(p, content, tile_images)
    finally:
        p.end()
    for key, value in content.metadata.items():
        img.setText(key, value)
    return img


def _write_pdf(content: ExportContent, tile_images, path: str) -> None:
    pdf = QPdfWriter(path)
    pdf.setResolution(300)
    # A4 width, height from the figure's aspect, so the page is the figure with no white strip
    width_mm = 297.0
    size = QPageSize(QSizeF(width_mm, width_mm * PAGE_H / PAGE_W), QPageSize.Unit.Millimeter,
                     "mamview figure")
    pdf.setPageLayout(QPageLayout(size, QPageLayout.Orientation.Portrait, QMarginsF(0, 0, 0, 0)))
    pdf.setTitle(content.metadata.get("Title", "mamview figure"))
    pdf.setCreator(content.metadata.get("Software", "mamview"))
    if content.deidentified:
        # Qt's own XMP packet carries the creation, modification and metadata dates
        pdf.setDocumentXmpMetadata(_xmp_without_dates(content).encode("utf-8"))
    p = QPainter(pdf)
    try:
        page = pdf.pageLayout().paintRectPixels(pdf.resolution())
        s = min(page.width() / PAGE_W, page.height() / PAGE_H)
        p.scale(s, s)
        paint_figure(p, content, tile_images)
    finally:
        p.end()
    if content.deidentified:
        _blank_info_dates(path)


# the Info dictionary's dates, as QPdfWriter writes them: '/CreationDate (D:20261201164804Z)'
_PDF_DATE = re.compile(rb"/(?:CreationDate|ModDate)\s*\((?:[^()\\]|\\.)*\)")


def _blank_info_dates(path: str) -> None:
    """Overwrite the PDF Info dictionary's /CreationDate and /ModDate with spaces of the same
    length (a de-identified file carries no date of its making; same length: the xref table's
    byte offsets stay right). QPdfWriter has no switch for them."""
    with open(path, "r+b") as f:
        data = f.read()
        blanked = _PDF_DATE.sub(lambda m: b" " * len(m.group(0)), data)
        if blanked != data:
            f.seek(0)
            f.write(blanked)


def _xmp_without_dates(content: ExportContent) -> str:
    """A minimal XMP packet: title and creator tool, no dates, no document UUID."""
    from xml.sax.saxutils import escape

    title = escape(content.metadata.get("Title", "mamview figure"))
    tool = escape(content.metadata.get("Software", "mamview"))
    return ("<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>"
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
            '<rdf:Description rdf:about="">'
            f'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{title}</rdf:li></rdf:Alt></dc:title>'
            f'</rdf:Description><rdf:Description rdf:about="" xmp:CreatorTool="{tool}"/>'
            "</rdf:RDF></x:xmpmeta><?xpacket end='w'?>")


def export_figure(content, tile_images=None, path=None, fmt: str | None = None, *,
                  deidentify: bool = True, pseudonym: str | None = None) -> Path:
    """Write the figure as PNG or PDF (format from `fmt` or the suffix); atomic: the file
    appears whole or not at all. Returns the path written. Raises ValueError/OSError.

    Two call forms: `export_figure(content, tile_images, path, fmt)` with an ExportContent, or
    `export_figure(main_window, path, deidentify=…)` as the main window's File menu calls it
    (content and tiles are then read from the window).
    """
    if not isinstance(content, ExportContent):
        window, path = content, (path if path is not None else tile_images)
        return write_figure(content_for_window(window, deidentify, pseudonym),
                            window_tile_images(window), path, fmt)
    return write_figure(content, tile_images or [], path, fmt)


def write_figure(content: ExportContent, tile_images, path, fmt: str | None = None) -> Path:
    """`export_figure` for an ExportContent (see there)."""
    if path is None:
        raise ValueError("no file name given for the export")
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("png", "pdf"):
        raise ValueError(f"unsupported export format {fmt!r}: use png or pdf")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary file stays mkstemp's 0600 while the figure is written (it may name the
    # woman); it gets the usual mode only once whole, just before it takes the final name
    fd, tmp = tempfile.mkstemp(prefix=".mamview-export-", suffix="." + fmt, dir=path.parent)
    os.close(fd)
    try:
        if fmt == "png":
            # quality 60 = a lighter zlib level: ~25% faster than the default, ~15% larger
            if not render_figure(content, tile_images).save(tmp, "PNG", 60):
                raise OSError(f"could not write PNG to {path}")
        else:
            _write_pdf(content, tile_images, tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _current_umask() -> int:
    # os.umask can only be read by setting it; put it straight back
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def copy_to_clipboard(content, tile_images=(), *, deidentify: bool = True) -> QImage:
    """Put the figure on the clipboard (as an image) and return it. `content` may also be the
    main window (then the figure is de-identified unless `deidentify=False`)."""
    if not isinstance(content, ExportContent):
        window = content
        content, tile_images = (content_for_window(window, deidentify),
                                window_tile_images(window))
    img = render_figure(content, tile_images)
    QGuiApplication.clipboard().setImage(img)
    return img


_WARN = "#ffb454"


def style_checkbox(box: QCheckBox) -> None:
    """A check box that reads on the dark theme in both states: a light square with a dark
    tick (the theme's dark square with a dark rim all but vanished when unchecked)."""
    pal = box.palette()
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        pal.setColor(group, QPalette.ColorRole.Base, QColor("#e8e8e8"))  # the square
        pal.setColor(group, QPalette.ColorRole.Text, QColor("#0b3d91"))  # the tick
        pal.setColor(group, QPalette.ColorRole.Window, QColor("#5a5a5a"))  # rim (Fusion)
    box.setPalette(pal)
    box.setStyleSheet("QCheckBox { font-weight: 600; spacing: 8px; }"
                      "QCheckBox::indicator { width: 18px; height: 18px; }")


def window_pseudonym(window) -> str | None:
    """The window's woman's stable pseudonym in its library (None without a library or
    patient, or when the secret cannot be read or made: the dialog then uses a random one)."""
    lib, key = getattr(window, "lib", None), getattr(window, "patient_key", None)
    if lib is None or not key:
        return None
    try:
        return stable_pseudonym(lib, key)
    except OSError:
        return None


class ExportDialog(QDialog):
    """File → Export figure: de-identify option (with pseudonym), PNG/PDF file, or clipboard.

    `build(deidentify, pseudonym)` must return the ExportContent (the window wraps
    `report.build_export_content` with its db, patient, current/prior exam and layout).
    """

    def __init__(self, build, tile_images, parent: QWidget | None = None,
                 default_dir: str | os.PathLike | None = None, pseudonym: str | None = None):
        super().__init__(parent)
        self.setWindowTitle("Export figure")
        self._build, self._tiles = build, tile_images
        self._dir = Path(default_dir or Path.home())
        self.written: Path | None = None
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("The current hanging, the risk trajectory and its change metrics.\n"
                             "The figure names the model and states that the score is not a "
                             "diagnosis."))
        self.deidentify_box = QCheckBox("De-identify (pseudonym, age instead of birth date, "
                                        "years relative to the latest exam)")
        self.deidentify_box.setChecked(True)  # the safe default for a tumour board
        style_checkbox(self.deidentify_box)
        lay.addWidget(self.deidentify_box)
        # says what unchecking means, in words that cannot be missed on the dark theme
        self.identified_warning = QLabel("⚠ Not de-identified: the figure will show her name, "
                                         "patient ID, birth date and exam dates.")
        self.identified_warning.setStyleSheet(f"color: {_WARN}; font-weight: 600;")
        self.identified_warning.setWordWrap(True)
        self.identified_warning.setVisible(False)
        lay.addWidget(self.identified_warning)
        self.deidentify_box.toggled.connect(
            lambda on: self.identified_warning.setVisible(not on))
        # said before saving, so a blank tile in the figure is no surprise
        lay.addWidget(QLabel("Images whose header says text is burned into the pixels "
                             "(BurnedInAnnotation) are withheld from a de-identified figure."))
        row = QHBoxLayout()
        row.addWidget(QLabel("Pseudonym:"))
        # the library's pseudonym for her (one case ID for all her exports), else a random one
        self.pseudonym_edit = QLineEdit(pseudonym or new_pseudonym())
        row.addWidget(self.pseudonym_edit)
        lay.addLayout(row)
        self.deidentify_box.toggled.connect(self.pseudonym_edit.setEnabled)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.png_button = QPushButton("Save PNG…")
        self.pdf_button = QPushButton("Save PDF…")
        self.clip_button = QPushButton("Copy to clipboard")
        for b in (self.png_button, self.pdf_button, self.clip_button):
            buttons.addButton(b, QDialogButtonBox.ButtonRole.ActionRole)
        self.png_button.clicked.connect(lambda: self._save("png"))
        self.pdf_button.clicked.connect(lambda: self._save("pdf"))
        self.clip_button.clicked.connect(self._copy)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def content(self) -> ExportContent:
        """The content for the options chosen now."""
        deid = self.deidentify_box.isChecked()
        return self._build(deid, self.pseudonym_edit.text().strip() or None if deid else None)

    def save_to(self, path, fmt: str | None = None) -> Path:
        """Export to `path` without asking (used by the buttons and by tests)."""
        self.written = write_figure(self.content(), self._tiles, path, fmt)
        return self.written

    def _save(self, fmt: str) -> None:
        suggested = str(self._dir / f"mamview-figure.{fmt}")
        path, _ = QFileDialog.getSaveFileName(self, "Export figure", suggested,
                                              f"{fmt.upper()} (*.{fmt})")
        if not path:
            return
        if not path.lower().endswith("." + fmt):
            path += "." + fmt
        try:
            self.save_to(path, fmt)
        except (OSError, ValueError) as exc:
            QMessageBox.warning(self, "Export figure", f"Could not export: {exc}")
            return
        self.accept()

    def _copy(self) -> None:
        copy_to_clipboard(self.content(), self._tiles)
        self.accept()


# ---------------------------------------------------------------------------- the main window


def content_for_window(window, deidentify: bool, pseudonym: str | None = None) -> ExportContent:
    """The ExportContent of what the main window shows now: its patient, current/prior exam,
    layout, model, thresholds and the metrics panel's report. Raises ValueError without a
    patient."""
    from mamview.core.reports.figure import build_export_content

    patient_key = getattr(window, "patient_key", None)
    if not patient_key:
        raise ValueError("select a patient before exporting a figure")
    if deidentify and pseudonym is None:
        pseudonym = window_pseudonym(window)  # her PNG, PDF and clipboard share one case ID
    grid = window.grid
    layout = grid.plan()  # the screen's own hanging, cell for cell
    settings = getattr(window, "settings", None)
    thresholds = tuple(getattr(settings, "thresholds_percent", reference.DEFAULT_THRESHOLDS_PERCENT))
    metrics = getattr(window, "metrics", None)
    return build_export_content(
        window.db, patient_key, grid.current_key, grid.prior_key, layout, deidentify,
        model_id=getattr(window, "model_id", None), thresholds=thresholds, pseudonym=pseudonym,
        report=getattr(metrics, "report", None), lib=getattr(window, "lib", None))


def window_tile_images(window) -> list[tuple[str, QImage]]:
    """The hanging's displayed images keyed '<exam_key>|<view label>', with '|<SOP UID>' for a
    cell that hangs an additional view (see the module doc): what the screen shows, so an
    additional view or the implant hanging is exported as hung."""
    grid = window.grid
    tiles = list(getattr(grid, "tiles", []))
    plan = grid.plan() if hasattr(grid, "plan") else None
    cells = list(plan.cells) if plan is not None and len(plan.cells) == len(tiles) else []
    out = []
    for i, tile in enumerate(tiles):
        img = tile.tile_image()
        if img is None or img.isNull():
            continue
        cell = cells[i] if cells else None
        # the UID only when the tile shows the cell's additional view (not in flicker)
        uid = cell.image_uid if cell is not None and cell.image_uid and \
            cell.image_uid == tile.sop_uid else None
        out.append((tile_key(tile.exam_key, tile.label, uid), img))
    return out


def export_dialog(window) -> Path | None:
    """File → Export figure for the main window: the dialog, modal. Returns the file written."""
    if not getattr(window, "patient_key", None):
        QMessageBox.information(window, "Export figure", "Select a patient first.")
        return None
    dlg = ExportDialog(lambda deid, pseudonym: content_for_window(window, deid, pseudonym),
                       window_tile_images(window), window,
                       default_dir=Path.home(), pseudonym=window_pseudonym(window))
    dlg.exec()
    return dlg.written
