"""Mask R-CNN inference on one image written for tracing into ONNX: every size that depends on the
image (resize, padding, anchor grids, top-k counts, how many boxes survive each filter and NMS) is
computed by tensor operations, so the traced graph keeps H and W dynamic, and nothing branches on
data, so an image without detections runs the same graph and gives empty outputs.

    image (3, H, W) float32 in [0, 1], score_thresh () float32
      -> normalize, resize, pad -> backbone + FPN -> RPN (top-k per level, NMS per level)
      -> box branch (per-class NMS) -> mask branch
      -> boxes (D, 4) original-image pixels, scores (D,), labels (D,) int64 in 1..K,
         mask_probs (D, M, M) of each detection's class (pasting happens outside the graph)

`InferenceGraph(model)` wraps a `MaskRCNN` and reuses its modules and pure functions; in eager mode
it gives the same numbers as `MaskRCNN.predict` on one image. NMS follows torchvision's
`batched_nms` as it runs on the CPU: per group when more than 1000 boxes enter, else with the
coordinate-offset trick; both run in the graph and the count picks one (`grouped_nms`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..model.mask_head import mask_channel
from ..model.roi_pooler import MultiScaleRoIPooler, assign_levels
from ..ops.boxes import nonempty_boxes
from ..ops.nms import nms

# torchvision.ops.batched_nms on the CPU runs one NMS per group above this many boxes (4000 coordinates)
PER_GROUP_NMS_ABOVE = 1000


def _count(x: Tensor) -> Tensor:
    """The length of x's first dimension as a 0-dim int64 tensor (a graph value when tracing)."""
    return torch._shape_as_tensor(x)[0]


def _pick(use_first: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """`first` if the 0-dim bool `use_first` else `second`, for index vectors of any lengths."""
    return torch.cat((first[use_first.expand(_count(first))], second[(~use_first).expand(_count(second))]))


def _offset_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float) -> Tensor:
    """torchvision's coordinate trick: boxes of each group shifted apart, one NMS. The boxes are
    clipped (>= 0), so a zero joined to them keeps their maximum and makes it defined for none."""
    max_coordinate = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    offsets = groups.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_thresh)


def _per_group_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, group_ids) -> Tensor:
    """One NMS per group id, kept indices sorted by decreasing score (torchvision's vanilla path)."""
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for group in group_ids:
        index = torch.where(groups == group)[0]
        keep_mask[index[nms(boxes[index], scores[index], iou_thresh)]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, *, group_ids) -> Tensor:
    """(B, 4) boxes, (B,) scores, (B,) group ids (all in `group_ids`) -> kept indices by decreasing
    score: `torchvision.ops.batched_nms` on the CPU, with its choice of algorithm made in the graph."""
    per_group = _per_group_nms(boxes, scores, groups, iou_thresh, group_ids)
    offset = _offset_nms(boxes, scores, groups, iou_thresh)
    return _pick(_count(boxes) > PER_GROUP_NMS_ABOVE, per_group, offset)


def _clip(boxes: Tensor, height: Tensor, width: Tensor) -> Tensor:
    """`ops.boxes.clip_boxes` with the image size as graph values."""
    x = boxes[..., 0::2].clamp(min=0).minimum(width.to(boxes.dtype))
    y = boxes[..., 1::2].clamp(min=0).minimum(height.to(boxes.dtype))
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def pool(pooler: MultiScaleRoIPooler, features: list[Tensor], boxes: Tensor) -> Tensor:
    """`MultiScaleRoIPooler` on one image's (R, 4) boxes with torchvision's kernels -> (R, C, S, S)."""
    features = features[: len(pooler.scales)]
    rois = torch.cat((torch.zeros_like(boxes[:, :1]), boxes), dim=1)
    if len(features) == 1:
        return pooler._pool(features[0], rois, pooler.scales[0])
    levels = assign_levels(
        boxes,
        min_level=pooler.min_level,
        max_level=pooler.max_level,
        canonical_box_size=pooler.canonical_box_size,
        canonical_level=pooler.canonical_level,
        mapping=pooler.level_mapping,
    )
    pooled, order = [], []
    for level, (feature, scale) in enumerate(zip(features, pooler.scales)):
        index = torch.where(levels == level)[0]
        pooled.append(pooler._pool(feature, rois[index], scale))
        order.append(index)
    # rows back into box order with one Gather (a ScatterElements per level into the (R, C, S, S)
    # result cost onnxruntime ~0.35 s per 800 px image): inverse[order[j]] = j
    order = torch.cat(order)
    inverse = torch.zeros_like(order).scatter(0, order, torch.ones_like(order).cumsum(0) - 1)
    return torch.cat(pooled)[inverse]


class InferenceGraph(nn.Module):
    """`model` on one image, as a traceable module: forward(image, score_thresh) -> boxes, scores,
    labels[, mask_probs] (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        extra = [name for name in model.roi_heads.branch_names if name != "mask"]
        if extra:
            raise UserError(f"ONNX export covers the box and mask branches; this model also has {extra}")
        if model.preprocessor.resize != "torchvision":
            raise UserError(
                "ONNX export resizes inputs as torchvision does; this model resizes them as detectron2 "
                "does (model.input.resize=detectron2: rounded sizes, antialiased), which the graph lacks"
            )
        self.model = model.eval()
        self.mask = model.roi_heads.branch("mask")

    def preprocess(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(3, H, W) -> the padded (1, 3, Hp, Wp) input and the resized height and width."""
        p = self.model.preprocessor
        height, width = torch._shape_as_tensor(image)[1:].unbind(0)
        image = p.normalize(image)
        # `preprocess.resized_shape` in float64, as Python computes it
        h, w = height.to(torch.float64), width.to(torch.float64)
        min_size, max_size = h.new_full((), float(p.min_size[-1])), h.new_full((), float(p.max_size))
        factor = torch.minimum(min_size / torch.minimum(h, w), max_size / torch.maximum(h, w))
        new_h, new_w = torch.floor(h * factor).to(torch.int64), torch.floor(w * factor).to(torch.int64)
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False)
        d = p.size_divisible
        pad_h, pad_w = (new_h + d - 1) // d * d, (new_w + d - 1) // d * d
        return F.pad(image, (0, pad_w - new_w, 0, pad_h - new_h)), new_h, new_w

    def anchors(self, features: list[Tensor], padded: Tensor) -> list[Tensor]:
        """`AnchorGenerator` with the feature sizes as graph values: (H_l * W_l * A, 4) per level."""
        gen = self.model.rpn.anchor_generator
        out = []
        for feature, stride, base in zip(features, gen.strides, gen.cell_anchors):
            h, w = torch._shape_as_tensor(feature)[2:].unbind(0)
            stride_y, stride_x = (
                (padded[0] // h, padded[1] // w) if gen.image_size_strides else (stride, stride)
            )
            xs = torch.arange(w, dtype=torch.int32, device=feature.device) * stride_x
            ys = torch.arange(h, dtype=torch.int32, device=feature.device) * stride_y
            shift_x = xs[None, :].expand(h, w).reshape(-1)
            shift_y = ys[:, None].expand(h, w).reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(torch.int32)
            out.append((shifts.view(-1, 1, 4) + base.to(feature.device).view(1, -1, 4)).reshape(-1, 4))
        return out

    def proposals(self, features: list[Tensor], padded: Tensor, height: Tensor, width: Tensor) -> Tensor:
        """`RegionProposalNetwork` at inference on one image -> (P, 4) proposals (input frame)."""
        rpn = self.model.rpn
        objectness, deltas = rpn.head(features)
        pre_k = rpn.pre_nms_topk[1]
        scores, box_deltas, anchors, levels = [], [], [], []
        for level, (obj, dl, anchor) in enumerate(zip(objectness, deltas, self.anchors(features, padded))):
            a = obj.shape[1]
            obj = obj[0].reshape(a, -1).permute(1, 0).reshape(-1)  # (A, H, W) -> (H*W*A,)
            dl = dl[0].reshape(a, 4, -1).permute(2, 0, 1).reshape(-1, 4)  # (4A, H, W) -> (H*W*A, 4)
            top, index = obj.topk(torch.clamp(_count(obj), max=pre_k))
            scores.append(top)
            box_deltas.append(dl[index])
            anchors.append(anchor[index])
            levels.append(torch.full_like(index, level))
        scores = torch.cat(scores).sigmoid()
        boxes = rpn.box_coder.decode(torch.cat(box_deltas), torch.cat(anchors)).reshape(-1, 4)
        levels = torch.cat(levels)
        boxes = _clip(boxes, height, width)
        keep = nonempty_boxes(boxes, rpn.min_size, exclusive=rpn.min_size_exclusive)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = torch.where(scores >= rpn.score_thresh)[0]
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = grouped_nms(boxes, scores, levels, rpn.nms_thresh, group_ids=range(len(objectness)))
        return boxes[keep[: rpn.post_nms_topk[1]]]

    def detect(
        self, features: list[Tensor], proposals: Tensor, height: Tensor, width: Tensor, score_thresh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`postprocess.detect_boxes` on one image -> boxes (D, 4) (input frame), scores, labels."""
        box = self.model.roi_heads.box
        class_logits, box_deltas = box.predictor(box.head(pool(box.pooler, features, proposals)))
        scores = F.softmax(class_logits, -1)
        roi, cls = torch.where(scores[:, 1:] > score_thresh)
        cls = cls + 1
        cand_scores = scores[roi, cls]
        cand_deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[roi, cls]
        boxes = _clip(box.box_coder.decode(cand_deltas, proposals[roi])[:, 0], height, width)
        keep = nonempty_boxes(boxes, box.min_size, exclusive=box.min_size_exclusive)
        boxes, cand_scores, cls = boxes[keep], cand_scores[keep], cls[keep]
        num_classes = class_logits.shape[1] - 1
        keep = grouped_nms(boxes, cand_scores, cls, box.nms_thresh, group_ids=range(1, num_classes + 1))
        keep = keep[: box.detections_per_image]
        return boxes[keep], cand_scores[keep], cls[keep]

    def mask_probs(self, features: list[Tensor], boxes: Tensor, labels: Tensor) -> Tensor:
        """`MaskBranch.predict` on one image -> (D, M, M) probabilities of each detection's class."""
        logits = self.mask.head(pool(self.mask.pooler, features, boxes))
        channel = mask_channel(labels, num_channels=logits.shape[1], mask_loss=self.mask.mask_loss)
        index = torch.arange(_count(labels), device=labels.device)
        if self.mask.mask_loss == "softmax":
            return logits.softmax(dim=1)[index, channel]
        return logits[index, channel].sigmoid()

    def forward(self, image: Tensor, score_thresh: Tensor) -> tuple[Tensor, ...]:
        original = torch._shape_as_tensor(image)[1:]
        batch, height, width = self.preprocess(image)
        features = self.model.backbone(batch)
        padded = torch._shape_as_tensor(batch)[2:]
        proposals = self.proposals(features, padded, height, width)
        boxes, scores, labels = self.detect(features, proposals, height, width, score_thresh)
        outputs = [self.to_original(boxes, original, height, width), scores, labels]
        if self.mask is not None:
            outputs.append(self.mask_probs(features, boxes, labels))
        return tuple(outputs)

    @staticmethod
    def to_original(boxes: Tensor, original: Tensor, height: Tensor, width: Tensor) -> Tensor:
        """`ops.boxes.scale_boxes` from the resized input frame to the original image."""
        original = original.to(torch.float32)
        ratio_h = original[0] / height.to(torch.float32)
        ratio_w = original[1] / width.to(torch.float32)
        x1, y1, x2, y2 = boxes.unbind(1)
        return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)
