"""The hanging area: a thumbnail strip of the woman's exams and a grid of image tiles laid out
by a screening hanging protocol.

The protocols ('4up', '8up', 'timeline') are decided in `mamview.core.hanging`, which the exported
figure uses too: this widget only puts a tile in each of the plan's cells (right breast on the
left of the screen, left on the right, chest walls back to back; the previews are already turned
for this by the display pipeline). Which image a cell hangs when an additional view is chosen
(E / a click) or in the implant hanging (Shift+I) is decided there too (`place_views`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (QGridLayout, QHBoxLayout, QLabel, QScrollArea, QToolButton,
                               QVBoxLayout, QWidget)

from mamview.core import hanging, previews
from mamview.core.hanging import LAYOUTS, VIEW_ORDER, AdditionalView, Hanging
from mamview.core.services.decode import render_full_elsewhere
from mamview.qt.image_tile import ImageTile, gray_image
from mamview.core.domain import (STALE_REASON, STANDARD_VIEWS, ScoredExam, ScoreState,
                                 domain_label, domain_parts, join_domain, view_label)
from mamview.core.worklist import ExamInfo, preview_path


class PreviewCache:
    """Decoded previews kept in memory across patients (least recently used out first)."""

    def __init__(self, budget_bytes: int = 384 * 2**20):
        self.budget = budget_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, uid: str) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(uid)
            if arr is not None:
                self._items.move_to_end(uid)
            return arr

    def __contains__(self, uid: str) -> bool:
        with self._lock:
            return uid in self._items

    def put(self, uid: str, arr: np.ndarray) -> None:
        with self._lock:
            old = self._items.pop(uid, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[uid] = arr
            self._bytes += arr.nbytes
            while self._bytes > self.budget and len(self._items) > 1:
                _, gone = self._items.popitem(last=False)
                self._bytes -= gone.nbytes

    def discard(self, uid: str) -> None:
        with self._lock:
            old = self._items.pop(uid, None)
            if old is not None:
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


# decodes previews for the GUI thread, which waits for them (a few ms each, in parallel)
_PREVIEW_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mamview-preview")


def score_text(score: ScoredExam, model_short: str) -> str:
    """What a tile says about the exam's score."""
    if score.five_year_percent is not None:
        outside = " · outside domain" if score.domain else ""
        return f"5-yr risk {score.five_year_percent:.1f}% · {model_short}{outside}"
    if score.state == ScoreState.UNSCORABLE:
        return f"not scored: {score.reason}"
    # a stale score is never shown with its old number
    return (score.reason or STALE_REASON) if score.state == ScoreState.STALE else "scoring…"


def exam_domain(ex: ExamInfo) -> str:
    """Why the images hung for an exam (or those its score was computed from) are outside the
    model's validated domain; '' when inside."""
    shown = [ex.image_for(view_label(s.value, v.value)) for s, v in STANDARD_VIEWS]
    parts = [im.get("domain") or "" for im in shown if im is not None]
    return join_domain(parts + [ex.score.domain if ex.score is not None else ""])


def shown_uids(ex: ExamInfo) -> set[str]:
    """The images an exam's standard cells hang (one per view)."""
    rows = (ex.image_for(v) for v in VIEW_ORDER)
    return {r["sop_instance_uid"] for r in rows if r is not None}


def exam_extras(ex: ExamInfo) -> list[AdditionalView]:
    """The exam's additional views: every present image its standard cells do not hang."""
    return hanging.additional_views(ex.images, shown_uids(ex))


def thumb_score_text(score: ScoredExam) -> str:
    """What a thumbnail says about the exam's score (short)."""
    if score.five_year_percent is not None:
        return f"{score.five_year_percent:.1f}%"
    if score.state == ScoreState.UNSCORABLE:
        return "n/a"
    return "↻ recomputing" if score.state == ScoreState.STALE else "…"


class ExamGrid(QWidget):
    """Thumbnail strip + hanging grid for one woman."""

    selectionChanged = Signal(object, object)  # current exam_key, prior exam_key (or None)
    tilesDrawn = Signal()  # every tile of the layout has its pixels (or its message)
    statusMessage = Signal(str)  # one line for the status bar (e.g. why full resolution failed)

    def __init__(self, run_task: Callable, parent=None):
        super().__init__(parent)
        self._run_task = run_task  # Bridge.run_task: decodes happen on a worker
        self.lib = None
        self.db = None
        self.exams: list[ExamInfo] = []
        self.model_short = ""
        self.layout_key = "4up"
        self.timeline_view = "LMLO"
        self.current_key: str | None = None
        self.prior_key: str | None = None
        self.sync = True
        self.magnifier = False
        self.preset_index: int | None = None
        # flicker (X): the current exam's tiles show the prior (and in 8-up the prior's show the
        # current) with the same zoom, pan and window; any change of exam ends it
        self.flicker = False
        # an additional view of the current exam hung in its standard view's cell (None: none)
        self.extra_uid: str | None = None
        # the implant hanging (Shift+I): the exams' implant-displaced views in place of the
        # standard ones; a new woman, a new current exam or the timeline end it
        self.implant = False
        self._extras_shown: tuple = ()
        # bumps on every patient change: a full-resolution decode (a preview-decode task of
        # this widget, not a score) finishing for the previous woman is dropped. Scores are
        # never filtered here: stale score results are dropped in qt.bridge only.
        self._decode_token = 0
        self._preview_cache = PreviewCache()
        self._preview_paths: dict = {}  # looked up on the GUI thread (its db connection)
        self._syncing = False
        self.tiles: list[ImageTile] = []
        self.active_tile: ImageTile | None = None

        self.strip = QWidget()
        self._strip_layout = QHBoxLayout(self.strip)
        self._strip_layout.setContentsMargins(4, 2, 4, 2)
        self._strip_layout.setSpacing(4)
        self._strip_layout.addStretch(1)
        strip_scroll = QScrollArea()
        self.strip_scroll = strip_scroll
        strip_scroll.setWidget(self.strip)
        strip_scroll.setWidgetResizable(True)
        strip_scroll.setFixedHeight(52)
        strip_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        strip_scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._thumbs: dict[str, QToolButton] = {}

        self.grid_host = QWidget()
        self.grid_host.setStyleSheet("background: black;")
        self._grid = QGridLayout(self.grid_host)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setSpacing(3)

        # the current exam's additional views, beside the hanging (hidden when it has none)
        self.extras_bar = QWidget()
        self._extras_layout = QVBoxLayout(self.extras_bar)
        self._extras_layout.setContentsMargins(3, 3, 3, 3)
        self._extras_layout.setSpacing(4)
        self._extras_layout.addStretch(1)
        self.extras_scroll = QScrollArea()
        self.extras_scroll.setWidget(self.extras_bar)
        self.extras_scroll.setWidgetResizable(True)
        self.extras_scroll.setFixedWidth(124)
        self.extras_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.extras_scroll.hide()
        self._extra_buttons: dict[str, QToolButton] = {}
        hang_row = QHBoxLayout()
        hang_row.setContentsMargins(0, 0, 0, 0)
        hang_row.setSpacing(0)
        hang_row.addWidget(self.grid_host, 1)
        hang_row.addWidget(self.extras_scroll)

        self.message = QLabel("")
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setStyleSheet("color: #999; font-size: 15px; background: black;")
        self.message.setWordWrap(True)

        # the hanging takes the keyboard (digits change the layout, never a search box)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(strip_scroll)
        lay.addLayout(hang_row, 1)
        lay.addWidget(self.message, 1)
        self.message.hide()

    # ---------------------------------------------------------------- data

    def set_patient(self, lib, db, exams: list[ExamInfo], model_short: str,
                    current_key: str | None = None) -> None:
        """Hang a woman's exams: the newest as current, the one before as prior."""
        self._decode_token += 1
        self.lib, self.db = lib, db
        self.exams = list(exams)
        self.model_short = model_short
        self._preview_paths.clear()
        keys = [e.exam_key for e in self.exams]
        cur = current_key if current_key in keys else (keys[-1] if keys else None)
        self.current_key = cur
        self.flicker = False
        self.extra_uid = None
        self.implant = False
        self.prior_key = self._default_prior(cur)
        self._rebuild_strip()
        self._hang()
        self.selectionChanged.emit(self.current_key, self.prior_key)

    def clear(self, message: str = "") -> None:
        """No woman on screen."""
        self._decode_token += 1
        self.exams, self.current_key, self.prior_key = [], None, None
        self.flicker = False
        self.extra_uid = None
        self.implant = False
        self._rebuild_strip()
        self._clear_tiles()
        self.show_message(message)

    def show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
        self.grid_host.setVisible(not text)
        if text:
            self.extras_scroll.hide()

    def exam(self, key: str | None) -> ExamInfo | None:
        return next((e for e in self.exams if e.exam_key == key), None)

    def _index(self, key: str | None) -> int:
        keys = [e.exam_key for e in self.exams]
        return keys.index(key) if key in keys else -1

    def _default_prior(self, current: str | None) -> str | None:
        i = self._index(current)
        return self.exams[i - 1].exam_key if i > 0 else None

    def update_score(self, exam_key: str, score: ScoredExam) -> None:
        """A live result: refresh the thumbnail and the tiles of that exam."""
        ex = self.exam(exam_key)
        if ex is None:
            return
        ex.score = score
        self._update_thumb(ex)
        for t in self.tiles:
            if t.exam_key == exam_key:
                t.set_score_text(score_text(score, self.model_short))

    def refresh_previews(self) -> None:
        """Previews were made since the hanging was drawn: draw the tiles that lacked one."""
        if any(t.array is None and t.image_row is not None for t in self.tiles):
            for t in self.tiles:  # a failed earlier read must not stick
                if t.array is None and t.image_row is not None:
                    self._preview_cache.discard(t.image_row["sop_instance_uid"])
            self._hang()

    def refresh_exams(self, exams: list[ExamInfo]) -> None:
        """The woman's exams changed (an import added one): keep the choice where possible."""
        cur, prior = self.current_key, self.prior_key
        self.set_patient(self.lib, self.db, exams, self.model_short, cur)
        if prior and self.exam(prior) and prior != self.current_key and prior != self.prior_key:
            self.set_prior(prior)

    # ---------------------------------------------------------------- choosing exams

    def set_current(self, key: str, prior: str | None | bool = True) -> None:
        """Make `key` current; `prior=True` picks the exam before it unless the prior still fits."""
        if self.exam(key) is None:
            return
        self.current_key = key
        self.flicker = False
        self.extra_uid = None
        self.implant = False
        if prior is True:
            if self.prior_key is None or self._index(self.prior_key) >= self._index(key):
                self.prior_key = self._default_prior(key)
        else:
            self.prior_key = prior or None
        self._rebuild_strip()
        self._hang()
        self.selectionChanged.emit(self.current_key, self.prior_key)

    def set_prior(self, key: str | None) -> None:
        if key is not None and (self.exam(key) is None or key == self.current_key):
            return
        self.prior_key = key
        self.flicker = False
        self._rebuild_strip()
        self._hang()
        self.selectionChanged.emit(self.current_key, self.prior_key)

    def step_prior(self, older: bool) -> None:
        """Next (older) or previous (newer) prior, skipping the current exam."""
        if not self.exams:
            return
        i = self._index(self.prior_key)
        if i < 0:
            i = self._index(self.current_key)
        step = -1 if older else 1
        j = i + step
        while 0 <= j < len(self.exams) and self.exams[j].exam_key == self.current_key:
            j += step
        if 0 <= j < len(self.exams):
            self.set_prior(self.exams[j].exam_key)

    def step_current(self, older: bool) -> None:
        """Hang the exam a year before (older) or after the current one as current. The prior
        keeps its distance to the current exam (the one before the new current when that
        distance runs off the start)."""
        i = self._index(self.current_key)
        j = i + (-1 if older else 1)
        if i < 0 or not 0 <= j < len(self.exams):
            return
        gap = i - self._index(self.prior_key) if self.prior_key is not None else 1
        gap = gap if gap > 0 else 1
        k = j - gap
        prior = self.exams[k].exam_key if k >= 0 else self._default_prior(self.exams[j].exam_key)
        self.set_current(self.exams[j].exam_key, prior)

    def toggle_flicker(self) -> bool:
        """Flicker (toggle): the current exam's tiles show the prior exam, the same view with the
        same zoom, pan and window, and back on the next call. 4-up and 8-up only (8-up swaps
        the two rows); needs a prior. Returns whether the prior is now shown."""
        if self.prior_key is None or self.layout_key not in ("4up", "8up") or not self.tiles:
            self.flicker = False
            return False
        self.flicker = not self.flicker
        views = [(t.normalized_range(), t._fitted) for t in self.tiles]
        plan = self.plan()
        self._load_previews(plan)
        for t, cell, (rng, fitted) in zip(self.tiles, plan.cells, views):
            self._fill(t, cell)
            if rng is not None and not fitted:
                t.set_normalized_range(rng, mirror=False)
        self.tilesDrawn.emit()
        return self.flicker

    def shown_exam_key(self, cell: hanging.Cell) -> str | None:
        """The exam a cell shows now: the plan's, or the other of current/prior in flicker."""
        if self.flicker and cell.exam_key in (self.current_key, self.prior_key):
            return self.prior_key if cell.exam_key == self.current_key else self.current_key
        return cell.exam_key

    # ---------------------------------------------------------------- additional views

    def extras(self) -> list[AdditionalView]:
        """The current exam's additional views (spot, magnification, ML, repeats …)."""
        ex = self.exam(self.current_key)
        return exam_extras(ex) if ex is not None else []

    def hang_extra(self, uid: str | None) -> None:
        """Hang an additional view of the current exam in its standard view's cell (the same
        side and view family); the same one again, or None, hangs the standard view back."""
        extra = next((e for e in self.extras() if e.sop_instance_uid == uid), None)
        if extra is None or not extra.slot or uid == self.extra_uid:
            uid = None
        if self.layout_key == "timeline":
            uid = None  # the timeline shows one standard view per exam
        self.extra_uid = uid
        self.flicker = False
        self._hang()

    def cycle_extra(self) -> str:
        """E: the next additional view of the current exam, after the last the standard
        hanging again. Returns a line for the status bar."""
        hangable = [e for e in self.extras() if e.slot]
        if not hangable:
            return "This exam has no additional views."
        if self.layout_key == "timeline":
            return "Additional views hang in 4-up and 8-up (1 or 2)."
        uids = [e.sop_instance_uid for e in hangable]
        i = uids.index(self.extra_uid) + 1 if self.extra_uid in uids else 0
        self.hang_extra(uids[i] if i < len(uids) else None)
        shown = next((e for e in hangable if e.sop_instance_uid == self.extra_uid), None)
        return (f"Additional view {i + 1}/{len(uids)}: {shown.text} (in the {shown.slot} cell; "
                "E: next)") if shown else "Standard views"

    def toggle_implant(self) -> str:
        """Shift+I: the implant hanging (the implant-displaced views in their standard views'
        cells) and back. Returns a line for the status bar; an exam without ID views keeps
        its hanging."""
        if self.implant:
            self.implant = False
            self.extra_uid = None
            self._hang()
            return "Standard views (Shift+I: implant-displaced views again)"
        ids = hanging.implant_views(self.extras())
        if not ids:
            return "This exam has no implant-displaced (ID) views."
        if self.layout_key == "timeline":
            return "The implant hanging works in 4-up and 8-up (1 or 2)."
        self.implant = True
        self.extra_uid = None
        self.flicker = False
        self._hang()
        lacking = [v for v in VIEW_ORDER if v not in ids]
        return ("Implant hanging: implant-displaced (ID) views of " + ", ".join(
            v for v in VIEW_ORDER if v in ids)
            + (f"; no ID view of {', '.join(lacking)} (standard shown)" if lacking else "")
            + " · Shift+I returns")

    def _cell_row(self, ex: ExamInfo, cell: hanging.Cell) -> dict | None:
        """The image row a cell hangs: its additional view, else the exam's standard one."""
        if cell.image_uid and not self.flicker and ex.exam_key == cell.exam_key:
            row = next((im for im in ex.images if im["sop_instance_uid"] == cell.image_uid), None)
            if row is not None:
                return row
        return ex.image_for(cell.view)

    def _rebuild_extras(self) -> None:
        extras = self.extras() if self.layout_key != "timeline" else []
        hung = {c.image_uid for c in self.plan().cells if c.image_uid} if not self.flicker else set()
        state = (self.current_key, tuple(e.sop_instance_uid for e in extras), frozenset(hung))
        if state == self._extras_shown:
            return
        self._extras_shown = state
        for b in self._extra_buttons.values():
            b.setParent(None)
            b.deleteLater()
        self._extra_buttons.clear()
        ex = self.exam(self.current_key)
        for e in extras:
            b = QToolButton()
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextUnderIcon)
            b.setFixedWidth(110)
            # an implant-displaced view is marked 'ID', as its tile is
            b.setText(f"{e.label} ID\nimplant displaced" if e.implant_displaced
                      else e.text.replace(" ", "\n", 1))
            b.setCheckable(True)
            b.setChecked(e.sop_instance_uid in hung)
            b.setEnabled(bool(e.slot))
            b.setToolTip(f"{e.text}: additional view of this exam\n"
                         + (f"Click (or E): hang it in the {e.slot} cell; again: back"
                            if e.slot else "no standard cell fits it (side or view unknown)")
                         + ("\nShift+I: the implant hanging (every ID view in its cell)"
                            if e.implant_displaced else ""))
            row = next((im for im in (ex.images if ex else []) if im["sop_instance_uid"]
                        == e.sop_instance_uid), None)
            arr = self._preview(row) if row is not None else None
            if arr is not None:
                b.setIcon(QIcon(QPixmap.fromImage(gray_image(arr)).scaled(
                    96, 96, Qt.AspectRatioMode.KeepAspectRatio,
                    Qt.TransformationMode.SmoothTransformation)))
                b.setIconSize(QSize(96, 96))
            rim = "#3fa7a0" if e.implant_displaced else "#a07000"
            b.setStyleSheet("QToolButton { color: #ddd; background: #1b1b1b; border: 1px solid "
                            f"{rim}; border-radius: 3px; font-size: 11px; padding: 2px; }} "
                            "QToolButton:checked { border: 2px solid #2d6cdf; }")
            b.clicked.connect(lambda _=False, u=e.sop_instance_uid: self.hang_extra(u))
            self._extras_layout.insertWidget(self._extras_layout.count() - 1, b)
            self._extra_buttons[e.sop_instance_uid] = b
        self.extras_scroll.setVisible(bool(extras))

    # ---------------------------------------------------------------- strip

    def _rebuild_strip(self) -> None:
        for b in self._thumbs.values():
            b.setParent(None)
            b.deleteLater()
        self._thumbs.clear()
        for ex in self.exams:
            b = QToolButton()
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            b.setMinimumWidth(96)
            b.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            b.clicked.connect(lambda _=False, k=ex.exam_key: self.set_current(k))
            b.customContextMenuRequested.connect(lambda _p, k=ex.exam_key: self.set_prior(k))
            self._strip_layout.insertWidget(self._strip_layout.count() - 1, b)
            self._thumbs[ex.exam_key] = b
            self._update_thumb(ex)
        self._strip_layout.activate()
        self.show_current_thumb()
        QTimer.singleShot(0, self.show_current_thumb)  # again once the strip is laid out

    def resizeEvent(self, ev):
        super().resizeEvent(ev)
        QTimer.singleShot(0, self.show_current_thumb)  # a narrower window keeps it in view

    def show_current_thumb(self) -> None:
        """Scroll the strip so the current exam's thumbnail is in view (a narrow screen)."""
        b = self._thumbs.get(self.current_key) if self.current_key else None
        if b is not None:
            self.strip_scroll.ensureWidgetVisible(b, 8, 0)

    def _update_thumb(self, ex: ExamInfo) -> None:
        b = self._thumbs.get(ex.exam_key)
        if b is None:
            return
        role = "current" if ex.exam_key == self.current_key else (
            "prior" if ex.exam_key == self.prior_key else "")
        val = thumb_score_text(ex.score)
        domain = exam_domain(ex)
        # the first category in capitals ('DIGITISED FILM'), the whole label in the tooltip
        mark = f" · ⚠ {domain_parts(domain)[0].upper()}" if domain else ""
        extras = exam_extras(ex)
        more = f" · +{len(extras)}" if extras else ""  # additional views: shown beside the hanging
        if any(e.implant_displaced for e in extras):
            more += " ID"  # implant-displaced views: Shift+I hangs them
        b.setText(f"{ex.date_text}{mark}\n{val}{more}" + (f" · {role}" if role else ""))
        b.setToolTip((domain_label(domain) + "\n" if domain else "")
                     + ("Additional views: " + ", ".join(e.text for e in extras) + "\n"
                        if extras else "")
                     + "Click: hang as current exam · right-click: use as prior")
        color = {"current": "#2d6cdf", "prior": "#8a6d1f"}.get(role, "#a07000" if domain else "#333")
        b.setStyleSheet(f"QToolButton {{ color: #ddd; background: #1b1b1b; border: 1px solid {color};"
                        f" border-radius: 3px; padding: 1px 6px; font-size: 11px; }}")

    # ---------------------------------------------------------------- hanging

    def set_layout(self, key: str) -> None:
        if key not in LAYOUTS:
            return
        if key == "timeline" and self.layout_key != "timeline":
            # the timeline opens on the view of the tile in use (else the last one used)
            t = self.active_tile
            if t is not None and t in self.tiles and t.label in VIEW_ORDER:
                self.timeline_view = t.label
        self.layout_key = key
        self.flicker = False
        if key == "timeline":
            self.extra_uid = None
            self.implant = False
        self._hang()

    def set_timeline_view(self, label: str) -> None:
        if label in VIEW_ORDER:
            self.timeline_view = label
            if self.layout_key == "timeline":
                self._hang()

    def cycle_timeline_view(self) -> None:
        i = VIEW_ORDER.index(self.timeline_view)
        self.set_timeline_view(VIEW_ORDER[(i + 1) % len(VIEW_ORDER)])

    def plan(self) -> Hanging:
        """The hanging on screen now, additional views in their cells (the same plan the
        exported figure draws)."""
        plan = hanging.plan(self.layout_key, [e.exam_key for e in self.exams], self.current_key,
                            self.prior_key, self.timeline_view)
        if not (self.implant or self.extra_uid):
            return plan  # the usual case: nothing more to look up when switching women
        keys = {c.exam_key for c in plan.cells if c.exam_key}
        extras_of = {k: exam_extras(ex) for k in keys if (ex := self.exam(k)) is not None}
        return hanging.place_views(plan, extras_of, self.extra_uid, self.implant)

    def _clear_tiles(self) -> None:
        for t in self.tiles:
            self._grid.removeWidget(t)
            t.setParent(None)
            t.deleteLater()
        self.tiles = []
        self.active_tile = None

    def _new_tile(self) -> ImageTile:
        t = ImageTile()
        t.rangeChangedByUser.connect(self._on_tile_range)
        t.windowChanged.connect(self._on_tile_window)
        t.needFullRes.connect(self._decode_full)
        t.activated.connect(self._on_activated)
        t.set_magnifier(self.magnifier)
        return t

    def _hang(self) -> None:
        if not self.exams:
            self._clear_tiles()
            return
        self.show_message("")
        plan = self.plan()
        if len(self.tiles) != len(plan.cells) or any(
                self._grid.getItemPosition(self._grid.indexOf(t))[:2] != (cell.row, cell.column)
                for t, cell in zip(self.tiles, plan.cells)):
            self._clear_tiles()
            for cell in plan.cells:
                t = self._new_tile()
                self._grid.addWidget(t, cell.row, cell.column)
                self.tiles.append(t)
            # every used row/column shares the space; ones left from a bigger layout get none
            # (a timeline of more than eight exams has more than four columns)
            for i in range(max(self._grid.rowCount(), plan.rows)):
                self._grid.setRowStretch(i, 1 if i < plan.rows else 0)
            for i in range(max(self._grid.columnCount(), plan.columns)):
                self._grid.setColumnStretch(i, 1 if i < plan.columns else 0)
        self._load_previews(plan)
        for t, cell in zip(self.tiles, plan.cells):
            self._fill(t, cell)
        for ex in self.exams:
            self._update_thumb(ex)
        self._rebuild_extras()
        self.tilesDrawn.emit()

    def _fill(self, tile: ImageTile, cell: hanging.Cell) -> None:
        key, label, lat = self.shown_exam_key(cell), cell.view, cell.laterality
        ex = self.exam(key)
        if ex is None:
            tile.set_content(label, lat, "", "", "", None, None, hanging.empty_message(cell, ()))
            return
        role = f"{cell.role} · " if self.layout_key == "8up" else ""
        if self.flicker:  # say plainly which exam the tile shows now
            role = ("PRIOR · " if key == self.prior_key else "CURRENT · ") + "flicker · "
        caption = f"{label}   {role}{ex.date_text}"
        row = self._cell_row(ex, cell)
        own = not self.flicker and key == cell.exam_key  # flicker shows the plain views
        narrow = self.layout_key == "8up"  # four tiles across: short words
        if own and cell.image_uid and cell.implant_displaced:
            caption = (f"{label} ID" + ("" if narrow else " · implant displaced")
                       + f"   {role}{ex.date_text}")
        elif own and cell.image_uid:  # an additional view in this cell: say so on the tile
            caption = f"{cell.shows} · ADDITIONAL VIEW   {role}{ex.date_text}"
        elif own and cell.note:  # the implant hanging lacks this view's ID view
            caption = (f"{label}" + (" (no ID)" if narrow else " · no ID view: standard")
                       + f"   {role}{ex.date_text}")
        if row is None:
            tile.set_content(label, lat, key, caption, "", None, None,
                             hanging.empty_message(cell, ()))
            return
        arr = self._preview(row)
        msg = "" if arr is not None else (
            f"{label}: {row['decode_error']}" if row.get("decode_error") else "preview pending…")
        tile.set_content(label, lat, key, caption, score_text(ex.score, self.model_short), row, arr,
                         msg)
        if self.preset_index is not None and arr is not None:
            self._decode_full(tile)

    def _load_previews(self, plan: Hanging) -> None:
        """Read the layout's missing previews in parallel (PNG decoding releases the GIL)."""
        rows = []
        for cell in plan.cells:
            ex = self.exam(self.shown_exam_key(cell))
            row = self._cell_row(ex, cell) if ex else None
            if row is not None and row["sop_instance_uid"] not in self._preview_cache:
                rows.append(row)
        if len(rows) > 1 and self.lib is not None and self.db is not None:
            for r in rows:
                self._preview_paths[r["sop_instance_uid"]] = preview_path(
                    self.lib, self.db, r["sop_instance_uid"])
            list(_PREVIEW_POOL.map(self._preview, rows))

    def _preview(self, row: dict) -> np.ndarray | None:
        uid = row["sop_instance_uid"]
        cached = self._preview_cache.get(uid)
        if cached is not None:
            return cached
        if self.lib is None or self.db is None:
            return None
        if uid in self._preview_paths:
            path = self._preview_paths[uid]
        else:
            path = preview_path(self.lib, self.db, uid)
        if path is None:
            return None
        try:
            arr = previews.load_png(path)
        except (OSError, ValueError):
            return None  # a damaged preview file: the import will remake it
        if arr.ndim != 2:
            arr = arr[..., 0]
        self._preview_cache.put(uid, arr)
        return arr

    def prefetch(self, exams: list[ExamInfo]) -> None:
        """Read another woman's current and prior previews into memory in the background
        (the next one in the worklist), so that moving on shows her at once."""
        if self.lib is None or self.db is None or not exams:
            return
        wanted = []
        for ex in exams[-2:]:
            for label in VIEW_ORDER:
                row = ex.image_for(label)
                if row is not None and row["sop_instance_uid"] not in self._preview_cache:
                    path = preview_path(self.lib, self.db, row["sop_instance_uid"])
                    if path is not None:
                        wanted.append((row["sop_instance_uid"], path))
        if not wanted:
            return
        cache = self._preview_cache

        def load():
            for uid, path in wanted:
                try:
                    arr = previews.load_png(path)
                except (OSError, ValueError):
                    continue
                cache.put(uid, arr if arr.ndim == 2 else arr[..., 0])

        self._run_task(load, lambda _result, _error: None)

    # ---------------------------------------------------------------- full resolution

    def _decode_full(self, tile: ImageTile) -> None:
        row = tile.image_row
        if row is None:
            return
        tile.full_res_requested = True
        token, uid, preset = self._decode_token, row["sop_instance_uid"], self.preset_index

        def done(result, error):
            if error is not None or result is None:
                # the preview stays; say why the full-resolution pixels did not come
                if error is not None and token == self._decode_token:
                    self.statusMessage.emit(f"Full resolution not shown: {error}")
                return
            if (token != self._decode_token or tile not in self.tiles or tile.image_row is None
                    or tile.image_row["sop_instance_uid"] != uid or self.preset_index != preset):
                return  # stale: another woman, layout or preset since
            tile.set_full_res(result, preset)

        self._run_task(lambda: render_full_elsewhere(row["path"], preset), done)

    def cycle_preset(self) -> str:
        """Next window preset from the files (rendered from the originals), then back to the
        preview's window. Returns a description for the status bar."""
        n = max((len(t.image_row.get("window_presets") or []) for t in self.tiles
                 if t.image_row), default=0)
        if n == 0:
            self.preset_index = None
            return "these images carry no window presets"
        nxt = 0 if self.preset_index is None else self.preset_index + 1
        self.preset_index = nxt if nxt < n else None
        for t in self.tiles:
            t.window_center, t.window_width = 127.5, 255.0
            if t.image_row is not None and t.array is not None:
                if self.preset_index is None:
                    t.full_res = t.full_res_requested = False
                self._decode_full(t)
        if self.preset_index is None:
            self._hang()
            return "window: as in the preview (first preset)"
        names = []
        for t in self.tiles:
            presets = (t.image_row or {}).get("window_presets") or []
            if self.preset_index < len(presets):
                p = presets[self.preset_index]
                names.append(p.get("explanation") or f"C {p.get('center')} W {p.get('width')}")
        return f"window preset {self.preset_index + 1}/{n}: {names[0] if names else ''}"

    # ---------------------------------------------------------------- interaction

    def _on_activated(self, tile: ImageTile) -> None:
        self.active_tile = tile

    def _on_tile_range(self, src: ImageTile) -> None:
        if not self.sync or self._syncing:
            return
        rng = src.normalized_range()
        if rng is None:
            return
        self._syncing = True
        try:
            for t in self.tiles:
                if t is not src:
                    t.set_normalized_range(rng, mirror=t.laterality != src.laterality)
        finally:
            self._syncing = False

    def _on_tile_window(self, src: ImageTile) -> None:
        if not self.sync or self._syncing:
            return
        self._syncing = True
        try:
            for t in self.tiles:
                if t is not src:
                    t.window_center, t.window_width = src.window_center, src.window_width
                    t.set_inverted(src.inverted)
        finally:
            self._syncing = False

    def set_sync(self, on: bool) -> None:
        self.sync = bool(on)

    def set_magnifier(self, on: bool) -> None:
        self.magnifier = bool(on)
        for t in self.tiles:
            t.set_magnifier(on)

    def toggle_invert(self) -> None:
        targets = self.tiles if self.sync or self.active_tile is None else [self.active_tile]
        on = not (targets[0].inverted if targets else False)
        self._syncing = True
        try:
            for t in targets:
                t.set_inverted(on)
        finally:
            self._syncing = False

    def fit_all(self) -> None:
        for t in self.tiles:
            t.fit()

    def one_to_one(self) -> None:
        targets = self.tiles if self.sync or self.active_tile is None else [self.active_tile]
        self._syncing = True
        try:
            for t in targets:
                t.one_to_one()
        finally:
            self._syncing = False

    def reset_all(self) -> None:
        self._syncing = True
        try:
            for t in self.tiles:
                t.reset()
        finally:
            self._syncing = False
