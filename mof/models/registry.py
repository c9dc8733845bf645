"""The model registry: families register constructors here when their module is imported."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from mof.models.contract import RetrievalModel

__all__ = ["create_model", "list_models", "model_family", "register_model"]

_REGISTRY: dict[str, Callable[..., RetrievalModel]] = {}


def register_model(fn: Callable[..., RetrievalModel]) -> Callable[..., RetrievalModel]:
    """Register a constructor under its function name with ``_`` spelt ``-`` (a decorator).

    Raises:
        ValueError: the name is registered already.
    """
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


def model_family(name: str) -> str:
    """The module that registered ``name`` (``mof.models.frozen`` for ``frozen-tiny``)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return _REGISTRY[name].__module__
