"""Model errors, importable without torch (the registry listing, the GUI start and the CLI's
error handler use them)."""

from __future__ import annotations

from mamview.core.errors import InputRefused, MamviewError


class ModelUnavailable(MamviewError):
    """A model cannot be used here; `reason` says why in words a user can act on.

    Raised for missing or corrupt weights, a missing optional dependency or an unusable device.
    `hint` optionally says what to do about it (e.g. which command converts the official files).
    """

    def __init__(self, reason: str, hint: str = ""):
        self.reason = reason
        self.hint = hint
        super().__init__(f"{reason} ({hint})" if hint else reason)


class UnsafeSnapshotError(InputRefused):
    """A snapshot file references something we will not load; nothing from it was executed."""


class SnapshotFormatError(InputRefused):
    """A snapshot file is readable but not shaped like an official Mirai file."""


class ReleaseIncomplete(ModelUnavailable, InputRefused):
    """The path given as a release lacks one of the three official files (or does not exist)."""
