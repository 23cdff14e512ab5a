"""First-run checks against real folders, the real disk, this machine's torch, and a stand-in
`nvidia-smi` executable on PATH (an external tool, so a shell script plays it)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

from mamview.core import firstrun
from mamview.core.firstrun import ERROR, OK, WARNING, ComputeFacts, assess_compute
from mamview.core.paths import Library
from mamview.core.services import default_cpu_threads


# ---------------------------------------------------------------- library location


def test_fresh_library_is_created_and_probe_file_removed(tmp_path):
    lib = Library(tmp_path / "deep" / "library")
    r = firstrun.check_library_writable(lib)
    assert r.level == OK and r.ok
    assert str(lib.home) in r.message
    for folder in (lib.home, lib.previews, lib.models, lib.logs, lib.inbox):
        assert folder.is_dir()
    assert sorted(p.name for p in lib.home.iterdir()) == ["inbox", "logs", "models", "previews"]


def test_library_location_that_is_a_file_is_an_error_and_left_alone(tmp_path):
    f = tmp_path / "library"
    f.write_bytes(b"someone's file")
    r = firstrun.check_library_writable(Library(f))
    assert r.level == ERROR and not r.ok
    assert "is a file" in r.message and str(f) in r.message
    assert "--home" in r.hint and "MAMVIEW_HOME" in r.hint
    assert f.read_bytes() == b"someone's file"


def test_library_that_cannot_be_created_names_the_reason(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    r = firstrun.check_library_writable(Library(blocker / "library"))
    assert r.level == ERROR
    assert "cannot write" in r.message and str(blocker / "library") in r.message
    assert r.details["errno"] is not None


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="permission bits do not stop root (CI runs as root)")
def test_read_only_library_folder_is_an_error(tmp_path):
    home = tmp_path / "ro"
    Library(home).ensure()
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = firstrun.check_library_writable(Library(home))
    finally:
        home.chmod(stat.S_IRWXU)
    assert r.level == ERROR and "cannot write" in r.message


# ---------------------------------------------------------------- disk space


def test_free_space_against_thresholds(tmp_path):
    lib = Library(tmp_path / "lib")
    free = shutil.disk_usage(tmp_path).free
    enough = firstrun.check_free_space(lib, min_free=0, warn_free=0)
    low = firstrun.check_free_space(lib, min_free=0, warn_free=free * 4 + 2**40)
    too_low = firstrun.check_free_space(lib, min_free=free * 4 + 2**40, warn_free=free * 8 + 2**41)
    assert (enough.level, low.level, too_low.level) == (OK, WARNING, ERROR)
    assert too_low.hint and "Moving the library" in too_low.hint
    # measured on the disk that will hold the library, which does not exist yet and is not created
    assert not lib.home.exists()
    assert enough.details["path"] == str(tmp_path)
    assert abs(enough.details["free_bytes"] - free) < 2**30


def test_default_thresholds_are_ordered():
    assert 0 < firstrun.MIN_FREE_BYTES < firstrun.WARN_FREE_BYTES


# ---------------------------------------------------------------- GPU / driver: the decision


def _facts(**kw) -> ComputeFacts:
    base = dict(torch_version="2.13.0+cpu", torch_cuda=None, cuda_available=False, cpu_threads=8)
    return ComputeFacts(**(base | kw))


def test_cpu_only_build_without_gpu_is_fine_and_says_cpu():
    r = assess_compute(_facts())
    assert r.level == OK
    assert "CPU (8 threads)" in r.message


def test_cpu_only_build_on_a_machine_with_an_nvidia_driver_points_to_the_cuda_build():
    r = assess_compute(_facts(nvidia_driver="550.54.14"))
    assert r.level == WARNING
    assert "550.54.14" in r.message and "CPU-only" in r.message and "CPU (8 threads)" in r.message
    assert "CUDA build" in r.hint


def test_cuda_build_without_driver_says_so():
    r = assess_compute(_facts(torch_version="2.13.0+cu128", torch_cuda="12.8"))
    assert r.level == WARNING
    assert "CUDA is unavailable" in r.message and "no NVIDIA driver" in r.message
    assert "CPU" in r.message


def test_cuda_build_with_unusable_driver_names_both_versions():
    r = assess_compute(_facts(torch_version="2.13.0+cu128", torch_cuda="12.8",
                              nvidia_driver="470.82.01"))
    assert r.level == WARNING
    assert "470.82.01" in r.message and "12.8" in r.message
    assert "update the NVIDIA driver" in r.hint


def test_working_cuda_names_the_gpu():
    r = assess_compute(_facts(torch_cuda="12.8", cuda_available=True,
                              gpu_names=("NVIDIA RTX A4000",), nvidia_driver="550.54.14"))
    assert r.level == OK and "NVIDIA RTX A4000" in r.message and "CUDA 12.8" in r.message


def test_cpu_setting_wins_over_a_working_gpu():
    r = assess_compute(_facts(torch_cuda="12.8", cuda_available=True, gpu_names=("G",)),
                       preference="cpu")
    assert r.level == OK and "CPU" in r.message and "G" not in r.message.replace("GPU", "")


def test_cuda_setting_on_a_machine_without_it_warns():
    r = assess_compute(_facts(), preference="cuda")
    assert r.level == WARNING and "CUDA" in r.message and "CPU" in r.message


def test_apple_gpu():
    assert "Apple GPU" in assess_compute(_facts(mps_available=True)).message


def test_broken_torch_is_an_error():
    r = assess_compute(_facts(torch_error="libtorch_cpu.so: cannot open shared object file"))
    assert r.level == ERROR and "libtorch_cpu.so" in r.message


# ---------------------------------------------------------------- GPU / driver: this machine


def test_probe_matches_this_torch():
    import torch

    facts = firstrun.probe_compute()
    assert facts.torch_version == torch.__version__
    assert facts.torch_cuda == torch.version.cuda
    assert facts.cuda_available == torch.cuda.is_available()
    assert facts.cpu_threads == default_cpu_threads()  # what scoring sets torch to
    r = firstrun.check_compute()
    assert r.level in (OK, WARNING)
    if not facts.cuda_available and not facts.mps_available:
        assert "CPU" in r.message


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    exe = folder / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)


needs_posix_without_driver = pytest.mark.skipif(
    sys.platform == "win32" or Path("/proc/driver/nvidia/version").exists(),
    reason="a real NVIDIA driver is answered from /proc first; the stand-in needs /bin/sh",
)


@needs_posix_without_driver
def test_driver_version_from_nvidia_smi(tmp_path, monkeypatch):
    _fake_nvidia_smi(tmp_path, 'echo "550.54.14"')
    monkeypatch.setenv("PATH", str(tmp_path))
    assert firstrun.nvidia_driver_version() == "550.54.14"


@needs_posix_without_driver
def test_failing_or_hanging_nvidia_smi_means_no_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    _fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert firstrun.nvidia_driver_version() is None
    _fake_nvidia_smi(tmp_path, "exec sleep 30")
    monkeypatch.setattr(firstrun, "NVIDIA_SMI_TIMEOUT_S", 0.5)
    assert firstrun.nvidia_driver_version() is None


@needs_posix_without_driver
def test_no_nvidia_smi_means_no_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert firstrun.nvidia_driver_version() is None


# ---------------------------------------------------------------- together


def test_run_checks_in_order_and_formatted(tmp_path):
    lib = Library(tmp_path / "lib")
    results = firstrun.run_checks(lib, min_free=0, warn_free=0)
    assert [r.name for r in results] == ["library", "disk", "gpu"]
    assert results[0].ok and results[1].level == OK
    text = firstrun.format_results(results)
    assert text.count("\n") >= 2 and str(lib.home) in text


def test_format_shows_hints_and_marks_errors():
    text = firstrun.format_results([
        firstrun.CheckResult("disk", ERROR, "Only 1.0 GiB free.", "free some space"),
        firstrun.CheckResult("gpu", OK, "CPU."),
    ])
    assert text.splitlines() == ["[FAIL] Only 1.0 GiB free.", "       → free some space", "[ok  ] CPU."]


def test_a_probe_that_does_not_answer_in_time_is_a_message_and_its_child_is_gone():
    import multiprocessing
    import time

    t0 = time.monotonic()
    facts = firstrun.probe_compute_elsewhere(timeout=0.001)
    assert time.monotonic() - t0 < 10
    assert facts.torch_version == "not importable" and "no answer within" in facts.torch_error
    assert "\n" not in facts.torch_error
    assert not [p for p in multiprocessing.active_children() if p.name == "mamview-probe"]
