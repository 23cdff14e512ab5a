"""Where the library lives: platformdirs by default, MAMVIEW_HOME or --home override everything.

The library folder holds the exam cache database, display previews, installed models, logs and the
DICOM inbox. It can always be deleted and rebuilt from the user's files (models aside).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_HOME = "MAMVIEW_HOME"
APP_NAME = "mamview"


def default_home() -> Path:
    """The library folder: $MAMVIEW_HOME if set, else the platform's user data folder."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass(frozen=True)
class Library:
    """The locations inside one library folder."""

    home: Path

    @property
    def database(self) -> Path:
        return self.home / "cache.sqlite"

    @property
    def previews(self) -> Path:
        return self.home / "previews"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def settings_file(self) -> Path:
        return self.home / "settings.json"

    def ensure(self) -> "Library":
        """Create the folders; raises OSError with the path when the location is not writable."""
        for p in (self.home, self.previews, self.models, self.logs, self.inbox):
            p.mkdir(parents=True, exist_ok=True)
        return self


def library(home: str | os.PathLike | None = None) -> Library:
    """The library at `home`, or at the default location when None."""
    return Library(Path(home).expanduser() if home else default_home())


def resources_dir() -> Path:
    """Bundled resources (demo model weights, icons): the repository's resources/ folder, or the
    copy installed inside the package."""
    here = Path(__file__).resolve().parent.parent  # mamview/
    for cand in (here / "resources", here.parent / "resources"):
        if cand.is_dir():
            return cand
    return here.parent / "resources"
