"""Reading weights files without running code: `load_weights_file(path)`.

A checkpoint is a pickle, and a pickle can name any function to call while it is read (`os.system`
with a command line, say): reading a file someone hands over (a download, a link) must never call
anything but the constructors of data. Three kinds of file are read, told apart by their first bytes:

- a `torch.save` file (a zip archive, `PK`), and the older non-zip `torch.save` format (a pickle
  whose first object is torch's magic number): `torch.load(weights_only=True)`, which builds
  tensors, numbers, strings and plain containers only, here also numpy arrays;
- any other pickle (detectron2's model-zoo `.pkl`: {"model": {name: ndarray}, "__author__": str,
  ...}, often protocol 2 from Python 2, hence latin-1 for its byte strings): `_DataUnpickler`,
  which accepts the opcodes of plain containers, numbers and strings, and of all the globals only
  `collections.OrderedDict` and what numpy arrays of numbers and strings are rebuilt from.

A file that names anything else is refused before anything of it runs: a UserError naming the file
and the global it asked for. A missing file is the OSError of `open`; an empty, truncated or
garbage file is a UserError naming the file.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = ["ACCEPTED", "Refused", "load_weights_file"]

ACCEPTED = "only tensors, numbers, strings, plain containers and numpy arrays are accepted"
_ZIP_MAGIC = b"PK\x03\x04"
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's array rebuild
_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar rebuild
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy's array rebuild in pickle protocol 5
# numpy arrays and scalars (numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*); torch's
# unpickler also needs the dtype classes: those of numbers, booleans and strings. (The items of an
# object array in a plain pickle are read by the same unpickler, so they are plain data too.)
_DTYPES = [np.dtype(code) for code in "?bBhHiIlLqQefdgFDGSUV"]
_NUMPY_GLOBALS = {
    "numpy.ndarray": np.ndarray,
    "numpy.dtype": np.dtype,
    **{f"numpy.{core}.multiarray._reconstruct": _RECONSTRUCT for core in ("core", "_core")},
    **{f"numpy.{core}.multiarray.scalar": _SCALAR for core in ("core", "_core")},
    **{f"numpy.{core}.numeric._frombuffer": _FROMBUFFER for core in ("core", "_core")},
    **{f"numpy.dtypes.{type(d).__name__}": type(d) for d in _DTYPES},
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of Python 3 use it (bytes written as latin-1 text),
    and for nothing else."""
    spelled = str(encoding).lower().replace("-", "").replace("_", "")
    if not isinstance(text, str) or spelled not in ("latin1", "latin", "l1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode is accepted for latin-1 text only, not {encoding!r}")
    return text.encode("latin1")


_PICKLE_GLOBALS = {
    **_NUMPY_GLOBALS,
    "collections.OrderedDict": collections.OrderedDict,
    "_codecs.encode": _latin1_encode,
}


class Refused(UserError):
    """A file that needs a global outside the accepted ones (`name`)."""

    def __init__(self, source: str, name: str) -> None:
        self.name = name
        super().__init__(f"{source}: refused to load: it needs {name}, which could run code ({ACCEPTED})")


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of `_PICKLE_GLOBALS`; persistent ids (torch's
    storages) are not handled either."""

    def __init__(self, file, *, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2's names (protocol < 3: __builtin__.eval, commands.Popen) as Python 3 calls them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _PICKLE_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise Refused(self.source, f"{module}.{name}")
        return found


def _torch_load(path: Path, source: str, map_location: Any) -> Any:
    accepted = [np.ndarray, np.dtype, *[type(d) for d in _DTYPES]]
    accepted += [
        (obj, name) for name, obj in _NUMPY_GLOBALS.items() if ".multiarray." in name or ".numeric." in name
    ]
    try:
        with torch.serialization.safe_globals(accepted):
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text:
            wanted = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", text)
            if wanted:
                raise Refused(source, wanted.group(1) or wanted.group(2)) from None
            raise UserError(f"{source}: refused to load: {_torch_reason(text)} ({ACCEPTED})") from None
        raise _unreadable(source, e) from None
    except Exception as e:  # zip, storage and pickle errors of a damaged or foreign file
        raise _unreadable(source, e) from None


def _torch_reason(text: str) -> str:
    """The line of torch's weights-only error that says what the file needed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    general = ("Weights only load failed", "(1)", "(2)", "Check", "Please")
    detail = [line for line in lines if not line.startswith(general)]
    return (detail[0] if detail else lines[0]).removeprefix("WeightsUnpickler error: ").rstrip(".")


def _unreadable(source: str, error: Exception) -> UserError:
    text = str(error).strip()
    detail = re.split(r"(?<=\.)\s", text.splitlines()[0])[0] if text else ""  # its first sentence
    detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return UserError(
        f"{source}: not a readable checkpoint: neither a complete torch.save file nor a Python pickle "
        f"of weights (truncated or damaged?) ({detail})"
    )


def load_weights_file(path: str | Path, *, map_location: Any = "cpu") -> Any:
    """The object stored in a weights file (see the module docstring): a torch.save file through
    `torch.load(weights_only=True)` (tensors moved to `map_location`), another pickle through the
    data-only unpickler. Anything that needs other globals -> UserError naming the file and the
    global; an empty, truncated or garbage file -> UserError naming the file."""
    path = Path(path)
    source = str(path)
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
        if not head:
            raise UserError(f"{source}: the file is empty, not a checkpoint")
        if head != _ZIP_MAGIC:
            f.seek(0)
            try:
                first = _DataUnpickler(f, source=source).load()
            except Refused:
                raise
            except Exception as e:  # pickle errors, EOF, and what numpy raises on bad array data
                raise _unreadable(source, e) from None
            if type(first) is not int or first != torch.serialization.MAGIC_NUMBER:
                return first  # a plain pickle
    return _torch_load(path, source, map_location)  # a zip, or torch's older format (magic number first)
