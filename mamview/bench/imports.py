"""`mamview bench import`: header indexing and preview rates on a synthetic cohort.

Benchmarks live in this package, not in unit tests: timings depend on the machine.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mamview.bench.format import machine_line
from mamview.core.ingest import drain


def measure(patients: int = 6, size: str = "full", work: str | None = None) -> dict:
    """Header indexing rate, preview rate, reduced vs full J2K preview decode, one 6-exam patient.

    Generates a synthetic cohort (kept in `work` when given, so later runs reuse it; otherwise
    in a temporary folder removed afterwards).
    """
    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="mamview-bench-"))
    try:
        return _measure(base, patients, size)
    finally:
        if not work:
            shutil.rmtree(base, ignore_errors=True)


def _measure(base: Path, patients: int, size: str) -> dict:
    from mamview.core import previews
    from mamview.core.cache import reads
    from mamview.core.cache.db import connect
    from mamview.core.demo_data import generate_cohort, write_patient
    from mamview.core.ingest import find_files, generate_previews, run_import
    from mamview.core.paths import Library

    cohort = base / f"cohort-{size}-{patients}"
    t = time.perf_counter()
    if not (cohort / "images.csv").exists():
        generate_cohort(cohort, n_patients=patients, size=size, seed=1)
    gen_s = time.perf_counter() - t
    files, _ = find_files([cohort])

    # header indexing into a fresh cache, three times; the median is reported
    index_rates = []
    for i in range(3):
        lib = Library(base / f"lib-index-{i}")
        if lib.home.exists():
            _rmtree(lib.home)
        t = time.perf_counter()
        summary = drain(run_import(lib, [cohort], make_previews=False))
        index_rates.append(summary.files_seen / (time.perf_counter() - t))

    # previews of the whole cohort (reduced-resolution decode where possible)
    lib = Library(base / "lib-index-0")
    db = connect(lib.database)
    n_images = reads.counts(db)["images"]
    t = time.perf_counter()
    drain(generate_previews(lib, db))
    preview_s = time.perf_counter() - t
    db.close()

    # JPEG 2000: reduced-resolution decode vs full decode + downsample, same images
    j2k = [f for f in files if _is_j2k(f)][:8]
    reduced_s = full_s = None
    if j2k:
        t = time.perf_counter()
        for f in j2k:
            previews.make_preview(f, reduced=True)
        reduced_s = (time.perf_counter() - t) / len(j2k)
        t = time.perf_counter()
        for f in j2k:
            previews.make_preview(f, reduced=False)
        full_s = (time.perf_counter() - t) / len(j2k)

    # all 24 previews of one woman with six JPEG 2000 exams, as when she is opened
    six = base / f"six-exam-j2k-{size}"
    if not (six / "images.csv").exists():
        write_patient(six, n_exams=6, size=size, transfer_syntax="jpeg2000", seed=7)
    lib6 = Library(base / "lib-six")
    if lib6.home.exists():
        _rmtree(lib6.home)
    drain(run_import(lib6, [six], make_previews=False))
    db = connect(lib6.database)
    t = time.perf_counter()
    made = sum(1 for ev in generate_previews(lib6, db) if getattr(ev, "phase", "") == "previews")
    six_s = time.perf_counter() - t
    db.close()

    return {
        "benchmark": "import",
        "machine": machine_line(),
        "cohort": {"patients": patients, "size": size, "files": len(files),
                   "images": n_images, "generation_s": round(gen_s, 1)},
        "header_index_files_per_s": round(statistics.median(index_rates), 1),
        "header_index_runs_files_per_s": [round(r, 1) for r in index_rates],
        "preview_images_per_s": round(n_images / preview_s, 2) if preview_s else None,
        "j2k_preview_reduced_s": _r(reduced_s),
        "j2k_preview_full_decode_downsample_s": _r(full_s),
        "j2k_reduced_speedup": round(full_s / reduced_s, 1) if reduced_s else None,
        "six_exam_j2k_patient_previews": made,
        "six_exam_j2k_patient_previews_s": round(six_s, 2),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _rmtree(p: Path) -> None:
    shutil.rmtree(p)


def _is_j2k(path: str) -> bool:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a benchmark input we cannot read is simply not J2K
        return False
    return str(ds.file_meta.TransferSyntaxUID) in ("1.2.840.10008.1.2.4.90",
                                                   "1.2.840.10008.1.2.4.91")


def rows(fig: dict) -> list[tuple[str, str]]:
    """The figures of :func:`measure` as (label, value) rows (the machine row aside)."""
    c = fig["cohort"]
    return [
        ("cohort", f"{c['patients']} women, {c['images']} images ({c['size']}), "
                   f"{c['files']} files"),
        ("header indexing", f"{fig['header_index_files_per_s']} files/s "
                            f"(runs: {fig['header_index_runs_files_per_s']}; target ≥ 500)"),
        ("previews, whole cohort", f"{fig['preview_images_per_s']} images/s"),
        ("J2K preview, reduced decode", f"{fig['j2k_preview_reduced_s']} s/image"),
        ("J2K preview, full decode+downsample",
         f"{fig['j2k_preview_full_decode_downsample_s']} s/image"),
        ("J2K reduced-decode speed-up", f"{fig['j2k_reduced_speedup']}× (target ≥ 5×)"),
        ("6-exam J2K patient, all previews",
         f"{fig['six_exam_j2k_patient_previews']} in "
         f"{fig['six_exam_j2k_patient_previews_s']} s (target < 3 s)"),
    ]
