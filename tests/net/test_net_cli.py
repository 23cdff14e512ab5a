"""`mamview listen` as a headless process (SIGTERM stops it cleanly), `mamview bench net`,
and the PACS address parsing the commands rely on."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys

import pytest

from mamview.cli import main
from mamview.core import settings as settings_mod
from mamview.bench import dcmtk
from mamview.core.net.nodes import PacsNode, nodes_from_settings, resolve_node
from mamview.core.net.scp import LOG_FILE_NAME
from tests.net.conftest import LOOPBACK, cohort_folders, free_port, needs_dcmtk, run, wait_for_text

pytestmark = pytest.mark.timeout(300)  # a hung peer fails the test, never CI


@needs_dcmtk
@pytest.mark.slow
def test_listen_receives_headless_and_stops_on_sigterm(home, tmp_path, procs, cohort,
                                                       scu_config, capsys):
    port = free_port()
    err = tmp_path / "listen.err"
    proc = procs.start([sys.executable, "-m", "mamview", "--home", str(home), "listen",
                        "--port", str(port), "--ae-title", "NODE1", "--host", LOOPBACK,
                        "--allow-ae", "MODALITY", "--allow-ae", "MAMVIEW", "--no-score"],
                       stdout=subprocess.DEVNULL, stderr=open(err, "w"),
                       stdin=subprocess.DEVNULL)
    wait_for_text(err, "listening on", proc)
    assert main(["--home", str(tmp_path / "other"), "echo", f"NODE1@{LOOPBACK}:{port}"]) == 0
    assert "answered C-ECHO" in capsys.readouterr().out
    folder = cohort_folders(cohort)[0]
    n = len(list(folder.rglob("*.dcm")))
    r = run(dcmtk.storescu_command(LOOPBACK, port, "NODE1", [folder], scu_config))
    assert r.returncode == 0, r.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    text = err.read_text()
    assert f"Received {n} instances" in text, text
    conn = sqlite3.connect(home / "cache.sqlite")
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == n
    conn.close()
    log = (home / "logs" / LOG_FILE_NAME).read_text()
    assert "listening as NODE1" in log and "stopped" in log


def test_listen_on_a_port_in_use_says_so(home, capsys):
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["--home", str(home), "listen", "--port", str(port), "--host", LOOPBACK,
                     "--no-score", "--quiet", "--allow-any"]) == 2
    assert "cannot listen" in capsys.readouterr().err


@needs_dcmtk
@pytest.mark.slow
def test_bench_net_reports_instances_per_second(home, tmp_path, capsys):
    out = tmp_path / "net.json"
    assert main(["--home", str(home), "bench", "net", "--patients", "1", "--no-previews",
                 "--json", str(out)]) == 0
    fig = json.loads(out.read_text())
    assert fig["benchmark"] == "net" and fig["cohort"]["instances"] > 0
    assert fig["received_instances_per_s"] > 0
    assert fig["received_and_indexed_instances_per_s"] > 0
    assert "instances/s" in capsys.readouterr().out
    assert not (home / "cache.sqlite").exists()  # the user's library is not touched


def test_pacs_addresses_parse_and_bad_ones_say_what_is_wrong():
    assert PacsNode.parse("PACS@10.0.0.5:104") == PacsNode("PACS", "10.0.0.5", 104)
    assert PacsNode.parse(" ARCH_1@pacs.example.org:11112 ").host == "pacs.example.org"
    assert PacsNode.parse("A@[::1]:104").host == "::1"
    assert str(PacsNode.parse("PACS@h:1")) == "PACS@h:1"
    for bad, words in [("PACS", "AE@host:port"), ("PACS@host", "no port"),
                       ("@host:104", "AE@host:port"), ("PACS@host:x", "not a number"),
                       ("PACS@host:70000", "between 1 and 65535"),
                       ("A_TITLE_LONGER_THAN_16@h:1", "longer than 16"),
                       ("BAD\\AE@h:1", "backslash")]:
        with pytest.raises(ValueError, match=words):
            PacsNode.parse(bad)


def test_pacs_nodes_come_from_the_settings(home, capsys):
    closed = free_port()
    st = settings_mod.Settings(pacs_nodes=[
        {"name": "main archive", "ae_title": "ARCH", "host": LOOPBACK, "port": closed},
        {"address": "MINI@127.0.0.1:11113"},
        {"ae_title": "BROKEN", "host": "h"},
    ])
    nodes, errors = nodes_from_settings(st)
    assert nodes == [PacsNode("ARCH", LOOPBACK, closed), PacsNode("MINI", "127.0.0.1", 11113)]
    assert len(errors) == 1 and "port" in errors[0]
    assert resolve_node("main archive", st) == PacsNode("ARCH", LOOPBACK, closed)
    assert resolve_node("ARCH", st) == PacsNode("ARCH", LOOPBACK, closed)
    with pytest.raises(ValueError, match="neither"):
        resolve_node("unknown", st)
    # the CLI finds a PACS by its settings name
    settings_mod.save(st, home / "settings.json")
    assert main(["--home", str(home), "echo", "main archive"]) == 2
    assert f"could not reach ARCH@{LOOPBACK}:{closed}" in capsys.readouterr().err
