"""Where the library lives: platformdirs by default, MAMVIEW_HOME or --home override everything.

The library folder holds the exam cache database, display previews, installed models, logs and the
DICOM inbox. It can always be deleted and rebuilt from the user's files (models aside).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from mamview.core import safety

log = logging.getLogger(__name__)

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

    @property
    def pseudonym_key(self) -> Path:
        """The library's secret for export pseudonyms (random, made once, mode 600)."""
        return self.home / "pseudonym.key"

    def ensure(self) -> "Library":
        """Create the folders, private to the user (700; files 600 through the umask).

        Also tightens an existing library made before files were private: its folders become
        700 and its database files 600. Raises OSError (errno and path set; the CLI words it)
        when a folder cannot be created or written.
        """
        safety.private_umask()  # everything this process writes from now on is private
        for p in (self.home, self.previews, self.models, self.logs, self.inbox):
            p.mkdir(mode=safety.PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            if not os.access(p, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "the folder is not writable for this user", str(p))
        for p in (self.home, self.previews, self.models, self.logs, self.inbox):
            _make_private(p, safety.PRIVATE_DIR_MODE)
        for suffix in ("", "-wal", "-shm", "-journal"):
            db_file = self.database.with_name(self.database.name + suffix)
            if db_file.is_file():
                _make_private(db_file, safety.PRIVATE_FILE_MODE)
        return self


def _make_private(path: Path, mode: int) -> None:
    """chmod `path` to `mode` unless it already has it.

    Left alone: links, anything another user owns (root must not lock a user out of her own
    library) and shared sticky folders such as /tmp given as --home.
    """
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or stat.S_IMODE(info.st_mode) == mode:
            return
        if info.st_uid != os.geteuid() or info.st_mode & stat.S_ISVTX:
            return
        os.chmod(path, mode)
    except OSError as exc:
        log.warning("could not make %s private: %s", path, exc)


def library(home: str | os.PathLike | None = None) -> Library:
    """The library at `home`, or at the default location when None."""
    return Library(Path(home).expanduser() if home else default_home())


def resources_dir() -> Path:
    """Bundled resources (demo model weights, icons, desktop entry).

    Looked up, first match wins: a frozen bundle's `resources/` (PyInstaller), the repository's
    top-level `resources/` (a checkout or an editable install), the copy a wheel installs as data
    files (`<prefix>/share/mamview/resources`, found through the installed file list so user and
    venv installs both work). Falls back to the repository path so a missing resource produces a
    message naming where it was expected.
    """
    for cand in _resource_candidates():
        if (cand / "demo_model").is_dir() or (cand / "icons").is_dir():
            return cand
    return Path(__file__).resolve().parents[2] / "resources"


def _resource_candidates() -> list[Path]:
    import sys

    cands: list[Path] = []
    bundle = getattr(sys, "_MEIPASS", None)
    if getattr(sys, "frozen", False) and bundle:
        cands.append(Path(bundle) / "resources")
    pkg = Path(__file__).resolve().parents[1]  # mamview/
    # a checkout only: site-packages/resources could belong to some other distribution
    if (pkg.parent / "pyproject.toml").is_file():
        cands.append(pkg.parent / "resources")
    cands.append(pkg / "resources")
    cands.extend(_installed_data_dirs())
    return cands


def _installed_data_dirs() -> list[Path]:
    """`share/mamview/resources` wherever this distribution's wheel put its data files."""
    from importlib import metadata

    try:
        files = metadata.files(APP_NAME) or []
    except metadata.PackageNotFoundError:
        return []
    marker = ("share", APP_NAME, "resources")
    found: list[Path] = []
    for f in files:
        parts = f.parts
        for i in range(len(parts) - len(marker)):
            if tuple(parts[i:i + len(marker)]) == marker:
                d = Path(f.locate()).resolve().parents[len(parts) - i - len(marker) - 1]
                if d not in found:
                    found.append(d)
                break
    return found
