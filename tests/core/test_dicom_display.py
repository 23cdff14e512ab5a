"""Display stages against pydicom's reference implementations, and orientation for the hanging."""

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, apply_windowing
from pydicom.sequence import Sequence

from mamview.core.dicom import display
from mamview.core.dicom.display import (
    DisplayParams,
    Flips,
    apply_modality,
    apply_presentation,
    apply_voi,
    display_params,
    intensity_flip_lr,
    orientation_flips,
    render,
    with_window,
)
from mamview.core.dicom.pixels import decode_full
from mamview.core.domain import Source, WindowPreset
from tests.factories import breast_pixels, standard_orientation, write_mammogram

RAMP = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
STANDARD = [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")]


def _ds(**attrs) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 12, 16, 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _lut_item(first: int, bits: int, data) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [len(data) % 65536, first, bits]
    item.LUTData = [int(v) for v in data]
    item["LUTData"].VR = "US"
    return item


# --- modality -----------------------------------------------------------------------------------


def test_rescale_matches_pydicom():
    ds = _ds(RescaleSlope=0.5, RescaleIntercept=-100)
    ours = apply_modality(RAMP, display_params(ds))
    np.testing.assert_allclose(ours, apply_modality_lut(RAMP, ds), rtol=1e-6)


def test_identity_rescale_is_a_float_copy():
    out = apply_modality(RAMP, display_params(_ds(RescaleSlope=1, RescaleIntercept=0)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, RAMP)


def test_modality_lut_matches_pydicom():
    data = [min(65535, int(20 * np.sqrt(v))) for v in range(3000)]
    ds = _ds(ModalityLUTSequence=Sequence([_lut_item(100, 16, data)]))
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    ours = apply_modality(RAMP, display_params(ds))
    np.testing.assert_allclose(ours, apply_modality_lut(RAMP, ds))


# --- VOI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(2048, 4096), (1500, 800), (3000.5, 1), (100, 2)])
def test_window_matches_pydicom(function, center, width):
    if function == "LINEAR" and width < 1:
        pytest.skip("invalid for LINEAR")
    ds = _ds(WindowCenter=center, WindowWidth=width, VOILUTFunction=function)
    ours = apply_voi(RAMP, display_params(ds))
    reference = apply_windowing(RAMP.copy(), ds) / 4095.0  # pydicom's output range is 0..2**12-1
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=2e-5)


def test_preset_index_selects_window_pair():
    ds = _ds(WindowCenter=[2000, 1000], WindowWidth=[3000, 500], VOILUTFunction="LINEAR_EXACT")
    params = display_params(ds)
    np.testing.assert_allclose(
        apply_voi(RAMP, params, 1), apply_windowing(RAMP.copy(), ds, index=1) / 4095.0, atol=2e-5
    )


def test_voi_lut_sequence_matches_pydicom():
    data = [int(65535 / (1 + np.exp(-(v - 2000) / 300))) for v in range(3500)]
    ds = _ds(VOILUTSequence=Sequence([_lut_item(200, 16, data)]), WindowCenter=2048, WindowWidth=4096)
    params = display_params(ds)
    lut_preset = params.window_presets[1]
    assert lut_preset.lut_index == 0
    ours = apply_voi(RAMP, params, lut_preset)
    reference = apply_voi_lut(RAMP.copy(), ds, prefer_lut=True) / 65535.0
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    # index 1 is the same preset
    np.testing.assert_array_equal(apply_voi(RAMP, params, 1), ours)


def test_lut_with_wrong_descriptor_bits_still_fits_0_1():
    data = list(range(0, 65536, 16))  # 16-bit values, descriptor claims 12 bits
    params = display_params(_ds(VOILUTSequence=Sequence([_lut_item(0, 12, data)])))
    out = apply_voi(RAMP, params, 0)
    assert out.min() == 0 and 0.99 < out.max() <= 1.0


def test_malformed_lut_is_dropped():
    bad = Dataset()
    bad.LUTDescriptor = [4096, 0]
    ds = _ds(VOILUTSequence=Sequence([bad]), WindowCenter=2048, WindowWidth=4096)
    params = display_params(ds)
    assert params.voi_luts == () and [p.lut_index for p in params.window_presets] == [None]


def test_default_window_without_voi_uses_percentiles():
    params = display_params(_ds())
    assert params.window_presets == ()
    out = apply_voi(RAMP.astype(np.float32), params)
    assert out.min() == 0.0 and out.max() == 1.0
    # only the extreme half-percent at each end saturates
    assert 0.002 < np.mean(out == 0.0) < 0.01 and 0.002 < np.mean(out == 1.0) < 0.01


def test_interactive_window_keeps_the_function():
    sigmoid = WindowPreset(2000, 1000, "SIGMOID", "file")
    dragged = with_window(sigmoid, 1500, 600)
    assert (dragged.center, dragged.width, dragged.function) == (1500, 600, "SIGMOID")
    ds = _ds(WindowCenter=1500, WindowWidth=600, VOILUTFunction="SIGMOID")
    np.testing.assert_allclose(
        apply_voi(RAMP, DisplayParams(), dragged), apply_windowing(RAMP.copy(), ds) / 4095.0, atol=2e-5
    )
    lut = WindowPreset(None, None, lut_index=0)
    assert with_window(lut, 100, 0.2) == WindowPreset(100, 1.0, "LINEAR", "", None)


# --- presentation -------------------------------------------------------------------------------


def test_monochrome1_is_inverted_after_voi():
    ds = _ds(PhotometricInterpretation="MONOCHROME1", WindowCenter=1000, WindowWidth=1000)
    params = display_params(ds)
    voi = apply_voi(RAMP, params)
    np.testing.assert_allclose(apply_presentation(voi, params), 1.0 - voi)
    # the user's invert goes on top: MONOCHROME1 + invert shows the VOI output as is
    np.testing.assert_allclose(apply_presentation(voi, params, invert=True), voi)
    mono2 = display_params(_ds(WindowCenter=1000, WindowWidth=1000))
    np.testing.assert_allclose(apply_presentation(voi, mono2, invert=True), 1.0 - voi)


def test_monochrome1_file_looks_like_monochrome2_file(tmp_path):
    p1 = write_mammogram(tmp_path / "m1.dcm", photometric="MONOCHROME1")
    p2 = write_mammogram(tmp_path / "m2.dcm")
    out1, _ = render(decode_full(p1), display_params(dcmread(p1)))
    out2, _ = render(decode_full(p2), display_params(dcmread(p2)))
    assert np.abs(out1.astype(int) - out2).max() <= 1
    # background (air) is dark in both
    assert out1[:, :10].mean() < 30


# --- orientation from the tag -------------------------------------------------------------------

_OPPOSITE = str.maketrans("APLRHF", "PARLFH")


@pytest.mark.parametrize(("laterality", "view"), STANDARD)
def test_standard_orientations_need_no_flips(laterality, view):
    flips = orientation_flips(standard_orientation(laterality, view), laterality, view)
    assert flips == Flips(False, False, Source.PATIENT_ORIENTATION, False)


@pytest.mark.parametrize(
    ("orientation", "laterality", "view", "expected"),
    [
        (("A", "R"), "R", "CC", (True, True)),  # RCC stored as if it were a left breast
        (("P", "R"), "R", "CC", (False, True)),
        (("A", "L"), "L", "CC", (False, True)),
        (("P", "FR"), "L", "MLO", (True, False)),
        (("A", "HR"), "L", "MLO", (False, True)),
        (("AL", "F"), "L", "ML", (False, False)),  # multi-letter row value
        (("PL", "H"), "R", "LM", (False, True)),
        (("A", "FR"), "L", "XCCL", (False, False)),  # CC-like: only L/R counts, F is ignored
        (("P", "F"), "R", "UNKNOWN", (False, False)),  # no vertical rule without a view
        (("A", "F"), "R", "UNKNOWN", (True, False)),
    ],
)
def test_orientation_flips_table(orientation, laterality, view, expected):
    flips = orientation_flips(orientation, laterality, view)
    assert (flips.flip_lr, flips.flip_ud, flips.source) == (*expected, Source.PATIENT_ORIENTATION)


def test_rows_and_columns_swapped_sets_transpose():
    flips = orientation_flips(("L", "P"), "R", "CC")
    assert flips == Flips(False, False, Source.PATIENT_ORIENTATION, True)
    assert orientation_flips(("FR", "A"), "L", "MLO") == Flips(False, False, Source.PATIENT_ORIENTATION, True)


@pytest.mark.parametrize(
    ("orientation", "laterality"),
    [((), "R"), (("P",), "R"), (("F", "L"), "R"), (("AP", "L"), "R"), (("P", "L"), "U"), (("P", "L"), "B")],
)
def test_unusable_orientation_or_side_gives_no_flips(orientation, laterality):
    assert orientation_flips(orientation, laterality, "CC") == display.NO_FLIPS


def _canonical(tmp_path, laterality, view):
    p = write_mammogram(tmp_path / f"canon-{laterality}{view}.dcm", laterality=laterality, view=view)
    out, flips = render(decode_full(p), display_params(dcmread(p)))
    assert (flips.flip_lr, flips.flip_ud) == (False, False)
    return out


@pytest.mark.parametrize(("laterality", "view"), STANDARD)
@pytest.mark.parametrize("stored", [(False, False), (True, False), (False, True), (True, True)])
def test_stored_flipped_images_hang_the_same(tmp_path, laterality, view, stored):
    row, col = standard_orientation(laterality, view)
    if stored[0]:
        row = row.translate(_OPPOSITE)
    if stored[1]:
        col = col.translate(_OPPOSITE)
    p = write_mammogram(tmp_path / "x.dcm", laterality=laterality, view=view, orientation=(row, col))
    raw = decode_full(p)
    out, flips = render(raw, display_params(dcmread(p)))
    assert (flips.flip_lr, flips.flip_ud, flips.source) == (*stored, Source.PATIENT_ORIENTATION)
    np.testing.assert_array_equal(out, _canonical(tmp_path, laterality, view))
    # the chest wall ends up on the inner edge: right breast → right edge, left breast → left edge
    edge_right, edge_left = out[:, -10:].mean(), out[:, :10].mean()
    assert (edge_right > edge_left) == (laterality == "R")


def test_transposed_storage_is_turned_back(tmp_path):
    canon = breast_pixels("R", "CC")
    p = write_mammogram(tmp_path / "t.dcm", pixels=canon.T.copy(), orientation=("L", "P"))
    out, flips = render(decode_full(p), display_params(dcmread(p)))
    assert flips.transpose
    np.testing.assert_array_equal(out, _canonical(tmp_path, "R", "CC"))


def test_render_without_orient_keeps_storage(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm", orientation=("A", "R"))
    raw = decode_full(p)
    out, flips = render(raw, display_params(dcmread(p)), orient=False)
    assert flips == display.NO_FLIPS
    np.testing.assert_array_equal(out, _canonical(tmp_path, "R", "CC")[::-1, ::-1])


# --- orientation from the pixels ----------------------------------------------------------------


@pytest.mark.parametrize(("laterality", "view"), STANDARD)
@pytest.mark.parametrize("stored_lr", [False, True])
def test_intensity_fallback_finds_the_chest_wall(tmp_path, laterality, view, stored_lr):
    p = write_mammogram(
        tmp_path / "x.dcm", laterality=laterality, view=view, orientation=None, stored_flip=(stored_lr, False)
    )
    out, flips = render(decode_full(p), display_params(dcmread(p)))
    assert (flips.flip_lr, flips.flip_ud, flips.source) == (stored_lr, False, Source.INTENSITY)
    np.testing.assert_array_equal(out, _canonical(tmp_path, laterality, view))


def test_intensity_fallback_never_flips_vertically(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm", view="MLO", orientation=None, stored_flip=(False, True))
    out, flips = render(decode_full(p), display_params(dcmread(p)))
    assert (flips.flip_ud, flips.source) == (False, Source.INTENSITY)
    np.testing.assert_array_equal(out, _canonical(tmp_path, "R", "MLO")[::-1])


def test_unknown_side_is_never_flipped(tmp_path):
    p = write_mammogram(
        tmp_path / "x.dcm", orientation=None, stored_flip=(True, False), with_laterality=False, view_position=False,
    )
    params = display_params(dcmread(p))
    assert params.laterality == "U"
    _, flips = render(decode_full(p), params)
    assert flips == display.NO_FLIPS


def test_intensity_undecided_on_symmetric_image():
    flat = np.full((50, 40), 0.5, dtype=np.float32)
    assert intensity_flip_lr(flat, "R") == (False, Source.NONE)
    assert intensity_flip_lr(np.zeros((50, 40)), "L") == (False, Source.NONE)


# --- render -------------------------------------------------------------------------------------


def test_render_gives_uint8_and_user_invert(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm")
    raw, params = decode_full(p), display_params(dcmread(p))
    out, _ = render(raw, params)
    inverted, _ = render(raw, params, invert=True)
    assert out.dtype == np.uint8 and out.shape == raw.shape
    assert np.abs(out.astype(int) + inverted - 255).max() <= 1


def test_render_accepts_a_preset(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm", window=[(2048, 4096), (1500, 200)])
    raw, params = decode_full(p), display_params(dcmread(p))
    narrow, _ = render(raw, params, preset=1)
    same, _ = render(raw, params, preset=params.window_presets[1])
    np.testing.assert_array_equal(narrow, same)
    wide, _ = render(raw, params, preset=0)
    assert np.mean(narrow == 255) > np.mean(wide == 255)


def test_display_params_reads_everything(tmp_path):
    p = write_mammogram(
        tmp_path / "x.dcm", laterality="L", view="MLO", window=(1000, 500), voi_function="SIGMOID",
        photometric="MONOCHROME1", extra={"RescaleSlope": 2, "RescaleIntercept": -5},
    )
    params = display_params(dcmread(p, stop_before_pixels=True))
    assert params == DisplayParams(
        rescale_slope=2.0,
        rescale_intercept=-5.0,
        window_presets=(WindowPreset(1000.0, 500.0, "SIGMOID", "WINDOW1"),),
        photometric="MONOCHROME1",
        bits_stored=12,
        pixel_representation=0,
        patient_orientation=("A", "FR"),
        laterality="L",
        view="MLO",
    )


# --- implausible values from the header ---------------------------------------------------------


@pytest.mark.parametrize(("center", "width", "why"), [
    (1e9, 4096.0, "outside the image's range 0..4095"),
    (-50000.0, 100.0, "outside the image's range"),
    (2048.0, float("nan"), "not a valid window"),
    (2048.0, 1e12, "far wider than the image's range"),
])
def test_implausible_window_falls_back_to_the_image_range_with_a_note(tmp_path, center, width, why):
    p = write_mammogram(tmp_path / "x.dcm", window=[(center, width), (2048.0, 4096.0)])
    params = display_params(dcmread(p))
    # the bad pair is dropped (in the header row too: the same numbering), the good one stays
    assert params.window_presets == (WindowPreset(2048.0, 4096.0, "LINEAR", "WINDOW2"),)
    assert display.window_presets(dcmread(p)) == params.window_presets
    assert len(params.notes) == 1 and why in params.notes[0] and "own range" in params.notes[0]


def test_only_an_implausible_window_gives_the_automatic_one_not_a_blank_image(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm", window=(1e9, 4096.0))
    raw, params = decode_full(p), display_params(dcmread(p))
    assert params.window_presets == () and params.notes
    image, _ = render(raw, params)
    assert image.std() > 20  # before: every pixel black


def test_plausible_windows_give_no_note(tmp_path):
    # a window reaching past the range, and a narrow one at its top end, are both usable
    p = write_mammogram(tmp_path / "x.dcm", window=[(2048.0, 8000.0), (4000.0, 300.0)])
    params = display_params(dcmread(p))
    assert len(params.window_presets) == 2 and params.notes == ()


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize("slope", ["NaN", "inf", "-inf"])
def test_non_finite_rescale_shows_stored_values_with_a_note(tmp_path, slope):
    p = write_mammogram(tmp_path / "x.dcm", window=None)
    ds = dcmread(p)
    ds.add_new("RescaleSlope", "DS", slope)
    params = display_params(ds)
    assert not params.rescale_finite and (params.rescale_slope, params.rescale_intercept) == (1.0, 0.0)
    assert "not a finite number" in params.notes[0]
    image, _ = render(decode_full(p), params)
    assert image.std() > 20


def test_modality_overflow_renders_the_stored_values(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm", window=None, extra={"RescaleSlope": "1e38"})
    params = display_params(dcmread(p))
    assert params.rescale_finite  # finite, but 4095 × 1e38 overflows float32
    image, _ = render(decode_full(p), params)
    assert image.std() > 20
