"""maskrcnn: Mask R-CNN for instance segmentation in PyTorch."""

from .config import Config
from .model import MaskRCNN, build_model
from .structures import Detections, ImageBatch, Proposals, Sample, Targets

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Detections",
    "ImageBatch",
    "MaskRCNN",
    "Proposals",
    "Sample",
    "Targets",
    "build_model",
    "load",
]


def load(path_or_url: str, *, map_location: str = "cpu", sha256: str | None = None) -> MaskRCNN:
    """Load a model from one of our checkpoint files (a path, or an http(s)/file URL)."""
    from .engine.checkpoint import load_model

    return load_model(path_or_url, map_location=map_location, sha256=sha256)
