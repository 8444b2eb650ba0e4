"""Loss parity with torchvision on identical inputs and identically sampled anchors / RoIs."""

from __future__ import annotations

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import fastrcnn_loss, maskrcnn_loss

from maskrcnn.config import apply_overrides
from maskrcnn.convert.torchvision import config_for, convert_state_dict
from maskrcnn.model import build_model
from maskrcnn.model.losses import fast_rcnn_loss, rpn_loss
from maskrcnn.model.mask_branch import mask_loss, mask_targets
from maskrcnn.model.targets import sample_rois
from tests.helpers import coco2_train

from .tv_reference import assert_losses_match, torchvision_model


def test_training_losses_match_torchvision(shared_data):
    image, target = coco2_train(shared_data)
    empty_image = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(3))
    empty = {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, 200, 300), dtype=torch.uint8),
    }
    tv = torchvision_model("v1", min_size=320, max_size=512).train()
    cfg = apply_overrides(
        config_for(tv.state_dict(), "v1"), ["model.input.min_size=[320]", "model.input.max_size=512"]
    )
    ours = build_model(cfg)
    ours.load_state_dict(convert_state_dict(tv.state_dict()))
    ours.train()
    images, targets = [image, empty_image], [target, empty]
    torch.manual_seed(11)
    expected = tv(images, [dict(t) for t in targets])
    torch.manual_seed(11)
    actual = ours.loss(images, targets)
    assert_losses_match(actual, expected, atol=1e-5)


def test_box_and_mask_losses_on_same_sampled_rois(shared_data):
    image, target = coco2_train(shared_data)
    tv = torchvision_model("v1")
    h, w = image.shape[-2:]
    gen = torch.Generator().manual_seed(5)
    # proposals: jittered ground-truth boxes and random boxes, as an RPN would give
    gt = target["boxes"]
    jitter = gt.repeat(20, 1) + torch.randn(20 * len(gt), 4, generator=gen) * 15
    xy = torch.rand(300, 2, generator=gen) * torch.tensor([w - 60.0, h - 60.0])
    random_boxes = torch.cat((xy, xy + 10 + torch.rand(300, 2, generator=gen) * 200), dim=1)
    proposals = [torch.cat((jitter, random_boxes)).clamp(min=0)]
    targets = [{k: v.clone() for k, v in target.items()}]

    roi_heads = tv.roi_heads
    torch.manual_seed(0)
    tv_props, tv_matched, tv_labels, tv_reg = roi_heads.select_training_samples(list(proposals), targets)
    torch.manual_seed(0)
    from maskrcnn.structures import Targets

    rois = sample_rois(
        proposals, [Targets.from_any(targets[0])], matcher=_matcher(), sampler=_sampler(), box_coder=_coder()
    )
    assert torch.equal(rois.boxes[0], tv_props[0])
    assert torch.equal(rois.gt_labels[0], tv_labels[0])
    torch.testing.assert_close(rois.gt_deltas, tv_reg[0], rtol=0, atol=1e-6)

    r = len(tv_props[0])
    class_logits = torch.randn(r, 91, generator=gen)
    box_regression = torch.randn(r, 91 * 4, generator=gen)
    tv_cls, tv_box = fastrcnn_loss(class_logits, box_regression, tv_labels, tv_reg)
    ours = fast_rcnn_loss(class_logits, box_regression, rois.gt_labels[0], rois.gt_deltas)
    assert abs(ours["loss_cls"].item() - tv_cls.item()) <= 1e-5
    assert abs(ours["loss_box"].item() - tv_box.item()) <= 1e-5
    assert tv_box.item() > 0

    pos = torch.where(tv_labels[0] > 0)[0]
    assert len(pos) > 10
    mask_logits = torch.randn(len(pos), 91, 28, 28, generator=gen)
    tv_mask = maskrcnn_loss(
        mask_logits, [tv_props[0][pos]], [targets[0]["masks"]], [targets[0]["labels"]], [tv_matched[0][pos]]
    )
    gt_masks = mask_targets(
        [targets[0]["masks"]], [rois.boxes[0][pos]], [rois.matched_gt[0][pos]], resolution=28, aligned=False
    )
    ours_mask = mask_loss(
        mask_logits[:, 1:], rois.gt_labels[0][pos], gt_masks
    )  # our predictor has no background
    assert abs(ours_mask.item() - tv_mask.item()) <= 1e-5


def test_rpn_loss_on_same_sampled_anchors(shared_data):
    image, target = coco2_train(shared_data)
    tv = torchvision_model("v1", min_size=320, max_size=512)
    image_list, targets = tv.transform([image], [dict(target)])
    with torch.no_grad():
        features = tv.backbone(image_list.tensors)
    anchors = tv.rpn.anchor_generator(
        ImageList(image_list.tensors, image_list.image_sizes), list(features.values())
    )
    tv_labels, tv_matched_boxes = tv.rpn.assign_targets_to_anchors(anchors, targets)
    tv_reg = tv.rpn.box_coder.encode(tv_matched_boxes, anchors)
    gen = torch.Generator().manual_seed(9)
    n = len(anchors[0])
    objectness = torch.randn(n, 1, generator=gen)
    deltas = torch.randn(n, 4, generator=gen) * 0.3
    torch.manual_seed(2)
    tv_obj, tv_box = tv.rpn.compute_loss(objectness, deltas, tv_labels, tv_reg)

    from maskrcnn.model.rpn import RegionProposalNetwork  # noqa: F401 - the module under test
    from maskrcnn.structures import Targets

    cfg = config_for(tv.state_dict(), "v1")
    ours = build_model(cfg)
    labels, reg = ours.rpn.anchor_targets(anchors[0], [Targets.from_any(targets[0])])
    assert torch.equal(labels[0], tv_labels[0])
    positive = labels[0] == 1
    torch.testing.assert_close(reg[0][positive], tv_reg[0][positive], rtol=0, atol=1e-5)
    torch.manual_seed(2)
    pos, neg = ours.rpn.sampler([labels[0]])
    losses = rpn_loss(objectness[:, 0], deltas, labels[0], reg[0], pos[0], neg[0])
    assert abs(losses["loss_rpn_cls"].item() - tv_obj.item()) <= 1e-5
    assert abs(losses["loss_rpn_box"].item() - tv_box.item()) <= 1e-5
    assert pos[0].sum() > 0


def _matcher():
    from maskrcnn.model.matcher import Matcher

    return Matcher(high_threshold=0.5, low_threshold=0.5, allow_low_quality_matches=False)


def _sampler():
    from maskrcnn.model.sampler import BalancedSampler

    return BalancedSampler(batch_size_per_image=512, positive_fraction=0.25)


def _coder():
    from maskrcnn.ops.box_coder import BoxCoder

    return BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
