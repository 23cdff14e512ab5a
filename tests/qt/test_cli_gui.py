"""The gui area's commands: what a bare `mamview` runs, refusal without a display, the console
demo, and `mamview gui --patient` options."""

from __future__ import annotations

import re

from mamview.cli import bench as cli_bench
from mamview.cli import gui as cli_gui
from mamview.cli import build_parser, main


def test_bare_mamview_opens_the_window_and_demo_has_a_console_mode():
    p = build_parser()
    assert p.parse_args([]).func is cli_gui.cmd_gui
    args = p.parse_args(["gui", "--patient", "P1", "--layout", "8up", "--device", "cpu"])
    assert (args.func, args.patient, args.layout, args.device) == (cli_gui.cmd_gui, "P1", "8up", "cpu")
    assert p.parse_args(["demo", "--no-gui"]).func is cli_gui.cmd_demo
    assert p.parse_args(["bench", "gui"]).func is cli_bench.cmd_bench_gui
    assert p.parse_args(["patients"]).func.__name__ == "cmd_patients"


def test_gui_without_a_display_says_so(home, monkeypatch, capsys):
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cli_gui.sys, "platform", "linux")
    assert main(["--home", str(home), "gui"]) == 2
    assert "no display" in capsys.readouterr().err


def test_demo_no_gui_writes_imports_and_scores(home, capsys):
    assert main(["--home", str(home), "demo", "--no-gui", "--patients", "1"]) == 0
    out = capsys.readouterr().out
    assert "Imported" in out and "Synthetic data" in out
    assert (home / "demo-cohort" / "images.csv").is_file()
    # scored with the demo model, her trajectory printed under its label
    assert "computed, 0 already in the cache" in out and "not for clinical use" in out
    assert re.search(r"^  \d{4}-\d\d-\d\d +\d+\.\d%", out, re.M)
    assert main(["--home", str(home), "trajectory", "DEMO0001"]) == 0
    assert "Latest 5-year risk" in capsys.readouterr().out


def test_gui_on_an_unusable_library_says_why_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # no dialog to click away offscreen
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the library folder should go")
    assert main(["--home", str(blocker / "lib"), "gui"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("mamview: ") and str(blocker / "lib") in err


def test_gui_on_a_damaged_database_says_why_and_exits_2(home, capsys):
    home.mkdir()
    (home / "cache.sqlite").write_bytes(b"not a database " * 100)
    assert main(["--home", str(home), "gui"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mamview: the library database") and "damaged" in err
