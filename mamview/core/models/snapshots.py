"""Safe loading and one-time conversion of the official Mirai release files (spec §5-6).

The release ships *whole pickled modules* (`torch.save(model)`) and a pickled calibrator. Loading
them the usual way (`torch.load(weights_only=False)`, `pickle.load`) runs whatever the pickle
names. We never do that. `RestrictedUnpickler.find_class` resolves globals only from a fixed
table:

* inert placeholders (`InertObject` subclasses) for the model classes (`onconet.*`,
  `torch.nn.*`, `argparse.Namespace`, `sklearn.*`, unknown `numpy.*`). A placeholder's
  constructor and `__setstate__` only *record* their arguments, so walking `_modules`,
  `_parameters` and `_buffers` recovers a state dict and the pickled hyper-parameters;
* our own tensor rebuild functions in place of `torch._utils._rebuild_*`, and dtype markers in
  place of the storage classes;
* a few data constructors that cannot run code (OrderedDict, set, numpy's array/scalar
  reconstructors, latin-1 `_codecs.encode`, …).

Anything else raises `UnsafeSnapshotError` naming the refused global, before anything runs. The
torch container formats are read by our own code too (not `torch.load`): the legacy (pre-1.6,
non-zip) stream and the zip archive.

`convert_release` turns the release into our own format once — `weights.pt` (a plain state dict,
loadable with `torch.load(weights_only=True)`), `config.json` (MiraiConfig + provenance) and
`calibrator.json` — and `load_converted` reads that back.

Key mapping from the official snapshots to `MiraiNet` (everything else is refused, except the
listed heads the released inference computes and then discards):

    encoder      `_model.downsampler.*`            → `image_encoder.downsampler.*`
                 `_model.layer{L}_{j}.*`            → `image_encoder.layer{L}_{j}.*`
                 `_model.pool.*`, `_model.fc.*`, `_model.prob_of_failure_layer.*` → dropped
    transformer  `mask_embedding.*`, `projection_layer.*`, `transformer.*`, `pool.*`,
                 `prob_of_failure_layer.*`          → `aggregator.` + same name
                 `kept_images_vec`, `pred_masked_img_fc.*`, `fc.*` → dropped
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import datetime
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
import torch

from .base import ModelIdentity, ModelUnavailable
from .mirai import (MiraiCalibrator, MiraiConfig, MiraiNet, PlattTerm, check_preprocessing_version,
                    state_dict_sha256)
from .preprocess import PREPROCESSING_VERSION

# Official file names (spec §6.1). Older releases spell the calibrator differently.
ENCODER_FILES = ("mgh_mammo_MIRAI_Base_May20_2019.p",)
TRANSFORMER_FILES = ("mgh_mammo_cancer_MIRAI_Transformer_Jan13_2020.p",)
CALIBRATOR_FILES = ("Mirai_calibrator_mar12_2022.p", "Mirai_pred_rf_callibrator_mar12_2022.p",
                    "MIRAI_FULL_PRED_RF.callibrator.p")

# SHA-256 reported by a third party (spec §6.1, unverified): a match is recorded, not required.
PUBLISHED_SHA256 = {
    "mgh_mammo_MIRAI_Base_May20_2019.p":
        "e66261f434474686462e5c7035de37452f47e4e7cc8831086be19397383e8af3",
    "mgh_mammo_cancer_MIRAI_Transformer_Jan13_2020.p":
        "cb4ef50459d747d38edfb846b3cd29869ccad9b7e291eb5f2fe66559d914e610",
    "Mirai_calibrator_mar12_2022.p":
        "822092d81272c97883d54a4bde0bc1cdcebadb861dea8467cb93201fedb73efa",
}

CONVERTED_FORMAT = "mamview-mirai/1"
MODEL_SUBDIR = "mirai"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_MEMBER_BYTES = 2 << 30  # refuse absurd archive members instead of exhausting memory


class UnsafeSnapshotError(Exception):
    """A snapshot file references something we will not load; nothing from it was executed."""


class SnapshotFormatError(ValueError):
    """A snapshot file is readable but not shaped like an official Mirai file."""


# ----------------------------------------------------------------------------------------------
# Inert placeholders


class InertObject:
    """Stands in for a pickled class: records constructor args and state, runs nothing."""

    _pickle_module = ""
    _pickle_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":
        obj = object.__new__(cls)
        if args or kwargs:
            obj.__dict__["_pickle_args"] = (args, kwargs)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args)
        pass

    def __setstate__(self, state: Any) -> None:
        slots = None
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], (dict,
                                                                               type(None))):
            state, slots = state
        for part in (state, slots):
            if isinstance(part, dict):
                # Dunder keys could shadow methods pickle looks up on the instance
                # (e.g. __setstate__); they are never needed to read a module tree.
                self.__dict__.update({k: v for k, v in part.items()
                                      if not (isinstance(k, str) and k.startswith("__"))})
            elif part is not None:
                self.__dict__["_pickle_state"] = part

    # list/dict subclasses are rebuilt with APPENDS / SETITEMS
    def append(self, item: Any) -> None:
        self.__dict__.setdefault("_pickle_items", []).append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self.__dict__.setdefault("_pickle_items", []).extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_pickle_mapping", {})[key] = value

    @classmethod
    def qualified_name(cls) -> str:
        """'module.Class' of the pickled global this placeholder stands for."""
        return f"{cls._pickle_module}.{cls._pickle_name}"

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name()}>"


_stub_classes: dict[tuple[str, str], type[InertObject]] = {}


def _stub(module: str, name: str) -> type[InertObject]:
    key = (module, name)
    if key not in _stub_classes:
        _stub_classes[key] = type(name, (InertObject,), {
            "_pickle_module": module, "_pickle_name": name, "__module__": __name__,
        })
    return _stub_classes[key]


def class_name(obj: Any) -> str:
    """The pickled class name of a placeholder ('' for anything else)."""
    return type(obj)._pickle_name if isinstance(obj, InertObject) else ""


# ----------------------------------------------------------------------------------------------
# Safe replacements for the callables pickles legitimately use


@dataclass(frozen=True)
class _StorageType:
    """Marker resolved for `torch.FloatStorage` & co.: only carries the dtype."""

    name: str
    dtype: torch.dtype


class _Storage:
    """A flat tensor standing for one pickled storage (filled in place later for legacy files)."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_TORCH_DTYPES = {name: getattr(torch, name) for name in (
    "float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
    "bool", "float", "double", "half", "long", "int", "short")}


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if not isinstance(storage, _Storage):
        raise UnsafeSnapshotError(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise SnapshotFormatError("malformed tensor geometry")
    if all(size):  # bounds check ourselves: never view memory outside the storage
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.flat.numel():
            raise SnapshotFormatError("tensor extends beyond its storage")
    flat = storage.flat
    return flat.as_strided(size, stride, flat.storage_offset() + offset)


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> torch.Tensor:
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafeSnapshotError("parameter rebuilt from a non-tensor")
    return data  # plain tensor: we never need autograd


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter):
        raise UnsafeSnapshotError("tensor rebuilt by an unexpected function")
    return func(*args)  # subclass type and Python state are ignored on purpose


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); nothing else is needed.
    if not isinstance(text, str) or encoding.lower().replace("_", "-") not in (
            "latin1", "latin-1", "iso-8859-1", "utf-8", "utf8"):
        raise UnsafeSnapshotError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode(encoding, errors)


_CONTAINERS = (collections.OrderedDict, dict, list, set, frozenset, tuple, object)


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    # copyreg._reconstructor, restricted to placeholders and plain containers.
    if isinstance(cls, type) and issubclass(cls, InertObject):
        return cls.__new__(cls)
    if cls in _CONTAINERS and base in _CONTAINERS:
        return cls() if state is None else cls(state)
    raise UnsafeSnapshotError(f"refused copyreg._reconstructor for {cls!r}")


def _newobj(cls: Any, *args: Any) -> Any:
    if isinstance(cls, type) and (issubclass(cls, InertObject) or cls in _CONTAINERS):
        return cls.__new__(cls, *args)
    raise UnsafeSnapshotError(f"refused copyreg.__newobj__ for {cls!r}")


class _TensorType:
    """Marker for `torch.Tensor` when a pickle names it (never instantiated)."""


def _device(*args: Any) -> str:
    # torch.device('cuda', 0) inside pickled args: only ever a label for us.
    return ":".join(str(a) for a in args)


def _np_multiarray() -> Any:
    # numpy 2 moved numpy.core to numpy._core (the old path warns); numpy 1.26 has only the old.
    core = getattr(np, "_core", None)
    return core.multiarray if core is not None else np.core.multiarray


def _safe_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
        ("collections", "Counter"): collections.Counter,
        ("collections", "deque"): collections.deque,
        ("_codecs", "encode"): _codecs_encode,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("copyreg", "__newobj__"): _newobj,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch._utils", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorType,
        ("torch._tensor", "Tensor"): _TensorType,
        ("torch.nn.parameter", "Parameter"): _TensorType,
        ("torch", "Size"): tuple,
        ("torch", "device"): _device,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("datetime", "datetime"): datetime.datetime,
        ("datetime", "date"): datetime.date,
        ("datetime", "time"): datetime.time,
        ("datetime", "timedelta"): datetime.timedelta,
        ("datetime", "timezone"): datetime.timezone,
    }
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "object", "list", "dict",
                 "tuple", "int", "float", "str", "bytes", "bool", "range"):
        table[("builtins", name)] = getattr(builtins, name)
    for name, dtype in _STORAGE_DTYPES.items():
        for mod in ("torch", "torch.cuda", "torch.storage"):
            table[(mod, name)] = _StorageType(name, dtype)
    for name, dtype in _TORCH_DTYPES.items():
        table[("torch", name)] = dtype
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        for name in ("_reconstruct", "scalar"):
            table[(mod, name)] = getattr(_np_multiarray(), name)
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _np_frombuffer
    return table


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeSnapshotError("refused numpy _frombuffer with an object dtype")
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order="F" if order == "F" else "C").copy()


_SAFE_GLOBALS = _safe_globals()

# Whole namespaces whose globals become placeholders: classes the snapshots are built from, and
# data-ish libraries the pickled training `args` may carry. Placeholders never execute anything.
_INERT_PREFIXES = ("onconet", "torch.nn", "sklearn", "numpy", "argparse")


def _is_inert(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in _INERT_PREFIXES)


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves globals only from the allow-list above (never imports).

    `persistent_load` is supplied per file format by the torch readers; plain pickles (the
    calibrator) must not use persistent ids.
    """

    def __init__(self, file: BinaryIO, *, where: str = "snapshot",
                 persistent_load: Callable[[Any], Any] | None = None, encoding: str = "utf-8"):
        super().__init__(file, encoding=encoding)
        self.where = where
        self._persistent = persistent_load
        self.refused: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell some globals the Python 2 way (`__builtin__.set`,
        # `copy_reg`); those names never collide with Python 3 ones, so map them always.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if _is_inert(module) and name.isidentifier():
            return _stub(module, name)
        self.refused.append(f"{module}.{name}")
        raise UnsafeSnapshotError(
            f"refused to load {self.where}: it references the global '{module}.{name}', which "
            f"is not on the allow-list for Mirai snapshot files. Nothing from the file was "
            f"executed. If this is a genuine official file, please report this message.")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise SnapshotFormatError(f"{self.where}: unexpected persistent id in a plain pickle")
        return self._persistent(pid)


def safe_pickle_load(f: BinaryIO, where: str = "pickle") -> Any:
    """Load a plain pickle (e.g. the calibrator) through the restricted unpickler."""
    try:
        return RestrictedUnpickler(f, where=where).load()
    except (UnsafeSnapshotError, SnapshotFormatError):
        raise
    except Exception as exc:  # truncated or garbage data
        raise SnapshotFormatError(f"{where}: not a readable pickle ({exc})") from exc


# ----------------------------------------------------------------------------------------------
# torch containers


def _pid_parts(pid: Any, where: str) -> tuple[str, tuple]:
    if not isinstance(pid, tuple) or not pid:
        raise SnapshotFormatError(f"{where}: malformed persistent id")
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    return kind, pid[1:]


def _storage_dtype(storage_type: Any, where: str) -> torch.dtype:
    if isinstance(storage_type, _StorageType):
        return storage_type.dtype
    if isinstance(storage_type, torch.dtype):  # some writers record the dtype directly
        return storage_type
    raise UnsafeSnapshotError(f"{where}: storage of unexpected type {storage_type!r}")


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _load_legacy(f: BinaryIO, where: str) -> Any:
    """Torch's pre-1.6 stream: magic, protocol, sys_info, object, storage keys, raw storages."""
    magic = safe_pickle_load(f, where)
    if magic != _LEGACY_MAGIC:
        raise SnapshotFormatError(f"{where}: not a torch file (bad magic number)")
    protocol = safe_pickle_load(f, where)
    if protocol != _LEGACY_PROTOCOL:
        raise SnapshotFormatError(f"{where}: unsupported legacy protocol {protocol!r}")
    sys_info = safe_pickle_load(f, where)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise SnapshotFormatError(f"{where}: big-endian files are not supported")

    roots: dict[str, torch.Tensor] = {}

    def persistent_load(pid: Any) -> Any:
        kind, data = _pid_parts(pid, where)
        if kind == "module":  # ('module', class, source_file, source): the class itself
            cls = data[0] if data else None
            if not (isinstance(cls, type) and issubclass(cls, InertObject)):
                raise UnsafeSnapshotError(f"{where}: module id names {cls!r}")
            return cls
        if kind != "storage" or len(data) < 4:
            raise SnapshotFormatError(f"{where}: unknown persistent id {kind!r}")
        storage_type, root_key, _location, numel = data[:4]
        view_metadata = data[4] if len(data) > 4 else None
        dtype = _storage_dtype(storage_type, where)
        root_key = str(root_key)
        if root_key not in roots:
            roots[root_key] = torch.zeros(int(numel), dtype=dtype)
        root = roots[root_key]
        if view_metadata:  # (view_key, offset, size): a slice of the root storage
            _view_key, offset, size = view_metadata
            return _Storage(root[int(offset):int(offset) + int(size)])
        return _Storage(root)

    try:
        obj = RestrictedUnpickler(f, where=where, persistent_load=persistent_load).load()
    except (UnsafeSnapshotError, SnapshotFormatError):
        raise
    except Exception as exc:
        raise SnapshotFormatError(f"{where}: corrupt object stream ({exc})") from exc
    keys = safe_pickle_load(f, where)
    if not isinstance(keys, (list, tuple)) or set(map(str, keys)) != set(roots):
        # A referenced storage missing from the list would silently stay all zeros.
        raise SnapshotFormatError(f"{where}: storage key list does not match the tensors")
    for key in keys:
        root = roots.get(str(key))
        if root is None:
            raise SnapshotFormatError(f"{where}: storage {key!r} is listed but never used")
        header = f.read(8)
        if len(header) != 8:
            raise SnapshotFormatError(f"{where}: truncated (storage {key})")
        numel = int.from_bytes(header, "little", signed=True)
        nbytes = numel * _element_size(root.dtype)
        if numel != root.numel() or nbytes > _MAX_MEMBER_BYTES:
            raise SnapshotFormatError(f"{where}: storage {key} size mismatch")
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise SnapshotFormatError(f"{where}: truncated (storage {key})")
        if nbytes:
            root.copy_(torch.frombuffer(bytearray(data), dtype=root.dtype))
    return obj


def _load_zip(f: BinaryIO, where: str) -> Any:
    """Torch ≥1.6 zip archive: `<prefix>/data.pkl` + `<prefix>/data/<key>` storages."""
    with zipfile.ZipFile(f) as zf:
        names = zf.namelist()
        pkls = [n for n in names if PurePosixPath(n).name == "data.pkl"
                and len(PurePosixPath(n).parts) == 2]
        if len(pkls) != 1:
            raise SnapshotFormatError(f"{where}: zip file is not a torch.save archive "
                                      "(TorchScript archives are not supported)")
        prefix = str(PurePosixPath(pkls[0]).parent)
        order = f"{prefix}/byteorder"
        if order in names and zf.read(order).strip() not in (b"little", b""):
            raise SnapshotFormatError(f"{where}: big-endian files are not supported")
        cache: dict[str, torch.Tensor] = {}

        def persistent_load(pid: Any) -> Any:
            kind, data = _pid_parts(pid, where)
            if kind != "storage" or len(data) < 4:
                raise SnapshotFormatError(f"{where}: unknown persistent id {kind!r}")
            storage_type, key, _location, numel = data[:4]
            dtype = _storage_dtype(storage_type, where)
            key = str(key)
            if key not in cache:
                member = f"{prefix}/data/{key}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise SnapshotFormatError(f"{where}: missing storage {key}") from None
                nbytes = int(numel) * _element_size(dtype)
                if info.file_size != nbytes or nbytes > _MAX_MEMBER_BYTES:
                    raise SnapshotFormatError(f"{where}: storage {key} size mismatch")
                raw = bytearray(zf.read(member))
                cache[key] = (torch.frombuffer(raw, dtype=dtype).clone() if nbytes
                              else torch.zeros(0, dtype=dtype))
            return _Storage(cache[key])

        try:
            with zf.open(pkls[0]) as pf:
                return RestrictedUnpickler(io.BytesIO(pf.read()), where=where,
                                           persistent_load=persistent_load).load()
        except (UnsafeSnapshotError, SnapshotFormatError):
            raise
        except Exception as exc:
            raise SnapshotFormatError(f"{where}: corrupt object stream ({exc})") from exc


def safe_torch_load(source: str | os.PathLike | bytes | BinaryIO, where: str = "") -> Any:
    """Read a `torch.save` file (legacy or zip) without executing anything from it.

    Module objects come back as `InertObject` placeholders whose `__dict__` holds `_modules`,
    `_parameters`, `_buffers`, `args` …; tensors come back as plain CPU tensors.
    """
    if isinstance(source, (bytes, bytearray)):
        f: BinaryIO = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        f = io.BytesIO(Path(source).read_bytes())
        where = where or Path(source).name
    else:
        f = source
    where = where or "snapshot"
    start = f.tell()
    if zipfile.is_zipfile(f):
        f.seek(start)
        return _load_zip(f, where)
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
    return _load_legacy(f, where)


# ----------------------------------------------------------------------------------------------
# Walking placeholder module trees


def _attrs(obj: Any) -> dict[str, Any]:
    return obj.__dict__ if isinstance(obj, InertObject) else {}


def _children(obj: Any) -> dict[str, Any]:
    mods = _attrs(obj).get("_modules")
    return dict(mods) if isinstance(mods, dict) else {}


def child(obj: Any, path: str) -> Any:
    """Descend `a.b.c` through `_modules`; SnapshotFormatError if a step is missing."""
    for part in path.split(".") if path else []:
        kids = _children(obj)
        if part not in kids or kids[part] is None:
            raise SnapshotFormatError(f"module {class_name(obj) or obj!r} has no child {part!r}")
        obj = kids[part]
    return obj


def module_state_dict(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Rebuild `state_dict()` of a placeholder module tree (parameters, persistent buffers)."""
    out: dict[str, torch.Tensor] = {}
    attrs = _attrs(obj)
    non_persistent = attrs.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (attrs.get(group) or {}).items():
            if tensor is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise SnapshotFormatError(f"{prefix}{name} is not a tensor")
            out[prefix + str(name)] = tensor
    for name, sub in _children(obj).items():
        if sub is not None:
            out.update(module_state_dict(sub, f"{prefix}{name}."))
    return out


def _unwrap(obj: Any, where: str) -> Any:
    """What `load_model` accepts: a dict with 'model', or DataParallel around the module."""
    if isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if class_name(obj) == "DataParallel":
        obj = child(obj, "module")
    if not isinstance(obj, InertObject):
        raise SnapshotFormatError(f"{where}: expected a pickled model, found {type(obj).__name__}")
    return obj


def _plain(value: Any) -> Any:
    """numpy scalars/arrays → Python values, recursively for lists/tuples/dicts."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _arg(args: Any, name: str, default: Any = None) -> Any:
    return _plain(_attrs(args).get(name, default))


# ----------------------------------------------------------------------------------------------
# Reading the three release files


@dataclass
class EncoderInfo:
    """What the encoder snapshot says about itself."""

    state: dict[str, torch.Tensor]
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    num_chan: int
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TransformerInfo:
    """What the transformer snapshot says about itself, and where each value came from."""

    state: dict[str, torch.Tensor]
    hidden_dim: int
    image_dim: int
    num_heads: int
    num_layers: int
    embed_dim: int
    max_time: int
    view_pool: str
    risk_factors: tuple[tuple[str, int], ...]
    max_followup: int
    evidence: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: How official state-dict keys become MiraiNet keys: (snapshot, official prefix, our prefix).
#: The first matching prefix wins; None drops heads the released inference computes and
#: discards. A key matching no row is refused, so nothing unknown is silently ignored.
OFFICIAL_KEY_MAPPING: tuple[tuple[str, str, str | None], ...] = (
    ("encoder", "_model.downsampler.", "image_encoder.downsampler."),
    ("encoder", "_model.layer", "image_encoder.layer"),
    ("encoder", "_model.pool.", None),  # the encoder's own risk-factor heads
    ("encoder", "_model.fc.", None),
    ("encoder", "_model.prob_of_failure_layer.", None),
    ("transformer", "mask_embedding.", "aggregator.mask_embedding."),
    ("transformer", "projection_layer.", "aggregator.projection_layer."),
    ("transformer", "transformer.", "aggregator.transformer."),
    ("transformer", "pool.", "aggregator.pool."),
    ("transformer", "prob_of_failure_layer.", "aggregator.prob_of_failure_layer."),
    ("transformer", "kept_images_vec", None),  # all ones; only fixes the view count at 4
    ("transformer", "pred_masked_img_fc.", None),  # training-time auxiliary head
    ("transformer", "fc.", None),  # 612→2 classifier whose output is overwritten
)


def _map_key(part: str, key: str) -> str | None:
    for snapshot, official, ours in OFFICIAL_KEY_MAPPING:
        if snapshot == part and key.startswith(official):
            return None if ours is None else ours + key[len(official):]
    raise SnapshotFormatError(f"unexpected {part} key {key!r}")


def map_encoder_key(key: str) -> str | None:
    """Official encoder key → MiraiNet key, or None for heads the inference discards."""
    return _map_key("encoder", key)


def map_transformer_key(key: str) -> str | None:
    """Official transformer key → MiraiNet key, or None for parts unused at inference."""
    return _map_key("transformer", key)


def read_encoder(obj: Any, where: str = "encoder") -> EncoderInfo:
    """Encoder snapshot (CustomResnet → ResNet) → trunk state dict and shape hyper-parameters."""
    root = _unwrap(obj, where)
    resnet = child(root, "_model") if "_model" in _children(root) else root
    args = _attrs(resnet).get("args") or _attrs(root).get("args")
    if _arg(args, "use_precomputed_hiddens"):
        raise SnapshotFormatError(f"{where}: encoder was saved with use_precomputed_hiddens")
    state = module_state_dict(resnet, "_model.")
    kids = _children(resnet)
    stages: dict[int, int] = {}
    for name in kids:
        if name.startswith("layer") and "_" in name:
            stage, _, j = name[5:].partition("_")
            if stage.isdigit() and j.isdigit():
                stages[int(stage)] = max(stages.get(int(stage), 0), int(j) + 1)
                block = kids[name]
                if class_name(block) and class_name(block) != "BasicBlock":
                    raise SnapshotFormatError(f"{where}: {class_name(block)} blocks are not "
                                              "supported (expected BasicBlock / ResNet-18)")
    if not stages or sorted(stages) != list(range(1, len(stages) + 1)):
        raise SnapshotFormatError(f"{where}: no ResNet stages layer1_0… found")
    blocks = tuple(stages[s] for s in sorted(stages))
    widths = tuple(int(state[f"_model.layer{s}_0.conv1.weight"].shape[0]) for s in sorted(stages))
    stem = state["_model.downsampler.conv1.weight"]
    if stem.shape[0] != widths[0] or tuple(stem.shape[2:]) != (7, 7):
        raise SnapshotFormatError(f"{where}: unexpected stem {tuple(stem.shape)}")
    return EncoderInfo(state, widths, blocks, int(stem.shape[1]),
                       {k: _arg(args, k) for k in ("block_layout", "img_size", "img_mean",
                                                    "img_std", "num_chan", "img_only_dim",
                                                    "hidden_dim", "pool_name")})


_POOL_KINDS = {"Simple_AttentionPool": "attention", "GlobalMaxPool": "max",
               "GlobalAvgPool": "avg"}


def read_transformer(obj: Any, where: str = "transformer") -> TransformerInfo:
    """Transformer snapshot (AllImageTransformer) → aggregator state dict + hyper-parameters.

    Uncertain hyper-parameters are read, never assumed: heads from `dim_per_head` on the
    attention module and `args.num_heads` (they must agree), the view pool from the pickled
    class of `pool.internal_pool` cross-checked with the presence of `attention_fc` weights.
    """
    root = _unwrap(obj, where)
    args = _attrs(root).get("args")
    ev: dict[str, str] = {}
    notes: list[str] = []
    state = module_state_dict(root)
    for flag in ("pred_both_sides", "make_probs_indep"):
        if _arg(args, flag):
            raise SnapshotFormatError(f"{where}: args.{flag}=True is not supported")
    if _arg(args, "survival_analysis_setup") is False:
        raise SnapshotFormatError(f"{where}: model was not trained with the hazard head")

    proj = state.get("projection_layer.weight")
    if proj is None:
        raise SnapshotFormatError(f"{where}: no projection_layer")
    hidden, image_dim = int(proj.shape[0]), int(proj.shape[1])

    trans = child(root, "transformer")
    layers = sorted(int(n.rsplit("_", 1)[1]) for n in _children(trans)
                    if n.startswith("transformer_layer_"))
    if layers != list(range(len(layers))) or not layers:
        raise SnapshotFormatError(f"{where}: transformer layers missing or not numbered 0…")
    num_layers = len(layers)
    args_layers = _arg(args, "num_layers")
    if args_layers is not None and int(args_layers) != num_layers:
        raise SnapshotFormatError(f"{where}: args.num_layers={args_layers} but {num_layers} "
                                  "layers are stored")
    ev["num_layers"] = f"{num_layers} transformer_layer_* modules; args.num_layers={args_layers}"

    mha = child(trans, "transformer_layer_0.multihead_attention")
    dph = _plain(_attrs(mha).get("dim_per_head"))
    args_heads = _arg(args, "num_heads")
    heads_from_dph = hidden // int(dph) if dph else None
    if dph and hidden % int(dph):
        raise SnapshotFormatError(f"{where}: dim_per_head={dph} does not divide {hidden}")
    if heads_from_dph and args_heads is not None and int(args_heads) != heads_from_dph:
        raise SnapshotFormatError(f"{where}: args.num_heads={args_heads} contradicts "
                                  f"dim_per_head={dph}")
    num_heads = heads_from_dph or (int(args_heads) if args_heads is not None else None)
    if not num_heads:
        raise SnapshotFormatError(f"{where}: the number of attention heads is not recorded "
                                  "(neither dim_per_head nor args.num_heads); refusing to guess")
    ev["num_heads"] = f"dim_per_head={dph}; args.num_heads={args_heads}"

    pool = child(root, "pool")
    internal = _children(pool).get("internal_pool")
    pool_cls = class_name(internal)
    has_attn = "pool.internal_pool.attention_fc.weight" in state
    view_pool = _POOL_KINDS.get(pool_cls)
    if view_pool is None:
        if internal is not None:
            raise SnapshotFormatError(f"{where}: unsupported view pool {pool_cls!r}")
        view_pool = "attention" if has_attn else None
    if view_pool is None or (view_pool == "attention") != has_attn:
        raise SnapshotFormatError(f"{where}: view pool class {pool_cls!r} does not match the "
                                  f"weights (attention_fc present: {has_attn})")
    ev["view_pool"] = f"pool.internal_pool class {pool_cls!r}; attention_fc weights: {has_attn}"

    # Risk-factor order and class counts from args, verified against the head shapes.
    heads = [n[:-3] for n in _children(pool) if n.endswith("_fc") and n != "internal_pool"]
    keys = _arg(args, "risk_factor_keys") or heads
    to_n = _arg(args, "risk_factor_key_to_num_class") or {}
    rfs = []
    for key in keys:
        w = state.get(f"pool.{key}_fc.weight")
        if w is None:
            raise SnapshotFormatError(f"{where}: risk factor {key!r} has no head")
        n = int(w.shape[0])
        if key in to_n and int(to_n[key]) != n:
            raise SnapshotFormatError(f"{where}: risk factor {key!r} has {n} outputs, args say "
                                      f"{to_n[key]}")
        rfs.append((str(key), n))
    if set(k for k, _ in rfs) != set(heads):
        raise SnapshotFormatError(f"{where}: risk-factor heads {sorted(set(heads))} differ from "
                                  "args.risk_factor_keys")
    ev["risk_factors"] = ("args.risk_factor_keys" if _arg(args, "risk_factor_keys")
                          else "module order of pool.*_fc")

    hazard = state.get("prob_of_failure_layer.hazard_fc.weight")
    if hazard is None:
        raise SnapshotFormatError(f"{where}: no prob_of_failure_layer")
    max_followup = int(hazard.shape[0])
    if int(hazard.shape[1]) != hidden + sum(n for _, n in rfs):
        raise SnapshotFormatError(f"{where}: hazard layer input {hazard.shape[1]} ≠ "
                                  f"{hidden} + risk factors")
    mask = state.get("prob_of_failure_layer.upper_triagular_mask")
    if mask is not None and not torch.equal(mask.float(),
                                            torch.triu(torch.ones_like(mask.float()))):
        notes.append("upper_triagular_mask is not the upper-triangular ones matrix; used as stored")
    time_w = state.get("transformer.time_embed.weight")
    if time_w is None:
        raise SnapshotFormatError(f"{where}: no transformer.time_embed")
    if mask is None:
        notes.append("upper_triagular_mask missing; the standard mask was used")

    for key in state:
        map_transformer_key(key)  # raises on anything we do not know how to place
    return TransformerInfo(
        state=state, hidden_dim=hidden, image_dim=image_dim, num_heads=num_heads,
        num_layers=num_layers, embed_dim=int(time_w.shape[1]), max_time=int(time_w.shape[0]) - 1,
        view_pool=view_pool, risk_factors=tuple(rfs), max_followup=max_followup, evidence=ev,
        notes=notes)


def _num(value: Any, what: str) -> float:
    v = _plain(value)
    while isinstance(v, list) and len(v) == 1:  # sklearn keeps coef_ as [[s]] or [s]
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SnapshotFormatError(f"calibrator: {what} is not a number ({v!r})")
    return float(v)


def _platt_terms(est: Any, year: int) -> tuple[PlattTerm, ...]:
    a = _attrs(est)
    if {"base_estimator_slope", "calibrator_slope"} <= a.keys():  # onconet MiraiCalibrator
        return (PlattTerm(_num(a["base_estimator_slope"], "slope"),
                          _num(a["base_estimator_offset"], "offset"),
                          _num(a["calibrator_slope"], "slope"),
                          _num(a["calibrator_offset"], "offset")),)
    if class_name(est) == "CalibratedClassifierCV":  # older releases: sklearn itself
        if _plain(a.get("method", "sigmoid")) != "sigmoid":
            raise SnapshotFormatError(f"calibrator year {year + 1}: only sigmoid calibration")
        terms = []
        for cc in a.get("calibrated_classifiers_") or []:
            ca = _attrs(cc)
            base = (ca.get("base_estimator") or ca.get("estimator") or a.get("base_estimator")
                    or a.get("estimator"))
            cals = ca.get("calibrators_") or ca.get("calibrators") or []
            if base is None or len(cals) != 1:
                raise SnapshotFormatError(f"calibrator year {year + 1}: unexpected structure")
            ba, pa = _attrs(base), _attrs(cals[0])
            terms.append(PlattTerm(_num(ba.get("coef_"), "coef_"),
                                   _num(ba.get("intercept_"), "intercept_"),
                                   _num(pa.get("a_"), "a_"), _num(pa.get("b_"), "b_")))
        if not terms:
            raise SnapshotFormatError(f"calibrator year {year + 1}: no calibrated classifiers")
        return tuple(terms)
    raise SnapshotFormatError(f"calibrator year {year + 1}: unsupported object "
                              f"{class_name(est) or type(est).__name__}")


def read_calibrator(obj: Any, calibrator_id: str = "") -> MiraiCalibrator:
    """Calibrator pickle ({year index → calibrator}) → MiraiCalibrator with years in order."""
    if not isinstance(obj, dict) or not obj:
        raise SnapshotFormatError("calibrator: expected a dict of per-year calibrators")
    try:
        items = sorted((int(k), v) for k, v in obj.items())
    except (TypeError, ValueError):
        raise SnapshotFormatError("calibrator: keys are not year indices") from None
    if [k for k, _ in items] != list(range(len(items))):
        raise SnapshotFormatError("calibrator: year keys are not 0..n-1")
    return MiraiCalibrator(tuple(_platt_terms(v, k) for k, v in items), calibrator_id)


# ----------------------------------------------------------------------------------------------
# Conversion


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _collect_release(src: Path) -> dict[str, tuple[str, bytes]]:
    """role → (file name, bytes) from a folder (searched recursively) or a release zip."""
    wanted = {"encoder": ENCODER_FILES, "transformer": TRANSFORMER_FILES,
              "calibrator": CALIBRATOR_FILES}
    found: dict[str, tuple[str, bytes]] = {}
    if src.is_dir():
        files = {p.name: p for p in sorted(src.rglob("*")) if p.is_file()}
        for role, names in wanted.items():
            for n in names:
                if n in files:
                    found[role] = (n, files[n].read_bytes())
                    break
    elif src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            members = {PurePosixPath(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
            for role, names in wanted.items():
                for n in names:
                    if n in members:
                        if members[n].file_size > _MAX_MEMBER_BYTES:
                            raise SnapshotFormatError(f"{n}: implausibly large")
                        found[role] = (n, zf.read(members[n]))
                        break
    else:
        raise ModelUnavailable(f"{src} is neither a folder nor a zip file")
    missing = [r for r in wanted if r not in found]
    if missing:
        expected = "; ".join(f"{r}: {' or '.join(wanted[r])}" for r in missing)
        raise ModelUnavailable(f"the Mirai release at {src} lacks {', '.join(missing)}",
                               f"expected {expected}")
    return found


def _detect_format(data: bytes) -> str:
    return "zip" if zipfile.is_zipfile(io.BytesIO(data)) else "legacy"


def build_config(enc: EncoderInfo, tr: TransformerInfo) -> MiraiConfig:
    """MiraiConfig from what the two snapshots say; preprocessing constants from the spec §3."""
    if enc.widths[-1] != tr.image_dim:
        raise SnapshotFormatError(f"encoder features ({enc.widths[-1]}) do not match the "
                                  f"transformer input ({tr.image_dim})")
    return MiraiConfig(trunk_widths=enc.widths, trunk_blocks=enc.blocks, num_chan=enc.num_chan,
                       transformer_hidden_dim=tr.hidden_dim, num_heads=tr.num_heads,
                       num_layers=tr.num_layers, embed_dim=tr.embed_dim, max_time=tr.max_time,
                       view_pool=tr.view_pool, risk_factors=tr.risk_factors,
                       max_followup=tr.max_followup)


def build_state_dict(enc: EncoderInfo, tr: TransformerInfo,
                     template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map both snapshots onto MiraiNet's keys; shapes must match `template` exactly."""
    out: dict[str, torch.Tensor] = {}
    for key, t in enc.state.items():
        new = map_encoder_key(key)
        if new is not None:
            out[new] = t
    for key, t in tr.state.items():
        new = map_transformer_key(key)
        if new is not None:
            out[new] = t
    for key, t in template.items():
        if key not in out and key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(t)  # absent in files written by torch < 0.4.1
        elif key not in out and key.endswith("upper_triagular_mask"):
            out[key] = t.clone()
    missing = sorted(set(template) - set(out))
    extra = sorted(set(out) - set(template))
    if missing or extra:
        raise SnapshotFormatError(f"converted weights do not fit MiraiNet: missing {missing[:5]}"
                                  f", unexpected {extra[:5]}")
    for key, t in template.items():
        if tuple(out[key].shape) != tuple(t.shape):
            raise SnapshotFormatError(f"{key}: shape {tuple(out[key].shape)} ≠ expected "
                                      f"{tuple(t.shape)}")
        out[key] = out[key].detach().to(t.dtype).contiguous().clone()
    return out


def official_identity(weights_sha256: str, calibrator: MiraiCalibrator) -> ModelIdentity:
    """Identity recorded with every score made by converted official weights."""
    return ModelIdentity(
        model_id="mirai", name="Mirai (official weights)", version=weights_sha256[:12],
        weights_sha256=weights_sha256, calibrator_id=calibrator.calibrator_id,
        calibrator_sha256=calibrator.sha256, preprocessing_version=PREPROCESSING_VERSION,
        clinically_validated=True,
        label="Mirai (MIT Jameel Clinic) — research software, not a cleared medical device; "
              "trained on Hologic Selenia images")


def write_converted(directory: Path, net: MiraiNet, calibrator: MiraiCalibrator,
                    identity: ModelIdentity, provenance: dict[str, Any]) -> Path:
    """Write weights.pt / config.json / calibrator.json atomically into `directory`.

    Shared with the demo-model trainer so that every model folder has the same layout.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
        config = {"format": CONVERTED_FORMAT, "model": net.config.to_dict(),
                  "identity": identity.as_dict(), "provenance": provenance}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (tmp / "calibrator.json").write_text(json.dumps(calibrator.to_dict(), indent=2))
        if directory.exists():
            old = directory.with_name(directory.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def convert_release(src: str | os.PathLike, models_dir: str | os.PathLike) -> Path:
    """Convert the official release (folder or snapshots.zip) once → `models_dir/mirai/`.

    Reads the three files through the restricted unpickler, checks the structure and shapes,
    and writes our own format. Returns the output folder. Raises ModelUnavailable when files are
    missing, UnsafeSnapshotError / SnapshotFormatError when a file is not what it should be.
    """
    src = Path(src)
    files = _collect_release(src)
    enc_name, enc_bytes = files["encoder"]
    tr_name, tr_bytes = files["transformer"]
    cal_name, cal_bytes = files["calibrator"]
    enc = read_encoder(safe_torch_load(enc_bytes, enc_name), enc_name)
    tr = read_transformer(safe_torch_load(tr_bytes, tr_name), tr_name)
    calibrator = read_calibrator(safe_pickle_load(io.BytesIO(cal_bytes), cal_name),
                                 calibrator_id=Path(cal_name).stem)
    config = build_config(enc, tr)
    if len(calibrator.years) != config.max_followup:
        raise SnapshotFormatError(f"calibrator has {len(calibrator.years)} years, the model "
                                  f"{config.max_followup}")
    net = MiraiNet(config)
    net.load_state_dict(build_state_dict(enc, tr, net.state_dict()), strict=True)
    weights_sha = state_dict_sha256(net.state_dict())
    identity = official_identity(weights_sha, calibrator)

    notes = list(tr.notes)
    for key, spec_value in (("img_mean", [7047.99]), ("img_std", [12005.5]),
                            ("img_size", [1664, 2048])):
        got = enc.args.get(key)
        if got is not None and _plain(got) != spec_value:
            notes.append(f"encoder args.{key}={got} differs from the inference config "
                         f"{spec_value}; the inference config is used, as in the reference")
    sources = []
    for role, (name, data) in files.items():
        published = PUBLISHED_SHA256.get(name)
        digest = _sha256(data)
        sources.append({"role": role, "file": name, "size": len(data), "sha256": digest,
                        "format": _detect_format(data) if role != "calibrator" else "pickle",
                        "matches_published_sha256": (digest == published) if published else None})
    provenance = {
        "source": str(src.resolve()),
        "sources": sources,
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "converter": f"mamview.core.models.snapshots ({CONVERTED_FORMAT})",
        "torch_version": torch.__version__,
        "weights_sha256": weights_sha,
        "hyperparameter_evidence": tr.evidence,
        "encoder_args": _plain(enc.args),
        "notes": notes,
    }
    return write_converted(Path(models_dir) / MODEL_SUBDIR, net, calibrator, identity, provenance)


def load_converted(directory: str | os.PathLike) -> tuple[MiraiNet, MiraiCalibrator, ModelIdentity]:
    """Read a converted model folder → (MiraiNet in eval mode on CPU, calibrator, identity).

    Verifies the weights against the hash recorded at conversion, so a damaged or swapped
    weights.pt is refused instead of producing silently different risks.
    """
    directory = Path(directory)
    paths = {n: directory / n for n in ("config.json", "weights.pt", "calibrator.json")}
    missing = [n for n, p in paths.items() if not p.is_file()]
    if missing:
        raise ModelUnavailable(f"model folder {directory} lacks {', '.join(missing)}",
                               "convert the official Mirai release first")
    try:
        config_doc = json.loads(paths["config.json"].read_text())
        if config_doc.get("format") != CONVERTED_FORMAT:
            raise ModelUnavailable(f"{paths['config.json']} has format "
                                   f"{config_doc.get('format')!r}, expected {CONVERTED_FORMAT!r}")
        config = MiraiConfig.from_dict(config_doc["model"])
        identity = ModelIdentity.from_dict(config_doc["identity"])
        calibrator = MiraiCalibrator.from_dict(json.loads(paths["calibrator.json"].read_text()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(paths["weights.pt"], map_location="cpu", weights_only=True)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(f"model folder {directory} is unreadable: {exc}") from exc
    check_preprocessing_version(identity, config)
    net = MiraiNet(config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelUnavailable(f"{paths['weights.pt']} does not match config.json: {exc}") from exc
    if state_dict_sha256(net.state_dict()) != identity.weights_sha256:
        raise ModelUnavailable(f"{paths['weights.pt']} does not match the hash recorded when it "
                               "was written", "convert the release again")
    if calibrator.sha256 != identity.calibrator_sha256:
        raise ModelUnavailable(f"{paths['calibrator.json']} does not match the recorded hash")
    return net.eval(), calibrator, identity
