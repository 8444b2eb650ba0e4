"""Running the model stage by stage on one image (`inspect_model`), keeping what every stage
produced in an `Inspection`.

`inspect_model` goes through the model's own stages and keeps what each returns: the RPN's
anchors, NMS candidates and proposals (read from its `ProposalRecord`), its matcher and anchor
targets; the RoI heads' `predict` (detections in the input frame, each with the index of
the proposal it was refined from) and `to_original`; the mask branch's logits and the keypoint
branch's heatmaps (read from its `HeadsRecord`). Nothing is
recomputed here. With ground truth, it is mapped through the model's own preprocessing (the
resize) before anchors are matched, exactly as in training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.keypoint_meta import keypoint_names, keypoint_skeleton
from ..model.roi_heads import HeadsRecord
from ..model.roi_pooler import MultiScaleRoIPooler
from ..model.rpn import ProposalRecord
from ..ops.boxes import box_area, box_iou
from ..structures import Detections, Targets
from ..visualize import to_rgb_array

__all__ = ["Inspection", "inspect_model", "pooled_levels"]


@dataclass
class Inspection:
    """What every stage produced on one image. Boxes are in the model's input frame (the resized
    image, `input_size`) unless said otherwise. Shapes: L FPN levels, T pre-NMS candidates,
    P proposals, D detections, G ground-truth instances, M mask resolution."""

    image: Tensor  # (3, H, W) float in [0, 1], the original image
    input_rgb: np.ndarray  # (h, w, 3) uint8: the image resized as the model does (not normalized)
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    padded_size: tuple[int, int]
    level_names: list[str]  # FPN levels of the RPN, e.g. P2..P6
    strides: list[tuple[int, int]]  # (y, x) anchor stride per level
    feature_sizes: list[tuple[int, int]]
    anchors: list[Tensor]  # per level (A_l, 4)
    cell_anchors: list[Tensor]  # per level (A, 4), centred on (0, 0)
    anchor_sizes: list[list[float]]  # nominal anchor sizes per level
    aspect_ratios: list[float]  # nominal h/w of the A anchors of a location, in cell-anchor order
    pre_nms_topk: int  # per level
    post_nms_topk: int  # per image
    nms_thresh: float
    pre_boxes: Tensor  # (T, 4) candidates that enter the RPN's NMS
    pre_scores: Tensor  # (T,) objectness probabilities
    pre_levels: Tensor  # (T,) index into level_names
    proposal_boxes: Tensor  # (P, 4) the RPN's output (what the box head sees)
    proposal_scores: Tensor  # (P,)
    pooled_level_names: list[str]  # levels the RoI poolers read, e.g. P2..P5
    proposal_levels: Tensor  # (P,) index into pooled_level_names (box pooler's rule)
    level_ranges: list[tuple[float, float]]  # sqrt(area) range of each pooled level
    detections: Detections  # final output, original-image pixels
    det_input_boxes: Tensor  # (D, 4) the detections in the input frame
    det_sources: Tensor  # (D,) index of the proposal each detection was refined from (the model's own)
    det_levels: Tensor  # (D,) pooled level of each detection's mask RoI
    mask_logits: Tensor  # (D, M, M) logit of each detection's class (p = sigmoid(logit))
    class_names: Optional[list[str]]
    det_score_thresh: float
    targets: Optional[Targets] = None  # ground truth in the input frame
    gt_class_names: Optional[list[str]] = None
    anchor_labels: Optional[Tensor] = None  # (A_all,) 1 positive, 0 negative, -1 ignored
    anchor_matches: Optional[Tensor] = None  # (A_all,) matched ground-truth index or < 0
    rpn_thresholds: tuple[float, float] = (0.7, 0.3)  # (fg IoU, bg IoU) of the RPN matcher
    dropped_gt: int = 0  # ground-truth boxes without area, left out of anchor matching
    notes: list[str] = field(default_factory=list)
    keypoint_heatmaps: Optional[Tensor] = None  # (D, J, S, S) logits of the keypoint branch, if any
    keypoint_names: list[str] = field(default_factory=list)  # J names ([] when unnamed)
    skeleton: tuple[tuple[int, int], ...] = ()  # 1-based keypoint pairs the pictures connect

    @property
    def all_anchors(self) -> Tensor:
        return torch.cat(self.anchors, dim=0)


def pooled_levels(pooler: MultiScaleRoIPooler, boxes: Tensor) -> Tensor:
    """(R, 4) boxes -> (R,) index of the pooler's level each box is pooled from (the pooler's rule)."""
    return pooler.levels(boxes)


def _anchor_shapes(model: Any) -> tuple[list[list[float]], list[float]]:
    """Nominal anchor sizes per level and the aspect ratio (h/w) of each of a location's anchors:
    from the model's config when it describes these anchors, else measured on the cell anchors."""
    cells = model.rpn.anchor_generator.cell_anchors
    cfg = getattr(getattr(getattr(model, "config", None), "model", None), "anchors", None)
    if cfg is not None and len(cfg.sizes) == len(cells) and len(cfg.aspect_ratios) == len(cells[0]):
        return [[float(s)] for s in cfg.sizes], [float(r) for r in cfg.aspect_ratios]
    sizes = [sorted({round(float(v)) for v in box_area(c).sqrt()}) for c in cells]
    heights, widths = cells[0][:, 3] - cells[0][:, 1], cells[0][:, 2] - cells[0][:, 0]
    return [[float(v) for v in s] for s in sizes], [round(float(r), 2) for r in heights / widths]


def _keypoint_metadata(model: Any) -> tuple[list[str], tuple[tuple[int, int], ...]]:
    """The names and skeleton of a keypoint model's keypoints, from its config (COCO's for 17)."""
    cfg = model.config
    if cfg is None:
        return [], ()
    num = cfg.model.roi_heads.num_keypoints
    return list(keypoint_names(cfg.model.keypoints, num_keypoints=num)), keypoint_skeleton(
        cfg.model.keypoints, num_keypoints=num
    )


@torch.no_grad()
def inspect_model(
    model: Any,
    image: Tensor,
    *,
    targets: Optional[Targets] = None,
    gt_class_names: Optional[list[str]] = None,
) -> Inspection:
    """Run `model` (a MaskRCNN, put in eval mode) stage by stage on one (3, H, W) image in [0, 1]."""
    model.eval()
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    notes: list[str] = []
    dropped = 0
    if targets is not None:
        targets = Targets.from_any(targets)
        b = targets.boxes
        keep = torch.where((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))[0]
        dropped = len(targets) - len(keep)
        if dropped:
            notes.append(f"{dropped} ground-truth box(es) without area were left out of anchor matching")
        targets = targets.select(keep)
    batch, resized = model.preprocess([image], [targets] if targets is not None else None)
    size = batch.image_sizes[0]
    padded = tuple(int(v) for v in batch.tensor.shape[-2:])
    features = model.backbone(batch.tensor)

    rpn = model.rpn
    rpn_record = ProposalRecord()
    (proposals,), _ = rpn(features, [size], padded, record=rpn_record)
    (candidates,) = rpn_record.candidates
    feature_sizes, anchors = rpn_record.feature_sizes, rpn_record.anchors
    all_anchors = torch.cat(anchors, dim=0)

    anchor_labels = anchor_matches = None
    if resized is not None:
        t = resized[0]
        labels, _ = rpn.anchor_targets(all_anchors, [t])
        anchor_labels = labels[0].cpu()
        if len(t):
            anchor_matches = rpn.matcher(box_iou(t.boxes, all_anchors)).cpu()
        else:
            anchor_matches = torch.full((len(all_anchors),), -1, dtype=torch.int64)

    heads = model.roi_heads
    record = HeadsRecord()
    (in_frame,) = heads.predict(features, [proposals], [size], record=record)
    (detections,) = heads.to_original([in_frame], [size], batch.original_sizes)
    mask_branch = heads.branch("mask")
    if mask_branch is not None:
        logits = record.mask_logits
        det_levels = mask_branch.pooler.levels(in_frame.boxes).cpu()
    else:
        notes.append("this model has no mask branch")
        logits, det_levels = torch.zeros((0, 1, 1)), torch.zeros(0, dtype=torch.int64)

    keypoint_branch = heads.branch("keypoint")
    heatmaps, names, skeleton = None, [], ()
    if keypoint_branch is not None:
        heatmaps = record.keypoint_heatmaps.float().cpu() if len(in_frame) else None
        names, skeleton = _keypoint_metadata(model)
    rgb = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    rpn_first = int(round(np.log2(rpn.anchor_generator.strides[0])))
    matcher = rpn.matcher
    anchor_sizes, aspect_ratios = _anchor_shapes(model)
    return Inspection(
        image=image.cpu(),
        input_rgb=to_rgb_array(rgb),
        original_size=tuple(int(v) for v in image.shape[-2:]),
        input_size=(int(size[0]), int(size[1])),
        padded_size=padded,
        level_names=[f"P{rpn_first + i}" for i in range(len(features))],
        strides=[tuple(int(v) for v in s) for s in rpn.anchor_generator.level_strides(feature_sizes, padded)],
        feature_sizes=feature_sizes,
        anchors=[a.cpu() for a in anchors],
        cell_anchors=[c.cpu() for c in rpn.anchor_generator.cell_anchors],
        anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios,
        pre_nms_topk=int(rpn.pre_nms_topk[1]),
        post_nms_topk=int(rpn.post_nms_topk[1]),
        nms_thresh=float(rpn.nms_thresh),
        pre_boxes=candidates.boxes.cpu(),
        pre_scores=candidates.scores.cpu(),
        pre_levels=candidates.levels.cpu(),
        proposal_boxes=proposals.boxes.cpu(),
        proposal_scores=proposals.scores.cpu(),
        pooled_level_names=[
            f"P{heads.box.pooler.min_level + i}" for i in range(len(heads.box.pooler.scales))
        ],
        proposal_levels=heads.box.pooler.levels(proposals.boxes).cpu(),
        level_ranges=heads.box.pooler.level_ranges(),
        detections=detections.to("cpu"),
        det_input_boxes=in_frame.boxes.cpu(),
        det_sources=in_frame.proposal_index.cpu(),
        det_levels=det_levels,
        mask_logits=logits.float().cpu(),
        class_names=model.class_names,
        det_score_thresh=float(heads.box.score_thresh),
        targets=resized[0].to("cpu") if resized is not None else None,
        gt_class_names=gt_class_names,
        anchor_labels=anchor_labels,
        anchor_matches=anchor_matches,
        rpn_thresholds=(float(matcher.high), float(matcher.low)),
        dropped_gt=dropped,
        notes=notes,
        keypoint_heatmaps=heatmaps,
        keypoint_names=names,
        skeleton=skeleton,
    )
