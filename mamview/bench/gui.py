"""`mamview bench gui`: the reading window, offscreen, on one woman with 6 exams × 4 views.

1. Patient switch: time from selecting her in the worklist to every tile of the layout painted,
   cold (previews read from the disk cache; the in-memory copies dropped first) and in memory
   (a revisit, or the next woman prefetched while the reader looked at the previous one).
2. Launch to first window: a fresh interpreter started, the window shown; the GUI process's
   resident memory then, and whether torch was imported (it must not be).
3. Event-loop stall while the CPU inference service scores: a 5 ms QTimer heartbeat records the
   longest gap between its ticks while the worker runs.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mamview.bench.format import machine_line
from mamview.core.ingest import drain


def _prepare(work: Path, size: str):
    from mamview.core.demo_data import generate_cohort, write_patient
    from mamview.core.ingest import run_import
    from mamview.core.paths import Library

    six = work / f"six-exams-{size}"
    if not (six / "images.csv").exists():
        write_patient(six, n_exams=6, size=size, transfer_syntax="jpeg2000")
    other = work / "other-small"
    if not (other / "images.csv").exists():
        generate_cohort(other, n_patients=1, size="small", seed=3)
    lib = Library(work / f"lib-{size}")
    drain(run_import(lib, [p for p in six.iterdir() if p.is_dir()]
                      + [p for p in other.iterdir() if p.is_dir()]))
    return lib


def _paint(win, since: float = 0.0, timeout: float = 5.0) -> None:
    """Run the event loop until every tile of the layout has painted after `since`."""
    from PySide6.QtWidgets import QApplication

    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        QApplication.processEvents()
        if all(t.last_paint > since for t in win.grid.tiles):
            return
    raise RuntimeError("the tiles were not painted within the timeout")


def measure(size: str = "full", repeats: int = 15, stall_seconds: float = 8.0,
            work: str | None = None) -> dict:
    """Run both measurements (offscreen: set QT_QPA_PLATFORM first); returns the figures.

    The generated data is kept in `work` when given, else in a temporary folder removed
    afterwards."""
    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="mamview-bench-gui-"))
    try:
        return _measure(base, size, repeats, stall_seconds)
    finally:
        if not work:
            shutil.rmtree(base, ignore_errors=True)


_STARTUP = """
import sys, time
from mamview.core.paths import library
from mamview.qt.app import application
from mamview.qt.main_window import MainWindow
app = application()
win = MainWindow(library(sys.argv[1]), start_inference=False)
win.resize(1920, 1080)
win.show()
while not (win.windowHandle() and win.windowHandle().isExposed()):
    app.processEvents()
app.processEvents()
shown = time.time()
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))
print(shown, rss, "torch" in sys.modules)
win.shutdown()
"""


def _startup(lib, repeats: int = 5) -> dict:
    """Time from launching a fresh interpreter to the window shown, and the GUI process's
    resident memory then (the model and torch load in the inference process, never here)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    times, rss, torch_loaded = [], [], False
    for _ in range(repeats):
        t0 = time.time()
        out = subprocess.run([sys.executable, "-c", _STARTUP, str(lib.home)], env=env,
                             capture_output=True, text=True, timeout=120, check=True)
        shown, kb, torch = out.stdout.split()[-3:]
        times.append((float(shown) - t0) * 1000)
        rss.append(int(kb) / 1024)
        torch_loaded = torch_loaded or torch == "True"
    return {"median_ms": round(statistics.median(times)), "max_ms": round(max(times)),
            "rss_mb": round(statistics.median(rss)), "torch_imported": torch_loaded,
            "runs": repeats}


def _measure(work: Path, size: str, repeats: int, stall_seconds: float) -> dict:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from mamview.core.cache import reads, writes
    from mamview.core.cache.db import connect
    from mamview.qt.app import application
    from mamview.qt.main_window import MainWindow

    lib = _prepare(work, size)
    startup = _startup(lib)
    app = application()
    win = MainWindow(lib, start_inference=False)
    win.resize(1920, 1080)
    win.show()
    for _ in range(5):
        QApplication.processEvents()
    keys = win.patient_list.rows
    bench_key = next(k for k, r in keys.items() if r.patient_id == "BENCH0001")
    other_key = next(k for k in keys if k != bench_key)
    figures: dict = {"benchmark": "gui", "machine": machine_line(), "size": size,
                     "window": "1920x1080 offscreen"}

    for layout in ("4up", "8up", "timeline"):
        win.set_layout(layout)
        for cold in (True, False):
            times = []
            for _ in range(repeats):
                win.patient_list.select(other_key)
                _paint(win)
                if cold:  # previews read from the disk cache, nothing kept in memory
                    win.grid._preview_cache.clear()
                t0 = time.perf_counter()
                win.patient_list.select(bench_key)
                _paint(win, since=t0)
                times.append((max(t.last_paint for t in win.grid.tiles) - t0) * 1000)
                assert all(t.array is not None for t in win.grid.tiles), "a tile had no preview"
            figures[f"select_to_drawn_ms_{layout}_{'cold' if cold else 'in_memory'}"] = {
                "median": round(statistics.median(times), 1), "max": round(max(times), 1),
                "tiles": len(win.grid.tiles)}
    win.set_layout("4up")
    win.patient_list.select(bench_key)
    _paint(win)
    preview_shape = win.grid.tiles[0].preview_shape

    # stall: score everything from scratch on the CPU while the heartbeat runs
    db = connect(lib.database)
    writes.delete_scores(db)
    db.close()
    win.start_inference = True
    win.settings.device = "cpu"
    gaps: list[float] = []
    last = [time.perf_counter()]

    def beat():
        now = time.perf_counter()
        gaps.append((now - last[0]) * 1000)
        last[0] = now

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(beat)
    win.score_library()
    win.show_patient(bench_key)
    # the model loads on the worker first (imports hold the GIL): watch the scoring itself
    deadline = time.perf_counter() + 120
    while (win.service is None or win.service.model is None) and time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.005)
    t_start = time.perf_counter()
    timer.start()
    last[0] = time.perf_counter()
    scored_exams = 0
    rounds = 0
    while time.perf_counter() - t_start < stall_seconds:
        QApplication.processEvents()
        time.sleep(0.001)
        if win.service is not None and win.service.idle():
            # keep the worker busy for the whole window: clear and score again
            rounds += 1
            db = connect(lib.database)
            scored_exams += reads.ok_score_count(db)
            writes.delete_scores(db)
            db.close()
            win.score_library()
    timer.stop()
    db = connect(lib.database)
    scored_exams += reads.ok_score_count(db)
    db.close()
    device = win.service.device_label if win.service else "?"
    busy = gaps
    figures["stall"] = {
        "longest_gap_ms": round(max(busy), 1) if busy else None,
        "p99_gap_ms": round(sorted(busy)[int(0.99 * (len(busy) - 1))], 1) if busy else None,
        "heartbeats": len(gaps), "seconds": stall_seconds, "inference_device": device,
        "exams_scored_meanwhile": scored_exams, "torch_threads": win.service.cpu_threads
        if win.service else None,
    }
    figures["preview_shape"] = list(preview_shape)
    figures["startup"] = startup
    win.close()  # stops the workers first
    app.processEvents()
    return figures


def rows(fig: dict) -> list[tuple[str, str]]:
    """The figures of :func:`measure` as (label, value) rows (the machine row aside)."""
    out = [("data", f"one woman, 6 exams × 4 views ({fig['size']}), previews "
                    f"{fig['preview_shape'][0]}×{fig['preview_shape'][1]} from the cache")]
    for layout in ("4up", "8up", "timeline"):
        for kind, what in (("cold", "previews from disk"), ("in_memory", "revisit/prefetched")):
            f = fig[f"select_to_drawn_ms_{layout}_{kind}"]
            out.append((f"select → {f['tiles']} tiles drawn ({layout}, {what})",
                        f"median {f['median']} ms, max {f['max']} ms (target < 300 ms)"))
    st = fig["startup"]
    out.append(("launch → first window (fresh process)",
                f"median {st['median_ms']} ms, max {st['max_ms']} ms over {st['runs']} runs; "
                f"GUI process RSS {st['rss_mb']} MB; torch imported: "
                f"{'yes' if st['torch_imported'] else 'no'}"))
    s = fig["stall"]
    out.append(("longest event-loop stall, CPU inference",
                f"{s['longest_gap_ms']} ms (p99 {s['p99_gap_ms']} ms; target < 100 ms) over "
                f"{s['seconds']} s, {s['exams_scored_meanwhile']} exams scored on "
                f"{s['inference_device']}"))
    return out
