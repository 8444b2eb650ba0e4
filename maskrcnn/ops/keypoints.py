"""Keypoint utilities on (..., J, 3) tensors whose last axis is (x, y, v): v is COCO's visibility
(0 not labelled, 1 labelled but hidden, 2 visible) for ground truth, a score for predictions."""

from __future__ import annotations

from torch import Tensor

from .boxes import size_ratios


def scale_keypoints(keypoints: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map keypoints from an image of size `from_size` (h, w) to one of size `to_size`; v unchanged."""
    ratio_h, ratio_w = size_ratios(from_size, to_size)
    out = keypoints.clone()
    out[..., 0] *= ratio_w
    out[..., 1] *= ratio_h
    return out
