"""Fixtures for the networking tests: real dcmtk peers on loopback, free ports, and every
process started here killed (with its children) when the test ends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mamview.core.demo_data import generate_cohort, write_patient
from mamview.bench import dcmtk

LOOPBACK = "127.0.0.1"

needs_dcmtk = pytest.mark.skipif(
    not dcmtk.have_dcmtk("storescu", "echoscu", "dcmqrscp", "dcmqridx"),
    reason="dcmtk (storescu, echoscu, dcmqrscp, dcmqridx) is not installed; .ci/run installs it")


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts connections on `port` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def wait_for_text(path, text, proc, timeout=60.0) -> str:
    """Block until `text` appears in the file `path` (a `mamview listen` log), bounded; fails
    at once when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if proc.poll() is not None:
            raise AssertionError(f"mamview listen exited early ({proc.returncode}): {content}")
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} did not appear in {path} within {timeout} s")


class Processes:
    """Starts subprocesses in their own process group; `kill_all` ends them and their children."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture
def procs():
    ps = Processes()
    yield ps
    ps.kill_all()


def run(cmd, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    """A dcmtk tool run to completion (bounded), output captured as text."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> Path:
    """A small synthetic cohort (three women, J2K/RLE/explicit files, one incomplete exam)."""
    out = tmp_path_factory.mktemp("net-cohort") / "cohort"
    generate_cohort(out, n_patients=3, size="small", seed=1)
    return out


def cohort_folders(cohort: Path) -> list[Path]:
    """The patient folders (not the ground-truth CSVs beside them)."""
    return sorted(p for p in cohort.iterdir() if p.is_dir())


@pytest.fixture(scope="session")
def scu_config(tmp_path_factory) -> Path:
    return dcmtk.write_storescu_config(tmp_path_factory.mktemp("scu") / "storescu.cfg")


@pytest.fixture(scope="session")
def priors(tmp_path_factory) -> Path:
    """One woman (BENCH0001) with three yearly JPEG 2000 exams: the PACS's holdings."""
    out = tmp_path_factory.mktemp("net-priors") / "priors"
    write_patient(out, n_exams=3, size="small", transfer_syntax="jpeg2000")
    return out


class Pacs:
    """A running dcmqrscp: `port`, `node_port` (where MAMVIEW is expected), `address`,
    `storage`, `files` it holds, `log` (its output file)."""


def start_dcmqrscp(tmp_path: Path, procs: Processes, files, *, flags=(), callers=None,
                   name: str = "pacs", max_associations: int = 16) -> Pacs:
    """dcmqrscp as a small PACS 'PACS' holding `files`, knowing MAMVIEW as a move destination
    at a free port; `flags` go on its command line (-QS: Patient Root only), `callers` limit
    whom it accepts (see `dcmtk.write_dcmqrscp_config`)."""
    node_port = free_port()
    port = free_port()
    storage = tmp_path / f"{name}-db"
    cfg = dcmtk.write_dcmqrscp_config(tmp_path / f"{name}.cfg", port, storage, "PACS",
                                      {"MAMVIEW": (LOOPBACK, node_port)}, callers=callers,
                                      max_associations=max_associations)
    files = sorted(str(p) for p in files)
    r = run(["dcmqridx", str(storage), *files], timeout=60)
    assert r.returncode == 0, r.stderr
    log_path = tmp_path / f"{name}.log"
    # fork mode (the default): dcmtk 3.6.7's --single-process crashed after a C-ECHO here;
    # -xv: offer JPEG 2000 lossless when sending C-MOVE sub-operations, as a J2K archive would;
    # -d: the log shows the requests it received (a test waits there for the C-CANCEL)
    with open(log_path, "w") as log:
        procs.start(["dcmqrscp", "-d", "-xv", *flags, "-c", str(cfg), str(port)], stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_port(port)
    p = Pacs()
    p.port, p.node_port, p.address, p.storage, p.files, p.log = (
        port, node_port, f"PACS@{LOOPBACK}:{port}", storage, files, log_path)
    return p


@pytest.fixture
def pacs(tmp_path, procs, priors):
    """dcmqrscp as a small PACS 'PACS' holding the priors; it knows MAMVIEW as a move
    destination at a free port (`pacs.node_port`), where the test starts our node."""
    return start_dcmqrscp(tmp_path, procs, priors.rglob("*.dcm"))


@pytest.fixture
def patient_root_pacs(tmp_path, procs, priors):
    """The same PACS offering only the Patient Root query/retrieve models (dcmqrscp -QS)."""
    return start_dcmqrscp(tmp_path, procs, priors.rglob("*.dcm"), flags=["-QS"],
                          name="pacs-patient-root")


@pytest.fixture
def strict_pacs(tmp_path, procs, priors):
    """The same PACS accepting only MAMVIEW from loopback as a caller."""
    return start_dcmqrscp(tmp_path, procs, priors.rglob("*.dcm"), name="pacs-strict",
                          callers=[("MAMVIEW", LOOPBACK), ("MAMVIEW", "localhost")])


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


class Recorder:
    """Collects node events (they arrive on worker threads)."""

    def __init__(self):
        self.events = []
        self._lock = threading.Lock()

    def __call__(self, ev):
        with self._lock:
            self.events.append(ev)

    def of(self, kind):
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]
