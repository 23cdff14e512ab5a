"""The bundled demo model: loads through the registry, says what it is, and tracks the synthetic
ground truth on women it never saw (a cohort seed different from the training seed)."""

import csv
import json

import numpy as np
import pytest
import torch

from mamview.core.cache import reads
from mamview.core.cache.db import connect
from mamview.core.demo_data import generate_cohort
from mamview.core.services.inference import ExamScored, InferenceService
from mamview.core.ingest import run_import
from mamview.core.models import registry
from mamview.core.models.mirai import MiraiConfig, demo_preprocessing_version
from tools.train_demo import DEMO_CONFIG, cached_exams, exam_cache_key, spearman
from mamview.core.paths import Library, resources_dir
from tests.core.test_inference import drain
from tests.core.test_ingest import consume

DEMO_DIR = resources_dir() / "demo_model"
TEST_SEED = 4242  # the bundled model was trained on seed 0

pytestmark = pytest.mark.skipif(not (DEMO_DIR / "weights.pt").is_file(),
                                reason="demo model not bundled")


def test_bundle_is_small_and_records_its_training():
    size = sum(p.stat().st_size for p in DEMO_DIR.iterdir())
    assert size < 5 * 2 ** 20
    prov = json.loads((DEMO_DIR / "config.json").read_text())["provenance"]
    assert prov["seed"] != TEST_SEED
    held_out = prov["metrics"]["test"]
    # issue 3's target; the bundled model recorded rho 0.97, MAE 0.11 pp on its held-out women
    assert held_out["spearman_5y"] >= 0.8 and held_out["monotone_over_years"]
    assert held_out["mae_5y_pp"] < 0.3


def test_demo_model_loads_and_is_labelled(tmp_path):
    entry = registry.resolve(Library(tmp_path / "lib"), "demo")
    assert entry.available and not entry.clinically_validated
    model = registry.load(entry, "cpu")
    ident = model.identity
    assert ident.model_id == "demo" and ident.clinically_validated is False
    assert ident.label == registry.DEMO_LABEL == entry.label
    assert ident.preprocessing_version == demo_preprocessing_version(model.config)
    assert model.decode_min_height == 2 * model.config.input_height


@pytest.fixture(scope="module")
def scored_cohort(tmp_path_factory):
    """8 unseen women, imported and scored once through the inference service."""
    tmp = tmp_path_factory.mktemp("demo")
    cohort = tmp / "cohort"
    generate_cohort(cohort, n_patients=8, size="small", seed=TEST_SEED)
    lib = Library(tmp / "lib")
    consume(run_import(lib, sorted(p for p in cohort.iterdir() if p.is_dir()),
                       make_previews=False))
    db = connect(lib.database)
    exams = reads.list_exams(db)
    db.close()
    entry = registry.resolve(lib, "demo")
    svc = InferenceService(lib.database, lambda dev: registry.load(entry, dev), device="cpu",
                           batch_size=8)
    keys = [e["exam_key"] for e in exams]
    try:
        first = [e for e in drain(svc, svc.submit(keys), timeout=120)
                 if isinstance(e, ExamScored)]
        again = [e for e in drain(svc, svc.submit(keys), timeout=120)
                 if isinstance(e, ExamScored)]
    finally:
        svc.shutdown()
    with open(cohort / "ground_truth.csv", newline="") as f:
        truth = {r["study_instance_uid"]: float(r["risk_5y_percent"]) / 100 for r in csv.DictReader(f)}
    by_exam = {e["exam_key"]: next(truth[u] for u in e["study_uids"] if u in truth)
               for e in exams}
    return first, again, by_exam, sum(e["complete"] for e in exams)


def test_scores_follow_the_synthetic_truth(scored_cohort):
    first, _, truth, complete = scored_cohort
    assert len(first) == complete and complete >= 20 and not any(e.cached for e in first)
    risks = np.array([e.risk for e in first])
    assert risks.shape[1] == 5
    assert np.all((risks >= 0) & (risks <= 1))
    assert np.all(np.diff(risks, axis=1) >= 0)  # cumulative risk never falls over the years
    pred = risks[:, -1]
    true = np.array([truth[e.exam_key] for e in first])
    # Measured on this cohort (seed 4242, 35 exams): rho 0.96, MAE 0.09 pp. Other 8-woman seeds
    # (1-4) give rho 0.81-0.98, MAE 0.09-0.13 pp; the bounds are for this fixed, deterministic
    # cohort and leave room for small numeric drift, not for a model that stops ordering women.
    assert spearman(pred, true) > 0.85
    assert np.mean(np.abs(pred - true)) < 0.003  # under 0.3 percentage point on average


def test_second_run_is_fully_cached(scored_cohort):
    first, again, _, _ = scored_cohort
    assert len(again) == len(first) and all(e.cached for e in again)
    assert {e.exam_key: e.risk for e in again} == {e.exam_key: e.risk for e in first}


# ---------------------------------------------------------------- the trainer's exam cache


def test_exam_cache_key_names_every_input():
    base = MiraiConfig(**DEMO_CONFIG)
    key = exam_cache_key(160, 0, base)
    assert key == exam_cache_key(160, 0, MiraiConfig(**DEMO_CONFIG))
    other_size = MiraiConfig(**dict(DEMO_CONFIG, input_height=64, input_width=52))
    for changed in (exam_cache_key(161, 0, base), exam_cache_key(160, 1, base),
                    exam_cache_key(160, 0, other_size)):
        assert changed != key
    assert len(key["generator_sha256"]) == 64  # the generator's code is part of the key


@pytest.mark.slow
def test_exam_cache_is_reused_only_when_it_matches(tmp_path):
    """A one-woman cohort: built and cached once, then read back identically; a damaged or
    mismatched cache is rebuilt instead of trusted."""
    config = MiraiConfig(**dict(DEMO_CONFIG, input_height=64, input_width=52))
    cache = tmp_path / "exams.pt"
    logs = []
    built, skipped = cached_exams(cache, 1, 3, config, tmp_path, log=logs.append)
    assert built and cache.is_file()
    assert not any("from" in m and str(cache) in m for m in logs)
    assert all(e.image.shape == (4, 1, 64, 52) and 0 < e.risk5 < 0.2 for e in built)

    logs.clear()
    again, skipped_again = cached_exams(cache, 1, 3, config, tmp_path, log=logs.append)
    assert logs == [f"loaded {len(built)} preprocessed exams from {cache}"]
    assert skipped_again == skipped and len(again) == len(built)
    for a, b in zip(again, built):
        assert (a.patient_id, a.exam_key, a.risk5) == (b.patient_id, b.exam_key, b.risk5)
        assert torch.equal(a.image, b.image) and torch.equal(a.view_seq, b.view_seq)

    logs.clear()  # another seed: the cached exams are not its exams
    cached_exams(cache, 1, 4, config, tmp_path, log=logs.append)
    assert "made for other inputs" in logs[0]

    cache.write_bytes(b"not a torch file")
    logs.clear()
    rebuilt, _ = cached_exams(cache, 1, 4, config, tmp_path, log=logs.append)
    assert "unreadable" in logs[0] and rebuilt
