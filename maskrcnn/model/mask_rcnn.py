"""Mask R-CNN (He et al. 2017): Faster R-CNN with FPN plus a parallel mask branch.

    images -> preprocess -> backbone + FPN -> RPN -> RoI pooling -> box head -> detections
                                                              \\-> mask head -> masks

`loss(images, targets)` returns the dict of the five losses; `predict(images)` returns one
Detections per image in original-image pixels. `forward` follows torchvision: in training mode
with targets it returns losses, otherwise detections.

Shapes: N images; images are (3, H_i, W_i) float tensors in [0, 1].
"""

from __future__ import annotations

from collections import defaultdict
from typing import Union

import torch
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import scale_boxes
from ..structures import Detections, ImageBatch, Proposals, Targets
from .losses import fast_rcnn_loss, mask_loss
from .matcher import Matcher
from .postprocess import detect_boxes, paste_masks, select_mask_probs
from .preprocess import Preprocessor, padded_shape, resized_shape
from .roi_pooler import MultiScaleRoIPooler
from .rpn import RegionProposalNetwork
from .sampler import BalancedSampler
from .targets import mask_targets, sample_rois

TargetsLike = Union[Targets, dict]


class MaskRCNN(nn.Module):
    def __init__(
        self,
        *,
        preprocessor: Preprocessor,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        box_pooler: MultiScaleRoIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_pooler: MultiScaleRoIPooler,
        mask_head: nn.Module,
        box_coder: BoxCoder,
        roi_matcher: Matcher,
        roi_sampler: BalancedSampler,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0 / 9,
        mask_loss_kind: str = "sigmoid",
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
        mask_threshold: float = 0.5,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.rpn = rpn
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.mask_pooler = mask_pooler
        self.mask_head = mask_head
        self.box_coder = box_coder
        self.roi_matcher = roi_matcher
        self.roi_sampler = roi_sampler
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta
        self.mask_loss_kind = mask_loss_kind
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_image = detections_per_image
        self.mask_threshold = mask_threshold
        self.class_names = list(class_names) if class_names else None
        self.config = None  # set by build_model; travels into checkpoints

    def set_channels_last(self, enabled: bool = True) -> MaskRCNN:
        """Keep conv weights and the padded image batch in channels-last memory (NHWC), which the
        CPU's oneDNN convolutions and tensor-core GPUs prefer; values are unchanged. Returns self."""
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.to(memory_format=memory_format)
        self.preprocessor.memory_format = memory_format
        return self

    # ------------------------------------------------------------------ stages
    def preprocess(self, images: list[Tensor], targets: list[TargetsLike] | None = None):
        images = [_as_float_image(im, i) for i, im in enumerate(images)]
        device = self.preprocessor.pixel_mean.device
        images = [im.to(device) for im in images]
        if targets is not None:
            targets = [Targets.from_any(t).to(device) for t in targets]
        return self.preprocessor(images, targets)

    def propose(self, batch: ImageBatch, features: list[Tensor], targets=None):
        padded = tuple(batch.tensor.shape[-2:])
        return self.rpn(features, batch.image_sizes, padded, targets)

    def box_outputs(self, features: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Per-image RoIs -> class logits (R, K+1) and per-class deltas (R, 4*(K+1))."""
        return self.box_predictor(self.box_head(self.box_pooler(features, boxes)))

    def mask_logits(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Per-image RoIs -> mask logits (R, C, 28, 28)."""
        return self.mask_head(self.mask_pooler(features, boxes))

    # ------------------------------------------------------------------ training
    def loss(self, images: list[Tensor], targets: list[TargetsLike]) -> dict[str, Tensor]:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            _check_targets(Targets.from_any(t), i)
        batch, targets = self.preprocess(images, targets)
        features = self.backbone(batch.tensor)
        proposals, losses = self.propose(batch, features, targets)
        rois = sample_rois(
            [p.boxes for p in proposals],
            targets,
            matcher=self.roi_matcher,
            sampler=self.roi_sampler,
            box_coder=self.box_coder,
        )
        class_logits, box_deltas = self.box_outputs(features, rois.boxes)
        losses.update(
            fast_rcnn_loss(
                class_logits,
                box_deltas,
                torch.cat(rois.gt_labels),
                rois.gt_deltas,
                box_loss=self.box_loss,
                beta=self.smooth_l1_beta,
            )
        )
        positive = [torch.where(lab > 0)[0] for lab in rois.gt_labels]
        pos_boxes = [b[p] for b, p in zip(rois.boxes, positive)]
        pos_matched = [m[p] for m, p in zip(rois.matched_gt, positive)]
        pos_labels = torch.cat([lab[p] for lab, p in zip(rois.gt_labels, positive)])
        logits = self.mask_logits(features, pos_boxes)
        gt_masks = mask_targets(
            [t.masks for t in targets],
            pos_boxes,
            pos_matched,
            resolution=logits.shape[-1],
            aligned=self.mask_pooler.aligned,
        )
        losses["loss_mask"] = mask_loss(logits, pos_labels, gt_masks, kind=self.mask_loss_kind)
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: list) -> list[Detections]:
        """Detections per image. Images are batched with others of the same padded size, so a
        result never depends on which other images share the call. An image is a (3, H, W) tensor
        in [0, 1], or a file path, PIL image or numpy array (see `maskrcnn.inputs.as_image_tensor`)."""
        from ..inputs import as_image_tensor

        was_training = self.training
        self.eval()
        try:
            images = [_as_float_image(as_image_tensor(im), i) for i, im in enumerate(images)]
            groups: dict[tuple[int, int], list[int]] = defaultdict(list)
            for i, im in enumerate(images):
                groups[self._padded_size(im)].append(i)
            results: list[Detections | None] = [None] * len(images)
            for indices in groups.values():
                for i, det in zip(indices, self._predict_batch([images[i] for i in indices])):
                    results[i] = det
            return results  # type: ignore[return-value]
        finally:
            self.train(was_training)

    def _padded_size(self, image: Tensor) -> tuple[int, int]:
        p = self.preprocessor
        size = resized_shape(image.shape[-2], image.shape[-1], min_size=p.min_size[-1], max_size=p.max_size)
        return padded_shape([size], p.size_divisible)

    def _predict_batch(self, images: list[Tensor]) -> list[Detections]:
        batch, _ = self.preprocess(images)
        features = self.backbone(batch.tensor)
        proposals, _ = self.propose(batch, features)
        return self.detect(batch, features, proposals)

    def detect(
        self, batch: ImageBatch, features: list[Tensor], proposals: list[Proposals]
    ) -> list[Detections]:
        """Box and mask heads on given proposals -> detections in original-image pixels."""
        boxes = [p.boxes for p in proposals]
        class_logits, box_deltas = self.box_outputs(features, boxes)
        per_image = detect_boxes(
            class_logits,
            box_deltas,
            boxes,
            batch.image_sizes,
            box_coder=self.box_coder,
            score_thresh=self.score_thresh,
            nms_thresh=self.nms_thresh,
            detections_per_image=self.detections_per_image,
        )
        det_boxes = [b for b, _, _ in per_image]
        labels = torch.cat([lab for _, _, lab in per_image])
        if len(labels):
            probs = select_mask_probs(self.mask_logits(features, det_boxes), labels, kind=self.mask_loss_kind)
        else:
            size = 2 * self.mask_pooler.output_size
            probs = class_logits.new_zeros((0, size, size))
        out = []
        for (b, s, lab), p, size, original in zip(
            per_image, probs.split([len(b) for b in det_boxes]), batch.image_sizes, batch.original_sizes
        ):
            b = scale_boxes(b, size, original)
            masks = paste_masks(p, b, original, threshold=self.mask_threshold)
            out.append(Detections(boxes=b, scores=s, labels=lab, masks=masks))
        return out

    def forward(self, images: list[Tensor], targets: list[TargetsLike] | None = None):
        if self.training and targets is not None:
            return self.loss(images, targets)
        return self.predict(images)


def _check_targets(t: Targets, index: int) -> None:
    """Reject ground truth that would silently give NaN losses (as torchvision does): a box without
    area is encoded with log(0) and matches every anchor as a low-quality match."""
    if t.boxes.dim() != 2 or t.boxes.shape[-1] != 4:
        raise ValueError(f"targets {index}: boxes must be (G, 4), got shape {tuple(t.boxes.shape)}")
    if not len(t.boxes) == len(t.labels) == t.masks.shape[0]:
        raise ValueError(
            f"targets {index}: {len(t.boxes)} boxes, {len(t.labels)} labels and {t.masks.shape[0]} masks; "
            "the counts must be equal"
        )
    bad = torch.where((t.boxes[:, 2] <= t.boxes[:, 0]) | (t.boxes[:, 3] <= t.boxes[:, 1]))[0]
    if len(bad):
        j = int(bad[0])
        raise ValueError(
            f"targets {index}: box {j} {t.boxes[j].tolist()} has no area; boxes need x2 > x1 and y2 > y1"
        )


def _as_float_image(image: Tensor, index: int) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError(f"image {index}: expected a torch.Tensor (3, H, W), got {type(image).__name__}")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image
