"""Presets: named configs to start from (`--config NAME`, `preset: NAME` in a YAML file).

- `torchvision_v1`: reproduces torchvision's `maskrcnn_resnet50_fpn` (the 2017 paper's model).
- `torchvision_v2`: reproduces torchvision's `maskrcnn_resnet50_fpn_v2` (BN everywhere, conv box head).
- `torchvision_keypoint`: reproduces torchvision's `keypointrcnn_resnet50_fpn` (person keypoints).
- `default`: our recommendation: v1 plus pixel-aligned RoIAlign (no half-pixel shift) with adaptive
  sampling, as in detectron2.
- `detectron2`: detectron2's R50-FPN Mask R-CNN (`mask_rcnn_R_50_FPN_3x.yaml`) at inference: BGR
  input in 0..255, stride in the 1×1 convs, exact anchors, proposals without tiny-box removal,
  detectron2's FPN level rounding and mask pasting (what `maskrcnn convert --from detectron2` builds on).
- `shapes_demo`, `shapes_keypoints`: small networks for the built-in demos on synthetic shapes.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserKeyError
from .schema import (
    AnchorConfig,
    BackboneConfig,
    Config,
    DataConfig,
    InputConfig,
    KeypointConfig,
    ModelConfig,
    RoIHeadsConfig,
    RPNConfig,
    SolverConfig,
    TrainConfig,
    replace,
)

__all__ = [
    "PRESETS",
    "default",
    "detectron2",
    "get_preset",
    "shapes_demo",
    "shapes_keypoints",
    "torchvision_keypoint",
    "torchvision_v1",
    "torchvision_v2",
]


def _with_heads(cfg: Config, **roi_changes: Any) -> Config:
    model = replace(cfg.model, roi_heads=replace(cfg.model.roi_heads, **roi_changes))
    return replace(cfg, model=model)


def torchvision_v1() -> Config:
    """torchvision `maskrcnn_resnet50_fpn` (pretrained layout: frozen BN, stem + res2 frozen).

    The torchvision presets pool with torchvision's RoIAlign kernels, so outputs are bit-identical.
    """
    return Config(
        model=ModelConfig(
            backbone=BackboneConfig(frozen_stages=2),
            anchors=AnchorConfig(image_size_strides=True),
            roi_heads=RoIHeadsConfig(roi_align_impl="torchvision"),
        )
    )


def torchvision_v2() -> Config:
    """torchvision `maskrcnn_resnet50_fpn_v2`: BN in backbone, FPN and heads; 2-conv RPN head."""
    model = ModelConfig(
        backbone=BackboneConfig(norm="bn", fpn_norm="bn", frozen_stages=2),
        anchors=AnchorConfig(image_size_strides=True),
        rpn=RPNConfig(num_convs=2),
        roi_heads=RoIHeadsConfig(
            box_head="conv", box_head_norm="bn", mask_head_norm="bn", roi_align_impl="torchvision"
        ),
    )
    return Config(model=model)


def torchvision_keypoint() -> Config:
    """torchvision `keypointrcnn_resnet50_fpn`: person + background, 17 COCO keypoints, no mask
    branch; trained on shorter sides 640..800 (800 at inference)."""
    cfg = torchvision_v1()
    model = replace(
        cfg.model,
        num_classes=1,
        input=InputConfig(min_size=(640, 672, 704, 736, 768, 800)),
        roi_heads=replace(cfg.model.roi_heads, mask_on=False, keypoint_on=True),
    )
    return replace(cfg, model=model)


def default() -> Config:
    cfg = torchvision_v1()
    cfg = replace(cfg, model=replace(cfg.model, anchors=AnchorConfig()))
    return _with_heads(cfg, aligned=True, sampling_ratio=0, roi_align_impl="auto")


def detectron2() -> Config:
    """detectron2's COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml (80 classes)."""
    model = ModelConfig(
        num_classes=80,
        input=InputConfig(
            min_size=(640, 672, 704, 736, 768, 800),
            pixel_mean=(103.530, 116.280, 123.675),
            pixel_std=(1.0, 1.0, 1.0),
            channel_order="bgr",
            pixel_scale=255.0,
            resize="detectron2",
        ),
        backbone=BackboneConfig(frozen_stages=2, stride_in_1x1=True),
        anchors=AnchorConfig(round_corners=False),
        rpn=RPNConfig(post_nms_topk_train=1000, min_size=0.0, min_size_exclusive=True, box_loss="l1"),
        roi_heads=RoIHeadsConfig(
            aligned=True,
            sampling_ratio=0,
            level_mapping="detectron2",
            box_loss="l1",
            box_min_size=0.0,
            box_min_size_exclusive=True,
            mask_paste="detectron2",
            keypoint_score="softmax",
        ),
    )
    return Config(model=model)


def shapes_demo() -> Config:
    """A small ResNet-18-FPN for the built-in demo: 128×128 synthetic shapes, trained on 2 CPU cores."""
    model = ModelConfig(
        num_classes=3,
        input=InputConfig(min_size=(128,), max_size=128),
        backbone=BackboneConfig(depth=18, norm="bn", frozen_stages=0, fpn_channels=64, width=32),
        anchors=AnchorConfig(sizes=(12, 24, 48, 96, 192)),
        rpn=RPNConfig(
            pre_nms_topk_train=600,
            post_nms_topk_train=300,
            pre_nms_topk_test=300,
            post_nms_topk_test=100,
            batch_size_per_image=128,
        ),
        roi_heads=RoIHeadsConfig(
            aligned=True,
            sampling_ratio=2,
            fc_dim=256,
            batch_size_per_image=64,
            mask_head_dim=64,
            detections_per_image=20,
        ),
    )
    # AdamW reaches in 250 iterations the loss SGD (lr 0.02) reaches in 400 when training from scratch
    solver = SolverConfig(
        optimizer="adamw",
        base_lr=0.001,
        weight_decay=0.05,
        ims_per_batch=8,
        max_iter=500,
        warmup_iters=30,
        steps=(400, 470),
        clip_grad_norm=10.0,
    )
    data = DataConfig(num_workers=1)
    train = TrainConfig(checkpoint_period=200, log_period=10, device="cpu")
    return Config(model=model, solver=solver, data=data, train=train)


def shapes_keypoints() -> Config:
    """The keypoint demo (`maskrcnn demo --keypoints`): shapes_demo's network with a small keypoint
    branch instead of the mask branch, for the 4 corner keypoints of the synthetic shapes (names and
    skeleton come from the dataset). OKS sigma 0.1 for each corner, about COCO's largest (the hips'
    0.107): the corners are sharp, but the shapes are small (20 to 60 px), so that one pixel is
    already 2 to 5 % of their scale."""
    cfg = shapes_demo()
    heads = replace(
        cfg.model.roi_heads,
        mask_on=False,
        keypoint_on=True,
        num_keypoints=4,
        keypoint_head_dim=64,
        keypoint_head_convs=4,
    )
    keypoints = KeypointConfig(oks_sigmas=(0.1, 0.1, 0.1, 0.1))
    return replace(cfg, model=replace(cfg.model, roi_heads=heads, keypoints=keypoints))


PRESETS = {
    "default": default,
    "torchvision_v1": torchvision_v1,
    "torchvision_v2": torchvision_v2,
    "torchvision_keypoint": torchvision_keypoint,
    "detectron2": detectron2,
    "shapes_demo": shapes_demo,
    "shapes_keypoints": shapes_keypoints,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserKeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
