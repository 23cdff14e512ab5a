"""points_for_patient on a real cache, and `mamview trajectory` end to end."""

import csv
import datetime as dt
import io
import json

import pytest

from mamview import cli
from mamview.core.analytics.trajectory import analyze, points_for_patient
from mamview.core.cache.db import connect
from mamview.core.models.registry import DEMO_LABEL
from tests.analytics.conftest import save_score


def test_points_for_patient_reads_ok_scores_only(scored_library):
    lib, keys = scored_library
    db = connect(lib.database)
    pts = points_for_patient(db, "|P7")
    db.close()
    assert [p.exam_date for p in pts] == [dt.date(2019, 3, 1), dt.date(2020, 3, 10),
                                          dt.date(2023, 3, 15)]
    assert [p.risk_percent for p in pts] == pytest.approx([2.0, 2.2, 3.5])
    assert pts[0].yearly_percent == pytest.approx((0.4, 0.8, 1.2, 1.6, 2.0))
    assert [p.vendor for p in pts] == ["ACME", "OTHER", "ACME"]
    assert {p.model_id for p in pts} == {"demo"}
    assert pts[2].exam_key == keys["2023-03-15"]
    rep = analyze(pts)
    assert rep.gaps and rep.gaps[0].start == dt.date(2020, 3, 10)  # the unscored exam is a gap
    assert any("vendor changed" in n for n in rep.notes)


def test_points_for_patient_never_mixes_models(scored_library):
    lib, keys = scored_library
    db = connect(lib.database)
    save_score(db, keys["2023-03-15"], [0.01] * 5, model_id="mirai", when="2030-01-01T00:00:00")
    # demo scored 3 exams, mirai 1: the default is demo
    assert {p.model_id for p in points_for_patient(db, "|P7")} == {"demo"}
    only = points_for_patient(db, "|P7", "mirai")
    assert [(p.model_id, p.risk_percent) for p in only] == [("mirai", 1.0)]
    assert points_for_patient(db, "|nobody") == []
    db.close()


def test_cli_trajectory_text_json_csv(scored_library, capsys):
    lib, _ = scored_library
    home = str(lib.home)
    assert cli.main(["--home", home, "trajectory", "P7"]) == 0
    text = capsys.readouterr().out
    assert "Patient P7" in text and DEMO_LABEL in text and "3.5%" in text
    assert "research use, not validated" in text

    assert cli.main(["--home", home, "trajectory", "P7", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["patient_id"] == "P7" and d["model_labels"] == {"demo": DEMO_LABEL}
    assert d["change_since_prior_pp"] == pytest.approx(1.3)
    assert d["crossings"]["3"] == "2023-03-15"

    assert cli.main(["--home", home, "trajectory", "--all", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["exam_date"] for r in rows] == ["2019-03-01", "2020-03-10", "2023-03-15"]
    assert rows[0]["change_since_prior_pp"] == ""  # nothing to compare with yet
    assert float(rows[1]["change_since_prior_pp"]) == pytest.approx(0.2)
    assert float(rows[2]["risk_y5_percent"]) == pytest.approx(3.5)
    assert float(rows[2]["slope_ols_pp_per_year"]) > 0
    assert all(r["model_label"] == DEMO_LABEL for r in rows)


def test_cli_trajectory_bad_input(scored_library, capsys):
    lib, _ = scored_library
    assert cli.main(["--home", str(lib.home), "trajectory", "NOBODY"]) == 2
    assert "no patient with ID" in capsys.readouterr().err
    assert cli.main(["--home", str(lib.home), "trajectory"]) == 2


def test_cli_trajectory_uses_the_users_thresholds(scored_library, capsys):
    from mamview.core import settings

    lib, _ = scored_library
    settings.save(settings.Settings(thresholds_percent=[2.1]), lib.settings_file)
    assert cli.main(["--home", str(lib.home), "trajectory", "P7", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["crossings"] == {"2.1": "2020-03-10"}
