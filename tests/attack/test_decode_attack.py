"""Attacks on the guarded decode boundary: every hostile file either decodes or becomes one
PixelDecodeError (Unscorable for scoring, when it is not plausibly a mammogram), in bounded time
and memory. Files are generated here (tests/attack/hostile.py); the fuzz is seeded and bounded
and runs in a child process so its peak RSS can be measured."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from mamview.core.dicom import pixels
from mamview.core.dicom.pixels import PixelDecodeError, PixelLimitExceeded
from mamview.core.errors import InputRefused
from mamview.core.previews import make_preview
from tests.attack import hostile

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (320, 256)  # plausible for scoring (sides of at least 256)
FUZZ_CASES = 150
FUZZ_SEED = 11
MAX_FUZZ_RSS = 2 * 1024**3


def peak_rss() -> int:
    """This process's peak resident set size in bytes (VmHWM). Not getrusage's ru_maxrss: Linux
    carries that over exec from the parent, so a child of a large pytest process reports the
    parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _row(path) -> dict:
    return {"path": str(path), "laterality": "R", "view": "CC", "label": "RCC"}


def _outcome(fn) -> str:
    """'ok', or the name of the expected refusal; anything else propagates and fails the test."""
    from mamview.core.services.inference import Unscorable

    try:
        fn()
    except PixelDecodeError:
        return "PixelDecodeError"
    except Unscorable:
        return "Unscorable"
    return "ok"


# --- the generators do what they say -------------------------------------------------------------


def test_panicking_rle_really_panics_the_plugin(tmp_path):
    from rle.utils import decode_pixel_data

    p = hostile.panicking_rle(tmp_path / "panic.dcm")
    ds = dcmread(p)
    with pytest.raises(BaseException) as info:
        decode_pixel_data(hostile.first_frame(p), version=2, rows=ds.Rows, columns=ds.Columns,
                          bits_allocated=16)
    assert type(info.value).__name__ == "PanicException"
    assert not isinstance(info.value, Exception)  # what `except Exception` used to miss


def test_deflate_bomb_is_small_on_disk(tmp_path):
    p = hostile.deflate_bomb(tmp_path / "bomb.dcm")
    assert p.stat().st_size < 1.2 * 1024**2
    assert read_file_meta_info(p).TransferSyntaxUID == DeflatedExplicitVRLittleEndian


# --- one file at a time --------------------------------------------------------------------------


def test_panicking_rle_is_a_decode_error_everywhere(tmp_path):
    from mamview.core.services.inference import load_view
    from mamview.core.services.decode import render_full

    p = hostile.panicking_rle(tmp_path / "panic.dcm", shape=SHAPE)
    for decode in (lambda: make_preview(p), lambda: pixels.decode_full(p),
                   lambda: load_view(_row(p), None), lambda: render_full(str(p), 0)):
        with pytest.raises(PixelDecodeError, match="PanicException") as info:
            decode()
        assert "\n" not in str(info.value)
        assert isinstance(info.value, InputRefused)  # the CLI prints it without a traceback


@pytest.mark.parametrize("make", [hostile.oversized_rle, hostile.oversized_native],
                         ids=["rle", "native"])
def test_65535_squared_header_is_refused_before_decoding(tmp_path, make):
    p = make(tmp_path / "big.dcm")
    t0 = time.perf_counter()
    with pytest.raises(PixelLimitExceeded, match=r"65535×65535 pixels.*MAMVIEW_MAX_SIDE"):
        make_preview(p)
    assert time.perf_counter() - t0 < 2


def test_codestream_dimensions_must_match_the_header(tmp_path):
    src = hostile.j2k_mammogram(tmp_path / "j2k.dcm")
    frame = bytearray(hostile.first_frame(src))
    siz = frame.index(b"\xff\x51")
    frame[siz + 6: siz + 10] = (60000).to_bytes(4, "big")  # Xsiz: the codestream claims 60000 wide
    bad = hostile.replace_frame(src, tmp_path / "wide.dcm", bytes(frame))
    with pytest.raises(PixelDecodeError, match="JPEG 2000 codestream"):
        make_preview(bad)


def test_rle_segment_count_must_match_the_header(tmp_path):
    src = hostile.rle_mammogram(tmp_path / "rle.dcm")
    frame = bytearray(hostile.first_frame(src))
    frame[0] = 1  # one segment for 16-bit samples
    bad = hostile.replace_frame(src, tmp_path / "one.dcm", bytes(frame))
    with pytest.raises(PixelDecodeError, match="RLE header lists 1 segments"):
        pixels.decode_full(bad)


@pytest.mark.parametrize(("allocated", "stored", "high"), [(16, 20, 19), (12, 12, 11), (16, 12, 15),
                                                           (16, 12, 3), (0, 0, 0), (64, 12, 11)])
def test_inconsistent_bit_depths_are_refused(tmp_path, allocated, stored, high):
    p = hostile.bit_depths(tmp_path / "bits.dcm", allocated, stored, high)
    if (allocated, stored, high) == (16, 12, 15):  # HighBit may sit above BitsStored - 1
        assert make_preview(p).array.shape == (256, 208)
        return
    with pytest.raises(PixelDecodeError, match="Bits|HighBit"):
        make_preview(p)


def test_short_native_pixel_data_is_refused(tmp_path):
    p = hostile.write_mammogram(tmp_path / "short.dcm", extra={"Rows": 512})
    with pytest.raises(PixelDecodeError, match="holds 106,496 bytes, the header needs 212,992"):
        make_preview(p)


def test_deflate_bomb_is_refused_fast_in_bounded_memory(tmp_path):
    bomb = hostile.deflate_bomb(tmp_path / "bomb.dcm")  # 1 MB that inflates to 1 GiB
    code = ("import json, sys, time\n"
            "from mamview.core.dicom import pixels\n"
            "from tests.attack.test_decode_attack import peak_rss\n"
            "t = time.perf_counter()\n"
            "try:\n"
            "    pixels.read_dataset(sys.argv[1]); out = 'read'\n"
            "except pixels.PixelDecodeError as exc:\n"
            "    out = str(exc)\n"
            "print(json.dumps([out, time.perf_counter() - t, peak_rss()]))\n")
    res = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    message, seconds, rss = json.loads(res.stdout.strip().splitlines()[-1])
    assert "inflates to more than" in message and "MAMVIEW_MAX_INFLATED_BYTES" in message
    # was 7.5 GB and 43 s; now the size is counted in small chunks that are not kept
    assert seconds < 10 and rss < 300 * 1024**2


def test_small_inflated_cap_refuses_a_small_bomb(tmp_path, monkeypatch):
    bomb = hostile.deflate_bomb(tmp_path / "bomb.dcm", inflated_bytes=32 * 1024**2)
    assert make_preview(bomb).array.dtype == np.uint8  # 32 MiB of zeros is within the cap
    monkeypatch.setenv("MAMVIEW_MAX_INFLATED_BYTES", str(8 * 1024**2))
    with pytest.raises(PixelLimitExceeded, match="inflates to more than 8,388,608 bytes"):
        make_preview(bomb)


def test_files_over_the_size_cap_and_special_files_are_not_read(tmp_path, monkeypatch):
    p = hostile.write_mammogram(tmp_path / "ok.dcm")
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    with pytest.raises(PixelDecodeError, match="not a regular file"):
        make_preview(fifo)  # would block forever if it were opened
    monkeypatch.setenv("MAMVIEW_MAX_FILE_BYTES", "1000")
    with pytest.raises(PixelLimitExceeded, match="MAMVIEW_MAX_FILE_BYTES"):
        make_preview(p)


def test_memory_error_in_a_decoder_is_a_decode_error(tmp_path):
    """A decoder that runs out of memory (here: under a small address-space limit in a child)
    gives a message, not a crash."""
    small = hostile.write_mammogram(tmp_path / "small.dcm")
    big = hostile.write_mammogram(tmp_path / "big.dcm", shape=(2048, 1664))
    code = ("import resource, sys\n"
            "from mamview.core.previews import make_preview\n"
            "from mamview.core.dicom.pixels import PixelDecodeError\n"
            "make_preview(sys.argv[1])  # every module a decode needs is imported now\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\n"
            "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (used + 8 * 1024**2, hard))\n"
            "try:\n"
            "    make_preview(sys.argv[2]); print('decoded')\n"
            "except PixelDecodeError as exc:\n"
            "    print('refused:', exc)\n")
    res = subprocess.run([sys.executable, "-c", code, str(small), str(big)], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused:" in res.stdout and "not enough memory" in res.stdout, res.stdout


def test_full_resolution_child_is_memory_capped_and_its_death_is_a_decode_error(tmp_path):
    import signal

    from mamview.core.services import decode as decode_worker

    good = str(hostile.write_mammogram(tmp_path / "good.dcm"))
    panic = str(hostile.panicking_rle(tmp_path / "panic.dcm"))
    try:
        assert decode_worker.render_full_elsewhere(good, 0).shape == (256, 208)
        pid = decode_worker.child_pid()
        limits_text = Path(f"/proc/{pid}/limits").read_text()
        assert any(line.startswith("Max address space") and str(4 * 1024**3) in line
                   for line in limits_text.splitlines())
        with pytest.raises(PixelDecodeError, match="PanicException"):
            decode_worker.render_full_elsewhere(panic, 0)
        os.kill(pid, signal.SIGKILL)  # our own child dies between two decodes
        assert decode_worker.render_full_elsewhere(good, 0).shape == (256, 208)  # a new child
        os.kill(decode_worker.child_pid(), signal.SIGSTOP)  # a child that hangs in a decode
        with pytest.raises(PixelDecodeError, match="took longer than"):
            decode_worker.render_full_elsewhere(good, 0, timeout=0.5)  # killed, not waited on
        assert decode_worker.render_full_elsewhere(good, 0).shape == (256, 208)
        assert decode_worker.child_pid() != pid
    finally:
        decode_worker.shutdown()
    assert decode_worker.child_pid() is None


# --- the seeded fuzz -----------------------------------------------------------------------------


def _bases(folder: Path) -> dict[str, Path]:
    """One valid, scorable image per encoding."""
    return {
        "explicit": hostile.write_mammogram(folder / "explicit.dcm", shape=SHAPE),
        "implicit": hostile.write_mammogram(folder / "implicit.dcm", shape=SHAPE,
                                            transfer_syntax=ImplicitVRLittleEndian),
        "deflated": hostile.write_mammogram(folder / "deflated.dcm", shape=SHAPE,
                                            transfer_syntax=DeflatedExplicitVRLittleEndian),
        "rle": hostile.rle_mammogram(folder / "rle.dcm", shape=SHAPE),
        "j2k": hostile.j2k_mammogram(folder / "j2k.dcm", shape=SHAPE),
    }


_HEADER_VALUES = {
    "Rows": [0, 1, 255, 16385, 65535], "Columns": [0, 1, 255, 16385, 65535],
    "NumberOfFrames": ["0", "-1", "1001", "1000000000", "x"],
    "BitsAllocated": [0, 1, 8, 12, 24, 32, 64], "BitsStored": [0, 8, 17, 33, 255],
    "HighBit": [0, 7, 16, 31, 255], "SamplesPerPixel": [0, 3, 255], "PixelRepresentation": [1, 7],
    "RescaleSlope": ["NaN", "inf", "-inf", "1e38", "0", "-1"], "RescaleIntercept": ["NaN", "1e38"],
    "WindowCenter": ["NaN", "1e30", "-1e30", "0"], "WindowWidth": ["0", "-5", "NaN", "1e30"],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "\x1b[31m", ""],
}


def _mutations(bases: dict[str, Path], folder: Path, rng: random.Random, n: int):
    """`n` (name, path) hostile files: byte flips in the header and the stream, truncations,
    header values, and a deflate bomb (first, so the cases after it show the process survives)."""
    yield "deflate bomb 1 GiB", hostile.deflate_bomb(folder / "bomb.dcm")
    kinds = ["header flip", "stream flip", "truncate", "header value", "header value"]
    for i in range(n - 1):
        base_name = rng.choice(sorted(bases))
        base = bases[base_name]
        kind = rng.choice(kinds)
        out = folder / f"m{i:03d}.dcm"
        size = base.stat().st_size
        if kind == "header value" or (base_name == "deflated" and kind != "truncate"):
            keyword = rng.choice(sorted(_HEADER_VALUES))
            value = rng.choice(_HEADER_VALUES[keyword])
            ds = dcmread(base)
            if isinstance(value, str):  # as text whatever the VR, so "x" reaches an IS element
                ds.add_new(keyword, "LO", value)
            else:
                setattr(ds, keyword, value)
            with hostile._lenient_writing():
                ds.save_as(out)
            yield f"{base_name} {keyword}={value!r}", out
        elif kind == "truncate":
            cut = rng.randrange(0, size)
            yield f"{base_name} cut at {cut}", hostile.truncate(base, out, cut)
        else:
            start = hostile.pixel_data_offset(base)
            offset = rng.randrange(start, size) if kind == "stream flip" else rng.randrange(0, start)
            mask = rng.choice([0xFF, 0x80, 0x01, rng.randrange(1, 256)])
            yield f"{base_name} {kind} at {offset}^{mask:#x}", hostile.flip_byte(base, out, offset, mask)


def fuzz(folder: str, seed: int, n: int) -> dict:
    """Run `n` seeded hostile files through make_preview, load_view (full and reduced) and
    report the outcome counts, the slowest case and this process's peak RSS."""
    from mamview.core.services.inference import load_view
    from mamview.core.models import base  # noqa: F401 - imports torch now, not in the first case

    folder_path = Path(folder)
    rng = random.Random(seed)
    counts: dict[str, int] = {}
    slowest = (0.0, "")
    for name, path in _mutations(_bases(folder_path), folder_path, rng, n):
        t0 = time.perf_counter()
        calls = [("preview", lambda: make_preview(path)), ("view", lambda: load_view(_row(path), None))]
        if name.startswith("j2k"):  # only JPEG 2000 has a reduced decode of its own
            calls.append(("reduced view", lambda: load_view(_row(path), 128)))
        for label, fn in calls:
            outcome = _outcome(fn)
            counts[f"{label}: {outcome}"] = counts.get(f"{label}: {outcome}", 0) + 1
        slowest = max(slowest, (time.perf_counter() - t0, name))
        path.unlink()
    return {"counts": counts, "slowest": slowest, "peak_rss": peak_rss()}


def test_seeded_fuzz_every_file_decodes_or_is_refused(tmp_path):
    code = ("import json, sys\n"
            "from tests.attack.test_decode_attack import fuzz\n"
            "print('RESULT', json.dumps(fuzz(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))\n")
    env = dict(os.environ, RUST_BACKTRACE="0")  # the panics print one line, not a backtrace
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(FUZZ_SEED), str(FUZZ_CASES)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    elapsed = time.perf_counter() - t0
    # any exception other than PixelDecodeError / Unscorable escapes and the child exits non-zero
    assert res.returncode == 0, res.stderr[-3000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    report = json.loads(line[len("RESULT "):])
    counts = report["counts"]
    assert sum(v for k, v in counts.items() if k.startswith("preview")) == FUZZ_CASES
    assert counts.get("preview: PixelDecodeError", 0) > 20 and counts.get("preview: ok", 0) > 20
    assert report["peak_rss"] < MAX_FUZZ_RSS, report
    assert report["slowest"][0] < 15, report["slowest"]
    print(f"fuzz: {FUZZ_CASES} files in {elapsed:.1f} s, peak RSS "
          f"{report['peak_rss'] / 1024**2:.0f} MiB, slowest {report['slowest']}, {counts}")


EXIT_AFTER_KILLS = """
import sys
from mamview.core.dicom.pixels import PixelDecodeError
from mamview.core.services import decode as decode_worker

def main():
    for i in range(12):  # deadlines around the decode time: the child is killed mid-answer too
        try:
            decode_worker.render_full_elsewhere(sys.argv[1], 0, timeout=0.02 * (i % 6) + 0.01)
        except PixelDecodeError:
            pass
    print("done", flush=True)

if __name__ == "__main__":
    main()
"""


def test_killing_the_decode_child_mid_answer_never_holds_up_exit(tmp_path):
    # a ProcessPoolExecutor's manager thread blocked in recv for good here and the interpreter
    # never exited; the process must end promptly whatever the child was doing
    big = hostile.write_mammogram(tmp_path / "big.dcm", shape=(3000, 2400))
    script = tmp_path / "kills.py"
    script.write_text(EXIT_AFTER_KILLS)
    out = subprocess.run([sys.executable, str(script), str(big)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr
