"""Laterality, view, modifiers and the mammogram check, source by source."""

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mamview.core.dicom import classify
from mamview.core.dicom.classify import laterality, mammogram_kind, view, view_modifiers
from mamview.core.domain import Source
from tests.factories import (
    MODIFIER_CODES,
    SRT_MODIFIER_CODES,
    VIEW_CODES,
    write_mammogram,
    write_other_modality,
    write_sr,
    write_tomosynthesis,
)

# the tests feed deliberately non-standard text (lower case, hyphens) to ViewPosition
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")


def _code(value: str, scheme: str, meaning: str = "") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _ds(**attrs) -> Dataset:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _view_ds(value: str, scheme: str, modifiers=None) -> Dataset:
    item = _code(value, scheme)
    if modifiers is not None:
        item.ViewModifierCodeSequence = Sequence([_code(v, s) for v, s in modifiers])
    return _ds(ViewCodeSequence=Sequence([item]))


# --- laterality ---------------------------------------------------------------------------------


def test_image_laterality_wins():
    ds = _ds(ImageLaterality="L", Laterality="R", ViewPosition="RCC", SeriesDescription="RIGHT")
    assert laterality(ds) == classify.Classified("L", Source.IMAGE_LATERALITY, "L")


def test_frame_laterality_from_functional_groups():
    anatomy = _ds(FrameLaterality="R")
    ds = _ds(SharedFunctionalGroupsSequence=Sequence([_ds(FrameAnatomySequence=Sequence([anatomy]))]))
    ds.Laterality = "L"
    result = laterality(ds)
    assert (result.value, result.source) == ("R", Source.FRAME_LATERALITY)


def test_series_laterality_after_image_laterality():
    result = laterality(_ds(Laterality=" l ", ViewPosition="RCC"))
    assert (result.value, result.source) == ("L", Source.LATERALITY)


def test_unpaired_image_laterality_falls_through():
    result = laterality(_ds(ImageLaterality="U", ViewPosition="LMLO"))
    assert (result.value, result.source) == ("L", Source.VIEW_POSITION)


@pytest.mark.parametrize(
    ("text", "side"),
    [("RMLO", "R"), ("RIGHT CC", "R"), ("L CC", "L"), ("lcc", "L"), ("L-MLO", "L"), ("RXCCL", "R")],
)
def test_laterality_from_view_position(text, side):
    result = laterality(_ds(ViewPosition=text))
    assert (result.value, result.source, result.detail) == (side, Source.VIEW_POSITION, " ".join(text.upper().split()))


@pytest.mark.parametrize(
    ("keyword", "text", "side"),
    [
        ("SeriesDescription", "R CC", "R"),
        ("SeriesDescription", "L MLO", "L"),
        ("ProtocolName", "Mammo LEFT screening", "L"),
        ("ImageComments", "Mammographie DEX", "R"),
        ("SeriesDescription", "MX SIN CC", "L"),
        ("SeriesDescription", "rmlo", "R"),
    ],
)
def test_laterality_from_description(keyword, text, side):
    result = laterality(_ds(**{keyword: text}))
    assert (result.value, result.source) == (side, Source.DESCRIPTION)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"SeriesDescription": "BILATERAL MAMMO R L"},  # both sides named: undecided
        {"SeriesDescription": "SCREENING"},
        {"ViewPosition": "MLO"},  # ML and LM must not read as L
        {"ViewPosition": "LM"},
        {"ImageLaterality": "", "Laterality": ""},
    ],
)
def test_unknown_laterality(attrs):
    assert laterality(_ds(**attrs)) == classify.Classified("U", Source.NONE)


def test_laterality_of_written_files(tmp_path):
    ds = dcmread(write_mammogram(tmp_path / "a.dcm", laterality="L", with_laterality=False, view_position="LCC"))
    assert (laterality(ds).value, laterality(ds).source) == ("L", Source.VIEW_POSITION)


# --- view ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VIEW_CODES))
def test_view_from_every_sct_code(name):
    code = VIEW_CODES[name]
    result = view(_view_ds(code.value, "SCT"))
    assert (result.value, result.source, result.detail) == (name, Source.VIEW_CODE_SEQUENCE, f"SCT:{code.value}")


@pytest.mark.parametrize(
    ("value", "name"),
    [("R-10242", "CC"), ("R-10226", "MLO"), ("R-10224", "ML"), ("R-10228", "LM"), ("R-10230", "LMO"),
     ("R-10244", "FB"), ("R-1024A", "XCCL"), ("R-1024B", "XCCM"), ("R-102D0", "SIO"), ("R-40AAA", "ISO")],
)
@pytest.mark.parametrize("scheme", ["SRT", "SNM3"])
def test_view_from_old_snomed_codes(value, name, scheme):
    result = view(_view_ds(value, scheme))
    assert (result.value, result.source) == (name, Source.VIEW_CODE_SEQUENCE)


def test_deprecated_xccl_code():
    assert view(_view_ds("Y-X1770", "SRT")).value == "XCCL"
    assert view(_view_ds("Y-X1771", "SRT")).value == "XCCM"


def test_unknown_code_falls_back_to_view_position():
    ds = _view_ds("12345", "99PRIVATE")
    ds.ViewPosition = "MLO"
    assert (view(ds).value, view(ds).source) == ("MLO", Source.VIEW_POSITION)


@pytest.mark.parametrize(
    ("text", "name"),
    [("MLO", "MLO"), ("ML", "ML"), ("RMLO", "MLO"), ("L CC", "CC"), ("LCC", "CC"), ("XCCL", "XCCL"),
     ("lm", "LM"), ("R ML", "ML"), ("FB", "FB"), ("LMO", "LMO")],
)
def test_view_from_view_position(text, name):
    result = view(_ds(ViewPosition=text))
    assert (result.value, result.source) == (name, Source.VIEW_POSITION)


@pytest.mark.parametrize(
    ("text", "name"),
    [("R CC", "CC"), ("L MLO SPOT", "MLO"), ("Mediolateral oblique left", "MLO"), ("medio-lateral R", "ML"),
     ("CRANIO-CAUDAL", "CC"), ("Specimen", "SPECIMEN")],
)
def test_view_from_description(text, name):
    result = view(_ds(SeriesDescription=text))
    assert (result.value, result.source) == (name, Source.DESCRIPTION)


@pytest.mark.parametrize("attrs", [{}, {"SeriesDescription": "CC and MLO"}, {"ViewPosition": "AP"}])
def test_unknown_view(attrs):
    assert view(_ds(**attrs)) == classify.Classified("UNKNOWN", Source.NONE)


def test_ml_is_not_mlo(tmp_path):
    ds = dcmread(write_mammogram(tmp_path / "ml.dcm", view="ML"))
    assert view(ds).value == "ML"
    ds = dcmread(write_mammogram(tmp_path / "ml2.dcm", view="ML", with_view_code=False))
    assert (view(ds).value, view(ds).source) == ("ML", Source.VIEW_POSITION)


def test_srt_codes_in_written_file(tmp_path):
    p = write_mammogram(tmp_path / "old.dcm", view="MLO", view_code_scheme="SNM3", modifiers=("spot compression",))
    ds = dcmread(p)
    assert (view(ds).value, view(ds).source) == ("MLO", Source.VIEW_CODE_SEQUENCE)
    assert view_modifiers(ds) == ("spot compression",)


# --- modifiers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODIFIER_CODES))
def test_every_modifier_code(name):
    ds = _view_ds("399162004", "SCT", modifiers=[(MODIFIER_CODES[name].value, "SCT")])
    assert view_modifiers(ds) == (name,)


@pytest.mark.parametrize(("name", "value"), sorted(SRT_MODIFIER_CODES.items()))
def test_old_modifier_codes(name, value):
    assert view_modifiers(_view_ds("R-10242", "SRT", modifiers=[(value, "SRT")])) == (name,)


def test_modifier_words_only_without_codes():
    assert view_modifiers(_ds(SeriesDescription="R CC SPOT MAG")) == ("spot compression", "magnification")
    # a coded, empty modifier list is authoritative: the text is not used
    assert view_modifiers(_view_ds("399162004", "SCT", modifiers=[])) == ()
    coded = _view_ds("399162004", "SCT", modifiers=[])
    coded.SeriesDescription = "SPOT"
    assert view_modifiers(coded) == ()


def test_no_modifiers():
    assert view_modifiers(_ds(SeriesDescription="R CC")) == ()


# --- mammogram or not ---------------------------------------------------------------------------


def test_mammogram_kind_of_files(tmp_path):
    assert mammogram_kind(dcmread(write_mammogram(tmp_path / "m.dcm"))) == (True, "")
    assert mammogram_kind(dcmread(write_mammogram(tmp_path / "p.dcm", presentation_intent="FOR PROCESSING"))) == (
        True,
        "",
    )
    assert mammogram_kind(dcmread(write_other_modality(tmp_path / "ct.dcm"))) == (False, "not a mammogram")
    assert mammogram_kind(dcmread(write_tomosynthesis(tmp_path / "t.dcm"))) == (False, "tomosynthesis")
    assert mammogram_kind(dcmread(write_sr(tmp_path / "sr.dcm"))) == (False, "not an image")


@pytest.mark.parametrize(
    ("sop_class", "modality", "expected"),
    [
        ("1.2.840.10008.5.1.4.1.1.1.2", "MG", (True, "")),
        ("1.2.840.10008.5.1.4.1.1.1.2", "", (True, "")),  # the SOP class decides
        ("1.2.840.10008.5.1.4.1.1.1.1", "MG", (True, "")),  # DX storage, MG modality
        ("1.2.840.10008.5.1.4.1.1.1", "MG", (True, "")),  # CR mammography
        ("1.2.840.10008.5.1.4.1.1.1.1", "DX", (False, "not a mammogram")),
        ("1.2.840.10008.5.1.4.1.1.7", "MG", (False, "not a mammogram")),  # secondary capture
        ("1.2.840.10008.5.1.4.1.1.13.1.3", "MG", (False, "tomosynthesis")),
        ("1.2.840.10008.5.1.4.1.1.13.1.4", "MG", (False, "tomosynthesis")),
        ("1.2.840.10008.5.1.4.1.1.11.1", "PR", (False, "not an image")),  # presentation state
        ("1.2.840.10008.5.1.4.1.1.104.1", "DOC", (False, "not an image")),  # encapsulated PDF
        ("1.2.840.10008.5.1.4.1.1.88.50", "SR", (False, "not an image")),  # mammography CAD SR
    ],
)
def test_mammogram_kind_table(sop_class, modality, expected):
    assert mammogram_kind(_ds(SOPClassUID=sop_class, Modality=modality)) == expected


def test_kind_detail():
    ds = _ds(SOPClassUID="1.2.840.10008.5.1.4.1.1.2", Modality="CT")
    assert classify.kind_detail(ds) == "Modality CT, CT Image Storage"

