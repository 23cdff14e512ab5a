"""The DICOM node under abuse, against a real node on 127.0.0.1: path-like UIDs, a decoder that
panics, trickling peers, an oversize PDU and instance, and the refusal to start open by accident.

Every loop is bounded (a fixed count, a deadline) and every node and socket is closed.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest

from mamview.core.demo_data import write_patient
from mamview.core.net import scp
from mamview.core.net.guard import NodeLimits
from mamview.core.net.nodes import PacsNode, echo
from mamview.core.net.qr import send_files
from mamview.core.paths import library
from tests.attack import hostile
from tests.net.conftest import LOOPBACK, Recorder, free_port, needs_dcmtk, run
from tests.net.conftest import pacs, priors, procs, scu_config  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(180)  # a hung node fails the test, never CI

OTHER_LOOPBACK = "127.0.0.2"  # Linux answers all of 127/8: a second peer address


def tree(root: Path) -> set[str]:
    """Every path under `root` (files and folders), relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def rows(lib, sql, args=()):
    conn = sqlite3.connect(lib.database)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def rss_kib() -> int:
    """This process's resident set (the node runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def node(lib, **kw) -> scp.StorageNode:
    kw.setdefault("allow_any", True)
    kw.setdefault("score", False)
    return scp.StorageNode(lib, port=0, host=LOOPBACK, **kw)


# ---------------------------------------------------------------- header values are not paths


def test_path_like_uids_write_nothing_outside_the_library(home, tmp_path):
    lib = library(home)
    outside = tmp_path / "outside"
    outside.mkdir()
    bad_uids = ["../../../../x", str(outside / "abs"), "1.2.3/../../../y", "1." + "2" * 70,
                "..", ""]
    files = []
    for i, uid in enumerate(bad_uids):
        files.append(hostile.path_like_uid(tmp_path / "send" / f"bad{i}.dcm", uid=uid or "1.2.x"))
    # a valid UID but a PatientID and Study UID that look like paths (the study one is refused)
    good = hostile.write_mammogram(tmp_path / "send" / "good.dcm", patient_id="../../../etc")
    sneaky = hostile.path_like_uid(tmp_path / "send" / "sneaky.dcm", uid="1.2.826.0.1.3",
                                   study_uid="../../study")
    before = tree(tmp_path) - {"home"}
    rec = Recorder()
    with node(lib, on_event=rec) as n:
        sent = send_files(PacsNode("MAMVIEW", LOOPBACK, n.bound_port),
                          [*files, sneaky, good], "ATTACKER")
        assert n.wait_idle(60)
        assert n.indexer_alive
    # only the good one is stored; every bad one that pynetdicom would send (it will not send
    # a UID over 64 characters) got a failure status from the node and a logged line
    assert sent.sent == 1 and len(sent.failed) == len(files) + 1, sent.failed
    failed = rec.of(scp.InstanceFailed)
    too_long = sum(len(u) > 64 for u in bad_uids)
    assert len(failed) == len(files) + 1 - too_long  # the bad ones, and the sneaky study UID
    assert all(f.status != scp.SUCCESS for f in failed)
    assert {f.sop_instance_uid for f in failed} >= {"../../../../x", "1.2.3/../../../y", ".."}
    log = (lib.logs / scp.LOG_FILE_NAME).read_text()
    assert log.count("refused") >= len(failed)
    # nothing was written outside the library; inside the inbox only hashed names
    after = {p for p in tree(tmp_path) if not p.startswith("home")}
    assert after == before
    stored = sorted(lib.inbox.rglob("*.dcm"))
    assert len(stored) == 1
    rel = stored[0].relative_to(lib.inbox).parts
    assert len(rel) == 3 and all(len(Path(part).stem) == 32 for part in rel)
    assert rows(lib, "SELECT count(*) FROM images")[0][0] == 1
    for p in lib.home.rglob("*"):
        assert p.resolve().is_relative_to(lib.home.resolve())


@needs_dcmtk
def test_path_like_uid_sent_by_storescu_is_refused(home, tmp_path, scu_config):
    from mamview.bench import dcmtk

    lib = library(home)
    bad = hostile.path_like_uid(tmp_path / "bad.dcm", uid="../../../../x")
    before = tree(tmp_path)
    with node(lib) as n:
        cmd = dcmtk.storescu_command(LOOPBACK, n.bound_port, n.ae_title, [bad], scu_config)
        r = run(cmd[:1] + ["-v"] + cmd[1:], timeout=60)
        assert n.wait_idle(30)
        assert n.stats.failed == 1 and n.stats.received == 0, r.stderr
    assert {p for p in tree(tmp_path) if not p.startswith("home")} == before
    assert not list(lib.inbox.rglob("*.dcm"))


# ---------------------------------------------------------------- a poisoned instance


def test_a_panicking_rle_instance_does_not_stop_the_exams_after_it(home, tmp_path):
    lib = library(home)
    poison = hostile.panicking_rle(tmp_path / "poison.dcm", patient_id="POISON")
    with pytest.raises(BaseException) as info:  # the premise: the decoder really panics
        pydicom.dcmread(poison).pixel_array
    assert not isinstance(info.value, Exception)
    write_patient(tmp_path / "exam", n_exams=1, size="small", transfer_syntax="explicit")
    exam = sorted((tmp_path / "exam").rglob("*.dcm"))
    assert len(exam) == 4
    rec = Recorder()
    with node(lib, on_event=rec, score=True, device="cpu") as n:
        peer = PacsNode("MAMVIEW", LOOPBACK, n.bound_port)
        assert send_files(peer, [poison], "MODALITY").sent == 1
        assert n.wait_idle(60)  # the poison is indexed (and its preview fails) on its own
        assert n.indexer_alive
        assert send_files(peer, exam, "MODALITY").sent == 4
        assert n.wait_idle(120)
        assert n.indexer_alive
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in exam}
    indexed = {u for (u,) in rows(lib, "SELECT sop_instance_uid FROM images")}
    assert uids <= indexed
    scored = rows(lib, "SELECT model_id, status FROM scores")
    assert scored == [("demo", "ok")], scored
    assert len(rec.of(scp.ExamScored)) == 1
    # the good exam has its previews; the poison is a recorded problem, not a dead thread
    assert rows(lib, "SELECT count(*) FROM previews")[0][0] == 4
    problems = rows(lib, "SELECT path, reason FROM problems")
    assert any(reason == "corrupt pixel data" for _, reason in problems), problems


def test_a_panic_that_reaches_the_node_is_survived_in_the_same_batch(home, tmp_path,
                                                                   monkeypatch):
    """Belt and braces: were a decoder panic to get past the import's own guard (here the
    previewer decodes with pydicom directly first, so the Rust panic propagates), the node
    still indexes, previews and scores the good exam sent in the same batch, and records the
    poisoned image so that no later batch trips on it."""
    from mamview.core import previews

    real = previews.make_preview

    def unguarded(path, *args, **kw):
        pydicom.dcmread(path).pixel_array  # pylibjpeg-rle as it is: panics on the poison
        return real(path, *args, **kw)

    monkeypatch.setattr(previews, "make_preview", unguarded)
    lib = library(home)
    poison = hostile.panicking_rle(tmp_path / "poison.dcm", patient_id="POISON")
    write_patient(tmp_path / "exam", n_exams=1, size="small", transfer_syntax="explicit")
    exam = sorted((tmp_path / "exam").rglob("*.dcm"))
    rec = Recorder()
    with node(lib, on_event=rec, score=True, device="cpu") as n:
        assert send_files(PacsNode("MAMVIEW", LOOPBACK, n.bound_port), [poison, *exam],
                          "MODALITY").sent == 5
        assert n.wait_idle(120)
        assert n.indexer_alive
    assert rows(lib, "SELECT count(*) FROM images")[0][0] == 5
    assert rows(lib, "SELECT count(*) FROM previews")[0][0] == 4
    assert rows(lib, "SELECT model_id, status FROM scores") == [("demo", "ok")]
    assert rows(lib, "SELECT count(*) FROM images WHERE decode_error != ''")[0][0] == 1
    messages = [e.message for e in rec.of(scp.NodeError)]
    assert any("going on file by file" in m for m in messages), messages
    assert any("PanicException" in m for m in messages), messages


# the indexer thread is made to die on purpose; pytest reports that thread's exception
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_indexer_is_noticed_restarted_and_its_batch_indexed(home, tmp_path):
    lib = library(home)
    one = hostile.write_mammogram(tmp_path / "one.dcm")
    rec = Recorder()
    with node(lib, on_event=rec) as n:
        assert n.wait_idle(30)
        real = n._index_batch
        calls = []

        def dies_once(db, batch):
            calls.append(len(batch))
            if len(calls) == 1:
                raise SystemExit("a plugin called sys.exit")  # what the loop lets through
            real(db, batch)

        n._index_batch = dies_once
        assert send_files(PacsNode("MAMVIEW", LOOPBACK, n.bound_port), [one], "M").sent == 1
        assert n.wait_idle(30)
        assert n.indexer_alive and calls == [1, 1]
    assert rows(lib, "SELECT count(*) FROM images")[0][0] == 1
    assert any("indexer thread had stopped; restarted" in e.message
               for e in rec.of(scp.NodeError))


# ---------------------------------------------------------------- peers that hold on


def _trickle(sockets, stop: threading.Event) -> None:
    """One byte to each socket every 0.5 s (each claims a 4 KiB association request)."""
    while not stop.wait(0.5):
        for s in sockets:
            try:
                s.send(b"\x00")
            except OSError:
                pass


def _can_bind(address: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _can_bind(OTHER_LOOPBACK), reason=f"{OTHER_LOOPBACK} is not usable here")
def test_trickling_connections_do_not_block_a_legitimate_association(home):
    lib = library(home)
    limits = NodeLimits(pdu_deadline_s=2.0)
    stop = threading.Event()
    sockets = []
    with node(lib, limits=limits) as n:
        try:
            for _ in range(20):
                s = socket.create_connection((LOOPBACK, n.bound_port), timeout=5)
                s.send(struct.pack(">BBL", 0x01, 0, 4096) + b"\x00\x01")  # A-ASSOCIATE-RQ, begun
                sockets.append(s)
            t = threading.Thread(target=_trickle, args=(sockets, stop), daemon=True)
            t.start()
            t0 = time.monotonic()
            ok = _echo_from(OTHER_LOOPBACK, n.bound_port)
            assert ok, "a legitimate association was refused while peers trickled"
            assert time.monotonic() - t0 < 5
            # the tricklers are dropped: those over the per-peer cap at once, the rest when
            # their PDU misses its deadline
            deadline = time.monotonic() + limits.pdu_deadline_s + limits.acse_timeout_s
            while time.monotonic() < deadline and n._server.live_connections(LOOPBACK):
                time.sleep(0.2)
            assert n._server.live_connections(LOOPBACK) == 0
            assert echo(PacsNode("MAMVIEW", LOOPBACK, n.bound_port), "M", timeout=5).ok
        finally:
            stop.set()
            for s in sockets:
                s.close()
    log = (lib.logs / scp.LOG_FILE_NAME).read_text()
    assert "connections open from this address" in log
    assert "was not complete within 2 s" in log


def test_an_association_that_makes_no_progress_is_dropped(home):
    """Valid but tiny P-DATA PDUs (a command that never ends) reset pynetdicom's idle timer;
    the node drops the association when no DIMSE message completes within `stall_s`."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    lib = library(home)
    with node(lib, limits=NodeLimits(stall_s=2.0)) as n:
        ae = AE(ae_title="SLOW")
        ae.add_requested_context(Verification)
        assoc = ae.associate(LOOPBACK, n.bound_port, ae_title="MAMVIEW")
        try:
            assert assoc.is_established
            cx = assoc.accepted_contexts[0].context_id
            pdv = struct.pack(">LBB", 3, cx, 0x00) + b"\x00"  # one byte of a command, not last
            pdu = struct.pack(">BBL", 0x04, 0, len(pdv)) + pdv
            raw = assoc.dul.socket.socket
            t0 = time.monotonic()
            for _ in range(40):  # bounded: 12 s at most
                if not assoc.is_established:
                    break
                try:
                    raw.sendall(pdu)
                except (OSError, AttributeError):
                    break
                time.sleep(0.3)
            assert not assoc.is_established
            assert time.monotonic() - t0 < 8
        finally:
            if assoc.is_established:
                assoc.abort()
            ae.shutdown()
        assert echo(PacsNode("MAMVIEW", LOOPBACK, n.bound_port), "M", timeout=5).ok
    assert "no progress for 2 s" in (lib.logs / scp.LOG_FILE_NAME).read_text()


def _echo_from(source: str, port: int) -> bool:
    """C-ECHO to the node from `source` (another loopback address)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="LEGIT")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOOPBACK, port, ae_title="MAMVIEW", bind_address=(source, 0))
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def test_an_oversize_pdu_is_refused_without_buffering_it(home):
    lib = library(home)
    declared = 300 << 20
    chunk = b"\x00" * (1 << 20)
    with node(lib) as n:
        assert n.wait_idle(30)
        base = rss_kib()
        sent = 0
        with socket.create_connection((LOOPBACK, n.bound_port), timeout=5) as s:
            try:
                s.sendall(struct.pack(">BBL", 0x01, 0, declared))
                while sent < declared:  # bounded: at most what was declared
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the node closed the connection: what we want
        grew_mib = (rss_kib() - base) / 1024
        assert sent < declared / 2, f"the node read {sent} bytes of an oversize PDU"
        assert grew_mib < 50, f"the node grew by {grew_mib:.0f} MiB"
        assert echo(PacsNode("MAMVIEW", LOOPBACK, n.bound_port), "M", timeout=5).ok
    assert "over the cap" in (lib.logs / scp.LOG_FILE_NAME).read_text()


@pytest.mark.parametrize("limits, words", [
    (NodeLimits(max_instance_bytes=200_000), "bytes is over the cap"),
    (NodeLimits(max_buffered_bytes=200_000), "in transfer at most, and is full"),
], ids=["instance cap", "buffer budget"])
def test_an_instance_over_a_size_cap_is_refused_and_the_node_goes_on(home, tmp_path, limits,
                                                                     words):
    lib = library(home)
    big = hostile.write_mammogram(tmp_path / "big.dcm", shape=(512, 416))  # ~430 kB
    small = hostile.write_mammogram(tmp_path / "small.dcm", shape=(256, 208))  # ~110 kB
    with node(lib, limits=limits) as n:
        peer = PacsNode("MAMVIEW", LOOPBACK, n.bound_port)
        assert send_files(peer, [big], "M").sent == 0
        # the budget is given back: small instances go through, one after another
        assert send_files(peer, [small, small, small], "M").sent == 3
        assert n.wait_idle(30)
        assert n._server.budget.used == 0
    assert rows(lib, "SELECT count(*) FROM images")[0][0] == 1
    assert words in (lib.logs / scp.LOG_FILE_NAME).read_text()


# ---------------------------------------------------------------- open only when chosen


def test_listen_without_a_choice_refuses_and_with_allow_any_warns(home, tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "mamview", "--home", str(home), "listen", "--port", str(port),
           "--host", LOOPBACK, "--no-score", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "--allow-any" in r.stderr and "--allow-ae" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(scp.NodeOpenRefused):
        scp.StorageNode(library(home), port=0, host=LOOPBACK)
    # with --allow-any it starts, and says it is open on stderr and in the log
    err = tmp_path / "listen.err"
    with open(err, "w") as f:
        p = subprocess.Popen(cmd + ["--allow-any"], stdout=subprocess.DEVNULL, stderr=f,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "listening" not in err.read_text():
            assert p.poll() is None, err.read_text()
            time.sleep(0.1)
        text = err.read_text()
        assert "warning" in text and "any calling AE title" in text
    finally:
        p.terminate()
        p.wait(timeout=60)
    assert "WARNING" in (home / "logs" / scp.LOG_FILE_NAME).read_text()


@needs_dcmtk
def test_fetch_priors_temporary_node_accepts_only_the_pacs(home, pacs):
    """The node fetch-priors starts takes only the PACS asked (its AE title and host), and
    the PACS's C-MOVE sub-operations still arrive."""
    from mamview.cli import main

    assert main(["--home", str(home), "fetch-priors", "BENCH0001", "--pacs", pacs.address,
                 "--our-ae", "MAMVIEW", "--port", str(pacs.node_port), "--host", LOOPBACK]) == 0
    assert rows(library(home), "SELECT count(*) FROM images")[0][0] == 12
    log = (home / "logs" / scp.LOG_FILE_NAME).read_text()
    assert f"calling AEs PACS, peers {LOOPBACK}/32" in log
    assert "accepts any calling AE title" not in log


if os.name != "posix":  # the node tests need Linux loopback and /proc
    pytestmark = pytest.mark.skip(reason="Linux only")
