"""Reading a weights file a user hands us (a torch.save file or a detectron2 `.pkl`) without
running any code it names.

TODO(issue 17, merge): helper SAFE's `maskrcnn/safe_load.py::load_weights_file` is the one reader
of the package; once it is merged, `load_weights_file` below forwards to it and the stand-in here
is deleted (its callers: the CLI's `convert --from detectron2` and `weights.converted`).

Stand-in: torch.load(weights_only=True) for torch.save files; otherwise an unpickler that accepts
only plain containers, numbers, strings and numpy arrays (what detectron2's model-zoo files hold).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

# numpy's array / dtype / scalar reconstruction: what a pickled numpy array needs, nothing else
_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
}


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY:
            raise UserError(
                f"{self.path}: refused: it needs {module}.{name}, which could run code; only plain "
                "containers, numbers, strings and numpy arrays are read from a .pkl"
            )
        return super().find_class(module, name)


def _stand_in(path: str | Path, *, map_location: str = "cpu") -> Any:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from e
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            raise UserError(f"{path}: refused: {str(e).splitlines()[0]}") from None
        except Exception as e:
            raise UserError(f"{path}: not a readable torch.save file ({type(e).__name__})") from None
    try:
        return _ArraysOnly(data, path).load()
    except UserError:
        raise
    except Exception as e:  # truncated or garbage
        raise UserError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from None


def load_weights_file(path: str | Path, *, map_location: str = "cpu") -> Any:
    """The object in a weights file, read safely (see the module docstring).
    TODO(issue 17, merge): `return maskrcnn.safe_load.load_weights_file(path, map_location=...)`."""
    return _stand_in(path, map_location=map_location)
