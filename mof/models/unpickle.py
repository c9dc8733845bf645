"""A restricted unpickler for foreign checkpoints: data loads, code never runs.

A pickle runs code in exactly two ways: it names a global (``find_class``) and then *calls* it
(``REDUCE``, ``INST``/``OBJ``, ``NEWOBJ``) or hands state to its ``__setstate__`` (``BUILD``).
Here ``find_class`` returns a real object only for an allowlist of harmless constructors
(torch's tensor rebuild functions, ``OrderedDict``, pure paths, numpy scalars, ...). Every other
global becomes a fresh :class:`PickleStub` subclass carrying the pickled module and name, with
no behaviour: ``NEWOBJ`` and ``BUILD`` on it make an inert record of the pickled state, which is
how ordinary objects (Frozen's ``parse_config.ConfigParser``) are stored. Calling a stub, the
way a malicious ``__reduce__`` calls ``os.system``, raises :class:`UnsafePickleError` before the
call; the stub would have done nothing anyway, but such a file is not a checkpoint.

``restricted_pickle_module`` is passed to ``torch.load(pickle_module=...)``: torch keeps its own
handling of storages (zip and legacy formats) and asks this unpickler for every other global.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pathlib
import pickle
import types
from typing import Any, ClassVar

import torch

__all__ = ["PickleStub", "RestrictedUnpickler", "UnsafePickleError", "restricted_pickle_module"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle tried to call something outside the allowlist."""


class PickleStub:
    """Stand-in for a class that is not allowlisted; keeps what the pickle stored.

    Attributes:
        args: arguments given to ``__new__`` by the pickle (``NEWOBJ``).
        state: the state given to ``__setstate__`` (``BUILD``), usually the object's __dict__.
    """

    _pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> PickleStub:  # noqa: PYI034
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "state", None)
        return obj

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __repr__(self) -> str:
        return f"<PickleStub {self._pickled_name}>"


_STUBS: dict[tuple[str, str], type[PickleStub]] = {}


def _stub_class(module: str, name: str) -> type[PickleStub]:
    key = (module, name)
    if key not in _STUBS:
        _STUBS[key] = type(name, (PickleStub,), {
            "__module__": module, "__qualname__": name, "_pickled_name": f"{module}.{name}"})
    return _STUBS[key]


# Tensors load without what a pickle could attach to them: backward hooks (which would be
# called during backward) and Python attributes (``state``, set with setattr).
def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise UnsafePickleError(f"refusing to rebuild a tensor of type {new_type!r}")
    _check_callable(func)
    out = func(*args)
    if not isinstance(out, torch.Tensor):
        raise UnsafePickleError(f"tensor rebuild gave a {type(out).__name__}, not a tensor")
    return out if type(out) is new_type else out.as_subclass(new_type)


def _reconstructor(cls, base, state):
    # Protocol 0/1 object reconstruction: only inert stubs, only from object.
    if isinstance(cls, type) and issubclass(cls, PickleStub) and base is object and state is None:
        return cls.__new__(cls)
    raise UnsafePickleError(f"refusing copyreg._reconstructor({cls!r}, {base!r}, {state!r})")


def _allowed() -> dict[str, Any]:
    import builtins
    import codecs

    import numpy

    allowed: dict[str, Any] = {
        "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "torch.Tensor": torch.Tensor,
        "torch.nn.parameter.Parameter": torch.nn.Parameter,
        "collections.OrderedDict": collections.OrderedDict,
        "copyreg._reconstructor": _reconstructor,
        "_codecs.encode": codecs.encode,  # protocol-2 pickles of bytes
        "numpy.dtype": numpy.dtype,
    }
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "range", "object"):
        allowed[f"builtins.{name}"] = getattr(builtins, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}.scalar"] = numpy._core.multiarray.scalar
        allowed[f"{module}._reconstruct"] = numpy._core.multiarray._reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol-5 arrays
        allowed[f"{module}._frombuffer"] = numpy._core.numeric._frombuffer
    allowed["numpy.ndarray"] = numpy.ndarray
    # Paths rebuild as pure paths: no file-system access, and Windows paths load on Linux.
    for module in ("pathlib", "pathlib._local"):
        for name in ("Path", "PurePath"):
            allowed[f"{module}.{name}"] = pathlib.PurePath
        for name in ("PosixPath", "PurePosixPath"):
            allowed[f"{module}.{name}"] = pathlib.PurePosixPath
        for name in ("WindowsPath", "PureWindowsPath"):
            allowed[f"{module}.{name}"] = pathlib.PureWindowsPath
    return allowed


_ALLOWED = _allowed()
_CALLABLE_STUB_ERROR = "refusing to call {} (not allowlisted): the file may run code when loaded"


class RestrictedUnpickler(pickle._Unpickler):
    """Pure-Python unpickler with an allowlist; see the module doc.

    The pure-Python class is used because its opcode table can be overridden: ``REDUCE`` and
    ``INST``/``OBJ`` check the callable before calling it. Checkpoint pickles hold only the
    structure (tensor data lives in storages), so the speed cost is negligible.
    """

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:  # Python 2 names, as pickle's own find_class
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and isinstance(
                getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        return _stub_class(module, name)

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        _check_callable(func)
        self.stack[-1] = func(*args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_build(self) -> None:
        # torch.save never BUILDs a tensor; Tensor.__setstate__ would accept backward hooks.
        if isinstance(self.stack[-2], torch.Tensor):
            raise UnsafePickleError("refusing to set the state of a tensor")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def _instantiate(self, klass: Any, args: tuple) -> None:
        if args:
            _check_callable(klass)
        super()._instantiate(klass, args)


def _check_callable(func: Any) -> None:
    if isinstance(func, type) and issubclass(func, PickleStub):
        raise UnsafePickleError(_CALLABLE_STUB_ERROR.format(func._pickled_name))


def _load(file, **kwargs) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


#: A module-like object for ``torch.load(pickle_module=...)``.
restricted_pickle_module = types.SimpleNamespace(
    __name__="mof_restricted_pickle", Unpickler=RestrictedUnpickler, load=_load, loads=_loads,
    UnpicklingError=pickle.UnpicklingError,
)
