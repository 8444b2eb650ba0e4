"""COCO result records: what prediction writes (predictions.json, the frames of a video), what the
server answers and what evaluation hands to pycocotools.

A COCO result record: {"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score",
"segmentation": {"size": [H, W], "counts": str}} (RLE with string counts), what
pycocotools' `COCO.loadRes` and COCOeval read; for a model with the keypoint branch also
"keypoints": [x1, y1, s1, ..., xJ, yJ, sJ], as in COCO keypoint results, with each keypoint's
score (its heatmap logit) in the place of the visibility (COCOeval reads only x and y of results).
Keypoint coordinates are continuous pixel coordinates, as the model's (and torchvision's) are.
Boxes and keypoints are rounded to 3 decimals, scores to 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch

from .structures import Detections

__all__ = ["detection_records", "detections_to_coco", "encode_masks", "image_id_for"]


def image_id_for(path: str | Path, index: int) -> int:
    """COCO-style names (000000397133.jpg) give their number; other files their position (1-based)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else index + 1


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """(D, H, W) bool -> RLEs with string counts."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_util.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detection_records(det: Detections, *, category_ids: Sequence[int] | None = None) -> list[dict]:
    """One {"category_id", "bbox" (xywh), "score", "segmentation" (RLE), "keypoints" ([x, y, score]
    × J)} per detection; without "segmentation" for a model that has no mask branch, without
    "keypoints" for one without the keypoint branch."""
    boxes = det.boxes.detach().cpu()
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    labels = det.labels.cpu().tolist()
    scores = det.scores.detach().cpu().tolist()
    records = []
    for box, label, score in zip(xywh, labels, scores):
        category = category_ids[label - 1] if category_ids else label
        records.append(
            {
                "category_id": int(category),
                "bbox": [round(v, 3) for v in box],
                "score": round(float(score), 5),
            }
        )
    crops = det.mask_crops
    if crops is not None:  # from the crops: no image-sized planes (same bytes as encode_masks)
        for record, rle in zip(records, crops.to("cpu").rle()):
            record["segmentation"] = rle
    if det.keypoints is not None:
        flat = det.keypoints.detach().cpu().flatten(1).tolist()
        for record, values in zip(records, flat):
            record["keypoints"] = [round(v, 3) for v in values]
    return records


def detections_to_coco(
    det: Detections, *, image_id: int, file_name: str, category_ids: Sequence[int] | None = None
) -> list[dict]:
    """`detection_records` with the image's "image_id" and "file_name" in front of each."""
    return [
        {"image_id": image_id, "file_name": file_name, **r}
        for r in detection_records(det, category_ids=category_ids)
    ]
