"""The detectron2 row of `maskrcnn benchmark`: detectron2's own Mask R-CNN (its source in
../shared/detectron2, put on sys.path; pure Python, RoIAlign and NMS from torchvision), eager fp32
on the CPU, with the SAME weights as the torchvision and our rows.

The model is built from its model-zoo config `COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`
changed to torchvision's conventions so that torchvision's weights mean the same thing in it: the
stride in the 3×3 conv (`RESNETS.STRIDE_IN_1X1=False`), RGB input with torchvision's mean and std
(×255), RoIAlign with `aligned=False` (`ROIAlign`), 90 classes, and the benchmark's sizes (1000
proposals per image, detections per image, score and NMS thresholds as torchvision's). Its weights
come from ours through the project's converter (`maskrcnn.convert.detectron2.convert_state_dict`,
detectron2 -> ours) run backwards: each detectron2 tensor is filled with its position numbers,
converted, and the positions read off where they land in ours.

Its inputs are resized as torchvision resizes them (bilinear, shorter side `min_size`, longer at
most `max_size`) inside the timed call, then fed as RGB 0..255 (`DefaultPredictor` resizes outside
the model too). What stays different: detectron2's anchors are not rounded to integers, its RPN
keeps boxes of any size, and it pastes masks its own way; so it is compared with torchvision's
detections like every other row, and its detection count is reported.

    row = detectron2_predictor(ours, settings)   # (predict, None) or (None, why it is skipped)
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert.detectron2 import convert_state_dict
from ..model.preprocess import resized_shape

if TYPE_CHECKING:
    from .speed import Settings

CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
SHARED = Path("..") / "shared" / "detectron2"
DEPENDENCIES = ("fvcore", "iopath", "yacs", "omegaconf", "termcolor", "tabulate", "cloudpickle")
Predict = Callable[[list[Tensor]], list[tuple[Tensor, Tensor, Tensor]]]


def detectron2_dir(settings: Settings) -> Path:
    """--detectron2 DIR, else ../shared/detectron2 from the current folder or beside the checkout."""
    if getattr(settings, "detectron2", ""):
        return Path(settings.detectron2)
    here, checkout = Path.cwd() / SHARED, Path(__file__).resolve().parents[2] / SHARED
    return next((p for p in (here, checkout) if p.is_dir()), here).resolve()


def detectron2_predictor(ours: nn.Module, settings: Settings) -> tuple[Optional[Predict], Optional[str]]:
    """detectron2's model with `ours`' weights as a predict function, or (None, why not)."""
    root = detectron2_dir(settings)
    if not (root / "detectron2" / "modeling").is_dir():
        return None, f"detectron2's source not found at {root} (--detectron2 DIR)"
    missing = [m for m in DEPENDENCIES if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"detectron2's dependencies are not installed: {', '.join(missing)}"
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    model = build_detectron2(ours, settings, root)
    min_size, max_size = settings.min_size, settings.max_size

    def predict(batch: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        inputs = []
        for image in batch:
            h, w = image.shape[-2:]
            size = resized_shape(int(h), int(w), min_size=min_size, max_size=max_size)
            x = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            inputs.append({"image": x * 255.0, "height": int(h), "width": int(w)})
        with torch.no_grad():
            outputs = model(inputs)
        return [
            (o.pred_boxes.tensor, o.pred_classes + 1, o.scores)  # detectron2 classes 0..K-1: ours 1..K
            for o in (out["instances"] for out in outputs)
        ]

    return predict, None


def build_detectron2(ours: nn.Module, settings: Settings, root: Path) -> nn.Module:
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(str(root / "configs" / CONFIG))
    mean = [255.0 * m for m in ours.preprocessor.pixel_mean.flatten().tolist()]
    std = [255.0 * s for s in ours.preprocessor.pixel_std.flatten().tolist()]
    cfg.merge_from_list(
        [
            "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "INPUT.FORMAT", "RGB",
            "MODEL.PIXEL_MEAN", mean, "MODEL.PIXEL_STD", std,
            "MODEL.RESNETS.STRIDE_IN_1X1", False,
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign", "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign",
            "MODEL.ROI_HEADS.NUM_CLASSES", ours.num_classes,
            "MODEL.RPN.PRE_NMS_TOPK_TEST", 1000, "MODEL.RPN.POST_NMS_TOPK_TEST", settings.proposals,
            "TEST.DETECTIONS_PER_IMAGE", settings.detections,
            "INPUT.MIN_SIZE_TEST", settings.min_size, "INPUT.MAX_SIZE_TEST", settings.max_size,
        ]
    )  # fmt: skip
    model = build_model(cfg).eval()
    model.load_state_dict(weights_from_ours(model.state_dict(), ours.state_dict()), strict=False)
    return model


@torch.no_grad()
def weights_from_ours(d2_state: dict[str, Tensor], ours: dict[str, Tensor]) -> dict[str, Tensor]:
    """detectron2 tensors (names and shapes of `d2_state`) holding `ours`' values: every name that
    the converter maps. Positions are numbered from 1 (0: the rows the converter fills with zeros,
    which hold nothing of detectron2's)."""
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    out = {}
    for key, template in d2_state.items():
        if not template.is_floating_point():
            continue
        probe = {key: torch.arange(1, template.numel() + 1, dtype=torch.float64).reshape(template.shape)}
        if key.startswith("roi_heads.box_predictor.bbox_pred.") and key != cls_key:
            probe[cls_key] = -torch.ones(d2_state[cls_key].shape, dtype=torch.float64)
        converted = {
            k: v for k, v in convert_state_dict(probe).items() if v.numel() and v.max() == template.numel()
        }
        if len(converted) != 1:
            continue  # a buffer the converter leaves out (anchors, pixel statistics)
        ((ours_key, positions),) = converted.items()
        flat, where = ours[ours_key].flatten(), positions.flatten()
        value = torch.empty(template.numel(), dtype=template.dtype)
        value[(where[where > 0] - 1).long()] = flat[where > 0].to(template.dtype)
        out[key] = value.reshape(template.shape)
    return out
