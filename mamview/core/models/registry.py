"""Which risk models this installation has, and why a missing one is missing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mamview.core.models.errors import ModelUnavailable
from mamview.core.paths import Library, resources_dir
from mamview.core.safety import printable

DEMO_LABEL = "demo model — synthetic training data — not for clinical use"
# config.json is written by us and a few KB long; anything far larger is not ours.
MAX_CONFIG_BYTES = 16 * 1024**2


@dataclass(frozen=True)
class ModelEntry:
    """One model the registry knows about."""

    model_id: str
    name: str
    folder: Path
    available: bool
    reason: str = ""  # why it is unavailable, in words a user can act on
    clinically_validated: bool = False
    label: str = ""


def read_identity(cfg: Path) -> dict:
    """The `identity` object of a model folder's config.json; ValueError/OSError if unusable.

    Bounded: a config.json over MAX_CONFIG_BYTES, not JSON, too deeply nested, or without an
    identity object is refused with a one-line reason.
    """
    if cfg.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"config.json is larger than {MAX_CONFIG_BYTES:,} bytes")
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except RecursionError:
        raise ValueError("config.json is nested too deeply") from None
    ident = doc.get("identity") if isinstance(doc, dict) else None
    if not isinstance(ident, dict):
        raise ValueError("config.json has no identity object")
    return ident


def _text(value: object, default: str) -> str:
    # names and labels are shown in the terminal and the GUI: one printable line
    return printable(value)[:200] if isinstance(value, str) else default


def _entry(model_id: str, name: str, folder: Path, missing_hint: str) -> ModelEntry:
    cfg = folder / "config.json"
    if not cfg.is_file() or not (folder / "weights.pt").is_file():
        return ModelEntry(model_id, name, folder, False, missing_hint)
    try:
        ident = read_identity(cfg)
    except (OSError, ValueError) as exc:
        return ModelEntry(model_id, name, folder, False,
                          f"unreadable config.json: {printable(exc)[:200]}")
    return ModelEntry(model_id, _text(ident.get("name"), name), folder, True, "",
                      ident.get("clinically_validated") is True, _text(ident.get("label"), ""))


def list_models(lib: Library) -> list[ModelEntry]:
    """Official Mirai (if installed) and the bundled demo model, best first."""
    return [
        _entry("mirai", "Mirai (official weights)", lib.models / "mirai",
               "official weights not installed: run `mamview models install PATH` with the "
               "release folder or zip"),
        _entry("demo", "Mirai-architecture demo model", resources_dir() / "demo_model",
               "the demo weights are not bundled in this build"),
    ]


def resolve(lib: Library, model_id: str = "auto") -> ModelEntry:
    """The model to use: `auto` is the best available one. Raises ModelUnavailable."""
    entries = list_models(lib)
    if model_id in ("auto", "", None):
        for e in entries:
            if e.available:
                return e
        raise ModelUnavailable("no risk model is available",
                               "; ".join(f"{e.model_id}: {e.reason}" for e in entries))
    for e in entries:
        if e.model_id == model_id:
            if not e.available:
                raise ModelUnavailable(f"model {model_id!r} is unavailable", e.reason)
            return e
    raise ModelUnavailable(f"unknown model {model_id!r}",
                           "known: " + ", ".join(e.model_id for e in entries))


def load(entry: ModelEntry, device):
    """Build the RiskModel of a registry entry on `device`."""
    from mamview.core.models.converted import load_model

    model = load_model(entry.folder, device)
    if entry.model_id == "demo":
        # the demo network is small: a reduced-resolution decode (2× its input) loses nothing
        model.decode_min_height = 2 * model.config.input_height
    return model
