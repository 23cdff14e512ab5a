"""Model errors, importable without torch (the registry listing and the GUI start use them)."""

from __future__ import annotations

from mamview.core.errors import MamviewError


class ModelUnavailable(MamviewError):
    """A model cannot be used here; `reason` says why in words a user can act on.

    Raised for missing or corrupt weights, a missing optional dependency or an unusable device.
    `hint` optionally says what to do about it (e.g. which command converts the official files).
    """

    def __init__(self, reason: str, hint: str = ""):
        self.reason = reason
        self.hint = hint
        super().__init__(f"{reason} ({hint})" if hint else reason)
