"""detectron2 settings -> our Config: its YAML files read with PyYAML (following `_BASE_`), its
defaults for what a file leaves out, and the config options that make our model behave as its
GeneralizedRCNN (R-CNN with a ResNet/ResNeXt + FPN backbone) does at inference.

Only the settings our model has are read; one it cannot reproduce (deformable convs, dilation,
GN / SyncBN, a cascade, C4 or DC5 backbones, ...) is a UserError naming it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, get_preset, replace
from ..errors import UserError

# detectron2's defaults (detectron2/config/defaults.py) for the keys read here, by dotted name
D2_DEFAULTS: dict[str, Any] = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.MASK_ON": False,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.BACKBONE.FREEZE_AT": 2,
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32], [64], [128], [256], [512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 2000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.RPN.IOU_THRESHOLDS": [0.3, 0.7],
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 256,
    "MODEL.RPN.POSITIVE_FRACTION": 0.5,
    "MODEL.RPN.SMOOTH_L1_BETA": 0.0,
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 512,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": 0.25,
    "MODEL.ROI_HEADS.IOU_THRESHOLDS": [0.5],
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0],
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": 0.0,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS": 17,
    "MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS": [512] * 8,
    "INPUT.FORMAT": "BGR",
    "INPUT.MIN_SIZE_TRAIN": [800],
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "TEST.DETECTIONS_PER_IMAGE": 100,
}

# settings our model has no counterpart for: key -> the only value it can take
_FIXED = {
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
    "MODEL.ROI_HEADS.NAME": "StandardROIHeads",
    "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.FPN.NORM": "",
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
}


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_d2_yaml(path: str | Path, *, _seen: tuple[Path, ...] = ()) -> dict:
    """A detectron2 YAML config as a nested dict, its `_BASE_` files merged in underneath."""
    path = Path(path)
    if path.resolve() in _seen:
        raise UserError(f"{path}: _BASE_ includes itself")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the detectron2 config ({e.strerror or e})") from e
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not a YAML file ({str(e).splitlines()[0]})") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a detectron2 config is a YAML mapping, got {type(data).__name__}")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    if not isinstance(base, str) or base.startswith(("detectron2://", "http")):
        raise UserError(f"{path}: _BASE_ {base!r} must be the path of a local YAML file")
    return _merge(read_d2_yaml(path.parent / base, _seen=(*_seen, path.resolve())), data)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"MODEL": {"RPN": {"NMS_THRESH": 0.7}}} -> {"MODEL.RPN.NMS_THRESH": 0.7}."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, str) and value.strip().startswith(("(", "[")):
            try:  # yacs reads "(640, 672)" as a tuple (a Python literal)
                out[name] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                out[name] = value
        else:
            out[name] = value
    return out


def settings(d2_yaml: dict | None = None, **inferred: Any) -> dict[str, Any]:
    """detectron2's defaults, then what was inferred from the weights, then the YAML file's values
    (a file's explicit setting wins, except that the weights' shapes are checked against it)."""
    values = {**D2_DEFAULTS, **inferred}
    if d2_yaml:
        values.update({k: v for k, v in flatten(d2_yaml).items() if k in D2_DEFAULTS})
    return values


def to_config(s: dict[str, Any], *, source: str = "") -> Config:
    """Our Config for the detectron2 settings `s` (a full dict as `settings` returns)."""
    where = f"{source}: " if source else ""
    for key, allowed in _FIXED.items():
        if s[key] != allowed and not (isinstance(allowed, list) and list(s[key]) == allowed):
            raise UserError(f"{where}detectron2 {key}={s[key]!r} is not supported (only {allowed!r})")
    sizes = s["MODEL.ANCHOR_GENERATOR.SIZES"]
    ratios = s["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"]
    if any(len(level) != 1 for level in sizes) or len(sizes) != 5 or len(ratios) != 1:
        raise UserError(f"{where}detectron2 anchors must be one size per level P2..P6 and one ratio list")
    fmt = str(s["INPUT.FORMAT"]).upper()
    if fmt not in ("BGR", "RGB"):
        raise UserError(f"{where}detectron2 INPUT.FORMAT={fmt!r} is not supported (BGR or RGB)")
    box_head_fcs = int(s["MODEL.ROI_BOX_HEAD.NUM_FC"])
    if box_head_fcs != 2:
        raise UserError(f"{where}detectron2 box heads with {box_head_fcs} FC layers are not supported (2)")
    conv_dims = list(s["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS"])
    if len(set(conv_dims)) > 1:
        raise UserError(f"{where}detectron2 keypoint heads need equal CONV_DIMS, got {conv_dims}")
    min_train = s["INPUT.MIN_SIZE_TRAIN"]
    min_train = tuple(int(v) for v in (min_train if isinstance(min_train, (list, tuple)) else [min_train]))
    base = get_preset("detectron2")
    m = base.model
    iou_rpn = s["MODEL.RPN.IOU_THRESHOLDS"]
    model = replace(
        m,
        num_classes=int(s["MODEL.ROI_HEADS.NUM_CLASSES"]),
        input=replace(
            m.input,
            # training draws one of these; the last is what inference uses, so it is the test size
            min_size=tuple(v for v in min_train if v != int(s["INPUT.MIN_SIZE_TEST"]))
            + (int(s["INPUT.MIN_SIZE_TEST"]),),
            max_size=int(s["INPUT.MAX_SIZE_TEST"]),
            pixel_mean=tuple(float(v) for v in s["MODEL.PIXEL_MEAN"]),
            pixel_std=tuple(float(v) for v in s["MODEL.PIXEL_STD"]),
            channel_order=fmt.lower(),
        ),
        backbone=replace(
            m.backbone,
            depth=int(s["MODEL.RESNETS.DEPTH"]),
            frozen_stages=int(s["MODEL.BACKBONE.FREEZE_AT"]),
            width=int(s["MODEL.RESNETS.STEM_OUT_CHANNELS"]),
            groups=int(s["MODEL.RESNETS.NUM_GROUPS"]),
            width_per_group=int(s["MODEL.RESNETS.WIDTH_PER_GROUP"]),
            stride_in_1x1=bool(s["MODEL.RESNETS.STRIDE_IN_1X1"]),
            fpn_channels=int(s["MODEL.FPN.OUT_CHANNELS"]),
        ),
        anchors=replace(
            m.anchors,
            sizes=tuple(int(level[0]) for level in sizes),
            aspect_ratios=tuple(float(r) for r in ratios[0]),
        ),
        rpn=replace(
            m.rpn,
            pre_nms_topk_train=int(s["MODEL.RPN.PRE_NMS_TOPK_TRAIN"]),
            pre_nms_topk_test=int(s["MODEL.RPN.PRE_NMS_TOPK_TEST"]),
            post_nms_topk_train=int(s["MODEL.RPN.POST_NMS_TOPK_TRAIN"]),
            post_nms_topk_test=int(s["MODEL.RPN.POST_NMS_TOPK_TEST"]),
            nms_thresh=float(s["MODEL.RPN.NMS_THRESH"]),
            bg_iou_thresh=float(iou_rpn[0]),
            fg_iou_thresh=float(iou_rpn[-1]),
            batch_size_per_image=int(s["MODEL.RPN.BATCH_SIZE_PER_IMAGE"]),
            positive_fraction=float(s["MODEL.RPN.POSITIVE_FRACTION"]),
            **_box_loss(float(s["MODEL.RPN.SMOOTH_L1_BETA"])),
        ),
        roi_heads=replace(
            m.roi_heads,
            sampling_ratio=int(s["MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO"]),
            fc_dim=int(s["MODEL.ROI_BOX_HEAD.FC_DIM"]),
            fg_iou_thresh=float(s["MODEL.ROI_HEADS.IOU_THRESHOLDS"][-1]),
            bg_iou_thresh=float(s["MODEL.ROI_HEADS.IOU_THRESHOLDS"][0]),
            batch_size_per_image=int(s["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"]),
            positive_fraction=float(s["MODEL.ROI_HEADS.POSITIVE_FRACTION"]),
            box_reg_weights=tuple(float(v) for v in s["MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS"]),
            score_thresh=float(s["MODEL.ROI_HEADS.SCORE_THRESH_TEST"]),
            nms_thresh=float(s["MODEL.ROI_HEADS.NMS_THRESH_TEST"]),
            detections_per_image=int(s["TEST.DETECTIONS_PER_IMAGE"]),
            mask_on=bool(s["MODEL.MASK_ON"]),
            mask_head_dim=int(s["MODEL.ROI_MASK_HEAD.CONV_DIM"]),
            mask_head_convs=int(s["MODEL.ROI_MASK_HEAD.NUM_CONV"]),
            mask_pool_size=int(s["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION"]),
            class_agnostic_mask=bool(s["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"]),
            keypoint_on=bool(s["MODEL.KEYPOINT_ON"]),
            num_keypoints=int(s["MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS"]),
            keypoint_pool_size=int(s["MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION"]),
            keypoint_head_dim=int(conv_dims[0]) if conv_dims else 512,
            keypoint_head_convs=len(conv_dims),
            **_box_loss(float(s["MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA"])),
        ),
    )
    if int(s["MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION"]) != 7:
        raise UserError(f"{where}detectron2 box pooler resolution must be 7")
    return replace(base, model=model)


def _box_loss(beta: float) -> dict[str, Any]:
    """detectron2's smooth-L1 beta 0 is the L1 loss."""
    return {"box_loss": "l1"} if beta == 0 else {"box_loss": "smooth_l1", "smooth_l1_beta": beta}
