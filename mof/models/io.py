"""Model files: our own checkpoints (safetensors + JSON) and safe reading of foreign ones.

Our format (``MODEL_FORMAT_VERSION``), one directory per model:

- ``model.safetensors``: the state_dict;
- ``model.json``: ``format_version``, ``spec`` (``create_model(**spec)`` rebuilds the
  architecture), ``contract``, ``tokenizer`` (``{"kind", "path"}`` or null) and ``sources``
  (the weight files the model was first built from, for provenance only);
- the tokenizer: ``tokenizer.json`` for a :class:`WordTokenizer`, or a ``tokenizer/``
  directory (``save_pretrained``) for a transformers tokenizer.

What this relies on is the model contract (:mod:`mof.models.contract`): ``model.spec`` (JSON,
architecture only, no weight paths), ``model.sources``, ``model.tokenizer`` (WordTokenizer,
transformers tokenizer or None), and constructor keywords ``tokenizer=`` (a WordTokenizer) and
``tokenizer_dir=`` (a tokenizer directory).

Foreign checkpoints are read with :func:`safe_torch_load`: ``torch.load(weights_only=True)``,
whose unpickler builds only tensors, plain containers and the globals it is allowed, plus an
allow-list (:data:`SAFE_GLOBALS`) of inert data types: numpy scalars and arrays, paths as pure
paths, and :class:`PickledObject` stand-ins for the classes the peers pickle into their
checkpoints (Frozen's ``parse_config.ConfigParser``). Any other global refuses the file with
:class:`UnsafePickleError`. No pickled code runs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import safetensors.torch
import torch

from mof.models.contract import RetrievalModel
from mof.models.registry import create_model
from mof.models.tokenizer import WordTokenizer

__all__ = [
    "MODEL_FORMAT_VERSION",
    "SAFE_GLOBALS",
    "FrozenConfigParser",
    "PickledObject",
    "UnsafePickleError",
    "load_model",
    "read_state_dict",
    "safe_torch_load",
    "save_model",
]

MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def save_model(model: RetrievalModel, directory: str | Path) -> Path:
    """Write ``model`` into ``directory`` in our format (the directory is created if missing).

    Plain writes: the model library imports torch and numpy only, not the application's
    crash-safe writer. A caller whose readers must never see a half-written model fills a
    directory from :func:`pipeline.atomic.atomic_directory` with it, as the trainer's
    checkpoints do (``docs/writes.md``).

    Returns:
        The directory.

    Raises:
        ValueError: ``model.spec`` is missing or not JSON-serialisable.
    """
    directory = Path(directory)
    spec = model.spec
    if "name" not in spec:
        raise ValueError(f"{type(model).__name__} has no spec with a 'name'; cannot be rebuilt")
    meta = {
        "format_version": MODEL_FORMAT_VERSION,
        "spec": spec,
        "contract": model.contract.to_dict(),
        "tokenizer": None,
        "sources": model.sources,
    }
    try:
        json.dumps(meta)
    except TypeError as err:
        raise ValueError(f"model spec is not JSON-serialisable: {err}") from err
    directory.mkdir(parents=True, exist_ok=True)
    meta["tokenizer"] = _save_tokenizer(model.tokenizer, directory)
    # safetensors' save_model drops aliased tensors (tied weights) and keeps one copy.
    safetensors.torch.save_model(model, str(directory / WEIGHTS_FILE),
                                 metadata={"format_version": str(MODEL_FORMAT_VERSION)})
    # model.json last: a directory holding it has every file it names.
    (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def _save_tokenizer(tokenizer: Any, directory: Path) -> dict[str, str] | None:
    if tokenizer is None:
        return None
    if isinstance(tokenizer, WordTokenizer):
        tokenizer.save(directory / "tokenizer.json")
        return {"kind": "wordlevel", "path": "tokenizer.json"}
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(directory / "tokenizer"))
        return {"kind": "directory", "path": "tokenizer"}
    raise ValueError(f"cannot save a tokenizer of type {type(tokenizer).__name__}")


def load_model(directory: str | Path, *, strict: bool = True) -> RetrievalModel:
    """Rebuild a model saved by :func:`save_model` with the registry and load its weights.

    Returns:
        The model on CPU in eval mode.

    Raises:
        FileNotFoundError: ``directory`` lacks ``model.json`` or ``model.safetensors``.
        ValueError: unknown format version, or the rebuilt contract differs from the saved one.
        RuntimeError: the weights do not match the rebuilt model (strict loading).
    """
    directory = Path(directory)
    for name in (META_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: not a saved mof model")
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{directory / META_FILE}: format_version {meta.get('format_version')!r}"
                         f" is not {MODEL_FORMAT_VERSION}")
    kwargs = dict(meta["spec"])
    name = kwargs.pop("name")
    tok = meta.get("tokenizer")
    if tok and tok["kind"] == "wordlevel":
        kwargs["tokenizer"] = WordTokenizer.load(directory / tok["path"])
    elif tok and tok["kind"] == "directory":
        kwargs["tokenizer_dir"] = str(directory / tok["path"])
    model = create_model(name, **kwargs)
    if model.contract.to_dict() != _as_built(meta["contract"]):
        raise ValueError(f"{directory}: rebuilt contract {model.contract.to_dict()} differs from "
                         f"the saved {meta['contract']}")
    safetensors.torch.load_model(model, str(directory / WEIGHTS_FILE), strict=strict)
    model.sources = {**meta.get("sources", {}), "model_dir": str(directory)}
    return model.eval()


def _as_built(contract: dict) -> dict:
    # JSON turns the mean/std tuples into lists.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in contract.items()}


class UnsafePickleError(pickle.UnpicklingError):
    """A foreign file holds a global outside the allow-list; the message names file and global."""


class PickledObject:
    """Inert stand-in for a class that a foreign checkpoint pickles: it keeps data, runs nothing.

    The weights-only unpickler creates it (``__new__``, or a call, which does the same) and hands
    it the pickled state (``__setstate__``), which it stores as it came.

    Attributes:
        pickled_name: the ``module.Class`` the file names.
        args: arguments the pickle gave to ``__new__`` (usually none).
        state: the pickled state, usually the original object's ``__dict__``.
    """

    pickled_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickledObject:  # noqa: PYI034
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self.pickled_name}>"


class FrozenConfigParser(PickledObject):
    """Frozen in Time's ``parse_config.ConfigParser``, the ``config`` entry of its checkpoints.

    ``state`` holds ``_config`` (the run's JSON config, an ``OrderedDict``), paths
    (``cfg_fname``, ``_save_dir``, ``_log_dir``, ...) and ``log_levels``.
    """

    pickled_name = "parse_config.ConfigParser"


def _safe_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` may build beyond its defaults, by pickled name."""
    import numpy

    # numpy's rebuild functions, found through the pickling protocol rather than private modules;
    # numpy 1 pickles name them under numpy.core, numpy 2 under numpy._core.
    scalar, reconstruct = numpy.float64(0).__reduce__()[0], numpy.zeros(1).__reduce__()[0]
    allowed: list[Any] = [
        (FrozenConfigParser, FrozenConfigParser.pickled_name),
        argparse.Namespace,  # timm's training script saves its args; an attribute bag
        numpy.dtype, numpy.ndarray,
        *{type(numpy.dtype(code)) for code in numpy.typecodes["All"] if code not in "OSUV"},
    ]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(scalar, f"{module}.scalar"), (reconstruct, f"{module}._reconstruct")]
    # Paths rebuild as pure paths: no file-system access, and Windows paths load on Linux.
    for module in ("pathlib", "pathlib._local"):
        allowed += [(pathlib.PurePath, f"{module}.{name}") for name in ("Path", "PurePath")]
        allowed += [(pathlib.PurePosixPath, f"{module}.{name}")
                    for name in ("PosixPath", "PurePosixPath")]
        allowed += [(pathlib.PureWindowsPath, f"{module}.{name}")
                    for name in ("WindowsPath", "PureWindowsPath")]
    return allowed


#: Globals :func:`safe_torch_load` allows beyond torch's weights-only defaults (class or
#: ``(object, pickled name)``), all of them data without behaviour.
SAFE_GLOBALS = _safe_globals()


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` of a foreign file with :data:`SAFE_GLOBALS`, onto the CPU.

    Tensors, plain containers, ``OrderedDict``, numpy scalars and arrays, and paths (as pure
    paths) load; the peers' pickled config objects come back as :class:`PickledObject`
    stand-ins (their pickled state in ``.state``); any other global refuses the file before
    anything is called.

    Raises:
        UnsafePickleError: the file names a global outside the allow-list (names file and global).
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps the unpickler's one-line reason in advice about weights_only=False.
        inner = err.__context__ if isinstance(err.__context__, pickle.UnpicklingError) else err
        reason = str(inner).split(" Please use")[0].strip()
        raise UnsafePickleError(f"{path}: refused by torch.load(weights_only=True): {reason}"
                                ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: ``.safetensors``, ``.npz`` (no pickles) or a torch pickle.

    A torch pickle holding a dict with ``state_dict``, ``model`` or ``module`` returns that entry.

    Raises:
        ValueError: the file holds no tensor dict.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return safetensors.torch.load_file(str(path), device="cpu")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            return {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    obj = safe_torch_load(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no tensor state_dict (found {type(obj).__name__})")
    return dict(obj)
