"""The contract every risk model fulfils, whatever its weights.

A risk model turns the four standard views of one screening exam into cumulative, calibrated
breast-cancer risk for years 1..5. The inference service, the registry and the CLI only talk to
`RiskModel`; Mirai with official weights and the bundled demo model are two implementations.

Nothing here imports Qt or touches the cache: a model is a pure function of pixels and weights,
identified by `ModelIdentity` (models.identity, torch-free; re-exported here) so that every stored
score can say exactly what produced it.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch

from mamview.core.models.identity import ModelIdentity

#: Risk horizons every model reports: cumulative risk by the end of year 1..5.
YEARS = 5


class ModelInputError(ValueError):
    """The exam cannot be scored as given (wrong set of views, unknown laterality, bad array)."""


class ViewImage(NamedTuple):
    """One view handed to a model.

    `array` is the stored pixel array *after* the modality LUT (Rescale Slope/Intercept or
    Modality LUT Sequence), before any VOI window: models window it themselves so that their
    preprocessing matches their training. A plain `(array, laterality, view)` tuple is accepted
    wherever a ViewImage is.
    """

    array: np.ndarray
    laterality: str  # "R" or "L"
    view: str  # "CC", "MLO" (or "ML")
    voi_function: str = "LINEAR"  # VOILUTFunction (0028,1056): LINEAR or SIGMOID
    window: str = "minmax"  # "minmax": window to the array's range; "none": already 0..65535


def as_view_images(images: Sequence[Any]) -> list[ViewImage]:
    """Normalise tuples of 3..5 items to ViewImage."""
    out = []
    for item in images:
        if isinstance(item, ViewImage):
            out.append(item)
        elif isinstance(item, (tuple, list)) and 3 <= len(item) <= 5:
            out.append(ViewImage(*item))
        else:
            raise ModelInputError(f"expected (array, laterality, view), got {type(item).__name__}")
    return out


@dataclass
class ExamTensors:
    """A preprocessed batch of exams, ready for a Mirai-architecture network.

    images: float32 [B, 4, C, H, W] (views first, then channels).
    view_seq, side_seq, time_seq: int64 [B, 4] (CC=0/MLO=1, R=0/L=1, time 0 = this exam).
    flipped: per view, whether preprocessing mirrored it (align-to-left), for display and audit.
    """

    images: torch.Tensor
    view_seq: torch.Tensor
    side_seq: torch.Tensor
    time_seq: torch.Tensor
    flipped: list[list[bool]] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        """Number of exams in the batch."""
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "ExamTensors":
        """The same batch on another device."""
        return ExamTensors(self.images.to(device, non_blocking=non_blocking),
                           self.view_seq.to(device), self.side_seq.to(device),
                           self.time_seq.to(device), self.flipped)

    @staticmethod
    def collate(batches: Sequence["ExamTensors"]) -> "ExamTensors":
        """Concatenate several batches (e.g. one per exam) along the batch dimension."""
        if not batches:
            raise ModelInputError("nothing to collate")
        return ExamTensors(torch.cat([b.images for b in batches]),
                           torch.cat([b.view_seq for b in batches]),
                           torch.cat([b.side_seq for b in batches]),
                           torch.cat([b.time_seq for b in batches]),
                           [f for b in batches for f in b.flipped])


class RiskModel(abc.ABC):
    """A model that scores one screening exam (four views) with 5-year cumulative risk."""

    @property
    @abc.abstractmethod
    def identity(self) -> ModelIdentity:
        """Which weights, calibrator and preprocessing this model uses."""

    @abc.abstractmethod
    def preprocess(self, images: Sequence[ViewImage | tuple]) -> ExamTensors:
        """Four (array, laterality, view) items of one exam → a batch of one exam.

        Raises ModelInputError when the four views are not exactly R/L × CC/MLO.
        """

    @abc.abstractmethod
    def predict(self, batch: ExamTensors) -> np.ndarray:
        """Calibrated cumulative risk fractions, float64 [B, 5] for years 1..5 (not rounded)."""

    def score_exam(self, images: Sequence[ViewImage | tuple]) -> np.ndarray:
        """Convenience: preprocess and predict one exam → float64 [5]."""
        return self.predict(self.preprocess(images))[0]


def round_risks(risks: np.ndarray, decimals: int = 4) -> np.ndarray:
    """Round like the reference implementation: Python `round` on each float64 value.

    Python's round is correctly rounded on the binary value (ties to even), which numpy's
    `np.round` (scale, round, unscale) is not in every case; the published numbers use the former.
    """
    arr = np.asarray(risks, dtype=np.float64)
    flat = [round(float(v), decimals) if math.isfinite(v) else float(v) for v in arr.ravel()]
    return np.array(flat, dtype=np.float64).reshape(arr.shape)
