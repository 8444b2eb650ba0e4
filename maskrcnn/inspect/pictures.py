"""Every picture of `maskrcnn inspect`, in page order, with the summary that holds the numbers
behind them (`draw_all`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .canvas import Picture
from .head_pictures import draw_final, draw_masks, draw_refinement, draw_roi_levels
from .keypoint_pictures import draw_keypoint_heatmaps
from .rpn_pictures import draw_anchor_targets, draw_anchors, draw_rpn

if TYPE_CHECKING:
    from .stages import Inspection

__all__ = ["draw_all"]


def draw_all(ins: Inspection, out: Path) -> tuple[list[dict], dict]:
    """Draw every picture of `ins` (an Inspection) into `out` as PNG files.

    Returns the pictures in page order (id, file, title, caption) and the summary dict."""
    stages: list[tuple[str, Picture]] = [("anchors", draw_anchors(ins))]
    if ins.targets is not None:
        stages.append(("anchor_targets", draw_anchor_targets(ins)))
    pre, post = draw_rpn(ins)
    stages += [("rpn_pre_nms", pre), ("rpn_post_nms", post)]
    stages += [("roi_levels", draw_roi_levels(ins)), ("box_refinement", draw_refinement(ins))]
    if ins.detections.mask_crops is not None:  # a model with the mask branch
        stages.append(("mask_logits", draw_masks(ins)))
    if ins.detections.keypoints is not None:  # a model with the keypoint branch
        stages.append(("keypoint_heatmaps", draw_keypoint_heatmaps(ins)))
    stages.append(("detections", draw_final(ins)))
    pictures = []
    summary: dict = {
        "image": {
            "original_size": list(ins.original_size),
            "input_size": list(ins.input_size),
            "padded_size": list(ins.padded_size),
        }
    }
    for key, (image, title, caption, stats) in stages:
        file = f"{key}.png"
        image.save(out / file)
        pictures.append({"id": key, "file": file, "title": title, "caption": caption})
        summary[key] = stats
    summary["rpn"] = summary.pop("rpn_pre_nms")
    summary.pop("rpn_post_nms")
    return pictures, summary
