"""maskrcnn: Mask R-CNN for instance segmentation in PyTorch.

The public names load lazily (PEP 562), so `maskrcnn --help` and `import maskrcnn.config` do not
pay for importing torch and torchvision.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "maskrcnn.config",
    "MaskRCNN": "maskrcnn.model",
    "build_model": "maskrcnn.model",
    "Detections": "maskrcnn.structures",
    "Predictor": "maskrcnn.predictor",
    "ImageBatch": "maskrcnn.structures",
    "Proposals": "maskrcnn.structures",
    "Sample": "maskrcnn.structures",
    "Targets": "maskrcnn.structures",
}

__all__ = [
    "Config",
    "Detections",
    "ImageBatch",
    "MaskRCNN",
    "Predictor",
    "Proposals",
    "Sample",
    "Targets",
    "build_model",
    "load",
]

if TYPE_CHECKING:
    from .config import Config
    from .model import MaskRCNN, build_model
    from .predictor import Predictor
    from .structures import Detections, ImageBatch, Proposals, Sample, Targets


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'maskrcnn' has no attribute {name!r}")


def load(
    path_or_url: str, *, device: str = "cpu", sha256: str | None = None, map_location: str | None = None
) -> Predictor:
    """A Predictor for one of our checkpoint files (a path, or an http(s)/file URL checked against
    `sha256`) or for published weights by name (`maskrcnn weights` lists them: downloaded, checked
    and converted once, then read from the cache), on `device`. Its `.model` is the MaskRCNN module
    (for training-style use), or for a `.onnx` file written by `maskrcnn export` an
    `maskrcnn.export.runtime.OnnxModel` run by ONNX Runtime (`pip install maskrcnn[onnx]`)."""
    from . import weights
    from .checkpoints import load_model
    from .errors import UserError
    from .predictor import Predictor

    device = map_location or device
    if weights.is_name(str(path_or_url)):  # a registry name (or an unknown bare word: listed names)
        if sha256:
            raise UserError(f"sha256= is for paths and URLs; the registry holds the hash of {path_or_url!r}")
        return Predictor(weights.load_model(str(path_or_url), map_location=device), device=device)
    if str(path_or_url).lower().endswith(".onnx"):  # an exported graph, run by ONNX Runtime
        from .checkpoints import resolve_weights
        from .export.runtime import OnnxModel

        onnx_path = resolve_weights(path_or_url, sha256=sha256)
        return Predictor(OnnxModel(onnx_path, device=device), device=device)
    return Predictor(load_model(path_or_url, map_location=device, sha256=sha256), device=device)
