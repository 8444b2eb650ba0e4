"""The settings of a model and its training: frozen dataclasses, one per part (input, backbone,
anchors, RPN, RoI heads, keypoints; solver, data, train), nested in `Config`. Their defaults are the
2017 paper's model (ResNet-50-FPN); the presets (`maskrcnn.config.presets`) change some of them.

A Config is never changed in place: `replace(cfg, **changes)` gives a new one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CHOICES",
    "AnchorConfig",
    "BackboneConfig",
    "Config",
    "DataConfig",
    "InputConfig",
    "KeypointConfig",
    "ModelConfig",
    "RPNConfig",
    "RoIHeadsConfig",
    "SolverConfig",
    "TrainConfig",
    "replace",
]

NORMS = ("none", "frozen_bn", "bn", "gn")
BOX_LOSSES = ("smooth_l1", "l1")

# The values a setting may take, by its dotted key: checked when a config is read (`from_dict`,
# so YAML files, overrides, checkpoints and ONNX metadata alike), so a typo fails at once with one
# line listing these instead of when (or silently if) the code that uses it runs. The model's and
# engine's own lists (e.g. `model.layers.NORMS`) must agree: tests/test_config_choices.py checks.
CHOICES: dict[str, tuple[Any, ...]] = {
    "model.input.channel_order": ("rgb", "bgr"),
    "model.input.resize": ("torchvision", "detectron2"),
    "model.backbone.depth": (18, 34, 50, 101),
    "model.backbone.norm": NORMS,
    "model.backbone.fpn_norm": NORMS,
    "model.rpn.box_loss": BOX_LOSSES,
    "model.roi_heads.pooler": ("roi_align", "roi_pool"),
    "model.roi_heads.roi_align_impl": ("auto", "torchvision", "sparse"),
    "model.roi_heads.level_mapping": ("torchvision", "detectron2"),
    "model.roi_heads.box_head": ("fc", "conv"),
    "model.roi_heads.box_head_norm": NORMS,
    "model.roi_heads.box_loss": BOX_LOSSES,
    "model.roi_heads.mask_head_norm": NORMS,
    "model.roi_heads.mask_loss": ("sigmoid", "softmax"),
    "model.roi_heads.mask_paste": ("torchvision", "detectron2"),
    "model.roi_heads.keypoint_score": ("logit", "softmax"),
    "solver.optimizer": ("sgd", "adamw"),
    "solver.schedule": ("multistep", "cosine"),
    "train.freeze": ("none", "backbone", "backbone+fpn", "backbone+fpn+rpn"),
}


@dataclass(frozen=True)
class InputConfig:
    min_size: tuple[int, ...] = (800,)  # shorter side; several values = random choice while training
    max_size: int = 1333  # cap on the longer side
    size_divisible: int = 32
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # detectron2's MSRA models: "bgr" (channels reversed before normalising) and 255.0 (images are
    # multiplied by 255 first, pixel_mean/std given in 0..255); inputs stay RGB in [0, 1]
    channel_order: str = "rgb"  # rgb | bgr
    pixel_scale: float = 1.0
    # "torchvision": size floor(side * factor), bilinear; "detectron2": its ResizeShortestEdge,
    # size int(side * scale + 0.5) and bilinear with antialiasing (as its PIL resize)
    resize: str = "torchvision"


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50  # 18, 34, 50 or 101
    norm: str = "frozen_bn"  # frozen_bn | bn | gn
    frozen_stages: int = 1  # 0: nothing frozen; 1: stem; 2: stem + res2; ... 5: everything
    fpn_channels: int = 256
    fpn_norm: str = "none"  # none | bn | gn
    width: int = 64  # channels of the stem (scales every stage)
    # ImageNet weights `maskrcnn train` starts the ResNet from: a name (resnet50_imagenet, ...: see
    # `maskrcnn weights`), a path or a URL; "" = random initialisation. build_model does not read it.
    weights: str = ""
    frozen_bn_eps: float = 1e-5  # torchvision's published COCO checkpoints were trained with 0.0
    # bottleneck details of detectron2's models: the stride of a downsampling block on its 1×1 conv
    # (MSRA / Caffe2 style, detectron2's STRIDE_IN_1X1) instead of its 3×3 conv (torchvision)
    stride_in_1x1: bool = False
    groups: int = 1  # ResNeXt cardinality (detectron2's NUM_GROUPS; 32 for X101-32x8d)
    width_per_group: int = 64  # res2's bottleneck width per group (8 for X101-32x8d); scaled by width/64


@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one size per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    # torchvision's rule: stride = padded image size // feature size (not 64 on P6 for odd multiples of 32)
    image_size_strides: bool = False
    # corners rounded to integers (Detectron, torchvision); detectron2's DefaultAnchorGenerator keeps
    # the exact sizes (False)
    round_corners: bool = True


@dataclass(frozen=True)
class RPNConfig:
    num_convs: int = 1
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk_train: int = 2000  # per level and image
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 2000  # per image
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_size: float = 1e-3
    # a proposal is kept when width and height are >= min_size (torchvision), or > min_size when
    # True (detectron2, with min_size 0: only empty boxes are dropped)
    min_size_exclusive: bool = False
    score_thresh: float = 0.0
    box_loss: str = "smooth_l1"  # smooth_l1 | l1
    smooth_l1_beta: float = 1.0 / 9


@dataclass(frozen=True)
class RoIHeadsConfig:
    pooler: str = "roi_align"  # roi_align | roi_pool
    aligned: bool = False
    sampling_ratio: int = 2  # 0 = adaptive
    roi_align_impl: str = "auto"  # auto: sparse on CPU fp32, else torchvision | torchvision | sparse
    canonical_box_size: int = 224
    canonical_level: int = 4
    # FPN eq. 1's rounding: "torchvision" floor(k0 + log2(s / 224) + 1e-6); "detectron2"
    # floor(k0 + log2(s / 224 + 1e-8))
    level_mapping: str = "torchvision"
    box_head: str = "fc"  # fc: 2 FC (paper) | conv: 4 conv + 1 FC (torchvision v2)
    box_head_norm: str = "none"  # none | bn | gn (conv head only)
    fc_dim: int = 1024
    box_conv_dim: int = 256  # conv box head only
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss: str = "smooth_l1"  # smooth_l1 | l1
    smooth_l1_beta: float = 1.0 / 9
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    # detections smaller than this are dropped (torchvision: width and height >= 1e-2); exclusive:
    # > box_min_size (detectron2: 0.0, only empty boxes)
    box_min_size: float = 1e-2
    box_min_size_exclusive: bool = False
    mask_on: bool = True  # the mask branch (False: Faster R-CNN, boxes only)
    mask_head_norm: str = "none"
    mask_head_dim: int = 256
    mask_head_convs: int = 4
    mask_pool_size: int = 14  # mask logits are 2x this (28)
    class_agnostic_mask: bool = False
    mask_loss: str = "sigmoid"  # sigmoid (paper) | softmax (the paper's ablation)
    mask_threshold: float = 0.5
    # how a 28×28 mask goes into the image: "torchvision" (a 1-pixel zero border, integer box,
    # resized, > threshold); "detectron2" (bilinear sampling at each pixel centre inside the exact
    # box, zero outside, >= threshold: detectron2's paste_masks_in_image)
    mask_paste: str = "torchvision"
    keypoint_on: bool = False  # the keypoint branch (Mask R-CNN §5, human pose)
    num_keypoints: int = 17
    keypoint_pool_size: int = 14  # heatmaps are 4x this (56)
    keypoint_head_dim: int = 512
    keypoint_head_convs: int = 8
    # a keypoint's score: "logit" (the heatmap's peak, torchvision) or "softmax" (the peak's softmax
    # over the 56×56 heatmap, as detectron2 reports it)
    keypoint_score: str = "logit"


@dataclass(frozen=True)
class KeypointConfig:
    """What the keypoints of a model with the keypoint branch are (its metadata, like class names).
    Empty fields take COCO's person keypoints when roi_heads.num_keypoints is 17."""

    names: tuple[str, ...] = ()  # J names, e.g. nose, left_eye, ...
    skeleton: tuple[tuple[int, int], ...] = ()  # pairs of 1-based keypoint indices (COCO's convention)
    oks_sigmas: tuple[float, ...] = ()  # per-keypoint OKS sigmas of COCO keypoint AP
    flip_map: tuple[tuple[int, int], ...] = ()  # 0-based pairs a horizontal flip swaps; empty: left_*/right_*


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 90  # foreground classes K (COCO with torchvision's 91-slot label space: 90)
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)


@dataclass(frozen=True)
class SolverConfig:
    optimizer: str = "sgd"  # sgd | adamw
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    no_decay_on_norm_and_bias: bool = False
    ims_per_batch: int = 16
    max_iter: int = 90000
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    schedule: str = "multistep"  # multistep | cosine
    steps: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # 0 = off
    amp: bool = False  # bf16 autocast on GPU
    max_nonfinite_steps: int = 5


@dataclass(frozen=True)
class DataConfig:
    hflip_prob: float = 0.5
    lsj: bool = False  # large-scale jitter
    lsj_size: int = 1024
    lsj_scale: tuple[float, float] = (0.1, 2.0)
    num_workers: int = 2
    aspect_ratio_grouping: bool = True


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0 = only at the end
    log_period: int = 20
    device: str = "auto"
    # fine-tuning (`maskrcnn.engine.init`): the weights a run starts from, a weights name (`maskrcnn
    # weights`), a path or URL of our checkpoint, a torchvision state dict; "" = random / ImageNet
    init: str = ""
    init_strict: bool = True  # an architecture mismatch is an error; false: load what fits, report the rest
    # data class -> class of `init` where the names differ: "data=source,..." or a file of data=source lines
    init_class_map: str = ""
    # parts that do not train (`maskrcnn.engine.freeze`): none | backbone | backbone+fpn | backbone+fpn+rpn
    freeze: str = "none"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)
