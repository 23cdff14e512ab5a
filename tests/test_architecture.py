"""Rules of the house that a machine can check (docs: ../shared/design/architecture.md).

More of them (no SQL outside core/cache) follow as issue 12's layout lands; the Qt-free core is
checked in tests/core/test_core_without_qt.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

# What the window needs to start and to name the model it will use: none of it may pull in torch
# (about 1 s and 300 MB); the model loads in the inference process.
TORCH_FREE = ("mamview.core.models.registry", "mamview.core.cache.reads", "mamview.core.worklist",
              "mamview.core.reference", "mamview.qt.trajectory_chart", "mamview.qt.main_window",
              "mamview.cli")


def test_the_window_and_the_registry_listing_import_without_torch():
    code = ("import importlib, sys\n"
            f"for name in {TORCH_FREE!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name + ' imported torch'\n"
            "print('ok')\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_registry_lists_models_without_torch(tmp_path):
    code = ("import sys\n"
            "from mamview.core.models import registry\n"
            "from mamview.core.paths import library\n"
            f"entries = registry.list_models(library({str(tmp_path)!r}))\n"
            "assert any(e.model_id == 'demo' and e.available for e in entries), entries\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


WINDOW_START = """
import sys, time
from mamview.core.paths import library
from mamview.qt.app import application
from mamview.qt.main_window import MainWindow

def main():
    app = application()
    win = MainWindow(library(sys.argv[1]), start_inference=False)
    win.show()
    deadline = time.monotonic() + 100
    while not win.check_results and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    gpu = [r for r in win.check_results if r.name == "gpu"]
    print(gpu[0].level if gpu else "no gpu check", "torch" in sys.modules)
    win.shutdown()

if __name__ == "__main__":
    main()
"""


def test_the_window_starts_and_checks_the_gpu_without_importing_torch(tmp_path):
    script = tmp_path / "start.py"
    script.write_text(WINDOW_START)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "home")], capture_output=True,
                         text=True, env=env, timeout=150)
    assert out.returncode == 0, out.stderr
    # the probe ran (in a child process) and found torch usable; the window never loaded it
    assert out.stdout.split()[-2:] == ["ok", "False"], out.stdout + out.stderr
