"""torchvision's Mask R-CNN sized like our `shapes_demo` model, for a like-for-like training step.

The counterpart is `torchvision.models.detection.MaskRCNN` around a copy of our own ResNet-18-FPN
trunk (behind torchvision's backbone interface: an OrderedDict of maps and `out_channels`), so the
trunk is the same module and the difference is RPN, RoI heads and losses. Its heads have our sizes
(TwoMLPHead of `fc_dim`, MaskRCNNHeads of `mask_head_convs` × `mask_head_dim`), the same anchors,
sampling sizes and top-k, and a `min_size`/`max_size` transform equal to ours; every head weight is
copied from our model. The one difference in arithmetic: torchvision's MultiScaleRoIAlign always
pools with `aligned=False` while the demo preset uses `aligned=True` (the same work either way).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..config import Config
from ..convert.torchvision import convert_state_dict

LEVEL_NAMES = ("0", "1", "2", "3", "pool")


class FeatureDict(nn.Module):
    """Our BackboneWithFPN as a torchvision detection backbone: images -> OrderedDict of P2..P6."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.body = backbone
        self.out_channels = int(backbone.out_channels)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(LEVEL_NAMES, self.body(images)))


def torchvision_counterpart(ours: nn.Module, cfg: Config) -> nn.Module:
    """A torchvision MaskRCNN with `ours`' trunk (deep-copied) and head weights, sized by `cfg`."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    mc = cfg.model
    r, h, a = mc.rpn, mc.roi_heads, mc.anchors
    if h.box_head != "fc" or h.mask_loss != "sigmoid" or h.class_agnostic_mask or len(mc.input.min_size) != 1:
        raise ValueError("the torchvision counterpart covers the fc box head and per-class sigmoid masks")
    channels = mc.backbone.fpn_channels
    classes = mc.num_classes + 1
    anchors = AnchorGenerator(tuple((s,) for s in a.sizes), (tuple(a.aspect_ratios),) * len(a.sizes))
    pooled = list(LEVEL_NAMES[:4])
    tv = MaskRCNN(
        FeatureDict(copy.deepcopy(ours.backbone)),
        num_classes=None,
        min_size=mc.input.min_size[0],
        max_size=mc.input.max_size,
        image_mean=list(mc.input.pixel_mean),
        image_std=list(mc.input.pixel_std),
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0], conv_depth=r.num_convs),
        rpn_pre_nms_top_n_train=r.pre_nms_topk_train,
        rpn_pre_nms_top_n_test=r.pre_nms_topk_test,
        rpn_post_nms_top_n_train=r.post_nms_topk_train,
        rpn_post_nms_top_n_test=r.post_nms_topk_test,
        rpn_nms_thresh=r.nms_thresh,
        rpn_fg_iou_thresh=r.fg_iou_thresh,
        rpn_bg_iou_thresh=r.bg_iou_thresh,
        rpn_batch_size_per_image=r.batch_size_per_image,
        rpn_positive_fraction=r.positive_fraction,
        rpn_score_thresh=r.score_thresh,
        box_roi_pool=MultiScaleRoIAlign(pooled, 7, h.sampling_ratio),
        box_head=TwoMLPHead(channels * 7 * 7, h.fc_dim),
        box_predictor=FastRCNNPredictor(h.fc_dim, classes),
        box_score_thresh=h.score_thresh,
        box_nms_thresh=h.nms_thresh,
        box_detections_per_img=h.detections_per_image,
        box_fg_iou_thresh=h.fg_iou_thresh,
        box_bg_iou_thresh=h.bg_iou_thresh,
        box_batch_size_per_image=h.batch_size_per_image,
        box_positive_fraction=h.positive_fraction,
        bbox_reg_weights=tuple(h.box_reg_weights),
        mask_roi_pool=MultiScaleRoIAlign(pooled, h.mask_pool_size, h.sampling_ratio),
        mask_head=MaskRCNNHeads(channels, [h.mask_head_dim] * h.mask_head_convs, 1),
        mask_predictor=MaskRCNNPredictor(h.mask_head_dim, h.mask_head_dim, classes),
    )
    copy_head_weights(ours, tv)
    return tv


@torch.no_grad()
def copy_head_weights(ours: nn.Module, tv: nn.Module) -> int:
    """Copy our RPN / box / mask head weights into the torchvision model (names mapped with the
    converter); returns how many tensors were copied. The backbone is shared by construction."""
    source = ours.state_dict()
    copied = 0
    for key, target in tv.state_dict().items():
        if key.startswith("backbone."):
            continue
        (ours_key,) = convert_state_dict({key: target}).keys()
        value = source[ours_key]
        if ours_key.startswith("roi_heads.mask.head.predictor."):
            target[1:].copy_(value)  # ours has no background channel; torchvision never uses it
        else:
            target.copy_(value)
        copied += 1
    return copied
