"""Which model produced a score: `ModelIdentity`, importable without torch.

The registry listing, the cache's read paths and the window name models by their identity long
before (and often without) anything loads the weights, so this module imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

# every field that holds text (all but clinically_validated and extra)
_TEXT_FIELDS = ("model_id", "name", "version", "weights_sha256", "calibrator_id",
                "calibrator_sha256", "preprocessing_version", "label")


@dataclass(frozen=True)
class ModelIdentity:
    """Everything a stored score needs to say which model produced it.

    `weights_sha256` and `calibrator_sha256` are hashes of the *content* (tensors, coefficients),
    so a score is recomputed whenever either changes, and never otherwise.
    `clinically_validated` means: weights whose performance was published on real clinical
    cohorts (official Mirai). It is *not* a regulatory clearance. The demo model is False and
    carries a `label` the GUI must show next to every number it produces.
    """

    model_id: str  # "mirai", "demo"
    name: str  # human name, e.g. "Mirai (official weights)"
    version: str
    weights_sha256: str
    calibrator_id: str
    calibrator_sha256: str
    preprocessing_version: str
    clinically_validated: bool
    label: str = ""  # e.g. "demo model — synthetic training data — not for clinical use"
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for score provenance and config files)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        """Inverse of `as_dict`; unknown keys are ignored so old files stay readable."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in data.items() if k in names})


def identity_from_config(data: Mapping[str, Any]) -> ModelIdentity:
    """The identity object of a config.json someone may have edited, tolerantly: a text field
    that is not a string reads as "", `clinically_validated` only as the JSON value true.

    Nothing here is made printable: callers that display `name` or `label` take them from the
    registry entry, which does that.
    """
    text = {k: data.get(k) if isinstance(data.get(k), str) else "" for k in _TEXT_FIELDS}
    return ModelIdentity(**text, clinically_validated=data.get("clinically_validated") is True)
