"""Images outside the model's validated domain carry a visible label (issue 13): on the tile,
in the thumbnail strip, in the chart's tooltip and in the exported figure. A real library (a
digitised-film exam beside a digital one, previews made), a score stored as the service stores
one computed on request, real widgets offscreen."""

from __future__ import annotations

import os

import pytest
from PySide6.QtGui import QColor, QImage

from mamview.core.cache import reads, writes
from mamview.core.cache.db import connect
from mamview.core.domain import ScoreState
from mamview.core.ingest import drain, run_import
from mamview.core.paths import Library
from mamview.core.reports import figure
from mamview.core.services.inference import score_row, exam_inputs, inputs_domain, score_key
from mamview.core.worklist import patient_exams
from tests.core.test_ingest import write_exam
from tests.scoring import demo_ref
from tests.study_objects import write_digitised_film

LABEL = "DIGITISED FILM — outside the model's domain"


@pytest.fixture
def film_library(tmp_path):
    from pydicom.uid import generate_uid

    study = generate_uid()
    for lat, view in (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")):
        write_digitised_film(tmp_path / "in" / "film" / f"{lat}{view}.dcm", patient_id="F1",
                             study_date="20100301", study_uid=study, laterality=lat, view=view)
    write_exam(tmp_path / "in" / "digital", pid="F1", date="20140301")
    lib = Library(tmp_path / "lib")
    drain(run_import(lib, [tmp_path / "in"]))
    db = connect(lib.database)
    film, digital = [r[0] for r in db.execute("SELECT exam_key FROM exams ORDER BY exam_date")]
    # the film exam scored on request, stored as the service stores it
    ref = demo_ref()
    rows = exam_inputs(db, film, include_out_of_domain=True)
    writes.save_scores(db, [score_row(ref, score_key(ref, rows), film, "cpu",
                                       [r["sop_instance_uid"] for r in rows], "ok", "",
                                       [0.01, 0.02, 0.03, 0.04, 0.05], inputs_domain(rows))])
    yield lib, db, film, digital
    db.close()


def test_tile_and_strip_say_the_image_is_outside_the_domain(qtbot, film_library, tmp_path):
    from mamview.qt.exam_grid import ExamGrid

    lib, db, film, digital = film_library
    exams = patient_exams(db, reads.patient_of_exam(db, film), demo_ref())
    assert [(e.score.state, e.score.domain) for e in exams] == [
        (ScoreState.CURRENT, "digitised film"), (ScoreState.PENDING, "")]
    grid = ExamGrid(lambda fn, done: done(fn(), None))
    qtbot.addWidget(grid)
    grid.resize(1000, 700)
    grid.show()
    qtbot.waitExposed(grid)
    grid.set_patient(lib, db, exams, "demo model", current_key=digital)
    grid.set_prior(film)
    grid.set_layout("8up")  # the film exam beside the digital one
    qtbot.wait(100)
    film_tiles = [t for t in grid.tiles if t.exam_key == film]
    digital_tiles = [t for t in grid.tiles if t.exam_key == digital]
    assert film_tiles and digital_tiles
    assert all(t.array is not None for t in grid.tiles)  # the film's pixels are viewable
    for t in film_tiles:
        assert t.domain_text == LABEL and t._domain.isVisibleTo(t)
        assert t._domain.geometry().intersects(t.rect())  # placed inside the tile
        assert "outside domain" in t._score.text()
        assert t._domain.text().startswith("DIGITISED FILM")  # elided to the tile, if at all
    assert all(t.domain_text == "" and not t._domain.isVisibleTo(t) for t in digital_tiles)
    strip = grid._thumbs[film]
    assert "⚠ DIGITISED FILM" in strip.text() and LABEL in strip.toolTip()
    assert "⚠" not in grid._thumbs[digital].text()
    out = os.environ.get("MAMVIEW_TEST_SHOTS") or str(tmp_path)
    assert grid.grab().save(os.path.join(out, "domain_grid.png"))


def test_chart_tooltip_names_the_domain():
    import datetime

    from mamview.qt.trajectory_chart import SCORED, ChartPoint, tooltip_text

    p = ChartPoint("k", datetime.date(2010, 3, 1), SCORED, 5.0, (1, 2, 3, 4, 5), "demo",
                   domain="digitised film")
    assert "Outside the model's validated domain (digitised film): scored on request" in (
        tooltip_text(p))
    assert "Outside" not in tooltip_text(ChartPoint("k", datetime.date(2010, 3, 1), SCORED, 5.0))


def test_export_captions_and_draws_the_label(qtbot, film_library, tmp_path):
    from mamview.qt import export

    lib, db, film, digital = film_library
    pk = reads.patient_of_exam(db, film)
    c = figure.build_export_content(db, pk, digital, film, "8up", False, lib=lib)
    film_tiles = [t for t in c.tiles if t.tile_key.startswith(film + "|")]
    assert film_tiles and all(LABEL in t.caption and t.domain == "digitised film"
                              for t in film_tiles)
    assert all(t.domain == "" for t in c.tiles if t.tile_key.startswith(digital + "|"))
    assert any("outside the model's validated domain (digitised film)" in line
               for line in c.provenance)
    points = export.chart_points(c)
    assert [p.domain for p in points] == ["digitised film", ""]
    grey = QImage(208, 256, QImage.Format.Format_RGB32)
    grey.fill(QColor("#404040"))
    img = export.render_figure(c, [(t.tile_key, grey) for t in c.tiles], scale=1.0)
    out = os.environ.get("MAMVIEW_TEST_SHOTS") or str(tmp_path)
    assert img.save(os.path.join(out, "domain_export.png"))
    band = QColor(90, 60, 0)
    # the label's band across the top of the film tiles (dark amber), none on the others
    amber = sum(1 for x in range(0, img.width(), 4) for y in range(0, img.height() // 2, 2)
                if abs(img.pixelColor(x, y).red() - 90) < 12
                and abs(img.pixelColor(x, y).green() - 60) < 12
                and img.pixelColor(x, y).blue() < 20)
    assert amber > 200, band
