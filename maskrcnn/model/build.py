"""`build_model(cfg)`: the one place that reads a model config and wires the modules together."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Config, ModelConfig
from ..ops.box_coder import BoxCoder
from .anchors import AnchorGenerator
from .backbone import ResNet
from .box_branch import BoxBranch
from .box_head import BoxPredictor, ConvFCBoxHead, FCBoxHead
from .fpn import FPN, BackboneWithFPN
from .keypoint_branch import KeypointBranch
from .keypoint_head import KeypointHead
from .layers import FrozenBatchNorm2d
from .mask_branch import MaskBranch
from .mask_head import MaskHead
from .mask_rcnn import MaskRCNN
from .matcher import Matcher
from .preprocess import Preprocessor
from .roi_heads import RoIHeads
from .roi_pooler import MultiScaleRoIPooler
from .rpn import RegionProposalNetwork, RPNHead
from .sampler import BalancedSampler

BOX_POOL_SIZE = 7


def build_model(
    cfg: Config | ModelConfig,
    class_names: Sequence[str] | None = None,
    *,
    category_ids: Sequence[int] | None = None,
) -> MaskRCNN:
    """The model a config describes, with random weights. class_names: the K class names (default
    class_1..class_K); category_ids: their dataset ids (default 1..K)."""
    mc = cfg.model if isinstance(cfg, Config) else cfg
    if class_names is not None and len(class_names) != mc.num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={mc.num_classes}")
    if category_ids is not None and len(category_ids) != mc.num_classes:
        raise ValueError(f"{len(category_ids)} category ids for num_classes={mc.num_classes}")
    b, a, r, h = mc.backbone, mc.anchors, mc.rpn, mc.roi_heads

    body = ResNet(
        depth=b.depth,
        norm=b.norm,
        frozen_stages=b.frozen_stages,
        width=b.width,
        groups=b.groups,
        width_per_group=b.width_per_group,
        stride_in_1x1=b.stride_in_1x1,
    )
    for module in body.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = b.frozen_bn_eps
    backbone = BackboneWithFPN(
        body=body, fpn=FPN(in_channels=body.out_channels, out_channels=b.fpn_channels, norm=b.fpn_norm)
    )
    channels = backbone.out_channels

    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in a.sizes),
        aspect_ratios=a.aspect_ratios,
        strides=tuple(backbone.strides),
        image_size_strides=a.image_size_strides,
        round_corners=a.round_corners,
    )
    rpn = RegionProposalNetwork(
        head=RPNHead(
            in_channels=channels, num_anchors=anchors.num_anchors_per_location, num_convs=r.num_convs
        ),
        anchor_generator=anchors,
        box_coder=BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)),
        matcher=Matcher(
            high_threshold=r.fg_iou_thresh, low_threshold=r.bg_iou_thresh, allow_low_quality_matches=True
        ),
        sampler=BalancedSampler(
            batch_size_per_image=r.batch_size_per_image, positive_fraction=r.positive_fraction
        ),
        pre_nms_topk=(r.pre_nms_topk_train, r.pre_nms_topk_test),
        post_nms_topk=(r.post_nms_topk_train, r.post_nms_topk_test),
        nms_thresh=r.nms_thresh,
        min_size=r.min_size,
        min_size_exclusive=r.min_size_exclusive,
        score_thresh=r.score_thresh,
        box_loss=r.box_loss,
        smooth_l1_beta=r.smooth_l1_beta,
    )

    def pooler(size: int) -> MultiScaleRoIPooler:
        return MultiScaleRoIPooler(
            output_size=size,
            strides=tuple(backbone.strides[:4]),
            sampling_ratio=h.sampling_ratio,
            aligned=h.aligned,
            pooler=h.pooler,
            canonical_box_size=h.canonical_box_size,
            canonical_level=h.canonical_level,
            impl=h.roi_align_impl,
            level_mapping=h.level_mapping,
        )

    if h.box_head == "fc":
        box_head = FCBoxHead(in_channels=channels, pool_size=BOX_POOL_SIZE, fc_dim=h.fc_dim)
    elif h.box_head == "conv":
        box_head = ConvFCBoxHead(
            in_channels=channels,
            pool_size=BOX_POOL_SIZE,
            conv_dim=h.box_conv_dim,
            fc_dim=h.fc_dim,
            norm=h.box_head_norm,
        )
    else:
        raise ValueError(f"unknown box head {h.box_head!r}; choose fc or conv")

    box = BoxBranch(
        pooler=pooler(BOX_POOL_SIZE),
        head=box_head,
        predictor=BoxPredictor(in_dim=box_head.out_dim, num_classes=mc.num_classes),
        box_coder=BoxCoder(weights=h.box_reg_weights),
        box_loss=h.box_loss,
        smooth_l1_beta=h.smooth_l1_beta,
        score_thresh=h.score_thresh,
        nms_thresh=h.nms_thresh,
        detections_per_image=h.detections_per_image,
        min_size=h.box_min_size,
        min_size_exclusive=h.box_min_size_exclusive,
    )
    branches = []
    if h.mask_on:
        if h.mask_loss == "softmax":
            mask_outputs = mc.num_classes + 1
        elif h.class_agnostic_mask:
            mask_outputs = 1
        else:
            mask_outputs = mc.num_classes
        head = MaskHead(
            in_channels=channels,
            num_outputs=mask_outputs,
            conv_dim=h.mask_head_dim,
            num_convs=h.mask_head_convs,
            norm=h.mask_head_norm,
        )
        branches.append(
            MaskBranch(
                pooler=pooler(h.mask_pool_size),
                head=head,
                mask_loss=h.mask_loss,
                threshold=h.mask_threshold,
                paste=h.mask_paste,
            )
        )

    if h.keypoint_on:
        head = KeypointHead(
            in_channels=channels,
            num_keypoints=h.num_keypoints,
            conv_dim=h.keypoint_head_dim,
            num_convs=h.keypoint_head_convs,
        )
        branches.append(
            KeypointBranch(pooler=pooler(h.keypoint_pool_size), head=head, score=h.keypoint_score)
        )

    model = MaskRCNN(
        preprocessor=Preprocessor(
            pixel_mean=mc.input.pixel_mean,
            pixel_std=mc.input.pixel_std,
            min_size=mc.input.min_size,
            max_size=mc.input.max_size,
            size_divisible=mc.input.size_divisible,
            channel_order=mc.input.channel_order,
            pixel_scale=mc.input.pixel_scale,
            resize=mc.input.resize,
        ),
        backbone=backbone,
        rpn=rpn,
        roi_heads=RoIHeads(
            box=box,
            branches=branches,
            matcher=Matcher(
                high_threshold=h.fg_iou_thresh, low_threshold=h.bg_iou_thresh, allow_low_quality_matches=False
            ),
            sampler=BalancedSampler(
                batch_size_per_image=h.batch_size_per_image, positive_fraction=h.positive_fraction
            ),
        ),
        class_names=class_names or [f"class_{i}" for i in range(1, mc.num_classes + 1)],
        category_ids=category_ids,
    )
    model.config = cfg if isinstance(cfg, Config) else Config(model=mc)
    return model
