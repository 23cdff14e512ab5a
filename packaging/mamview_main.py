"""Entry point of the frozen application: the same `mamview` command as the console script.

Two bundle-only arguments for packaging/smoke_test.sh, outside the CLI's argparse tree:
`mamview --bundle-check` prints, as JSON, what the bundle carries that a normal command might
not touch (pydicom's decoders per transfer syntax, Qt's platform plugins, torch's build, where
resources were found) and exits 1 if something the application needs is missing;
`mamview --bundle-gui-check PATIENT_ID OUT.png` opens the main window on the library, shows
that woman, exports the figure, and prints the seconds to the first window.
"""

import multiprocessing
import sys


def bundle_check() -> int:
    """Report the bundle's optional parts; exit status 1 if a required one is missing."""
    import json
    import os
    from pathlib import Path

    from pydicom.pixels import get_decoder
    from pydicom.uid import (JPEG2000, JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless,
                             RLELossless)

    from mamview.core.paths import resources_dir

    report: dict = {"frozen": bool(getattr(sys, "frozen", False)),
                    "python": sys.version.split()[0]}
    # JPEG 2000 and RLE are what our demo data and most archives use; JPEG-LS / JPEG Lossless
    # come from GDCM (pylibjpeg-libjpeg is GPL and deliberately not shipped)
    needed = {"JPEG2000Lossless": JPEG2000Lossless, "JPEG2000": JPEG2000,
              "RLELossless": RLELossless, "JPEGLSLossless": JPEGLSLossless,
              "JPEGLosslessSV1": JPEGLosslessSV1}
    decoders = {}
    for name, uid in needed.items():
        try:
            decoders[name] = sorted(get_decoder(uid).available_plugins)
        except Exception as exc:  # noqa: BLE001 - report, do not crash the check
            decoders[name] = [f"error: {exc}"]
    report["decoders"] = decoders

    from PySide6.QtCore import QLibraryInfo

    plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath)) / "platforms"
    report["qt_platforms"] = sorted(p.stem.replace("libq", "") for p in plugins.glob("*"))

    import torch

    report["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                       "cuda_available": torch.cuda.is_available(),
                       "threads": torch.get_num_threads()}
    res = resources_dir()
    report["resources"] = {"dir": str(res),
                           "demo_model": (res / "demo_model" / "weights.pt").is_file(),
                           "icon": (res / "icons" / "mamview.svg").is_file(),
                           "desktop": (res / "mamview.desktop").is_file()}
    # the window runs inference and decoding in spawned processes: a frozen child must start,
    # import mamview and find the resources like the parent
    from concurrent.futures import ProcessPoolExecutor

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            report["spawned_child_resources"] = str(ex.submit(resources_dir).result(timeout=120))
    except Exception as exc:  # noqa: BLE001
        report["spawned_child_resources"] = f"error: {exc!r}"
    missing = [f"decoder {n}" for n, p in decoders.items() if not p or p[0].startswith("error")]
    if report["spawned_child_resources"] != str(res):
        missing.append("a spawned child process (multiprocessing in the frozen app)")
    missing += [f"Qt platform {p}" for p in ("offscreen", "xcb")
                if sys.platform.startswith("linux") and p not in report["qt_platforms"]]
    missing += [f"resource {k}" for k, v in report["resources"].items() if v is False]
    report["missing"] = missing
    report["env"] = {k: os.environ.get(k) for k in ("PATH", "VIRTUAL_ENV", "PYTHONPATH",
                                                   "PYTHONHOME")}
    print(json.dumps(report, indent=2))
    return 1 if missing else 0


def _seconds_since_process_start() -> float | None:
    """Wall seconds since this process was started (Linux /proc; None elsewhere)."""
    import os

    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def gui_check(patient_id: str, out: str) -> int:
    """Start the real main window on the library, show one woman, export the tumour-board figure.

    Prints JSON with the seconds from process start to the first shown window (the cold-start
    figure) and to the exported file. Uses the main window's own API (show_patient,
    export_figure), so it exercises what a user's click would.
    """
    import json
    import os
    import time

    from mamview.core.paths import library

    t0 = time.perf_counter()
    base = _seconds_since_process_start()
    since_start = (lambda: round(base + time.perf_counter() - t0, 2)) if base is not None \
        else (lambda: round(time.perf_counter() - t0, 2))

    from PySide6.QtWidgets import QApplication

    from mamview.qt.app import application
    from mamview.qt.main_window import MainWindow

    app = application()
    win = MainWindow(library())  # as a user starts it: background scoring on
    win.show()
    app.processEvents()
    first_window = since_start()
    first_window_cpu = round(time.process_time(), 2)  # CPU seconds: less sensitive to load
    rows = win.patient_list.rows
    key = next((k for k, r in rows.items() if r.patient_id == patient_id), None)
    if key is None:
        print(json.dumps({"error": f"no patient {patient_id!r} in the library"}))
        win.shutdown()
        return 1
    win.patient_list.select(key)
    for _ in range(5):
        QApplication.processEvents()
    written = win.export_figure(out, deidentify=False)
    exported = since_start()
    report = {"first_window_s": first_window, "first_window_cpu_s": first_window_cpu,
              "figure_written_s": exported,
              "figure": str(written), "bytes": os.path.getsize(out) if os.path.exists(out) else 0,
              "window": f"{win.width()}x{win.height()}",
              "platform": QApplication.platformName(), "model": win.model_label}
    win.shutdown()
    print(json.dumps(report))
    return 0 if report["bytes"] else 1


if __name__ == "__main__":
    multiprocessing.freeze_support()  # a spawned child (Windows, macOS) must not rerun the CLI
    if sys.argv[1:] == ["--bundle-check"]:
        sys.exit(bundle_check())
    if len(sys.argv) == 4 and sys.argv[1] == "--bundle-gui-check":
        sys.exit(gui_check(sys.argv[2], sys.argv[3]))
    from mamview.cli import main

    sys.exit(main())
