"""Our own model format, written once per model and read at every start.

A model folder holds `weights.pt` (a plain state dict, loadable with
`torch.load(weights_only=True)`), `config.json` (MiraiConfig, identity and provenance) and
`calibrator.json`. The official release is converted into it (`official.release`), the demo
model's trainer writes it directly (`tools/train_demo.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from mamview.core.models.errors import ModelUnavailable
from mamview.core.models.identity import ModelIdentity
from mamview.core.models.mirai import (MiraiCalibrator, MiraiConfig, MiraiNet, MiraiRiskModel,
                                       check_preprocessing_version, state_dict_sha256)
from mamview.core.models.official.limits import current_limits
from mamview.core.models.registry import MAX_CONFIG_BYTES

CONVERTED_FORMAT = "mamview-mirai/1"


def write_converted(directory: Path, net: MiraiNet, calibrator: MiraiCalibrator,
                    identity: ModelIdentity, provenance: dict[str, Any]) -> Path:
    """Write weights.pt / config.json / calibrator.json atomically into `directory`.

    Shared with the demo-model trainer so that every model folder has the same layout.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
        config = {"format": CONVERTED_FORMAT, "model": net.config.to_dict(),
                  "identity": identity.as_dict(), "provenance": provenance}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "calibrator.json").write_text(json.dumps(calibrator.to_dict(), indent=2))
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_converted(directory: str | os.PathLike
                   ) -> tuple[MiraiNet, MiraiCalibrator, ModelIdentity]:
    """Read a converted model folder → (MiraiNet in eval mode on CPU, calibrator, identity).

    Verifies the weights against the hash recorded at conversion, so a damaged or swapped
    weights.pt is refused instead of producing silently different risks.
    """
    directory = Path(directory)
    paths = {n: directory / n for n in ("config.json", "weights.pt", "calibrator.json")}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise ModelUnavailable(f"model folder {directory} lacks {', '.join(missing)}",
                               "convert the official Mirai release first")
    caps = {"config.json": MAX_CONFIG_BYTES, "calibrator.json": MAX_CONFIG_BYTES,
            "weights.pt": current_limits().max_file_bytes}
    for n, cap in caps.items():  # before torch.load / json.loads read them whole
        if paths[n].stat().st_size > cap:
            raise ModelUnavailable(f"{paths[n]} is larger than {cap:,} bytes",
                                   "convert the release again")
    try:
        config_doc = json.loads(paths["config.json"].read_text())
        if config_doc.get("format") != CONVERTED_FORMAT:
            raise ModelUnavailable(f"{paths['config.json']} has format "
                                   f"{config_doc.get('format')!r}, expected {CONVERTED_FORMAT!r}")
        config = MiraiConfig.from_dict(config_doc["model"])
        identity = ModelIdentity.from_dict(config_doc["identity"])
        calibrator = MiraiCalibrator.from_dict(json.loads(paths["calibrator.json"].read_text()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(paths["weights.pt"], map_location="cpu", weights_only=True)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"model folder {directory} is unreadable: {exc}") from exc
    check_preprocessing_version(identity, config)
    net = MiraiNet(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelUnavailable(f"{paths['weights.pt']} does not match config.json: {exc}") from exc
    if state_dict_sha256(net.state_dict()) != identity.weights_sha256:
        raise ModelUnavailable(f"{paths['weights.pt']} does not match the hash recorded when it "
                               "was written", "convert the release again")
    if calibrator.sha256 != identity.calibrator_sha256:
        raise ModelUnavailable(f"{paths['calibrator.json']} does not match the recorded hash")
    return net.eval(), calibrator, identity


def load_model(directory: str | os.PathLike, device: torch.device | str = "cpu",
               **kwargs: Any) -> MiraiRiskModel:
    """The MiraiRiskModel of a converted folder on `device` (kwargs go to MiraiRiskModel)."""
    net, calibrator, identity = load_converted(directory)
    return MiraiRiskModel(net, calibrator, identity, device, **kwargs)
