"""Non-maximum suppression, per group (class or FPN level) in one call."""

from __future__ import annotations

from torch import Tensor
from torchvision.ops import batched_nms as _batched_nms
from torchvision.ops import nms as _nms


def nms(boxes: Tensor, scores: Tensor, iou_thresh: float) -> Tensor:
    """Indices of kept boxes, by decreasing score."""
    return _nms(boxes, scores, iou_thresh)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float) -> Tensor:
    """NMS applied independently within each group id; kept indices by decreasing score."""
    return _batched_nms(boxes, scores, groups, iou_thresh)
