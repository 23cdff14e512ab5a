"""Small rules for untrusted values: names from hashes, paths that stay inside a root, UIDs that
are UIDs, text that is safe to print on a terminal, and private file modes for the library.

No value read from a file, a header or a peer ever becomes a path component: callers derive file
names with `hashed_name` and check the result with `inside`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from mamview.core.errors import InputRefused

# PS3.5 §9.1: components of digits separated by dots, at most 64 characters. Leading zeros in a
# component break the letter of the rule but are common in real archives, so they are admitted.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
MAX_UID_LENGTH = 64
# C0 and C1 controls and DEL (ESC starts terminal escape sequences)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
PRIVATE_UMASK = 0o077


def is_valid_uid(text: str | None) -> bool:
    """True for a syntactically valid DICOM UID (digits and dots, ≤ 64 characters)."""
    if not text or len(text) > MAX_UID_LENGTH:
        return False
    return _UID.fullmatch(text) is not None


def hashed_name(identifier: str, suffix: str = "") -> str:
    """A file name derived from `identifier` alone: 32 hex digits of its SHA-256, then `suffix`.

    The same identifier always gives the same name; no character of it reaches the file system.
    """
    digest = hashlib.sha256(identifier.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return digest + suffix


def inside(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` resolved, if it lies under `root` (resolved); InputRefused otherwise."""
    base = Path(root).resolve()
    target = Path(path).resolve()
    if target != base and base not in target.parents:
        raise InputRefused(f"{path} is outside {base}")
    return target


def printable(text: object) -> str:
    """`text` with control characters shown as escapes, safe to write to a terminal or a log line.

    Undecodable bytes of file names (lone surrogates from surrogateescape) are shown as \\udcXX
    rather than making the write fail."""
    clean = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))
    return clean.encode("utf-8", "backslashreplace").decode("utf-8")


def private_umask() -> int:
    """Make files and folders this process creates private to the user (umask 077); returns the old mask."""
    return os.umask(PRIVATE_UMASK)
