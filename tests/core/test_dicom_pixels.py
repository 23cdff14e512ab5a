"""Decoding every supported transfer syntax, reduced J2K decode, downsampling, clear errors."""

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLosslessSV1

from mamview.core.dicom.pixels import (
    PixelDecodeError,
    PixelLimitExceeded,
    check_header,
    decode_full,
    decode_reduced,
    downsample,
    guarded,
    j2k_decomposition_levels,
    jpeg_dimensions,
    reduction_level,
)
from tests.factories import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    breast_pixels,
    write_corrupt_pixels_copy,
    write_mammogram,
    write_pdf,
    write_truncated_copy,
)

LOSSLESS = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
]


@pytest.fixture(scope="module")
def original():
    return breast_pixels("R", "CC", (256, 208))


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda s: s.name)
def test_lossless_decode_equals_original(tmp_path, original, syntax):
    p = write_mammogram(tmp_path / "a.dcm", pixels=original, transfer_syntax=syntax)
    arr = decode_full(p)
    assert arr.shape == (256, 208) and arr.dtype == np.uint16
    np.testing.assert_array_equal(arr, original)


def test_decode_accepts_a_read_dataset(tmp_path, original):
    p = write_mammogram(tmp_path / "a.dcm", pixels=original, transfer_syntax=RLELossless)
    np.testing.assert_array_equal(decode_full(dcmread(p)), original)


def test_lossy_j2k_is_close(tmp_path, original):
    arr = decode_full(write_mammogram(tmp_path / "a.dcm", pixels=original, transfer_syntax=JPEG2000))
    assert np.mean(np.abs(arr.astype(float) - original)) < 0.02 * 4095


def test_signed_pixels(tmp_path):
    signed = (breast_pixels("L", "MLO").astype(np.int16) - 2048).astype(np.int16)
    for syntax in (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless):
        p = write_mammogram(tmp_path / f"{syntax}.dcm", pixels=signed, transfer_syntax=syntax)
        np.testing.assert_array_equal(decode_full(p), signed)
        arr, factor = decode_reduced(p, 64)  # signed J2K falls back to the full decode
        assert factor == 1
        np.testing.assert_array_equal(arr, signed)


# --- reduced ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "min_height", "level"),
    [(3328, 1024, 2), (4096, 1024, 2), (4096, 1400, 1), (2294, 1024, 1), (1000, 1024, 0), (256, 64, 2), (256, 0, 0)],
)
def test_reduction_level(height, min_height, level):
    assert reduction_level(height, min_height) == level


def test_reduction_level_is_capped_by_the_codestream():
    assert reduction_level(3328, 16, max_level=5) == 5
    assert reduction_level(3328, 16) > 5


def _smooth(shape):
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.rint(2000 + 1500 * np.sin(x / 60.0) * np.cos(y / 80.0)).astype(np.uint16)


@pytest.mark.parametrize("shape", [(256, 208), (250, 203)])
def test_reduced_j2k_matches_block_mean_of_full_decode(tmp_path, shape):
    p = write_mammogram(tmp_path / "a.dcm", pixels=_smooth(shape), transfer_syntax=JPEG2000Lossless)
    full = decode_full(p)
    reduced, factor = decode_reduced(p, 64)
    assert factor == 4
    assert reduced.shape == (-(-shape[0] // 4), -(-shape[1] // 4))
    assert reduced.dtype == np.uint16
    diff = np.abs(reduced.astype(np.float64) - downsample(full, factor)) / 4095
    # The wavelet low band is centred on the block's first sample, not its middle: on this
    # (steep for its size) test image that half-block shift costs under 1 % of the range.
    assert diff.mean() < 0.01 and diff.max() < 0.02
    # stored values (Pillow's 12→16-bit upscaling undone), not 16× too large
    assert abs(float(reduced.mean()) - float(full.mean())) < 0.005 * 4095


def test_reduced_j2k_of_a_breast_is_close_away_from_edges(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", laterality="L", view="MLO", transfer_syntax=JPEG2000Lossless)
    full = decode_full(p)
    reduced, factor = decode_reduced(p, 64)
    diff = np.abs(reduced.astype(np.float64) - downsample(full, factor)) / 4095
    # only the skin line and the pectoral edge differ much
    assert np.median(diff) < 0.01 and np.percentile(diff, 90) < 0.03
    assert reduced.max() <= 4095


def test_reduced_decode_of_other_syntaxes_is_the_full_decode(tmp_path, original):
    for syntax in (ExplicitVRLittleEndian, RLELossless):
        p = write_mammogram(tmp_path / f"{syntax}.dcm", pixels=original, transfer_syntax=syntax)
        arr, factor = decode_reduced(p, 64)
        assert factor == 1
        np.testing.assert_array_equal(arr, original)


def test_reduced_decode_needs_no_reduction_for_small_targets(tmp_path, original):
    p = write_mammogram(tmp_path / "a.dcm", pixels=original, transfer_syntax=JPEG2000Lossless)
    arr, factor = decode_reduced(p, 1024)
    assert factor == 1
    np.testing.assert_array_equal(arr, original)


def test_decomposition_levels_from_codestream(tmp_path, original):
    from pydicom.encaps import get_frame

    ds = dcmread(write_mammogram(tmp_path / "a.dcm", pixels=original, transfer_syntax=JPEG2000Lossless))
    assert j2k_decomposition_levels(get_frame(ds.PixelData, 0, number_of_frames=1)) == 5
    assert j2k_decomposition_levels(b"not a codestream") is None


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=lambda s: s.name)
def test_corrupt_stream_raises_clear_error(tmp_path, syntax):
    src = write_mammogram(tmp_path / "a.dcm", transfer_syntax=syntax)
    bad = write_corrupt_pixels_copy(src, tmp_path / "bad.dcm")
    for decode in (decode_full, lambda p: decode_reduced(p, 64)):
        with pytest.raises(PixelDecodeError) as info:
            decode(bad)
        assert info.value.path == str(bad)
        assert syntax.name in info.value.message


def test_truncated_native_file_raises(tmp_path):
    bad = write_truncated_copy(write_mammogram(tmp_path / "a.dcm"), tmp_path / "cut.dcm")
    with pytest.raises(PixelDecodeError, match="cannot decode"):
        decode_full(bad)


def test_not_dicom_raises(tmp_path):
    with pytest.raises(PixelDecodeError, match="cannot read the file"):
        decode_full(write_pdf(tmp_path / "a.pdf"))


def test_no_pixel_data_raises(tmp_path):
    ds = dcmread(write_mammogram(tmp_path / "a.dcm"))
    del ds.PixelData
    with pytest.raises(PixelDecodeError, match="no pixel data"):
        decode_full(ds)


def test_missing_plugin_names_the_package(tmp_path):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    p = write_mammogram(tmp_path / "a.dcm")
    ds = dcmread(p)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 64])
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(p)
    with pytest.raises(PixelDecodeError, match="pip install python-gdcm"):
        decode_full(p)


def test_error_without_path_for_in_memory_dataset():
    err = PixelDecodeError(None, "boom")
    assert (err.path, err.message, str(err)) == ("", "boom", "boom")


# --- downsample ---------------------------------------------------------------------------------


def test_downsample_integer_factor_is_block_mean():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 4096, (64, 48)).astype(np.uint16)
    expected = arr.reshape(16, 4, 12, 4).mean(axis=(1, 3))
    out = downsample(arr, 4)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_downsample_partial_blocks_average_what_is_there():
    arr = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    out = downsample(arr, 2)
    assert out.shape == (3, 2)
    assert out[2, 1] == arr[4, 2]  # a 1×1 corner block
    assert out[0, 1] == pytest.approx(np.mean(arr[0:2, 2]))


def test_downsample_to_exact_shape_keeps_level():
    arr = np.full((333, 257), 1234, dtype=np.uint16)
    out = downsample(arr, (100, 77))
    assert out.shape == (100, 77)
    np.testing.assert_allclose(out, 1234, rtol=1e-5)


def test_downsample_to_shape_preserves_mean_of_gradient():
    arr = np.tile(np.linspace(0, 4095, 400, dtype=np.float32), (300, 1))
    out = downsample(arr, (90, 120))
    assert out.shape == (90, 120)
    assert abs(out.mean() - arr.mean()) < 0.005 * 4095


def test_downsample_rejects_bad_arguments():
    with pytest.raises(ValueError):
        downsample(np.zeros((4, 4)), 0)
    with pytest.raises(ValueError):
        downsample(np.zeros((4, 4)), (0, 2))



# --- the guarded boundary -----------------------------------------------------------------------


def test_decode_error_is_an_input_refusal_that_crosses_processes():
    import pickle

    from mamview.core.errors import InputRefused, MamviewError

    err = PixelDecodeError("/x.dcm", "bad\nstream\x1b[2J")
    assert isinstance(err, InputRefused) and isinstance(err, MamviewError)
    assert err.message == "bad stream\\x1b[2J"  # one line, no terminal escapes
    again = pickle.loads(pickle.dumps(err))
    assert (type(again), again.path, again.message) == (PixelDecodeError, "/x.dcm", err.message)


class _Panic(BaseException):
    """Stands for pyo3's PanicException: a BaseException, not an Exception."""


@pytest.mark.parametrize(("raised", "expected"), [
    (_Panic("index out of bounds"), "cannot decode the pixel data: _Panic: index out of bounds"),
    (MemoryError(), "cannot decode the pixel data: not enough memory"),
    (ValueError("x" * 1000), "cannot decode the pixel data: ValueError: xxx"),
])
def test_guarded_turns_every_failure_into_a_decode_error(raised, expected):
    with pytest.raises(PixelDecodeError) as info:
        with guarded("/x.dcm"):
            raise raised
    assert info.value.message.startswith(expected) and len(info.value.message) <= 300


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_guarded_lets_the_user_stop(stop):
    with pytest.raises(stop):
        with guarded("/x.dcm"):
            raise stop()


def test_caps_come_from_the_environment(tmp_path, monkeypatch):
    p = write_mammogram(tmp_path / "a.dcm")
    monkeypatch.setenv("MAMVIEW_MAX_SIDE", "200")
    with pytest.raises(PixelLimitExceeded, match=r"256×208 pixels, over the limit of 200 \(MAMVIEW_MAX_SIDE\)"):
        decode_full(p)
    monkeypatch.setenv("MAMVIEW_MAX_SIDE", "not a number")  # a malformed override keeps the default
    assert decode_full(p).shape == (256, 208)


def test_real_sizes_pass_the_default_caps():
    from pydicom.dataset import Dataset

    for rows, cols, frames in ((4096, 3328, 1), (5928, 4728, 1), (3328, 2560, 150)):
        ds = Dataset()
        ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 16, 14, 13, 1
        assert check_header(ds).frame_bytes == rows * cols * 2


def test_jpeg_frame_size_must_match_the_header(tmp_path):
    from io import BytesIO

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit

    buf = BytesIO()
    Image.fromarray(np.full((64, 48), 128, np.uint8)).save(buf, format="JPEG")
    assert jpeg_dimensions(buf.getvalue()) == (64, 48)
    p = write_mammogram(tmp_path / "a.dcm", pixels=np.zeros((256, 208), np.uint8))
    ds = dcmread(p)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(p)
    with pytest.raises(PixelDecodeError, match="the JPEG stream is 64×48, the header says 256×208"):
        decode_full(p)


def _multi_frame(tmp_path, syntax, frames: int = 3):
    """A file of `frames` different frames (frame i is the breast plus 100 × i)."""
    stack = np.stack([breast_pixels("R", "CC") + 100 * i for i in range(frames)]).astype(np.uint16)
    p = write_mammogram(tmp_path / f"{syntax}.dcm", pixels=stack[0])
    ds = dcmread(p)
    ds.NumberOfFrames = frames
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stack.tobytes()
    else:
        ds.compress(syntax, stack, generate_instance_uid=False)
    ds.save_as(p)
    return p, stack


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
                         ids=lambda s: s.name)
def test_multi_frame_objects_give_frame_one_read_from_the_file(tmp_path, monkeypatch, syntax):
    from mamview.core.dicom import pixels
    from mamview.core.dicom.pixels import read_dataset

    monkeypatch.setattr(pixels, "DEFER_BYTES", 1024)  # these small files defer like large ones
    p, stack = _multi_frame(tmp_path, syntax)
    ds = read_dataset(p)
    assert ds.get_item(0x7FE00010, keep_deferred=True).value is None  # deferred: only frame 1 will be read
    np.testing.assert_array_equal(decode_full(ds), stack[0])
    arr, factor = decode_reduced(p, 64)
    assert arr.shape == (-(-256 // factor), -(-208 // factor))
    assert abs(float(arr.mean()) - float(stack[0].mean())) < 0.01 * 4095


def test_any_header_values_give_a_geometry_or_a_decode_error():
    """Property: whatever numbers a header holds, check_header answers with a Geometry under
    the caps or a PixelDecodeError; nothing else escapes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pydicom.dataset import Dataset

    from mamview.core.dicom import limits

    caps = limits.current()
    us = st.integers(0, 65535)

    @settings(max_examples=300, deadline=None, database=None)
    @given(rows=us, cols=us, frames=st.one_of(st.integers(-5, 10**7), st.just("x")),
           allocated=st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64]), stored=st.integers(0, 40),
           high=st.integers(0, 40), samples=st.integers(0, 4))
    def check(rows, cols, frames, allocated, stored, high, samples):
        ds = Dataset()
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = rows, cols, allocated, stored
        ds.HighBit, ds.SamplesPerPixel = high, samples
        ds.add_new("NumberOfFrames", "LO", str(frames))
        try:
            g = check_header(ds)
        except PixelDecodeError:
            return
        assert g.rows * g.columns <= caps.max_frame_pixels and g.frames <= caps.max_frames
        assert g.frame_bytes * g.frames <= caps.max_pixel_bytes and g.samples == 1
        assert g.bits_allocated in (8, 16, 32) and 1 <= g.bits_stored <= g.bits_allocated

    check()
