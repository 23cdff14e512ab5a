"""Header scan: every Problem category and every ImageHeader field, on real files."""

import hashlib
import os

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, SecondaryCaptureImageStorage

from mamview.core.dicom import classify, headers
from mamview.core.dicom.headers import FastFields, dicomdir_files, read_header
from mamview.core.domain import ImageHeader, PresentationIntent, Problem, Source, StudyObject, WindowPreset
from tests.factories import (
    JPEG2000Lossless,
    RLELossless,
    write_dicomdir,
    write_mammogram,
    write_other_modality,
    write_pdf,
    write_sr,
    write_tomosynthesis,
    write_truncated_copy,
)


def _problem(path) -> Problem:
    result = read_header(path)
    assert isinstance(result, Problem), result
    return result


def _header(path) -> ImageHeader:
    result = read_header(path)
    assert isinstance(result, ImageHeader), result
    return result


# --- problems -----------------------------------------------------------------------------------


def test_empty_file(tmp_path):
    p = tmp_path / "empty.dcm"
    p.write_bytes(b"")
    assert _problem(p).reason == headers.EMPTY_FILE


def test_missing_file_is_a_problem_not_an_exception(tmp_path):
    assert _problem(tmp_path / "gone.dcm").reason == headers.UNREADABLE_FILE


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (None, "a PDF document"),
        (b"patient list\nDOE^JANE 1960\n" * 10, "a text file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "a PNG image"),
    ],
)
def test_not_dicom(tmp_path, content, detail):
    p = tmp_path / "thing"
    if content is None:
        write_pdf(p)
    else:
        p.write_bytes(content)
    problem = _problem(p)
    assert (problem.reason, problem.detail) == (headers.NOT_DICOM, detail)


def test_folder_is_not_dicom(tmp_path):
    assert _problem(tmp_path).reason == headers.NOT_DICOM


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_unreadable_header(tmp_path):
    # a valid preamble and magic followed by a file meta group that claims an absurd length
    p = tmp_path / "corrupt.dcm"
    p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x01" * 40)
    assert _problem(p).reason == headers.UNREADABLE_HEADER


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_unreadable_header_garbage_dataset(tmp_path):
    src = write_mammogram(tmp_path / "ok.dcm")
    data = bytearray(src.read_bytes())
    # keep the file meta, then an element with an invalid explicit VR and a huge length
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    data[meta_end : meta_end + 12] = b"\x08\x00\x08\x00\x00\x00\xff\xff\xff\x7f\x00\x00"
    p = tmp_path / "bad.dcm"
    p.write_bytes(bytes(data))
    assert _problem(p).reason == headers.UNREADABLE_HEADER


@pytest.mark.parametrize("syntax", [None, JPEG2000Lossless, RLELossless])
@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_truncated_in_pixel_data(tmp_path, syntax, fraction):
    kwargs = {"transfer_syntax": syntax} if syntax else {}
    src = write_mammogram(tmp_path / "full.dcm", **kwargs)
    assert isinstance(read_header(src), ImageHeader)
    dst = write_truncated_copy(src, tmp_path / "cut.dcm", keep_fraction=fraction)
    assert _problem(dst).reason == headers.TRUNCATED


@pytest.mark.parametrize("keep_bytes", [60, 180, 700])
def test_truncated_in_header(tmp_path, keep_bytes):
    src = write_mammogram(tmp_path / "full.dcm")
    dst = tmp_path / "cut.dcm"
    dst.write_bytes(src.read_bytes()[:keep_bytes])
    assert _problem(dst).reason == headers.TRUNCATED


def test_pixel_data_shorter_than_the_image(tmp_path):
    src = write_mammogram(tmp_path / "full.dcm")
    ds = dcmread(src)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(tmp_path / "short.dcm")
    problem = _problem(tmp_path / "short.dcm")
    assert problem.reason == headers.TRUNCATED and "needs" in problem.detail


def test_broken_encapsulation_items(tmp_path):
    src = write_mammogram(tmp_path / "full.dcm", transfer_syntax=JPEG2000Lossless)
    data = bytearray(src.read_bytes())
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert data.endswith(delimiter)
    # move the delimiter away from the end and break the first fragment's item tag
    first_item = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xe0\x7f\x10\x00")) + 8
    first_item = data.index(b"\xfe\xff\x00\xe0", first_item)
    data[first_item : first_item + 4] = b"\x01\x02\x03\x04"
    (tmp_path / "bad.dcm").write_bytes(bytes(data) + b"\x00" * 8)
    assert _problem(tmp_path / "bad.dcm").reason == headers.CORRUPT_PIXEL_DATA


def test_encapsulated_data_followed_by_other_elements_is_fine(tmp_path):
    src = write_mammogram(tmp_path / "full.dcm", transfer_syntax=JPEG2000Lossless)
    ds = dcmread(src)
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)  # Data Set Trailing Padding after the pixel data
    ds.save_as(tmp_path / "padded.dcm")
    assert isinstance(read_header(tmp_path / "padded.dcm"), ImageHeader)


def test_no_pixel_data(tmp_path):
    ds = dcmread(write_mammogram(tmp_path / "full.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert _problem(tmp_path / "nopix.dcm").reason == headers.NO_PIXEL_DATA


@pytest.mark.parametrize("modality", ["CT", "MR", "US"])
def test_other_modalities_are_not_mammograms(tmp_path, modality):
    problem = _problem(write_other_modality(tmp_path / "x.dcm", modality))
    assert problem.reason == headers.NOT_A_MAMMOGRAM
    assert problem.detail.startswith(f"Modality {modality}, ")


def test_ct_detail_names_modality_and_sop_class(tmp_path):
    assert _problem(write_other_modality(tmp_path / "ct.dcm")).detail == "Modality CT, CT Image Storage"


def test_secondary_capture_with_modality_mg_is_a_digitised_film_image(tmp_path):
    # digitised film (issue 13): an image, outside the model's domain, no longer a study member
    p = write_mammogram(tmp_path / "sc.dcm", extra={"SOPClassUID": SecondaryCaptureImageStorage})
    h = headers.read_header(p)
    assert isinstance(h, ImageHeader) and h.domain == "digitised film"
    assert h.patient_id == "P1" and h.study_date == "20200101"


def test_secondary_capture_screenshot_is_a_study_member_not_an_image(tmp_path):
    p = write_mammogram(tmp_path / "sc.dcm",
                        extra={"SOPClassUID": SecondaryCaptureImageStorage, "Modality": "OT"})
    member = headers.read_header(p)
    assert isinstance(member, StudyObject) and member.kind == "secondary capture"
    assert member.patient_id == "P1" and member.study_date == "20200101"


def test_dx_storage_with_modality_mg_is_accepted(tmp_path):
    p = write_mammogram(tmp_path / "dx.dcm", extra={"SOPClassUID": DigitalXRayImageStorageForPresentation})
    assert _header(p).modality == "MG"
    p2 = write_mammogram(
        tmp_path / "dx2.dcm", extra={"SOPClassUID": DigitalXRayImageStorageForPresentation, "Modality": "DX"}
    )
    assert _problem(p2).reason == headers.NOT_A_MAMMOGRAM


def test_tomosynthesis_is_filed_as_a_study_member(tmp_path):
    member = headers.read_header(write_tomosynthesis(tmp_path / "dbt.dcm"))
    assert isinstance(member, StudyObject) and member.kind == headers.TOMOSYNTHESIS
    assert member.sop_class_uid == "1.2.840.10008.5.1.4.1.1.13.1.3"


def test_multiframe_mg_counts_as_tomosynthesis(tmp_path):
    import numpy as np

    frames = np.zeros((2, 16, 16), np.uint16)
    p = write_mammogram(tmp_path / "mf.dcm", pixels=frames[0], extra={"NumberOfFrames": 2})
    ds = dcmread(p)
    ds.PixelData = frames.tobytes()
    ds.save_as(p)
    member = headers.read_header(p)
    assert isinstance(member, StudyObject) and member.kind == headers.TOMOSYNTHESIS
    # a member that declares more pixels than it holds is still a problem
    ds.NumberOfFrames = 5
    ds.save_as(p)
    assert _problem(p).reason == headers.TRUNCATED


def test_structured_report_is_a_study_member(tmp_path):
    member = headers.read_header(write_sr(tmp_path / "sr.dcm"))
    assert isinstance(member, StudyObject) and (member.kind, member.modality) == ("SR", "SR")


def test_objects_of_other_studies_stay_problems(tmp_path):
    """A CT image is no member of a breast study: still "not a mammogram"."""
    from tests.factories import write_other_modality

    assert _problem(write_other_modality(tmp_path / "ct.dcm", modality="CT")).reason == \
        headers.NOT_A_MAMMOGRAM


def test_dicomdir_is_reported_for_the_caller(tmp_path):
    dicomdir = write_dicomdir(tmp_path / "media")
    assert _problem(dicomdir).reason == headers.DICOMDIR


# --- header fields ------------------------------------------------------------------------------


def test_all_fields_of_a_typical_mammogram(tmp_path):
    p = write_mammogram(
        tmp_path / "rmlo.dcm",
        laterality="R",
        view="MLO",
        study_uid="1.2.3",
        sop_uid="1.2.3.4",
        series_uid="1.2.3.5",
        extra={
            "IssuerOfPatientID": "HOSP",
            "SeriesDescription": "R MLO",
            "LossyImageCompression": "00",
        },
    )
    h = _header(p)
    st = os.stat(p)
    assert (h.path, h.size, h.mtime_ns) == (str(p), st.st_size, st.st_mtime_ns)
    assert (h.sop_instance_uid, h.study_instance_uid, h.series_instance_uid) == ("1.2.3.4", "1.2.3", "1.2.3.5")
    assert h.sop_class_uid == "1.2.840.10008.5.1.4.1.1.1.2"
    assert h.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert (h.modality, h.patient_id, h.patient_name) == ("MG", "P1", "DOE^JANE")
    assert (h.patient_birth_date, h.issuer_of_patient_id) == ("19600101", "HOSP")
    assert (h.study_date, h.study_time, h.content_date, h.accession_number) == (
        "20200101",
        "101500",
        "20200101",
        "A20200101",
    )
    assert (h.study_description, h.series_description) == ("MAMMO SCREENING", "R MLO")
    assert (h.manufacturer, h.manufacturer_model) == ("ACME", "Synth 1")
    assert (h.rows, h.columns, h.bits_allocated, h.bits_stored, h.pixel_representation) == (256, 208, 16, 12, 0)
    assert (h.photometric, h.number_of_frames) == ("MONOCHROME2", 1)
    assert h.presentation_intent == PresentationIntent.FOR_PRESENTATION
    assert (h.laterality.value, h.laterality.source) == ("R", Source.IMAGE_LATERALITY)
    assert (h.view.value, h.view.source) == ("MLO", Source.VIEW_CODE_SEQUENCE)
    assert h.label == "RMLO" and h.is_standard_view
    assert h.view_modifiers == ()
    assert h.patient_orientation == ("P", "FL")
    assert h.image_type == ("DERIVED", "PRIMARY")
    assert h.window_presets == (WindowPreset(2048.0, 4096.0, "LINEAR", "WINDOW1"),)
    assert h.pixel_spacing == (0.1, 0.1)
    assert (h.breast_implant_present, h.burned_in_annotation, h.lossy_compression) == ("NO", "NO", "00")


def test_for_processing_images_are_kept(tmp_path):
    h = _header(write_mammogram(tmp_path / "raw.dcm", presentation_intent="FOR PROCESSING"))
    assert h.presentation_intent == PresentationIntent.FOR_PROCESSING
    assert h.sop_class_uid == "1.2.840.10008.5.1.4.1.1.1.2.1"


def test_presentation_intent_from_sop_class_when_attribute_missing(tmp_path):
    p = write_mammogram(tmp_path / "x.dcm")
    ds = dcmread(p)
    del ds.PresentationIntentType
    ds.save_as(p)
    assert _header(p).presentation_intent == PresentationIntent.FOR_PRESENTATION


def test_several_windows_with_function_and_explanations(tmp_path):
    p = write_mammogram(
        tmp_path / "w.dcm", window=[(2000, 3000), (1800, 1200), (1900, 0)], voi_function="SIGMOID"
    )
    presets = _header(p).window_presets
    # the zero-width pair is invalid and skipped
    assert presets == (
        WindowPreset(2000.0, 3000.0, "SIGMOID", "WINDOW1"),
        WindowPreset(1800.0, 1200.0, "SIGMOID", "WINDOW2"),
    )


def test_voi_lut_sequence_items_become_presets(tmp_path):
    lut = (0, 16, [min(65535, v * 16) for v in range(4096)])
    p = write_mammogram(tmp_path / "lut.dcm", window=(2048, 4096), voi_lut=[lut, lut])
    presets = _header(p).window_presets
    assert [pr.lut_index for pr in presets] == [None, 0, 1]
    assert presets[1].explanation == "LUT 1" and presets[1].center is None


def test_modifiers_as_words(tmp_path):
    p = write_mammogram(tmp_path / "spot.dcm", modifiers=("spot compression", "magnification"))
    h = _header(p)
    assert h.view_modifiers == ("spot compression", "magnification")
    assert not h.is_standard_view


def test_pixel_spacing_prefers_imager_pixel_spacing(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", extra={"PixelSpacing": [0.085, 0.085]})
    assert _header(p).pixel_spacing == (0.1, 0.1)
    ds = dcmread(p)
    del ds.ImagerPixelSpacing
    ds.save_as(p)
    assert _header(p).pixel_spacing == (0.085, 0.085)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_files_scan(tmp_path, syntax):
    h = _header(write_mammogram(tmp_path / "c.dcm", transfer_syntax=syntax))
    assert h.transfer_syntax_uid == syntax


def test_implicit_and_deflated_files_scan(tmp_path):
    from tests.factories import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

    for syntax in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        assert _header(write_mammogram(tmp_path / f"{syntax}.dcm", transfer_syntax=syntax)).label == "RCC"


def test_dataset_without_preamble_is_read(tmp_path):
    ds = dcmread(write_mammogram(tmp_path / "a.dcm"))
    bare = Dataset()
    bare.update(ds)  # no file meta: written the way old systems did
    p = tmp_path / "bare.dcm"
    bare.save_as(p, implicit_vr=True, little_endian=True)
    assert p.read_bytes()[:2] == b"\x08\x00"
    assert _header(p).label == "RCC"


def test_scan_never_writes_to_the_file(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", transfer_syntax=JPEG2000Lossless)
    before = (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
    read_header(p)
    assert (hashlib.sha256(p.read_bytes()).hexdigest(), os.stat(p).st_mtime_ns) == before


def test_large_private_blob_is_not_read(tmp_path):
    # an overlay-sized private element before the pixel data must not slow the scan down
    p = write_mammogram(tmp_path / "blob.dcm", extra={})
    ds = dcmread(p)
    ds.add_new(0x00291010, "OB", b"\x01" * 2_000_000)
    ds.save_as(p)
    assert _header(p).label == "RCC"


# --- DICOMDIR -----------------------------------------------------------------------------------


def test_dicomdir_files_are_resolved_and_readable(tmp_path):
    dicomdir = write_dicomdir(tmp_path / "media")
    files = dicomdir_files(dicomdir)
    assert len(files) == 2
    assert all(f.is_file() and f.is_relative_to(tmp_path / "media") for f in files)
    labels = sorted(_header(f).label for f in files)
    assert labels == ["LCC", "RCC"]


def test_dicomdir_components_match_case_insensitively(tmp_path):
    dicomdir = write_dicomdir(tmp_path / "media")
    for path in sorted((tmp_path / "media").rglob("*"), key=lambda p: -len(p.parts)):
        if path.name != "DICOMDIR":
            path.rename(path.with_name(path.name.lower()))
    files = dicomdir_files(dicomdir)
    assert all(f.is_file() for f in files)


def test_dicomdir_files_rejects_other_files(tmp_path):
    with pytest.raises(ValueError, match="not a DICOMDIR"):
        dicomdir_files(write_mammogram(tmp_path / "a.dcm"))
    with pytest.raises(ValueError, match="not a DICOMDIR"):
        dicomdir_files(write_pdf(tmp_path / "a.pdf"))


def test_fast_fields_give_the_same_answers(tmp_path):
    p = write_mammogram(
        tmp_path / "a.dcm", laterality="L", view="XCCL", modifiers=("magnification",),
        extra={"SeriesDescription": "L XCCL MAG"},
    )
    ds = dcmread(p, stop_before_pixels=True)
    fast = FastFields(dcmread(p, stop_before_pixels=True))
    for func in (
        classify.laterality, classify.view, classify.view_modifiers, classify.mammogram_kind, classify.kind_detail
    ):
        assert func(fast) == func(ds)


# --- untrusted values ---------------------------------------------------------------------------

# pydicom warns about the invalid values these files carry on purpose
_invalid_values = pytest.mark.filterwarnings("ignore:.*(Invalid value for VR|exceeds the maximum length)")


@_invalid_values
@pytest.mark.parametrize(
    "field, value",
    [("sop_uid", "../../../../x"), ("sop_uid", "/etc/passwd"), ("sop_uid", "1." * 40 + "1"),
     ("sop_uid", "1.2.a"), ("study_uid", "../study"), ("series_uid", "1.2.3/4")],
)
def test_invalid_uids_are_problems(tmp_path, field, value):
    p = write_mammogram(tmp_path / "a.dcm", **{field: value})
    problem = _problem(p)
    assert problem.reason == headers.INVALID_UID
    assert "is not a DICOM UID" in problem.detail


def test_uid_padding_is_not_part_of_the_uid(tmp_path):
    ds = dcmread(write_mammogram(tmp_path / "a.dcm", sop_uid="1.2.3.4"))
    ds["SOPInstanceUID"].value = "1.2.3.4\x00"
    ds.save_as(tmp_path / "a.dcm")
    assert _header(tmp_path / "a.dcm").sop_instance_uid == "1.2.3.4"


def _in_thread(func, *args, timeout=10.0):
    """func(*args) in a daemon thread; fails instead of hanging the suite when it blocks."""
    import threading

    out: list = []

    def run():
        try:
            out.append((True, func(*args)))
        except Exception as exc:
            out.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert out, f"{func.__name__} blocked for {timeout} s"
    ok, value = out[0]
    if not ok:
        raise value
    return value


def test_a_fifo_is_never_opened(tmp_path):
    fifo = tmp_path / "pipe.dcm"
    os.mkfifo(fifo)
    problem = _in_thread(read_header, fifo)
    assert (problem.reason, problem.detail) == (headers.NOT_REGULAR, "a FIFO")
    assert _in_thread(headers.open_regular, fifo) is None
    with pytest.raises(ValueError, match="not a regular file"):
        _in_thread(headers.dicomdir_entries, fifo)


def _deflated(tmp_path, name="d.dcm"):
    from tests.factories import DeflatedExplicitVRLittleEndian

    return write_mammogram(tmp_path / name, transfer_syntax=DeflatedExplicitVRLittleEndian,
                           shape=(512, 416))


def test_deflated_file_over_the_inflate_cap_is_too_large(tmp_path, monkeypatch):
    p = _deflated(tmp_path)  # 512 × 416 × 2 bytes of pixels
    assert isinstance(read_header(p), ImageHeader)
    monkeypatch.setenv("MAMVIEW_MAX_INFLATED_BYTES", str(100_000))
    problem = _problem(p)
    assert problem.reason == headers.TOO_LARGE
    assert "100,000" in problem.detail


def test_cut_deflated_file_is_truncated(tmp_path):
    p = _deflated(tmp_path)
    data = p.read_bytes()
    for keep in (0.5, 0.9, 0.99):
        cut = tmp_path / f"cut{keep}.dcm"
        cut.write_bytes(data[: int(len(data) * keep)])
        assert _problem(cut).reason == headers.TRUNCATED


def _dicomdir_with(tmp_path, parts):
    """A DICOMDIR whose first image record references `parts`."""
    dicomdir = write_dicomdir(tmp_path / "media")
    ds = dcmread(dicomdir)
    record = next(r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE")
    record.ReferencedFileID = parts
    ds.save_as(dicomdir)
    return dicomdir


@_invalid_values
@pytest.mark.parametrize("parts", [["..", "outside.dcm"], ["/etc/passwd"], ["", "etc", "passwd"],
                                   ["PT000000", "..", "..", "x"], ["LINK"]])
def test_dicomdir_references_outside_the_media_are_refused(tmp_path, parts):
    write_mammogram(tmp_path / "outside.dcm")
    (tmp_path / "media").mkdir()
    os.symlink(tmp_path / "outside.dcm", tmp_path / "media" / "LINK")
    dicomdir = _dicomdir_with(tmp_path, parts)
    files, refused = headers.dicomdir_entries(dicomdir)
    assert len(files) == 1 and files[0].is_relative_to(tmp_path / "media")
    assert [p.reason for p in refused] == [headers.OUTSIDE_MEDIA]
    assert dicomdir_files(dicomdir) == files


def test_cut_dicomdir_is_refused(tmp_path):
    dicomdir = write_dicomdir(tmp_path / "media")
    data = dicomdir.read_bytes()
    for keep in (0.5, 0.95):
        dicomdir.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ValueError):
            dicomdir_files(dicomdir)


def test_a_file_over_the_size_cap_is_not_read(tmp_path, monkeypatch):
    p = write_mammogram(tmp_path / "a.dcm")
    monkeypatch.setenv("MAMVIEW_MAX_FILE_BYTES", str(p.stat().st_size - 1))
    assert _problem(p).reason == headers.TOO_LARGE


@pytest.mark.parametrize("fill", [b"\x00", b"\x08\x00\x20\x00DA\x08\x0020240101"])
def test_a_large_run_of_garbage_elements_ends_the_scan_at_once(tmp_path, fill):
    """Zeros (or one element repeated) after the file meta read as millions of elements."""
    import time

    src = write_mammogram(tmp_path / "src.dcm")
    data = src.read_bytes()
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    p = tmp_path / "garbage.dcm"
    p.write_bytes(data[:meta_end] + fill * (64 * 1024**2 // len(fill)))
    t0 = time.perf_counter()
    assert _problem(p).reason in (headers.UNREADABLE_HEADER, headers.NOT_A_MAMMOGRAM, headers.TRUNCATED)
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize("rows, columns, frames", [(65535, 65535, 1), (16385, 100, 1), (9000, 8000, 1)])
def test_declared_sizes_over_the_caps_are_too_large(tmp_path, rows, columns, frames):
    p = write_mammogram(tmp_path / "a.dcm")
    ds = dcmread(p)
    ds.Rows, ds.Columns = rows, columns
    ds.NumberOfFrames = frames
    ds.save_as(p)  # the pixel data no longer fits: the size is refused before that is checked
    problem = _problem(p)
    assert problem.reason == headers.TOO_LARGE
    assert "over the limit" in problem.detail
