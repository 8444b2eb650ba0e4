"""Convert torchvision Mask R-CNN state dicts (`maskrcnn_resnet50_fpn`, `_v2`) and Keypoint R-CNN
ones (`keypointrcnn_resnet50_fpn`) to this package.

Names map one to one (ResNet names are shared); the only change of values is the mask predictor,
whose background channel (never used by torchvision either) is dropped. Both the current
torchvision layout (`conv.0.0`, `mask_head.0.0`) and the pre-0.13 one (`conv`, `mask_fcn1`) are read.
"""

from __future__ import annotations

import re

from torch import Tensor

from ..config import BackboneConfig, Config, get_preset, replace
from ..data.coco_names import TORCHVISION_COCO_NAMES
from ..errors import UserError, UserKeyError
from ..safe_load import load_weights_file
from .fit import load_fitting

_BOX_CLASSIFIER = "roi_heads.box_predictor.cls_score.weight"

_RULES = [
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"backbone.fpn.lateral.\1.conv."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.1\.", r"backbone.fpn.lateral.\1.norm."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.lateral.\1.conv.\2"),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"backbone.fpn.output.\1.conv."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.1\.", r"backbone.fpn.output.\1.norm."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.output.\1.conv.\2"),
    (r"^rpn\.head\.conv\.(\d+)\.0\.", r"rpn.head.convs.\1."),
    (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.convs.0.\1"),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc6\.", "roi_heads.box.head.fc1."),
    (r"^roi_heads\.box_head\.fc7\.", "roi_heads.box.head.fc2."),
    (r"^roi_heads\.box_head\.([0-3])\.0\.", r"roi_heads.box.head.convs.\1.conv."),
    (r"^roi_heads\.box_head\.([0-3])\.1\.", r"roi_heads.box.head.convs.\1.norm."),
    (r"^roi_heads\.box_head\.5\.", "roi_heads.box.head.fc1."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box.predictor."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_heads.mask.head.convs.\1.conv."),
    (r"^roi_heads\.mask_head\.(\d+)\.1\.", r"roi_heads.mask.head.convs.\1.norm."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", "roi_heads.mask.head.deconv."),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.", "roi_heads.mask.head.predictor."),
    (r"^roi_heads\.keypoint_predictor\.kps_score_lowres\.", "roi_heads.keypoint.head.predictor."),
    (r"^backbone\.body\.", "backbone.body."),
]


def _rename(key: str) -> str | None:
    keypoint_conv = re.match(r"^roi_heads\.keypoint_head\.(\d+)\.(weight|bias)$", key)
    if keypoint_conv:  # convs at even positions of torchvision's Sequential (ReLUs between)
        index, kind = int(keypoint_conv.group(1)) // 2, keypoint_conv.group(2)
        return f"roi_heads.keypoint.head.convs.{index}.conv.{kind}"
    old_mask = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", key)
    if old_mask:
        return f"roi_heads.mask.head.convs.{int(old_mask.group(1)) - 1}.conv.{old_mask.group(2)}"
    for pattern, replacement in _RULES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision Mask R-CNN state dict -> ours. Unknown keys raise a KeyError naming them."""
    out, unknown = {}, []
    for key, value in state.items():
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        if new.startswith("roi_heads.mask.head.predictor."):
            value = value[1:]  # drop the background channel: (K+1, ...) -> (K, ...)
        out[new] = value
    if unknown:
        raise UserKeyError(f"not a torchvision Mask R-CNN state dict; unrecognized keys: {unknown[:5]}")
    return out


def config_for(state: dict[str, Tensor], version: str) -> Config:
    """The Config that reproduces the torchvision model whose state dict this is."""
    if version not in ("v1", "v2", "keypoint"):
        raise UserError(f"torchvision version must be v1, v2 or keypoint, got {version!r}")
    cfg = get_preset(f"torchvision_{version}")
    num_classes = state[_BOX_CLASSIFIER].shape[0] - 1
    # torchvision builds the backbone with BatchNorm2d (all stages trainable) unless it loads
    # pretrained weights, in which case it uses FrozenBatchNorm2d (no num_batches_tracked buffer).
    trained_bn = "backbone.body.bn1.num_batches_tracked" in state
    backbone: BackboneConfig = cfg.model.backbone
    if version in ("v1", "keypoint"):
        backbone = replace(
            backbone, norm="bn" if trained_bn else "frozen_bn", frozen_stages=0 if trained_bn else 2
        )
    model = replace(cfg.model, num_classes=num_classes, backbone=backbone)
    predictor = state.get("roi_heads.keypoint_predictor.kps_score_lowres.weight")
    if predictor is not None:  # (C, J, 4, 4): J keypoints
        model = replace(model, roi_heads=replace(model.roi_heads, num_keypoints=int(predictor.shape[1])))
    return replace(cfg, model=model)


def load_torchvision_state(path: str) -> dict[str, Tensor]:
    """The state dict of a torchvision Mask R-CNN file (read by `maskrcnn.safe_load`, which runs no
    code from it); a file that is none -> UserError naming it."""
    return torchvision_state(load_weights_file(path), source=path)


def torchvision_state(obj, *, source: str) -> dict[str, Tensor]:
    """The torchvision Mask R-CNN state dict a weights file held (bare, or under "model"); anything
    else -> UserError naming `source`."""
    state = obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if not is_torchvision_state(state):
        raise UserError(
            f"{source}: not a torchvision Mask R-CNN state dict (no roi_heads.box_predictor weights)"
        )
    not_tensors = [key for key, value in state.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise UserError(f"{source}: not a torchvision state dict: {not_tensors[0]!r} is not a tensor")
    return state


def is_torchvision_state(obj) -> bool:
    """Whether `obj` is a torchvision Mask R-CNN / Keypoint R-CNN state dict (its box predictor's key)."""
    return isinstance(obj, dict) and _BOX_CLASSIFIER in obj


def detect_version(state: dict[str, Tensor]) -> str:
    """v1, v2 or keypoint: which torchvision builder made the model of this state dict."""
    if "roi_heads.keypoint_predictor.kps_score_lowres.weight" in state:
        return "keypoint"
    if "roi_heads.box_head.0.0.weight" in state or "rpn.head.conv.1.0.weight" in state:
        return "v2"  # the conv box head and the 2-conv RPN head
    return "v1"


def default_class_names(num_classes: int, version: str) -> list[str]:
    """The class names of a torchvision model: COCO's (91-slot label space) for 90 classes, person
    for a one-class keypoint model, else class_1..class_K."""
    if num_classes == 90:
        return list(TORCHVISION_COCO_NAMES[1:])
    if version == "keypoint" and num_classes == 1:
        return ["person"]
    return [f"class_{i}" for i in range(1, num_classes + 1)]


def torchvision_checkpoint(state: dict[str, Tensor]) -> dict:
    """Our checkpoint dict (config, class names, state) of a torchvision state dict, its version
    told by its keys (`detect_version`)."""
    from .checkpoint_format import checkpoint_dict

    version = detect_version(state)
    cfg = config_for(state, version)
    k = cfg.model.num_classes
    return checkpoint_dict(
        config=cfg,
        class_names=default_class_names(k, version),
        category_ids=range(1, k + 1),  # what a model built without category ids has
        model=convert_state_dict(state),
    )


def from_torchvision(
    state: dict[str, Tensor],
    version: str,
    class_names: list[str] | None = None,
    *,
    source: str = "state dict",
):
    """Build our model holding the weights of a torchvision Mask R-CNN state dict (read from
    `source`); weights of another architecture than `version`'s -> UserError naming `source`."""
    from ..model import build_model

    cfg = config_for(state, version)
    if class_names is None:
        class_names = default_class_names(cfg.model.num_classes, version)
    model = build_model(cfg, class_names=class_names)
    try:
        converted = convert_state_dict(state)
    except UserKeyError as e:
        raise UserError(f"{source}: {e}") from None
    load_fitting(model, converted, source=source, what=f"torchvision's {version} model")
    return model


def resnet_imagenet_to_backbone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision ImageNet ResNet state dict -> keys of our `backbone.body` (the fc layer dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if not re.match(r"^(conv1|bn1|layer[1-4])\.", key):
            raise UserKeyError(f"not a torchvision ResNet state dict: unexpected key {key!r}")
        out[key] = value
    return out
