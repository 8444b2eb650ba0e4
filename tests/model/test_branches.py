"""The RoI heads as branches: a branch plugs in without changes to the box or mask code, a model
without the mask branch (Faster R-CNN) trains and predicts, and provenance and per-call options
reach the box branch."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.model import build_model
from maskrcnn.model.roi_heads import RoIHeads
from maskrcnn.predict_records import detection_records
from maskrcnn.predictor import Predictor
from maskrcnn.structures import Detections, Targets
from tests.helpers import TINY, coco2_train

FIVE_LOSSES = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}


def tiny(extra=()):
    torch.manual_seed(0)
    return build_model(apply_overrides(get_preset("default"), [*TINY, *extra]))


class AreaBranch(nn.Module):
    """A toy third branch: regresses each positive RoI's log area with one linear layer on the box
    head's pooled features, and writes nothing new (it scales the scores by 1, to show it ran)."""

    name = "area"

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler
        self.fc = nn.Linear(32 * 7 * 7, 1)
        self.seen_positives: list[int] = []
        self.seen_detections: list[int] = []

    def loss(self, features, rois, targets):
        self.seen_positives.append(len(rois.labels))
        pred = self.fc(self.pooler(features, rois.boxes).flatten(1))[:, 0]
        boxes = torch.cat(rois.boxes)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1).log()
        return {"loss_area": ((pred - area) ** 2).mean() if len(area) else pred.sum() * 0}

    def predict(self, features, detections):
        self.seen_detections.append(sum(len(d) for d in detections))
        return [dataclasses.replace(d, scores=d.scores * 1.0) for d in detections]

    def to_original(self, det, *, input_size, original_size):
        return det


def test_a_third_branch_plugs_in_without_touching_box_or_mask_code(shared_data):
    model = tiny()
    heads = model.roi_heads
    area = AreaBranch(heads.box.pooler)
    model.roi_heads = RoIHeads(
        box=heads.box, branches=[*heads.branches, area], matcher=heads.matcher, sampler=heads.sampler
    )
    image, target = coco2_train(shared_data, label_of=lambda c: 1 + c % 2)
    model.train()
    losses = model.loss([image], [target])
    assert set(losses) == FIVE_LOSSES | {"loss_area"} and torch.isfinite(losses["loss_area"])
    assert area.seen_positives[0] > 0  # the branch got the positive RoIs
    losses["loss_area"].backward()
    assert area.fc.weight.grad is not None and area.fc.weight.grad.abs().sum() > 0
    (det,) = model.predict([image])
    assert area.seen_detections == [len(det)] and len(det) > 0
    assert "roi_heads.area.fc.weight" in model.state_dict()  # the branch's weights travel by name
    with pytest.raises(ValueError, match="unique"):
        RoIHeads(box=heads.box, branches=[area, area], matcher=heads.matcher, sampler=heads.sampler)


def test_faster_rcnn_without_the_mask_branch(shared_data):
    model = tiny(["model.roi_heads.mask_on=false"])
    assert model.roi_heads.branches == [] and model.roi_heads.branch("mask") is None
    assert not any(k.startswith("roi_heads.mask.") for k in model.state_dict())
    image, target = coco2_train(shared_data, label_of=lambda c: 1 + c % 2)
    model.train()
    losses = model.loss([image], [Targets(target["boxes"], target["labels"])])  # boxes only: no masks needed
    assert set(losses) == FIVE_LOSSES - {"loss_mask"}
    (det,) = model.predict([image])
    assert len(det) > 0 and det.masks is None and det.mask_probs is None
    records = detection_records(det)
    assert len(records) == len(det) and all("segmentation" not in r for r in records)


def test_detections_say_which_proposal_they_came_from(shared_data):
    """`proposal_index` is the box branch's own: re-running the box branch on the proposals and
    decoding proposal i with class c's deltas gives detection j's box (input frame)."""
    model = tiny().eval()
    image, _ = coco2_train(shared_data)
    with torch.no_grad():
        batch, _ = model.preprocess([image])
        features = model.backbone(batch.tensor)
        proposals, _ = model.propose(batch, features)
        (det,) = model.roi_heads.predict(features, proposals, batch.image_sizes)
        _, deltas = model.roi_heads.box(features, [proposals[0].boxes])
    assert len(det) > 0 and det.proposal_index.dtype == torch.int64
    source, label = det.proposal_index, det.labels
    decoded = model.roi_heads.box.box_coder.decode(
        deltas.reshape(len(deltas), -1, 4)[source, label], proposals[0].boxes[source]
    )[:, 0]
    h, w = batch.image_sizes[0]
    decoded[:, 0::2] = decoded[:, 0::2].clamp(0, w)
    decoded[:, 1::2] = decoded[:, 1::2].clamp(0, h)
    assert torch.equal(decoded, det.boxes)
    assert det.mask_probs.shape == (len(det), 28, 28)  # the mask branch filled its field


def test_score_threshold_is_a_per_call_option(shared_data):
    model = tiny()
    image, _ = coco2_train(shared_data)
    predictor = Predictor(model)
    (full,) = predictor.predict([image])
    cut = float(full.scores.median())
    (high,) = predictor.predict([image], score_thresh=cut)
    assert model.roi_heads.box.score_thresh == 0.05  # the model was not changed
    assert 0 < len(high) < len(full) and bool((high.scores > cut).all())
    keep = full.scores > cut  # the same detections: thresholding before NMS only drops candidates
    assert torch.equal(high.boxes, full.boxes[keep]) and torch.equal(high.masks, full.masks[keep])


def test_select_and_to_cover_every_field():
    det = Detections(
        boxes=torch.arange(12.0).reshape(3, 4),
        scores=torch.tensor([0.9, 0.8, 0.7]),
        labels=torch.tensor([1, 2, 1]),
        masks=torch.zeros(3, 5, 6, dtype=torch.bool),
        proposal_index=torch.tensor([4, 0, 2]),
    )
    picked = det.select(torch.tensor([2, 0]))
    assert picked.proposal_index.tolist() == [2, 4] and picked.labels.tolist() == [1, 1]
    assert picked.mask_probs is None and picked.masks.shape == (2, 5, 6)
    assert set(det.to("cpu").tensor_fields()) == {"boxes", "scores", "labels", "masks", "proposal_index"}
