"""Mask R-CNN model components; `build_model(cfg)` assembles them."""

from .build import build_model
from .mask_rcnn import MaskRCNN

__all__ = ["MaskRCNN", "build_model"]
