"""A real PACS for the tests: Orthanc (the Debian package) with its own configuration in a temporary
folder, its DICOM and HTTP ports taking traffic from 127.0.0.1 alone, and stopped by its PID.

Orthanc only accepts the modalities registered here (DicomCheckModalityHost, no "always allow"),
so nothing but our own loopback peers can store, query or retrieve.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.net.conftest import LOOPBACK, free_port, wait_for_port

ORTHANC = shutil.which("Orthanc") or (shutil.which("Orthanc", path="/usr/sbin:/usr/bin"))

needs_orthanc = pytest.mark.skipif(ORTHANC is None,
                                   reason="Orthanc is not installed; .ci/run installs it")


class Orthanc:
    """One Orthanc process: `aet`, `dicom_port`, `http_port`, REST helpers, `stop()`."""

    def __init__(self, folder: Path, modalities: dict[str, tuple[str, int]], aet: str = "ORTHANC",
                 procs=None):
        self.folder, self.aet = Path(folder), aet
        self.dicom_port, self.http_port = free_port(), free_port()
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "mamview-test-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,  # HTTP: loopback only
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "DicomCheckCalledAet": True,
            "DicomCheckModalityHost": True,  # DICOM: registered peers at their address only
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowMove": False,
            "DicomModalities": {name.lower(): [name, host, port]
                                for name, (host, port) in modalities.items()},
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "Plugins": [],
            "StableAge": 1,
            "SaveJobs": False,
            "LogExportedResources": False,
            "HttpTimeout": 30,
        }
        self.config_path = self.folder / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.log = open(self.folder / "orthanc.log", "w")
        cmd = [ORTHANC, "--no-jobs", str(self.config_path)]
        start = procs.start if procs is not None else (
            lambda c, **kw: subprocess.Popen(c, start_new_session=True, **kw))
        self.proc = start(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"{self.aet}@{LOOPBACK}:{self.dicom_port}"

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        wait_for_port(self.http_port, timeout)
        wait_for_port(self.dicom_port, max(1.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise TimeoutError(f"Orthanc did not answer on port {self.http_port}; see {self.log.name}")

    # ---------------------------------------------------------------- REST (loopback)

    def _request(self, method: str, path: str, body=None, timeout: float = 60):
        data = None
        headers = {}
        if body is not None:
            if isinstance(body, (bytes, bytearray)):
                data, headers["Content-Type"] = bytes(body), "application/dicom"
            else:
                data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(f"http://{LOOPBACK}:{self.http_port}{path}", data=data,
                                     headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str, timeout: float = 60):
        return self._request("GET", path, timeout=timeout)

    def post(self, path: str, body=None, timeout: float = 120):
        return self._request("POST", path, body if body is not None else {}, timeout=timeout)

    def upload(self, paths) -> list[str]:
        """Store files through the REST API (no DICOM association); their instance ids."""
        ids = []
        for p in paths:
            ids.append(self.post("/instances", Path(p).read_bytes())["ID"])
        return ids

    def instances(self) -> list[dict]:
        """Every stored instance's main tags (SOPInstanceUID, SOPClassUID, Modality …)."""
        out = []
        for iid in self.get("/instances"):
            tags = self.get(f"/instances/{iid}/simplified-tags")
            out.append(tags)
        return out

    def stop(self) -> None:
        """Stop by PID (SIGTERM, then SIGKILL), bounded."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
