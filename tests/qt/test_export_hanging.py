"""The exported figure hangs exactly as the screen: the real reading window's hanging plan is
the figure's (every layout, with no prior and with a missing view), each cell's image is where
the screen has one, and in the 4-up the right and left breasts meet back to back — read from
the exported PNG's pixels."""

import numpy as np
import pytest
from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage

from mamview.core.reports import figure as report
from mamview.core.ingest import drain, run_import
from mamview.core.paths import Library
from mamview.qt import export
from tests.factories import write_mammogram
from tests.figures import figure_cells

DATES = ("20200110", "20210112", "20220114")
VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
TISSUE = 40  # gray level: the synthetic breast is ≥ ~85, air ~5, the cell black
SLACK = 4  # PNG pixels allowed between an image's chest wall and its cell edge (antialiasing)


@pytest.fixture(scope="module")
def hanging_library(tmp_path_factory) -> Library:
    """One woman, three yearly exams (320 × 256 images); the middle one has no LMLO."""
    base = tmp_path_factory.mktemp("hanging")
    for d in DATES:
        for side, view in VIEWS:
            if d == DATES[1] and side + view == "LMLO":
                continue
            write_mammogram(base / "files" / d / f"{side}{view}.dcm", patient_id="P7",
                            patient_name="HANG^HEDDA", study_date=d, laterality=side, view=view,
                            shape=(320, 256))
    lib = Library(base / "home")
    drain(run_import(lib, [base / "files"]))
    return lib


@pytest.fixture
def window(hanging_library, open_window, qtbot):
    return _first_woman_drawn(open_window(hanging_library), qtbot)


def _first_woman_drawn(win, qtbot):
    """The window with its first woman selected and her four tiles drawn."""
    key = next(iter(win.patient_list.rows))
    win.patient_list.select(key)
    qtbot.waitUntil(lambda: win.patient_key == key and len(win.grid.tiles) == 4, timeout=5000)
    _wait_drawn(win, qtbot)
    return win


def _wait_drawn(win, qtbot):
    """Every screen tile that has an image row shows its pixels."""
    want = sum(1 for t in win.grid.tiles if t.image_row is not None)
    qtbot.waitUntil(lambda: len(export.window_tile_images(win)) == want, timeout=5000)


def _gray(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_Grayscale8)
    rows = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return rows[:, :img.width()].copy()


def _block(gray: np.ndarray, cell: QRectF, scale: float) -> tuple[np.ndarray, int]:
    """The PNG pixels of `cell` above its caption strip, and the block's first column."""
    x0, x1 = int(cell.left() * scale), int(cell.right() * scale)
    y0, y1 = int(cell.top() * scale), int((cell.bottom() - 20) * scale)
    return gray[y0:y1, x0:x1], x0


def _tissue_columns(gray: np.ndarray, cell: QRectF, scale: float) -> np.ndarray:
    """PNG columns (absolute) inside `cell` that hold breast tissue (a tall run of it)."""
    block, x0 = _block(gray, cell, scale)
    return x0 + np.flatnonzero((block > TISSUE).sum(axis=0) > 0.2 * block.shape[0])


def _shows_image(gray: np.ndarray, cell: QRectF) -> bool:
    """A breast fills a good part of the cell; a one-line message only a sliver of it."""
    block, _ = _block(gray, cell, 1.0)
    return (block > TISSUE).mean() > 0.05


def _layouts(win):
    """Each layout the screen offers, as the reader gets there (grid methods the menu calls)."""
    g, keys = win.grid, [e.exam_key for e in win.grid.exams]
    yield "4up"
    g.set_layout("8up")
    yield "8up"
    g.set_current(keys[1], prior=None)  # the middle exam (no LMLO), no prior
    yield "8up, no prior, missing LMLO"
    g.set_current(keys[0])  # the oldest: there is no exam before it
    yield "8up, oldest"
    g.set_current(keys[2])
    g.set_layout("timeline")
    yield "timeline LMLO"
    g.set_timeline_view("RCC")
    yield "timeline RCC"
    g.set_layout("4up")
    g.set_current(keys[1])
    yield "4up, missing LMLO"


def test_every_layout_on_screen_exports_as_shown(window, qtbot, tmp_path):
    win, seen = window, []
    db = win.db
    for name in _layouts(win):
        _wait_drawn(win, qtbot)
        plan = win.grid.plan()
        content = export.content_for_window(win, True)
        # one plan: the window's, and the same one a spec string gives (CLI, other callers)
        assert content.hanging == plan, name
        by_spec = report.build_export_content(db, win.patient_key, plan.current_key,
                                              plan.prior_key, plan.spec, True)
        assert by_spec.hanging == plan, name
        assert [t.cell for t in content.tiles] == list(plan.cells), name
        # the screen puts a tile in each cell, chest wall on the cell's edge
        assert len(win.grid.tiles) == len(plan.cells), name
        for tile, cell in zip(win.grid.tiles, plan.cells):
            pos = win.grid._grid.getItemPosition(win.grid._grid.indexOf(tile))[:2]
            assert pos == (cell.row, cell.column), name
            assert tile.label == cell.view and tile.chest_wall_right == (cell.chest_wall == "right")
        # an image where the screen shows one, and the screen's words where it shows none
        tiles = export.window_tile_images(win)
        img = export.render_figure(content, tiles, scale=1.0)
        gray = _gray(img)
        for tile, cap, cell in zip(win.grid.tiles, content.tiles, figure_cells(content, tiles)):
            shown = tile.array is not None
            assert _shows_image(gray, cell) == shown, (name, cell)
            if not shown:
                assert cap.message and cap.message == tile._message.text(), name
        seen.append((name, plan.rows, plan.columns, sum(c.exam_key is None for c in plan.cells)))
        img.save(str(tmp_path / f"{name.replace(' ', '_').replace(',', '')}.png"))
    assert seen == [("4up", 2, 2, 0), ("8up", 2, 4, 0), ("8up, no prior, missing LMLO", 2, 4, 4),
                    ("8up, oldest", 2, 4, 4), ("timeline LMLO", 1, 3, 0),
                    ("timeline RCC", 1, 3, 0), ("4up, missing LMLO", 2, 2, 0)]


def test_exported_four_up_puts_the_chest_walls_back_to_back(window, tmp_path):
    win = window
    out = win.export_figure(str(tmp_path / "four-up.png"), deidentify=True)
    content = export.content_for_window(win, True)
    tiles = export.window_tile_images(win)
    cells = dict(zip([t.cell.view for t in content.tiles], figure_cells(content, tiles)))
    gray, s = _gray(QImage(str(out))), export.SCALE
    for right, left in (("RCC", "LCC"), ("RMLO", "LMLO")):
        r_cols = _tissue_columns(gray, cells[right], s)
        l_cols = _tissue_columns(gray, cells[left], s)
        # the right breast's tissue reaches its cell's right edge, the left's its left edge …
        assert cells[right].right() * s - r_cols.max() <= SLACK, right
        assert l_cols.min() - cells[left].left() * s <= SLACK, left
        # … and both lie away from the outer edges (the image is narrower than its cell)
        assert r_cols.min() - cells[right].left() * s > 50 and \
            cells[left].right() * s - l_cols.max() > 50
        # back to back: only the cells' gap between the two chest walls
        gap = (cells[left].left() - cells[right].right()) * s
        assert 0 < l_cols.min() - r_cols.max() <= gap + 2 * SLACK


def test_screen_gives_every_column_of_a_long_timeline_the_same_width(qtbot):
    """Nine exams hang in five columns: the fifth must not be squeezed (the stretch used to be
    set for four columns only), and a 4-up afterwards spreads over two columns again."""
    import datetime

    from mamview.core.worklist import ExamInfo
    from mamview.qt.exam_grid import ExamGrid

    exams = [ExamInfo(f"k{i}", datetime.date(2010 + i, 1, 1), [], False, "no images")
             for i in range(9)]
    grid = ExamGrid(lambda fn, done: done(fn(), None))
    qtbot.addWidget(grid)
    grid.resize(1500, 700)
    grid.show()
    qtbot.waitExposed(grid)
    grid.set_patient(None, None, exams, "demo")

    def spread_evenly(columns: int) -> bool:
        """The first row's tiles side by side, equally wide, filling the grid's width."""
        row = [t for t, c in zip(grid.tiles, grid.plan().cells) if c.row == 0]
        xs, widths = [t.x() for t in row], [t.width() for t in row]
        return (len(row) == columns and xs == sorted(set(xs))
                and row[-1].geometry().right() < grid.grid_host.width()
                and max(widths) - min(widths) <= 1
                and sum(widths) >= grid.grid_host.width() - 3 * columns)

    for layout, columns in (("8up", 4), ("timeline", 5), ("4up", 2)):
        grid.set_layout(layout)
        assert grid.plan().columns == columns
        qtbot.waitUntil(lambda: spread_evenly(columns), timeout=3000)
    assert grid.tiles[3]._message.text() == "no LMLO in this exam"


# ---------------------------------------------------------------- additional views, as hung

EXTRA_DATES = ("20200110", "20210112")
EXTRA_NAME, EXTRA_ID = "QUIXOTERA^ZELDAMINA", "PX7781234"
SPOT_SHAPE, XCCL_SHAPE = (200, 200), (240, 150)


@pytest.fixture(scope="module")
def extras_library(tmp_path_factory) -> Library:
    """One woman, two yearly exams; the newer one also has an RCC spot compression and an LXCCL
    whose header says text is burned into its pixels."""
    base = tmp_path_factory.mktemp("extras")
    for d in EXTRA_DATES:
        for side, view in VIEWS:
            write_mammogram(base / "files" / d / f"{side}{view}.dcm", patient_id=EXTRA_ID,
                            patient_name=EXTRA_NAME, study_date=d, laterality=side, view=view,
                            shape=(320, 256))
    newest = base / "files" / EXTRA_DATES[-1]
    write_mammogram(newest / "RCC_spot.dcm", patient_id=EXTRA_ID, patient_name=EXTRA_NAME,
                    study_date=EXTRA_DATES[-1], laterality="R", view="CC",
                    modifiers=("spot compression",), shape=SPOT_SHAPE)
    write_mammogram(newest / "LXCCL.dcm", patient_id=EXTRA_ID, patient_name=EXTRA_NAME,
                    study_date=EXTRA_DATES[-1], laterality="L", view="XCCL", shape=XCCL_SHAPE,
                    extra={"BurnedInAnnotation": "YES"})
    lib = Library(base / "home")
    drain(run_import(lib, [base / "files"]))
    return lib


@pytest.fixture
def extras_window(extras_library, open_window, qtbot):
    return _first_woman_drawn(open_window(extras_library), qtbot)


def _extra(grid, text: str):
    return next(e for e in grid.extras() if text in e.text)


def test_an_additional_view_hung_on_screen_is_the_one_exported(extras_window, qtbot, tmp_path):
    win, grid = extras_window, extras_window.grid
    spot = _extra(grid, "spot")
    standard_rcc = grid.tiles[0].sop_uid
    grid.hang_extra(spot.sop_instance_uid)
    _wait_drawn(win, qtbot)
    assert grid.tiles[0].sop_uid == spot.sop_instance_uid
    plan = grid.plan()
    assert plan.cells[0].image_uid == spot.sop_instance_uid
    content = export.content_for_window(win, True)
    assert content.hanging == plan
    rcc = content.tiles[0]
    assert rcc.caption.startswith("RCC spot compression · additional view")
    tiles = export.window_tile_images(win)
    matched = export._match_images(content, tiles)
    assert all(img is not None for img in matched)
    # the figure's RCC is the screen's spot image, not the standard RCC
    assert matched[0].size() == grid.tiles[0].tile_image().size()
    assert (matched[0].height(), matched[0].width()) == grid.tiles[0].array.shape
    assert grid.tiles[0].array.shape[0] == grid.tiles[0].array.shape[1]  # the square spot
    out = win.export_figure(str(tmp_path / "spot.png"), deidentify=True)
    gray, s = _gray(QImage(str(out))), export.SCALE
    cell = figure_cells(content, tiles)[0]
    cols = _tissue_columns(gray, cell, s)
    block, _ = _block(gray, cell, s)
    rows = np.flatnonzero((block > TISSUE).sum(axis=1) > 0)
    # drawn square (the spot's shape), against the chest wall as on screen
    assert abs((cols.max() - cols.min()) - (rows.max() - rows.min())) < 0.2 * len(rows)
    assert cell.right() * s - cols.max() <= SLACK
    # back to the standard view: the export follows
    grid.hang_extra(spot.sop_instance_uid)
    _wait_drawn(win, qtbot)
    assert grid.tiles[0].sop_uid == standard_rcc
    back = export.content_for_window(win, True)
    assert back.tiles[0].cell.image_uid is None and back.tiles[0].caption.startswith("RCC · ")


def test_a_burned_in_additional_view_is_withheld_from_a_deidentified_figure(extras_window,
                                                                           qtbot):
    """The LXCCL hangs in the LCC's cell: its own header (burned-in text) decides, not the
    standard LCC's."""
    win, grid = extras_window, extras_window.grid
    xccl = _extra(grid, "LXCCL")
    grid.hang_extra(xccl.sop_instance_uid)
    _wait_drawn(win, qtbot)
    assert grid.tiles[1].sop_uid == xccl.sop_instance_uid
    deid = export.content_for_window(win, True)
    assert [t.withheld for t in deid.tiles] == [False, True, False, False]
    named = export.content_for_window(win, False)
    assert not any(t.withheld for t in named.tiles)
    assert named.tiles[1].caption.startswith("LXCCL · additional view")
    grid.hang_extra(None)
    _wait_drawn(win, qtbot)
    assert not any(t.withheld for t in export.content_for_window(win, True).tiles)


def test_a_plan_with_another_exams_image_is_refused(extras_window):
    from dataclasses import replace

    win = extras_window
    plan = win.grid.plan()
    older = win.grid.exams[0].images[0]["sop_instance_uid"]  # not the current exam's
    bad = replace(plan, cells=(replace(plan.cells[0], image_uid=older, shows="RCC"),)
                  + plan.cells[1:])
    with pytest.raises(ValueError):
        report.build_export_content(win.db, win.patient_key, plan.current_key, plan.prior_key,
                                    bad, True)


# ---------------------------------------------------------------- de-identified files


def _forbidden(win) -> list[str]:
    """What a de-identified file must not hold anywhere: exam dates (ISO and DICOM), today's
    date (the export's), the name and its parts, the PatientID, the accession numbers."""
    import datetime

    today = datetime.datetime.now(datetime.timezone.utc).date()
    dates = [today.isoformat(), today.strftime("%Y%m%d"), "D:" + today.strftime("%Y%m%d")]
    for d in EXTRA_DATES:
        dates += [d, f"{d[:4]}-{d[4:6]}-{d[6:]}"]
    accessions = ["A" + d for d in EXTRA_DATES]
    return dates + accessions + [EXTRA_ID, "QUIXOTERA", "ZELDAMINA"]


def _pdf_objects_intact(data: bytes) -> None:
    """Every offset of the xref table still points at its object (the dates were blanked in
    place, not cut out)."""
    import re

    start = int(re.findall(rb"startxref\s+(\d+)", data)[-1])
    table = data[start:].split(b"trailer")[0].split(b"\n")
    first, count = map(int, table[1].split()[:2])
    entries = [e for e in table[2:2 + count]]
    for i, entry in enumerate(entries, start=first):
        offset, _gen, kind = entry.split()[:3]
        if kind == b"n":
            assert data[int(offset):].startswith(f"{i} 0 obj".encode()), i


def test_deidentified_pdf_and_png_hold_no_date_or_identifier(extras_window, tmp_path):
    from tests.qt.test_export import pdf_streams_text, png_non_pixel_bytes, png_text_chunks

    win = extras_window
    forbidden = _forbidden(win)
    pdf = win.export_figure(str(tmp_path / "board.pdf"), deidentify=True).read_bytes()
    assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-32:]
    text = pdf_streams_text(pdf)
    for s in forbidden:
        assert s.lower() not in text.lower(), s
    assert "/CreationDate" not in text and "/ModDate" not in text
    assert "CreateDate" not in text and "ModifyDate" not in text and "MetadataDate" not in text
    assert "Case " in text  # the title and XMP name the pseudonym
    _pdf_objects_intact(pdf)
    png = win.export_figure(str(tmp_path / "board.png"), deidentify=True).read_bytes()
    chunks = png_text_chunks(png)
    meta = "\n".join(f"{k}={v}" for k, v in chunks.items()) + png_non_pixel_bytes(png)
    for s in forbidden:
        assert s.lower() not in meta.lower(), s
    assert chunks["Deidentified"] == "yes"
    # an identified PDF keeps the dates Qt writes (only de-identified files lose them)
    named = pdf_streams_text(win.export_figure(str(tmp_path / "named.pdf"),
                                               deidentify=False).read_bytes())
    assert "/CreationDate" in named
