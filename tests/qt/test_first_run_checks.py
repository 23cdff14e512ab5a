"""The window runs the first-run checks in the background and says what it found."""

import pytest
import torch


def test_window_reports_the_scoring_device_check(open_window, reader_copy, qtbot):
    win = open_window(reader_copy)
    qtbot.waitUntil(lambda: len(win.check_results) == 3, timeout=15000)
    assert {r.name for r in win.check_results} == {"library", "disk", "gpu"}
    gpu = next(r for r in win.check_results if r.name == "gpu")
    assert gpu.message in win.model_text.toolTip()


def test_asking_for_a_missing_gpu_shows_a_setup_warning(open_window, reader_copy, qtbot):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    win = open_window(reader_copy, device="cuda")
    qtbot.waitUntil(lambda: bool(win.check_results), timeout=15000)
    assert win.checks_button.isVisible()
    assert win.checks_button.text() == "⚠ setup warning"
    assert "ask for CUDA" in win.checks_button.toolTip()
