"""Mirai preprocessing, stage by stage, against hand-computed cases from the spec (§1.2, §2.3, §3)
and against PIL, which the reference uses for resizing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mamview.core.models.base import ModelInputError, ViewImage
from mamview.core.models.preprocess import (
    align_to_left, exam_codes, minmax_window, normalize, preprocess_exam, preprocess_view,
    q_columns, resize_like_pil, side_code, view_code)


def test_view_and_side_codes():
    assert [view_code(v) for v in ("CC", "MLO", "ML")] == [0, 1, 1]
    assert [side_code(s) for s in ("R", "L")] == [0, 1]
    for bad in ("XCCL", "LM", "cc", ""):
        with pytest.raises(ModelInputError):
            view_code(bad)
    for bad in ("l", "B", "", "U"):
        with pytest.raises(ModelInputError):
            side_code(bad)


def test_demo_exam_codes_follow_input_order():
    dummy = np.zeros((2, 2))
    views, sides = exam_codes([ViewImage(dummy, "L", "CC"), ViewImage(dummy, "R", "CC"),
                               ViewImage(dummy, "L", "MLO"), ViewImage(dummy, "R", "MLO")])
    assert views == [0, 0, 1, 1] and sides == [1, 0, 1, 0]  # spec §1.3 demo call


@pytest.mark.parametrize("views", [
    [("R", "CC"), ("L", "CC"), ("R", "MLO")],  # three views
    [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("R", "ML")],  # ML duplicates RMLO's code
    [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "XCCL")],
])
def test_exam_must_have_the_four_standard_views(views):
    with pytest.raises(ModelInputError):
        exam_codes([ViewImage(np.zeros((2, 2)), s, v) for s, v in views])


def test_minmax_linear_hand_computed():
    # lo = 100, hi = 200 → out = trunc((v − 100) / 100 · 65535)
    arr = np.array([[100, 101], [150, 200]], dtype=np.uint16)
    assert minmax_window(arr).tolist() == [[0, 655], [32767, 65535]]
    assert minmax_window(arr).dtype == np.uint16


def test_minmax_works_on_modality_lut_output():
    arr = np.array([[-1000.0, -999.5], [0.0, 1000.0]])  # rescaled, negative, fractional
    assert minmax_window(arr).tolist() == [[0, 16], [32767, 65535]]


def test_minmax_constant_image_is_black():
    assert minmax_window(np.full((3, 3), 7, np.uint16)).max() == 0


def test_minmax_sigmoid_hand_computed():
    arr = np.array([0, 1, 2, 3])  # c = (0+3+1)/2 = 2, w = 4
    want = [math.floor(65535 / (1 + math.exp(-4 * (v - 2) / 4))) for v in range(4)]
    assert want == [7811, 17625, 32767, 47909]
    assert minmax_window(arr, "SIGMOID").tolist() == want


def test_unsupported_voi_function_is_refused():
    with pytest.raises(ModelInputError, match="LINEAR_EXACT"):
        minmax_window(np.arange(4), "LINEAR_EXACT")


@pytest.mark.parametrize("src,dst,min_equal", [
    ((300, 250), (128, 104), 0.999), ((61, 97), (52, 64), 0.999), ((40, 30), (64, 52), 0.998),
    # Pillow 13 runs the vertical pass first for some shapes (Pillow 9, which the reference
    # pins, always goes horizontal first, as we do): still within one grey level.
    ((97, 61), (64, 52), 0.0),
])
def test_resize_matches_pil_mode_i(src, dst, min_equal):
    """PIL mode 'I' bilinear (what the reference runs) vs our two-pass antialiased resize."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 65536, size=src).astype(np.int32)
    ref = np.asarray(Image.fromarray(img, mode="I").resize(dst[::-1], Image.BILINEAR))
    got = resize_like_pil(img, *dst).numpy()
    assert got.shape == dst
    assert np.abs(got - ref).max() <= 1  # summation-order ties may round the other way
    assert (got == ref).mean() >= min_equal


def test_resize_is_antialiased():
    # A one-pixel checkerboard downscaled 4× must average to grey, not alias to black/white.
    img = (np.indices((64, 64)).sum(0) % 2 * 65535).astype(np.int32)
    out = resize_like_pil(img, 16, 16)
    assert out.min() > 30000 and out.max() < 36000


def test_q_columns():
    assert q_columns(1664) == 416 and q_columns(8) == 2
    assert q_columns(7) == 2 and q_columns(52) == 13


def test_align_to_left_hand_computed():
    img = torch.zeros(2, 8, dtype=torch.float64)
    img[:, 0] = 5  # S_left = 10 > S_right = 0 → mirror
    out, flipped = align_to_left(img)
    assert flipped and out[0].tolist() == [0, 0, 0, 0, 0, 0, 0, 5]
    out2, flipped2 = align_to_left(out)  # bright edge already on the right → unchanged
    assert not flipped2 and torch.equal(out2, out)
    img = torch.zeros(2, 8, dtype=torch.float64)
    img[:, 1], img[:, 6] = 3, 3  # tie: strict comparison, no flip
    assert not align_to_left(img)[1]
    img = torch.zeros(2, 8, dtype=torch.float64)
    img[:, 2] = 100  # outside the q=2 edge strips: does not count
    img[:, 7] = 1
    assert not align_to_left(img)[1]


def test_normalize_constants_and_channels():
    img = torch.tensor([[7047.99, 7047.99 + 12005.5, 0.0]], dtype=torch.float64)
    out = normalize(img, 7047.99, 12005.5)
    assert out.shape == (3, 1, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 1.0, -7047.99 / 12005.5]))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def _reference_view(arr, height, width):
    """Spec pipeline with PIL doing the resize, as the reference code does."""
    grey = minmax_window(arr).astype(np.int32)
    resized = np.asarray(Image.fromarray(grey, mode="I").resize((width, height), Image.BILINEAR))
    resized = resized.astype(np.float64)
    q = width - (3 * width) // 4
    if resized[:, :q].sum() > resized[:, width - q:].sum():
        resized = resized[:, ::-1]
    x = (torch.from_numpy(resized.copy()).float() - 7047.99) / 12005.5
    return x.expand(3, height, width)


def test_preprocess_view_matches_pil_pipeline():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 4096, size=(300, 240)).astype(np.uint16)
    arr[:, :60] += 2000  # bright left edge → mirrored
    got, flipped = preprocess_view(ViewImage(arr, "L", "CC"), 128, 104, 7047.99, 12005.5)
    assert flipped
    torch.testing.assert_close(got, _reference_view(arr, 128, 104), rtol=0, atol=1e-4)


def test_preprocess_exam_batch_layout():
    rng = np.random.default_rng(4)
    views = [(rng.integers(0, 4096, (90, 70)).astype(np.uint16), s, v)
             for s, v in (("L", "CC"), ("R", "CC"), ("L", "MLO"), ("R", "MLO"))]
    batch = preprocess_exam(views, height=64, width=52)
    assert batch.images.shape == (1, 4, 3, 64, 52) and batch.images.dtype == torch.float32
    assert batch.view_seq.tolist() == [[0, 0, 1, 1]] and batch.side_seq.tolist() == [[1, 0, 1, 0]]
    assert batch.time_seq.tolist() == [[0, 0, 0, 0]] and batch.view_seq.dtype == torch.int64
    single, _ = preprocess_view(ViewImage(*views[2]), 64, 52, 7047.99, 12005.5)
    assert torch.equal(batch.images[0, 2], single)


def test_window_none_takes_16_bit_images_as_is():
    arr = np.array([[0, 65535], [1000, 2000]], dtype=np.uint16)
    out, _ = preprocess_view(ViewImage(arr, "R", "CC", window="none"), 2, 2, 0.0, 1.0)
    assert out[0].tolist() == [[0, 65535], [1000, 2000]]
