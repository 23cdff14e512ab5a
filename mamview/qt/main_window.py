"""The reading workstation window: worklist │ hanging area │ risk trajectory + metrics.

Composition and wiring: the policy (the model shown, the woman on screen, what to score at
which priority, which results are still wanted, worklist rows and metrics) is the reading
session's (`core.session.ReadingSession`, no Qt). Everything slow (import, previews,
inference, full-resolution decodes) runs on workers; their events reach this window only
through `qt.bridge.Bridge` signals, and stale score results are dropped there.
"""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QHBoxLayout, QLabel, QMainWindow,
                               QMessageBox, QProgressBar, QPushButton, QSplitter, QStackedWidget,
                               QToolButton, QVBoxLayout, QWidget)

import mamview
from mamview.core import settings as settings_mod
from mamview.core.hanging import LAYOUT_NAMES
from mamview.core.paths import Library
from mamview.core.safety import printable
from mamview.core.session import ExamChanged, PassDone, ReadingSession
from mamview.core.domain import risk_percent
from mamview.core.worklist import ExamInfo, row_summary
from mamview.qt.bridge import Bridge
from mamview.qt.exam_grid import ExamGrid
from mamview.qt.metrics_panel import MetricsPanel
from mamview.qt.patient_list import PatientList
from mamview.qt.problems_panel import ProblemsPanel
from mamview.qt.reading_tools import TOOL_SHORTCUTS, install_tools
from mamview.qt.screens import plan_screens
from mamview.qt.trajectory_chart import ChartPoint, TrajectoryChart

# (action name, key, description) — shown in Help → Shortcuts and bound below
SHORTCUTS = (
    ("next_patient", "PgDown", "Next patient"),
    ("prev_patient", "PgUp", "Previous patient"),
    ("older_prior", "]", "Older prior exam"),
    ("newer_prior", "[", "Newer prior exam"),
    ("older_current", "{", "Current exam a year back (older)"),
    ("newer_current", "}", "Current exam a year forward (newer)"),
    ("flicker", "X", "Flicker: show the prior in the current exam's tiles, same zoom and "
                     "window (press again to return)"),
    ("next_extra", "E", "Next additional view of the current exam (spot, magnification, ML, "
                        "repeat …) in its view's cell; after the last, the standard views"),
    ("implant", "Shift+I", "Implant hanging: the implant-displaced (ID) views in their views' "
                           "cells, when the exam has them (press again to return)"),
    ("layout_4up", "1", "Layout: current exam 4-up (CC over MLO)"),
    ("layout_8up", "2", "Layout: current vs prior 8-up"),
    ("layout_timeline", "3", "Layout: one view across all exams (timeline)"),
    ("timeline_view", "V", "Timeline: next view (RCC → LCC → RMLO → LMLO)"),
    ("invert", "I", "Invert grey levels"),
    ("preset", "W", "Next window preset from the files"),
    ("fit", "F", "Fit images to their tiles"),
    ("one_to_one", "O", "1:1 — one screen pixel per image pixel"),
    ("reset", "R", "Reset zoom, window and invert"),
    ("magnifier", "M", "Magnifier glass"),
    ("sync", "S", "Synchronise zoom/pan and window across tiles"),
    ("mark_read", "Ctrl+R", "Mark the woman read / unread"),
    ("search", "Ctrl+F", "Search patients (Enter or ↓ opens the first match, Esc leaves)"),
    ("hanging", "Ctrl+G", "Keyboard back to the hanging"),
    ("full_screen", "F11", "Full-screen reading"),
    ("second_screen", "Ctrl+Shift+S", "Chart and metrics on the second screen (when there is one)"),
    ("problems", "Ctrl+Shift+P", "Show / hide the problems panel"),
    ("import", "Ctrl+O", "Import a folder"),
    ("demo", "Ctrl+Shift+L", "Load the demo cohort"),
    ("export", "Ctrl+E", "Export figure"),
    ("copy", "Ctrl+Shift+C", "Copy the figure to the clipboard"),
    ("settings", "Ctrl+,", "Settings"),
    ("receive", "Ctrl+Shift+N", "Receive images (DICOM node on / off)"),
    ("fetch_priors", "Ctrl+Shift+F", "Fetch priors from PACS"),
    ("cancel_fetch", "Ctrl+Shift+X", "Cancel a fetch"),
    ("shortcuts", "F1", "This list"),
    ("about", "Shift+F1", "About mamview"),
    ("quit", "Ctrl+Q", "Quit"),
)
# every key of the window, the reading tools' (measure, arrows, key images, overlays) included
ALL_SHORTCUTS = tuple(SHORTCUTS) + tuple(TOOL_SHORTCUTS)
KEYS = {name: key for name, key, _ in SHORTCUTS}
HELP = {name: text for name, _, text in SHORTCUTS}
PROGRESS_PHASES = {"generating": "Writing demo cohort", "finding": "Finding files",
                   "indexing": "Indexing headers", "previews": "Making previews"}


class MainWindow(QMainWindow):
    """The main window on one library."""

    def __init__(self, lib: Library, *, start_inference: bool = True, device: str | None = None,
                 inference_in_process: bool = True):
        super().__init__()
        self.lib = lib.ensure()
        settings = settings_mod.load(lib.settings_file)
        if device:
            settings.device = device
        self.bridge = Bridge(self)
        # `inference_in_process`: the service runs in its own (child) process
        self.session = ReadingSession(self.lib, settings, scoring=start_inference,
                                      child_process=inference_in_process,
                                      on_event=self.bridge.post_score_event)
        self.bridge.session = self.session
        self.bridge.importEvent.connect(self._on_import_event)
        self.bridge.importFinished.connect(self._on_import_finished)
        self.bridge.scoreEvent.connect(self._on_score_event)
        from mamview.qt.dicom_node import DicomNodeController

        self.node_ctl = DicomNodeController(self.lib, self.bridge, self)
        self._last_live_refresh = 0.0
        self._scoring_started_for_import = False
        self.problem_events = 0
        self._closed = False
        self._pending_scores: dict[str, ExamChanged] = {}
        self._dirty_patients: list[str] = []
        self._score_timer = QTimer(self)
        self._score_timer.setSingleShot(True)
        self._score_timer.setInterval(100)
        self._score_timer.timeout.connect(self._flush_scores)

        self.setWindowTitle(f"mamview — {lib.home}")
        self.resize(1600, 960)
        self.chart_window: QWidget | None = None  # the chart + metrics on a second screen
        self._build_widgets()
        self._build_actions()
        self.reading_tools = install_tools(self, self.grid)
        self._build_status_bar()
        self._start_first_run_checks()
        self._wire_dicom_node()
        self.session.warm_up()
        self.refresh_patients()
        self.refresh_problems()
        if not self.patient_rows:
            self.stack.setCurrentWidget(self.welcome)
        else:
            self.score_library()
        self.focus_hanging()  # the keyboard starts on the hanging, not in the search box

    # ---------------------------------------------------------------- the session's state

    @property
    def db(self):
        """The session's library connection (the grid and the export read through it)."""
        return self.session.db

    @property
    def settings(self) -> settings_mod.Settings:
        return self.session.settings

    @property
    def start_inference(self) -> bool:
        """Whether the window scores (False: it only shows what is stored)."""
        return self.session.scoring

    @start_inference.setter
    def start_inference(self, on: bool) -> None:
        self.session.scoring = bool(on)

    @property
    def service(self):
        """The running inference service, if any."""
        return self.session.service

    @property
    def patient_key(self) -> str | None:
        """The woman on screen."""
        return self.session.patient_key

    @property
    def score_model(self):
        return self.session.score_model

    @property
    def model_entry(self):
        return self.session.model_entry

    @property
    def model_id(self) -> str | None:
        return self.session.model_id

    @property
    def is_demo_model(self) -> bool:
        return self.session.is_demo_model

    @property
    def model_label(self) -> str:
        """The name shown next to every score."""
        return self.session.model_label

    @property
    def model_short(self) -> str:
        return self.session.model_short

    # ---------------------------------------------------------------- construction

    def _build_widgets(self) -> None:
        self.patient_list = PatientList()
        self.patient_list.patientSelected.connect(self.show_patient)
        self.patient_list.searchFinished.connect(self.focus_hanging)
        self.grid = ExamGrid(self.bridge.run_task)
        self.grid.selectionChanged.connect(self._on_exam_selection)
        self.grid.statusMessage.connect(lambda text: self.status_text.setText(printable(text)))
        self.chart = TrajectoryChart()
        self.chart.examClicked.connect(self._on_chart_click)
        self.metrics = MetricsPanel()

        self.welcome = QWidget()
        wl = QVBoxLayout(self.welcome)
        wl.addStretch(1)
        msg = QLabel("<h2>Your library is empty</h2><p>Import a folder of screening mammograms "
                     "(File → Import, or drop a folder on this window),<br>or load a synthetic "
                     "demo cohort to see mamview at work.</p>")
        msg.setAlignment(Qt.AlignmentFlag.AlignCenter)
        wl.addWidget(msg)
        row = QHBoxLayout()
        row.addStretch(1)
        self.demo_button = QPushButton("Load the demo cohort (synthetic data)")
        self.demo_button.clicked.connect(lambda: self.start_demo())
        imp = QPushButton("Import a folder…")
        imp.clicked.connect(self.choose_import)
        row.addWidget(self.demo_button)
        row.addWidget(imp)
        row.addStretch(1)
        wl.addLayout(row)
        wl.addStretch(2)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.grid)
        self.stack.addWidget(self.welcome)

        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.chart)
        right.addWidget(self.metrics)
        right.setStretchFactor(0, 5)
        right.setStretchFactor(1, 4)
        self.right_panel = right

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.patient_list)
        split.addWidget(self.stack)
        split.addWidget(right)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([390, 1060, 470])
        self.splitter = split
        self.setCentralWidget(split)

        self.problems = ProblemsPanel()
        self.problems_dock = QDockWidget("Problems: skipped files", self)
        self.problems_dock.setObjectName("problems")
        self.problems_dock.setWidget(self.problems)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.problems_dock)
        self.problems_dock.hide()
        self.setAcceptDrops(True)

    def _action(self, name: str, text: str, slot, checkable: bool = False, checked: bool = False
                ) -> QAction:
        act = QAction(text, self)
        if name in KEYS:
            act.setShortcut(QKeySequence(KEYS[name]))
            act.setToolTip(f"{HELP[name]} ({KEYS[name]})")
        act.setCheckable(checkable)
        if checkable:
            act.setChecked(checked)
            act.toggled.connect(slot)
        else:
            act.triggered.connect(lambda _=False: slot())
        self.addAction(act)
        self.actions_by_name[name] = act
        return act

    def _build_actions(self) -> None:
        self.actions_by_name: dict[str, QAction] = {}
        a = self._action
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(a("import", "&Import folder…", self.choose_import))
        file_menu.addAction(a("demo", "Load &demo cohort", lambda: self.start_demo()))
        file_menu.addSeparator()
        file_menu.addAction(a("export", "&Export figure…", self.export_figure))
        file_menu.addAction(a("copy", "&Copy figure to clipboard", self.copy_figure))
        file_menu.addSeparator()
        file_menu.addAction(a("settings", "&Settings…", self.open_settings))
        dicom = self.menuBar().addMenu("&DICOM")
        dicom.addAction(a("receive", "&Receive images (DICOM node)", self.set_node_running,
                          checkable=True, checked=False))
        dicom.addAction(a("fetch_priors", "&Fetch priors from PACS…", self.fetch_priors))
        dicom.addAction(a("cancel_fetch", "&Cancel fetch", self.cancel_fetch))
        file_menu.addSeparator()
        file_menu.addAction(a("quit", "&Quit", self.close))

        view = self.menuBar().addMenu("&View")
        group = QActionGroup(self)
        for key in ("4up", "8up", "timeline"):
            act = a(f"layout_{key}", LAYOUT_NAMES[key], lambda k=key: self.set_layout(k),
                    checkable=False)
            act.setCheckable(True)
            act.setChecked(key == "4up")
            group.addAction(act)
            view.addAction(act)
        view.addAction(a("timeline_view", "Timeline: next view", self.grid.cycle_timeline_view))
        view.addSeparator()
        for name, text, slot in (("older_prior", "Older prior", lambda: self.grid.step_prior(True)),
                                 ("newer_prior", "Newer prior", lambda: self.grid.step_prior(False)),
                                 ("older_current", "Current a year back",
                                  lambda: self.grid.step_current(True)),
                                 ("newer_current", "Current a year forward",
                                  lambda: self.grid.step_current(False)),
                                 ("flicker", "Flicker current / prior", self.toggle_flicker),
                                 ("next_extra", "Next additional view",
                                  lambda: self.status_text.setText(self.grid.cycle_extra())),
                                 ("implant", "Implant hanging (ID views)",
                                  lambda: self.status_text.setText(self.grid.toggle_implant())),
                                 ("next_patient", "Next patient", lambda: self.patient_list.step(1)),
                                 ("prev_patient", "Previous patient",
                                  lambda: self.patient_list.step(-1))):
            view.addAction(a(name, text, slot))
        view.addSeparator()
        view.addAction(a("sync", "Synchronise tiles", self.grid.set_sync, checkable=True,
                         checked=True))
        view.addAction(a("magnifier", "Magnifier", self.grid.set_magnifier, checkable=True))
        view.addAction(a("invert", "Invert", self.grid.toggle_invert))
        view.addAction(a("preset", "Next window preset", self.cycle_preset))
        view.addAction(a("fit", "Fit", self.grid.fit_all))
        view.addAction(a("one_to_one", "1:1 pixels", self.grid.one_to_one))
        view.addAction(a("reset", "Reset", self.grid.reset_all))
        view.addSeparator()
        view.addAction(a("full_screen", "Full screen", self.set_full_screen, checkable=True))
        view.addAction(a("second_screen", "Chart on the second screen", self.set_second_screen,
                         checkable=True, checked=bool(self.settings.second_screen)))
        view.addSeparator()
        view.addAction(a("problems", "Problems panel", lambda: self.problems_dock.setVisible(
            not self.problems_dock.isVisible())))
        view.addAction(a("search", "Search patients", self._focus_search))
        view.addAction(a("hanging", "Keyboard to the hanging", self.focus_hanging))
        view.addAction(a("mark_read", "Mark read / unread", self.toggle_read))

        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(a("shortcuts", "Keyboard &shortcuts", self.show_shortcuts))
        help_menu.addAction(a("about", "&About mamview", self.show_about))

        tb = self.addToolBar("Reading")
        tb.setObjectName("reading")
        tb.setMovable(False)
        for name in ("layout_4up", "layout_8up", "layout_timeline", "timeline_view", None,
                     "sync", "preset", "invert", "magnifier", "fit", "one_to_one", "reset", None,
                     "import"):
            if name is None:
                tb.addSeparator()
            else:
                tb.addAction(self.actions_by_name[name])
        self.actions_by_name["timeline_view"].setText("View ↻")

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.status_text = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setMaximumHeight(14)
        self.progress.setTextVisible(False)
        self.progress.hide()
        self.model_text = QLabel(self.session.model_status())
        self.problems_button = QToolButton()
        self.problems_button.setAutoRaise(True)
        self.problems_button.clicked.connect(lambda: self.problems_dock.setVisible(
            not self.problems_dock.isVisible()))
        self.checks_button = QToolButton()  # shown only when a first-run check has something to say
        self.checks_button.setAutoRaise(True)
        self.checks_button.clicked.connect(self._show_check_results)
        self.checks_button.hide()
        self.check_results: list = []
        # lasting, unlike status_text: a node open to any peer must stay visible while it runs
        self.node_open_label = QLabel("⚠ DICOM node open to any peer")
        self.node_open_label.setStyleSheet("color: #ff6b6b; font-weight: bold;")
        self.node_open_label.hide()
        sb.addWidget(self.status_text, 1)
        sb.addPermanentWidget(self.node_open_label)
        sb.addPermanentWidget(self.checks_button)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.problems_button)
        sb.addPermanentWidget(self.model_text)

    # ---------------------------------------------------------------- DICOM node

    def _wire_dicom_node(self) -> None:
        ctl = self.node_ctl
        ctl.status.connect(self.status_text.setText)
        ctl.libraryChanged.connect(self._on_received_images)
        ctl.fetchDone.connect(self._on_fetch_done)
        ctl.openChanged.connect(self._on_node_open_changed)
        if self.settings.node_enabled:
            self.set_node_running(True)

    def set_node_running(self, on: bool) -> None:
        """Start or stop the window's DICOM node (AE title and port from the settings)."""
        if on and not self.node_ctl.running:
            error = self.node_ctl.start(self.settings.node_ae_title, self.settings.node_port,
                                        self.settings)
            if error:
                on = False
        elif not on:
            self.node_ctl.stop()
        act = self.actions_by_name["receive"]
        act.blockSignals(True)
        act.setChecked(on)
        act.blockSignals(False)

    def _on_node_open_changed(self, is_open: bool, warning: str) -> None:
        self.node_open_label.setToolTip(warning)
        self.node_open_label.setVisible(is_open)

    def _on_received_images(self) -> None:
        if self._closed:
            return
        self.refresh_patients()
        if self.patient_key:
            self.show_patient(self.patient_key)
        self.score_library()

    def fetch_priors(self, pacs_text: str | None = None) -> None:
        """Ask a PACS for the woman on screen's earlier MG studies (C-FIND, C-MOVE to our node)."""
        from PySide6.QtWidgets import QInputDialog

        row = self.patient_list.rows.get(self.patient_key) if self.patient_key else None
        if row is None:
            self.status_text.setText("Select a woman first to fetch her priors.")
            return
        if not self.node_ctl.running:
            self.set_node_running(True)
        if pacs_text is None:
            known = [n.get("name") or n.get("ae_title") for n in self.settings.pacs_nodes
                     if isinstance(n, dict)]
            if known:
                pacs_text, ok = QInputDialog.getItem(self, "Fetch priors", "PACS", known, 0, True)
            else:
                pacs_text, ok = QInputDialog.getText(self, "Fetch priors",
                                                     "PACS address (AE@host:port)")
            if not ok or not pacs_text.strip():
                return
        error = self.node_ctl.fetch_priors(row.patient_id, pacs_text.strip(), self.settings)
        if error:
            self.status_text.setText(error)
            QMessageBox.warning(self, "Fetch priors", error)

    def cancel_fetch(self) -> None:
        """Stop a running fetch-priors (its summary then says what arrived)."""
        if not self.node_ctl.cancel_fetch():
            self.status_text.setText("No fetch is running.")

    def _on_fetch_done(self, summary, error) -> None:
        if self._closed:
            return
        self.last_fetch = (summary, error)
        if error:
            self.status_text.setText(f"Fetch priors failed: {error}")
            return
        # the counts, the newer studies left, a cancel, and the first failure with its cause
        text = " ".join(x for x in summary.lines(all_hint="") if not x.startswith("failed: "))
        if summary.failures:
            more = len(summary.failures) - 1
            text += f" Failed: {summary.failures[0]}" + (f" (and {more} more)" if more else "")
        self.status_text.setText(text)
        self._on_received_images()

    # ---------------------------------------------------------------- first-run checks

    def _start_first_run_checks(self) -> None:
        """Library folder, free disk and GPU checks, off the GUI thread (nvidia-smi can be slow)."""
        from mamview.core import firstrun

        device = self.settings.device
        # torch is probed in a child: the window process never imports it (the model runs in
        # the inference process)
        self.bridge.run_task(lambda: firstrun.run_checks(self.lib, device_preference=device,
                                                         isolated=True),
                             self._on_first_run_checks)

    def _on_first_run_checks(self, results, error) -> None:
        from mamview.core import firstrun

        if self._closed or error is not None:
            return
        self.check_results = list(results)
        compute = next((r for r in results if r.name == "gpu"), None)
        if compute is not None:
            self.model_text.setToolTip("\n".join(filter(None, (compute.message, compute.hint))))
        notable = [r for r in results if r.level != firstrun.OK]
        if notable:
            worst = "error" if any(r.level == firstrun.ERROR for r in notable) else "warning"
            self.checks_button.setText(f"⚠ setup {worst}" + ("s" if len(notable) > 1 else ""))
            self.checks_button.setToolTip(firstrun.format_results(notable))
            self.checks_button.show()
            self.status_text.setText(notable[0].message)

    def _show_check_results(self) -> None:
        from mamview.core import firstrun

        QMessageBox.information(self, "Setup checks", firstrun.format_results(self.check_results))

    # ---------------------------------------------------------------- scoring

    def score_library(self) -> None:
        """Queue every exam without a current score (none stored, or a stale one whose model
        or input files changed), newest exams first, as background work."""
        self.session.score_library()

    def _on_score_event(self, ev) -> None:
        """A score event the session still wants (the bridge dropped the others)."""
        from mamview.core.services import inference as inf

        if self._closed:
            return
        if isinstance(ev, inf.ScoreProgress):
            self.model_text.setText(self.session.model_status())
            self._show_progress("Scoring", ev.done, ev.total)
            return
        change = self.session.apply(ev)
        if isinstance(ev, inf.ServiceError):
            self.status_text.setText(f"Scoring stopped: {ev.message}")
            self.progress.hide()
        elif isinstance(change, PassDone):
            self.model_text.setText(self.session.model_status())
            if change.background:
                self.progress.hide()
                self.status_text.setText("All exams scored.")
        elif isinstance(change, ExamChanged):
            # results arriving together are drawn together
            self._pending_scores[change.exam_key] = change
            if not self._score_timer.isActive():
                self._score_timer.start()

    def _flush_scores(self) -> None:
        if self._closed:
            return
        pending, self._pending_scores = self._pending_scores, {}
        touched: set[str] = set()
        on_screen = []
        for change in pending.values():
            touched.add(change.patient_key)
            if change.patient_key == self.patient_key:  # she may have left since
                self.grid.update_score(change.exam_key, change.score)
                ex = self.grid.exam(change.exam_key)
                if ex is not None and ex.exam_date is not None:
                    on_screen.append(self._chart_point(ex))
        if len(on_screen) == 1:
            self.chart.update_point(on_screen[0])
        elif on_screen:  # one redraw for a batch of results
            self._set_chart()
        # the rest in slices, one per event-loop turn, so painting is never held up long
        if self.patient_key in touched:
            self._dirty_patients.insert(0, self.patient_key)
        self._dirty_patients += [pk for pk in touched if pk != self.patient_key]
        QTimer.singleShot(0, self._refresh_one_dirty)

    def _refresh_one_dirty(self) -> None:
        if self._closed or not self._dirty_patients:
            return
        pk = self._dirty_patients.pop(0)
        if pk in self._dirty_patients:
            self._dirty_patients = [k for k in self._dirty_patients if k != pk]
        rep = self.session.report(pk)
        if pk == self.patient_key:
            self.metrics.set_report(rep)
        self._refresh_patient_row(pk, rep)
        if self._dirty_patients:
            QTimer.singleShot(0, self._refresh_one_dirty)

    # ---------------------------------------------------------------- patients

    def refresh_patients(self) -> None:
        """Reload the worklist from the cache (after an import)."""
        self.patient_rows = self.session.worklist()
        self.patient_list.set_rows(self.patient_rows)
        if self.patient_rows and self.stack.currentWidget() is self.welcome:
            self.stack.setCurrentWidget(self.grid)
        if self.patient_key is None and self.patient_rows:
            self.patient_list.select(self.patient_list.visible_keys()[0])

    def _refresh_patient_row(self, pk: str, rep=None) -> None:
        """One woman's latest score and flags, from her own trajectory (a few small queries)."""
        row = self.patient_list.rows.get(pk)
        if row is None:
            return
        rep = rep if rep is not None else self.session.report(pk)
        row.latest_percent, row.flags = row_summary(rep)
        self.patient_list.update_row(row)

    def show_patient(self, patient_key: str) -> None:
        """Hang a woman's exams, draw her trajectory and queue her unscored exams first."""
        exams = self.session.show(patient_key)
        self.stack.setCurrentWidget(self.grid)
        if not exams:
            self.grid.clear("This patient has no exams.")
        else:
            self.grid.set_patient(self.lib, self.db, exams, self.model_short)
        self._set_chart()
        self._set_identity_warning()
        self._refresh_metrics()
        row = self.patient_list.rows.get(patient_key)
        if row:
            n = len(exams)
            self.status_text.setText(f"{row.patient_id} · {row.display_name} · {n} "
                                     f"exam{'' if n == 1 else 's'}")
        self.session.score_on_screen()
        QTimer.singleShot(0, self._prefetch_next)

    def _prefetch_next(self) -> None:
        """Previews of the next woman in the worklist into memory (reading goes forward)."""
        if self._closed or self.patient_key is None:
            return
        keys = self.patient_list.visible_keys()
        if self.patient_key in keys:
            i = keys.index(self.patient_key)
            if i + 1 < len(keys):
                self.grid.prefetch(self.session.exams_of(keys[i + 1]))

    def _set_chart(self) -> None:
        """Draw the woman's trajectory from the exams the grid holds (with live scores)."""
        self.chart.set_patient([self._chart_point(e) for e in self.grid.exams if e.exam_date],
                               self.model_label, self.is_demo_model,
                               tuple(self.settings.thresholds_percent))
        self.chart.set_current(self.grid.current_key, self.grid.prior_key)

    def _set_identity_warning(self) -> None:
        # once per woman shown or import, not per score: her identity does not change with them
        self.chart.set_identity_warning(self.session.identity_conflict(self.patient_key))

    def _chart_point(self, ex: ExamInfo) -> ChartPoint:
        s = ex.score  # a stale score waits with STALE_REASON, never drawn as current
        return ChartPoint(ex.exam_key, ex.exam_date, s.state, s.five_year_percent,
                          risk_percent(s.risk), self.model_label,
                          s.reason or None, domain=s.domain)

    def _refresh_metrics(self) -> None:
        self.metrics.set_report(self.session.report(self.patient_key) if self.patient_key
                                else None)

    def _on_exam_selection(self, current, prior) -> None:
        self.chart.set_current(current, prior)

    def _on_chart_click(self, exam_key: str) -> None:
        self.grid.set_current(exam_key)

    def set_layout(self, key: str) -> None:
        self.grid.set_layout(key)
        act = self.actions_by_name.get(f"layout_{key}")
        if act is not None and not act.isChecked():
            act.setChecked(True)

    def cycle_preset(self) -> None:
        self.status_text.setText(self.grid.cycle_preset())

    def _focus_search(self) -> None:
        self.patient_list.search.setFocus()
        self.patient_list.search.selectAll()

    def focus_hanging(self) -> None:
        """Give the keyboard to the hanging: digits change the layout, letters are tools."""
        self.grid.setFocus(Qt.FocusReason.ShortcutFocusReason)

    def hanging_has_focus(self) -> bool:
        w = self.focusWidget()
        return w is not None and (w is self.grid or self.grid.isAncestorOf(w))

    def toggle_flicker(self) -> None:
        """X: the prior in the current exam's tiles and back (same zoom, pan and window)."""
        if not self.grid.tiles:
            return
        if self.grid.layout_key == "timeline":
            self.status_text.setText("Flicker works in 4-up and 8-up (1 or 2).")
            return
        if self.grid.prior_key is None:
            self.status_text.setText("Flicker needs a prior exam.")
            return
        on = self.grid.toggle_flicker()
        ex = self.grid.exam(self.grid.prior_key if on else self.grid.current_key)
        what = "prior" if on else "current"
        self.status_text.setText(f"Flicker: showing the {what} exam"
                                 + (f" ({ex.date_text})" if ex is not None else "")
                                 + (" · X returns" if on else ""))

    def toggle_read(self) -> None:
        """Ctrl+R: mark the woman on screen read (at her newest exam) or unread again."""
        pk = self.patient_key
        row = self.patient_list.rows.get(pk) if pk else None
        if row is None:
            return
        row.read = self.session.set_read(pk, not self.session.is_read(pk))
        self.patient_list.update_row(row)
        self.status_text.setText(f"{row.patient_id} marked {'read' if row.read else 'unread'}.")

    # ---------------------------------------------------------------- screens

    def set_full_screen(self, on: bool) -> None:
        """F11: the reading window fills its screen, without frame (F11 again returns)."""
        if on and not self.isFullScreen():
            self._was_maximized = self.isMaximized()
            self.showFullScreen()
        elif not on and self.isFullScreen():
            self.showMaximized() if getattr(self, "_was_maximized", False) else self.showNormal()
        act = self.actions_by_name["full_screen"]
        act.blockSignals(True)
        act.setChecked(self.isFullScreen())
        act.blockSignals(False)

    def set_second_screen(self, on: bool) -> None:
        """The chart and metrics on a second screen when there is one (a saved setting)."""
        if bool(self.settings.second_screen) != bool(on):
            self.settings.second_screen = bool(on)
            settings_mod.save(self.settings, self.lib.settings_file)
        self.apply_screens()

    def apply_screens(self, screens=None) -> None:
        """Place the images and the chart + metrics on the screens (`plan_screens`): with two
        screens and the setting on, the chart and metrics get their own window on the other
        screen; else they sit to the right of the images."""
        from PySide6.QtGui import QGuiApplication

        screens = list(QGuiApplication.screens()) if screens is None else list(screens)
        primary = QGuiApplication.primaryScreen()
        here = self.screen() if self.isVisible() else primary
        start = screens.index(here) if here in screens else (
            screens.index(primary) if primary in screens else 0)
        plan = plan_screens([s.geometry() for s in screens], start,
                            bool(self.settings.second_screen))
        if plan.chart is None:
            self._dock_chart()
            return
        if self.chart_window is None:
            self.chart_window = QWidget(None, Qt.WindowType.Window)
            self.chart_window.setWindowTitle("mamview — risk trajectory and change metrics")
            lay = QVBoxLayout(self.chart_window)
            lay.setContentsMargins(0, 0, 0, 0)
            # the window's shortcuts work from the chart's screen too
            for act in self.actions_by_name.values():
                self.chart_window.addAction(act)
        if self.right_panel.parent() is not self.chart_window:
            self.chart_window.layout().addWidget(self.right_panel)
        self.right_panel.show()
        target = screens[plan.chart]
        self.chart_window.setScreen(target)
        self.chart_window.setGeometry(target.availableGeometry())
        self.chart_window.show()
        self._size_panes()

    def _dock_chart(self) -> None:
        if self.right_panel.parent() is not self.splitter:
            self.splitter.addWidget(self.right_panel)
            self.right_panel.show()
        if self.chart_window is not None:
            self.chart_window.hide()
        self._size_panes()

    def _size_panes(self) -> None:
        """Worklist, hanging and chart widths from the window's; the hanging gets the most."""
        w = max(800, self.width())
        docked = self.right_panel.parent() is self.splitter
        right = min(440, int(w * 0.23)) if docked else 0
        # what the chart column really takes: the splitter keeps its minimum width
        taken = max(right, self.right_panel.minimumSizeHint().width()) if docked else 0
        # the worklist widens to show its names in full while the hanging keeps 46 %
        side = max(min(560, int(w * 0.3)),
                   min(self.patient_list.preferred_width(), int(w * 0.33), 640,
                       w - taken - int(w * 0.46)))
        if docked:
            self.splitter.setSizes([side, w - side - right, right])
        else:  # the chart is on its own screen
            self.splitter.setSizes([side, w - side])
        # the metrics get about half the column: latest risk, change, rate, crossings, flags
        h = max(400, self.right_panel.height() or self.height())
        self.right_panel.setSizes([int(h * 0.55), h - int(h * 0.55)])

    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        # a narrower window (1366 px) would squeeze the hanging: give it its share back
        sizes = self.splitter.sizes()
        if getattr(self, "_placed", False) and sum(sizes) and sizes[1] < 0.5 * sum(sizes):
            self._size_panes()

    def showEvent(self, ev):
        super().showEvent(ev)
        if not getattr(self, "_placed", False):
            self._placed = True
            self.apply_screens()
            self.focus_hanging()

    # ---------------------------------------------------------------- import

    def choose_import(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a folder of mammograms")
        if folder:
            self.start_import([folder])

    def start_import(self, paths: list[str]) -> bool:
        """Import files/folders in the background (progress in the status bar)."""
        from mamview.core.ingest import run_import

        lib = self.lib
        self._scoring_started_for_import = False
        started = self.bridge.start_import(
            lambda cancel: run_import(lib, list(paths), cancel=cancel))
        if not started:
            self.status_text.setText("An import is already running.")
        return started

    def start_demo(self, patients: int = 20, size: str = "small") -> bool:
        """Write the synthetic demo cohort (once), import it and score it, all live."""
        from mamview.core.demo_data import generate_cohort
        from mamview.core.ingest import Progress, run_import

        lib, bridge = self.lib, self.bridge
        out = lib.home / "demo-cohort"

        def gen(cancel):
            if not (out / "images.csv").exists():
                generate_cohort(out, n_patients=patients, size=size, seed=0,
                                progress=lambda d, t: bridge.importEvent.emit(
                                    Progress("generating", d, t)))
            folders = sorted(p for p in out.iterdir() if p.is_dir())
            return (yield from run_import(lib, folders, cancel=cancel))

        self._scoring_started_for_import = False
        started = self.bridge.start_import(gen)
        if started:
            self.stack.setCurrentWidget(self.grid)
            self.grid.clear("Writing the synthetic demo cohort…")
        return started

    def _show_progress(self, what: str, done: int, total: int) -> None:
        self.progress.show()
        self.progress.setMaximum(max(1, total))
        self.progress.setValue(done)
        self.status_text.setText(f"{what}: {done}/{total}")

    def _on_import_event(self, ev) -> None:
        from mamview.core.ingest import Progress, ProblemFound

        if self._closed:
            return
        if isinstance(ev, ProblemFound):
            self.problem_events += 1
            return
        if not isinstance(ev, Progress):
            return
        self._show_progress(PROGRESS_PHASES.get(ev.phase, ev.phase), ev.done, ev.total)
        if ev.phase == "previews" and not self._scoring_started_for_import:
            # headers are indexed: show the women and start scoring while previews are made
            self._scoring_started_for_import = True
            self.refresh_patients()
            self.score_library()
        now = time.monotonic()
        if ev.phase == "previews" and now - self._last_live_refresh > 1.0:
            self._last_live_refresh = now
            self.grid.refresh_previews()

    def _on_import_finished(self, result) -> None:
        if self._closed:
            return
        self.progress.hide()
        if isinstance(result, Exception):
            self.status_text.setText(f"Import failed: {result}")
            return
        s = result
        skipped = sum(s.skipped.values())
        self.status_text.setText(
            f"Imported {s.files_seen} files: {s.added} new, {s.unchanged} unchanged, "
            f"{skipped} skipped ({s.seconds:.1f} s).")
        self.refresh_patients()
        self.refresh_problems()
        if self.patient_key:
            self._refresh_screen()
        self.score_library()

    def _refresh_screen(self) -> None:
        """The woman on screen after an import: new exams re-hang; changed scores (an input
        file changed: stale) are redrawn; previews made since are drawn."""
        exams, changed = self.session.refresh_screen()
        self._set_identity_warning()  # an import may have brought another woman's images
        if changed:
            self.grid.refresh_exams(exams)
            self._set_chart()  # her new exam on the chart and in the metrics too
            self._refresh_metrics()
            return
        redraw = False
        for e in exams:
            shown = self.grid.exam(e.exam_key)
            if shown is not None and shown.score != e.score:
                self.grid.update_score(e.exam_key, e.score)
                redraw = True
        if redraw:
            self._set_chart()
        self.grid.refresh_previews()

    def refresh_problems(self) -> None:
        rows = self.session.problems()
        self.problems.set_problems(rows)
        n = len(rows)
        self.problems_button.setText(f"⚠ {n} problem{'' if n == 1 else 's'}" if rows
                                     else "No problems")

    def dragEnterEvent(self, ev):
        if ev.mimeData().hasUrls():
            ev.acceptProposedAction()

    def dropEvent(self, ev):
        paths = [u.toLocalFile() for u in ev.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.start_import(paths)
            ev.acceptProposedAction()

    # ---------------------------------------------------------------- export

    def export_figure(self, path: str | None = None, deidentify: bool | None = None):
        """File → Export figure: delegated to qt.export when it is installed.

        A figure written straight to `path` is de-identified unless `deidentify` is False, as in
        the dialog and the clipboard: an identified figure must be asked for."""
        try:
            from mamview.qt import export
        except ImportError:
            QMessageBox.information(self, "Export", "Export is not available in this build.")
            return None
        dialog = getattr(export, "export_dialog", None)
        if path is None and dialog is not None:
            return dialog(self)
        return export.export_figure(self, path, deidentify=deidentify is not False)

    def copy_figure(self):
        try:
            from mamview.qt import export
        except ImportError:
            return None
        copy = getattr(export, "copy_to_clipboard", None)
        return copy(self) if copy else None

    # ---------------------------------------------------------------- dialogs

    def open_settings(self) -> None:
        from mamview.qt.settings_dialog import SettingsDialog

        dlg = SettingsDialog(self.lib, self.settings, self)
        if dlg.exec():
            self.apply_settings(dlg.save())

    def apply_settings(self, new: settings_mod.Settings) -> None:
        """Use changed settings; a new model or device restarts the inference service."""
        node_fields = ("node_enabled", "node_ae_title", "node_port", "node_allowed_aes",
                       "node_allowed_hosts", "node_allow_any", "pacs_nodes")
        node_changed = any(getattr(new, f) != getattr(self.settings, f) for f in node_fields)
        screens_changed = bool(new.second_screen) != bool(self.settings.second_screen)
        # every request made before a restart is superseded: the bridge drops its results
        restarted = self.session.set_settings(new)
        if node_changed:
            self.set_node_running(False)
            self.set_node_running(new.node_enabled)
        if restarted:
            self.model_text.setText(self.session.model_status())
            self.score_library()
        act = self.actions_by_name["second_screen"]  # the View menu shows the same setting
        act.blockSignals(True)
        act.setChecked(bool(new.second_screen))
        act.blockSignals(False)
        if screens_changed:
            self.apply_screens()
        self.refresh_patients()
        if self.patient_key:
            self.show_patient(self.patient_key)

    def shortcuts_text(self) -> str:
        """Every key of the window (F1), in two columns so that the list fits on a screen."""
        cells = [f"<td><b>{k}</b></td><td>{t}</td>" for _, k, t in ALL_SHORTCUTS]
        half = (len(cells) + 1) // 2
        rows = "".join(f"<tr>{cells[i]}<td width=24></td>"
                       f"{cells[i + half] if i + half < len(cells) else ''}</tr>"
                       for i in range(half))
        return ("<table cellspacing=3>" + rows + "</table><p>Mouse: left-drag pans, wheel zooms, "
                "right-drag sets window/level (horizontal: width, vertical: level). Thumbnails: "
                "click = current exam, right-click = prior. Chart: click a point to hang that "
                "exam.</p>")

    def show_shortcuts(self) -> None:
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", self.shortcuts_text(),
                          QMessageBox.StandardButton.Ok, self)
        box.setStyleSheet("QLabel { min-width: 740px; }")  # two columns side by side
        box.exec()

    def show_about(self) -> None:
        QMessageBox.about(self, "About mamview", (
            f"<p><b>mamview {mamview.__version__}</b>: serial screening mammograms with an AI "
            "risk trajectory.</p>"
            f"<p>Model: {self.model_label}.</p><p>Risk scores and change metrics are for research "
            "use, are not validated for clinical decisions and are not a diagnosis.</p>"))

    # ---------------------------------------------------------------- shutdown

    def closeEvent(self, ev):
        self.shutdown()
        super().closeEvent(ev)

    def shutdown(self) -> None:
        """Stop workers before the widgets go (no event may arrive at a deleted object)."""
        if self._closed:
            return
        self._closed = True
        self._score_timer.stop()
        if self.chart_window is not None:
            self.chart_window.close()
        self.node_ctl.stop()
        self.session.stop_service()
        self.bridge.shutdown()
        from mamview.core.services import decode as decode_worker

        decode_worker.shutdown()
        self.session.close()
