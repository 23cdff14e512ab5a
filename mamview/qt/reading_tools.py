"""The reading tools on the hanging's tiles: distance and arrow modes, key images, hiding the text
overlays, clearing marks, and one risk caption per exam of a hanging.

`install_tools(window, grid)` adds the keys (`TOOL_SHORTCUTS`) to the window as QActions and
follows the grid: each time it has hung its tiles (`tilesDrawn`) the tools give every tile the
current mode, the overlay state, whether it carries its exam's risk caption, and its image's
marks from the cache (`reads.annotations`, keyed by SOP Instance UID, so a mark shows in every
layout that hangs the image). A mark drawn on a tile is written to the cache here
(`writes.add_annotation`) on the GUI thread's connection and handed back to every tile that
shows the same image.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QKeySequence

from mamview.core.cache import reads, writes

# (action name, key, description) — listed under F1 with the window's SHORTCUTS
TOOL_SHORTCUTS = [
    ("tool_distance", "D", "Distance tool: left-drag on an image measures in mm (Esc leaves)"),
    ("tool_arrow", "A", "Arrow tool: left-drag from tail to tip (Esc leaves)"),
    ("key_image", "K", "Mark/unmark the image under the mouse as a key image"),
    ("overlays", "H", "Hide/show the text overlays (captions, risk, window/zoom readout)"),
    ("clear_marks", "Shift+Delete", "Clear the marks of the image under the mouse"),
    ("clear_exam_marks", "Ctrl+Shift+Delete", "Clear the marks of every image of that exam"),
    ("leave_tool", "Esc", "Leave the distance/arrow tool (left-drag pans again)"),
]
TOOL_KEYS = {name: key for name, key, _ in TOOL_SHORTCUTS}


def score_carriers(tiles) -> list:
    """The tiles that carry their exam's risk caption: the first tile of each exam in the
    hanging (4-up: one; 8-up: one for the current, one for the prior; timeline: each exam)."""
    seen, out = set(), []
    for t in tiles:
        if t.exam_key and t.exam_key not in seen:
            seen.add(t.exam_key)
            out.append(t)
    return out


class ReadingTools(QObject):
    """The tool state of one window's hanging, and the cache writes of its marks."""

    def __init__(self, window, grid):
        super().__init__(window)
        self.window, self.grid = window, grid
        self.tool = ""
        self.overlays_visible = True
        self.actions: dict[str, QAction] = {}
        grid.tilesDrawn.connect(self.refresh)

    # ---------------------------------------------------------------- following the grid

    def refresh(self) -> None:
        """Hand every tile of the hanging its mode, overlays, caption role and marks."""
        tiles = list(self.grid.tiles)
        carriers = {id(t) for t in score_carriers(tiles)}
        for t in tiles:
            if getattr(t, "_reading_tools", None) is not self:  # a new tile (ids get reused)
                t.markDrawn.connect(self._on_mark_drawn)
                t._reading_tools = self
            t.set_tool(self.tool)
            t.set_show_score(id(t) in carriers)
            t.set_overlays_visible(self.overlays_visible)
        self._load_marks(tiles)

    def _load_marks(self, tiles) -> None:
        db = self.grid.db
        if db is None:
            return
        found = reads.annotations(db, [t.sop_uid for t in tiles if t.sop_uid])
        for t in tiles:
            t.set_marks(found.get(t.sop_uid, []))

    def _tiles_of(self, uid: str) -> list:
        return [t for t in self.grid.tiles if uid and t.sop_uid == uid]

    # ---------------------------------------------------------------- which tile

    def target_tile(self):
        """The tile under the mouse, else the one last clicked, else the first with an image."""
        tiles = [t for t in self.grid.tiles if t.sop_uid]
        for t in tiles:
            if t.hovered:
                return t
        active = self.grid.active_tile
        if active is not None and active in tiles:
            return active
        return tiles[0] if tiles else None

    # ---------------------------------------------------------------- actions

    def set_tool(self, tool: str) -> None:
        """'distance', 'arrow' or '' (pan); pressing a mode's key again leaves it."""
        self.tool = tool if tool in ("distance", "arrow") and tool != self.tool else ""
        for t in self.grid.tiles:
            t.set_tool(self.tool)
        for name, mode in (("tool_distance", "distance"), ("tool_arrow", "arrow")):
            if name in self.actions:
                self.actions[name].setChecked(self.tool == mode)
        self._say({"distance": "Distance tool: left-drag to measure · Esc leaves",
                   "arrow": "Arrow tool: left-drag from tail to tip · Esc leaves"}.get(
                       self.tool, "Left-drag pans"))

    def leave_tool(self) -> None:
        if self.tool:
            self.set_tool(self.tool)

    def toggle_overlays(self) -> None:
        self.set_overlays_visible(not self.overlays_visible)

    def set_overlays_visible(self, on: bool) -> None:
        self.overlays_visible = bool(on)
        for t in self.grid.tiles:
            t.set_overlays_visible(self.overlays_visible)
        if "overlays" in self.actions:
            self.actions["overlays"].setChecked(self.overlays_visible)

    def toggle_key_image(self, tile=None) -> bool | None:
        """Mark the tile's image as a key image, or unmark it; returns the new state."""
        tile = tile or self.target_tile()
        if tile is None or not tile.sop_uid or self.grid.db is None:
            return None
        on = not tile.key_image
        writes.set_key_image(self.grid.db, tile.sop_uid, tile.exam_key, on)
        self._load_marks(self._tiles_of(tile.sop_uid))
        self._say(f"{tile.label}: {'key image' if on else 'no longer a key image'}")
        return on

    def clear_image(self, tile=None) -> int:
        """Forget the marks (and key-image flag) of the tile's image; returns how many."""
        tile = tile or self.target_tile()
        if tile is None or not tile.sop_uid or self.grid.db is None:
            return 0
        n = writes.clear_annotations(self.grid.db, sop_uid=tile.sop_uid)
        self._load_marks(self._tiles_of(tile.sop_uid))
        self._say(f"{tile.label}: {n} mark{'s' if n != 1 else ''} cleared")
        return n

    def clear_exam(self, tile=None) -> int:
        """Forget the marks of every image of the tile's exam (current exam without a tile)."""
        tile = tile or self.target_tile()
        exam_key = tile.exam_key if tile is not None else self.grid.current_key
        if not exam_key or self.grid.db is None:
            return 0
        n = writes.clear_annotations(self.grid.db, exam_key=exam_key)
        self._load_marks(list(self.grid.tiles))
        self._say(f"{n} mark{'s' if n != 1 else ''} of the exam cleared")
        return n

    def _on_mark_drawn(self, tile, mark: dict) -> None:
        if not tile.sop_uid or self.grid.db is None:
            return
        writes.add_annotation(self.grid.db, tile.sop_uid, tile.exam_key, mark["kind"],
                              mark["points"], mark.get("spacing"),
                              mark.get("spacing_source") or "")
        self._load_marks(self._tiles_of(tile.sop_uid))

    def _say(self, text: str) -> None:
        bar = getattr(self.window, "statusBar", None)
        if callable(bar):
            bar().showMessage(text, 4000)


def install_tools(window, grid) -> ReadingTools:
    """Add the reading tools' keys to `window` and follow `grid`'s tiles; returns the tools
    (also kept as `window.reading_tools`). Escape acts only while the focus is in the hanging,
    so that it stays free for a search box elsewhere in the window."""
    tools = ReadingTools(window, grid)
    slots = {
        "tool_distance": lambda: tools.set_tool("distance"),
        "tool_arrow": lambda: tools.set_tool("arrow"),
        "key_image": lambda: tools.toggle_key_image(),
        "overlays": tools.toggle_overlays,
        "clear_marks": lambda: tools.clear_image(),
        "clear_exam_marks": lambda: tools.clear_exam(),
        "leave_tool": tools.leave_tool,
    }
    for name, key, text in TOOL_SHORTCUTS:
        act = QAction(text, window)
        act.setObjectName(name)
        act.setShortcut(QKeySequence(key))
        act.setToolTip(f"{text} ({key})")
        if name in ("tool_distance", "tool_arrow", "overlays"):
            act.setCheckable(True)
            act.setChecked(name == "overlays")
        act.triggered.connect(slots[name])
        if name == "leave_tool":
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            grid.addAction(act)
        else:
            act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            window.addAction(act)
        tools.actions[name] = act
    by_name = getattr(window, "actions_by_name", None)
    if isinstance(by_name, dict):
        for name, act in tools.actions.items():
            by_name.setdefault(name, act)
    window.reading_tools = tools
    tools.refresh()
    return tools
