"""Mirai's test-time preprocessing, stage by stage (spec §1.2, §2.3, §3).

    modality-LUT array ─ min-max window (LINEAR | SIGMOID) → uint16 (truncate)
        ─ antialiased bilinear resize to H×W (no aspect preservation)
        ─ align_to_left (mirror iff the left edge strip is brighter than the right one)
        ─ float, no /65535 scaling ─ 3 identical channels ─ (x − 7047.99) / 12005.5

Each stage is a small pure function so tests can check it against hand-computed cases.
The pipeline follows the reference *pydicom* decoding path (the dcmtk path differs by at most one
grey level on simple images; see the spec §2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import ExamTensors, ModelInputError, ViewImage, as_view_images

#: Bump whenever any stage below changes numerically: scores made with another version are stale.
PREPROCESSING_VERSION = "mirai-pydicom-minmax/1"

UINT16_MAX = 65535

# Codes the network was trained with (spec §1.2 step 5).
VIEW_CODES = {"CC": 0, "MLO": 1, "ML": 1}
SIDE_CODES = {"R": 0, "L": 1}


def view_code(view: str) -> int:
    """CC → 0; MLO and ML → 1. Anything else (XCCL, LM, …) is not a Mirai input."""
    try:
        return VIEW_CODES[str(view)]
    except KeyError:
        raise ModelInputError(f"view {view!r} is not CC, MLO or ML") from None


def side_code(laterality: str) -> int:
    """R → 0, L → 1 (exact upper-case letters, as the reference requires)."""
    try:
        return SIDE_CODES[str(laterality)]
    except KeyError:
        raise ModelInputError(f"laterality {laterality!r} is not R or L") from None


def minmax_window(arr: np.ndarray, voi_function: str = "LINEAR") -> np.ndarray:
    """Window an array to its own [min, max] on the 0..65535 scale → uint16 (spec §2.3 step 4-5).

    Uses the DICOM windowing formulas with centre c = (lo+hi+1)/2 and width w = hi−lo+1, evaluated
    in float64 in the same operation order as pydicom's `apply_windowing`, so truncation to uint16
    lands on the same integers as the reference. A constant image maps to all zeros.
    """
    func = (voi_function or "LINEAR").upper()
    v = np.asarray(arr, dtype=np.float64)
    if v.size == 0:
        raise ModelInputError("empty pixel array")
    lo, hi = float(v.min()), float(v.max())
    center, width = (lo + hi + 1) / 2, hi - lo + 1
    if func == "LINEAR":
        c, w = center - 0.5, width - 1
        if w == 0:  # constant image: everything is "below" the window
            return np.zeros(v.shape, np.uint16)
        # Same expression as pydicom for the in-window pixels, evaluated in place over the
        # whole array (fancy indexing was the slowest step); the tails are then overwritten.
        below = v <= c - w / 2
        above = v > c + w / 2
        out = np.subtract(v, c, out=v if v is not arr else None)
        out /= w
        out += 0.5
        out *= UINT16_MAX
        out[below] = 0.0
        out[above] = UINT16_MAX
    elif func == "SIGMOID":
        out = UINT16_MAX / (1 + np.exp(-4 * (v - center) / width))
    else:
        # The reference raises for LINEAR_EXACT too; refusing is better than guessing.
        raise ModelInputError(f"VOI LUT function {voi_function!r} is not supported by Mirai")
    return out.astype(np.uint16)  # truncates, like the reference


def to_grey16(view: ViewImage) -> np.ndarray:
    """A view's array → 2-D integer image on 0..65535 (window stage + channel averaging)."""
    arr = np.asarray(view.array)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        pass  # channel-averaged after windowing, as the reference does
    elif arr.ndim != 2:
        raise ModelInputError(f"expected a 2-D pixel array, got shape {arr.shape}")
    if view.window == "minmax":
        img = minmax_window(arr, view.voi_function)
    elif view.window == "none":
        if arr.min() < 0 or arr.max() > UINT16_MAX:
            raise ModelInputError("window='none' needs values within 0..65535")
        img = arr.astype(np.uint16)
    else:
        raise ModelInputError(f"unknown window {view.window!r}")
    img = img.astype(np.int32)
    if img.ndim == 3:
        # Reference averages RGB(A) to one channel; the cast back to int is our choice (uncertain).
        img = img.mean(axis=-1).astype(np.int32)
    return img


def _round_half_up(x: torch.Tensor) -> torch.Tensor:
    # PIL mode 'I' rounds each resampling pass with (int)(v + 0.5) for v >= 0.
    return torch.floor(x + 0.5)


def resize_like_pil(img: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize to [height, width], float64, integer-valued.

    The reference resizes a PIL mode 'I' image: separable triangle filter widened by the
    downscale factor, horizontal pass first, each pass rounded to int32. torch's antialiased
    bilinear uses the same filter; doing the two passes separately in float64 and rounding after
    each reproduces PIL's result: bit-exact for 3062×2394 and 4096×3328 → 2048×1664, otherwise
    ≤1 grey level on ≤0.01 % of pixels (summation-order ties). Pillow ≥13 sometimes runs the
    vertical pass first; Pillow 9.0 (pinned by the reference) never does, and neither do we.
    Non-antialiased resizing would differ by thousands of grey levels.
    """
    x = torch.as_tensor(np.asarray(img) if not isinstance(img, torch.Tensor) else img)
    x = x.to(torch.float64)[None, None]
    h, w = x.shape[-2:]
    if w != width:
        x = _round_half_up(F.interpolate(x, size=(h, width), mode="bilinear",
                                         align_corners=False, antialias=True))
    if h != height:
        x = _round_half_up(F.interpolate(x, size=(height, width), mode="bilinear",
                                         align_corners=False, antialias=True))
    return x[0, 0]


def align_to_left(img: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Mirror horizontally iff S_left > S_right (strict; ties do not flip). Spec §3.2.

    S_left / S_right are float64 sums over the first / last q = W − ⌊3W/4⌋ columns of the
    resized image. Returns the (possibly mirrored) image and whether it was mirrored.
    """
    width = img.shape[-1]
    q = width - (3 * width) // 4
    s_left = img[..., :q].to(torch.float64).sum()
    s_right = img[..., width - q:].to(torch.float64).sum()
    if bool(s_left > s_right):
        return torch.flip(img, dims=[-1]), True
    return img, False


def normalize(img: torch.Tensor, mean: float, std: float, num_chan: int = 3) -> torch.Tensor:
    """[H, W] grey levels → float32 [num_chan, H, W] = (v − mean) / std, identical channels.

    The one-element mean/std of the reference broadcast over all three channels (spec §3.3).
    """
    x = img.to(torch.float32)
    x = (x - torch.tensor(mean, dtype=torch.float32)) / torch.tensor(std, dtype=torch.float32)
    return x.unsqueeze(0).expand(num_chan, *x.shape)


def aligned_grey(view: ViewImage, height: int, width: int) -> tuple[torch.Tensor, bool]:
    """The stages before normalisation: window, resize, align → (float64 [height, width] of
    integers in 0..65535, mirrored?)."""
    grey = to_grey16(view)
    resized = resize_like_pil(grey, height, width)
    return align_to_left(resized)


def preprocess_view(view: ViewImage, height: int, width: int, mean: float, std: float,
                    num_chan: int = 3) -> tuple[torch.Tensor, bool]:
    """One view → (float32 [num_chan, height, width], mirrored?)."""
    aligned, flipped = aligned_grey(view, height, width)
    return normalize(aligned, mean, std, num_chan), flipped


def exam_codes(images: Sequence[ViewImage]) -> tuple[list[int], list[int]]:
    """View and side codes of four views; they must cover R/L × CC/MLO exactly once each."""
    if len(images) != 4:
        raise ModelInputError(f"Mirai needs exactly 4 views (R/L × CC/MLO), got {len(images)}")
    views = [view_code(im.view) for im in images]
    sides = [side_code(im.laterality) for im in images]
    if len(set(zip(views, sides))) != 4:
        got = ", ".join(f"{im.laterality}{im.view}" for im in images)
        raise ModelInputError(f"views must be RCC, LCC, RMLO and LMLO once each; got {got}")
    return views, sides


def preprocess_exam(images: Sequence[ViewImage | tuple], height: int = 2048, width: int = 1664,
                    mean: float = 7047.99, std: float = 12005.5,
                    num_chan: int = 3) -> ExamTensors:
    """Four views of one exam → ExamTensors with images float32 [1, 4, num_chan, H, W].

    Views keep the order given (the network is invariant to it); time_seq is all zeros because
    the released model scores one exam at a time.
    """
    views = as_view_images(images)
    view_seq, side_seq = exam_codes(views)
    tensors, flipped = [], []
    for v in views:
        t, f = preprocess_view(v, height, width, mean, std, num_chan)
        tensors.append(t)
        flipped.append(f)
    return ExamTensors(
        images=torch.stack(tensors).unsqueeze(0),
        view_seq=torch.tensor([view_seq], dtype=torch.int64),
        side_seq=torch.tensor([side_seq], dtype=torch.int64),
        time_seq=torch.zeros(1, 4, dtype=torch.int64),
        flipped=[flipped],
    )


@dataclass(frozen=True)
class PreprocessSpec:
    """The numbers of `preprocess_exam`, picklable, so that another process can run the
    stages before normalisation (`grey_exam`) and this one finish them (`normalize_grey`)
    with the same result, bit for bit: the aligned image is integers in 0..65535, so it
    travels as uint16 (a quarter of float32 × 3 channels) and loses nothing."""

    height: int = 2048
    width: int = 1664
    mean: float = 7047.99
    std: float = 12005.5
    num_chan: int = 3


@dataclass
class GreyExam:
    """One exam after `grey_exam`: uint16 [4, H, W] aligned grey levels, codes and flips."""

    grey: np.ndarray
    view_seq: list[int]
    side_seq: list[int]
    flipped: list[bool]


def grey_exam(images: Sequence[ViewImage | tuple], spec: PreprocessSpec) -> GreyExam:
    """Four views → their aligned grey levels (the stages of `preprocess_exam` before
    normalisation), in the order given."""
    views = as_view_images(images)
    view_seq, side_seq = exam_codes(views)
    grey = np.empty((len(views), spec.height, spec.width), np.uint16)
    flipped = []
    for i, v in enumerate(views):
        aligned, f = aligned_grey(v, spec.height, spec.width)
        arr = aligned.numpy()
        if arr.min() < 0 or arr.max() > UINT16_MAX:  # cannot happen (a convex filter): be sure
            raise ModelInputError("resized grey levels outside 0..65535")
        grey[i] = arr
        flipped.append(f)
    return GreyExam(grey, view_seq, side_seq, flipped)


def normalize_grey(grey: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Grey levels [..., H, W] (uint16 values, any integer dtype; int16 is read as its uint16
    bits) → float32 [..., num_chan, H, W], on grey's device: `normalize` of every image."""
    x = grey.to(torch.int32)
    if grey.dtype == torch.int16:
        x = x.bitwise_and_(UINT16_MAX)  # int16 carries uint16 bits (every device has int16)
    x = x.to(torch.float32)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device)
    x = (x - mean) / std
    return x.unsqueeze(-3).expand(*x.shape[:-2], spec.num_chan, *x.shape[-2:])


def q_columns(width: int) -> int:
    """Width of the edge strips align_to_left compares (416 for W = 1664)."""
    return width - math.floor(3 * width / 4)
