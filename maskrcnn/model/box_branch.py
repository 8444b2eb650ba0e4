"""The box branch of the RoI heads (Fast R-CNN, with FPN): RoI features -> K+1 class scores and
per-class box refinements; its loss on sampled RoIs and its post-processing into detections.

Shapes: R RoIs over the batch, K foreground classes, D detections of an image.

    features, RoIs --pooler (7×7)--> (R, C, 7, 7) --head--> (R, fc) --predictor--> (R, K+1), (R, 4(K+1))
    training:  cross-entropy over K+1 classes + smooth-L1 on the ground-truth class's deltas
    inference: softmax, decode every (RoI, class) above the score threshold, per-class NMS, top D
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import scale_boxes
from ..structures import Detections
from .losses import fast_rcnn_loss
from .postprocess import detect_boxes
from .roi_pooler import MultiScaleRoIPooler
from .targets import SampledRoIs


class BoxBranch(nn.Module):
    """Pooler + head + predictor of the box branch, with its loss and post-processing settings."""

    name = "box"

    def __init__(
        self,
        *,
        pooler: MultiScaleRoIPooler,
        head: nn.Module,
        predictor: nn.Module,
        box_coder: BoxCoder,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0 / 9,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        min_size: float = 1e-2,
        min_size_exclusive: bool = False,
    ):
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.predictor = predictor
        self.box_coder = box_coder
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.min_size = min_size
        self.min_size_exclusive = min_size_exclusive

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-image RoIs -> class logits (R, K+1) and per-class deltas (R, 4*(K+1))."""
        return self.predictor(self.head(self.pooler(features, boxes)))

    def loss(self, features: list[Tensor], rois: SampledRoIs) -> dict[str, Tensor]:
        class_logits, box_deltas = self(features, rois.boxes)
        return fast_rcnn_loss(
            class_logits,
            box_deltas,
            torch.cat(rois.gt_labels),
            rois.gt_deltas,
            box_loss=self.box_loss,
            beta=self.smooth_l1_beta,
        )

    def predict(
        self,
        features: list[Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        *,
        score_thresh: float | None = None,
    ) -> list[Detections]:
        """Per-image proposals -> Detections in the input frame (with `proposal_index`).
        `score_thresh` replaces the branch's own threshold for this call."""
        class_logits, box_deltas = self(features, proposals)
        return detect_boxes(
            class_logits,
            box_deltas,
            proposals,
            image_sizes,
            box_coder=self.box_coder,
            score_thresh=self.score_thresh if score_thresh is None else score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_image=self.detections_per_image,
            min_size=self.min_size,
            min_size_exclusive=self.min_size_exclusive,
        )

    def to_original(
        self, det: Detections, *, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Detections:
        """Boxes from the resized input frame to original-image pixels."""
        return dataclasses.replace(det, boxes=scale_boxes(det.boxes, input_size, original_size))
