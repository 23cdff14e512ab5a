"""Start the Qt application: dark reading-room theme, one main window on a library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtGui import QColor, QPalette, QGuiApplication
from PySide6.QtWidgets import QApplication, QMessageBox

from mamview.core.cache.db import DatabaseError
from mamview.core.errors import MamviewError
from mamview.core.paths import Library

# exit status when the window cannot open on the library (as the CLI's expected failures)
EXIT_UNUSABLE_LIBRARY = 2

DARK = {
    QPalette.ColorRole.Window: "#161616", QPalette.ColorRole.WindowText: "#d8d8d8",
    QPalette.ColorRole.Base: "#101010", QPalette.ColorRole.AlternateBase: "#181818",
    QPalette.ColorRole.Text: "#d8d8d8", QPalette.ColorRole.Button: "#222222",
    QPalette.ColorRole.ButtonText: "#d8d8d8", QPalette.ColorRole.Highlight: "#2d5d9f",
    QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#222222",
    QPalette.ColorRole.ToolTipText: "#e8e8e8", QPalette.ColorRole.PlaceholderText: "#777777",
    QPalette.ColorRole.Link: "#6fa8ff",
}
STYLE = """
QMainWindow, QDockWidget { background: #161616; }
QToolBar { background: #1c1c1c; border: none; spacing: 2px; padding: 1px; }
QToolBar QToolButton { color: #ccc; padding: 3px 7px; border-radius: 3px; }
QToolBar QToolButton:checked { background: #2d5d9f; color: white; }
QToolBar QToolButton:hover { background: #333; }
QStatusBar { background: #1c1c1c; color: #aaa; }
QHeaderView::section { background: #1e1e1e; color: #aaa; border: none; padding: 3px; }
QTableWidget { gridline-color: #222; border: none; }
QLineEdit { background: #101010; border: 1px solid #333; padding: 4px; border-radius: 3px; }
QSplitter::handle { background: #0c0c0c; }
QMenuBar { background: #1c1c1c; color: #ccc; }
QMenu { background: #202020; color: #ddd; }
QMenu::item:selected { background: #2d5d9f; }
QScrollArea { border: none; background: #121212; }
"""


def application(argv: list[str] | None = None) -> QApplication:
    """The QApplication (created once) with the dark theme."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(argv if argv is not None else sys.argv[:1])
        app.setApplicationName("mamview")
    app.setStyle("Fusion")
    pal = QPalette()
    for role, color in DARK.items():
        pal.setColor(role, QColor(color))
    app.setPalette(pal)
    app.setStyleSheet(STYLE)
    return app


def run(lib: Library, *, demo: bool = False, device: str | None = None,
        patients: int = 20, size: str = "small", patient: str | None = None,
        layout: str | None = None) -> int:
    """Open the window on `lib` (and start the live demo when asked); returns the exit code."""
    app = application()
    try:
        _check_library(lib)  # before the window's heavy imports: an unusable library fails fast
        from mamview.qt.main_window import MainWindow

        win = MainWindow(lib, device=device)
    except (MamviewError, OSError, DatabaseError) as exc:
        return refuse_library(lib, exc)
    screen = app.primaryScreen()
    if screen is not None:  # fill the screen (no window manager under Xvfb to maximise it)
        win.setGeometry(screen.availableGeometry())
    win.showMaximized()
    if patient:
        keys = [k for k, r in win.patient_list.rows.items() if r.patient_id == patient]
        if keys:
            win.patient_list.select(keys[0])
        else:
            win.status_text.setText(f"No patient with ID {patient!r} in this library.")
    if layout:
        win.set_layout(layout)
    if demo:
        win.start_demo(patients=patients, size=size)
    app.aboutToQuit.connect(win.shutdown)
    _quit_on_signals(app)
    return app.exec()


def _check_library(lib: Library) -> None:
    """Raise what stops the window from using `lib`: folders that cannot be made, a database
    that cannot be opened for writing (read-only, locked, damaged)."""
    from mamview.core.cache.db import connect

    lib.ensure()
    connect(lib.database).close()


def refuse_library(lib: Library, exc: BaseException) -> int:
    """Say why the window cannot open on `lib`: one line on stderr and, where a screen shows
    it, a dialog. Returns the exit status."""
    from mamview.core.cache.db import database_error, folder_error
    from mamview.core.safety import printable

    if isinstance(exc, DatabaseError):
        err = database_error(exc, lib.database)
        if err is None:
            raise exc  # not the library's state: a bug, for the top-level handler
        exc = err
    elif isinstance(exc, OSError) and not isinstance(exc, MamviewError):
        if not _in_library(lib, exc.filename):
            raise exc  # some other file: not the library's fault
        exc = folder_error(lib.home, exc)
    message = printable(exc)
    print(f"mamview: {message}", file=sys.stderr)
    if QGuiApplication.platformName() not in ("offscreen", "minimal"):
        QMessageBox.critical(None, "mamview cannot open the library", message)
    return EXIT_UNUSABLE_LIBRARY


def _in_library(lib: Library, filename: object) -> bool:
    if not isinstance(filename, (str, bytes)):
        return False
    target = Path(os.path.abspath(os.fsdecode(filename)))
    home = Path(os.path.abspath(lib.home))
    return target == home or home in target.parents


def _quit_on_signals(app: QApplication) -> None:
    """Ctrl-C / SIGTERM close the window cleanly (workers stopped, child processes ended).

    Python runs signal handlers only between bytecodes, so a light timer lets it look."""
    import signal

    from PySide6.QtCore import QTimer

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, lambda *_: app.quit())
        except (ValueError, OSError):  # not the main thread, or the platform lacks it
            pass
    timer = QTimer(app)
    timer.timeout.connect(lambda: None)
    timer.start(250)
