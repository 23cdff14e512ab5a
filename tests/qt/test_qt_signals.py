"""Guard against the PySide6 6.12.0 reference-counting bug: every emitted signal dropped a
reference to True/None until CPython 3.11 aborted. The window emits thousands per session."""

import subprocess
import sys

SCRIPT = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal
app = QCoreApplication([])
class Emitter(QObject):
    fired = Signal(object)
e = Emitter()
seen = []
e.fired.connect(seen.append)
before = sys.getrefcount(True), sys.getrefcount(None)
for i in range(20000):
    e.fired.emit(i)
after = sys.getrefcount(True), sys.getrefcount(None)
print(len(seen), after[0] - before[0], after[1] - before[1])
"""


def test_many_signals_keep_the_interpreter_alive():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    delivered, true_drift, none_drift = map(int, run.stdout.split())
    assert delivered == 20000
    assert abs(true_drift) < 100 and abs(none_drift) < 100
