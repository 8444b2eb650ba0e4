"""RoIAlign (Mask R-CNN §3, "RoIAlign") and RoIPool, wrapping torchvision's kernels.

RoIAlign samples the feature map bilinearly at regularly spaced points inside each bin, with no
quantization of the RoI or bin boundaries; `aligned=True` shifts the box by -0.5 pixel so that a
continuous coordinate c maps to pixel-centre c - 0.5 (detectron2's correction). RoIPool is the
quantized Fast R-CNN operator, kept for the paper's ablation (Table 2c).

rois: (R, 5) rows (batch_index, x1, y1, x2, y2) in image pixels; features (N, C, H, W);
output (R, C, S, S).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align as _roi_align
from torchvision.ops import roi_pool as _roi_pool


def roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: int,
    *,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    return _roi_align(features, rois, (output_size, output_size), spatial_scale, sampling_ratio, aligned)


def roi_pool(features: Tensor, rois: Tensor, output_size: int, *, spatial_scale: float) -> Tensor:
    return _roi_pool(features, rois, (output_size, output_size), spatial_scale)


def boxes_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image lists of (B_i, 4) boxes -> (sum B_i, 5) rows with the image index first."""
    if not boxes:
        return torch.zeros((0, 5))
    index = torch.cat(
        [torch.full((len(b), 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)], dim=0
    )
    return torch.cat((index, torch.cat(boxes, dim=0)), dim=1)
