"""Previews: reduced decode → display → hanging orientation → capped height; PNG round trip."""

import subprocess
import sys

import numpy as np
import pytest

from mamview.core.dicom.pixels import PixelDecodeError
from mamview.core.domain import Source
from mamview.core.previews import Preview, load_png, make_preview, save_png
from tests.factories import (
    JPEG2000Lossless,
    RLELossless,
    write_corrupt_pixels_copy,
    write_mammogram,
)


def _chest_wall_side(image: np.ndarray) -> str:
    """'right' or 'left': the edge with more tissue signal (measured from the pixels)."""
    band = image.shape[1] // 10
    return "right" if image[:, -band:].mean() > image[:, :band].mean() else "left"


def test_j2k_preview_uses_the_reduced_decode(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", shape=(512, 416), transfer_syntax=JPEG2000Lossless)
    preview = make_preview(p, target_height=128)
    assert isinstance(preview, Preview)
    assert preview.reduce_factor == 4
    assert preview.array.shape == (128, 104) and preview.array.dtype == np.uint8
    assert preview.source_shape == (512, 416)
    assert (preview.flip_lr, preview.flip_ud, preview.orientation_source) == (
        False,
        False,
        Source.PATIENT_ORIENTATION,
    )


def test_reduced_and_full_previews_agree(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", shape=(512, 416), transfer_syntax=JPEG2000Lossless)
    fast = make_preview(p, target_height=128, reduced=True)
    slow = make_preview(p, target_height=128, reduced=False)
    assert fast.array.shape == slow.array.shape and slow.reduce_factor == 4
    diff = np.abs(fast.array.astype(int) - slow.array)
    assert np.median(diff) <= 3 and diff.mean() < 6


def test_non_j2k_preview_is_downsampled(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", shape=(512, 416), transfer_syntax=RLELossless)
    preview = make_preview(p, target_height=200)
    # the same factor rule as the reduced decode (512 → 256 rows, since 128 < 0.75 × 200),
    # then capped at 200 rows
    assert preview.reduce_factor == 2 and preview.array.shape == (200, 162)


def test_height_is_capped_keeping_aspect(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", shape=(300, 240))
    preview = make_preview(p, target_height=250)
    assert preview.reduce_factor == 1
    assert preview.array.shape == (250, 200)


def test_small_image_is_left_alone(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm")
    assert make_preview(p, target_height=1024).array.shape == (256, 208)


@pytest.mark.parametrize(("laterality", "view"), [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")])
def test_flipped_image_preview_has_chest_wall_on_the_inner_edge(tmp_path, laterality, view):
    stored_row = "A" if laterality == "R" else "P"  # stored the other way round
    col = {"CC": "L" if laterality == "R" else "R", "MLO": "FL" if laterality == "R" else "FR"}[view]
    p = write_mammogram(
        tmp_path / "a.dcm",
        laterality=laterality,
        view=view,
        orientation=(stored_row, col),
        transfer_syntax=JPEG2000Lossless,
    )
    preview = make_preview(p, target_height=64)
    assert preview.flip_lr and not preview.flip_ud
    assert _chest_wall_side(preview.array) == ("right" if laterality == "R" else "left")


def test_preview_without_orientation_tag_uses_the_pixels(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", laterality="L", orientation=None, stored_flip=(True, False))
    preview = make_preview(p, target_height=64)
    assert (preview.flip_lr, preview.orientation_source) == (True, Source.INTENSITY)
    assert _chest_wall_side(preview.array) == "left"


def test_monochrome1_preview_has_dark_background(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", photometric="MONOCHROME1")
    image = make_preview(p).array
    assert image[:, :10].mean() < 30 and image[:, -10:].mean() > 80


def test_corrupt_pixels_raise_decode_error(tmp_path):
    src = write_mammogram(tmp_path / "a.dcm", transfer_syntax=JPEG2000Lossless)
    with pytest.raises(PixelDecodeError):
        make_preview(write_corrupt_pixels_copy(src, tmp_path / "bad.dcm"))


def test_png_round_trip_is_atomic(tmp_path):
    image = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48)
    target = tmp_path / "previews" / "x.png"
    assert save_png(image, target) == target
    np.testing.assert_array_equal(load_png(target), image)
    save_png(255 - image, target)  # replacing an existing preview
    np.testing.assert_array_equal(load_png(target), 255 - image)
    assert [p.name for p in target.parent.iterdir()] == ["x.png"]  # no temp files left


def test_failed_png_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(Exception):
        save_png(np.zeros((4, 4, 7), np.uint8), target)  # not an image Pillow can write
    assert list(tmp_path.iterdir()) == []


def test_core_never_imports_qt():
    code = (
        "import sys; import mamview.core.previews, mamview.core.dicom.headers, mamview.core.dicom.classify;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph', 'PyQt5', 'PyQt6')];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_preview_carries_the_note_of_an_implausible_window(tmp_path):
    good = make_preview(write_mammogram(tmp_path / "good.dcm"))
    bad = make_preview(write_mammogram(tmp_path / "bad.dcm", window=(-1e6, 10.0)))
    assert good.note == ""
    assert "outside the image's range" in bad.note and "own range is shown" in bad.note
    assert bad.array.std() > 20  # the automatic window, not a blank preview


def test_make_preview_raises_only_decode_errors(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm")
    for bad in (tmp_path / "missing.dcm", tmp_path):  # no file; a folder
        with pytest.raises(PixelDecodeError):
            make_preview(bad)
    p.write_bytes(p.read_bytes()[:400])  # a header cut short
    with pytest.raises(PixelDecodeError):
        make_preview(p)
