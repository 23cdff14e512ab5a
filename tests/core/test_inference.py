"""The inference service on a real cache with a small (random-weight) Mirai-architecture model."""

import queue
import re
import threading
import warnings

import numpy as np
import pytest
import torch

from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.services.inference import (
    ExamScored,
    ExamUnscorable,
    GenerationDone,
    InferenceService,
    ScoreFailed,
    ServiceError,
)
from mamview.core.ingest import run_import
from mamview.core.models.base import ModelIdentity
from mamview.core.models.mirai import MiraiCalibrator, MiraiConfig, MiraiNet, MiraiRiskModel
from mamview.core.paths import Library
from tests.attack import hostile
from tests.core.test_ingest import consume, write_exam
from tests.factories import write_mammogram


SHAPE = (320, 256)


def tiny_model(device, version="t1"):
    torch.manual_seed(0)
    cfg = MiraiConfig(trunk_widths=(4, 8, 8, 8), input_height=64, input_width=52,
                      transformer_hidden_dim=16, num_heads=2)
    net = MiraiNet(cfg)
    cal = MiraiCalibrator.from_alpha_beta([(0.0, 1.0)] * 5, calibrator_id="identity")
    ident = ModelIdentity("tiny", "tiny test model", version, "w" + version, "identity",
                          cal.sha256, "mirai-pydicom-minmax/1", False, "test model")
    return MiraiRiskModel(net, cal, ident, device)


def drain(svc, until_gen, timeout=60):
    events = []
    while True:
        ev = svc.events.get(timeout=timeout)
        events.append(ev)
        if isinstance(ev, ServiceError):
            raise AssertionError(ev.message)
        if isinstance(ev, GenerationDone) and ev.generation == until_gen:
            return events


@pytest.fixture
def library(tmp_path):
    lib = Library(tmp_path / "lib")
    # images of at least MIN_SIDE pixels a side: smaller ones are not plausibly mammograms
    write_exam(tmp_path / "in" / "a", pid="A", date="20230101", shape=SHAPE)
    write_exam(tmp_path / "in" / "b", pid="A", date="20240101", shape=SHAPE)
    files = write_exam(tmp_path / "in" / "c", pid="B", date="20240101", shape=SHAPE)
    files[3].unlink()  # B's exam lacks LMLO
    consume(run_import(lib, [tmp_path / "in"], make_previews=False))
    return lib


def exam_keys(lib):
    db = connect(lib.database)
    keys = [r[0] for r in db.execute("SELECT exam_key FROM exams ORDER BY exam_key")]
    db.close()
    return keys


def test_scores_complete_exams_once_and_explains_the_rest(library):
    keys = exam_keys(library)
    svc = InferenceService(library.database, tiny_model, device="cpu", batch_size=2)
    try:
        gen = svc.submit(keys)
        events = drain(svc, gen)
        scored = [e for e in events if isinstance(e, ExamScored)]
        unscorable = [e for e in events if isinstance(e, ExamUnscorable)]
        assert len(scored) == 2 and not any(e.cached for e in scored)
        assert [u.reason for u in unscorable] == ["missing LMLO"]
        for e in scored:
            assert len(e.risk) == 5 and all(0 <= r <= 1 for r in e.risk)
        # a second run computes nothing: every result comes from the cache
        gen2 = svc.submit(keys)
        again = [e for e in drain(svc, gen2) if isinstance(e, ExamScored)]
        assert len(again) == 2 and all(e.cached for e in again)
        assert {e.risk for e in again} == {e.risk for e in scored}
    finally:
        svc.shutdown()
    db = connect(library.database)
    rows = list(db.query("SELECT * FROM scores WHERE status = 'ok'"))
    assert len(rows) == 2
    assert all(r["model_id"] == "tiny" and r["device"].startswith("CPU") for r in rows)
    assert all(len(reads._decode(r)["input_uids"]) == 4 for r in rows)


def test_changed_model_recomputes(library):
    keys = exam_keys(library)
    for version, expect_cached in (("v1", False), ("v2", False), ("v2", True)):
        svc = InferenceService(library.database, lambda d, v=version: tiny_model(d, v),
                               device="cpu")
        try:
            gen = svc.submit(keys)
            scored = [e for e in drain(svc, gen) if isinstance(e, ExamScored)]
            assert scored and all(e.cached is expect_cached for e in scored)
        finally:
            svc.shutdown()


def test_cancelled_generation_is_dropped(library):
    keys = exam_keys(library)
    events: list = []
    svc = InferenceService(library.database, tiny_model, device="cpu", batch_size=1,
                           on_event=events.append)
    first = svc.submit(keys * 5)  # 15 exams
    svc.cancel(first)
    mark = len(events)
    assert svc.idle()
    second = svc.submit(keys[:1])
    try:
        while not any(isinstance(e, GenerationDone) and e.generation == second for e in events):
            assert svc.alive() and not any(isinstance(e, ServiceError) for e in events)
            threading.Event().wait(0.05)
        from_first = [e for e in events if isinstance(e, (ExamScored, ExamUnscorable))
                      and e.generation == first]
        # at most the one exam the worker had already taken when the user moved on
        assert len(from_first) <= 1
        # and nothing at all once cancel() has returned: a batch in progress is saved, unsaid
        assert not [e for e in events[mark:] if getattr(e, "generation", None) == first]
        assert any(isinstance(e, ExamScored) and e.generation == second for e in events)
        assert svc.idle()
    finally:
        svc.shutdown()


def test_generation_ids_never_repeat_across_services(library):
    """A new service (after a model or device change) never hands out an id an old one used:
    its late results could otherwise pass for the new request's."""
    keys = exam_keys(library)
    seen: dict[int, list] = {}
    for version in ("v1", "v2"):
        svc = InferenceService(library.database, lambda d, v=version: tiny_model(d, v),
                               device="cpu")
        try:
            gens = [svc.submit([]), svc.submit(keys[:1]), svc.submit(keys[1:2])]
            assert not set(gens) & set(seen)
            events = drain(svc, gens[-1])  # the last of the three, done in order
            for gen in gens:
                seen[gen] = [e for e in events if getattr(e, "generation", None) == gen]
            for gen, asked in zip(gens, ([], keys[:1], keys[1:2])):
                assert [e.exam_key for e in seen[gen] if isinstance(e, ExamScored)] == asked
        finally:
            svc.shutdown()
    assert len(seen) == 6
    for gen, events in seen.items():  # each request got its own events, to its GenerationDone
        assert events and events[-1] == GenerationDone(gen)


def test_empty_requests_and_requests_after_shutdown(library):
    svc = InferenceService(library.database, tiny_model, device="cpu")
    gen = svc.submit([])
    assert svc.events.get(timeout=5) == GenerationDone(gen)
    svc.shutdown()
    assert svc.submit(exam_keys(library)) != gen
    assert svc.idle()  # nothing was queued on a stopped service: no one waits for it
    with pytest.raises(queue.Empty):
        svc.events.get(timeout=0.2)


def test_model_that_fails_to_load_is_reported(library):
    def broken(device):
        raise RuntimeError("weights missing")

    svc = InferenceService(library.database, broken, device="cpu")
    svc.submit(exam_keys(library))
    ev = svc.events.get(timeout=30)
    assert isinstance(ev, ServiceError) and "weights missing" in ev.message
    svc.shutdown()
    with pytest.raises(queue.Empty):
        svc.events.get(timeout=0.2)


def test_later_requests_to_a_service_that_cannot_score_are_told_so(library):
    def broken(device):
        raise RuntimeError("weights missing")

    svc = InferenceService(library.database, broken, device="cpu")
    try:
        svc.submit(exam_keys(library))
        assert "weights missing" in svc.events.get(timeout=30).message
        svc.submit(exam_keys(library))  # e.g. the user asks again: told at once, not left waiting
        again = svc.events.get(timeout=5)
        assert isinstance(again, ServiceError) and "weights missing" in again.message
        assert svc.idle() and not svc.alive()
    finally:
        svc.shutdown()


# --- untrusted images -----------------------------------------------------------------------------


def _view_row(path):
    return {"path": str(path), "laterality": "R", "view": "CC", "label": "RCC"}


@pytest.mark.parametrize(("kw", "why"), [
    ({"shape": (1, 1), "pixels": None}, "1×1 pixels, too small for a mammogram"),
    ({"shape": (256, 208)}, "256×208 pixels, too small"),
    ({"extra": {"RescaleSlope": "NaN"}}, "RescaleSlope or RescaleIntercept is not a finite number"),
    ({"extra": {"RescaleSlope": "1e38"}}, "non-finite values after the modality LUT"),
    ({"pixels": np.full(SHAPE, 777, np.uint16)}, "the image is constant (every pixel 777)"),
])
def test_implausible_images_are_unscorable_with_the_reason(tmp_path, kw, why):
    from mamview.core.services.inference import Unscorable, load_view

    kw = {"shape": SHAPE, **kw}
    if kw.get("pixels", 0) is None:
        kw["pixels"] = np.full(kw.pop("shape"), 100, np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: "Invalid value for VR DS: 'NaN'"
        p = write_mammogram(tmp_path / "x.dcm", **kw)
    with pytest.raises(Unscorable, match=re.escape(why)) as info:
        load_view(_view_row(p), None)
    assert str(info.value).startswith("RCC: ")


def test_a_plausible_image_loads(tmp_path):
    from mamview.core.services.inference import load_view

    view = load_view(_view_row(write_mammogram(tmp_path / "x.dcm", shape=SHAPE)), None)
    assert view.array.shape == SHAPE and np.isfinite(view.array).all()


def _replace_with_panicking_rle(library, exam_key):
    db = connect(library.database)
    path = db.execute("SELECT path FROM images WHERE exam_key = ? ORDER BY path LIMIT 1",
                      [exam_key]).fetchone()[0]
    db.close()
    hostile.panicking_rle(path, shape=SHAPE)  # same path: the cache still lists it


def test_a_panicking_decoder_makes_the_exam_unscorable_and_the_next_exam_scores(library):
    first, second, _ = exam_keys(library)
    _replace_with_panicking_rle(library, first)
    svc = InferenceService(library.database, tiny_model, device="cpu", batch_size=1)
    try:
        events = drain(svc, svc.submit([first, second]))
    finally:
        svc.shutdown()
    unscorable = {e.exam_key: e.reason for e in events if isinstance(e, ExamUnscorable)}
    assert "PanicException" in unscorable[first] and "\n" not in unscorable[first]
    assert [e.exam_key for e in events if isinstance(e, ExamScored)] == [second]
    assert svc.alive() is False  # shut down on purpose, and that is no error


class _DiesOnce:
    """A real model whose preprocessing raises SystemExit once (a worker-killing failure)."""

    def __init__(self, model):
        self._model, self.died = model, False

    def __getattr__(self, name):
        return getattr(self._model, name)

    def preprocess(self, views):
        if not self.died:
            self.died = True
            raise SystemExit("boom")
        return self._model.preprocess(views)


def test_a_worker_that_dies_is_reported_and_replaced(library):
    keys = exam_keys(library)
    svc = InferenceService(library.database, lambda d: _DiesOnce(tiny_model(d)), device="cpu")
    try:
        svc.submit(keys)
        ev = svc.next_event(timeout=60)
        while not isinstance(ev, ServiceError):
            ev = svc.next_event(timeout=60)
        assert "worker stopped" in ev.message and "SystemExit" in ev.message
        assert not svc.alive()
        # a caller waiting on the dead worker gets an error, not a hang
        assert isinstance(svc.next_event(timeout=5), ServiceError)
        gen = svc.submit(keys)  # a new worker, the same loaded model
        scored = [e for e in drain(svc, gen) if isinstance(e, ExamScored)]
        assert len(scored) == 2
    finally:
        svc.shutdown()


class _AlwaysDies(_DiesOnce):
    def preprocess(self, views):
        raise SystemExit("boom")


def test_a_worker_that_keeps_dying_is_given_up_and_later_requests_are_told(library):
    from mamview.core.services.inference import MAX_RESTARTS

    keys = exam_keys(library)
    svc = InferenceService(library.database, lambda d: _AlwaysDies(tiny_model(d)), device="cpu")
    try:
        for _ in range(1 + MAX_RESTARTS):  # the first worker and each replacement die
            gen = svc.submit(keys)
            events = [svc.next_event(timeout=60)]
            while not isinstance(events[-1], ServiceError):
                events.append(svc.next_event(timeout=60))
            assert "SystemExit" in events[-1].message and not svc.alive()
            # the exams it was scoring are answered before it goes, and the request ends
            failed = [e for e in events if isinstance(e, ScoreFailed) and e.generation == gen]
            assert len(failed) == 3 and all("SystemExit: boom" in e.message for e in failed)
            assert GenerationDone(gen) in events
        gen = svc.submit(keys)  # no more replacements: this one is told, not left queued
        ev = svc.next_event(timeout=5)
        assert isinstance(ev, ServiceError) and "SystemExit" in ev.message
        assert svc.idle() and not svc.alive()
        assert gen not in {getattr(e, "generation", None) for e in list(svc.events.queue)}
    finally:
        svc.shutdown()


def test_a_dead_inference_process_is_reported_to_later_callers(library):
    from mamview.core.services.inference_process import InferenceProcess

    events: queue.Queue = queue.Queue()
    proc = InferenceProcess(library.database, library.home, "no-such-model", device="cpu",
                            on_event=events.put).start()
    proc._proc.kill()  # our own child, as a crashing decoder would end it
    ev = events.get(timeout=30)
    assert isinstance(ev, ServiceError) and "inference process stopped" in ev.message
    proc.submit(exam_keys(library))  # no waiting forever on a dead child
    assert isinstance(events.get(timeout=5), ServiceError)
    assert not proc.alive()
    proc.shutdown()


def test_reduced_precision_is_for_cuda_only_and_timings_add_up(library):
    keys = exam_keys(library)
    with pytest.raises(ValueError, match="precision"):
        InferenceService(library.database, tiny_model, precision="fp8")
    svc = InferenceService(library.database, tiny_model, device="cpu", precision="bf16")
    try:
        scored = [e for e in drain(svc, svc.submit(keys)) if isinstance(e, ExamScored)]
        assert svc.model.autocast_dtype is None and "autocast" not in svc.device_label
        spent = svc.timings()
    finally:
        svc.shutdown()
    assert len(scored) == 2 and not any(e.cached for e in scored)
    assert spent["exams"] == 2 and spent["decode"] > 0 and spent["model"] > 0
    assert spent["write"] > 0 and spent["plan"] > 0
    # on the CPU it was an fp32 run: an fp32 service finds its scores current
    svc = InferenceService(library.database, tiny_model, device="cpu")
    try:
        again = [e for e in drain(svc, svc.submit(keys)) if isinstance(e, ExamScored)]
    finally:
        svc.shutdown()
    assert [e.risk for e in again] == [e.risk for e in scored] and all(e.cached for e in again)
