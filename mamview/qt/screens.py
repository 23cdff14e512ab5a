"""Which screen shows what: the images on one screen, the chart and metrics on another.

The choice is a pure function of the screens' geometries, so it is tested without screens;
`MainWindow.apply_screens` applies it to real QScreens.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QRect


@dataclass(frozen=True)
class ScreenPlan:
    """Indexes into the screen list: where the images go and where the chart goes (None: the
    chart stays beside the images in the main window)."""

    images: int
    chart: int | None


def plan_screens(geometries: list[QRect], primary: int = 0, enabled: bool = True) -> ScreenPlan:
    """The images on the primary screen (the reader's), the chart and metrics on the largest
    other screen (the first of equals in the list); one screen, or `enabled` False: all on
    the primary."""
    if not geometries:
        return ScreenPlan(0, None)
    primary = primary if 0 <= primary < len(geometries) else 0
    others = [i for i in range(len(geometries)) if i != primary]
    if not enabled or not others:
        return ScreenPlan(primary, None)
    area = lambda i: geometries[i].width() * geometries[i].height()  # noqa: E731
    chart = max(others, key=lambda i: (area(i), -i))
    return ScreenPlan(primary, chart)
