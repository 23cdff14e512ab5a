"""Device selection: CUDA, then MPS, then CPU; explicit requests fail loudly."""

from __future__ import annotations

import pytest
import torch

from mamview.core.models import device as dev
from mamview.core.models.errors import ModelUnavailable


def test_cpu_is_always_available():
    assert dev.select_device("cpu") == torch.device("cpu")
    assert dev.available_devices()[-1] == "cpu"


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.select_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.select_device("auto").type == "mps"
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    assert dev.select_device().type == "cpu"


def test_unavailable_device_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    with pytest.raises(ModelUnavailable, match="'cuda' is unavailable.*available: cpu"):
        dev.select_device("cuda")
    with pytest.raises(ModelUnavailable, match="MPS"):
        dev.select_device("mps")
    with pytest.raises(ValueError, match="unknown device"):
        dev.select_device("tpu")


def test_describe_cpu_counts_threads_in_english():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert dev.describe_device("cpu") == "CPU (1 thread)"  # provenance, status bar, check
        torch.set_num_threads(3)
        assert dev.describe_device("cpu") == "CPU (3 threads)"
    finally:
        torch.set_num_threads(before)
