"""Reading the official release files without running any code from them: a restricted
unpickler that only reconstructs numpy arrays, plain containers and inert records (for the
experiment-state namedtuples of BYOL-style checkpoints), and refuses everything else with
:class:`UnsafeCheckpointError` before it can run."""

from __future__ import annotations

import builtins
import os
import pickle
import re
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np


class UnsafeCheckpointError(ValueError):
    """The file asks the unpickler for something other than arrays, containers and records."""


class OfficialFormatError(ValueError):
    """The loaded structure is not an official haiku ResNet checkpoint we can map."""


# --------------------------------------------------------------------------- safe loading


def _numpy_attr(name: str) -> Any:
    """``numpy._core.multiarray.<name>`` (numpy 2) or ``numpy.core.multiarray.<name>``."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    return getattr(multiarray, name)


def _safe_codecs_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # protocol-2 pickles of numpy arrays write their bytes as _codecs.encode(str, 'latin1')
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafeCheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode(encoding, errors)


def _frozen_mapping(*args, **kwargs) -> dict:
    """Stand-in for haiku's ``FlatMapping`` / ``frozendict`` (pickled as ``cls(mapping)``)."""
    return dict(*args, **kwargs)


def _safe_jax_array(fun, args, arr_state, aval_state=None) -> np.ndarray:
    """Stand-in for ``jax._src.array._reconstruct_array``: the numpy value only (no jax)."""
    if fun is not _numpy_attr("_reconstruct"):
        raise UnsafeCheckpointError(f"refusing jax array reconstruction with {fun!r}")
    value = fun(*args)
    if not isinstance(value, np.ndarray):
        raise UnsafeCheckpointError("jax array reconstruction did not give a numpy array")
    value.__setstate__(arr_state)
    return value


_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED: dict[tuple[str, str], Any] = {}
for _mod in _NUMPY_MODULES:
    for _name in ("_reconstruct", "scalar"):
        _ALLOWED[(_mod, _name)] = lambda n=_name: _numpy_attr(n)
for _mod in ("numpy", "numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_mod, "ndarray")] = lambda: np.ndarray
    _ALLOWED[(_mod, "dtype")] = lambda: np.dtype
_ALLOWED[("numpy", "ndarray")] = lambda: np.ndarray
_ALLOWED[("numpy", "dtype")] = lambda: np.dtype
for _name in ("set", "frozenset", "complex", "slice", "bytearray", "range"):
    _ALLOWED[("builtins", _name)] = lambda n=_name: getattr(builtins, n)
_ALLOWED[("collections", "OrderedDict")] = lambda: OrderedDict
_ALLOWED[("_codecs", "encode")] = lambda: _safe_codecs_encode
_ALLOWED[("jax._src.array", "_reconstruct_array")] = lambda: _safe_jax_array
for _mod in ("haiku._src.data_structures", "haiku.data_structures"):
    for _name in ("FlatMapping", "FlatMap", "frozendict", "FrozenDict"):
        _ALLOWED[(_mod, _name)] = lambda: _frozen_mapping
del _mod, _name

# numpy dtype classes (numpy >= 1.25 pickles np.dtype('float32') as numpy.dtypes.Float32DType)
_DTYPE_MODULES = ("numpy.dtypes",)

# Positional field names of the experiment-state namedtuples (BYOL ``_ByolExperimentState``,
# DetCon ``pretrain_common.ExperimentState``): pickled with NEWOBJ, i.e. without field names.
_EXPERIMENT_FIELDS = ("online_params", "target_params", "online_state", "target_state", "opt_state")
_RECORD_MODULE_ROOTS = ("byol", "detcon", "optax", "pretrain_common", "detcon_b", "__main__")
_STDLIB = frozenset(getattr(sys, "stdlib_module_names", ())) | {
    "os",
    "posix",
    "nt",
    "sys",
    "subprocess",
    "builtins",
    "shutil",
    "importlib",
    "pickle",
    "io",
    "socket",
    "ctypes",
    "runpy",
    "pty",
    "code",
    "codecs",
}


class OfficialRecord(dict):
    """Inert stand-in for a pickled namedtuple / state class (e.g. ``_ByolExperimentState``).

    A ``dict`` of its fields (named from the known experiment-state layout, else ``field_<i>``),
    plus ``record_type`` (``"module.Class"``) on the class. Never runs any of the original code.
    """

    record_type = "?"
    fields: tuple[str, ...] = ()

    def __new__(cls, *args, **kwargs):
        self = dict.__new__(cls)
        names = cls.fields
        if not names and cls.record_type.rsplit(".", 1)[-1].endswith("ExperimentState"):
            names = _EXPERIMENT_FIELDS
        for i, value in enumerate(args):
            dict.__setitem__(self, names[i] if i < len(names) else f"field_{i}", value)
        for key, value in kwargs.items():
            dict.__setitem__(self, str(key), value)
        return self

    def __init__(self, *args, **kwargs):  # fields are set in __new__ (NEWOBJ skips __init__)
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots)
            for part in state:
                if isinstance(part, Mapping):
                    self.update({str(k): v for k, v in part.items()})
        elif isinstance(state, Mapping):
            self.update({str(k): v for k, v in state.items()})

    def __reduce__(self):
        return (dict, (dict(self),))

    def __repr__(self) -> str:
        return f"{self.record_type}({dict.__repr__(self)})"


_RECORD_CLASSES: dict[tuple[str, str], type] = {}


def _record_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _RECORD_CLASSES:
        _RECORD_CLASSES[key] = type(
            re.sub(r"\W", "_", name) or "Record",
            (OfficialRecord,),
            {"record_type": f"{module}.{name}", "__module__": __name__},
        )
    return _RECORD_CLASSES[key]


def _looks_like_record(module: str, name: str) -> bool:
    root = module.split(".", 1)[0]
    if root in _STDLIB or root in ("numpy", "torch", "jax", "jaxlib", "haiku"):
        return False
    if not re.fullmatch(r"_?[A-Z][A-Za-z0-9_]*", name):  # a class name, not a function
        return False
    return name.endswith("State") or root in _RECORD_MODULE_ROOTS


def _safe_reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects) restricted to our record classes."""
    if isinstance(cls, type) and issubclass(cls, OfficialRecord) and base in (tuple, object):
        obj = cls(*state) if base is tuple and state is not None else cls()
        return obj
    raise UnsafeCheckpointError(f"refusing copyreg._reconstructor of {cls!r}")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED.get((module, name))
        if resolve is not None:
            return resolve()
        if module in _DTYPE_MODULES and re.fullmatch(r"[A-Za-z0-9]+DType", name):
            import numpy.dtypes

            obj = getattr(numpy.dtypes, name, None)
            if isinstance(obj, type) and issubclass(obj, np.dtype):
                return obj
        if (module, name) == ("copyreg", "_reconstructor"):
            return _safe_reconstructor
        if _looks_like_record(module, name):
            return _record_class(module, name)
        raise UnsafeCheckpointError(f"refusing to load {module}.{name} from {self._source}")

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"refusing persistent id {pid!r} in {self._source}")


def _restricted_loads(fileobj, source: str) -> Any:
    try:
        return _RestrictedUnpickler(fileobj, source).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as e:
        raise OfficialFormatError(f"cannot unpickle {source}: {type(e).__name__}: {e}") from e


def _plain(obj: Any) -> Any:
    """Records / OrderedDicts -> plain dicts, 0-d object arrays -> their item, recursively."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        return _plain(obj.item()) if obj.shape == () else [_plain(v) for v in obj.tolist()]
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def safe_load_official(path: str | os.PathLike) -> Any:
    """Read an official ``.npy`` (``np.save`` of a dict) or ``.pkl`` checkpoint safely.

    Numeric ``.npy`` files are read with ``allow_pickle=False``; object ``.npy`` files and
    pickles go through a restricted unpickler (numpy arrays/scalars/dtypes, plain containers,
    ``OrderedDict``, haiku ``FlatMapping``, and inert :class:`OfficialRecord` stand-ins for
    experiment-state namedtuples such as ``byol.byol_experiment._ByolExperimentState``). Any
    other global raises :class:`UnsafeCheckpointError` ("refusing to load os.system from FILE")
    before it is called. The file type is detected from its content, not its suffix.

    Returns the loaded object with records and ordered dicts turned into plain ``dict`` (a
    record's fields become keys, e.g. ``online_params``) and a 0-d object array turned into
    its item (the saved dict); a numeric ``.npy`` is returned as its ``ndarray``.
    """
    source = os.fspath(path)
    with open(source, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            f.seek(0)
            return _plain(_restricted_loads(f, source))
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            _, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            _, _, dtype = np.lib.format._read_array_header(f, version)  # type: ignore[attr-defined]
        if not dtype.hasobject:
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False)
        arr = _restricted_loads(f, source)  # np.save pickles the whole object array
    if not isinstance(arr, np.ndarray):
        raise OfficialFormatError(f"{source}: object .npy did not hold an array")
    return _plain(arr)
