"""Images outside the risk model's validated domain (issue 13): digitised film, CR, lossy, For
Processing and synthetic 2D are indexed as images with the reason recorded; a misused
PatientOrientation is the recorded last resort for side and view. Real files, real cache."""

import pytest
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from mamview.core.cache import reads, writes
from mamview.core.cache.db import connect
from mamview.core.dicom import headers
from mamview.core.domain import ImageHeader, Source, StudyObject, domain_label, domain_reason
from tests.factories import write_mammogram
from tests.study_objects import write_digitised_film

CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


def _header(path) -> ImageHeader:
    h = headers.read_header(path)
    assert isinstance(h, ImageHeader), h
    return h


def test_digitised_film_is_an_image_outside_the_domain(tmp_path):
    p = write_digitised_film(tmp_path / "film.dcm", patient_id="F1", study_date="19990301",
                             study_uid=generate_uid(), laterality="L", view="MLO")
    h = _header(p)
    assert h.domain == "digitised film"
    assert (h.laterality.value, h.view.value) == ("L", "MLO")
    assert h.sop_class_uid == SecondaryCaptureImageStorage


def test_breast_secondary_capture_of_modality_ot_is_film_too(tmp_path):
    p = write_mammogram(tmp_path / "sc.dcm", extra={
        "SOPClassUID": SecondaryCaptureImageStorage, "Modality": "OT", "BodyPartExamined": "BREAST"})
    assert _header(p).domain == "digitised film"


def test_colour_screenshot_stays_a_study_member(tmp_path):
    import numpy as np
    from pydicom import dcmread

    ds = dcmread(write_digitised_film(tmp_path / "film.dcm", patient_id="F1",
                                      study_date="19990301", study_uid=generate_uid(),
                                      laterality="R", view="CC", shape=(64, 64)))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((64, 64, 3), np.uint8).tobytes()
    ds.save_as(tmp_path / "shot.dcm")
    member = headers.read_header(tmp_path / "shot.dcm")
    assert isinstance(member, StudyObject) and member.kind == "secondary capture"


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, ""),
    ({"extra": {"SOPClassUID": CR_IMAGE}}, "computed radiography"),
    ({"extra": {"LossyImageCompression": "01"}}, "lossy compressed"),
    ({"extra": {"LossyImageCompression": "00"}}, ""),
    ({"presentation_intent": "FOR PROCESSING"}, "for processing"),
    # PS3.3 C.8.11.7.1.4: Image Type Value 4 GENERATED_2D
    ({"extra": {"ImageType": ["DERIVED", "PRIMARY", "TOMOSYNTHESIS", "GENERATED_2D"]}},
     "synthetic 2D"),
    ({"extra": {"SeriesDescription": "L CC C-View"}}, "synthetic 2D"),
    ({"extra": {"SeriesDescription": "R CC VIEW"}}, ""),
    ({"extra": {"SOPClassUID": CR_IMAGE, "LossyImageCompression": "01"}},
     "computed radiography, lossy compressed"),
])
def test_domain_of_mammograms(tmp_path, kwargs, expected):
    assert _header(write_mammogram(tmp_path / "m.dcm", **kwargs)).domain == expected


def test_reason_and_label_words():
    assert domain_reason("digitised film") == "outside the model's validated domain: digitised film"
    assert domain_label("lossy compressed, digitised film") == (
        "DIGITISED FILM + LOSSY COMPRESSED — outside the model's domain")
    assert domain_label("") == ""


def test_misused_patient_orientation_is_the_recorded_last_resort(tmp_path):
    p = write_mammogram(tmp_path / "po.dcm", with_view_code=False, view_position=False,
                        with_laterality=False, orientation=None,
                        extra={"PatientOrientation": ["RCC"]})
    h = _header(p)
    assert (h.laterality.value, h.laterality.source) == ("R", Source.PATIENT_ORIENTATION)
    assert (h.view.value, h.view.source) == ("CC", Source.PATIENT_ORIENTATION)
    assert h.view.detail == "RCC"


def test_misused_orientation_never_beats_a_description_or_a_tag(tmp_path):
    p = write_mammogram(tmp_path / "d.dcm", with_view_code=False, view_position=False,
                        orientation=None, extra={"PatientOrientation": ["CC"],
                                                 "SeriesDescription": "L MLO"})
    h = _header(p)
    assert (h.view.value, h.view.source) == ("MLO", Source.DESCRIPTION)
    assert h.laterality.source == Source.IMAGE_LATERALITY


def test_real_orientation_letters_decide_nothing(tmp_path):
    p = write_mammogram(tmp_path / "o.dcm", with_view_code=False, view_position=False,
                        with_laterality=False, orientation=("P", "L"))
    h = _header(p)
    assert h.laterality.source == Source.NONE and h.view.source == Source.NONE


def test_domain_is_stored_and_read_back(tmp_path):
    db = connect(tmp_path / "cache.sqlite")
    p = write_digitised_film(tmp_path / "film.dcm", patient_id="F1", study_date="19990301",
                             study_uid=generate_uid(), laterality="R", view="CC")
    writes.write_batch(db, [_header(p)], [])
    (exam,) = reads.list_exams(db)
    assert [im["domain"] for im in exam["images"]] == ["digitised film"]
    db.close()


def test_migration_fills_the_domain_and_rereads_films(tmp_path):
    from mamview.core.cache.migrations import migrations

    db = connect(tmp_path / "cache.sqlite", migrate=False)
    migrations.apply(db, stop_before="m007_image_domain")
    db.execute("INSERT INTO patients (patient_key, patient_id) VALUES ('|P', 'P')")
    db.execute("INSERT INTO exams (exam_key, patient_key, exam_date) VALUES ('|P|d', '|P', 'd')")
    rows = [("1.1", "/x/plain.dcm", "1.2.840.10008.5.1.4.1.1.1.2", "FOR PRESENTATION", "", "R CC"),
            ("1.2", "/x/cr.dcm", CR_IMAGE, "", "01", ""),
            ("1.3", "/x/raw.dcm", "1.2.840.10008.5.1.4.1.1.1.2.1", "FOR PROCESSING", "", ""),
            ("1.4", "/x/cview.dcm", "1.2.840.10008.5.1.4.1.1.1.2", "FOR PRESENTATION", "",
             "L CC C-View")]
    for uid, path, cls, intent, lossy, desc in rows:
        db.execute(
            "INSERT INTO images (sop_instance_uid, exam_key, patient_key, path, size, mtime_ns, "
            "study_uid, series_uid, sop_class_uid, transfer_syntax_uid, modality, laterality, "
            "laterality_source, view, view_source, is_standard, rows, columns, bits_stored, "
            "photometric, presentation_intent, lossy_compression, series_description) VALUES "
            "(?, '|P|d', '|P', ?, 1, 1, '1.9', '1.9.1', ?, '1.2.840.10008.1.2.1', 'MG', 'R', 'tag', "
            "'CC', 'tag', 1, 10, 8, 12, 'MONOCHROME2', ?, ?, ?)", [uid, path, cls, intent, lossy, desc])
        db.execute("INSERT INTO files (path, size, mtime_ns, outcome, sop_instance_uid) "
                   "VALUES (?, 1, 1, 'image', ?)", [path, uid])
    db.execute("INSERT INTO study_objects (sop_instance_uid, exam_key, patient_key, study_uid, kind, "
               "path, size, mtime_ns) VALUES ('2.1', '|P|d', '|P', '1.9', 'secondary capture', "
               "'/x/film.dcm', 1, 1)")
    db.execute("INSERT INTO files (path, size, mtime_ns, outcome, sop_instance_uid) "
               "VALUES ('/x/film.dcm', 1, 1, 'object', '2.1')")
    migrations.apply(db, stop_before="m008_patient_identity")
    domains = dict(db.execute("SELECT sop_instance_uid, domain FROM images").fetchall())
    assert domains == {"1.1": "", "1.2": "computed radiography, lossy compressed",
                       "1.3": "for processing", "1.4": ""}
    # the synthetic view (named in its description) and the film are read again
    assert sorted(r[0] for r in db.execute("SELECT path FROM files")) == [
        "/x/cr.dcm", "/x/plain.dcm", "/x/raw.dcm"]
    assert db.execute("SELECT count(*) FROM study_objects").fetchone()[0] == 0
    assert [c.name for c in db["scores"].columns if c.name in ("domain", "view_mapping")] == [
        "domain", "view_mapping"]
    db.close()
