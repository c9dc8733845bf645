"""Model registry: ``create_model(name, **overrides)`` and ``list_models(pattern)``.

Each family lives in its own module and registers full-size and ``*-tiny`` constructors with
:func:`mof.models.registry.register_model` when it is imported; this package imports every
family module below, so importing it fills the registry. A family that fails to import fails
this import.
"""

from __future__ import annotations

# The families: importing a module registers its models. Add a new family's module here.
from mof.models import clip4clip, frozen, resnet  # noqa: F401  (registration only)
from mof.models.registry import create_model, list_models

# The registry's front door (docs/models.md): the one package that hands out names it imports.
__all__ = ["create_model", "list_models"]
