"""The mask branch of the RoI heads (Mask R-CNN §3): a small FCN predicts an M×M mask per class
for every RoI; only the ground-truth class's mask is trained and only the detected class's mask
is used.

Shapes: R+ positive RoIs over the batch, C mask channels (see `mask_channel`), M = 2 × pool size.

    training:  positive RoIs --pooler (14×14)--> head --> (R+, C, M, M); targets: each RoI's
               ground-truth mask RoIAligned to M×M; loss: per-pixel binary cross-entropy (§3)
    inference: detection boxes --> (D, C, M, M) --> the detected class's probabilities (D, M, M),
               then pasted into the original image at the detection's box, kept as the crop
               inside the box (`MaskCrops`; `mask_paste.paste_mask_crops`)

`mask_loss` "sigmoid" is the paper's; "softmax" its multinomial ablation (background + K channels,
per-pixel cross-entropy). This module is the one place that knows the difference: the channel
layout (`mask_channel`), the loss (`mask_loss`) and the decoding (`class_masks`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.roi_align import roi_align
from ..structures import Detections, Targets
from .mask_paste import paste_mask_crops, paste_masks
from .roi_pooler import MultiScaleRoIPooler
from .targets import PositiveRoIs
from .traceable import count

MASK_LOSSES = ("sigmoid", "softmax")


def mask_channel(labels: Tensor, *, num_channels: int, mask_loss: str) -> Tensor:
    """(D,) labels in 1..K -> (D,) the head's output channel that holds each label's mask: the
    one place that knows the channel layout (K per-class maps, 1 class-agnostic map, or background
    + K maps for the softmax ablation)."""
    if mask_loss == "softmax":
        return labels
    if num_channels == 1:
        return torch.zeros_like(labels)
    return labels - 1


def class_masks(mask_logits: Tensor, labels: Tensor, *, mask_loss: str, as_logits: bool = False) -> Tensor:
    """(D, C, M, M) logits and (D,) labels in 1..K -> (D, M, M) probabilities of each label's mask
    (or, `as_logits`, their log-odds: sigmoid(log-odds) = probability). Trace-safe."""
    index = torch.arange(count(labels), device=labels.device)
    channel = mask_channel(labels, num_channels=mask_logits.shape[1], mask_loss=mask_loss)
    if mask_loss == "softmax":
        probs = mask_logits.softmax(dim=1)[index, channel]
        if not as_logits:
            return probs
        probs = probs.clamp(1e-6, 1 - 1e-6)
        return torch.log(probs) - torch.log1p(-probs)
    selected = mask_logits[index, channel]
    return selected if as_logits else selected.sigmoid()


def mask_targets(
    gt_masks: list[Tensor], boxes: list[Tensor], matched_gt: list[Tensor], *, resolution: int, aligned: bool
) -> Tensor:
    """Per image: the (G_i, H, W) masks and R+_i positive RoIs with their matched instance ->
    (R+, M, M) soft targets in [0, 1] (RoIAlign of the binary mask onto each RoI)."""
    out = []
    for masks, b, m in zip(gt_masks, boxes, matched_gt):
        if len(b) == 0:
            continue
        rois = torch.cat((m.to(b.dtype)[:, None], b), dim=1)
        crops = roi_align(
            masks[:, None].to(b.dtype),
            rois,
            resolution,
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=aligned,
        )
        out.append(crops[:, 0])
    if not out:
        device = boxes[0].device if boxes else "cpu"
        return torch.zeros((0, resolution, resolution), device=device)
    return torch.cat(out)


def mask_loss(
    mask_logits: Tensor, gt_labels: Tensor, gt_masks: Tensor, *, mask_loss: str = "sigmoid"
) -> Tensor:
    """Mask loss on positive RoIs (Mask R-CNN §3): mean per-pixel binary cross-entropy on the
    ground-truth class's M×M logits only ("sigmoid"); "softmax" is the paper's multinomial ablation,
    a per-pixel cross-entropy over background + K classes.

    mask_logits (R, C, M, M) with C = K (per-class), 1 (class-agnostic) or K+1 (softmax);
    gt_labels (R,) in 1..K; gt_masks (R, M, M) in [0, 1].
    """
    if gt_masks.numel() == 0:
        return mask_logits.sum() * 0
    if mask_loss == "softmax":
        pixel_labels = torch.where(
            gt_masks >= 0.5, gt_labels[:, None, None], torch.zeros_like(gt_labels)[:, None, None]
        )
        return F.cross_entropy(mask_logits, pixel_labels)
    channel = mask_channel(gt_labels, num_channels=mask_logits.shape[1], mask_loss=mask_loss)
    selected = mask_logits[torch.arange(gt_labels.shape[0], device=gt_labels.device), channel]
    return F.binary_cross_entropy_with_logits(selected, gt_masks.to(selected.dtype))


class MaskBranch(nn.Module):
    """Pooler + mask head (its last 1×1 conv is the predictor), with the loss and pasting settings."""

    name = "mask"

    def __init__(
        self,
        *,
        pooler: MultiScaleRoIPooler,
        head: nn.Module,
        mask_loss: str = "sigmoid",
        threshold: float = 0.5,
        paste: str = "torchvision",
    ):
        super().__init__()
        if mask_loss not in MASK_LOSSES:
            raise ValueError(f"unknown mask loss {mask_loss!r}; choose one of {MASK_LOSSES}")
        self.pooler = pooler
        self.head = head
        self.mask_loss = mask_loss  # sigmoid (the paper) | softmax (its multinomial ablation)
        self.threshold = threshold
        self.paste = paste  # torchvision | detectron2: see mask_paste.paste_masks

    # True: masks pasted as crops inside their boxes (memory follows the boxes); False: as full
    # (D, H, W) planes, the path before crops, kept for comparisons (same masks, bit for bit)
    paste_crops = True

    @property
    def resolution(self) -> int:
        """M: the side of the predicted masks (the deconvolution doubles the pooled size)."""
        return 2 * self.pooler.output_size

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Per-image RoIs -> mask logits (R, C, M, M)."""
        return self.head(self.pooler(features, boxes))

    def loss(self, features: list[Tensor], rois: PositiveRoIs, targets: list[Targets]) -> dict[str, Tensor]:
        if any(t.masks is None for t in targets):
            raise ValueError("the mask branch trains on ground-truth masks, but some targets have none")
        logits = self(features, rois.boxes)
        gt_masks = mask_targets(
            [t.masks for t in targets],
            rois.boxes,
            rois.matched_gt,
            resolution=logits.shape[-1],
            aligned=self.pooler.aligned,
        )
        return {"loss_mask": mask_loss(logits, rois.labels, gt_masks, mask_loss=self.mask_loss)}

    def class_masks(
        self, features: list[Tensor], boxes: list[Tensor], labels: Tensor, *, as_logits: bool = False
    ) -> Tensor:
        """Per-image (D_i, 4) boxes (input frame) and their (D,) labels -> (D, M, M) probabilities of
        each label's mask (or log-odds, `as_logits`). Trace-safe for one image, none included."""
        return class_masks(self(features, boxes), labels, mask_loss=self.mask_loss, as_logits=as_logits)

    def predict(
        self, features: list[Tensor], detections: list[Detections], *, record=None
    ) -> list[Detections]:
        """Adds `mask_probs` (D, M, M) to each image's detections (boxes in the input frame);
        `record` (a `roi_heads.HeadsRecord`) gets the class masks' log-odds."""
        boxes = [d.boxes for d in detections]
        labels = torch.cat([d.labels for d in detections])
        if len(labels):
            logits = self(features, boxes)
            probs = class_masks(logits, labels, mask_loss=self.mask_loss)
            if record is not None:
                record.mask_logits = class_masks(logits, labels, mask_loss=self.mask_loss, as_logits=True)
        else:
            probs = features[0].new_zeros((0, self.resolution, self.resolution))
            if record is not None:
                record.mask_logits = probs
        return [
            dataclasses.replace(d, mask_probs=p)
            for d, p in zip(detections, probs.split([len(b) for b in boxes]))
        ]

    def to_original(
        self, det: Detections, *, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Detections:
        """Pastes `mask_probs` into the original image at the (already rescaled) boxes -> `masks`,
        kept as `MaskCrops` (each mask inside its box; `det.masks` builds the planes on demand), or
        as full planes when `paste_crops` is False (the same masks, D × H × W bytes)."""
        assert det.mask_probs is not None, "predict() fills mask_probs before to_original()"
        paste = paste_mask_crops if self.paste_crops else paste_masks
        masks = paste(det.mask_probs, det.boxes, original_size, threshold=self.threshold, mode=self.paste)
        return det.replace(masks=masks)
