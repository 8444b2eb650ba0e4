"""IoU matching of predictions (anchors or proposals) to ground-truth boxes.

Given an IoU matrix (G, P), each prediction gets the index of its best ground truth, or
BACKGROUND (-1) if that IoU < low, or IGNORE (-2) if low <= IoU < high. With
`allow_low_quality_matches`, every ground truth also keeps the predictions with which it has
its highest IoU (ties included), even below `high` (Faster R-CNN §3.1.2, condition (i)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.boxes import box_iou

BACKGROUND = -1
IGNORE = -2


class Matcher:
    def __init__(self, *, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool):
        if low_threshold > high_threshold:
            raise ValueError(f"low threshold {low_threshold} > high threshold {high_threshold}")
        self.high = high_threshold
        self.low = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: Tensor) -> Tensor:
        """(G, P) IoU -> (P,) int64 matched ground-truth index, BACKGROUND or IGNORE."""
        if iou.numel() == 0 or iou.shape[0] == 0:
            return torch.full((iou.shape[1],), BACKGROUND, dtype=torch.int64, device=iou.device)
        best_iou, matches = iou.max(dim=0)
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        below = best_iou < self.low
        between = (best_iou >= self.low) & (best_iou < self.high)
        matches[below] = BACKGROUND
        matches[between] = IGNORE
        if all_matches is not None:
            best_for_each_gt, _ = iou.max(dim=1)
            # all (gt, prediction) pairs that reach the gt's best IoU, ties included
            _, pred_index = torch.where(iou == best_for_each_gt[:, None])
            matches[pred_index] = all_matches[pred_index]
        return matches


def match_labels(
    matcher: Matcher, gt_boxes: Tensor, gt_labels: Tensor, boxes: Tensor
) -> tuple[Tensor, Tensor]:
    """Label P boxes (anchors or proposals) by their matched ground truth: the one place where
    matches become training labels.

    (G, 4) ground-truth boxes with (G,) labels and (P, 4) boxes -> (P,) index of the matched
    instance (0 where there is none) and (P,) labels in gt_labels' dtype: the matched instance's
    label, 0 for background, -1 for ignored.
    """
    if len(gt_boxes) == 0:
        none = torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
        return none, none.to(gt_labels.dtype)
    matches = matcher(box_iou(gt_boxes, boxes))
    labels = gt_labels[matches.clamp(min=0)]
    labels[matches == BACKGROUND] = 0
    labels[matches == IGNORE] = -1
    return matches.clamp(min=0), labels
