"""Test setup: every test session gets its own library folder and an offscreen Qt platform,
so tests never touch the real user directories and need no display."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
_session_home = tempfile.mkdtemp(prefix="mamview-test-home-")
os.environ["MAMVIEW_HOME"] = _session_home
atexit.register(shutil.rmtree, _session_home, ignore_errors=True)

# make `from tests.factories import …` work without installing the tests
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh, empty library folder for one test (MAMVIEW_HOME points at it)."""
    h = tmp_path / "home"
    monkeypatch.setenv("MAMVIEW_HOME", str(h))
    return h
