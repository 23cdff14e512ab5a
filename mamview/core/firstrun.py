"""First-run checks: can mamview keep its library here, is there room, which device will score.

Each check returns a plain :class:`CheckResult` (no printing, no dialogs) so the CLI and the GUI
show the same sentences their own way. Nothing here raises on a bad environment: an unwritable
folder, a missing driver or a broken `nvidia-smi` all become results with a message a clinic's
IT person can act on.

    results = run_checks(library())
    for r in results:
        print(r.level, r.message, r.hint)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mamview.core.paths import ENV_HOME, Library
from mamview.core.services import default_cpu_threads

OK, WARNING, ERROR = "ok", "warning", "error"

GiB = 1024**3
# Below this the library cannot safely take an import: SQLite needs room for its journal and a
# preview is written per image (about 0.5–1 MB each at 1024 px).
MIN_FREE_BYTES = 2 * GiB
# Below this it still works, but a few thousand exams' previews would fill the disk.
WARN_FREE_BYTES = 10 * GiB

NVIDIA_SMI_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check.

    `level` is "ok", "warning" (works, but the user should know) or "error" (this blocks normal
    use); `message` says what was found, `hint` what to do about it (empty when nothing),
    `details` holds the measured values for logs and tests.
    """

    name: str
    level: str
    message: str
    hint: str = ""
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False only for errors: warnings do not stop the application."""
        return self.level != ERROR


# ---------------------------------------------------------------- library location


def check_library_writable(lib: Library) -> CheckResult:
    """Create the library folders if needed and prove a file can be written and removed there."""
    home = lib.home
    details = {"path": str(home), "from_env": bool(os.environ.get(ENV_HOME))}
    move_hint = (f"choose another folder with --home DIR or the {ENV_HOME} environment variable "
                 "(see docs/install.md, 'Moving the library')")
    if home.exists() and not home.is_dir():
        return CheckResult("library", ERROR, f"The library location {home} is a file, not a folder.",
                           move_hint, details)
    try:
        lib.ensure()
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=home)
        try:
            os.write(fd, b"mamview")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return CheckResult("library", ERROR,
                           f"mamview cannot write to its library folder {home}: {reason}.",
                           move_hint, details | {"errno": exc.errno})
    if lib.database.exists() and not os.access(lib.database, os.W_OK):
        return CheckResult("library", ERROR,
                           f"The exam cache {lib.database} is read-only.",
                           "give your user write permission on it, or " + move_hint, details)
    return CheckResult("library", OK, f"Library folder: {home}", "", details)


# ---------------------------------------------------------------- disk space


def _existing_ancestor(path: Path) -> Path:
    """`path` or the nearest folder above it that exists (disk_usage needs an existing path)."""
    path = path.absolute()
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path


def check_free_space(lib: Library, *, min_free: int = MIN_FREE_BYTES,
                     warn_free: int = WARN_FREE_BYTES) -> CheckResult:
    """Free space on the disk that holds the library, against the two thresholds (bytes)."""
    where = _existing_ancestor(lib.home)
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return CheckResult("disk", WARNING, f"Could not measure free space at {where}: {exc}.",
                           "", {"path": str(where)})
    free = usage.free
    details = {"path": str(where), "free_bytes": free, "total_bytes": usage.total,
               "min_free_bytes": min_free, "warn_free_bytes": warn_free}
    text = f"{free / GiB:.1f} GiB free on the disk holding {lib.home}"
    hint = ("free some space, or move the library to a larger disk "
            "(docs/install.md, 'Moving the library')")
    if free < min_free:
        return CheckResult("disk", ERROR,
                           f"Only {text}; imports need at least {min_free / GiB:.0f} GiB.",
                           hint, details)
    if free < warn_free:
        return CheckResult("disk", WARNING,
                           f"Only {text}; previews take about 3 MB per exam.", hint, details)
    return CheckResult("disk", OK, text + ".", "", details)


# ---------------------------------------------------------------- GPU / driver


@dataclass(frozen=True)
class ComputeFacts:
    """What this machine and this torch build offer; gathered by :func:`probe_compute`."""

    torch_version: str
    torch_cuda: str | None        # CUDA version torch was built for; None: a CPU-only build
    cuda_available: bool          # torch.cuda.is_available()
    gpu_names: tuple[str, ...] = ()
    mps_available: bool = False
    nvidia_driver: str | None = None  # driver version seen outside torch (nvidia-smi, /proc)
    cpu_threads: int = 1
    torch_error: str = ""         # torch failed to import (a damaged installation)


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver version if one is installed, without torch; None if none is found."""
    proc_file = Path("/proc/driver/nvidia/version")
    try:
        text = proc_file.read_text(errors="replace")
    except OSError:
        text = ""
    for word in text.split():
        if word[:1].isdigit() and word.count(".") >= 1:
            return word
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None  # a hung or broken nvidia-smi says nothing usable about the driver
    first = out.stdout.strip().splitlines()[:1]
    return first[0].strip() if out.returncode == 0 and first else None


def probe_compute() -> ComputeFacts:
    """Look at torch and the NVIDIA driver in this process (imports torch: about a second)."""
    driver = nvidia_driver_version()
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install must become a message
        return ComputeFacts("not importable", None, False, nvidia_driver=driver,
                            cpu_threads=default_cpu_threads(), torch_error=str(exc))
    cuda_ok = False
    names: tuple[str, ...] = ()
    try:
        cuda_ok = bool(torch.cuda.is_available())
        if cuda_ok:
            names = tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - driver/runtime mismatches raise RuntimeError here
        cuda_ok = False
    mps = getattr(torch.backends, "mps", None)
    return ComputeFacts(
        # plain str: torch's TorchVersion would make unpickling the facts import torch
        torch_version=str(torch.__version__),
        torch_cuda=None if torch.version.cuda is None else str(torch.version.cuda),
        cuda_available=cuda_ok,
        gpu_names=names,
        mps_available=bool(mps is not None and mps.is_available()),
        nvidia_driver=driver,
        cpu_threads=default_cpu_threads(),
    )


def assess_compute(facts: ComputeFacts, preference: str = "auto") -> CheckResult:
    """Which device scoring will use, and why not a GPU when there is none.

    `preference` is the user's device setting (auto, cpu, cuda, mps).
    """
    details = {k: getattr(facts, k) for k in facts.__dataclass_fields__}
    details["preference"] = preference
    n = facts.cpu_threads
    cpu = f"the CPU ({n} thread{'' if n == 1 else 's'})"
    slower = "Scoring works, at a few seconds to a minute per exam instead of under a second."
    pref = (preference or "auto").split(":", 1)[0].lower()
    if facts.torch_error:
        return CheckResult("gpu", ERROR, f"The PyTorch runtime cannot be loaded: {facts.torch_error}",
                           "reinstall mamview; risk scores cannot be computed until then", details)
    if pref == "cpu":
        return CheckResult("gpu", OK, f"Scoring uses {cpu}, as set in the settings.", "", details)
    if facts.cuda_available and pref in ("auto", "cuda"):
        gpus = ", ".join(facts.gpu_names) or "an NVIDIA GPU"
        return CheckResult("gpu", OK, f"Scoring uses {gpus} (CUDA {facts.torch_cuda}).", "", details)
    if facts.mps_available and pref in ("auto", "mps"):
        return CheckResult("gpu", OK, "Scoring uses the Apple GPU (Metal).", "", details)
    if facts.torch_cuda is None and facts.nvidia_driver:
        # the case a clinic most often meets: a GPU in the box, the CPU-only download installed
        return CheckResult(
            "gpu", WARNING,
            f"An NVIDIA driver ({facts.nvidia_driver}) is installed, but this mamview build is "
            f"CPU-only (PyTorch {facts.torch_version}): scoring uses {cpu}. {slower}",
            "install the CUDA build of mamview to use the GPU (docs/install.md, 'GPU')", details)
    if facts.torch_cuda is not None and not facts.cuda_available:
        if facts.nvidia_driver:
            why = (f"the NVIDIA driver {facts.nvidia_driver} does not work with CUDA "
                   f"{facts.torch_cuda} (too old, or the GPU is busy or missing)")
            hint = (f"update the NVIDIA driver to one that supports CUDA {facts.torch_cuda}, "
                    "then restart mamview")
        else:
            why = "no NVIDIA driver was found"
            hint = "install the NVIDIA driver if this machine has an NVIDIA GPU, then restart mamview"
        return CheckResult("gpu", WARNING,
                           f"CUDA is unavailable: {why}. Scoring uses {cpu}. {slower}",
                           hint, details)
    if pref in ("cuda", "mps"):
        return CheckResult("gpu", WARNING,
                           f"The settings ask for {pref.upper()}, which this machine does not "
                           f"offer; scoring uses {cpu}. {slower}",
                           "set the device to auto or cpu in the settings", details)
    return CheckResult("gpu", OK, f"No GPU found: scoring uses {cpu}. {slower}", "", details)


PROBE_TIMEOUT_S = 120  # importing torch and initialising CUDA can take a while on a cold disk


def _probe_child(conn) -> None:
    try:
        conn.send(probe_compute())
    finally:
        conn.close()


def probe_compute_elsewhere(timeout: float = PROBE_TIMEOUT_S) -> ComputeFacts:
    """`probe_compute` in a spawned child process, so the caller never imports torch (the
    window stays about 300 MB smaller and its GIL free). A child that fails or hangs is a fact
    about torch too; it is a daemon and killed at the deadline, so it never holds up an exit."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_probe_child, args=(theirs,), daemon=True, name="mamview-probe")
    try:
        proc.start()
        theirs.close()
        if not ours.poll(timeout):
            raise TimeoutError(f"no answer within {timeout:g} s")
        return ours.recv()
    except Exception as exc:  # noqa: BLE001 - a crashed or hung probe must become a message
        return ComputeFacts("not importable", None, False, nvidia_driver=nvidia_driver_version(),
                            cpu_threads=default_cpu_threads(),
                            torch_error=" ".join(f"the torch probe failed: {type(exc).__name__}: "
                                                 f"{exc}".split())[:300])
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        ours.close()


def check_compute(preference: str = "auto", isolated: bool = False) -> CheckResult:
    """Probe this machine and assess it (see :func:`assess_compute`); `isolated` probes in a
    child process."""
    return assess_compute(probe_compute_elsewhere() if isolated else probe_compute(), preference)


# ---------------------------------------------------------------- all together


def run_checks(lib: Library, *, device_preference: str = "auto",
               min_free: int = MIN_FREE_BYTES, warn_free: int = WARN_FREE_BYTES,
               isolated: bool = False) -> list[CheckResult]:
    """Every first-run check, in the order a user should fix them (`isolated`: torch is
    probed in a child process, as the window wants)."""
    return [
        check_library_writable(lib),
        check_free_space(lib, min_free=min_free, warn_free=warn_free),
        check_compute(device_preference, isolated=isolated),
    ]


def format_results(results: list[CheckResult]) -> str:
    """The results as plain text lines, e.g. for `mamview` on a terminal or a log file."""
    marks = {OK: "ok  ", WARNING: "WARN", ERROR: "FAIL"}
    lines = []
    for r in results:
        lines.append(f"[{marks.get(r.level, r.level)}] {r.message}")
        if r.hint:
            lines.append(f"       → {r.hint}")
    return "\n".join(lines)


if __name__ == "__main__":  # `python -m mamview.core.firstrun`: the checks for this machine
    from mamview.core.paths import library

    res = run_checks(library())
    print(format_results(res))
    sys.exit(0 if all(r.ok for r in res) else 1)
