"""Choosing and describing the compute device for inference (CUDA, then Apple MPS, then CPU)."""

from __future__ import annotations

import torch

from .errors import ModelUnavailable

PREFERENCES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Device kinds usable in this process, best first (always ends with 'cpu')."""
    kinds = []
    if torch.cuda.is_available():
        kinds.append("cuda")
    if _mps_available():
        kinds.append("mps")
    return kinds + ["cpu"]


def select_device(preference: str = "auto") -> torch.device:
    """'auto' → the best available device; 'cpu' / 'cuda' / 'mps' (or 'cuda:1') → that one.

    Raises ModelUnavailable with the reason and the usable alternatives when an explicitly
    requested device is not available, rather than silently running somewhere slower.
    """
    pref = (preference or "auto").strip().lower()
    kind = pref.split(":", 1)[0]
    if kind not in PREFERENCES:
        raise ValueError(f"unknown device {preference!r}; choose one of {', '.join(PREFERENCES)}")
    avail = available_devices()
    if kind == "auto":
        return torch.device(avail[0])
    if kind not in avail:
        why = {
            "cuda": "no CUDA GPU is visible to this torch build "
                    f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not compiled in'})",
            "mps": "Apple Metal (MPS) is not available on this machine",
        }[kind]
        raise ModelUnavailable(f"device {preference!r} is unavailable: {why}",
                               f"available: {', '.join(avail)}")
    if kind == "cuda" and ":" in pref:
        index = int(pref.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise ModelUnavailable(f"device {preference!r} is unavailable: only "
                                   f"{torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    return torch.device(kind)


def describe_device(device: torch.device | str) -> str:
    """Human description for logs and score provenance, e.g. 'CPU (2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} (cuda:{index}, {props.total_memory / 2**30:.0f} GiB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    n = torch.get_num_threads()
    return f"CPU ({n} thread{'s' if n != 1 else ''})"
