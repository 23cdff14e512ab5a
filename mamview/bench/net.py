"""`mamview bench net`: how fast a storage node takes in a cohort pushed by dcmtk's storescu.

Everything runs on loopback in a scratch library, never the user's: a synthetic cohort is
generated, a StorageNode (no scoring) listens on a free port, storescu pushes the cohort in one
association, and we time (a) until storescu has had every C-STORE answered (received: written,
checked, fsynced, filed) and (b) until the node has also indexed every file and made the
previews (received and indexed).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from mamview.bench.format import machine_line


def measure(patients: int = 6, size: str = "small", work: str | None = None,
              make_previews: bool = True, timeout: float = 600.0) -> dict:
    """Measure; returns the figures as a dict. RuntimeError when dcmtk is missing or a step fails."""
    from mamview.core.demo_data import generate_cohort
    from mamview.bench import dcmtk
    from mamview.core.net.scp import StorageNode
    from mamview.core.paths import Library

    if not dcmtk.have_dcmtk("storescu"):
        raise RuntimeError("dcmtk's storescu is not installed (Debian/Ubuntu: apt install dcmtk)")
    base = Path(work) if work else Path(tempfile.mkdtemp(prefix="mamview-bench-net-"))
    try:
        cohort = base / f"cohort-{size}-{patients}"
        if not (cohort / "images.csv").exists():
            generate_cohort(cohort, n_patients=patients, size=size, seed=0)
        folders = sorted(p for p in cohort.iterdir() if p.is_dir())
        files = [p for f in folders for p in f.rglob("*.dcm")]
        total_bytes = sum(p.stat().st_size for p in files)
        lib_home = base / "library"
        shutil.rmtree(lib_home, ignore_errors=True)
        lib = Library(lib_home)
        cfg = dcmtk.write_storescu_config(base / "storescu.cfg")
        node = StorageNode(lib, "BENCH", port=0, host="127.0.0.1", score=False,
                           make_previews=make_previews, allowed_hosts=["127.0.0.1"]).start()
        try:
            if not node.wait_idle(60):
                raise RuntimeError("the node did not get ready")
            cmd = dcmtk.storescu_command("127.0.0.1", node.bound_port, "BENCH", folders, cfg)
            t0 = time.perf_counter()
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            t_received = time.perf_counter() - t0
            if not node.wait_idle(timeout):
                raise RuntimeError("the node did not finish indexing in time")
            t_indexed = time.perf_counter() - t0
            stats = node.stats
        finally:
            node.stop()
        if run.returncode != 0 or stats.received != len(files):
            raise RuntimeError(f"storescu exit {run.returncode}, {stats.received} of "
                               f"{len(files)} received: {run.stderr[-500:]}")
        return {
            "benchmark": "net",
            "machine": machine_line(),
            "cohort": {"patients": patients, "size": size, "instances": len(files),
                       "megabytes": round(total_bytes / 1e6, 1)},
            "previews": make_previews,
            "received_s": round(t_received, 2),
            "received_instances_per_s": round(len(files) / t_received, 1),
            "received_mb_per_s": round(total_bytes / 1e6 / t_received, 1),
            "received_and_indexed_s": round(t_indexed, 2),
            "received_and_indexed_instances_per_s": round(len(files) / t_indexed, 1),
        }
    finally:
        if not work:
            shutil.rmtree(base, ignore_errors=True)


def rows(fig: dict) -> list[tuple[str, str]]:
    """The figures of :func:`measure` as (label, value) rows (the machine row aside)."""
    c = fig["cohort"]
    return [
        ("cohort", f"{c['instances']} instances ({c['size']}, {c['megabytes']} MB, "
                   f"{c['patients']} women), storescu on loopback, one association"),
        ("received (C-STORE answered)", f"{fig['received_instances_per_s']} instances/s, "
                                        f"{fig['received_mb_per_s']} MB/s ({fig['received_s']} s)"),
        ("received and indexed" + (" + previews" if fig["previews"] else ""),
         f"{fig['received_and_indexed_instances_per_s']} instances/s "
         f"({fig['received_and_indexed_s']} s)"),
    ]
