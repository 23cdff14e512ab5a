"""Screening hanging protocols, decided once for the screen (`qt.exam_grid`) and the exported
figure (`core.report` → `qt.export`), so that the two cannot disagree. Qt-free.

The images are already in hanging orientation (the display pipeline turns them): the right
breast is hung on the left of the screen with its chest wall on the right edge of its cell, the
left breast on the right with its chest wall on the left edge, so that a pair meets back to back.

  '4up'      current exam: RCC | LCC over RMLO | LMLO
  '8up'      the prior exam's four views above the current exam's, same view above same view;
             without a prior its row stays, empty ('no prior exam'), as on screen
  'timeline' one view (e.g. LMLO) of every exam, oldest to newest: one row up to four exams,
             then two rows

`place_views` then puts additional views in cells: one the reader chose (a spot, an ML …) and,
in the implant hanging, each exam's implant-displaced ('ID') views in their standard view's cell.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Collection, Mapping, Sequence

LAYOUTS = ("4up", "8up", "timeline")
LAYOUT_NAMES = {"4up": "Current 4-up", "8up": "Current vs prior", "timeline": "Timeline"}
VIEW_ORDER = ("RCC", "LCC", "RMLO", "LMLO")
FOUR_UP = (("RCC", "LCC"), ("RMLO", "LMLO"))
DEFAULT_TIMELINE_VIEW = "LMLO"
CURRENT, PRIOR, TIMELINE = "current", "prior", "timeline"
IMPLANT_DISPLACED = "implant displaced"  # the CID 4015 modifier of an ID (Eklund) view


@dataclass(frozen=True)
class Cell:
    """One cell of a hanging: which exam's view, where, and the edge its chest wall lies on."""

    row: int
    column: int
    exam_key: str | None  # None: the exam does not exist (8-up without a prior)
    view: str  # 'RCC' …
    role: str  # current | prior | timeline
    chest_wall: str  # 'right' (right breast) or 'left' (left breast): the image is pushed there
    # an additional view hung here instead of the exam's standard image of `view` (None: the
    # standard one), what it is ('RCC implant displaced'), and what the tile must say besides
    image_uid: str | None = None
    shows: str = ""
    note: str = ""  # e.g. 'no RCC ID view: standard shown' in the implant hanging

    @property
    def laterality(self) -> str:
        return self.view[0]

    @property
    def implant_displaced(self) -> bool:
        """The cell hangs an implant-displaced ('ID') view instead of the standard one."""
        return self.image_uid is not None and IMPLANT_DISPLACED in self.shows


@dataclass(frozen=True)
class Hanging:
    """A whole hanging: the layout, the exams it shows, and its cells in drawing order."""

    layout: str  # one of LAYOUTS
    timeline_view: str  # the timeline's view; DEFAULT_TIMELINE_VIEW in the other layouts
    current_key: str | None
    prior_key: str | None
    cells: tuple[Cell, ...] = ()
    implant: bool = False  # the implant hanging: ID views in place of the standard ones

    @property
    def rows(self) -> int:
        return 1 + max((c.row for c in self.cells), default=0)

    @property
    def columns(self) -> int:
        return 1 + max((c.column for c in self.cells), default=0)

    @property
    def spec(self) -> str:
        """The layout as one string: '4up', '8up' or 'timeline:LMLO'."""
        return f"timeline:{self.timeline_view}" if self.layout == TIMELINE else self.layout


def chest_wall_side(view: str) -> str:
    """The cell edge a view's chest wall is hung against: 'right' for the right breast."""
    return "right" if view.startswith("R") else "left"


def parse_layout(spec: str | None) -> tuple[str, str]:
    """'4up' / '8up' (or 'prior') / 'timeline' / 'timeline:RCC' → (layout, timeline view);
    anything unknown is the 4-up, an unknown view the default LMLO."""
    name = (spec or "4up").strip().lower()
    view = DEFAULT_TIMELINE_VIEW
    if name.startswith("timeline"):
        asked = name.split(":", 1)[1].strip().upper() if ":" in name else ""
        return TIMELINE, asked if asked in VIEW_ORDER else view
    if name in ("8up", "8-up", "prior"):
        return "8up", view
    return "4up", view


def plan(layout: str, exam_keys: Sequence[str], current_key: str | None = None,
         prior_key: str | None = None, timeline_view: str | None = None) -> Hanging:
    """The hanging of `layout` ('4up', '8up', 'timeline' or a 'timeline:RCC' spec) for a woman's
    exams, oldest first. The current exam defaults to the newest; a prior that is not one of
    her exams, or is the current one, counts as none."""
    name, spec_view = parse_layout(layout)
    view = timeline_view if timeline_view in VIEW_ORDER else spec_view
    if name != TIMELINE:
        view = DEFAULT_TIMELINE_VIEW  # meaningless here: equal hangings compare equal
    keys = list(exam_keys)
    current = current_key if current_key in keys else (keys[-1] if keys else None)
    prior = prior_key if prior_key in keys and prior_key != current else None
    if current is None:
        return Hanging(name, view, None, None)
    if name == TIMELINE:
        cells = _timeline(keys, view)
    elif name == "8up":
        cells = [_cell(0, c, prior, v, PRIOR) for c, v in enumerate(VIEW_ORDER)]
        cells += [_cell(1, c, current, v, CURRENT) for c, v in enumerate(VIEW_ORDER)]
    else:
        cells = [_cell(r, c, current, v, CURRENT)
                 for r, row in enumerate(FOUR_UP) for c, v in enumerate(row)]
    return Hanging(name, view, current, prior, tuple(cells))


def _timeline(keys: list[str], view: str) -> list[Cell]:
    n = len(keys)
    per_row = max(1, n if n <= 4 else (n + 1) // 2)
    return [_cell(i // per_row, i % per_row, k, view, TIMELINE) for i, k in enumerate(keys)]


def _cell(row: int, column: int, exam_key: str | None, view: str, role: str) -> Cell:
    return Cell(row, column, exam_key, view, role, chest_wall_side(view))


def empty_message(cell: Cell, views_present: Collection[str]) -> str:
    """What a cell with no image of its own says ('' when its exam has the view): the same
    words on screen and in the figure."""
    if cell.exam_key is None:
        return "no prior exam" if cell.role == PRIOR else "no exam"
    if cell.view not in views_present:
        return f"no {cell.view} in this exam"
    return ""


def present_views(images: Sequence[dict]) -> set[str]:
    """The view labels an exam can hang: its standard images that are present on disk (the
    rows of `reads.list_exams`, as `ExamInfo.image_for` chooses among them)."""
    return {im["label"] for im in images if im.get("is_standard") and not im.get("missing")}


# ---------------------------------------------------------------- additional views

# the standard view whose place an additional view may take: craniocaudal-like or oblique/lateral
CC_FAMILY = ("CC", "XCCL", "XCCM", "FB")


@dataclass(frozen=True)
class AdditionalView:
    """An image of the exam that the standard hanging does not show (spot, magnification,
    implant-displaced, ML/LM/XCCL…, or an earlier repeat of a standard view)."""

    sop_instance_uid: str
    label: str  # 'RCC', 'RXCCL', 'LML', 'B?' …
    text: str  # what it is, e.g. 'RCC spot compression' or 'LMLO earlier repeat'
    slot: str  # the standard view whose cell it is hung in ('RCC' …); '' if none fits
    modifiers: tuple[str, ...] = ()  # CID 4015 words ('implant displaced' …)

    @property
    def laterality(self) -> str:
        return self.label[:1]

    @property
    def implant_displaced(self) -> bool:
        """An implant-displaced (Eklund, 'ID') view: hung by the implant hanging."""
        return IMPLANT_DISPLACED in self.modifiers


def additional_views(images: Sequence[dict], shown_uids: Collection[str]) -> list[AdditionalView]:
    """The exam's present images (`reads.exam_images` rows) that are not among `shown_uids`
    (the ones its standard cells hang), in the rows' order; each with the standard cell it can
    be hung in, the same side and view family (an XCCL in the CC's, an ML in the MLO's)."""
    out = []
    for im in images:
        uid = im.get("sop_instance_uid")
        if not uid or uid in shown_uids or im.get("missing"):
            continue
        side, view = im.get("laterality") or "", im.get("view") or ""
        label = im.get("label") or f"{side or '?'}{view or '?'}"
        mods = [str(m) for m in im.get("view_modifiers") or []]
        if im.get("is_standard") and not mods:
            mods = ["earlier repeat"]
        family = "CC" if view in CC_FAMILY else "MLO"
        slot = f"{side}{family}" if side in ("R", "L") and view not in ("", "UNKNOWN") else ""
        out.append(AdditionalView(uid, label, " ".join([label] + mods), slot,
                                  tuple(m for m in mods if m != "earlier repeat")))
    return out


# ---------------------------------------------------------------- which image in which cell


def implant_views(extras: Sequence[AdditionalView]) -> dict[str, AdditionalView]:
    """The implant-displaced views of an exam by the standard cell they hang in ('RCC' → the
    RCC ID); of repeats the last listed (`reads.exam_images` order)."""
    return {e.slot: e for e in extras if e.implant_displaced and e.slot}


def place_views(hang: Hanging, extras_of: Mapping[str, Sequence[AdditionalView]],
                extra_uid: str | None = None, implant: bool = False) -> Hanging:
    """The hanging with additional views put in their cells: what the screen shows and the
    exported figure draws (one decision for both).

    `extras_of` gives each exam's additional views (`additional_views`). With `implant`, every
    4-up/8-up cell of an exam that has implant-displaced views hangs its ID view of that view
    instead of the standard image; a view without one keeps the standard image and its cell
    says so. `extra_uid` (one additional view of the current exam, chosen by the reader) then
    takes its own cell. The timeline shows standard views only."""
    if hang.layout == TIMELINE or not (implant or extra_uid):
        return replace(hang, cells=tuple(replace(c, image_uid=None, shows="", note="")
                                         for c in hang.cells), implant=False)
    chosen = next((e for e in extras_of.get(hang.current_key or "", ())
                   if e.sop_instance_uid == extra_uid and e.slot), None)
    cells = []
    for c in hang.cells:
        uid, shows, note = None, "", ""
        ids = implant_views(extras_of.get(c.exam_key, ())) if implant and c.exam_key else {}
        if ids:
            e = ids.get(c.view)
            if e is not None:
                uid, shows = e.sop_instance_uid, e.text
            else:
                note = f"no {c.view} ID view: standard shown"
        elif implant and c.exam_key == hang.current_key:
            note = "no implant-displaced views in this exam"
        if (chosen is not None and c.role == CURRENT and c.exam_key == hang.current_key
                and chosen.slot == c.view):
            uid, shows, note = chosen.sop_instance_uid, chosen.text, ""
        cells.append(replace(c, image_uid=uid, shows=shows, note=note))
    return replace(hang, cells=tuple(cells), implant=bool(implant))
