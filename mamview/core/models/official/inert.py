"""Inert placeholders: what a pickled class (a module, the training args, sklearn objects)
becomes when a snapshot is read. A placeholder records its constructor arguments and state and
runs nothing. Torch-free.
"""

from __future__ import annotations

from typing import Any, Iterable


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


stub_classes: dict[tuple[str, str], type[InertObject]] = {}


def stub_class(module: str, name: str) -> type[InertObject]:
    key = (module, name)
    if key not in stub_classes:
        stub_classes[key] = type(name, (InertObject,), {
            "_pickle_module": module, "_pickle_name": name, "__module__": __name__,
        })
    return stub_classes[key]


def class_name(obj: Any) -> str:
    """The pickled class name of a placeholder ('' for anything else)."""
    return type(obj)._pickle_name if isinstance(obj, InertObject) else ""
