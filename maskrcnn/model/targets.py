"""Training targets of the RoI heads: match proposals to ground truth, sample RoIs, encode box
regression targets. Each branch builds its own targets on the positive RoIs
(`mask_branch.mask_targets`, `keypoint_branch.keypoint_targets`).

Shapes: per image P_i proposals and G_i ground-truth instances; R sampled RoIs in all; R+ positives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..ops.box_coder import BoxCoder
from ..structures import Targets
from .matcher import Matcher, match_labels
from .sampler import BalancedSampler


@dataclass
class PositiveRoIs:
    """The foreground RoIs of a batch, what the mask and keypoint branches train on (R+ in all)."""

    boxes: list[Tensor]  # per image (R+_i, 4)
    matched_gt: list[Tensor]  # per image (R+_i,) index of the matched ground-truth instance
    labels: Tensor  # (R+,) in 1..K


@dataclass
class SampledRoIs:
    boxes: list[Tensor]  # per image (R_i, 4), in ascending proposal order
    gt_labels: list[Tensor]  # per image (R_i,) in 0..K
    matched_gt: list[Tensor]  # per image (R_i,) index of the matched ground truth (0 for background)
    gt_deltas: Tensor  # (R, 4)

    def positives(self) -> PositiveRoIs:
        keep = [torch.where(label > 0)[0] for label in self.gt_labels]
        return PositiveRoIs(
            boxes=[b[k] for b, k in zip(self.boxes, keep)],
            matched_gt=[m[k] for m, k in zip(self.matched_gt, keep)],
            labels=torch.cat([label[k] for label, k in zip(self.gt_labels, keep)]),
        )


def sample_rois(
    proposals: list[Tensor],
    targets: list[Targets],
    *,
    matcher: Matcher,
    sampler: BalancedSampler,
    box_coder: BoxCoder,
) -> SampledRoIs:
    """Ground-truth boxes join the proposals (so every object has a perfect RoI), then each
    RoI is labelled by its matched ground truth (IoU >= fg threshold) or background, and a
    balanced subset is drawn."""
    proposals = [torch.cat((p, t.boxes.to(p.dtype))) for p, t in zip(proposals, targets)]
    matched, labels = [], []
    for p, t in zip(proposals, targets):
        m, label = match_labels(matcher, t.boxes, t.labels.to(torch.int64), p)
        matched.append(m)
        labels.append(label)
    positives, negatives = sampler(labels)
    out_boxes, out_labels, out_matched, gt_boxes = [], [], [], []
    for p, t, label, m, pos, neg in zip(proposals, targets, labels, matched, positives, negatives):
        keep = torch.where(pos | neg)[0]
        out_boxes.append(p[keep])
        out_labels.append(label[keep])
        out_matched.append(m[keep])
        boxes = t.boxes if len(t) else torch.zeros((1, 4), dtype=p.dtype, device=p.device)
        gt_boxes.append(boxes[m[keep]])
    gt_deltas = box_coder.encode(torch.cat(gt_boxes), torch.cat(out_boxes))
    return SampledRoIs(boxes=out_boxes, gt_labels=out_labels, matched_gt=out_matched, gt_deltas=gt_deltas)
