"""Whether an annotation's `bbox` agrees with its mask: what `check-data` notes when it does not.

Training takes every box from the mask (`targets_from_rles`: the tight box of the mask's pixels),
but COCO evaluation (`maskrcnn evaluate`, pycocotools) scores box AP against the annotation
file's `bbox` fields. A `bbox` whose IoU with the mask's box is below `MIN_BOX_IOU` (0.5, the
lowest IoU at which COCO's AP counts a detection as a match) is therefore noted, naming the
annotation: a model that finds the object exactly would not match that ground-truth box.

The mask's box is the box of the polygons' points as training keeps them (clipped to the image),
or the tight box of an RLE's pixels (pycocotools `toBbox`); both as [x, y, width, height].
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_BOX_IOU", "box_iou_xywh", "mask_box", "bbox_disagreement"]

MIN_BOX_IOU = 0.5


def mask_box(segmentation, height: int, width: int) -> list[float] | None:
    """[x, y, w, h] of a segmentation (a list of flat polygons, or an RLE dict), None if empty."""
    if isinstance(segmentation, dict):
        from pycocotools import mask as mask_utils

        from maskrcnn.data.coco import decode_segmentation

        rle = decode_segmentation(segmentation, height, width)
        if not mask_utils.area(rle):
            return None
        return [float(v) for v in mask_utils.toBbox(rle)]
    points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segmentation if len(p) >= 6]
    if not points:
        return None
    xy = np.concatenate(points)
    (x1, y1), (x2, y2) = xy.min(axis=0), xy.max(axis=0)
    return [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]


def box_iou_xywh(a: list[float], b: list[float]) -> float:
    """IoU of two [x, y, w, h] boxes (0 when either has no area)."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def bbox_disagreement(bbox: list[float], segmentation, height: int, width: int) -> str | None:
    """The note's detail when `bbox` and the segmentation's box have IoU < MIN_BOX_IOU, else None."""
    box = mask_box(segmentation, height, width)
    if box is None:
        return None  # a segmentation without area is reported (and dropped) elsewhere
    iou = box_iou_xywh([float(v) for v in bbox], box)
    if iou >= MIN_BOX_IOU:
        return None
    shown = [round(v, 1) for v in box]
    return (
        f"bbox {list(bbox)} vs the mask's box {shown}: IoU {iou:.2f} < {MIN_BOX_IOU} (training uses the "
        "mask's box; evaluate scores box AP against the bbox)"
    )
