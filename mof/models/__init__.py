"""Model registry: ``create_model(name, **overrides)`` and ``list_models(pattern)``.

Each family lives in its own module and registers full-size and ``*-tiny`` constructors with
:func:`register_model`. Importing this package imports every family so the registry is full.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from mof.models.base import AttentionMode, InputContract, RetrievalModel

__all__ = [
    "AttentionMode",
    "InputContract",
    "RetrievalModel",
    "create_model",
    "list_models",
    "register_model",
]

_REGISTRY: dict[str, Callable[..., RetrievalModel]] = {}


def register_model(fn: Callable[..., RetrievalModel]) -> Callable[..., RetrievalModel]:
    """Register a constructor under its function name with ``_`` spelt ``-``."""
    name = fn.__name__.replace("_", "-")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides) -> RetrievalModel:
    """Build a registered model; ``overrides`` go to its constructor.

    Raises:
        KeyError: ``name`` is not registered (the message lists what is).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name](**overrides)


def _import_families() -> None:
    # Families register themselves on import; a family missing while it is being written
    # must not break the others.
    import importlib

    for module in ("frozen", "clip4clip", "resnet"):
        try:
            importlib.import_module(f"mof.models.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"mof.models.{module}":
                raise


_import_families()
