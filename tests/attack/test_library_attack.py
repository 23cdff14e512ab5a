"""Attacks on the library through `mamview import`: header values as paths, odd file names,
DICOMDIR escapes, special files, colliding keys, file modes and leftovers of a killed import.

Every case runs the real command (in-process through `mamview.cli.main`, or in a child process
where a hang or another user is part of the attack) on DICOM files written here with pydicom,
and checks the exit status, the recorded problem, that nothing outside the library changed,
and that a good import afterwards works.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from mamview.cli import main
from tests.factories import write_dicomdir, write_mammogram

# pydicom warns about the invalid values these files carry on purpose
pytestmark = pytest.mark.filterwarnings("ignore:.*(Invalid value for VR|exceeds the maximum length)")

REPO = Path(__file__).resolve().parents[2]
HANG_TIMEOUT_S = 60


def cli(capsys, *args: str) -> tuple[int, str]:
    """Run `mamview ARGS` in this process; (exit status, stdout)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().out


def problems(capsys, home: Path) -> dict[str, dict]:
    """`mamview problems --json`, by path."""
    rc, out = cli(capsys, "--home", home, "problems", "--json")
    assert rc == 0
    return {r["path"]: r for r in json.loads(out)}


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every entry under `root` but `skip`: type, size and mtime (what a write would change)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        if skip is not None and Path(folder) == skip:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = Path(folder, name)
            if skip is not None and p == skip:
                continue
            info = p.lstat()
            out[str(p)] = (stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns)
    return out


def write_exam(folder: Path, pid: str = "P1", **kw) -> list[Path]:
    """The four standard views of one screening exam."""
    study = generate_uid()
    return [
        write_mammogram(folder / f"{lat}{view}.dcm", patient_id=pid, laterality=lat, view=view,
                        study_uid=study, **kw)
        for lat in "RL" for view in ("CC", "MLO")
    ]


def db_rows(home: Path, sql: str, args=()) -> list[tuple]:
    con = sqlite3.connect(home / "cache.sqlite")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def assert_previewed(home: Path, paths: list[Path]) -> None:
    """Each file is indexed and has a preview PNG inside the library."""
    for p in paths:
        rows = db_rows(home, "SELECT p.file FROM images i JOIN previews p USING (sop_instance_uid) "
                             "WHERE i.path = ?", [str(p.resolve())])
        assert rows, f"{p} has no preview"
        assert (home / "previews" / rows[0][0]).is_file()


@pytest.fixture
def root(tmp_path) -> Path:
    """A folder holding the inputs and, four levels down, the library (so `../../../../x`
    from a preview shard would land inside `root`, where the snapshot sees it)."""
    return tmp_path / "root"


@pytest.fixture
def home(root) -> Path:
    return root / "a" / "b" / "c" / "d" / "lib"


# ---------------------------------------------------------------- header values as paths


def test_path_like_uids_write_nothing_outside_and_do_not_block_later_imports(root, home, capsys):
    bad = root / "in"
    uids = {
        "dotdot.dcm": "../../../../x",
        "absolute.dcm": str(root / "abs"),
        "long.dcm": "1." * 40 + "1",  # 81 characters: digits and dots, but over 64
        "nul.dcm": "1.2.3\x00/../../y",
    }
    for name, uid in uids.items():
        write_mammogram(bad / name, sop_uid=uid)
    write_mammogram(bad / "bad-study.dcm", study_uid="../study")
    (home / "previews").mkdir(parents=True)
    before = tree(root, skip=home)

    rc, _ = cli(capsys, "--home", home, "import", bad)

    assert rc == 0
    assert tree(root, skip=home) == before
    found = problems(capsys, home)
    for name in [*uids, "bad-study.dcm"]:
        assert found[str((bad / name).resolve())]["reason"] == "invalid UID"
    assert db_rows(home, "SELECT count(*) FROM images") == [(0,)]

    good = write_exam(root / "good")
    rc, _ = cli(capsys, "--home", home, "import", root / "good")
    assert rc == 0
    assert_previewed(home, good)
    assert tree(root, skip=home).keys() - before.keys() == {str(root / "good")} | {str(p) for p in good}


def test_deflate_bomb_is_refused_within_the_cap_and_the_next_file_imports(root, home, capsys, monkeypatch):
    monkeypatch.setenv("MAMVIEW_MAX_INFLATED_BYTES", str(32 * 1024**2))
    bomb = write_deflate_bomb(root / "in" / "bomb.dcm", inflated=64 * 1024**2)
    assert bomb.stat().st_size < 200_000
    good = write_exam(root / "in" / "exam")
    t0 = time.perf_counter()

    rc, _ = cli(capsys, "--home", home, "import", root / "in")

    assert rc == 0
    assert time.perf_counter() - t0 < 20
    assert problems(capsys, home)[str(bomb)]["reason"] == "too large"
    assert_previewed(home, good)


def write_deflate_bomb(path: Path, inflated: int) -> Path:
    """A Deflated Explicit VR LE mammogram whose pixel data (zeros) inflates to `inflated` bytes;
    the header says 16384 columns × as many rows as that takes, so it is also self-consistent."""
    src = dcmread(write_mammogram(path.with_suffix(".src")))
    path.with_suffix(".src").unlink()
    del src.PixelData
    src.Columns = 16384
    src.Rows = inflated // (2 * 16384)
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, src)  # explicit VR little endian, like any deflated data set inside
    pixels = src.Rows * src.Columns * 2  # exactly what the header declares
    element = b"\xe0\x7f\x10\x00OW\x00\x00" + pixels.to_bytes(4, "little")
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [z.compress(header.getvalue() + element)]
    zeros = bytes(1024**2)
    for _ in range(pixels // len(zeros)):
        body.append(z.compress(zeros))
    body.append(z.compress(bytes(pixels % len(zeros))))
    body.append(z.flush())
    meta = BytesIO()
    src.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    write_file_meta_info(meta, src.file_meta, enforce_standard=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(body))
    return path


# ---------------------------------------------------------------- odd file names


def test_non_utf8_file_name_is_a_problem_for_that_file_alone(root, home, capsys):
    folder = root / "in"
    good = write_exam(folder)
    odd = write_mammogram(folder / "Müller ünïcode.dcm")  # valid UTF-8: imported
    raw = os.fsencode(str(folder)) + b"/latin1-M\xfcller.dcm"
    shutil.copyfile(odd, raw)

    for _ in range(2):  # and again: a rerun must not fail either
        rc, _ = cli(capsys, "--home", home, "import", folder)
        assert rc == 0
        found = problems(capsys, home)
        shown = str(folder.resolve()) + "/latin1-M\\xfcller.dcm"
        assert found[shown]["reason"] == "unusable file name"
        assert_previewed(home, good + [odd])


# ---------------------------------------------------------------- media


def test_dicomdir_reference_outside_the_media_is_refused_and_never_read(root, home, capsys):
    media = root / "cd"
    dicomdir = write_dicomdir(media)
    outside = write_mammogram(root / ("o" * 28 + ".dcm"))  # a valid image, would be imported
    ds = dcmread(dicomdir)
    images = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    # same text length as pydicom's PT000000\ST000000\SE000000\IM000000: record offsets stay right
    images[0].ReferencedFileID = ["..", "..", outside.name]
    os.symlink(outside, media / "LINK")
    images[1].ReferencedFileID = ["LINK"]
    ds.save_as(dicomdir)
    home.mkdir(parents=True)
    before = tree(root, skip=home)

    rc, _ = cli(capsys, "--home", home, "import", dicomdir)

    assert rc == 0
    assert db_rows(home, "SELECT count(*) FROM images") == [(0,)]
    refused = [r for r in problems(capsys, home).values() if r["reason"] == "outside the media"]
    assert len(refused) == 2
    assert tree(root, skip=home) == before


def test_truncated_dicomdir_is_a_recorded_problem(root, home, capsys):
    dicomdir = write_dicomdir(root / "cd")
    data = dicomdir.read_bytes()
    dicomdir.write_bytes(data[: int(len(data) * 0.9)])
    rc, _ = cli(capsys, "--home", home, "import", dicomdir)
    assert rc == 0
    assert problems(capsys, home)[str(dicomdir)]["reason"] == "unreadable DICOMDIR"


def test_fifos_are_never_opened(root, home):
    """A FIFO named DICOMDIR, and one among the files of a folder: opening either would hang."""
    media = root / "cd"
    media.mkdir(parents=True)
    os.mkfifo(media / "DICOMDIR")
    folder = root / "in"
    good = write_exam(folder)
    os.mkfifo(folder / "pipe.dcm")
    os.mkfifo(folder / "DICOMDIR")
    code = (
        "import sys; from mamview.cli import main; "
        f"a = main(['--home', {str(home)!r}, 'import', {str(media / 'DICOMDIR')!r}]); "
        f"b = main(['--home', {str(home)!r}, 'import', {str(folder)!r}]); sys.exit(a or b)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=HANG_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    reasons = dict(db_rows(home, "SELECT path, reason FROM problems"))
    assert reasons[str(media / "DICOMDIR")] == "unreadable DICOMDIR"
    assert reasons[str(folder / "pipe.dcm")] == "not a regular file"
    assert_previewed(home, good)


def test_missing_path_and_dangling_link_are_recorded(root, home, capsys):
    folder = root / "in"
    good = write_exam(folder)
    os.symlink(root / "gone.dcm", folder / "dangling.dcm")  # fails stat
    rc, _ = cli(capsys, "--home", home, "import", folder, root / "nonexistent")
    assert rc == 1  # partly done: one path does not exist
    found = problems(capsys, home)
    assert found[str(root / "nonexistent")]["reason"] == "not found"
    assert found[str(folder / "dangling.dcm")]["reason"] == "unreadable file"
    assert_previewed(home, good)

    (root / "nonexistent").mkdir()  # it appears: the old problem goes at the next import
    rc, _ = cli(capsys, "--home", home, "import", root / "nonexistent")
    assert rc == 0
    assert str(root / "nonexistent") not in problems(capsys, home)


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv to run the import as another user")
def test_unreadable_folder_and_unstatable_file_are_recorded():
    """As `nobody` (root reads everything): a folder it may not list, one it may list but not
    enter (so its files fail stat)."""
    base = Path(tempfile.mkdtemp(prefix="mamview-attack-"))
    try:
        os.chmod(base, 0o755)
        home = base / "lib"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        media = base / "in"
        good = write_exam(media / "exam")
        write_mammogram(media / "secret" / "a.dcm")
        write_mammogram(media / "nostat" / "b.dcm")
        for folder, _, files in os.walk(media):  # the test process may have a private umask
            os.chmod(folder, 0o755)
            for name in files:
                os.chmod(Path(folder, name), 0o644)
        os.chmod(media / "secret", 0o700)
        os.chmod(media / "nostat", 0o744)  # listable, not searchable: stat of b.dcm fails
        done = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-m", "mamview", "--home", str(home), "import", str(media)],
            cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
            env={**os.environ, "HOME": str(home)},
        )
        assert done.returncode == 0, done.stderr
        reasons = dict(db_rows(home, "SELECT path, reason FROM problems"))
        assert reasons[str(media / "secret")] == "unreadable folder"
        assert reasons[str(media / "nostat" / "b.dcm")] == "unreadable file"
        assert_previewed(home, good)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- keys


def test_a_bar_in_ids_never_merges_two_women(root, home, capsys):
    study = "1.2.826.0.1.3680043.8.498.77"
    write_exam(root / "in" / "w1", pid="C", extra={"IssuerOfPatientID": "A|B"})
    write_exam(root / "in" / "w2", pid="B|C", extra={"IssuerOfPatientID": "A"})
    write_exam(root / "in" / "w3", pid="no-id:" + study)
    no_id = write_mammogram(root / "in" / "w4" / "x.dcm", patient_id="", study_uid=study)
    write_exam(root / "in" / "w5", pid="50%|x")
    write_exam(root / "in" / "w6", pid="50%7Cx")

    rc, _ = cli(capsys, "--home", home, "import", root / "in")

    assert rc == 0
    patients = db_rows(home, "SELECT patient_key, patient_id, issuer FROM patients")
    assert len(patients) == 6
    assert len({k for k, _, _ in patients}) == 6
    assert db_rows(home, "SELECT count(*) FROM exams") == [(6,)]
    assert db_rows(home, "SELECT patient_key FROM images WHERE path = ?", [str(no_id)]) == [
        (f"|no-id:{study}",)
    ]


# ---------------------------------------------------------------- private files


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_library_folders_are_700_and_files_600(root, home, capsys):
    rc, _ = cli(capsys, "--home", home, "import", write_exam(root / "in")[0].parent)
    assert rc == 0
    for folder in (home, home / "previews", home / "inbox", home / "logs", home / "models"):
        assert mode(folder) == 0o700, folder
    pngs = list((home / "previews").rglob("*.png"))
    assert len(pngs) == 4
    for png in pngs:
        assert mode(png) == 0o600 and mode(png.parent) == 0o700
    for name in ("cache.sqlite", "cache.sqlite-wal", "cache.sqlite-shm"):
        if (home / name).exists():
            assert mode(home / name) == 0o600, name


def test_an_old_open_library_is_tightened(root, home, capsys):
    rc, _ = cli(capsys, "--home", home, "import", write_exam(root / "in")[0].parent)
    assert rc == 0
    for p in (home, home / "previews", home / "inbox"):
        os.chmod(p, 0o755)
    os.chmod(home / "cache.sqlite", 0o644)
    rc, _ = cli(capsys, "--home", home, "patients")
    assert rc == 0
    assert [mode(p) for p in (home, home / "previews", home / "inbox", home / "cache.sqlite")] == [
        0o700, 0o700, 0o700, 0o600
    ]


# ---------------------------------------------------------------- leftovers


def test_orphan_preview_temp_files_are_removed_at_the_next_import(root, home, capsys):
    folder = write_exam(root / "in")[0].parent
    rc, _ = cli(capsys, "--home", home, "import", folder)
    assert rc == 0
    shard = next(p for p in (home / "previews").iterdir() if p.is_dir())
    old = shard / "0123.png.abcd1234.tmp"
    fresh = shard / "4567.png.efgh5678.tmp"  # could be a concurrent import's: kept
    for p in (old, fresh):
        p.write_bytes(b"half a png")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))

    # the next import is a new process (the one that left the files was killed)
    done = subprocess.run([sys.executable, "-m", "mamview", "--home", str(home), "import", str(folder)],
                          cwd=REPO, capture_output=True, text=True, timeout=HANG_TIMEOUT_S)

    assert done.returncode == 0, done.stderr
    assert not old.exists()
    assert fresh.exists()
