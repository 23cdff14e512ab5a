"""Screens: the placement rule on given geometries; images on one screen and the chart and
metrics on the other with two real (virtual) screens, in a child process (offscreen with two
configured screens, and Xvfb with two screens where installed); full screen; 1366×768."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PySide6.QtCore import QRect, Qt

from mamview.qt.screens import plan_screens
from tests.qt.test_main_window import select

ROOT = Path(__file__).resolve().parents[2]


def test_plan_screens_from_geometries():
    one = [QRect(0, 0, 1920, 1080)]
    two = [QRect(0, 0, 1920, 1080), QRect(1920, 0, 2560, 1440)]
    assert plan_screens(one) == (plan_screens(one, 0))
    assert (plan_screens(one).images, plan_screens(one).chart) == (0, None)
    assert (plan_screens(two).images, plan_screens(two).chart) == (0, 1)
    # the reader's window on the second screen: the chart goes to the first
    assert (plan_screens(two, 1).images, plan_screens(two, 1).chart) == (1, 0)
    assert plan_screens(two, enabled=False).chart is None
    three = two + [QRect(-1280, 0, 1280, 1024)]
    assert plan_screens(three).chart == 1  # the largest other screen
    assert plan_screens([]).chart is None


CHILD = r"""
import json, sys
from pathlib import Path
from PySide6.QtWidgets import QApplication
from mamview.qt.app import application
from mamview.qt.main_window import MainWindow
from mamview.core.paths import Library

if __name__ == "__main__":
    app = application()
    win = MainWindow(Library(Path(sys.argv[1])), start_inference=False)
    win.show()
    for _ in range(50):
        app.processEvents()
    screens = QApplication.screens()
    out = {"screens": len(screens),
           "main": screens.index(win.screen()),
           "chart_window": win.chart_window is not None and win.chart_window.isVisible(),
           "chart_in_window": win.chart_window is not None
                              and win.chart.window() is win.chart_window,
           "chart_screen": screens.index(win.chart.screen()),
           "chart_geometry": list(win.chart_window.geometry().getRect())
                             if win.chart_window is not None else None,
           "splitter": win.splitter.sizes()}
    win.set_second_screen(False)
    for _ in range(20):
        app.processEvents()
    out["off_docked"] = win.chart.window() is win and win.chart.isVisible()
    out["off_hidden"] = not win.chart_window.isVisible()
    win.set_second_screen(True)
    for _ in range(20):
        app.processEvents()
    out["on_again"] = win.chart.window() is win.chart_window
    win.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
"""


def _run_child(lib_home: Path, env: dict, tmp_path: Path) -> dict:
    script = tmp_path / "two_screens.py"
    script.write_text(CHILD)
    env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(lib_home)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, proc.stdout + proc.stderr
    return json.loads(line[len("RESULT "):])


def _check_two_screens(r: dict) -> None:
    assert r["screens"] == 2
    assert r["chart_window"] and r["chart_in_window"]
    assert r["chart_screen"] != r["main"]  # images on one screen, chart + metrics on the other
    assert len(r["splitter"]) == 2  # the main window keeps no chart column
    assert r["off_docked"] and r["off_hidden"] and r["on_again"]


def test_chart_on_the_second_of_two_offscreen_screens(reader_copy, tmp_path):
    config = tmp_path / "screens.json"
    config.write_text(json.dumps({"screens": [
        {"name": "left", "x": 0, "y": 0, "width": 1920, "height": 1080, "logicalDpi": 96},
        {"name": "right", "x": 1920, "y": 0, "width": 1920, "height": 1080, "logicalDpi": 96}]}))
    r = _run_child(reader_copy.home, {"QT_QPA_PLATFORM": f"offscreen:configfile={config}"},
                   tmp_path)
    _check_two_screens(r)
    assert r["chart_geometry"][0] >= 1920  # on the right-hand screen's desktop area


@pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not installed")
def test_chart_on_the_second_of_two_xvfb_screens(reader_copy, tmp_path):
    display = f":{300 + os.getpid() % 300}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1920x1080x24", "-screen", "1",
                             "1920x1080x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{display[1:]}").exists():
            assert xvfb.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.1)
        r = _run_child(reader_copy.home, {"QT_QPA_PLATFORM": "xcb", "DISPLAY": display},
                       tmp_path)
    finally:
        xvfb.terminate()
        xvfb.wait(10)
    _check_two_screens(r)


def test_one_screen_keeps_the_chart_beside_the_images(reader_library, open_window):
    win = open_window(reader_library)
    assert win.chart_window is None or not win.chart_window.isVisible()
    assert win.chart.window() is win and win.splitter.sizes()[2] > 200


def test_full_screen_by_key(reader_library, open_window, qtbot):
    win = open_window(reader_library)
    qtbot.keyClick(win, Qt.Key.Key_F11)
    qtbot.waitUntil(win.isFullScreen, timeout=3000)
    assert win.actions_by_name["full_screen"].isChecked()
    qtbot.keyClick(win, Qt.Key.Key_F11)
    qtbot.waitUntil(lambda: not win.isFullScreen(), timeout=3000)
    assert not win.actions_by_name["full_screen"].isChecked()


def test_1366_by_768_current_exam_and_metrics_in_view(reader_copy, open_window, qtbot,
                                                      tmp_path):
    from tests.factories import write_mammogram
    from tests.qt.conftest import VIEWS

    # enough exams that the strip cannot show them all at once
    for year in range(2011, 2021):
        for side, view in VIEWS:
            write_mammogram(tmp_path / "more" / str(year) / f"{side}{view}.dcm",
                            patient_id="P1", patient_name="TESTER^ANNA",
                            study_date=f"{year}0601", laterality=side, view=view)
    win = open_window(reader_copy)
    with qtbot.waitSignal(win.bridge.importFinished, timeout=60000):
        assert win.start_import([str(tmp_path / "more")])
    win.resize(1366, 768)
    select(win, qtbot, "P1")
    qtbot.wait(100)
    assert (win.width(), win.height()) == (1366, 768)
    grid = win.grid
    assert len(grid.exams) == 13 and len(win.chart.points()) == 13  # the chart took them too
    assert grid.strip.width() > grid.strip_scroll.viewport().width()  # the strip does scroll
    thumb = grid._thumbs[grid.current_key]

    def current_in_view():
        shown = grid.strip_scroll.viewport().rect()
        return shown.contains(thumb.geometry().translated(grid.strip.pos()))

    qtbot.waitUntil(current_in_view, timeout=3000)  # the current exam's thumbnail is in view
    # the hanging gets most of the width; the metrics have room to read
    sizes = win.splitter.sizes()
    assert sizes[1] >= 0.45 * sum(sizes)
    assert win.metrics.width() >= 280 and win.metrics.height() >= 250
    assert all(t.width() > 250 and t.height() > 250 for t in grid.tiles)
    win.grab().save(str(tmp_path / "1366x768.png"))
