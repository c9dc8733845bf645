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

Foreign checkpoints are read with :func:`safe_torch_load`, a restricted unpickler: tensors and
plain containers load, unknown classes become inert :class:`PickleStub` objects, and any attempt
to *call* something that is not on the allowlist refuses the file. No pickled code runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from mof.models.contract import RetrievalModel
from mof.models.registry import create_model
from mof.models.tokenizer import WordTokenizer
from mof.models.unpickle import PickleStub, UnsafePickleError, restricted_pickle_module

__all__ = [
    "MODEL_FORMAT_VERSION",
    "PickleStub",
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


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load`` of a foreign file through the restricted unpickler, onto the CPU.

    Tensors, storages, plain containers, ``OrderedDict``, paths and numpy scalars load;
    other classes come back as inert :class:`PickleStub` objects (their pickled state kept in
    ``.state``); a pickle that calls anything else is refused before the call happens.

    Raises:
        UnsafePickleError: the file tries to call a non-allowlisted global (names it).
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False,
                          pickle_module=restricted_pickle_module)
    except UnsafePickleError as err:
        raise UnsafePickleError(f"{path}: {err}") from None


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
