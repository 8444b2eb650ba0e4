"""Convert detectron2 R-CNN checkpoints (Mask R-CNN and Keypoint R-CNN with a ResNet / ResNeXt
FPN backbone) to our checkpoint.

Inputs (already read by a safe loader; nothing here reads the weights file):
    - what detectron2's DetectionCheckpointer saves (`model_final.pth`): {"model": state dict, ...}
    - a model-zoo `.pkl`: {"model": {name: numpy array}, "__author__": ..., "matching_heuristics": ...}
    - a bare detectron2 state dict (tensors or numpy arrays)

The architecture comes from the tensors' names and shapes (ResNet depth from the res4 blocks,
ResNeXt groups and width from res2's 3×3 conv, FPN width, classes, masks, keypoints), and from a
detectron2 YAML config when one is given (`d2_config`, its `_BASE_` files followed); the weights
cannot tell where the stride of a bottleneck is, nor the pixel normalisation: without a config
these are detectron2's ImageNet conventions (MSRA ResNets: stride in the 1×1 conv, BGR with std 1;
ResNeXt, FAIR's Torch models: stride in the 3×3 conv, std (57.375, 57.12, 58.395)).

Values change in two places only: detectron2's class scores put the background last (ours first),
and its box regressor has no background row (ours: 4 unused rows first, zeros here).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data.coco_names import TORCHVISION_COCO_NAMES
from ..errors import UserError
from .checkpoint_format import checkpoint_dict
from .detectron2_config import read_d2_yaml, settings, to_config

__all__ = ["coco_80", "convert_state_dict", "from_detectron2", "infer_settings", "is_detectron2"]

_STAGE = r"^backbone\.bottom_up\.res([2-5])\.(\d+)\."
_RULES = [
    (r"^backbone\.bottom_up\.stem\.conv1\.weight$", "backbone.body.conv1.weight"),
    (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.body.bn1."),
    (_STAGE + r"conv([1-3])\.weight$", r"backbone.body.layer{L}.\2.conv\3.weight"),
    (_STAGE + r"conv([1-3])\.norm\.", r"backbone.body.layer{L}.\2.bn\3."),
    (_STAGE + r"shortcut\.weight$", r"backbone.body.layer{L}.\2.downsample.0.weight"),
    (_STAGE + r"shortcut\.norm\.", r"backbone.body.layer{L}.\2.downsample.1."),
    (r"^backbone\.fpn_lateral([2-5])\.", "backbone.fpn.lateral.{F}.conv."),
    (r"^backbone\.fpn_output([2-5])\.", "backbone.fpn.output.{F}.conv."),
    (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.convs.0."),
    (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.objectness."),
    (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.fc([12])\.", r"roi_heads.box.head.fc\1."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.box.predictor."),
    (r"^roi_heads\.mask_head\.mask_fcn(\d+)\.", "roi_heads.mask.head.convs.{I}.conv."),
    (r"^roi_heads\.mask_head\.deconv\.", "roi_heads.mask.head.deconv."),
    (r"^roi_heads\.mask_head\.predictor\.", "roi_heads.mask.head.predictor."),
    (r"^roi_heads\.keypoint_head\.conv_fcn(\d+)\.", "roi_heads.keypoint.head.convs.{I}.conv."),
    (r"^roi_heads\.keypoint_head\.score_lowres\.", "roi_heads.keypoint.head.predictor."),
]
# detectron2 names that hold no weights of ours (non-persistent buffers in older files, counters)
_IGNORED = re.compile(r"(^pixel_(mean|std)$|anchor_generator\.|num_batches_tracked$)")
_MARKERS = ("backbone.bottom_up.stem.conv1.weight", "roi_heads.box_predictor.cls_score.weight")


def _state_of(obj: Any) -> Mapping | None:
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        return obj["model"]
    return obj if isinstance(obj, Mapping) else None


def is_detectron2(obj: Any) -> bool:
    """Whether `obj` is a detectron2 R-CNN checkpoint (a dict with "model") or state dict."""
    state = _state_of(obj)
    return state is not None and all(k in state for k in _MARKERS)


def _rename(key: str) -> str | None:
    for pattern, target in _RULES:
        match = re.match(pattern, key)
        if match is None:
            continue
        # {L}: res2..5 -> layer1..4; {F}: P2..P5 -> 0..3; {I}: 1-based conv numbers -> 0-based
        for mark, shift in (("{L}", 1), ("{F}", 2), ("{I}", 1)):
            if mark in target:
                target = target.replace(mark, str(int(match.group(1)) - shift))
        return re.sub(pattern, target, key)
    return None


def _tensors(state: Mapping, source: str) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, Tensor):
            raise UserError(f"{source}: {key} is a {type(value).__name__}, not an array of weights")
        out[str(key)] = value
    return out


def convert_state_dict(state: Mapping[str, Tensor], *, source: str = "") -> dict[str, Tensor]:
    """detectron2 state dict (tensors) -> ours. Unknown names are a UserError listing them."""
    out, unknown = {}, []
    for key, value in state.items():
        if _IGNORED.search(key):
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        value = value.float() if value.is_floating_point() else value
        if (
            key == "roi_heads.box_predictor.cls_score.weight"
            or key == "roi_heads.box_predictor.cls_score.bias"
        ):
            value = torch.cat([value[-1:], value[:-1]])  # background: last -> first
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            k = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
            if value.shape[0] == 4:  # class-agnostic regression: the same 4 rows for every class
                value = value.repeat(k, *([1] * (value.dim() - 1)))
            value = torch.cat([torch.zeros_like(value[:4]), value])  # an unused background row
        out[new] = value
    # FrozenBN saved before its version 2 has no statistics; detectron2 then uses mean 0, var 1
    for key in [k for k in out if re.search(r"\.(bn\d|downsample\.1)\.weight$", k)]:
        prefix = key[: -len("weight")]
        out.setdefault(prefix + "running_mean", torch.zeros_like(out[key]))
        out.setdefault(prefix + "running_var", torch.ones_like(out[key]))
    if unknown:
        where = f"{source}: " if source else ""
        raise UserError(
            f"{where}not a detectron2 R-CNN with a ResNet-FPN backbone that this package can run; "
            f"unrecognised weights: {unknown[:5]}"
        )
    return out


def infer_settings(state: Mapping[str, Tensor], *, source: str = "") -> dict[str, Any]:
    """detectron2 settings (dotted names) that the tensors' names and shapes determine."""
    where = f"{source}: " if source else ""
    blocks = {
        stage: len(
            {
                int(m.group(1))
                for k in state
                if (m := re.match(rf"^backbone\.bottom_up\.res{stage}\.(\d+)\.", k))
            }
        )
        for stage in (2, 3, 4, 5)
    }
    depths = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101}
    depth = depths.get(tuple(blocks[s] for s in (2, 3, 4, 5)))
    if depth is None:
        raise UserError(f"{where}a ResNet with {list(blocks.values())} blocks per stage is not ResNet-50/101")
    conv2 = state["backbone.bottom_up.res2.0.conv2.weight"]  # (inner, inner / groups, 3, 3)
    stem = int(state["backbone.bottom_up.stem.conv1.weight"].shape[0])
    groups = int(conv2.shape[0] // conv2.shape[1])
    s: dict[str, Any] = {
        "MODEL.RESNETS.DEPTH": depth,
        "MODEL.RESNETS.NUM_GROUPS": groups,
        "MODEL.RESNETS.WIDTH_PER_GROUP": int(conv2.shape[1] * 64 // stem),
        "MODEL.RESNETS.STEM_OUT_CHANNELS": stem,
        # FAIR's ResNeXt ImageNet models (Torch style) have the stride in the 3×3 conv and another std
        "MODEL.RESNETS.STRIDE_IN_1X1": groups == 1,
        "MODEL.FPN.OUT_CHANNELS": int(state["backbone.fpn_lateral2.weight"].shape[0]),
        "MODEL.ROI_HEADS.NUM_CLASSES": int(state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1),
        "MODEL.ROI_BOX_HEAD.NUM_FC": len(
            [k for k in state if re.match(r"^roi_heads\.box_head\.fc\d+\.weight$", k)]
        ),
        "MODEL.ROI_BOX_HEAD.FC_DIM": int(state["roi_heads.box_head.fc1.weight"].shape[0]),
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 7,
        "MODEL.MASK_ON": "roi_heads.mask_head.predictor.weight" in state,
        "MODEL.KEYPOINT_ON": "roi_heads.keypoint_head.score_lowres.weight" in state,
    }
    if groups > 1:
        s["MODEL.PIXEL_STD"] = [57.375, 57.120, 58.395]
    if s["MODEL.MASK_ON"]:
        s["MODEL.ROI_MASK_HEAD.NUM_CONV"] = len(
            [k for k in state if re.match(r"^roi_heads\.mask_head\.mask_fcn\d+\.weight$", k)]
        )
        s["MODEL.ROI_MASK_HEAD.CONV_DIM"] = int(state["roi_heads.mask_head.deconv.weight"].shape[0])
        s["MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"] = (
            int(state["roi_heads.mask_head.predictor.weight"].shape[0]) == 1
        )
    if s["MODEL.KEYPOINT_ON"]:
        convs = [k for k in state if re.match(r"^roi_heads\.keypoint_head\.conv_fcn\d+\.weight$", k)]
        dim = int(state["roi_heads.keypoint_head.conv_fcn1.weight"].shape[0])
        s["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS"] = [dim] * len(convs)
        s["MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS"] = int(
            state["roi_heads.keypoint_head.score_lowres.weight"].shape[1]
        )
    if any(k.startswith("backbone.fpn_lateral2.norm.") for k in state):
        raise UserError(f"{where}FPN with a norm layer is not supported")
    return s


def coco_80() -> tuple[list[str], list[int]]:
    """COCO's 80 class names in detectron2's contiguous order, and their COCO category ids."""
    pairs = [(n, i) for i, n in enumerate(TORCHVISION_COCO_NAMES) if n not in ("__background__", "N/A")]
    return [n for n, _ in pairs], [i for _, i in pairs]


def _names(cfg, class_names: Sequence[str] | None, source: str) -> tuple[list[str], list[int]]:
    k = cfg.model.num_classes
    if class_names is not None:
        if len(class_names) != k:
            raise UserError(f"{source}: {len(class_names)} class names given for a model of {k} classes")
        return list(class_names), list(range(1, k + 1))
    if k == 80:
        return coco_80()
    if k == 1 and cfg.model.roi_heads.keypoint_on:
        return ["person"], [1]  # COCO's person category
    return [f"class_{i}" for i in range(1, k + 1)], list(range(1, k + 1))


def _check_shapes(cfg, state: dict[str, Tensor], source: str) -> None:
    """The converted tensors against the model the config builds: missing, extra, mismatched."""
    from ..model import build_model

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        own = build_model(cfg).state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or extra or wrong:
        raise UserError(
            f"{source}: the weights do not fit the detectron2 config (missing {missing[:3]}, "
            f"unexpected {extra[:3]}, shapes {wrong[:3]})"
        )


def from_detectron2(
    obj: Any,
    *,
    d2_config: str | Path | None = None,
    class_names: list[str] | None = None,
    source: str = "",
) -> dict:
    """A detectron2 checkpoint (see the module docstring) -> our checkpoint dict (format, version,
    schema, config, class_names, category_ids, model: `checkpoint_format.checkpoint_dict`)."""
    name = source or "detectron2 checkpoint"
    state = _state_of(obj)
    if state is None or not is_detectron2(obj):
        raise UserError(f"{name}: not a detectron2 R-CNN checkpoint (no {_MARKERS[0]} / {_MARKERS[1]})")
    tensors = _tensors(state, name)
    values = settings(read_d2_yaml(d2_config) if d2_config else None, **infer_settings(tensors, source=name))
    cfg = to_config(values, source=str(d2_config or name))
    converted = convert_state_dict(tensors, source=name)
    _check_shapes(cfg, converted, name)
    names, ids = _names(cfg, class_names, name)
    return checkpoint_dict(config=cfg, class_names=names, category_ids=ids, model=converted)
