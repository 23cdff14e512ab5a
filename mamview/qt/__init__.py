"""The Qt layer: the only package that imports PySide6 / pyqtgraph.

Work-around for a PySide6 6.12 reference-counting bug seen here on CPython 3.11: every
Python-side `Signal.emit()` drops one reference to True (its return value) and every C++
signal delivered to a Python slot drops one to None, so after a few thousand signals the
interpreter aborts with "bool_dealloc: deallocating True or False". CPython 3.12+ makes these
singletons immortal; on older versions we give them a reference count no session can exhaust.
Raising the count of a singleton that is never freed changes nothing else.
"""

import sys

if sys.version_info < (3, 12):
    import ctypes

    for _singleton in (True, False, None):
        # ob_refcnt is the first field of every PyObject in release builds
        ctypes.c_ssize_t.from_address(id(_singleton)).value += 1 << 40
    del _singleton
