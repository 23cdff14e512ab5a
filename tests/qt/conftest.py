"""Fixtures for the reading-window tests: small real libraries built with the real import."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mamview.core.ingest import drain, run_import
from mamview.core.paths import Library
from tests.factories import write_mammogram, write_pdf

VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
# RCC stored mirrored: rows run P→A flipped, columns medial→lateral; the display must undo it
MIRRORED = {("R", "CC"): ("A", "R"), ("L", "CC"): ("P", "L"), ("R", "MLO"): ("A", "HL"),
            ("L", "MLO"): ("P", "HR")}


def write_reader_files(folder: Path) -> Path:
    """Two women: P1 with three yearly exams (the newest stored mirrored, with two window
    presets, its RCC large enough to need a full-resolution decode) and P2 with one exam."""
    dates = ("20210310", "20220315", "20230320")
    for k, d in enumerate(dates):
        newest = k == len(dates) - 1
        for side, view in VIEWS:
            big = newest and (side, view) == ("R", "CC")
            write_mammogram(
                folder / "P1" / d / f"{side}{view}.dcm", patient_id="P1",
                patient_name="TESTER^ANNA", study_date=d, laterality=side, view=view,
                orientation=MIRRORED[(side, view)] if newest else "standard",
                shape=(2304, 1872) if big else (256, 208),
                window=[(2048.0, 4096.0), (1200.0, 1600.0)] if newest else (2048.0, 4096.0),
                )
    for side, view in VIEWS:
        write_mammogram(folder / "P2" / "20220101" / f"{side}{view}.dcm", patient_id="P2",
                        patient_name="SECOND^BEA", study_date="20220101", laterality=side,
                        view=view)
    write_pdf(folder / "P2" / "notes.pdf")
    return folder


@pytest.fixture(scope="session")
def reader_library(tmp_path_factory) -> Library:
    """An imported library (previews made, nothing scored); tests copy it before changing it."""
    base = tmp_path_factory.mktemp("reader")
    files = write_reader_files(base / "files")
    lib = Library(base / "home")
    drain(run_import(lib, [files]))
    return lib


@pytest.fixture
def reader_copy(reader_library, tmp_path) -> Library:
    """A private copy of the imported library (for tests that score or import)."""
    dst = tmp_path / "home"
    shutil.copytree(reader_library.home, dst)
    return Library(dst)


@pytest.fixture
def open_window(qtbot):
    """Factory: a shown MainWindow on a library; workers are stopped at teardown."""
    from PySide6.QtWidgets import QApplication

    from mamview.qt.app import application
    from mamview.qt.main_window import MainWindow

    application()
    made = []

    def make(lib: Library, **kw) -> MainWindow:
        kw.setdefault("start_inference", False)
        win = MainWindow(lib, **kw)
        qtbot.addWidget(win)
        win.resize(1500, 900)
        win.show()
        qtbot.waitExposed(win)
        win.activateWindow()  # shortcuts reach only the active window
        qtbot.waitUntil(lambda: QApplication.activeWindow() is win, timeout=3000)
        made.append(win)
        return win

    yield make
    for win in made:
        win.shutdown()
