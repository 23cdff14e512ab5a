"""Finding the official release (a folder or its zip) and converting it once into our format.

`convert_release` reads the three files through the restricted readers, checks the structure and
shapes, and writes `weights.pt` / `config.json` / `calibrator.json` with
`converted.write_converted`. Nothing is written unless all of it passes.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import stat
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from mamview.core.errors import InputRefused, LimitExceeded, MamviewError
from mamview.core.models.converted import CONVERTED_FORMAT, write_converted
from mamview.core.models.errors import ReleaseIncomplete, SnapshotFormatError
from mamview.core.models.identity import ModelIdentity
from mamview.core.models.mirai import MiraiCalibrator, MiraiNet, state_dict_sha256
from mamview.core.models.preprocess import PREPROCESSING_VERSION
from mamview.core.safety import printable

from .containers import open_zip, read_member, read_regular_file, safe_torch_load
from .limits import Budget, SnapshotLimits, current_limits, exc_text, over, short
from .network import build_config, build_net, build_state_dict
from .readers import read_calibrator, read_encoder, read_transformer
from .unpickler import safe_pickle_load
from .walk import plain

# Official file names (spec §6.1). Older releases spell the calibrator differently.
ENCODER_FILES = ("mgh_mammo_MIRAI_Base_May20_2019.p",)
TRANSFORMER_FILES = ("mgh_mammo_cancer_MIRAI_Transformer_Jan13_2020.p",)
CALIBRATOR_FILES = ("Mirai_calibrator_mar12_2022.p", "Mirai_pred_rf_callibrator_mar12_2022.p",
                    "MIRAI_FULL_PRED_RF.callibrator.p")

# SHA-256 reported by a third party (spec §6.1, unverified): a match is recorded, not required.
PUBLISHED_SHA256 = {
    "mgh_mammo_MIRAI_Base_May20_2019.p":
        "e66261f434474686462e5c7035de37452f47e4e7cc8831086be19397383e8af3",
    "mgh_mammo_cancer_MIRAI_Transformer_Jan13_2020.p":
        "cb4ef50459d747d38edfb846b3cd29869ccad9b7e291eb5f2fe66559d914e610",
    "Mirai_calibrator_mar12_2022.p":
        "822092d81272c97883d54a4bde0bc1cdcebadb861dea8467cb93201fedb73efa",
}

MODEL_SUBDIR = "mirai"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_WANTED = {"encoder": ENCODER_FILES, "transformer": TRANSFORMER_FILES,
           "calibrator": CALIBRATOR_FILES}


def _find_in_folder(src: Path, limits: SnapshotLimits) -> dict[str, Path]:
    """role → path of the official file names under `src`, searched breadth-first and bounded
    (entries and depth), not following links to folders."""
    names = {n for group in _WANTED.values() for n in group}
    found: dict[str, Path] = {}
    seen = 0
    level = [src]
    for depth in range(limits.max_folder_depth + 1):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                if folder == src:
                    raise InputRefused(f"cannot read the folder {printable(src)}: "
                                       f"{exc.strerror or exc}") from exc
                continue  # an unreadable subfolder cannot hold what we need
            seen += len(entries)
            if seen > limits.max_entries:
                raise over(f"{printable(src)}: entries searched for the release files", seen,
                           limits.max_entries, "max_entries")
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    below.append(Path(e.path))
                elif e.name in names and e.name not in found:
                    found[e.name] = Path(e.path)
        level = below
        if not level:
            break
    return _first_per_role(found)


def _first_per_role(found: dict[str, Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for role, group in _WANTED.items():
        for n in group:
            if n in found:
                out[role] = found[n]
                break
    return out


def _collect_release(src: Path, limits: SnapshotLimits | None = None
                     ) -> dict[str, tuple[str, bytes]]:
    """role → (file name, bytes) from a folder (searched recursively) or a release zip.

    Refuses, with a one-line message, a missing path, something that is neither a folder nor a
    zip, a release lacking a file, and anything over the size caps (checked before reading).
    """
    limits = limits or current_limits()
    shown = printable(src)
    try:
        st = src.stat()
    except OSError as exc:
        if not os.path.lexists(src):
            raise ReleaseIncomplete(f"{shown} does not exist",
                                    "give the Mirai release folder or its zip") from exc
        raise InputRefused(f"cannot read {shown}: {exc.strerror or exc}") from exc
    found: dict[str, tuple[str, bytes]] = {}
    if stat.S_ISDIR(st.st_mode):
        paths = _find_in_folder(src, limits)
        total = 0
        for role, path in paths.items():
            data = read_regular_file(path, limits.max_file_bytes, path.name)
            total += len(data)
            if total > limits.max_release_bytes:
                raise over(f"{shown}: release bytes", total, limits.max_release_bytes,
                           "max_release_bytes")
            found[role] = (path.name, data)
    elif stat.S_ISREG(st.st_mode) and _is_zip_path(src):
        if st.st_size > limits.max_release_bytes:
            raise over(f"{shown}: zip bytes", st.st_size, limits.max_release_bytes,
                       "max_release_bytes")
        found = _collect_from_zip(src, limits)
    else:
        raise InputRefused(f"{shown} is neither a folder nor a zip file; give the Mirai release "
                           "folder or its zip")
    missing = [r for r in _WANTED if r not in found]
    if missing:
        expected = "; ".join(f"{r}: {' or '.join(_WANTED[r])}" for r in missing)
        raise ReleaseIncomplete(f"the Mirai release at {shown} lacks {', '.join(missing)}",
                                f"expected {expected}")
    return found


def _is_zip_path(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _collect_from_zip(src: Path, limits: SnapshotLimits) -> dict[str, tuple[str, bytes]]:
    shown = printable(src)
    try:
        fh = open(src, "rb")
    except OSError as exc:
        raise InputRefused(f"cannot read {shown}: {exc.strerror or exc}") from exc
    found: dict[str, tuple[str, bytes]] = {}
    with fh, open_zip(fh, shown, limits) as zf:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            name = PurePosixPath(info.filename).name
            if not info.is_dir() and name not in members:
                members[name] = info
        chosen = {}
        for role, names in _WANTED.items():
            for n in names:
                if n in members:
                    chosen[role] = (n, members[n])
                    break
        total = sum(info.file_size for _, info in chosen.values())
        if total > limits.max_release_bytes:  # declared sizes, before inflating anything
            raise over(f"{shown}: release bytes", total, limits.max_release_bytes,
                       "max_release_bytes")
        for role, (n, info) in chosen.items():
            found[role] = (n, read_member(zf, info, shown, limits))
    return found


def _detect_format(data: bytes) -> str:
    return "zip" if zipfile.is_zipfile(io.BytesIO(data)) else "legacy"


def official_identity(weights_sha256: str, calibrator: MiraiCalibrator) -> ModelIdentity:
    """Identity recorded with every score made by converted official weights."""
    return ModelIdentity(
        model_id="mirai", name="Mirai (official weights)", version=weights_sha256[:12],
        weights_sha256=weights_sha256, calibrator_id=calibrator.calibrator_id,
        calibrator_sha256=calibrator.sha256, preprocessing_version=PREPROCESSING_VERSION,
        clinically_validated=True,
        label="Mirai (MIT Jameel Clinic) — research software, not a cleared medical device; "
              "trained on Hologic Selenia images")


def convert_release(src: str | os.PathLike, models_dir: str | os.PathLike,
                    limits: SnapshotLimits | None = None) -> Path:
    """Convert the official release (folder or snapshots.zip) once → `models_dir/mirai/`.

    Reads the three files through the restricted unpickler, checks the structure and shapes,
    and writes our own format. Returns the output folder. Every refusal of the input is an
    `InputRefused` (a `MamviewError` with a one-line message): `ReleaseIncomplete` (also a
    ModelUnavailable) when the path or a file is missing, `UnsafeSnapshotError` /
    `SnapshotFormatError` when a file is not what it should be, `LimitExceeded` when it is over
    a cap of `limits` (default `current_limits()`). Nothing is written unless all of it passes.
    """
    src = Path(src)
    limits = limits or current_limits()
    try:
        net, calibrator, identity, provenance = _read_release(src, limits)
    except MamviewError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise LimitExceeded(f"{printable(src)}: too large or too deeply nested to read "
                            f"({type(exc).__name__})") from exc
    except Exception as exc:  # anything a hostile file provokes in torch/numpy: a message
        raise SnapshotFormatError(f"{printable(src)}: not a usable Mirai release "
                                  f"({type(exc).__name__}: {exc_text(exc)})") from exc
    return write_converted(Path(models_dir) / MODEL_SUBDIR, net, calibrator, identity, provenance)


def _read_release(src: Path, limits: SnapshotLimits
                  ) -> tuple[MiraiNet, MiraiCalibrator, ModelIdentity, dict[str, Any]]:
    deadline = time.monotonic() + limits.max_seconds  # one wall-time budget for the release
    files = _collect_release(src, limits)
    enc_name, enc_bytes = files["encoder"]
    tr_name, tr_bytes = files["transformer"]
    cal_name, cal_bytes = files["calibrator"]
    enc = read_encoder(safe_torch_load(enc_bytes, enc_name, limits, deadline), enc_name)
    tr = read_transformer(safe_torch_load(tr_bytes, tr_name, limits, deadline), tr_name)
    calibrator = read_calibrator(safe_pickle_load(io.BytesIO(cal_bytes), cal_name,
                                                  Budget(limits, cal_name, deadline)),
                                 calibrator_id=Path(cal_name).stem)
    config = build_config(enc, tr)
    if len(calibrator.years) != config.max_followup:
        raise SnapshotFormatError(f"calibrator has {len(calibrator.years)} years, the model "
                                  f"{config.max_followup}")
    net = build_net(config, enc, tr)
    net.load_state_dict(build_state_dict(enc, tr, net.state_dict()), strict=True)
    weights_sha = state_dict_sha256(net.state_dict())
    identity = official_identity(weights_sha, calibrator)

    notes = list(tr.notes)
    for key, spec_value in (("img_mean", [7047.99]), ("img_std", [12005.5]),
                            ("img_size", [1664, 2048])):
        got = enc.args.get(key)
        if got is not None and plain(got) != spec_value:
            notes.append(f"encoder args.{key}={short(got)} differs from the inference config "
                         f"{spec_value}; the inference config is used, as in the reference")
    sources = []
    for role, (name, data) in files.items():
        published = PUBLISHED_SHA256.get(name)
        digest = _sha256(data)
        sources.append({"role": role, "file": name, "size": len(data), "sha256": digest,
                        "format": _detect_format(data) if role != "calibrator" else "pickle",
                        "matches_published_sha256": (digest == published) if published else None})
    provenance = {
        "source": str(src.resolve()),
        "sources": sources,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "converter": f"mamview.core.models.official ({CONVERTED_FORMAT})",
        "torch_version": torch.__version__,
        "weights_sha256": weights_sha,
        "hyperparameter_evidence": tr.evidence,
        "encoder_args": plain(enc.args),
        "notes": notes,
    }
    return net, calibrator, identity, provenance
