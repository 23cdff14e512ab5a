"""The core must import and work where PySide6 and pyqtgraph are absent."""

import pkgutil
import subprocess
import sys

import mamview.core

BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('PySide6', 'pyqtgraph', 'shiboken6') or name.startswith('mamview.qt'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
assert not any(m.split('.')[0] in ('PySide6', 'pyqtgraph') for m in sys.modules)
print('ok', len(sys.argv) - 1)
"""


def core_modules():
    return [m.name for m in pkgutil.walk_packages(mamview.core.__path__, "mamview.core.")]


def test_every_core_module_imports_without_qt():
    mods = core_modules()
    assert "mamview.core.ingest" in mods and "mamview.core.cache.writes" in mods
    out = subprocess.run([sys.executable, "-c", BLOCKER, *mods], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"ok {len(mods)}"


def test_headless_cli_commands_import_without_qt(tmp_path):
    code = BLOCKER.replace("print('ok', len(sys.argv) - 1)",
                           "from mamview.cli import main; sys.exit(main(['--home', %r, 'patients']))"
                           % str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code, "mamview.cli"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "library is empty" in out.stdout
