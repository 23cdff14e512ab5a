"""Score rows as core.inference stores them, with today's cache key, for tests that need
scores without running a model (the key is what makes a stored score *current*)."""

from __future__ import annotations

from mamview.core.cache import keys, reads, writes
from mamview.core.domain import ModelRef
from mamview.core.services.inference import exam_inputs, input_signature
from mamview.core.models.registry import read_identity
from mamview.core.paths import resources_dir


def demo_ref() -> ModelRef:
    """The bundled demo model's identity, as its config.json records it."""
    ident = read_identity(resources_dir() / "demo_model" / "config.json")
    return ModelRef("demo", version=ident["version"], weights_sha256=ident["weights_sha256"],
                    calibrator_id=ident["calibrator_id"],
                    calibrator_sha256=ident["calibrator_sha256"],
                    preprocessing_version=ident["preprocessing_version"], installed=True)


def made_up_ref(model_id: str) -> ModelRef:
    """An identity for a model id this installation does not have."""
    return ModelRef(model_id, version="1", weights_sha256="ab" * 32, calibrator_id="none",
                    preprocessing_version="p1")


def save_current_score(db, exam_key: str, risk_fractions, model_id: str = "demo",
                       status: str = "ok", when: str | None = None, reason: str = "missing LMLO"
                       ) -> None:
    """Store a score of `model_id` (the installed demo identity for 'demo') whose key matches
    the exam's files today."""
    ref = demo_ref() if model_id == "demo" else made_up_ref(model_id)
    images = reads.exam_images(db, exam_key)
    uids = [im["sop_instance_uid"] for im in images]
    if status == "ok":
        inputs = exam_inputs(db, exam_key)
        key = keys.cache_key(ref, input_signature(inputs))
        uids = [r["sop_instance_uid"] for r in inputs]
    else:
        key = keys.unscorable_key(
            ref, [(im["sop_instance_uid"], im["size"], im["mtime_ns"]) for im in images])
    row = {
        "cache_key": key, "exam_key": exam_key, "model_id": model_id,
        "model_version": ref.version, "weights_sha256": ref.weights_sha256,
        "calibrator": f"{ref.calibrator_id}:{ref.calibrator_sha256}",
        "preprocessing_version": ref.preprocessing_version, "device": "cpu",
        "input_uids": uids, "status": status, "reason": "" if status == "ok" else reason,
        "risk": list(risk_fractions),
    }
    if when:
        row["computed_at"] = when
    writes.save_scores(db, [row])
