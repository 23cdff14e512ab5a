"""A repeated view is read as the last one *acquired* (AcquisitionDate/Time, else
ContentDate/Time, then InstanceNumber, then path), not the last one by path name; real files,
a real import and a real SQLite cache."""

import sqlite3

import pytest

from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.dicom.headers import dicom_date, dicom_time, read_header
from mamview.core.services.inference import exam_inputs
from mamview.core.ingest import drain, run_import
from mamview.core.paths import Library
from tests.factories import write_mammogram

SHAPE = (320, 256)  # large enough to be scored


def write_exam(folder, views=(("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")), **extra):
    """The four standard views of one exam (patient P1, 2024-01-05) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_mammogram(folder / f"m_{lat}{view}.dcm", study_date="20240105", laterality=lat,
                            view=view, shape=SHAPE, extra=dict(extra)) for lat, view in views]


def import_and_choose(lib, folder):
    """Import `folder` and return the path of the RCC that scoring reads."""
    drain(run_import(lib, [folder], make_previews=False))
    db = connect(lib.database)
    try:
        (exam,) = reads.list_exams(db)
        rcc = exam_inputs(db, exam["exam_key"])[0]
    finally:
        db.close()
    assert rcc["label"] == "RCC"
    return rcc["path"]


@pytest.fixture
def lib(tmp_path):
    return Library(tmp_path / "lib")


def test_the_later_acquisition_wins_although_its_path_sorts_first(tmp_path, lib):
    folder = tmp_path / "exam"
    write_exam(folder, AcquisitionDate="20240105", AcquisitionTime="101500")
    # the repeat was taken 12 minutes later; its name sorts before the first RCC's
    repeat = write_mammogram(folder / "a_repeat.dcm", study_date="20240105", laterality="R",
                             view="CC", shape=SHAPE,
                             extra={"AcquisitionDate": "20240105", "AcquisitionTime": "102700"})
    first = str(folder / "m_RCC.dcm")
    assert max(first, str(repeat)) == first  # by path name the first RCC would be read
    assert import_and_choose(lib, folder) == str(repeat)


def test_acquisition_time_beats_a_higher_instance_number(tmp_path, lib):
    folder = tmp_path / "exam"
    write_exam(folder, AcquisitionDate="20240105", AcquisitionTime="101500.25", InstanceNumber=9)
    later = write_mammogram(folder / "a_later.dcm", study_date="20240105", laterality="R",
                            view="CC", shape=SHAPE,
                            extra={"AcquisitionDate": "20240105",
                                   "AcquisitionTime": "101500.5", "InstanceNumber": 1})
    assert import_and_choose(lib, folder) == str(later)


def test_content_date_and_time_when_there_is_no_acquisition_time(tmp_path, lib):
    folder = tmp_path / "exam"
    write_exam(folder, ContentTime="093000")
    earlier = write_mammogram(folder / "z_earlier.dcm", study_date="20240105", laterality="R",
                              view="CC", shape=SHAPE, extra={"ContentTime": "0800"})
    chosen = import_and_choose(lib, folder)
    assert chosen == str(folder / "m_RCC.dcm") and chosen != str(earlier)


def test_instance_number_breaks_a_tie_in_time_then_the_path(tmp_path, lib):
    folder = tmp_path / "exam"
    write_exam(folder, AcquisitionDate="20240105", AcquisitionTime="101500", InstanceNumber=2)
    write_mammogram(folder / "z_first.dcm", study_date="20240105", laterality="R", view="CC",
                    shape=SHAPE, extra={"AcquisitionDate": "20240105",
                                        "AcquisitionTime": "101500", "InstanceNumber": 1})
    assert import_and_choose(lib, folder) == str(folder / "m_RCC.dcm")


def test_acquisition_datetime_with_offset_is_read(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", shape=SHAPE,
                        extra={"AcquisitionDateTime": "20240105102700.5-0500",
                               "InstanceNumber": 3})
    h = read_header(p)
    assert (h.acquisition_date, h.acquisition_time, h.instance_number) == (
        "20240105", "102700.500000", 3)


@pytest.mark.parametrize("value, expected", [
    ("101500", "101500.000000"), ("1015", "101500.000000"), ("10", "100000.000000"),
    ("101500.1234567", "101500.123456"), ("10:15:00", "101500.000000"),
    ("251500", ""), ("106000", ""), ("10150", ""), ("ab", ""), ("1015.5x", ""), ("", ""),
    ("1" * 100_000, ""),
])
def test_dicom_time_is_sortable_text_or_nothing(value, expected):
    assert dicom_time(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("20240105", "20240105"), ("2024.01.05", "20240105"), ("20241305", ""),
    ("2024010", ""), ("2024-01-05", ""), (None, ""),
])
def test_dicom_date_accepts_only_calendar_dates(value, expected):
    assert dicom_date(value) == expected


def test_an_out_of_range_instance_number_is_unknown(tmp_path):
    p = write_mammogram(tmp_path / "a.dcm", shape=SHAPE, extra={"InstanceNumber": "99999999999"})
    assert read_header(p).instance_number is None


def test_a_library_from_before_reads_its_repeats_again_at_the_next_import(tmp_path, lib):
    folder = tmp_path / "exam"
    write_exam(folder, AcquisitionDate="20240105", AcquisitionTime="101500")
    repeat = write_mammogram(folder / "a_repeat.dcm", study_date="20240105", laterality="R",
                             view="CC", shape=SHAPE,
                             extra={"AcquisitionDate": "20240105", "AcquisitionTime": "102700"})
    drain(run_import(lib, [folder], make_previews=False))
    # turn the cache back into one written before migration m005 (as an older mamview left it)
    con = sqlite3.connect(lib.database)
    for column in ("acquisition_date", "acquisition_time", "content_date", "content_time",
                   "instance_number"):
        con.execute(f"ALTER TABLE images DROP COLUMN {column}")
    con.execute("DELETE FROM _sqlite_migrations WHERE name = 'm005_acquisition_order'")
    con.commit()
    con.close()

    db = connect(lib.database)  # applies m005: the repeated RCCs are to be read again
    try:
        known = reads.known_files(db)
        (exam,) = reads.list_exams(db)
        assert exam_inputs(db, exam["exam_key"])[0]["path"] == str(folder / "m_RCC.dcm")
    finally:
        db.close()
    assert str(repeat) not in known and str(folder / "m_RCC.dcm") not in known
    assert str(folder / "m_LCC.dcm") in known  # no repeat: not read again
    assert import_and_choose(lib, folder) == str(repeat)
