"""Reading values out of loaded placeholder trees: children, state dicts, plain values.

Every node visited counts against one walk budget per file (shared references are walked once
per reference, so a 'billion laughs' structure exhausts the budget instead of memory), and
nesting against `max_depth`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import numpy as np
import torch

from mamview.core.models.errors import SnapshotFormatError
from mamview.core.safety import printable

from .inert import InertObject, class_name
from .limits import Budget, current_limits, over, short

_WALK: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("snapshot_walk",
                                                                      default=None)


@contextlib.contextmanager
def walking(where: str, budget: Budget | None = None):
    """Share one walk budget among all reads of one file (shared references are walked once
    per reference, so a 'billion laughs' structure exhausts the budget instead of memory)."""
    token = _WALK.set(budget or _WALK.get() or Budget(current_limits(), where))
    try:
        yield _WALK.get()
    finally:
        _WALK.reset(token)


def _walk_budget() -> Budget:
    return _WALK.get() or Budget(current_limits(), "snapshot")


def pickled_attrs(obj: Any) -> dict[str, Any]:
    return obj.__dict__ if isinstance(obj, InertObject) else {}


def child_modules(obj: Any) -> dict[str, Any]:
    mods = pickled_attrs(obj).get("_modules")
    if not isinstance(mods, dict):
        return {}
    _walk_budget().walk(len(mods))
    return {k: v for k, v in mods.items() if isinstance(k, str)}


def child(obj: Any, path: str) -> Any:
    """Descend `a.b.c` through `_modules`; SnapshotFormatError if a step is missing."""
    for part in path.split(".") if path else []:
        kids = child_modules(obj)
        if part not in kids or kids[part] is None:
            raise SnapshotFormatError(f"module {class_name(obj) or obj!r} has no child {part!r}")
        obj = kids[part]
    return obj


def module_state_dict(obj: Any, prefix: str = "", _depth: int = 0) -> dict[str, torch.Tensor]:
    """Rebuild `state_dict()` of a placeholder module tree (parameters, persistent buffers)."""
    budget = _walk_budget()
    if _depth > budget.limits.max_depth:
        raise over(f"{budget.where}: module nesting", _depth, budget.limits.max_depth,
                   "max_depth")
    out: dict[str, torch.Tensor] = {}
    attrs = pickled_attrs(obj)
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
    for name, sub in child_modules(obj).items():
        if sub is not None:
            out.update(module_state_dict(sub, f"{prefix}{name}.", _depth + 1))
    return out


def unwrap_model(obj: Any, where: str) -> Any:
    """What `load_model` accepts: a dict with 'model', or DataParallel around the module."""
    if isinstance(obj, dict) and "model" in obj:
        obj = obj["model"]
    if class_name(obj) == "DataParallel":
        obj = child(obj, "module")
    if not isinstance(obj, InertObject):
        raise SnapshotFormatError(f"{where}: expected a pickled model, found {type(obj).__name__}")
    return obj


def plain(value: Any, _depth: int = 0) -> Any:
    """numpy scalars/arrays → Python values, recursively for lists/tuples/dicts.

    Bounded: every node counts against the walk budget and nesting against `max_depth`.
    """
    budget = _walk_budget()
    budget.walk()
    if _depth > budget.limits.max_depth:
        raise over(f"{budget.where}: value nesting", _depth, budget.limits.max_depth,
                   "max_depth")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        budget.walk(value.size)  # before tolist() materialises one object per element
        return plain(value.tolist(), _depth + 1) if value.dtype.hasobject else value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v, _depth + 1) for v in value]
    if isinstance(value, dict):
        return {_key_text(k): plain(v, _depth + 1) for k, v in value.items()}
    return value


def _key_text(key: Any) -> str:
    # dict keys become JSON keys: plain scalars as text, anything else by a bounded repr
    return str(key) if isinstance(key, (str, int, float, bool)) else short(key)


def pickled_arg(args: Any, name: str, default: Any = None) -> Any:
    return plain(pickled_attrs(args).get(name, default))
