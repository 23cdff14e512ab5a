"""The allow-list of the restricted unpickler: what each global a snapshot may name resolves to.

Our own tensor rebuild functions stand in for `torch._utils._rebuild_*`, dtype markers for the
storage classes, and a few data constructors that cannot run code (OrderedDict, set, numpy's
array/scalar reconstructors, latin-1 `_codecs.encode`, …) complete the table. Each checks its
arguments (sizes, geometry, dtypes) before it allocates.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mamview.core.models.errors import SnapshotFormatError, UnsafeSnapshotError
from mamview.core.safety import printable

from .inert import InertObject
from .limits import short


@dataclass(frozen=True)
class StorageType:
    """Marker resolved for `torch.FloatStorage` & co.: only carries the dtype."""

    name: str
    dtype: torch.dtype


class Storage:
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
    if not isinstance(storage, Storage):
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


def copyreg_reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    # copyreg._reconstructor, restricted to placeholders and plain containers.
    if isinstance(cls, type) and issubclass(cls, InertObject):
        return cls.__new__(cls)
    if cls in _CONTAINERS and base in _CONTAINERS:
        return cls() if state is None else cls(state)
    raise UnsafeSnapshotError(f"refused copyreg._reconstructor for {cls!r}")


def copyreg_newobj(cls: Any, *args: Any) -> Any:
    if isinstance(cls, type) and (issubclass(cls, InertObject) or cls in _CONTAINERS):
        return cls.__new__(cls, *args)
    raise UnsafeSnapshotError(f"refused copyreg.__newobj__ for {cls!r}")


class TensorType:
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
        ("copyreg", "_reconstructor"): copyreg_reconstructor,
        ("copyreg", "__newobj__"): copyreg_newobj,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch._utils", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): TensorType,
        ("torch._tensor", "Tensor"): TensorType,
        ("torch.nn.parameter", "Parameter"): TensorType,
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
            table[(mod, name)] = StorageType(name, dtype)
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
    if subtype is not np.ndarray or declared_elements(shape) > 1:
        raise SnapshotFormatError("unexpected numpy array reconstruction")
    return _np_multiarray()._reconstruct(np.ndarray, (0,), dtype)


def _np_scalar(dtype: Any, data: Any = None) -> Any:
    # A numpy scalar from its raw bytes: the bytes must be exactly one item.
    if not isinstance(dtype, np.dtype):
        raise SnapshotFormatError("numpy scalar without a dtype")
    if not dtype.hasobject and not (isinstance(data, bytes) and len(data) == dtype.itemsize):
        raise SnapshotFormatError("numpy scalar whose bytes do not match its dtype")
    return _np_multiarray().scalar(dtype, data)


def declared_elements(shape: Any) -> int:
    """Elements a declared shape (an int or a sequence of ints) would allocate."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or len(dims) > 64:
        raise SnapshotFormatError(f"malformed shape {short(shape)}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise SnapshotFormatError(f"malformed shape {short(shape)}")
    return math.prod(dims)


SAFE_GLOBALS = _safe_globals()
