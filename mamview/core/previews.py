"""Display-ready previews: decoded (reduced where the codec allows), windowed, oriented for the
hanging and downsampled, stored as 8-bit PNG files in the cache.

A preview is made once per image and read many times, so writing favours speed (PNG level 1) and
safety (atomic replace: a reader never sees half a file).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mamview.core.domain import Source


@dataclass(frozen=True, eq=False)
class Preview:
    """An 8-bit preview, already windowed and turned for the hanging (chest walls in the middle)."""

    array: np.ndarray  # uint8 (rows, cols)
    flip_lr: bool
    flip_ud: bool
    orientation_source: Source  # PatientOrientation, intensity (pixels) or none
    reduce_factor: int  # 2**r of the reduced decode or of the downsample before rendering; 1 = full
    source_shape: tuple[int, int]  # stored (rows, columns) of the image
    transpose: bool = False  # the stored image had rows and columns swapped
    # what in the header could not be used and what is shown instead (e.g. an implausible
    # window: the image's own range is shown); "" when nothing
    note: str = ""


def make_preview(path: str | os.PathLike, target_height: int = 1024, reduced: bool = True) -> Preview:
    """Make the preview of one mammogram, at most `target_height` rows, aspect kept.

    With `reduced` (default) JPEG 2000 files are decoded at a lower resolution level; otherwise,
    and for other syntaxes, the full decode is block-averaged by the same factor. Then the display
    pipeline runs (modality → first VOI preset or an automatic window → MONOCHROME1 → orientation)
    and a final area-average caps the height. For bad input it raises only PixelDecodeError
    (the caller records a Problem): the whole of it runs inside the decode boundary.
    """
    # here, not at import: the window loads previews (PNG) long before it decodes DICOM
    from mamview.core.dicom import display, pixels

    with pixels.guarded(path, "cannot make the preview"):
        ds = pixels.read_dataset(path)
        params = display.display_params(ds)
        source_shape = (int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0))
        if reduced:
            stored, factor = pixels.decode_reduced(ds, target_height)
        else:
            stored, factor = pixels.decode_full(ds), 1
        if factor == 1:
            # no reduced decode: average down to the size the reduced decode would have given
            factor = 2 ** pixels.reduction_level(stored.shape[0], target_height)
            if factor > 1:
                stored = pixels.downsample(stored, factor)
        image, flips = display.render(stored, params)
        image = _cap_height(image, target_height)
        return Preview(image, flips.flip_lr, flips.flip_ud, flips.source, factor, source_shape,
                       flips.transpose, "; ".join(params.notes))


def _cap_height(image: np.ndarray, target_height: int) -> np.ndarray:
    """Area-average an 8-bit image down to at most `target_height` rows, keeping the aspect ratio."""
    from mamview.core.dicom import pixels

    rows, cols = image.shape
    if rows <= target_height:
        return image
    new_cols = max(1, round(cols * target_height / rows))
    smaller = pixels.downsample(image, (target_height, new_cols))
    return np.clip(np.rint(smaller), 0, 255).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an 8-bit (or 16-bit) grey image as PNG atomically: temp file in the folder, then replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def load_png(path: str | os.PathLike) -> np.ndarray:
    """Read a preview PNG back as a numpy array (uint8 for 8-bit previews)."""
    with Image.open(path) as im:
        return np.asarray(im).copy()
