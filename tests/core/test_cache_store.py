"""The exam cache on a real SQLite file: grouping, idempotency, duplicates, changes, deletions."""

import dataclasses
import json
import threading

import pytest

from mamview.core.cache import keys, reads, writes
from mamview.core.cache.db import connect
from mamview.core.domain import Classified, ImageHeader, Problem, Source


def header(path, sop, *, pid="P1", date="20240105", study="1.2.3", lat="R", view="CC",
           size=100, mtime=1, modifiers=(), intent="FOR PRESENTATION", accession=""):
    from mamview.core.domain import PresentationIntent

    return ImageHeader(
        path=str(path), size=size, mtime_ns=mtime, sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2", study_instance_uid=study,
        series_instance_uid=study + ".1", transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="MG", patient_id=pid, patient_name="DOE^JANE", study_date=date,
        accession_number=accession, rows=10, columns=8, bits_stored=12,
        photometric="MONOCHROME2", presentation_intent=PresentationIntent(intent),
        laterality=Classified(lat, Source.IMAGE_LATERALITY),
        view=Classified(view, Source.VIEW_CODE_SEQUENCE), view_modifiers=tuple(modifiers),
    )


def four_views(folder, pid="P1", date="20240105", study="1.2.3", prefix="9"):
    return [
        header(folder / f"{lat}{view}.dcm", f"{prefix}.{i}", pid=pid, date=date, study=study,
               lat=lat, view=view)
        for i, (lat, view) in enumerate([("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")])
    ]


@pytest.fixture
def db(tmp_path):
    d = connect(tmp_path / "cache.sqlite")
    yield d
    d.close()


def test_database_is_wal_and_migrated(db, tmp_path):
    assert db.journal_mode == "wal"
    assert {"patients", "exams", "images", "files", "problems", "previews", "scores"} <= set(
        db.table_names()
    )
    # reopening applies nothing twice
    from mamview.core.cache.migrations import migrations

    again = connect(tmp_path / "cache.sqlite")
    applied = again.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0]
    assert applied == len(list(migrations.pending(connect(tmp_path / "other.sqlite", migrate=False))))
    again.close()


def test_same_day_studies_merge_into_one_exam(db, tmp_path):
    hs = four_views(tmp_path)
    # a scanner that puts each image in its own study, same day
    split = [header(h.path, h.sop_instance_uid, study=f"1.2.3.{i}", lat=h.laterality.value,
                    view=h.view.value, accession=f"A{i}") for i, h in enumerate(hs)]
    writes.write_batch(db, split, [])
    exams = reads.list_exams(db)
    assert len(exams) == 1
    assert exams[0]["exam_date"] == "2024-01-05"
    assert len(exams[0]["study_uids"]) == 4 and len(exams[0]["accession_numbers"]) == 4
    assert exams[0]["complete"]
    assert [im["label"] for im in exams[0]["images"]] == ["RCC", "LCC", "RMLO", "LMLO"]


def test_rewriting_the_same_headers_adds_nothing(db, tmp_path):
    hs = four_views(tmp_path)
    first = writes.write_batch(db, hs, [])
    before = reads.counts(db)
    second = writes.write_batch(db, hs, [])
    assert first.added == 4 and second.added == 0 and second.updated == 4
    assert reads.counts(db) == before


def test_duplicate_sop_uid_in_another_existing_file_is_a_problem(db, tmp_path):
    a = tmp_path / "a.dcm"
    b = tmp_path / "b.dcm"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    result = writes.write_batch(db, [header(a, "1.1"), header(b, "1.1")], [])
    assert result.added == 1 and len(result.duplicates) == 1
    probs = reads.list_problems(db)
    assert probs == [{"path": str(b), "reason": "duplicate",
                      "detail": f"same SOP Instance UID as {a}"}]
    assert reads.counts(db)["images"] == 1


def test_moved_file_updates_the_path(db, tmp_path):
    writes.write_batch(db, [header(tmp_path / "old.dcm", "1.1")], [])
    writes.set_missing(db, [str(tmp_path / "old.dcm")])
    writes.write_batch(db, [header(tmp_path / "new.dcm", "1.1")], [])
    (img,) = reads.list_exams(db)[0]["images"]
    assert img["path"] == str(tmp_path / "new.dcm") and not img["missing"]


def test_file_replaced_by_another_instance_drops_the_old_one(db, tmp_path):
    p = tmp_path / "x.dcm"
    writes.write_batch(db, [header(p, "1.1", date="20200101")], [])
    writes.write_batch(db, [header(p, "1.2", date="20210101", size=200)], [])
    exams = reads.list_exams(db)
    assert [e["exam_date"] for e in exams] == ["2021-01-01"]  # the emptied exam is gone
    assert reads.counts(db)["images"] == 1


def test_file_that_became_unreadable_leaves_the_cache(db, tmp_path):
    p = tmp_path / "x.dcm"
    writes.write_batch(db, [header(p, "1.1")], [])
    writes.write_batch(db, [], [Problem(str(p), "truncated", "short")], {str(p): (5, 2)})
    assert reads.counts(db) == {"patients": 0, "exams": 0, "images": 0, "missing": 0,
                                "problems": 1, "study_objects": 0}
    assert reads.known_files(db)[str(p)] == (5, 2)


def test_incomplete_exam_reasons(db, tmp_path):
    hs = four_views(tmp_path)[:3]
    hs.append(header(tmp_path / "spot.dcm", "9.9", lat="L", view="CC",
                     modifiers=("spot compression",)))
    writes.write_batch(db, hs, [])
    (exam,) = reads.list_exams(db)
    assert not exam["complete"]
    assert exam["incomplete_reason"] == "missing LMLO"
    spot = [im for im in exam["images"] if not im["is_standard"]]
    assert spot[0]["view_modifiers"] == ["spot compression"]
    assert exam["images"][-1]["sop_instance_uid"] == "9.9"  # extra views after standard ones


def test_for_processing_exam_is_not_complete(db, tmp_path):
    hs = [header(h.path, h.sop_instance_uid, lat=h.laterality.value, view=h.view.value,
                 intent="FOR PROCESSING") for h in four_views(tmp_path)]
    writes.write_batch(db, hs, [])
    (exam,) = reads.list_exams(db)
    assert (exam["complete"], exam["incomplete_reason"]) == (False, "only For Processing images")


def test_patients_without_id_are_never_merged(db, tmp_path):
    a = header(tmp_path / "a.dcm", "1.1", pid="", study="1.2.3")
    b = header(tmp_path / "b.dcm", "1.2", pid="", study="1.2.4")
    writes.write_batch(db, [a, b], [])
    assert reads.counts(db)["patients"] == 2


def test_preview_order_of_need(db, tmp_path):
    writes.write_batch(db, four_views(tmp_path / "old", date="20200101", prefix="1"), [])
    writes.write_batch(db, four_views(tmp_path / "new", date="20230101", prefix="2"), [])
    writes.write_batch(db, four_views(tmp_path / "b", pid="P2", prefix="3"), [])
    todo = reads.images_needing_previews(db, 1, first_patient="|P2")
    assert [r["patient_key"] for r in todo[:4]] == ["|P2"] * 4
    assert [r["exam_date"] for r in todo[4:]] == ["2023-01-01"] * 4 + ["2020-01-01"] * 4


def test_one_connection_per_thread(tmp_path):
    path = tmp_path / "c.sqlite"
    connect(path).close()  # migrations once, up front
    seen = {}

    def work(name):
        db = connect(path, migrate=False)  # each thread its own connection
        try:
            seen[name] = id(db.conn)
            writes.write_batch(db, [header(tmp_path / f"{name}.dcm", f"1.{name}", pid=name)], [])
        finally:
            db.close()

    threads = [threading.Thread(target=work, args=(str(i),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4  # no thread failed on a lock
    db = connect(path)
    assert reads.counts(db)["patients"] == 4
    db.close()


def test_window_presets_round_trip(db, tmp_path):
    from dataclasses import replace

    from mamview.core.domain import WindowPreset

    h = replace(header(tmp_path / "w.dcm", "1.1"),
                window_presets=(WindowPreset(2000, 4000, "SIGMOID", "NORMAL"),))
    writes.write_batch(db, [h], [])
    (img,) = reads.list_exams(db)[0]["images"]
    assert img["window_presets"] == [{"center": 2000, "width": 4000, "function": "SIGMOID",
                                      "explanation": "NORMAL", "lut_index": None}]
    assert json.loads(json.dumps(img))  # JSON-friendly for `mamview exams --json`


# ---------------------------------------------------------------- keys, columns, migrations


def test_keys_of_plain_values_are_unchanged():
    h = header("/x/a.dcm", "1.1", pid="P1")
    assert keys.patient_key(h) == "|P1"
    assert keys.exam_key(h) == "|P1|2024-01-05"
    assert keys.patient_key_of("", "", "1.2.3") == "|no-id:1.2.3"
    assert keys.patient_key_of("ISS", "P1") == "ISS|P1"


@pytest.mark.parametrize(
    "a, b",
    [(("A|B", "C"), ("A", "B|C")), (("", "no-id:1.2.3"), ("", "")), (("", "50%7Cx"), ("", "50|x")),
     (("A%", "B"), ("A", "%B")), (("", "%6Eo-id:1"), ("", "no-id:1"))],
)
def test_keys_never_collide(db, tmp_path, a, b):
    (issuer_a, pid_a), (issuer_b, pid_b) = a, b
    assert keys.patient_key_of(issuer_a, pid_a, "1.2.3") != keys.patient_key_of(issuer_b, pid_b, "1.2.3")
    ha = dataclasses.replace(header(tmp_path / "a.dcm", "1.1", pid=pid_a), issuer_of_patient_id=issuer_a)
    hb = dataclasses.replace(header(tmp_path / "b.dcm", "1.2", pid=pid_b), issuer_of_patient_id=issuer_b)
    writes.write_batch(db, [ha, hb], [])
    assert reads.counts(db)["patients"] == 2
    assert reads.counts(db)["exams"] == 2


def test_exam_images_carry_the_phi_check_columns(db, tmp_path):
    h = dataclasses.replace(header(tmp_path / "a.dcm", "1.1"), burned_in_annotation="YES")
    writes.write_batch(db, [h], [])
    (row,) = reads.exam_images(db, keys.exam_key(h))
    assert row["burned_in_annotation"] == "YES"
    assert row["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.1.2"


def _old_cache(path):
    """A cache at the schema before escaped keys (m001 + m002)."""
    from mamview.core.cache.migrations import migrations

    old = connect(path, migrate=False)
    migrations.apply(old, stop_before="m003_escaped_keys")
    return old


def _insert_old_image(db, key, pid, issuer, uid, path, date="2024-01-05"):
    exam = f"{key}|{date}"
    db.execute("INSERT OR IGNORE INTO patients (patient_key, patient_id, issuer) VALUES (?, ?, ?)",
               [key, pid, issuer])
    db.execute("INSERT OR IGNORE INTO exams (exam_key, patient_key, exam_date) VALUES (?, ?, ?)",
               [exam, key, date])
    db.execute(
        "INSERT INTO images (sop_instance_uid, exam_key, patient_key, path, size, mtime_ns, study_uid, "
        "series_uid, sop_class_uid, transfer_syntax_uid, modality, laterality, laterality_source, view, "
        "view_source, is_standard, rows, columns, bits_stored, photometric) VALUES "
        "(?, ?, ?, ?, 1, 1, '1.2', '1.2.1', '1.2.840.10008.5.1.4.1.1.1.2', '1.2.840.10008.1.2.1', 'MG', "
        "'R', 'tag', 'CC', 'tag', 1, 10, 8, 12, 'MONOCHROME2')",
        [uid, exam, key, path],
    )
    db.execute("INSERT INTO files (path, size, mtime_ns, outcome, sop_instance_uid) VALUES (?, 1, 1, 'image', ?)",
               [path, uid])
    return exam


def test_migration_rewrites_old_keys_and_their_scores(tmp_path):
    old = _old_cache(tmp_path / "cache.sqlite")
    with old.conn:
        bar_exam = _insert_old_image(old, "A|B|C", "B|C", "A", "1.1", "/x/a.dcm")
        plain_exam = _insert_old_image(old, "|P1", "P1", "", "1.2", "/x/b.dcm")
        for exam, n in ((bar_exam, 1), (plain_exam, 2)):
            old.execute(
                "INSERT INTO scores (cache_key, exam_key, model_id, model_version, weights_sha256, "
                "preprocessing_version, input_uids, status, computed_at) "
                "VALUES (?, ?, 'm', '1', 'h', '1', '[]', 'ok', 'now')", [f"k{n}", exam])
    old.close()

    db = connect(tmp_path / "cache.sqlite")
    keys = dict(db.execute("SELECT patient_id, patient_key FROM patients").fetchall())
    assert keys == {"B|C": "A|B%7CC", "P1": "|P1"}
    assert sorted(r[0] for r in db.execute("SELECT exam_key FROM scores")) == [
        "A|B%7CC|2024-01-05", "|P1|2024-01-05"]
    assert db.execute("SELECT exam_key, patient_key FROM images WHERE path = '/x/a.dcm'").fetchone() == (
        "A|B%7CC|2024-01-05", "A|B%7CC")
    # the rewritten woman's files are read again (a merged second woman is split then)
    assert [r[0] for r in db.execute("SELECT path FROM files")] == ["/x/b.dcm"]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


def test_migration_drops_images_indexed_with_invalid_uids(tmp_path):
    old = _old_cache(tmp_path / "cache.sqlite")
    with old.conn:
        _insert_old_image(old, "|P1", "P1", "", "../../../../x", "/x/evil.dcm")
        _insert_old_image(old, "|P2", "P2", "", "1.2.3", "/x/good.dcm")
    old.close()
    db = connect(tmp_path / "cache.sqlite")
    assert [r[0] for r in db.execute("SELECT sop_instance_uid FROM images")] == ["1.2.3"]
    assert [r[0] for r in db.execute("SELECT path FROM files")] == ["/x/good.dcm"]
    assert [r[0] for r in db.execute("SELECT patient_key FROM patients")] == ["|P2"]
    assert db.execute("SELECT burned_in_annotation FROM images").fetchone() == ("",)
    db.close()


def test_walk_problems_are_replaced_by_the_next_look(db, tmp_path):
    root = str(tmp_path / "media")
    writes.write_batch(db, [], [Problem(root + "/bad.dcm", "not DICOM")], {root + "/bad.dcm": (1, 1)})
    writes.replace_walk_problems(db, [root], [Problem(root + "/locked", "unreadable folder")])
    writes.replace_walk_problems(db, [str(tmp_path / "other")], [Problem(str(tmp_path / "other"), "not found")])
    assert {p["path"] for p in reads.list_problems(db)} == {
        root + "/bad.dcm", root + "/locked", str(tmp_path / "other")}
    writes.replace_walk_problems(db, [root], [])  # the folder can be read now
    assert {p["path"] for p in reads.list_problems(db)} == {root + "/bad.dcm", str(tmp_path / "other")}


def test_an_undecodable_view_is_named_as_such_not_as_missing():
    def row(label, decode_error=""):
        return {"label": label, "is_standard": 1, "missing": 0, "decode_error": decode_error,
                "presentation_intent": "FOR PRESENTATION"}

    images = [row("RCC", "PanicException: index out of bounds"), row("LCC"), row("RMLO")]
    ok, reason = reads.exam_status(images)
    assert not ok
    assert reason == "missing LMLO; RCC cannot be decoded"
