"""The settings dialog edits and saves the second-screen setting (also in the View menu), and
the window follows it."""

from __future__ import annotations

from mamview.core import settings as settings_mod
from mamview.qt.settings_dialog import SettingsDialog


def test_second_screen_checkbox_is_saved_and_followed(reader_copy, open_window, qtbot, tmp_path):
    win = open_window(reader_copy)
    assert win.settings.second_screen  # the default: on
    dlg = SettingsDialog(win.lib, win.settings, win)
    qtbot.addWidget(dlg)
    box = dlg.second_screen
    assert box.isChecked() and "second screen" in box.text()
    dlg.show()
    qtbot.waitExposed(dlg)
    dlg.grab().save(str(tmp_path / "settings.png"))
    box.setChecked(False)
    new = dlg.save()
    assert not new.second_screen
    assert not settings_mod.load(win.lib.settings_file).second_screen  # written to the library
    win.apply_settings(new)
    assert not win.settings.second_screen
    assert not win.actions_by_name["second_screen"].isChecked()  # the menu says the same
    assert win.right_panel.parent() is win.splitter  # the chart sits beside the images
    # and back on, from the menu: the dialog opens with the box ticked
    win.actions_by_name["second_screen"].setChecked(True)
    assert settings_mod.load(win.lib.settings_file).second_screen
    again = SettingsDialog(win.lib, win.settings, win)
    qtbot.addWidget(again)
    assert again.second_screen.isChecked() and again.result_settings().second_screen
