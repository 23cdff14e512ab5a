"""Driving dcmtk's command-line peers (storescu, dcmqrscp) for the network benchmark and tests.

dcmtk is an optional tool, not a dependency: `have_dcmtk()` says whether it is installed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

MG_PROFILE = "Mammo"

# dcmtk names of the transfer syntaxes a mammography modality sends
_STORESCU_CFG = """\
# storescu profile for mammograms in the transfer syntaxes of real archives (written by mamview)
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LittleEndianExplicit
TransferSyntax2 = LittleEndianImplicit
[J2KLossless]
TransferSyntax1 = JPEG2000LosslessOnly
[J2K]
TransferSyntax1 = JPEG2000
[RLE]
TransferSyntax1 = RLELossless
[JPEGLossless]
TransferSyntax1 = JPEGLossless:Non-hierarchical-1stOrderPrediction

[[PresentationContexts]]
[MammoContexts]
{contexts}

[[Profiles]]
[{profile}]
PresentationContexts = MammoContexts
"""

_MG_CLASSES = ("DigitalMammographyXRayImageStorageForPresentation",
               "DigitalMammographyXRayImageStorageForProcessing")


def have_dcmtk(*tools: str) -> bool:
    """True when the named dcmtk tools (default storescu, dcmqrscp, dcmqridx) are on PATH."""
    return all(shutil.which(t) for t in tools or ("storescu", "dcmqrscp", "dcmqridx"))


def write_storescu_config(path: str | Path) -> Path:
    """A storescu config (`-xf PATH Mammo`) proposing MG For Presentation/Processing in
    uncompressed, JPEG 2000, RLE and JPEG Lossless transfer syntaxes, one context each."""
    lines, n = [], 0
    for cls in _MG_CLASSES:
        for ts in ("Uncompressed", "J2KLossless", "J2K", "RLE", "JPEGLossless"):
            n += 1
            lines.append(f"PresentationContext{n} = {cls}\\{ts}")
    path = Path(path)
    path.write_text(_STORESCU_CFG.format(contexts="\n".join(lines), profile=MG_PROFILE))
    return path


def storescu_command(host: str, port: int, called_ae: str, paths: Iterable[str | Path],
                     config: str | Path, calling_ae: str = "MODALITY") -> list[str]:
    """storescu pushing files/folders (recursively, skipping non-DICOM, not halting on a
    failed store) with the mammography profile."""
    return ["storescu", "+sd", "+r", "-nh", "-xf", str(config), MG_PROFILE,
            "-aet", calling_ae, "-aec", called_ae, host, str(port), *map(str, paths)]


def write_dcmqrscp_config(path: str | Path, port: int, storage: str | Path,
                          pacs_ae: str = "PACS",
                          destinations: dict[str, tuple[str, int]] | None = None,
                          callers: Iterable[tuple[str, str]] | None = None,
                          max_associations: int = 16) -> Path:
    """A dcmqrscp.cfg for a small PACS: one AE with its storage area (index + files) at
    `storage`, able to C-MOVE to `destinations` {AE: (host, port)}, and open to any caller
    unless `callers` lists the (AE title, host) pairs it accepts. dcmqrscp compares the host
    name it resolves for the caller (127.0.0.1 is "localhost"), so list both forms.
    `max_associations`: how many it serves at once (more are rejected)."""
    dests = list((destinations or {}).items())
    lines = [f"dest{i} = ({ae}, {h}, {p})" for i, (ae, (h, p)) in enumerate(dests)]
    peers = "ANY"
    if callers is not None:
        known = dict(destinations or {})
        names = []
        for i, (ae, host) in enumerate(callers):
            # the port of a caller is not checked; a destination's is kept for its C-MOVEs
            lines.append(f"caller{i} = ({ae}, {host}, {known.get(ae, (host, 104))[1]})")
            names.append(f"caller{i}")
        if not names:
            raise ValueError("callers: list at least one (AE title, host), or None for any")
        lines.append(f"callers = {', '.join(names)}")
        peers = "callers"
    hosts = "\n".join(lines)
    Path(storage).mkdir(parents=True, exist_ok=True)
    text = f"""\
NetworkTCPPort  = {port}
MaxPDUSize      = 65536
MaxAssociations = {max_associations}

HostTable BEGIN
{hosts}
HostTable END

VendorTable BEGIN
VendorTable END

AETable BEGIN
{pacs_ae}  {Path(storage).resolve()}  RW  (200, 1024mb)  {peers}
AETable END
"""
    path = Path(path)
    path.write_text(text)
    return path
