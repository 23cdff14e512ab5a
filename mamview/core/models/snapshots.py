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

Release files are untrusted input, so everything is bounded (`SnapshotLimits`, each cap
overridable with MAMVIEW_MODEL_<NAME>) and checked *before* allocating: file and release sizes;
zip entry count, directory size, declared sizes and compression ratio; pickle opcodes, calls,
memo entries, tuple nesting, same-hash keys (hash flooding) and what calls may materialise
(`range(n)`, `bytes(n)`, copies of one big value); declared storage sizes against the bytes that
follow, tensor views against their storage, numpy array states against their data; the network
a snapshot describes against the weights it holds; nodes and depth walked afterwards; and wall
time. Every refusal is an `InputRefused` (a `MamviewError`) with a one-line message.

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
import contextlib
import contextvars
import datetime
import hashlib
import io
import json
import math
import os
import pickle
import reprlib
import shutil
import stat
import tarfile
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from mamview.core.errors import InputRefused, LimitExceeded, MamviewError
from mamview.core.safety import printable

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


class UnsafeSnapshotError(InputRefused):
    """A snapshot file references something we will not load; nothing from it was executed."""


class SnapshotFormatError(InputRefused):
    """A snapshot file is readable but not shaped like an official Mirai file."""


class ReleaseIncomplete(ModelUnavailable, InputRefused):
    """The path given as a release lacks one of the three official files (or does not exist)."""


# ----------------------------------------------------------------------------------------------
# Bounds on what one release may make us read, allocate, execute-in-the-unpickler and walk


_MiB = 1024 ** 2


@dataclass(frozen=True)
class SnapshotLimits:
    """Caps checked *before* allocating; each can be changed with MAMVIEW_MODEL_<NAME>.

    The official files are about 45 MB (encoder), 9 MB (transformer) and a few KB (calibrator);
    their object pickles (module tree + training args) are well under 1 MB (the weights fill
    the rest), i.e. under ~500 k opcodes. The defaults leave a wide margin for re-saved or float64 copies while keeping the
    worst case (≈3 copies of the largest file during conversion) well under 2 GB.
    """

    max_file_bytes: int = 256 * _MiB  # one release file (5× the official encoder)
    max_release_bytes: int = 512 * _MiB  # the three files together, or the release zip
    max_zip_members: int = 10_000  # entries in one zip (a release zip has a handful)
    max_zip_directory_bytes: int = 4 * _MiB  # central directory, read before any entry
    max_zip_ratio: int = 100  # uncompressed / compressed, for members over 1 MiB
    # Opcodes per file (all its pickles together): ≥ 4× what the official object pickles need,
    # and 2 M of the costliest (an empty set each) stay around 500 MB.
    max_pickle_ops: int = 2_000_000
    max_pickle_calls: int = 500_000  # objects built by REDUCE / NEWOBJ / BUILD / INST / OBJ
    max_memo: int = 1_000_000  # memo entries per pickle
    max_items: int = 32_000_000  # elements/bytes all calls of a file may be handed or expand
    # (range(n), bytes(n), tuple(list), _codecs.encode(str) …): repeated copies of one big
    # memoised value would otherwise multiply memory without more opcodes
    max_depth: int = 200  # nesting of tuples while loading, of anything we walk afterwards
    max_walk: int = 200_000  # nodes visited reading values out of the loaded objects (~10 k)
    max_entries: int = 10_000  # entries looked at when searching a release folder
    max_folder_depth: int = 8  # folder levels searched below the release folder
    max_seconds: float = 120.0  # wall time for reading one release (the official one: ~seconds)


_LIMIT_ENV = {f.name: "MAMVIEW_MODEL_" + f.name.upper() for f in fields(SnapshotLimits)}


def current_limits() -> SnapshotLimits:
    """The caps in force: defaults, each overridable by its MAMVIEW_MODEL_… variable."""
    values: dict[str, Any] = {}
    for f in fields(SnapshotLimits):
        raw = os.environ.get(_LIMIT_ENV[f.name])
        if raw:
            try:
                values[f.name] = type(f.default)(raw)
            except ValueError:
                pass  # a malformed override keeps the default
    return SnapshotLimits(**values)


def _over(what: str, value: Any, cap: Any, name: str) -> LimitExceeded:
    return LimitExceeded(f"{what}: {value:,} is over the limit of {cap:,} "
                         f"(set {_LIMIT_ENV[name]} to change it)")


class _Budget:
    """What one file may still spend: opcodes, calls, walk nodes, and a deadline."""

    def __init__(self, limits: SnapshotLimits, where: str, deadline: float | None = None):
        self.limits = limits
        self.where = where
        self.ops = 0
        self.calls = 0
        self.items = 0  # elements handed to calls
        self.walked = 0
        self.deadline = deadline if deadline is not None else time.monotonic() + limits.max_seconds

    def check_time(self) -> None:
        """Refuse once the wall-time budget of the release is spent."""
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"{self.where}: reading took longer than "
                                f"{self.limits.max_seconds:g} s (set "
                                f"{_LIMIT_ENV['max_seconds']} to change it)")

    def walk(self, n: int = 1) -> None:
        """Count `n` nodes visited while reading values out of the loaded objects."""
        self.walked += n
        if self.walked > self.limits.max_walk:
            raise _over(f"{self.where}: values visited", self.walked, self.limits.max_walk,
                        "max_walk")


_short_repr = reprlib.Repr()
_short_repr.maxstring = _short_repr.maxother = 60
_short_repr.maxlevel = 3


def _exc_text(exc: BaseException) -> str:
    """A bounded text for an exception a hostile file provoked. Not str(exc): a KeyError's
    str() is the repr of its key, which may be a huge shared structure."""
    if isinstance(exc, OSError) or not exc.args:
        return _short(str(exc) if exc.args else "")
    first = exc.args[0]
    return _short(first) if not isinstance(first, str) else printable(first[:200])


def _short(value: Any) -> str:
    """A bounded one-line repr of a value read from a file (for messages)."""
    try:
        return printable(_short_repr.repr(value))
    except Exception:  # a hostile object may make repr fail: name its type only
        return f"<{type(value).__name__}>"


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
    if not all(isinstance(v, (tuple, list)) for v in (size, stride)) or len(size) > 16:
        raise SnapshotFormatError("malformed tensor geometry")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise SnapshotFormatError("malformed tensor geometry")
    # A view may not claim more elements than its storage holds (stride-0 expansion of one
    # element to billions would pass the bounds check, then materialise on the first copy).
    if math.prod(size) > max(storage.flat.numel() - offset, 0):
        raise SnapshotFormatError(f"tensor of shape {size[:4]} is larger than its storage")
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
    if len(args) > 2 or not all(isinstance(a, (str, int)) for a in args):
        raise SnapshotFormatError("malformed torch.device")
    return ":".join(printable(a)[:32] for a in args)


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
        table[(mod, "_reconstruct")] = _np_reconstruct
        table[(mod, "scalar")] = _np_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = _np_frombuffer
    return table


def _np_frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafeSnapshotError("refused numpy _frombuffer with an object dtype")
    if not isinstance(buf, (bytes, bytearray)):  # bytes(n) of an int would allocate n bytes
        raise SnapshotFormatError("numpy _frombuffer of something other than bytes")
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order="F" if order == "F" else "C").copy()


def _np_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles call _reconstruct(ndarray, (0,), b'b') and fill the array with BUILD;
    # anything bigger would allocate before the data is seen.
    if subtype is not np.ndarray or _declared_elements(shape) > 1:
        raise SnapshotFormatError("unexpected numpy array reconstruction")
    return _np_multiarray()._reconstruct(np.ndarray, (0,), dtype)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    # A numpy scalar from its raw bytes: the bytes must be exactly one item.
    if not isinstance(dtype, np.dtype):
        raise SnapshotFormatError("numpy scalar without a dtype")
    if not dtype.hasobject and not (isinstance(data, bytes) and len(data) == dtype.itemsize):
        raise SnapshotFormatError("numpy scalar whose bytes do not match its dtype")
    return _np_multiarray().scalar(dtype, data)


def _declared_elements(shape: Any) -> int:
    """Elements a declared shape (an int or a sequence of ints) would allocate."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or len(dims) > 64:
        raise SnapshotFormatError(f"malformed shape {_short(shape)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise SnapshotFormatError(f"malformed shape {_short(shape)}")
    return math.prod(dims)


_SAFE_GLOBALS = _safe_globals()

# Whole namespaces whose globals become placeholders: classes the snapshots are built from, and
# data-ish libraries the pickled training `args` may carry. Placeholders never execute anything.
_INERT_PREFIXES = ("onconet", "torch.nn", "sklearn", "numpy", "argparse")


def _is_inert(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in _INERT_PREFIXES)


_OP = {name: getattr(pickle, name)[0] for name in (
    "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "OBJ", "INST", "TUPLE", "TUPLE1", "TUPLE2",
    "TUPLE3", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "SETITEM", "SETITEMS", "ADDITEMS",
    "FROZENSET", "DICT")}
_SIZED_BY_INT = (bytes, bytearray)  # bytes(n) allocates n bytes
_SCALARS = (str, bytes, bytearray, int, float, bool, type(None))
_SCALAR_ONLY = (str, bytes, bytearray, int, float, complex, bool)  # never given a container
_SIZED = (str, bytes, bytearray, list, tuple, dict, set, frozenset, collections.deque)


def _materialised(arg: Any, target: Any) -> int:
    """Elements (or bytes) a call may produce from `arg`: len of a sequence, of a range, or
    the int given to bytes()/bytearray()."""
    if isinstance(arg, range):
        try:
            return len(arg)
        except OverflowError:  # longer than sys.maxsize
            return 2 ** 63
    if isinstance(arg, int) and not isinstance(arg, bool):
        return max(arg, 0) if target in _SIZED_BY_INT else 0
    return len(arg) if isinstance(arg, _SIZED) else 0
# BUILD never reaches these: allow-listed markers (shared by every load), our storages, and
# tensors (Tensor.__setstate__ is the legacy set_(storage, offset, size, stride)).
_BUILD_REFUSED = (type, _StorageType, torch.dtype, _Storage, torch.Tensor)
# Constructors that hash what they are given (mappings take (key, value) pairs).
_HASHING = {set: False, frozenset: False, collections.Counter: False, dict: True,
            collections.OrderedDict: True, collections.defaultdict: True}
# Distinct keys with one hash allowed in one container. str/bytes hashes are salted per
# process; ints, floats and tuples are not, so k·(2**61 − 1) all collide and each insertion
# into such a dict is linear (50 k keys in 250 KB took a minute).
_MAX_SAME_HASH = 32
_UNSALTED_EXEMPT = (str, bytes)


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An Unpickler that resolves globals only from the allow-list above (never imports).

    It is the pure-Python unpickler, so that every opcode passes through us: opcodes, calls and
    memo entries are counted against `SnapshotLimits`, the wall time is checked, tuples may not
    nest deeper than `max_depth` (hashing a deeper one overflows the C stack), and every call a
    pickle asks for (REDUCE, NEWOBJ, BUILD …) is checked for declared sizes before it runs.
    `persistent_load` is supplied per file format by the torch readers; plain pickles (the
    calibrator) must not use persistent ids.
    """

    def __init__(self, file: BinaryIO, *, where: str = "snapshot",
                 persistent_load: Callable[[Any], Any] | None = None, encoding: str = "utf-8",
                 budget: _Budget | None = None):
        super().__init__(file, encoding=encoding)
        self.where = where
        self._persistent = persistent_load
        self.refused: list[str] = []
        self.budget = budget or _Budget(current_limits(), where)
        self._tuple_depth: dict[int, tuple[tuple, int]] = {}  # id → (tuple kept alive, depth)
        self._same_hash: dict[tuple[int, int], int] = {}  # (id(container), hash) → keys
        self._hashed_into: dict[int, Any] = {}  # containers counted above, kept alive so
        # that a freed one's id is never reused by another during this load
        self._stubs = 0

    # -- globals

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell some globals the Python 2 way (`__builtin__.set`,
        # `copy_reg`); those names never collide with Python 3 ones, so map them always.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if (_is_inert(module) and name.isidentifier() and len(module) <= 200
                and len(name) <= 200):
            if (module, name) not in _stub_classes:
                self._stubs += 1  # each new name is a class that stays cached: bound them
                if self._stubs > 10_000:
                    raise LimitExceeded(f"{self.where}: more than 10,000 distinct class names")
            return _stub(module, name)
        self.refused.append(f"{module}.{name}")
        raise UnsafeSnapshotError(
            f"refused to load {self.where}: it references the global "
            f"'{printable(module)[:80]}.{printable(name)[:80]}', which is not on the allow-list "
            f"for Mirai snapshot files. Nothing from the file was executed. If this is a "
            f"genuine official file, please report this message.")

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise SnapshotFormatError(f"{self.where}: unexpected persistent id in a plain pickle")
        return self._persistent(pid)

    # -- opcodes

    def _count(self) -> None:
        b = self.budget
        b.ops += 1
        if b.ops > b.limits.max_pickle_ops:
            raise _over(f"{self.where}: pickle opcodes", b.ops, b.limits.max_pickle_ops,
                        "max_pickle_ops")
        if not b.ops & 0xFF:  # every 256 opcodes: one op can hash a large tuple
            b.check_time()

    def _note_keys(self, container: Any, keys: Iterable[Any]) -> None:
        """Refuse many unsalted keys with one hash in one container (hash flooding).

        `container` None: the keys fill a new container (counted here only).
        """
        counts = self._same_hash if container is not None else {}
        cid = id(container)
        for k in keys:
            if isinstance(k, _UNSALTED_EXEMPT):
                continue
            try:
                h = hash(k)
            except TypeError:
                continue  # unhashable: the insertion itself will fail
            n = counts.get((cid, h), 0) + 1
            if n > _MAX_SAME_HASH:
                raise LimitExceeded(f"{self.where}: more than {_MAX_SAME_HASH} keys with the "
                                    "same hash in one container (hash flooding)")
            counts[(cid, h)] = n
            if container is not None:
                self._hashed_into[cid] = container

    def _note_call_keys(self, target: Any, args: tuple) -> None:
        # set(list), dict(pairs), copyreg._reconstructor(dict, object, pairs) …
        if target in (_reconstructor, _newobj) and args:
            target, args = args[0], args[1:]
        try:
            mapping = _HASHING.get(target)
        except TypeError:
            return
        if mapping is None:
            return
        for a in args:
            if isinstance(a, (list, tuple)):
                keys = [x[0] for x in a if isinstance(x, (tuple, list)) and x] if mapping else a
                self._note_keys(None, keys)

    def _remember_tuple(self) -> None:
        t = self.stack[-1]
        if type(t) is not tuple or not t:
            return
        depth = 1 + max((self._tuple_depth.get(id(i), (None, 1))[1] if type(i) is tuple else 0
                         for i in t), default=0)
        if depth > self.budget.limits.max_depth:
            raise _over(f"{self.where}: tuple nesting", depth, self.budget.limits.max_depth,
                        "max_depth")
        if depth > 1:
            self._tuple_depth[id(t)] = (t, depth)

    def _memo_check(self) -> None:
        if len(self.memo) > self.budget.limits.max_memo:
            raise _over(f"{self.where}: pickle memo entries", len(self.memo),
                        self.budget.limits.max_memo, "max_memo")

    def _check_call(self, func: Any, args: Any, kwargs: Any = None, target: Any = None) -> Any:
        """Run one call a pickle asks for, after checking what it would materialise.

        `target` is the class when the call is `cls.__new__` (NEWOBJ), else `func` itself.
        """
        target = func if target is None else target
        b = self.budget
        b.calls += 1
        if b.calls > b.limits.max_pickle_calls:
            raise _over(f"{self.where}: objects built by calls", b.calls,
                        b.limits.max_pickle_calls, "max_pickle_calls")
        if not callable(func):
            raise SnapshotFormatError(f"{self.where}: call of a non-callable {_short(func)}")
        if not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise SnapshotFormatError(f"{self.where}: malformed call arguments")
        values = (*args, *(kwargs or {}).values())
        if target in _SCALAR_ONLY and not all(isinstance(a, _SCALARS) for a in values):
            # str(x) of a shared nested structure would repr it exponentially
            raise SnapshotFormatError(f"{self.where}: {target.__name__}() of a container")
        b.items += sum(_materialised(a, target) for a in values)
        if b.items > b.limits.max_items:
            raise _over(f"{self.where}: elements handed to calls", b.items, b.limits.max_items,
                        "max_items")
        self._note_call_keys(target, args)
        if target is np.ndarray:  # never in numpy's own pickles; would allocate the shape
            raise SnapshotFormatError(f"{self.where}: refused a direct numpy.ndarray call")
        if target is np.dtype:
            if func is not np.dtype:
                raise SnapshotFormatError(f"{self.where}: refused numpy dtype construction")
            # copy=True always: BUILD must never reach the shared built-in descriptors
            if not args or not isinstance(args[0], str) or len(args[0]) > 64 or kwargs:
                raise SnapshotFormatError(f"{self.where}: malformed numpy dtype")
            return np.dtype(args[0], bool(args[1]) if len(args) > 1 else False, True)
        return func(*args, **(kwargs or {}))

    def load_reduce(self) -> None:
        self._count()
        args = self.stack.pop()
        self.stack[-1] = self._check_call(self.stack[-1], args)
        self._remember_tuple()

    def load_newobj(self) -> None:
        self._count()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, type):
            raise SnapshotFormatError(f"{self.where}: NEWOBJ of a non-class {_short(cls)}")
        self.append(self._check_call(cls.__new__, (cls, *args), target=cls))
        self._remember_tuple()

    def load_newobj_ex(self) -> None:
        self._count()
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if not isinstance(cls, type) or not isinstance(args, tuple):
            raise SnapshotFormatError(f"{self.where}: malformed NEWOBJ_EX")
        self.append(self._check_call(cls.__new__, (cls, *args), kwargs, target=cls))
        self._remember_tuple()

    def _instantiate(self, klass: Any, args: list) -> None:
        if args or not isinstance(klass, type):
            self.append(self._check_call(klass, tuple(args)))
        else:
            self.append(self._check_call(klass.__new__, (klass,), target=klass))
        self._remember_tuple()

    def load_build(self) -> None:
        self._count()
        state = self.stack[-1]
        inst = self.stack[-2]
        # Only objects this pickle built may get state: never a class, function or marker
        # from the allow-list (that would change them for every later load).
        if callable(inst) or isinstance(inst, _BUILD_REFUSED):
            raise SnapshotFormatError(f"{self.where}: BUILD of {_short(inst)}")
        if isinstance(inst, np.ndarray):
            _check_array_state(state, self.where, self.budget.limits.max_items)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(state, self.where)
        elif not isinstance(inst, InertObject) and _has_dunder_keys(state):
            # setattr(inst, '__class__', …) and friends; placeholders drop such keys themselves
            raise SnapshotFormatError(f"{self.where}: BUILD state sets special attributes")
        self.budget.calls += 1
        super().load_build()

    def _tuple_op(handler: Callable) -> Callable:  # type: ignore[misc]
        def op(self: "RestrictedUnpickler") -> None:
            self._count()
            handler(self)
            self._remember_tuple()
        return op

    def _memo_op(handler: Callable) -> Callable:  # type: ignore[misc]
        def op(self: "RestrictedUnpickler") -> None:
            self._count()
            handler(self)
            self._memo_check()
        return op

    def _plain_op(handler: Callable) -> Callable:  # type: ignore[misc]
        def op(self: "RestrictedUnpickler") -> None:
            self._count()
            handler(self)
        return op

    def _keyed_op(handler: Callable, code: int) -> Callable:  # type: ignore[misc]
        # Check the keys an op is about to hash into a container, then run it.
        def op(self: "RestrictedUnpickler") -> None:
            self._count()
            st = self.stack
            if code == _OP["SETITEM"] and len(st) >= 3:
                self._note_keys(st[-3], (st[-2],))
            elif code == _OP["SETITEMS"] and self.metastack and self.metastack[-1]:
                self._note_keys(self.metastack[-1][-1], st[0::2])
            elif code == _OP["ADDITEMS"] and self.metastack and self.metastack[-1]:
                self._note_keys(self.metastack[-1][-1], st)
            elif code == _OP["FROZENSET"]:
                self._note_keys(None, st)
            elif code == _OP["DICT"]:
                self._note_keys(None, st[0::2])
            handler(self)
        return op

    dispatch = {}
    for _code, _handler in pickle._Unpickler.dispatch.items():  # type: ignore[attr-defined]
        if _code in (_OP["TUPLE"], _OP["TUPLE1"], _OP["TUPLE2"], _OP["TUPLE3"]):
            dispatch[_code] = _tuple_op(_handler)
        elif _code in (_OP["PUT"], _OP["BINPUT"], _OP["LONG_BINPUT"], _OP["MEMOIZE"]):
            dispatch[_code] = _memo_op(_handler)
        elif _code in (_OP["SETITEM"], _OP["SETITEMS"], _OP["ADDITEMS"], _OP["FROZENSET"],
                       _OP["DICT"]):
            dispatch[_code] = _keyed_op(_handler, _code)
        else:
            dispatch[_code] = _plain_op(_handler)
    dispatch[_OP["REDUCE"]] = load_reduce
    dispatch[_OP["NEWOBJ"]] = load_newobj
    dispatch[_OP["NEWOBJ_EX"]] = load_newobj_ex
    dispatch[_OP["BUILD"]] = load_build
    # OBJ and INST go through _instantiate, which checks the call
    del _code, _handler, _tuple_op, _memo_op, _plain_op, _keyed_op


def _has_dunder_keys(state: Any) -> bool:
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    return any(isinstance(k, str) and k.startswith("__")
               for part in parts if isinstance(part, dict) for k in part)


def _check_dtype_state(state: Any, where: str) -> None:
    """Only plain dtypes: no sub-arrays, field names or field offsets (which numpy would trust
    when it later reads bytes through them)."""
    if not (isinstance(state, tuple) and len(state) in (8, 9)
            and all(part is None for part in state[2:5])):
        raise SnapshotFormatError(f"{where}: unsupported numpy dtype state")


def _check_array_state(state: Any, where: str, max_items: int) -> None:
    """numpy's __setstate__ trusts a list of objects to match the shape (a short list
    segfaults when read); bytes must match too. Check both before numpy sees them."""
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)):
        raise SnapshotFormatError(f"{where}: malformed numpy array state")
    _version, shape, dtype, _fortran, raw = state
    n = _declared_elements(shape)
    if n > max_items:  # zero-size items would match an empty buffer at any shape (and an
        # object array's list is handed to numpy as is)
        raise LimitExceeded(f"{where}: a numpy array of {n:,} elements is over the limit of "
                            f"{max_items:,} (set {_LIMIT_ENV['max_items']} to change it)")
    if dtype.hasobject:
        ok = isinstance(raw, list) and len(raw) == n
    else:
        ok = isinstance(raw, (bytes, bytearray)) and len(raw) == n * dtype.itemsize
    if not ok:
        raise SnapshotFormatError(f"{where}: numpy array data does not match its shape")


def _load_pickle(unpickler: RestrictedUnpickler, what: str) -> Any:
    """Run `unpickler`; anything but our own refusals becomes a one-line SnapshotFormatError."""
    try:
        return unpickler.load()
    except MamviewError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise LimitExceeded(f"{unpickler.where}: {what} is too large or too deeply nested "
                            f"({type(exc).__name__})") from exc
    except KeyError as exc:  # the dispatch table or the memo has no such entry
        raise SnapshotFormatError(f"{unpickler.where}: {what} (unknown opcode or memo "
                                  f"reference {_short(exc.args[0] if exc.args else '')})") from exc
    except Exception as exc:  # truncated or garbage data
        raise SnapshotFormatError(f"{unpickler.where}: {what} "
                                  f"({type(exc).__name__}: {_exc_text(exc)})") from exc


def safe_pickle_load(f: BinaryIO, where: str = "pickle", budget: _Budget | None = None) -> Any:
    """Load a plain pickle (e.g. the calibrator) through the restricted unpickler."""
    return _load_pickle(RestrictedUnpickler(f, where=where, budget=budget), "not a readable pickle")


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


def _load_legacy(f: BinaryIO, where: str, budget: _Budget, size: int) -> Any:
    """Torch's pre-1.6 stream: magic, protocol, sys_info, object, storage keys, raw storages.

    `size` is the length of the stream: the storages it declares must fit in what follows the
    pickles, so nothing is allocated for data the file does not hold.
    """
    magic = safe_pickle_load(f, where, budget)
    if magic != _LEGACY_MAGIC:
        raise SnapshotFormatError(f"{where}: not a torch file (bad magic number)")
    protocol = safe_pickle_load(f, where, budget)
    if protocol != _LEGACY_PROTOCOL:
        raise SnapshotFormatError(f"{where}: unsupported legacy protocol {_short(protocol)}")
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
                raise UnsafeSnapshotError(f"{where}: module id names {_short(cls)}")
            return cls
        if kind != "storage" or len(data) < 4:
            raise SnapshotFormatError(f"{where}: unknown persistent id {_short(kind)}")
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
            return _Storage(root[int(offset):int(offset) + int(length)])
        return _Storage(root)

    obj = _load_pickle(RestrictedUnpickler(f, where=where, persistent_load=persistent_load,
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
        raise SnapshotFormatError(f"{where}: malformed storage size {_short(numel)}")
    return numel * _element_size(dtype)


def _open_zip(f: BinaryIO, where: str, limits: SnapshotLimits) -> zipfile.ZipFile:
    """ZipFile over `f`, after checking its central directory's size and entry count.

    zipfile parses every directory entry on open, so a directory of millions of entries must
    be refused from its end record, before that parse.
    """
    try:
        f.seek(0, os.SEEK_END)
        end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # stable since Python 2
    except Exception as exc:  # zipfile raises OSError, struct.error, BadZipFile …
        raise SnapshotFormatError(f"{where}: damaged zip archive ({_short(str(exc))})") from exc
    if end is None:
        raise SnapshotFormatError(f"{where}: not a zip archive")
    entries = end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
    cd_bytes = end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if entries > limits.max_zip_members:
        raise _over(f"{where}: zip entries", entries, limits.max_zip_members, "max_zip_members")
    if cd_bytes > limits.max_zip_directory_bytes:
        raise _over(f"{where}: zip directory bytes", cd_bytes, limits.max_zip_directory_bytes,
                    "max_zip_directory_bytes")
    try:
        f.seek(0)
        zf = zipfile.ZipFile(f)
    except Exception as exc:  # zipfile raises OSError, struct.error, BadZipFile …
        raise SnapshotFormatError(f"{where}: damaged zip archive ({_short(str(exc))})") from exc
    if len(zf.infolist()) > limits.max_zip_members:  # the end record may lie about the count
        zf.close()
        raise _over(f"{where}: zip entries", len(zf.infolist()), limits.max_zip_members,
                    "max_zip_members")
    return zf


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str,
                 limits: SnapshotLimits, cap: int | None = None) -> bytes:
    """One zip member's bytes, refused before reading if its declared size or ratio is absurd.

    zipfile stops inflating at the declared size (and fails the CRC if there was more), so the
    declared size bounds both memory and time.
    """
    cap = limits.max_file_bytes if cap is None else cap
    name = printable(info.filename)[:80]
    if info.file_size > cap:
        raise _over(f"{where}: {name} uncompressed bytes", info.file_size, cap,
                    "max_file_bytes")
    if (info.compress_type != zipfile.ZIP_STORED and info.file_size > _MiB
            and info.file_size > limits.max_zip_ratio * max(info.compress_size, 1)):
        raise _over(f"{where}: {name} compression ratio",
                    info.file_size // max(info.compress_size, 1), limits.max_zip_ratio,
                    "max_zip_ratio")
    try:
        with zf.open(info) as member:
            data = member.read(info.file_size + 1)
    except Exception as exc:  # BadZipFile (CRC), zlib.error, RuntimeError (encrypted) …
        raise SnapshotFormatError(f"{where}: {name} is damaged ({_short(str(exc))})") from exc
    if len(data) != info.file_size:
        raise SnapshotFormatError(f"{where}: {name} does not have its declared size")
    return data


def _load_zip(f: BinaryIO, where: str, budget: _Budget) -> Any:
    """Torch ≥1.6 zip archive: `<prefix>/data.pkl` + `<prefix>/data/<key>` storages."""
    limits = budget.limits
    with _open_zip(f, where, limits) as zf:
        names = zf.namelist()
        pkls = [n for n in names if PurePosixPath(n).name == "data.pkl"
                and len(PurePosixPath(n).parts) == 2]
        if len(pkls) != 1:
            raise SnapshotFormatError(f"{where}: zip file is not a torch.save archive "
                                      "(TorchScript archives are not supported)")
        prefix = str(PurePosixPath(pkls[0]).parent)
        order = f"{prefix}/byteorder"
        if order in names and _read_member(zf, zf.getinfo(order), where, limits,
                                           cap=64).strip() not in (b"little", b""):
            raise SnapshotFormatError(f"{where}: big-endian files are not supported")
        cache: dict[str, torch.Tensor] = {}
        total = [0]  # bytes of all storages read so far

        def persistent_load(pid: Any) -> Any:
            kind, data = _pid_parts(pid, where)
            if kind != "storage" or len(data) < 4:
                raise SnapshotFormatError(f"{where}: unknown persistent id {_short(kind)}")
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
                    raise _over(f"{where}: storage bytes", total[0], limits.max_file_bytes,
                                "max_file_bytes")
                raw = bytearray(_read_member(zf, info, where, limits))
                cache[key] = (torch.frombuffer(raw, dtype=dtype) if nbytes
                              else torch.zeros(0, dtype=dtype))
                budget.check_time()
            return _Storage(cache[key])

        data_pkl = _read_member(zf, zf.getinfo(pkls[0]), where, limits)
        return _load_pickle(RestrictedUnpickler(io.BytesIO(data_pkl), where=where,
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
        source = _read_regular_file(Path(source), limits.max_file_bytes, where)
    where = where or "snapshot"
    if isinstance(source, (bytes, bytearray)):
        if len(source) > limits.max_file_bytes:
            raise _over(f"{where}: bytes", len(source), limits.max_file_bytes, "max_file_bytes")
        f: BinaryIO = io.BytesIO(source)
    else:
        f = source
    budget = _Budget(limits, where, deadline)
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


def _read_regular_file(path: Path, cap: int, where: str) -> bytes:
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
            raise _over(f"{where}: file bytes", st.st_size, cap, "max_file_bytes")
        try:
            data = fh.read(cap + 1)
        except OSError as exc:
            raise InputRefused(f"cannot read {printable(path)}: {exc.strerror or exc}") from exc
    if len(data) > cap:  # grew while we read it
        raise _over(f"{where}: file bytes", len(data), cap, "max_file_bytes")
    return data


# ----------------------------------------------------------------------------------------------
# Walking placeholder module trees


_WALK: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("snapshot_walk",
                                                                       default=None)


@contextlib.contextmanager
def _walking(where: str, budget: _Budget | None = None):
    """Share one walk budget among all reads of one file (shared references are walked once
    per reference, so a 'billion laughs' structure exhausts the budget instead of memory)."""
    token = _WALK.set(budget or _WALK.get() or _Budget(current_limits(), where))
    try:
        yield _WALK.get()
    finally:
        _WALK.reset(token)


def _walk_budget() -> _Budget:
    return _WALK.get() or _Budget(current_limits(), "snapshot")


def _attrs(obj: Any) -> dict[str, Any]:
    return obj.__dict__ if isinstance(obj, InertObject) else {}


def _children(obj: Any) -> dict[str, Any]:
    mods = _attrs(obj).get("_modules")
    if not isinstance(mods, dict):
        return {}
    _walk_budget().walk(len(mods))
    return {k: v for k, v in mods.items() if isinstance(k, str)}


def child(obj: Any, path: str) -> Any:
    """Descend `a.b.c` through `_modules`; SnapshotFormatError if a step is missing."""
    for part in path.split(".") if path else []:
        kids = _children(obj)
        if part not in kids or kids[part] is None:
            raise SnapshotFormatError(f"module {class_name(obj) or obj!r} has no child {part!r}")
        obj = kids[part]
    return obj


def module_state_dict(obj: Any, prefix: str = "", _depth: int = 0) -> dict[str, torch.Tensor]:
    """Rebuild `state_dict()` of a placeholder module tree (parameters, persistent buffers)."""
    budget = _walk_budget()
    if _depth > budget.limits.max_depth:
        raise _over(f"{budget.where}: module nesting", _depth, budget.limits.max_depth,
                    "max_depth")
    out: dict[str, torch.Tensor] = {}
    attrs = _attrs(obj)
    non_persistent = attrs.get("_non_persistent_buffers_set") or set()
    if not isinstance(non_persistent, (set, frozenset)):
        non_persistent = set()
    for group in ("_parameters", "_buffers"):
        tensors = attrs.get(group) or {}
        if not isinstance(tensors, dict):
            raise SnapshotFormatError(f"{prefix}{group} is not a dict")
        budget.walk(len(tensors))
        for name, tensor in tensors.items():
            if not isinstance(name, str):
                raise SnapshotFormatError(f"{prefix}{group} has a key that is not a name")
            if tensor is None or (group == "_buffers" and name in non_persistent):
                continue
            if not isinstance(tensor, torch.Tensor):
                raise SnapshotFormatError(f"{printable(prefix + name)[:120]} is not a tensor")
            out[prefix + name] = tensor
    for name, sub in _children(obj).items():
        if sub is not None:
            out.update(module_state_dict(sub, f"{prefix}{name}.", _depth + 1))
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


def _plain(value: Any, _depth: int = 0) -> Any:
    """numpy scalars/arrays → Python values, recursively for lists/tuples/dicts.

    Bounded: every node counts against the walk budget and nesting against `max_depth`.
    """
    budget = _walk_budget()
    budget.walk()
    if _depth > budget.limits.max_depth:
        raise _over(f"{budget.where}: value nesting", _depth, budget.limits.max_depth,
                    "max_depth")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        budget.walk(value.size)  # before tolist() materialises one object per element
        return _plain(value.tolist(), _depth + 1) if value.dtype.hasobject else value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        return {_key_text(k): _plain(v, _depth + 1) for k, v in value.items()}
    return value


def _key_text(key: Any) -> str:
    # dict keys become JSON keys: plain scalars as text, anything else by a bounded repr
    return str(key) if isinstance(key, (str, int, float, bool)) else _short(key)


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


def _tensor(state: dict[str, torch.Tensor], key: str, where: str, ndim: int) -> torch.Tensor:
    """state[key], which must exist and have `ndim` dimensions."""
    t = state.get(key)
    if t is None:
        raise SnapshotFormatError(f"{where}: tensor {key} is missing")
    if t.dim() != ndim:
        raise SnapshotFormatError(f"{where}: tensor {key} has shape {tuple(t.shape)[:8]}, "
                                  f"expected {ndim} dimensions")
    return t


def read_encoder(obj: Any, where: str = "encoder") -> EncoderInfo:
    """Encoder snapshot (CustomResnet → ResNet) → trunk state dict and shape hyper-parameters."""
    with _walking(where):
        return _read_encoder(obj, where)


def _read_encoder(obj: Any, where: str) -> EncoderInfo:
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
            if stage.isdecimal() and j.isdecimal() and len(stage) <= 3 and len(j) <= 3:
                stages[int(stage)] = max(stages.get(int(stage), 0), int(j) + 1)
                block = kids[name]
                if class_name(block) and class_name(block) != "BasicBlock":
                    raise SnapshotFormatError(f"{where}: {class_name(block)} blocks are not "
                                              "supported (expected BasicBlock / ResNet-18)")
    if not stages or sorted(stages) != list(range(1, len(stages) + 1)):
        raise SnapshotFormatError(f"{where}: no ResNet stages layer1_0… found")
    blocks = tuple(stages[s] for s in sorted(stages))
    widths = tuple(int(_tensor(state, f"_model.layer{s}_0.conv1.weight", where, 4).shape[0])
                   for s in sorted(stages))
    stem = _tensor(state, "_model.downsampler.conv1.weight", where, 4)
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
    with _walking(where):
        return _read_transformer(obj, where)


def _read_transformer(obj: Any, where: str) -> TransformerInfo:
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

    if state.get("projection_layer.weight") is None:
        raise SnapshotFormatError(f"{where}: no projection_layer")
    proj = _tensor(state, "projection_layer.weight", where, 2)
    hidden, image_dim = int(proj.shape[0]), int(proj.shape[1])

    trans = child(root, "transformer")
    numbers = [n.rsplit("_", 1)[1] for n in _children(trans)
               if n.startswith("transformer_layer_")]
    if not all(n.isdecimal() and len(n) <= 3 for n in numbers):
        raise SnapshotFormatError(f"{where}: transformer layers not numbered 0…")
    layers = sorted(int(n) for n in numbers)
    if layers != list(range(len(layers))) or not layers:
        raise SnapshotFormatError(f"{where}: transformer layers missing or not numbered 0…")
    num_layers = len(layers)
    args_layers = _arg(args, "num_layers")
    if args_layers is not None and _count(args_layers, "args.num_layers", where) != num_layers:
        raise SnapshotFormatError(f"{where}: args.num_layers={args_layers} but {num_layers} "
                                  "layers are stored")
    ev["num_layers"] = (f"{num_layers} transformer_layer_* modules; "
                        f"args.num_layers={_short(args_layers)}")

    mha = child(trans, "transformer_layer_0.multihead_attention")
    dph = _plain(_attrs(mha).get("dim_per_head"))
    args_heads = _arg(args, "num_heads")
    if dph is not None and (isinstance(dph, bool) or not isinstance(dph, int) or dph < 0):
        raise SnapshotFormatError(f"{where}: dim_per_head is not a count ({_short(dph)})")
    heads_from_dph = hidden // int(dph) if dph else None
    if dph and hidden % int(dph):
        raise SnapshotFormatError(f"{where}: dim_per_head={dph} does not divide {hidden}")
    if (heads_from_dph and args_heads is not None
            and _count(args_heads, "args.num_heads", where) != heads_from_dph):
        raise SnapshotFormatError(f"{where}: args.num_heads={args_heads} contradicts "
                                  f"dim_per_head={dph}")
    num_heads = heads_from_dph or (_count(args_heads, "args.num_heads", where)
                                   if args_heads is not None else None)
    if not num_heads:
        raise SnapshotFormatError(f"{where}: the number of attention heads is not recorded "
                                  "(neither dim_per_head nor args.num_heads); refusing to guess")
    ev["num_heads"] = f"dim_per_head={dph}; args.num_heads={_short(args_heads)}"

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
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or not isinstance(to_n, dict)):
        raise SnapshotFormatError(f"{where}: malformed args.risk_factor_keys")
    rfs = []
    for key in keys:
        if state.get(f"pool.{key}_fc.weight") is None:
            raise SnapshotFormatError(f"{where}: risk factor {printable(key)[:60]!r} has no head")
        w = _tensor(state, f"pool.{key}_fc.weight", where, 2)
        n = int(w.shape[0])
        if key in to_n and _count(to_n[key], "args.risk_factor_key_to_num_class", where) != n:
            raise SnapshotFormatError(f"{where}: risk factor {printable(key)[:60]!r} has {n} "
                                      f"outputs, args say {_short(to_n[key])}")
        rfs.append((str(key), n))
    if set(k for k, _ in rfs) != set(heads):
        raise SnapshotFormatError(f"{where}: risk-factor heads {sorted(set(heads))} differ from "
                                  "args.risk_factor_keys")
    ev["risk_factors"] = ("args.risk_factor_keys" if _arg(args, "risk_factor_keys")
                          else "module order of pool.*_fc")

    if state.get("prob_of_failure_layer.hazard_fc.weight") is None:
        raise SnapshotFormatError(f"{where}: no prob_of_failure_layer")
    hazard = _tensor(state, "prob_of_failure_layer.hazard_fc.weight", where, 2)
    max_followup = int(hazard.shape[0])
    if int(hazard.shape[1]) != hidden + sum(n for _, n in rfs):
        raise SnapshotFormatError(f"{where}: hazard layer input {hazard.shape[1]} ≠ "
                                  f"{hidden} + risk factors")
    mask = state.get("prob_of_failure_layer.upper_triagular_mask")
    if mask is not None and not torch.equal(mask.float(),
                                            torch.triu(torch.ones_like(mask.float()))):
        notes.append("upper_triagular_mask is not the upper-triangular ones matrix; used as stored")
    if state.get("transformer.time_embed.weight") is None:
        raise SnapshotFormatError(f"{where}: no transformer.time_embed")
    time_w = _tensor(state, "transformer.time_embed.weight", where, 2)
    if mask is None:
        notes.append("upper_triagular_mask missing; the standard mask was used")

    for key in state:
        map_transformer_key(key)  # raises on anything we do not know how to place
    return TransformerInfo(
        state=state, hidden_dim=hidden, image_dim=image_dim, num_heads=num_heads,
        num_layers=num_layers, embed_dim=int(time_w.shape[1]), max_time=int(time_w.shape[0]) - 1,
        view_pool=view_pool, risk_factors=tuple(rfs), max_followup=max_followup, evidence=ev,
        notes=notes)


def _count(value: Any, what: str, where: str) -> int:
    """A non-negative integer read from pickled args (refused, not coerced, otherwise)."""
    v = _plain(value)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2 ** 31:
        raise SnapshotFormatError(f"{where}: {what} is not a count ({_short(v)})")
    return v


def _num(value: Any, what: str) -> float:
    v = _plain(value)
    while isinstance(v, list) and len(v) == 1:  # sklearn keeps coef_ as [[s]] or [s]
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SnapshotFormatError(f"calibrator: {what} is not a number ({_short(v)})")
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
        classifiers = a.get("calibrated_classifiers_") or []
        if not isinstance(classifiers, list) or len(classifiers) > _MAX_YEARS:
            raise SnapshotFormatError(f"calibrator year {year + 1}: unexpected structure")
        for cc in classifiers:
            ca = _attrs(cc)
            base = (ca.get("base_estimator") or ca.get("estimator") or a.get("base_estimator")
                    or a.get("estimator"))
            cals = ca.get("calibrators_") or ca.get("calibrators") or []
            if base is None or not isinstance(cals, list) or len(cals) != 1:
                raise SnapshotFormatError(f"calibrator year {year + 1}: unexpected structure")
            ba, pa = _attrs(base), _attrs(cals[0])
            terms.append(PlattTerm(_num(ba.get("coef_"), "coef_"),
                                   _num(ba.get("intercept_"), "intercept_"),
                                   _num(pa.get("a_"), "a_"), _num(pa.get("b_"), "b_")))
        if not terms:
            raise SnapshotFormatError(f"calibrator year {year + 1}: no calibrated classifiers")
        return tuple(terms)
    raise SnapshotFormatError(f"calibrator year {year + 1}: unsupported object "
                              f"{printable(class_name(est) or type(est).__name__)[:80]}")


_MAX_YEARS = 100  # the release has 5; a dict of a million "years" is not a calibrator


def read_calibrator(obj: Any, calibrator_id: str = "") -> MiraiCalibrator:
    """Calibrator pickle ({year index → calibrator}) → MiraiCalibrator with years in order."""
    if not isinstance(obj, dict) or not obj:
        raise SnapshotFormatError("calibrator: expected a dict of per-year calibrators")
    if len(obj) > _MAX_YEARS:
        raise LimitExceeded(f"calibrator: {len(obj):,} years, more than {_MAX_YEARS}")
    with _walking("calibrator"):
        return _read_calibrator(obj, calibrator_id)


def _read_calibrator(obj: dict, calibrator_id: str) -> MiraiCalibrator:
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


_WANTED = {"encoder": ENCODER_FILES, "transformer": TRANSFORMER_FILES,
           "calibrator": CALIBRATOR_FILES}


def _find_in_folder(src: Path, limits: SnapshotLimits) -> dict[str, Path]:
    """role → path of the official file names under `src`, searched breadth-first and bounded
    (entries and depth), not following links to folders."""
    names = {n for group in _WANTED.values() for n in group}
    found: dict[str, Path] = {}
    seen = 0
    level = [src]
    for depth in range(limits.max_folder_depth + 1):
        below: list[Path] = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                if folder == src:
                    raise InputRefused(f"cannot read the folder {printable(src)}: "
                                       f"{exc.strerror or exc}") from exc
                continue  # an unreadable subfolder cannot hold what we need
            seen += len(entries)
            if seen > limits.max_entries:
                raise _over(f"{printable(src)}: entries searched for the release files", seen,
                            limits.max_entries, "max_entries")
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    below.append(Path(e.path))
                elif e.name in names and e.name not in found:
                    found[e.name] = Path(e.path)
        level = below
        if not level:
            break
    return _first_per_role(found)


def _first_per_role(found: dict[str, Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for role, group in _WANTED.items():
        for n in group:
            if n in found:
                out[role] = found[n]
                break
    return out


def _collect_release(src: Path, limits: SnapshotLimits | None = None
                     ) -> dict[str, tuple[str, bytes]]:
    """role → (file name, bytes) from a folder (searched recursively) or a release zip.

    Refuses, with a one-line message, a missing path, something that is neither a folder nor a
    zip, a release lacking a file, and anything over the size caps (checked before reading).
    """
    limits = limits or current_limits()
    shown = printable(src)
    try:
        st = src.stat()
    except OSError as exc:
        if not os.path.lexists(src):
            raise ReleaseIncomplete(f"{shown} does not exist",
                                    "give the Mirai release folder or its zip") from exc
        raise InputRefused(f"cannot read {shown}: {exc.strerror or exc}") from exc
    found: dict[str, tuple[str, bytes]] = {}
    if stat.S_ISDIR(st.st_mode):
        paths = _find_in_folder(src, limits)
        total = 0
        for role, path in paths.items():
            data = _read_regular_file(path, limits.max_file_bytes, path.name)
            total += len(data)
            if total > limits.max_release_bytes:
                raise _over(f"{shown}: release bytes", total, limits.max_release_bytes,
                            "max_release_bytes")
            found[role] = (path.name, data)
    elif stat.S_ISREG(st.st_mode) and _is_zip_path(src):
        if st.st_size > limits.max_release_bytes:
            raise _over(f"{shown}: zip bytes", st.st_size, limits.max_release_bytes,
                        "max_release_bytes")
        found = _collect_from_zip(src, limits)
    else:
        raise InputRefused(f"{shown} is neither a folder nor a zip file; give the Mirai release "
                           "folder or its zip")
    missing = [r for r in _WANTED if r not in found]
    if missing:
        expected = "; ".join(f"{r}: {' or '.join(_WANTED[r])}" for r in missing)
        raise ReleaseIncomplete(f"the Mirai release at {shown} lacks {', '.join(missing)}",
                                f"expected {expected}")
    return found


def _is_zip_path(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _collect_from_zip(src: Path, limits: SnapshotLimits) -> dict[str, tuple[str, bytes]]:
    shown = printable(src)
    try:
        fh = open(src, "rb")
    except OSError as exc:
        raise InputRefused(f"cannot read {shown}: {exc.strerror or exc}") from exc
    found: dict[str, tuple[str, bytes]] = {}
    with fh, _open_zip(fh, shown, limits) as zf:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            name = PurePosixPath(info.filename).name
            if not info.is_dir() and name not in members:
                members[name] = info
        chosen = {}
        for role, names in _WANTED.items():
            for n in names:
                if n in members:
                    chosen[role] = (n, members[n])
                    break
        total = sum(info.file_size for _, info in chosen.values())
        if total > limits.max_release_bytes:  # declared sizes, before inflating anything
            raise _over(f"{shown}: release bytes", total, limits.max_release_bytes,
                        "max_release_bytes")
        for role, (n, info) in chosen.items():
            found[role] = (n, _read_member(zf, info, shown, limits))
    return found


def _detect_format(data: bytes) -> str:
    return "zip" if zipfile.is_zipfile(io.BytesIO(data)) else "legacy"


# Plausible ranges for the hyper-parameters read from a snapshot, checked before a network of
# that shape is built (the official model: widths 64…512, 2 blocks per stage, 1 layer, 8 heads).
_CONFIG_RANGES = {"width": 8192, "stages": 8, "blocks": 64, "num_chan": 16, "hidden": 16384,
                  "num_heads": 1024, "num_layers": 64, "embed_dim": 4096, "max_time": 100_000,
                  "max_followup": 100, "risk_factors": 64, "classes": 100_000}


def _check_ranges(enc: EncoderInfo, tr: TransformerInfo) -> None:
    r = _CONFIG_RANGES
    checks = [("stages", len(enc.widths)), ("num_chan", enc.num_chan),
              ("hidden", tr.hidden_dim), ("num_heads", tr.num_heads),
              ("num_layers", tr.num_layers), ("embed_dim", tr.embed_dim),
              ("max_time", tr.max_time + 1), ("max_followup", tr.max_followup),
              ("risk_factors", len(tr.risk_factors))]
    checks += [("width", w) for w in enc.widths] + [("blocks", b) for b in enc.blocks]
    checks += [("classes", n) for _, n in tr.risk_factors]
    for name, value in checks:
        if not 1 <= value <= r[name]:
            raise SnapshotFormatError(f"implausible {name} {value:,} read from the snapshots "
                                      f"(expected 1…{r[name]:,})")


def build_config(enc: EncoderInfo, tr: TransformerInfo) -> MiraiConfig:
    """MiraiConfig from what the two snapshots say; preprocessing constants from the spec §3."""
    _check_ranges(enc, tr)
    if enc.widths[-1] != tr.image_dim:
        raise SnapshotFormatError(f"encoder features ({enc.widths[-1]}) do not match the "
                                  f"transformer input ({tr.image_dim})")
    return MiraiConfig(trunk_widths=enc.widths, trunk_blocks=enc.blocks, num_chan=enc.num_chan,
                       transformer_hidden_dim=tr.hidden_dim, num_heads=tr.num_heads,
                       num_layers=tr.num_layers, embed_dim=tr.embed_dim, max_time=tr.max_time,
                       view_pool=tr.view_pool, risk_factors=tr.risk_factors,
                       max_followup=tr.max_followup)


_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
              torch.eye}


def _factory_numel(func: Any, args: tuple, kwargs: dict) -> int:
    """Elements a torch factory call asks for (torch.empty(2, 3), torch.zeros((2, 3)), …)."""
    if func is torch.eye:
        n = args[0] if args else kwargs.get("n", 0)
        m = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("m", n)
        return int(n) * int(m)
    size = (args[0] if args else kwargs.get("size", ())) if func is torch.full \
        else kwargs.get("size", args)
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = size[0]
    return math.prod(int(s) for s in size)


class _AllocationCap(TorchFunctionMode):
    """While a network whose shape was read from a file is built: refuse tensor creation
    beyond `elements` before it happens (the network must fit the weights the file holds)."""

    def __init__(self, elements: int):
        super().__init__()
        self.left = elements

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in _FACTORIES:
            self.left -= _factory_numel(func, args, kwargs)
            if self.left < 0:
                raise LimitExceeded("the network these snapshots describe is larger than the "
                                    "weights they hold")
        return func(*args, **kwargs)


def _build_net(config: MiraiConfig, enc: EncoderInfo, tr: TransformerInfo) -> MiraiNet:
    """MiraiNet(config), allocating at most what the two snapshots' tensors hold (+ slack for
    the counters and the mask that old files lack)."""
    held = sum(t.numel() for info in (enc, tr) for t in info.state.values())
    with _AllocationCap(held + 1_000_000):
        return MiraiNet(config)


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
        raise SnapshotFormatError(f"converted weights do not fit MiraiNet: missing "
                                  f"{printable(missing[:3])[:300]}, unexpected "
                                  f"{printable(extra[:3])[:300]}")
    for key, t in template.items():
        if tuple(out[key].shape) != tuple(t.shape):
            raise SnapshotFormatError(f"{key}: shape {tuple(out[key].shape)[:8]} ≠ expected "
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


def convert_release(src: str | os.PathLike, models_dir: str | os.PathLike,
                    limits: SnapshotLimits | None = None) -> Path:
    """Convert the official release (folder or snapshots.zip) once → `models_dir/mirai/`.

    Reads the three files through the restricted unpickler, checks the structure and shapes,
    and writes our own format. Returns the output folder. Every refusal of the input is an
    `InputRefused` (a `MamviewError` with a one-line message): `ReleaseIncomplete` (also a
    ModelUnavailable) when the path or a file is missing, `UnsafeSnapshotError` /
    `SnapshotFormatError` when a file is not what it should be, `LimitExceeded` when it is over
    a cap of `limits` (default `current_limits()`). Nothing is written unless all of it passes.
    """
    src = Path(src)
    limits = limits or current_limits()
    try:
        net, calibrator, identity, provenance = _read_release(src, limits)
    except MamviewError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise LimitExceeded(f"{printable(src)}: too large or too deeply nested to read "
                            f"({type(exc).__name__})") from exc
    except Exception as exc:  # anything a hostile file provokes in torch/numpy: a message
        raise SnapshotFormatError(f"{printable(src)}: not a usable Mirai release "
                                  f"({type(exc).__name__}: {_exc_text(exc)})") from exc
    return write_converted(Path(models_dir) / MODEL_SUBDIR, net, calibrator, identity, provenance)


def _read_release(src: Path, limits: SnapshotLimits
                  ) -> tuple[MiraiNet, MiraiCalibrator, ModelIdentity, dict[str, Any]]:
    deadline = time.monotonic() + limits.max_seconds  # one wall-time budget for the release
    files = _collect_release(src, limits)
    enc_name, enc_bytes = files["encoder"]
    tr_name, tr_bytes = files["transformer"]
    cal_name, cal_bytes = files["calibrator"]
    enc = read_encoder(safe_torch_load(enc_bytes, enc_name, limits, deadline), enc_name)
    tr = read_transformer(safe_torch_load(tr_bytes, tr_name, limits, deadline), tr_name)
    calibrator = read_calibrator(safe_pickle_load(io.BytesIO(cal_bytes), cal_name,
                                                  _Budget(limits, cal_name, deadline)),
                                 calibrator_id=Path(cal_name).stem)
    config = build_config(enc, tr)
    if len(calibrator.years) != config.max_followup:
        raise SnapshotFormatError(f"calibrator has {len(calibrator.years)} years, the model "
                                  f"{config.max_followup}")
    net = _build_net(config, enc, tr)
    net.load_state_dict(build_state_dict(enc, tr, net.state_dict()), strict=True)
    weights_sha = state_dict_sha256(net.state_dict())
    identity = official_identity(weights_sha, calibrator)

    notes = list(tr.notes)
    for key, spec_value in (("img_mean", [7047.99]), ("img_std", [12005.5]),
                            ("img_size", [1664, 2048])):
        got = enc.args.get(key)
        if got is not None and _plain(got) != spec_value:
            notes.append(f"encoder args.{key}={_short(got)} differs from the inference config "
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
    return net, calibrator, identity, provenance


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
    caps = {"config.json": 16 * _MiB, "calibrator.json": 16 * _MiB,
            "weights.pt": current_limits().max_file_bytes}
    for n, cap in caps.items():  # before torch.load / json.loads read them whole
        if paths[n].stat().st_size > cap:
            raise ModelUnavailable(f"{paths[n]} is larger than {cap:,} bytes",
                                   "convert the release again")
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
