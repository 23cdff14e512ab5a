"""The reading window's DICOM node and Fetch priors, against real dcmtk peers."""

from __future__ import annotations

from collections import defaultdict

import pydicom
import pytest

from mamview.core import settings as settings_mod
from mamview.core.ingest import drain, run_import
from mamview.bench import dcmtk
from mamview.core.paths import library
from tests.net.conftest import LOOPBACK, cohort_folders, free_port, needs_dcmtk, run

pytestmark = [needs_dcmtk, pytest.mark.slow]


@pytest.fixture
def window(qtbot):
    """Factory: a shown MainWindow (no background scoring) whose node is stopped at teardown."""
    from mamview.qt.app import application
    from mamview.qt.main_window import MainWindow

    application()
    made = []

    def make(lib):
        win = MainWindow(lib, start_inference=False)
        qtbot.addWidget(win)
        win.show()
        made.append(win)
        return win

    yield make
    for win in made:
        win.shutdown()


def _enable_node(lib, port: int, **choice) -> None:
    lib.ensure()
    s = settings_mod.load(lib.settings_file)
    s.node_enabled, s.node_ae_title, s.node_port = True, "MAMVIEW", port
    s.node_allowed_aes = ["MODALITY"]  # the PACS asked for priors is let in by fetch_priors
    for k, v in choice.items():
        setattr(s, k, v)
    settings_mod.save(s, lib.settings_file)


def test_window_node_is_open_only_when_chosen_and_says_so(home, window, qtbot):
    lib = library(home)
    _enable_node(lib, free_port(), node_allowed_aes=[])  # no allow-list, no allow-any
    win = window(lib)
    assert not win.node_ctl.running
    assert "whom to accept" in win.status_text.text()
    _enable_node(lib, free_port(), node_allowed_aes=[], node_allow_any=True)
    win = window(lib)
    seen = []
    win.node_ctl.openChanged.connect(lambda is_open, text: seen.append((is_open, text)))
    win.set_node_running(False)
    win.set_node_running(True)
    assert win.node_ctl.running and win.node_ctl.is_open
    assert seen[-1][0] is True and "any calling AE title" in seen[-1][1]
    assert "open to any peer" in win.status_text.text()
    # the lasting warning stays when later messages replace the status text
    win.status_text.setText("something else")
    assert win.node_open_label.isVisible() and "any calling AE title" in win.node_open_label.toolTip()
    win.set_node_running(False)
    assert not win.node_open_label.isVisible()


def test_settings_dialog_edits_whom_the_node_accepts(home, qtbot):
    from mamview.qt.app import application
    from mamview.qt.settings_dialog import SettingsDialog

    application()
    lib = library(home)
    lib.ensure()
    dlg = SettingsDialog(lib, settings_mod.Settings())
    qtbot.addWidget(dlg)
    dlg.node_aes.setText("mg_room1, PACS  mg_room1")
    dlg.node_hosts.setText("10.1.2.3, 10.1.4.0/24")
    s = dlg.save()
    assert s.node_allowed_aes == ["MG_ROOM1", "PACS"]
    assert s.node_allowed_hosts == ["10.1.2.3", "10.1.4.0/24"]
    assert s.node_allow_any is False
    assert settings_mod.load(lib.settings_file).node_allowed_aes == ["MG_ROOM1", "PACS"]


def test_window_node_receives_a_push_and_the_worklist_shows_it(home, cohort, scu_config, window,
                                                                 qtbot):
    lib = library(home)
    port = free_port()
    _enable_node(lib, port)
    win = window(lib)
    assert win.node_ctl.running and win.actions_by_name["receive"].isChecked()
    folders = cohort_folders(cohort)[:1]
    cmd = dcmtk.storescu_command(LOOPBACK, port, "MAMVIEW", folders, scu_config, "MODALITY")
    r = run(cmd)
    assert r.returncode == 0, r.stderr
    pid = folders[0].name
    qtbot.waitUntil(lambda: any(row.patient_id == pid for row in win.patient_rows),
                    timeout=60000)
    # switching the node off in the menu closes the port
    win.actions_by_name["receive"].setChecked(False)
    assert not win.node_ctl.running
    assert run(cmd, timeout=60).returncode != 0


def test_fetch_priors_from_the_window_brings_her_earlier_studies(home, pacs, window, qtbot):
    lib = library(home)
    by_study = defaultdict(list)
    for f in pacs.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        by_study[(ds.StudyDate, ds.StudyInstanceUID)].append(f)
    latest = by_study[max(by_study)]
    drain(run_import(lib, latest))  # today's exam is here; the PACS holds her priors
    _enable_node(lib, pacs.node_port)
    win = window(lib)
    qtbot.waitUntil(lambda: win.patient_key is not None, timeout=10000)
    assert win.patient_list.rows[win.patient_key].exams == 1
    lines = []
    win.node_ctl.status.connect(lines.append)
    win.fetch_priors(pacs.address)
    qtbot.waitUntil(lambda: getattr(win, "last_fetch", None) is not None, timeout=120000)
    summary, error = win.last_fetch
    assert error is None
    assert (summary.studies_found, summary.already_in_library, summary.studies_fetched) == (3, 1, 2)
    # the status bar followed it study by study (progress through the bridge)
    assert any("study 1 of 2" in t for t in lines) and any("study 2 of 2" in t for t in lines)
    assert not win.node_ctl.fetching and not win.node_ctl.cancel_fetch()
    qtbot.waitUntil(lambda: win.patient_list.rows[win.patient_key].exams == 3, timeout=60000)


def test_fetch_priors_from_an_unreachable_pacs_says_so(home, priors, window, qtbot):
    lib = library(home)
    drain(run_import(lib, [next(priors.rglob("*.dcm")).parent]))
    _enable_node(lib, free_port())
    win = window(lib)
    qtbot.waitUntil(lambda: win.patient_key is not None, timeout=10000)
    closed = free_port()
    win.fetch_priors(f"PACS@{LOOPBACK}:{closed}")
    qtbot.waitUntil(lambda: getattr(win, "last_fetch", None) is not None, timeout=60000)
    summary, error = win.last_fetch
    assert summary is None and str(closed) in error
    assert error in win.status_text.text()
