"""torch's container formats, read by our own code (never `torch.load`): the legacy (pre-1.6,
non-zip) stream and the zip archive. Storages are checked against the bytes that hold them
before anything is allocated; the object pickle goes through the restricted unpickler.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import torch

from mamview.core.errors import InputRefused
from mamview.core.models.errors import SnapshotFormatError, UnsafeSnapshotError
from mamview.core.safety import printable

from .inert import InertObject
from .limits import MIB, Budget, SnapshotLimits, current_limits, over, short
from .safe_globals import Storage, StorageType
from .unpickler import RestrictedUnpickler, load_pickle, safe_pickle_load

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _pid_parts(pid: Any, where: str) -> tuple[str, tuple]:
    if not isinstance(pid, tuple) or not pid:
        raise SnapshotFormatError(f"{where}: malformed persistent id")
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    return kind, pid[1:]


def _storage_dtype(storage_type: Any, where: str) -> torch.dtype:
    if isinstance(storage_type, StorageType):
        return storage_type.dtype
    if isinstance(storage_type, torch.dtype):  # some writers record the dtype directly
        return storage_type
    raise UnsafeSnapshotError(f"{where}: storage of unexpected type {storage_type!r}")


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_legacy(f: BinaryIO, where: str, budget: Budget, size: int) -> Any:
    """Torch's pre-1.6 stream: magic, protocol, sys_info, object, storage keys, raw storages.

    `size` is the length of the stream: the storages it declares must fit in what follows the
    pickles, so nothing is allocated for data the file does not hold.
    """
    magic = safe_pickle_load(f, where, budget)
    if magic != _LEGACY_MAGIC:
        raise SnapshotFormatError(f"{where}: not a torch file (bad magic number)")
    protocol = safe_pickle_load(f, where, budget)
    if protocol != _LEGACY_PROTOCOL:
        raise SnapshotFormatError(f"{where}: unsupported legacy protocol {short(protocol)}")
    sys_info = safe_pickle_load(f, where, budget)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise SnapshotFormatError(f"{where}: big-endian files are not supported")

    roots: dict[str, torch.Tensor] = {}
    declared = [0]  # bytes of all root storages so far

    def persistent_load(pid: Any) -> Any:
        kind, data = _pid_parts(pid, where)
        if kind == "module":  # ('module', class, source_file, source): the class itself
            cls = data[0] if data else None
            if not (isinstance(cls, type) and issubclass(cls, InertObject)):
                raise UnsafeSnapshotError(f"{where}: module id names {short(cls)}")
            return cls
        if kind != "storage" or len(data) < 4:
            raise SnapshotFormatError(f"{where}: unknown persistent id {short(kind)}")
        storage_type, root_key, _location, numel = data[:4]
        view_metadata = data[4] if len(data) > 4 else None
        dtype = _storage_dtype(storage_type, where)
        root_key = _storage_key(root_key, where)
        if root_key not in roots:
            nbytes = _storage_bytes(numel, dtype, where)
            declared[0] += nbytes
            if declared[0] > size - f.tell():  # the raw data follows the pickles
                raise SnapshotFormatError(f"{where}: storages declare {declared[0]:,} bytes, "
                                          f"more than the file holds")
            roots[root_key] = torch.zeros(nbytes // _element_size(dtype), dtype=dtype)
        root = roots[root_key]
        if view_metadata:  # (view_key, offset, size): a slice of the root storage
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
                raise SnapshotFormatError(f"{where}: malformed storage view")
            _view_key, offset, length = view_metadata
            return Storage(root[int(offset):int(offset) + int(length)])
        return Storage(root)

    obj = load_pickle(RestrictedUnpickler(f, where=where, persistent_load=persistent_load,
                                          budget=budget), "corrupt object stream")
    keys = safe_pickle_load(f, where, budget)
    if isinstance(keys, (list, tuple)):
        keys = [_storage_key(k, where) for k in keys]
    if not isinstance(keys, list) or set(keys) != set(roots):
        # A referenced storage missing from the list would silently stay all zeros.
        raise SnapshotFormatError(f"{where}: storage key list does not match the tensors")
    for key in keys:
        root = roots[key]
        header = f.read(8)
        if len(header) != 8:
            raise SnapshotFormatError(f"{where}: truncated (storage {printable(key)[:40]})")
        numel = int.from_bytes(header, "little", signed=True)
        nbytes = root.numel() * _element_size(root.dtype)
        if numel != root.numel():
            raise SnapshotFormatError(f"{where}: storage {printable(key)[:40]} size mismatch")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise SnapshotFormatError(f"{where}: truncated (storage {printable(key)[:40]})")
        if nbytes:
            root.copy_(torch.frombuffer(bytearray(data), dtype=root.dtype))
        budget.check_time()
    return obj


def _storage_key(key: Any, where: str) -> str:
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, (str, int)) or isinstance(key, bool) or len(str(key)) > 100:
        raise SnapshotFormatError(f"{where}: malformed storage key")
    return str(key)


def _storage_bytes(numel: Any, dtype: torch.dtype, where: str) -> int:
    """Bytes a declared storage would take; refused before allocating if absurd."""
    if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
        raise SnapshotFormatError(f"{where}: malformed storage size {short(numel)}")
    return numel * _element_size(dtype)


def open_zip(f: BinaryIO, where: str, limits: SnapshotLimits) -> zipfile.ZipFile:
    """ZipFile over `f`, after checking its central directory's size and entry count.

    zipfile parses every directory entry on open, so a directory of millions of entries must
    be refused from its end record, before that parse.
    """
    try:
        f.seek(0, os.SEEK_END)
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # stable since Python 2
    except Exception as exc:  # zipfile raises OSError, struct.error, BadZipFile …
        raise SnapshotFormatError(f"{where}: damaged zip archive ({short(str(exc))})") from exc
    if end is None:
        raise SnapshotFormatError(f"{where}: not a zip archive")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
    cd_bytes = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > limits.max_zip_members:
        raise over(f"{where}: zip entries", entries, limits.max_zip_members, "max_zip_members")
    if cd_bytes > limits.max_zip_directory_bytes:
        raise over(f"{where}: zip directory bytes", cd_bytes, limits.max_zip_directory_bytes,
                   "max_zip_directory_bytes")
    try:
        f.seek(0)
        zf = zipfile.ZipFile(f)
    except Exception as exc:  # zipfile raises OSError, struct.error, BadZipFile …
        raise SnapshotFormatError(f"{where}: damaged zip archive ({short(str(exc))})") from exc
    if len(zf.infolist()) > limits.max_zip_members:  # the end record may lie about the count
        zf.close()
        raise over(f"{where}: zip entries", len(zf.infolist()), limits.max_zip_members,
                   "max_zip_members")
    return zf


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                limits: SnapshotLimits, cap: int | None = None) -> bytes:
    """One zip member's bytes, refused before reading if its declared size or ratio is absurd.

    zipfile stops inflating at the declared size (and fails the CRC if there was more), so the
    declared size bounds both memory and time.
    """
    cap = limits.max_file_bytes if cap is None else cap
    name = printable(info.filename)[:80]
    if info.file_size > cap:
        raise over(f"{where}: {name} uncompressed bytes", info.file_size, cap,
                   "max_file_bytes")
    if (info.compress_type != zipfile.ZIP_STORED and info.file_size > MIB
            and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1)):
        raise over(f"{where}: {name} compression ratio",
                   info.file_size // max(info.compress_size, 1), limits.max_zip_ratio,
                   "max_zip_ratio")
    try:
        with zf.open(info) as member:
            data = member.read(info.file_size + 1)
    except Exception as exc:  # BadZipFile (CRC), zlib.error, RuntimeError (encrypted) …
        raise SnapshotFormatError(f"{where}: {name} is damaged ({short(str(exc))})") from exc
    if len(data) != info.file_size:
        raise SnapshotFormatError(f"{where}: {name} does not have its declared size")
    return data


def _load_zip(f: BinaryIO, where: str, budget: Budget) -> Any:
    """Torch ≥1.6 zip archive: `<prefix>/data.pkl` + `<prefix>/data/<key>` storages."""
    limits = budget.limits
    with open_zip(f, where, limits) as zf:
        names = zf.namelist()
        pkls = [n for n in names if PurePosixPath(n).name == "data.pkl"
                and len(PurePosixPath(n).parts) == 2]
        if len(pkls) != 1:
            raise SnapshotFormatError(f"{where}: zip file is not a torch.save archive "
                                      "(TorchScript archives are not supported)")
        prefix = str(PurePosixPath(pkls[0]).parent)
        order = f"{prefix}/byteorder"
        if order in names and read_member(zf, zf.getinfo(order), where, limits,
                                          cap=64).strip() not in (b"little", b""):
            raise SnapshotFormatError(f"{where}: big-endian files are not supported")
        cache: dict[str, torch.Tensor] = {}
        total = [0]  # bytes of all storages read so far

        def persistent_load(pid: Any) -> Any:
            kind, data = _pid_parts(pid, where)
            if kind != "storage" or len(data) < 4:
                raise SnapshotFormatError(f"{where}: unknown persistent id {short(kind)}")
            storage_type, key, _location, numel = data[:4]
            dtype = _storage_dtype(storage_type, where)
            key = _storage_key(key, where)
            if key not in cache:
                member = f"{prefix}/data/{key}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise SnapshotFormatError(f"{where}: missing storage {key}") from None
                nbytes = _storage_bytes(numel, dtype, where)
                if info.file_size != nbytes:  # declared numel must match the actual bytes
                    raise SnapshotFormatError(f"{where}: storage {key} size mismatch")
                total[0] += nbytes
                if total[0] > limits.max_file_bytes:
                    raise over(f"{where}: storage bytes", total[0], limits.max_file_bytes,
                               "max_file_bytes")
                raw = bytearray(read_member(zf, info, where, limits))
                cache[key] = (torch.frombuffer(raw, dtype=dtype) if nbytes
                              else torch.zeros(0, dtype=dtype))
                budget.check_time()
            return Storage(cache[key])

        data_pkl = read_member(zf, zf.getinfo(pkls[0]), where, limits)
        return load_pickle(RestrictedUnpickler(io.BytesIO(data_pkl), where=where,
                                               persistent_load=persistent_load,
                                               budget=budget), "corrupt object stream")


def safe_torch_load(source: str | os.PathLike | bytes | BinaryIO, where: str = "",
                    limits: SnapshotLimits | None = None, deadline: float | None = None) -> Any:
    """Read a `torch.save` file (legacy or zip) without executing anything from it.

    Module objects come back as `InertObject` placeholders whose `__dict__` holds `_modules`,
    `_parameters`, `_buffers`, `args` …; tensors come back as plain CPU tensors. Everything the
    file declares is checked against `limits` (default `current_limits()`) before allocating.
    """
    limits = limits or current_limits()
    if isinstance(source, (str, os.PathLike)):
        where = where or printable(Path(source).name)
        source = read_regular_file(Path(source), limits.max_file_bytes, where)
    where = where or "snapshot"
    if isinstance(source, (bytes, bytearray)):
        if len(source) > limits.max_file_bytes:
            raise over(f"{where}: bytes", len(source), limits.max_file_bytes, "max_file_bytes")
        f: BinaryIO = io.BytesIO(source)
    else:
        f = source
    budget = Budget(limits, where, deadline)
    start = f.tell()
    size = f.seek(0, os.SEEK_END)
    f.seek(start)
    if zipfile.is_zipfile(f):
        data = f.read() if start else None  # the zip reader wants the archive at offset 0
        return _load_zip(io.BytesIO(data) if data is not None else f, where, budget)
    f.seek(start)
    if f.read(4) == b"PK\x03\x04":
        raise SnapshotFormatError(f"{where}: damaged or truncated zip archive")
    f.seek(start)
    try:
        is_tar = tarfile.is_tarfile(f)  # type: ignore[arg-type]
    except Exception:
        is_tar = False
    f.seek(start)
    if is_tar:
        raise SnapshotFormatError(f"{where}: pre-0.4 torch tar files are not supported")
    return _load_legacy(f, where, budget, size)


def read_regular_file(path: Path, cap: int, where: str) -> bytes:
    """A regular file's bytes, at most `cap` (a FIFO or device is refused, not waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise InputRefused(f"cannot read {printable(path)}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InputRefused(f"{printable(path)} is not a regular file")
        if st.st_size > cap:
            raise over(f"{where}: file bytes", st.st_size, cap, "max_file_bytes")
        try:
            data = fh.read(cap + 1)
        except OSError as exc:
            raise InputRefused(f"cannot read {printable(path)}: {exc.strerror or exc}") from exc
    if len(data) > cap:  # grew while we read it
        raise over(f"{where}: file bytes", len(data), cap, "max_file_bytes")
    return data
