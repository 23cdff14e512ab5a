"""A model's identity without torch: what the listing reads from config.json is the identity the
loaded model scores with, ModelRef is that identity plus the listing's fields, and the network
module does not import the readers of the files it is loaded from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mamview.core.cache import keys, reads
from mamview.core.domain import ModelRef
from mamview.core.models import registry
from mamview.core.models.identity import ModelIdentity, identity_from_config
from mamview.core.paths import Library, resources_dir

DEMO_DIR = resources_dir() / "demo_model"
needs_demo = pytest.mark.skipif(not (DEMO_DIR / "weights.pt").is_file(),
                                reason="demo model not bundled")


def _modules_after_import(name: str) -> set[str]:
    code = f"import sys, {name}\nprint('\\n'.join(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_identity_and_the_domain_import_without_torch():
    for name in ("mamview.core.models.identity", "mamview.core.domain",
                 "mamview.core.models.errors"):
        assert "torch" not in _modules_after_import(name), name


def test_the_network_module_does_not_import_the_file_readers():
    loaded = _modules_after_import("mamview.core.models.mirai")
    assert "torch" in loaded
    assert not {m for m in loaded if m.startswith("mamview.core.models.official")
                or m == "mamview.core.models.converted"}


@needs_demo
def test_the_listing_identity_is_the_one_the_loaded_model_scores_with(tmp_path):
    from mamview.core.models.converted import load_model

    entry = next(e for e in registry.list_models(Library(tmp_path / "lib"))
                 if e.model_id == "demo")
    ref = reads.model_ref(entry)
    model = load_model(entry.folder)
    assert isinstance(ref, ModelIdentity) and ref.installed and not ref.reason
    assert ref.name == entry.name and ref.label == entry.label and ref.label
    assert ref.clinically_validated is False
    inputs = [("1.2.3", 100, 7), ("1.2.4", 200, 8)]
    assert keys.cache_key(ref, inputs) == keys.cache_key(model.identity, inputs)
    for field in ("model_id", "version", "weights_sha256", "calibrator_id",
                  "calibrator_sha256", "preprocessing_version"):
        assert getattr(ref, field) == getattr(model.identity, field), field


def test_a_hand_edited_identity_reads_tolerantly():
    ident = identity_from_config({"model_id": "mirai", "name": ["not", "text"], "version": 3,
                                  "weights_sha256": "ab" * 32, "clinically_validated": "yes",
                                  "unknown": 1})
    assert ident.model_id == "mirai" and ident.weights_sha256 == "ab" * 32
    assert ident.name == "" and ident.version == "" and ident.label == ""
    assert ident.clinically_validated is False  # only the JSON value true counts
    assert identity_from_config({"clinically_validated": True}).clinically_validated is True


def test_model_ref_keeps_its_constructor_and_adds_only_listing_fields():
    ref = ModelRef("demo", "Demo", "not for clinical use", "v1", "w" * 64, "cal", "c" * 64,
                   "prep-1", False, True, "")
    assert (ref.name, ref.label, ref.version, ref.preprocessing_version, ref.installed) == (
        "Demo", "not for clinical use", "v1", "prep-1", True)
    assert ref.identity() == {"model_id": "demo", "model_version": "v1",
                              "weights_sha256": "w" * 64}
    ident = ModelIdentity("demo", "Demo", "v1", "w" * 64, "cal", "c" * 64, "prep-1", False,
                          "not for clinical use")
    assert ModelRef.from_identity(ident) == ref
    # the listing fields are the only ones ModelRef adds to the identity
    extra = set(ModelRef.__dataclass_fields__) - set(ModelIdentity.__dataclass_fields__)
    assert extra == {"installed", "reason"}
    unknown = ModelRef("gone", reason="not installed")
    assert not unknown.installed and unknown.weights_sha256 == "" and unknown.name == ""


def test_identity_round_trips_through_config_json(tmp_path):
    ident = ModelIdentity("demo", "Demo", "v1", "w" * 64, "cal", "c" * 64, "prep-1", False,
                          "label", extra={"note": "not compared"})
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"identity": ident.as_dict()}))
    back = identity_from_config(registry.read_identity(cfg))
    assert back == ident and ModelIdentity.from_dict(ident.as_dict()) == ident
