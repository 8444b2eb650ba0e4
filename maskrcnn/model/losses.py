"""Loss functions: pure functions of predictions and targets (no module state).

L = L_rpn_cls + L_rpn_box + L_cls + L_box + L_mask (Mask R-CNN §3, "Multi-task loss"); the
mask loss lives with its branch (`mask_branch.mask_loss`), as the keypoint loss does.
Normalizations follow Detectron/torchvision: box losses are summed over positives and divided
by the number of sampled anchors / RoIs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def box_regression_loss(pred: Tensor, target: Tensor, *, kind: str, beta: float) -> Tensor:
    """Summed smooth-L1 (Fast R-CNN eq. 3, with transition point beta) or L1 loss."""
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")
    if kind == "l1":
        return F.l1_loss(pred, target, reduction="sum")
    raise ValueError(f"unknown box loss {kind!r}; choose smooth_l1 or l1")


def rpn_loss(
    objectness: Tensor,
    pred_deltas: Tensor,
    gt_labels: Tensor,
    gt_deltas: Tensor,
    sampled_pos: Tensor,
    sampled_neg: Tensor,
    *,
    box_loss: str = "smooth_l1",
    beta: float = 1.0 / 9,
) -> dict[str, Tensor]:
    """RPN losses over sampled anchors (Faster R-CNN eq. 1).

    objectness (N*A_all,) logits; pred_deltas and gt_deltas (N*A_all, 4) (gt_deltas need only be
    valid at positives); gt_labels (N*A_all,) in {1, 0, -1}; sampled_pos / sampled_neg boolean.
    """
    pos = torch.where(sampled_pos)[0]
    sampled = torch.cat([pos, torch.where(sampled_neg)[0]])
    num_sampled = max(sampled.numel(), 1)
    loss_box = box_regression_loss(pred_deltas[pos], gt_deltas[pos], kind=box_loss, beta=beta) / num_sampled
    if sampled.numel() == 0:
        loss_cls = objectness.sum() * 0
    else:
        loss_cls = F.binary_cross_entropy_with_logits(
            objectness[sampled], gt_labels[sampled].to(objectness.dtype)
        )
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


def fast_rcnn_loss(
    class_logits: Tensor,
    box_deltas: Tensor,
    gt_labels: Tensor,
    gt_deltas: Tensor,
    *,
    box_loss: str = "smooth_l1",
    beta: float = 1.0 / 9,
) -> dict[str, Tensor]:
    """Box head losses over R sampled RoIs (Fast R-CNN eq. 1).

    class_logits (R, K+1); box_deltas (R, 4*(K+1)) per-class deltas; gt_labels (R,) in 0..K;
    gt_deltas (R, 4). Only the deltas of the ground-truth class of positive RoIs are penalized.
    """
    loss_cls = F.cross_entropy(class_logits, gt_labels)
    pos = torch.where(gt_labels > 0)[0]
    # (R, 4*(K+1)) -> (R, K+1, 4)
    per_class = box_deltas.reshape(box_deltas.shape[0], -1, 4)
    loss = box_regression_loss(per_class[pos, gt_labels[pos]], gt_deltas[pos], kind=box_loss, beta=beta)
    return {"loss_cls": loss_cls, "loss_box": loss / max(gt_labels.numel(), 1)}
