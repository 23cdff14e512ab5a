"""`mamview check`: the first-run checks from the command line."""

import json

from mamview.cli import main


def test_check_passes_on_a_fresh_library(tmp_path, capsys):
    assert main(["--home", str(tmp_path / "lib"), "check", "--json"]) == 0
    results = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert results["library"]["level"] == "ok"
    assert results.keys() == {"library", "disk", "gpu"}


def test_check_fails_clearly_when_the_library_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the library folder should go")
    assert main(["--home", str(blocker / "lib"), "check"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and str(blocker / "lib") in out
