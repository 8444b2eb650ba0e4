"""The mask branch of the RoI heads (Mask R-CNN §3): a small FCN predicts an M×M mask per class
for every RoI; only the ground-truth class's mask is trained and only the detected class's mask
is used.

Shapes: R+ positive RoIs over the batch, C mask channels (see `mask_channel`), M = 2 × pool size.

    training:  positive RoIs --pooler (14×14)--> head --> (R+, C, M, M); targets: each RoI's
               ground-truth mask RoIAligned to M×M; loss: per-pixel binary cross-entropy (§3)
    inference: detection boxes --> (D, C, M, M) --> the detected class's probabilities (D, M, M),
               then pasted into the original image at the detection's box (D, H, W) bool
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..structures import Detections, Targets
from .losses import mask_loss
from .postprocess import paste_masks, select_mask_probs
from .roi_pooler import MultiScaleRoIPooler
from .targets import PositiveRoIs, mask_targets


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
        self.pooler = pooler
        self.head = head
        self.mask_loss = mask_loss  # sigmoid (the paper) | softmax (its multinomial ablation)
        self.threshold = threshold
        self.paste = paste  # torchvision | detectron2: see postprocess.paste_masks

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

    def predict(self, features: list[Tensor], detections: list[Detections]) -> list[Detections]:
        """Adds `mask_probs` (D, M, M) to each image's detections (boxes in the input frame)."""
        boxes = [d.boxes for d in detections]
        labels = torch.cat([d.labels for d in detections])
        if len(labels):
            probs = select_mask_probs(self(features, boxes), labels, mask_loss=self.mask_loss)
        else:
            probs = features[0].new_zeros((0, self.resolution, self.resolution))
        return [
            dataclasses.replace(d, mask_probs=p)
            for d, p in zip(detections, probs.split([len(b) for b in boxes]))
        ]

    def to_original(
        self, det: Detections, *, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Detections:
        """Pastes `mask_probs` into the original image at the (already rescaled) boxes -> `masks`."""
        assert det.mask_probs is not None, "predict() fills mask_probs before to_original()"
        masks = paste_masks(
            det.mask_probs, det.boxes, original_size, threshold=self.threshold, mode=self.paste
        )
        return dataclasses.replace(det, masks=masks)
