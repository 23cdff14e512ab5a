"""User settings (JSON in the library folder) with a schema_version for later migrations."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mamview.core import reference

SCHEMA_VERSION = 1


@dataclass
class Settings:
    """What a user can change; unknown keys in the file are ignored, missing ones defaulted."""

    schema_version: int = SCHEMA_VERSION
    model: str = "auto"  # 'auto' = best installed model, else a model id
    device: str = "auto"  # auto | cpu | cuda | mps
    thresholds_percent: list[float] = field(
        default_factory=lambda: list(reference.DEFAULT_THRESHOLDS_PERCENT))
    pacs_nodes: list[dict] = field(default_factory=list)
    # the window's own DICOM storage node (receives pushes and the priors fetched by C-MOVE)
    node_enabled: bool = False
    node_ae_title: str = "MAMVIEW"
    node_port: int = 11112
    # whom the node accepts: calling AE titles and peer addresses (the PACS nodes above are added);
    # with none of them it starts only when node_allow_any is chosen, and then warns that it is open
    node_allowed_aes: list[str] = field(default_factory=list)
    node_allowed_hosts: list[str] = field(default_factory=list)
    node_allow_any: bool = False
    # score images outside the model's validated domain (digitised film, CR, lossy, For
    # Processing, synthetic 2D); such scores are labelled as such wherever they are shown
    score_out_of_domain: bool = False
    # UID root of the site for the SRs we write ('' = 2.25 UUID-derived UIDs, no registration needed)
    uid_root: str = ""
    # with two screens or more: images on one, the chart and metrics on another
    second_screen: bool = True


def load(path: str | os.PathLike) -> Settings:
    """Read settings; a missing or unreadable file gives the defaults (never raises)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Settings()
    if not isinstance(raw, dict):
        return Settings()
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in raw.items() if k in known}
    values["schema_version"] = SCHEMA_VERSION
    try:
        return Settings(**values)
    except TypeError:
        return Settings()


def save(settings: Settings, path: str | os.PathLike) -> None:
    """Write settings atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=2), encoding="utf-8")
    os.replace(tmp, path)
