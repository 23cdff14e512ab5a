"""`models install` under attack: generated hostile release files, each refused with a one-line
message, in bounded time and memory, with nothing executed and nothing installed.

Every case runs `convert_release` in its own forked child of one harness process (this file run
as a script), so a crash, a hang or a runaway allocation shows up as a failed case, not a dead
test session; `os.wait4` gives each child's peak RSS. Files are built here from pickle opcodes,
`torch.save` and zipfile (no binary fixtures); legitimate releases come from the factories of
tests/core/models/test_snapshots.py.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASE_TIMEOUT_S = 60  # a case over this is a hang (the child is killed by SIGALRM)
MAX_CASE_SECONDS = 20.0  # refusals are quick; generous for a loaded CI machine
MAX_RSS_MB = 1024
FUZZ_CASES = 24  # seeded byte flips / truncations of legitimate files (a local run of 700 found
# no crash; each takes ~0.1 s)

# ----------------------------------------------------------------------------------------------
# Pickle opcodes, assembled by hand: the hostile structures cannot be produced by pickle.dumps
# (it would recurse, allocate or refuse first).


def _g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _u(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _i(n: int) -> bytes:
    return pickle.dumps(n, protocol=2)[2:-1]  # BININT* / LONG1, no memo


def _t(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK … TUPLE


P2 = b"\x80\x02"
EMPTY_DICT, EMPTY_TUPLE, REDUCE, BUILD, STOP, SETITEM = b"}", b")", b"R", b"b", b".", b"s"


def _calibrator_with_slope(value: bytes) -> bytes:
    """{0: onconet MiraiCalibrator whose base_estimator_slope is `value`} (a pickle)."""
    inst = (_g("onconet.models.calibrator", "MiraiCalibrator") + EMPTY_TUPLE + b"\x81"
            + EMPTY_DICT + b"(" + _u("base_estimator_slope") + value + _u("calibrator_slope")
            + _i(1) + b"u" + BUILD)
    return P2 + EMPTY_DICT + _i(0) + inst + SETITEM + STOP


def _billion_laughs(levels: int = 60) -> bytes:
    """L0 = []; Li = [Li-1, Li-1] through the memo: 2**levels leaves in a few hundred bytes."""
    out = b"]q\x000"  # EMPTY_LIST, BINPUT 0, POP
    for i in range(1, levels + 1):
        out += b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"lq" + bytes([i]) + b"0"
    return out + b"h" + bytes([levels])


def _deep_list(depth: int) -> bytes:
    return b"]" * depth + b"a" * (depth - 1)  # EMPTY_LIST × n, APPEND × n-1


def _legacy_torch(obj_pickle: bytes, keys: list[str], storages: list[bytes]) -> bytes:
    """A pre-1.6 torch stream around a hand-made object pickle."""
    from mamview.core.models.official.containers import _LEGACY_MAGIC, _LEGACY_PROTOCOL
    sys_info = {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}
    out = b"".join(pickle.dumps(x, protocol=2) for x in (_LEGACY_MAGIC, _LEGACY_PROTOCOL,
                                                           sys_info))
    out += obj_pickle + pickle.dumps(keys, protocol=2)
    for raw in storages:
        out += struct.pack("<q", len(raw) // 4) + raw
    return out


def _tensor_call(numel: int, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """_rebuild_tensor_v2(<float storage '0' declaring numel>, 0, size, stride, False, {})."""
    pid = _t(_u("storage"), _g("torch", "FloatStorage"), _u("0"), _u("cpu"), _i(numel)) + b"Q"
    return (_g("torch._utils", "_rebuild_tensor_v2")
            + _t(pid, _i(0), _t(*map(_i, size)), _t(*map(_i, stride)), b"\x89",
                 _g("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE) + REDUCE)


def _object_array_short_list() -> bytes:
    """numpy object array of shape (1000,) whose state holds one object (numpy segfaults)."""
    dtype = (_g("numpy", "dtype") + _t(_u("O8"), b"\x89", b"\x88") + REDUCE
             + _t(_i(3), _u("|"), b"N", b"N", b"N", _i(-1), _i(-1), _i(63)) + BUILD)
    arr = (_g("numpy.core.multiarray", "_reconstruct")
           + _t(_g("numpy", "ndarray"), _t(_i(0)), b"C\x01b") + REDUCE
           + _t(_i(1), _t(_i(1000)), dtype, b"\x89", b"(" + _i(1) + b"l") + BUILD)
    return P2 + EMPTY_DICT + _i(0) + arr + SETITEM + STOP


# ----------------------------------------------------------------------------------------------
# Zip archives


def _zip_many_members(n: int, declared: int | None = None) -> bytes:
    """A central directory of `n` empty stored entries (struct-built: zipfile is slow at it)."""
    cd = bytearray()
    for k in range(n):
        name = f"m/{k}".encode()
        cd += b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                                          len(name), 0, 0, 0, 0, 0, 0) + name
    count = min(n if declared is None else declared, 0xFFFF)
    return bytes(cd) + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, count, count, len(cd), 0, 0)


def _zip_release(release: Path, dest: Path, big_member: str | None = None,
                 big_bytes: int = 0, lie_size: int | None = None) -> Path:
    """The release folder as a zip; optionally one member replaced by `big_bytes` zeros
    (deflated: a bomb), and its declared size in the directory changed to `lie_size`."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(release.rglob("*")):
            if p.is_file() and p.name != big_member:
                zf.write(p, p.relative_to(release).as_posix())
        if big_member:
            with zf.open(big_member, "w", force_zip64=True) as w:
                chunk = bytes(1 << 20)
                for _ in range(big_bytes >> 20):
                    w.write(chunk)
            if lie_size is not None:
                zf.getinfo(big_member).file_size = lie_size
    return dest


# ----------------------------------------------------------------------------------------------
# The cases


def _legit_release(folder: Path, fmt: str = "legacy", drop: str | None = None) -> Path:
    from tests.core.models.test_snapshots import make_fakes, write_release
    enc, tr = make_fakes()
    if drop == "encoder-tensor":
        enc._model.layer2_0.conv1.weight = None  # registered, but no tensor
    if drop == "transformer-tensor":
        tr.pool.internal_pool.attention_fc.bias = None
    if drop == "huge-network":  # widths read from tiny tensors: the network would be ~2.5 GB
        import torch
        enc._model.layer4_0.conv1.weight = torch.nn.Parameter(torch.zeros(4096, 1, 1, 1))
        tr.projection_layer.weight = torch.nn.Parameter(torch.zeros(12, 4096))
    return write_release(folder, enc, tr, fmt=fmt)


def _build_cases(base: Path) -> list[dict]:
    from mamview.core.models.official.release import (CALIBRATOR_FILES, ENCODER_FILES,
                                                      TRANSFORMER_FILES)
    legit = _legit_release(base / "legit")
    legit_zipfmt = _legit_release(base / "legit-zipfmt", fmt="zip")
    enc_name, tr_name = ENCODER_FILES[0], TRANSFORMER_FILES[0]
    cal_rel = Path("calibrators") / CALIBRATOR_FILES[0]
    canary = base / "canary"
    rng = random.Random(11)
    cases: list[dict] = []

    def add(name: str, src: Path, expect: str, env: dict | None = None) -> None:
        cases.append({"name": name, "src": str(src), "models": str(base / "models" / name),
                      "expect": expect, "env": env or {}})

    def variant(name: str, rel: Path | str, data: bytes | None, expect: str,
                env: dict | None = None) -> None:
        folder = base / name
        shutil.copytree(legit, folder)
        if data is not None:
            (folder / rel).write_bytes(data)
        add(name, folder, expect, env)

    add("missing path", base / "does-not-exist", "ReleaseIncomplete")
    (base / "empty").mkdir()
    add("empty folder", base / "empty", "ReleaseIncomplete")
    (base / "random.bin").write_bytes(rng.randbytes(4096))
    add("not a zip", base / "random.bin", "InputRefused")
    variant("encoder not a pickle", enc_name, rng.randbytes(5000), "SnapshotFormatError")
    variant("calibrator not a pickle", cal_rel, b"this is not a pickle\n", "SnapshotFormatError")
    folder = base / "member missing"
    shutil.copytree(legit, folder)
    (folder / cal_rel).unlink()
    add("member missing", folder, "ReleaseIncomplete")
    add("encoder tensor missing", _legit_release(base / "enc-missing", drop="encoder-tensor"),
        "SnapshotFormatError")
    add("transformer tensor missing",
        _legit_release(base / "tr-missing", drop="transformer-tensor"), "SnapshotFormatError")
    add("tiny tensors declaring a 2.5 GB network",
        _legit_release(base / "huge-net", drop="huge-network"), "LimitExceeded")

    # pickles that grow without bound when loaded or walked
    variant("billion laughs (memo)", cal_rel, _calibrator_with_slope(_billion_laughs()),
            "LimitExceeded")
    variant("deep list (100k)", cal_rel, _calibrator_with_slope(_deep_list(100_000)),
            "LimitExceeded")
    deep_tuple_key = P2 + EMPTY_DICT + EMPTY_TUPLE + b"\x85" * 1_000_000 + _i(1) + SETITEM + STOP
    variant("deep tuple key (1M, hash overflows the C stack)", cal_rel, deep_tuple_key,
            "LimitExceeded")
    tuple_of_range = (P2 + _g("torch", "Size") + _t(_g("builtins", "range") + _t(_i(10**9))
                                                     + REDUCE) + REDUCE + STOP)
    variant("list of 10^9 via REDUCE (torch.Size(range))", cal_rel, tuple_of_range,
            "LimitExceeded")
    variant("bytes(10^9) via REDUCE", cal_rel,
            P2 + _g("builtins", "bytes") + _t(_i(10**9)) + REDUCE + STOP, "LimitExceeded")
    variant("numpy object array with a short list", cal_rel, _object_array_short_list(),
            "SnapshotFormatError")
    ops_bomb = P2 + b"(" + b"N" * 600_000 + b"l" + STOP  # one list of 600 k Nones
    variant("opcode budget (600k over a cap of 500k)", cal_rel, ops_bomb, "LimitExceeded",
            {"MAMVIEW_MODEL_MAX_PICKLE_OPS": "500000"})  # the default (5 M) takes ~4 s
    big_list = b"(" + b"N" * 1_000_000 + b"lq\x00"  # memoised as 0
    copies = (_g("builtins", "tuple") + b"(h\x00tR0") * 300  # 300 × tuple(list): 2.4 GB
    variant("300 tuple() copies of one 1M list", cal_rel, P2 + big_list + copies + b"N" + STOP,
            "LimitExceeded")
    variant("str() of a billion-laughs list", cal_rel,
            P2 + _g("builtins", "str") + b"(" + _billion_laughs() + b"tR" + STOP,
            "SnapshotFormatError")
    same_hash = b"".join(_i(k * ((1 << 61) - 1)) + b"N" for k in range(1, 50_001))
    variant("hash flooding (50k int keys, one hash)", cal_rel,
            P2 + EMPTY_DICT + b"(" + same_hash + b"u" + STOP, "LimitExceeded")
    big_tuple = b"(" + b"K\x00" * 1_000_000 + b"tq\x00"  # memoised as 0
    rehash = (EMPTY_DICT + b"h\x00N" + SETITEM + b"0") * 20_000  # 20k dicts keyed by it
    variant("a 1M tuple hashed 20k times (deadline 1 s)", cal_rel,
            P2 + big_tuple + rehash + STOP, "LimitExceeded", {"MAMVIEW_MODEL_MAX_SECONDS": "1"})

    # torch files declaring more than they hold
    variant("huge declared storage (10^12 floats)", enc_name,
            _legacy_torch(P2 + _tensor_call(10**12, (10**6, 10**6), (10**6, 1)) + STOP,
                          ["0"], [bytes(4)]), "SnapshotFormatError")
    variant("stride-0 view of one element as 10^10", enc_name,
            _legacy_torch(P2 + _tensor_call(1, (10**5, 10**5), (0, 0)) + STOP,
                          ["0"], [bytes(4)]), "SnapshotFormatError")
    variant("module tree with 2^64 shared paths", enc_name, _shared_module_tree(64),
            "LimitExceeded")

    # code execution attempts (the canary would be created by the payload)
    evil = P2 + _g("posix", "system") + _t(_u(f"touch {canary}")) + REDUCE + STOP
    variant("GLOBAL os.system (calibrator)", cal_rel, evil, "UnsafeSnapshotError")
    variant("REDUCE os.system inside a torch file", tr_name, _evil_torch(canary),
            "UnsafeSnapshotError")

    # zip archives
    zips = base / "zips"
    zips.mkdir()
    add("zip bomb (32 MB of zeros)", _zip_release(legit_zipfmt, zips / "bomb.zip",
                                                  big_member=enc_name, big_bytes=32 << 20),
        "LimitExceeded")
    add("zip member longer than declared", _zip_release(
        legit_zipfmt, zips / "lying.zip", big_member=enc_name, big_bytes=8 << 20,
        lie_size=4096), "SnapshotFormatError")
    (zips / "many.zip").write_bytes(_zip_many_members(100_000))
    add("zip with 100k members", zips / "many.zip", "LimitExceeded")
    (zips / "many-lying.zip").write_bytes(_zip_many_members(100_000, declared=1))
    add("zip with 100k members, end record says 1", zips / "many-lying.zip", "LimitExceeded")
    good_zip = _zip_release(legit_zipfmt, zips / "good.zip")
    data = good_zip.read_bytes()
    (zips / "truncated.zip").write_bytes(data[: len(data) // 2])
    add("truncated release zip", zips / "truncated.zip", "InputRefused")
    inner = (legit_zipfmt / enc_name).read_bytes()
    variant("truncated torch zip", enc_name, inner[: len(inner) * 2 // 3], "SnapshotFormatError")

    # the file system
    folder = base / "fifo"
    shutil.copytree(legit, folder)
    (folder / enc_name).unlink()
    os.mkfifo(folder / enc_name)
    add("FIFO named like the encoder", folder, "InputRefused")
    folder = base / "crowded"
    shutil.copytree(legit, folder / "release")
    for k in range(30):
        (folder / f"other-{k:02d}.txt").write_bytes(b"x")
    add("folder over the entry cap", folder, "LimitExceeded", {"MAMVIEW_MODEL_MAX_ENTRIES": "20"})
    add("file over the size cap", legit, "LimitExceeded",
        {"MAMVIEW_MODEL_MAX_FILE_BYTES": "4096"})
    add("wall-time budget spent", legit, "LimitExceeded", {"MAMVIEW_MODEL_MAX_SECONDS": "0"})

    # seeded mutations of the legitimate files: refused or installed, never a crash
    mutants = [(legit, enc_name), (legit, tr_name), (legit, cal_rel), (legit_zipfmt, enc_name)]
    for k in range(FUZZ_CASES):
        src, rel = mutants[k % len(mutants)]
        data = bytearray((src / rel).read_bytes())
        if k % 3 == 2:
            data = data[: rng.randrange(len(data))]
        else:  # flips, mostly in the first 4 KB: the object pickle of a legacy file
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(min(len(data), 4096 if k % 3 else len(data)))] = \
                    rng.randrange(256)
        folder = base / f"mutant-{k}"
        shutil.copytree(src, folder)
        (folder / rel).write_bytes(bytes(data))
        add(f"mutant {k}", folder, "any")

    # and legitimate releases still install
    add("legitimate folder (legacy files)", legit, "installed")
    add("legitimate zip (zip-format files)", good_zip, "installed")
    return cases


def _shared_module_tree(levels: int) -> bytes:
    """torch.save of a module chain whose two children are the same module, `levels` deep."""
    import torch
    from torch import nn
    node = nn.Linear(2, 2)
    for _ in range(levels):
        parent = nn.Module()
        parent.a = node
        parent.b = node
        node = parent
    buf = io.BytesIO()
    torch.save(node, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


class _Evil:
    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def _evil_torch(canary: Path) -> bytes:
    import torch
    buf = io.BytesIO()
    torch.save({"model": _Evil(canary)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# The harness: this file run as a script forks one child per case


def _run_cases(spec: Path, out: Path) -> None:
    import signal
    import time
    import traceback

    sys.path.insert(0, str(ROOT))
    from mamview.core.errors import MamviewError
    from mamview.core.models.official.release import convert_release

    results = {}
    for case in json.loads(spec.read_text()):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one install, its outcome as JSON on the pipe
            os.close(r)
            os.environ.update(case["env"])
            signal.alarm(CASE_TIMEOUT_S)
            start = time.monotonic()
            try:
                res = {"outcome": "installed", "message": str(convert_release(case["src"],
                                                                            case["models"]))}
            except MamviewError as exc:
                res = {"outcome": "refused", "type": [c.__name__ for c in type(exc).__mro__],
                       "message": str(exc)}
            except BaseException as exc:  # noqa: B036 - a crash is what we are looking for
                res = {"outcome": "crashed", "type": [type(exc).__name__],
                       "message": traceback.format_exc()[-3000:]}
            res["seconds"] = time.monotonic() - start
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            raw = pipe.read()
        _, status, usage = os.wait4(pid, 0)
        res = json.loads(raw) if raw else {"outcome": "died", "type": [],
                                           "message": f"wait status {status}", "seconds": None}
        res["maxrss_mb"] = usage.ru_maxrss / 1024
        results[case["name"]] = res
    out.write_text(json.dumps(results, indent=1))


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """All cases built and run once: (cases, results, base folder)."""
    base = tmp_path_factory.mktemp("model-attack")
    cases = _build_cases(base)
    spec, out = base / "cases.json", base / "results.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in list(env):
        if name.startswith("MAMVIEW_MODEL_"):
            del env[name]  # the defaults are under test
    subprocess.run([sys.executable, __file__, str(spec), str(out)], env=env, check=True,
                   timeout=CASE_TIMEOUT_S * len(cases) + 120)
    return {c["name"]: c for c in cases}, json.loads(out.read_text()), base


HOSTILE = [
    "missing path", "empty folder", "not a zip", "encoder not a pickle", "calibrator not a pickle",
    "member missing", "encoder tensor missing", "transformer tensor missing",
    "tiny tensors declaring a 2.5 GB network",
    "billion laughs (memo)", "deep list (100k)", "deep tuple key (1M, hash overflows the C stack)",
    "list of 10^9 via REDUCE (torch.Size(range))", "bytes(10^9) via REDUCE",
    "numpy object array with a short list", "opcode budget (600k over a cap of 500k)",
    "300 tuple() copies of one 1M list", "str() of a billion-laughs list",
    "hash flooding (50k int keys, one hash)", "a 1M tuple hashed 20k times (deadline 1 s)",
    "huge declared storage (10^12 floats)", "stride-0 view of one element as 10^10",
    "module tree with 2^64 shared paths", "GLOBAL os.system (calibrator)",
    "REDUCE os.system inside a torch file", "zip bomb (32 MB of zeros)",
    "zip member longer than declared", "zip with 100k members",
    "zip with 100k members, end record says 1", "truncated release zip", "truncated torch zip",
    "FIFO named like the encoder", "folder over the entry cap", "file over the size cap",
    "wall-time budget spent",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_release_is_refused_within_bounds(attack, name):
    cases, results, base = attack
    res, case = results[name], cases[name]
    assert res["outcome"] == "refused", res["message"]
    assert case["expect"] in res["type"], (res["type"], res["message"])
    assert "\n" not in res["message"] and 0 < len(res["message"]) <= 600, res["message"]
    assert "Traceback" not in res["message"]
    assert res["seconds"] < MAX_CASE_SECONDS, res
    assert res["maxrss_mb"] < MAX_RSS_MB, res
    assert not Path(case["models"]).exists()  # nothing installed, not even a temp folder
    assert not (base / "canary").exists()  # no payload ran


@pytest.mark.parametrize("name", ["legitimate folder (legacy files)",
                                  "legitimate zip (zip-format files)"])
def test_legitimate_release_still_installs(attack, name):
    cases, results, _ = attack
    res = results[name]
    assert res["outcome"] == "installed", res["message"]
    assert (Path(cases[name]["models"]) / "mirai" / "weights.pt").is_file()
    assert res["maxrss_mb"] < MAX_RSS_MB


@pytest.mark.parametrize("k", range(FUZZ_CASES))
def test_mutated_release_is_refused_or_installed(attack, k):
    cases, results, base = attack
    res = results[f"mutant {k}"]
    assert res["outcome"] in ("refused", "installed"), res["message"]
    assert "\n" not in res["message"]
    assert res["seconds"] < MAX_CASE_SECONDS and res["maxrss_mb"] < MAX_RSS_MB, res


def test_every_case_is_accounted_for(attack):
    cases, results, base = attack
    mutants = {f"mutant {k}" for k in range(FUZZ_CASES)}
    assert set(cases) == set(results) == set(HOSTILE) | mutants | {
        "legitimate folder (legacy files)", "legitimate zip (zip-format files)"}
    tried = [*HOSTILE, *mutants]
    summary = {
        "tried": len(tried),
        "executed": int((base / "canary").exists()),
        "crashed": sum(results[n]["outcome"] not in ("refused", "installed") for n in tried),
        "over_budget": sum(results[n]["maxrss_mb"] >= MAX_RSS_MB
                           or (results[n]["seconds"] or 1e9) >= MAX_CASE_SECONDS for n in tried),
        "worst_seconds": max(results[n]["seconds"] or 1e9 for n in tried),
        "worst_rss_mb": max(results[n]["maxrss_mb"] for n in tried),
    }
    print("model attack summary:", json.dumps(summary))
    assert summary["executed"] == summary["crashed"] == summary["over_budget"] == 0


# ----------------------------------------------------------------------------------------------
# In-process checks of single rules (fast)


def test_build_cannot_change_allow_listed_markers():
    """BUILD on an allow-listed global (a storage marker) would change it for every later load."""
    import torch
    from mamview.core.models.errors import SnapshotFormatError
    from mamview.core.models.official.safe_globals import SAFE_GLOBALS as _SAFE_GLOBALS
    from mamview.core.models.official.unpickler import safe_pickle_load
    data = P2 + _g("torch", "FloatStorage") + EMPTY_DICT + _u("dtype") + _i(1) + SETITEM + BUILD \
        + STOP
    with pytest.raises(SnapshotFormatError, match="BUILD"):
        safe_pickle_load(io.BytesIO(data))
    assert _SAFE_GLOBALS[("torch", "FloatStorage")].dtype is torch.float32


def test_refusals_are_mamview_errors():
    """The CLI prints any MamviewError as one line; the old names still catch what they did."""
    from mamview.core.errors import InputRefused
    from mamview.core.models.errors import (ModelUnavailable, ReleaseIncomplete,
                                            SnapshotFormatError, UnsafeSnapshotError)
    assert issubclass(UnsafeSnapshotError, InputRefused)
    assert issubclass(SnapshotFormatError, InputRefused) and issubclass(SnapshotFormatError,
                                                                        ValueError)
    assert issubclass(ReleaseIncomplete, ModelUnavailable)
    assert str(ReleaseIncomplete("x lacks y", "expected z")) == "x lacks y (expected z)"


def test_build_cannot_reach_a_tensor():
    """Tensor.__setstate__ is set_(storage, offset, size, stride): BUILD on a tensor is refused."""
    from mamview.core.models.errors import SnapshotFormatError
    from mamview.core.models.official.containers import safe_torch_load
    pid = _t(_u("storage"), _g("torch", "FloatStorage"), _u("0"), _u("cpu"), _i(1)) + b"Q"
    tensor = (_g("torch._utils", "_rebuild_tensor_v2")
              + _t(pid, _i(0), _t(_i(1)), _t(_i(1)), b"\x89",
                   _g("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE) + REDUCE)
    state = _t(tensor, _i(0), _t(_i(10**6)), _t(_i(1)))  # a 4-tuple: the set_ form
    data = _legacy_torch(P2 + tensor + state + BUILD + STOP, ["0"], [bytes(4)])
    with pytest.raises(SnapshotFormatError, match="BUILD"):
        safe_torch_load(data)


def test_numpy_dtype_is_always_a_copy():
    """np.dtype('f8', False, False) is the shared descriptor; BUILD on it must not reach it."""
    import numpy as np
    from mamview.core.models.official.unpickler import safe_pickle_load
    data = P2 + _g("numpy", "dtype") + _t(_u("f8"), b"\x89", b"\x89") + REDUCE + STOP
    got = safe_pickle_load(io.BytesIO(data))
    assert got == np.dtype("f8") and got is not np.dtype("f8")


@pytest.mark.parametrize("config", [
    b"[]", b'{"identity": 5}', b"\xff\xfe not utf-8", b"[" * 100_000 + b"]" * 100_000,
    b'{"identity": {"name": "\\u001b[2J evil", "label": ["x"]}}',
])
def test_registry_survives_a_hostile_config(tmp_path, config):
    """`mamview models` lists a damaged model folder as unavailable, with a one-line reason."""
    from mamview.core.models import registry
    from mamview.core.paths import Library
    lib = Library(tmp_path / "lib")
    folder = lib.models / "mirai"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(config)
    (folder / "weights.pt").write_bytes(b"")
    entry = registry.list_models(lib)[0]
    assert entry.model_id == "mirai"
    if entry.available:  # the escape-laden name case: shown escaped, the label dropped
        assert "\x1b" not in entry.name and entry.label == ""
    else:
        assert entry.reason.startswith("unreadable config.json") and "\n" not in entry.reason


def test_limits_follow_the_environment(monkeypatch):
    from mamview.core.models.official.limits import SnapshotLimits, current_limits
    monkeypatch.setenv("MAMVIEW_MODEL_MAX_PICKLE_OPS", "123")
    monkeypatch.setenv("MAMVIEW_MODEL_MAX_FILE_BYTES", "not a number")
    got = current_limits()
    assert got.max_pickle_ops == 123
    assert got.max_file_bytes == SnapshotLimits().max_file_bytes


if __name__ == "__main__":
    _run_cases(Path(sys.argv[1]), Path(sys.argv[2]))
