"""The hanging protocols (Qt-free): which exam and view goes in which cell, and which edge of
the cell its chest wall is against — the one plan the screen and the exported figure share."""

import pytest

from mamview.core import hanging

KEYS = [f"k{i}" for i in range(6)]


def _grid(h: hanging.Hanging) -> list[list[tuple[str | None, str, str]]]:
    """The plan as rows of (exam, view, chest-wall edge), to read like the screen."""
    rows = [[None] * h.columns for _ in range(h.rows)]
    for c in h.cells:
        rows[c.row][c.column] = (c.exam_key, c.view, c.chest_wall)
    return rows


def test_four_up_hangs_the_current_exam_chest_walls_back_to_back():
    h = hanging.plan("4up", KEYS, "k3", "k2")
    assert _grid(h) == [[("k3", "RCC", "right"), ("k3", "LCC", "left")],
                        [("k3", "RMLO", "right"), ("k3", "LMLO", "left")]]
    assert (h.current_key, h.prior_key, h.spec) == ("k3", "k2", "4up")
    assert {c.role for c in h.cells} == {"current"}


def test_eight_up_puts_the_prior_above_the_current_same_view_above_same_view():
    h = hanging.plan("8up", KEYS, "k5", "k1")
    assert _grid(h) == [[("k1", "RCC", "right"), ("k1", "LCC", "left"),
                         ("k1", "RMLO", "right"), ("k1", "LMLO", "left")],
                        [("k5", "RCC", "right"), ("k5", "LCC", "left"),
                         ("k5", "RMLO", "right"), ("k5", "LMLO", "left")]]
    assert [c.role for c in h.cells] == ["prior"] * 4 + ["current"] * 4


@pytest.mark.parametrize("prior", [None, "k5", "elsewhere"])
def test_eight_up_without_a_prior_keeps_its_empty_row(prior):
    """As on screen: eight cells, the prior row empty and saying so (not a 4-up)."""
    h = hanging.plan("8up", KEYS, "k5", prior)
    assert (h.rows, h.columns, h.prior_key) == (2, 4, None)
    assert [c.exam_key for c in h.cells] == [None] * 4 + ["k5"] * 4
    assert hanging.empty_message(h.cells[0], ()) == "no prior exam"


def test_timeline_one_row_up_to_four_exams_then_two_rows():
    h = hanging.plan("timeline:RCC", KEYS, None, None)
    assert (h.rows, h.columns, h.spec) == (2, 3, "timeline:RCC")
    assert [(c.row, c.column, c.exam_key) for c in h.cells][:4] == \
        [(0, 0, "k0"), (0, 1, "k1"), (0, 2, "k2"), (1, 0, "k3")]
    assert {(c.view, c.chest_wall, c.role) for c in h.cells} == {("RCC", "right", "timeline")}
    four = hanging.plan("timeline", KEYS[:4], "k0", None, "LCC")
    assert (four.rows, four.columns) == (1, 4)
    assert {(c.view, c.chest_wall) for c in four.cells} == {("LCC", "left")}
    # nine exams: five columns (the screen must stretch more than four)
    assert hanging.plan("timeline", [f"e{i}" for i in range(9)]).columns == 5


def test_defaults_and_unknown_specs():
    h = hanging.plan("4up", KEYS)  # no current given: the newest exam
    assert h.current_key == "k5" and {c.exam_key for c in h.cells} == {"k5"}
    assert hanging.plan("4up", KEYS, "gone").current_key == "k5"
    assert hanging.parse_layout("timeline:XX") == ("timeline", "LMLO")
    assert hanging.parse_layout("prior") == ("8up", "LMLO")
    assert hanging.parse_layout("nonsense") == ("4up", "LMLO")
    empty = hanging.plan("8up", [], None, None)
    assert empty.cells == () and empty.current_key is None and (empty.rows, empty.columns) == (1, 1)


def test_empty_cell_messages_are_the_screens():
    h = hanging.plan("4up", KEYS, "k1")
    rcc = h.cells[0]
    assert hanging.empty_message(rcc, {"RCC", "LCC"}) == ""
    assert hanging.empty_message(rcc, {"LCC"}) == "no RCC in this exam"
    images = [{"label": "RCC", "is_standard": True, "missing": True},
              {"label": "LCC", "is_standard": True, "missing": False},
              {"label": "RMLO", "is_standard": False, "missing": False}]
    assert hanging.present_views(images) == {"LCC"}


def _row(uid, side, view, mods=(), standard=None):
    label = side + view
    return {"sop_instance_uid": uid, "laterality": side, "view": view, "label": label,
            "is_standard": (not mods) if standard is None else standard,
            "view_modifiers": list(mods), "missing": False}


ID = ("implant displaced",)


def test_the_implant_hanging_puts_each_id_view_in_its_views_cell():
    """RCC ID in the RCC's cell etc.; a view without an ID view keeps the standard image and its
    cell says so; the prior's own ID views in its row (8-up); the timeline stays standard."""
    current = [_row("rcc", "R", "CC"), _row("lcc", "L", "CC"), _row("rmlo", "R", "MLO"),
               _row("lmlo", "L", "MLO"), _row("rcc-id", "R", "CC", ID),
               _row("lcc-id", "L", "CC", ID), _row("rmlo-id", "R", "MLO", ID),
               _row("spot", "R", "CC", ("spot compression",))]
    prior = [_row("p-lcc", "L", "CC"), _row("p-lcc-id", "L", "CC", ID)]
    std = {"rcc", "lcc", "rmlo", "lmlo", "p-lcc"}
    extras = {"k1": hanging.additional_views(current, std),
              "k0": hanging.additional_views(prior, std)}
    assert sorted(hanging.implant_views(extras["k1"])) == ["LCC", "RCC", "RMLO"]
    four = hanging.place_views(hanging.plan("4up", ["k0", "k1"]), extras, implant=True)
    assert four.implant and [(c.view, c.image_uid, c.implant_displaced, c.note)
                             for c in four.cells] == [
        ("RCC", "rcc-id", True, ""), ("LCC", "lcc-id", True, ""), ("RMLO", "rmlo-id", True, ""),
        ("LMLO", None, False, "no LMLO ID view: standard shown")]
    assert four.cells[0].shows == "RCC implant displaced"
    eight = hanging.place_views(hanging.plan("8up", ["k0", "k1"], "k1", "k0"), extras, implant=True)
    assert [c.image_uid for c in eight.cells[:4]] == [None, "p-lcc-id", None, None]
    assert [c.image_uid for c in eight.cells[4:]] == ["rcc-id", "lcc-id", "rmlo-id", None]
    # a chosen additional view takes its own cell on top; the prior row never gets it
    spot = hanging.place_views(hanging.plan("8up", ["k0", "k1"], "k1", "k0"), extras, "spot", True)
    assert spot.cells[4].image_uid == "spot" and not spot.cells[4].implant_displaced
    assert spot.cells[0].image_uid is None
    only_spot = hanging.place_views(hanging.plan("4up", ["k0", "k1"]), extras, "spot")
    assert [c.image_uid for c in only_spot.cells] == ["spot", None, None, None]
    assert not only_spot.implant
    # off, or in the timeline: the plain plan (equal to the one without extras)
    plain = hanging.plan("4up", ["k0", "k1"])
    assert hanging.place_views(plain, extras) == plain
    timeline = hanging.plan("timeline:RCC", ["k0", "k1"])
    assert hanging.place_views(timeline, extras, "spot", True) == timeline


def test_an_exam_without_id_views_has_no_implant_hanging():
    rows = [_row("rcc", "R", "CC"), _row("spot", "R", "CC", ("spot compression",))]
    extras = hanging.additional_views(rows, {"rcc"})
    assert hanging.implant_views(extras) == {}
    assert [e.modifiers for e in extras] == [("spot compression",)]
