"""The full-resolution decode child (services.decode) when it stops answering: killed in the
middle of a decode, stuck, or shut down while a decode waits on it. Our own child is stopped
(SIGSTOP) so that "in the middle of a decode" is certain, not a matter of timing. Deaths between
decodes, panics and plain timeouts are in tests/attack/test_decode_attack.py."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from mamview.core.dicom.pixels import PixelDecodeError
from mamview.core.services import decode
from tests.attack import hostile

WAIT = 60  # seconds: a bound against hangs only


@pytest.fixture
def good(tmp_path) -> str:
    return str(hostile.write_mammogram(tmp_path / "good.dcm"))


@pytest.fixture
def stopped_child(good):
    """A running decode child, stopped (SIGSTOP): it holds requests and never answers."""
    decode.render_full_elsewhere(good, 0)
    pid = decode.child_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # if a test left it; a killed child is gone already
        except ProcessLookupError:
            pass
        decode.shutdown()


def decode_in_thread(path: str, timeout: float = WAIT):
    """Start a decode on another thread; returns (thread, outcome), filled when it ends, once
    the decode holds the child (so what the test does next happens during that decode)."""
    outcome: dict = {}

    def work():
        try:
            outcome["image"] = decode.render_full_elsewhere(path, 0, timeout=timeout)
        except PixelDecodeError as exc:
            outcome["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    ready = threading.Event()
    while not decode._lock.locked() and t.is_alive():  # the decode has begun
        ready.wait(0.01)
    return t, outcome


def test_a_child_killed_during_a_decode_is_replaced_and_the_decode_succeeds(good, stopped_child):
    t, outcome = decode_in_thread(good)
    os.kill(stopped_child, signal.SIGKILL)  # dies holding the request
    t.join(WAIT)
    assert not t.is_alive()
    assert outcome.get("image") is not None and outcome["image"].shape == (256, 208)
    assert decode.child_pid() not in (None, stopped_child)  # the second try's fresh child


def test_a_child_that_never_answers_is_killed_after_the_timeout(good, stopped_child):
    with pytest.raises(PixelDecodeError, match="took longer than 1 s"):
        decode.render_full_elsewhere(good, 0, timeout=1)
    assert decode.child_pid() is None
    assert decode.render_full_elsewhere(good, 0).shape == (256, 208)  # a fresh child


def test_shutdown_ends_a_waiting_decode_and_starts_no_child(good, stopped_child):
    t, outcome = decode_in_thread(good)
    decode.shutdown()  # the window closes while a decode waits
    t.join(WAIT)
    assert not t.is_alive()
    assert "died while decoding" in str(outcome.get("error"))
    assert decode.child_pid() is None
