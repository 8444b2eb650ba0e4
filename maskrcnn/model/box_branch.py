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
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import nonempty_mask
from ..structures import Detections
from .losses import fast_rcnn_loss
from .roi_pooler import MultiScaleRoIPooler
from .targets import SampledRoIs
from .traceable import clip_boxes, grouped_nms, scale_boxes


def detect_image(
    class_logits: Tensor,
    box_deltas: Tensor,
    proposals: Tensor,
    image_size: tuple,
    *,
    box_coder: BoxCoder,
    score_thresh: float | Tensor,
    nms_thresh: float,
    detections_per_image: int,
    min_size: float = 1e-2,
    min_size_exclusive: bool = False,
) -> Detections:
    """One image's (R, K+1) logits, (R, 4*(K+1)) deltas and (R, 4) proposals -> Detections
    (boxes, scores, labels and `proposal_index`, the proposal each detection was refined from) in
    the proposals' frame: every (RoI, class) pair with score > score_thresh decoded, clipped, boxes
    narrower or lower than min_size dropped (<= min_size when exclusive), per-class NMS, the best
    `detections_per_image`. Trace-safe: `image_size` and `score_thresh` may be tensors."""
    scores = F.softmax(class_logits, -1)
    # every (RoI, class) box decoded and clipped, as torchvision does: (R, 4*(K+1)) -> (R, K+1, 4);
    # then one selection of the candidates (score above the threshold, box not empty), background
    # excluded, in (RoI, class) row-major order: one wait for the host on a GPU, not two
    boxes = clip_boxes(box_coder.decode(box_deltas, proposals)[:, 1:], image_size)
    ok = (scores[:, 1:] > score_thresh) & nonempty_mask(boxes, min_size, exclusive=min_size_exclusive)
    roi, cls = torch.where(ok)
    boxes, cand_scores = boxes[roi, cls], scores[roi, cls + 1]
    cls = cls + 1
    num_classes = class_logits.shape[1] - 1
    keep = grouped_nms(boxes, cand_scores, cls, nms_thresh, group_ids=range(1, num_classes + 1))
    keep = keep[:detections_per_image]
    return Detections(boxes=boxes[keep], scores=cand_scores[keep], labels=cls[keep], proposal_index=roi[keep])


def detect_boxes(
    class_logits: Tensor, box_deltas: Tensor, proposals: list[Tensor], image_sizes: list[tuple], **settings
) -> list[Detections]:
    """(R, K+1) logits and (R, 4*(K+1)) deltas of the batch's per-image proposals -> `detect_image`
    of each image (`settings`: its keyword arguments). Trace-safe for one image (no split)."""
    if len(proposals) > 1:
        counts = [len(p) for p in proposals]
        class_logits, box_deltas = class_logits.split(counts), box_deltas.split(counts)
    else:
        class_logits, box_deltas = [class_logits], [box_deltas]
    return [
        detect_image(logits, deltas, props, size, **settings)
        for logits, deltas, props, size in zip(class_logits, box_deltas, proposals, image_sizes)
    ]


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
        score_thresh: float | Tensor | None = None,
    ) -> list[Detections]:
        """Per-image proposals -> Detections in the input frame (with `proposal_index`).
        `score_thresh` replaces the branch's own threshold for this call (a tensor while tracing)."""
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
        """Boxes from the resized input frame to original-image pixels (sizes may be traced)."""
        return dataclasses.replace(det, boxes=scale_boxes(det.boxes, input_size, original_size))
