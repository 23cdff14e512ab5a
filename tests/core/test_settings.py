"""Settings files: an old file with keys that are gone still loads, and saving drops them."""

import json

from mamview.core import settings


def test_an_old_file_with_preview_height_loads_and_keeps_its_other_values(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"schema_version": 1, "model": "demo", "device": "cpu",
                                "thresholds_percent": [1.5, 3.0], "preview_height": 2048}))
    s = settings.load(path)
    assert (s.model, s.device, s.thresholds_percent) == ("demo", "cpu", [1.5, 3.0])
    assert not hasattr(s, "preview_height")
    settings.save(s, path)
    assert "preview_height" not in json.loads(path.read_text())
    assert settings.load(path) == s
