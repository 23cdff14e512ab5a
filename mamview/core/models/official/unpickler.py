"""The restricted unpickler: globals only from the allow-list, every opcode counted.

`RestrictedUnpickler.find_class` resolves a global from `safe_globals.SAFE_GLOBALS` or, for the
namespaces the snapshots are built from, to an inert placeholder; anything else raises
`UnsafeSnapshotError` naming the refused global, before anything runs.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
from typing import Any, BinaryIO, Callable, Iterable

import numpy as np
import torch

from mamview.core.errors import LimitExceeded, MamviewError
from mamview.core.models.errors import SnapshotFormatError, UnsafeSnapshotError
from mamview.core.safety import printable

from .inert import InertObject, stub_class, stub_classes
from .limits import LIMIT_ENV, Budget, current_limits, exc_text, over, short
from .safe_globals import (SAFE_GLOBALS, Storage, StorageType, copyreg_newobj,
                           copyreg_reconstructor, declared_elements)

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
_BUILD_REFUSED = (type, StorageType, torch.dtype, Storage, torch.Tensor)
# Constructors that hash what they are given (mappings take (key, value) pairs).
_HASHING = {set: False, frozenset: False, collections.Counter: False, dict: True,
            collections.OrderedDict: True, collections.defaultdict: True}
# Distinct keys with one hash allowed in one container. str/bytes hashes are salted per
# process; ints, floats and tuples are not, so k·(2**61 − 1) all collide and each insertion
# into such a dict is linear (50 k keys in 250 KB took a minute).
_MAX_SAME_HASH = 32
_UNSALTED_EXEMPT = (str, bytes)


class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """An Unpickler that resolves globals only from the allow-list (never imports).

    It is the pure-Python unpickler, so that every opcode passes through us: opcodes, calls and
    memo entries are counted against `SnapshotLimits`, the wall time is checked, tuples may not
    nest deeper than `max_depth` (hashing a deeper one overflows the C stack), and every call a
    pickle asks for (REDUCE, NEWOBJ, BUILD …) is checked for declared sizes before it runs.
    `persistent_load` is supplied per file format by the torch readers; plain pickles (the
    calibrator) must not use persistent ids.
    """

    def __init__(self, file: BinaryIO, *, where: str = "snapshot",
                 persistent_load: Callable[[Any], Any] | None = None, encoding: str = "utf-8",
                 budget: Budget | None = None):
        super().__init__(file, encoding=encoding)
        self.where = where
        self._persistent = persistent_load
        self.refused: list[str] = []
        self.budget = budget or Budget(current_limits(), where)
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
        if (module, name) in SAFE_GLOBALS:
            return SAFE_GLOBALS[(module, name)]
        if (_is_inert(module) and name.isidentifier() and len(module) <= 200
                and len(name) <= 200):
            if (module, name) not in stub_classes:
                self._stubs += 1  # each new name is a class that stays cached: bound them
                if self._stubs > 10_000:
                    raise LimitExceeded(f"{self.where}: more than 10,000 distinct class names")
            return stub_class(module, name)
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
            raise over(f"{self.where}: pickle opcodes", b.ops, b.limits.max_pickle_ops,
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
        if target in (copyreg_reconstructor, copyreg_newobj) and args:
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
            raise over(f"{self.where}: tuple nesting", depth, self.budget.limits.max_depth,
                       "max_depth")
        if depth > 1:
            self._tuple_depth[id(t)] = (t, depth)

    def _memo_check(self) -> None:
        if len(self.memo) > self.budget.limits.max_memo:
            raise over(f"{self.where}: pickle memo entries", len(self.memo),
                       self.budget.limits.max_memo, "max_memo")

    def _check_call(self, func: Any, args: Any, kwargs: Any = None, target: Any = None) -> Any:
        """Run one call a pickle asks for, after checking what it would materialise.

        `target` is the class when the call is `cls.__new__` (NEWOBJ), else `func` itself.
        """
        target = func if target is None else target
        b = self.budget
        b.calls += 1
        if b.calls > b.limits.max_pickle_calls:
            raise over(f"{self.where}: objects built by calls", b.calls,
                       b.limits.max_pickle_calls, "max_pickle_calls")
        if not callable(func):
            raise SnapshotFormatError(f"{self.where}: call of a non-callable {short(func)}")
        if not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise SnapshotFormatError(f"{self.where}: malformed call arguments")
        values = (*args, *(kwargs or {}).values())
        if target in _SCALAR_ONLY and not all(isinstance(a, _SCALARS) for a in values):
            # str(x) of a shared nested structure would repr it exponentially
            raise SnapshotFormatError(f"{self.where}: {target.__name__}() of a container")
        b.items += sum(_materialised(a, target) for a in values)
        if b.items > b.limits.max_items:
            raise over(f"{self.where}: elements handed to calls", b.items, b.limits.max_items,
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
            raise SnapshotFormatError(f"{self.where}: NEWOBJ of a non-class {short(cls)}")
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
            raise SnapshotFormatError(f"{self.where}: BUILD of {short(inst)}")
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
    n = declared_elements(shape)
    if n > max_items:  # zero-size items would match an empty buffer at any shape (and an
        # object array's list is handed to numpy as is)
        raise LimitExceeded(f"{where}: a numpy array of {n:,} elements is over the limit of "
                            f"{max_items:,} (set {LIMIT_ENV['max_items']} to change it)")
    if dtype.hasobject:
        ok = isinstance(raw, list) and len(raw) == n
    else:
        ok = isinstance(raw, (bytes, bytearray)) and len(raw) == n * dtype.itemsize
    if not ok:
        raise SnapshotFormatError(f"{where}: numpy array data does not match its shape")


def load_pickle(unpickler: RestrictedUnpickler, what: str) -> Any:
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
                                  f"reference {short(exc.args[0] if exc.args else '')})") from exc
    except Exception as exc:  # truncated or garbage data
        raise SnapshotFormatError(f"{unpickler.where}: {what} "
                                  f"({type(exc).__name__}: {exc_text(exc)})") from exc


def safe_pickle_load(f: BinaryIO, where: str = "pickle", budget: Budget | None = None) -> Any:
    """Load a plain pickle (e.g. the calibrator) through the restricted unpickler."""
    return load_pickle(RestrictedUnpickler(f, where=where, budget=budget), "not a readable pickle")
