"""Dataset specification strings and COCO JSON export.

Specs:
    coco:ANNOTATIONS.json:IMAGE_DIR   COCO JSON + image folder   (CocoDataset)
    via:DIR                           VIA polygons               (ViaDataset)
    masks:DIR                         one folder per image       (MaskFolderDataset)
    shapes | shapes:N | shapes:N:SEED synthetic shapes, N=200 and SEED=0 by default (ShapesDataset)

`write_coco_json` turns any of these datasets into a COCO ground-truth file (for COCO evaluation
of datasets that are not COCO to begin with).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.mask_folder import MaskFolderDataset
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.data.via import ViaDataset
from maskrcnn.structures import Targets

__all__ = ["DATASET_KINDS", "build_dataset", "write_coco_json"]

DATASET_KINDS = ("coco", "via", "masks", "shapes")
_USAGE = "coco:ANNOTATIONS.json:IMAGE_DIR, via:DIR, masks:DIR, shapes, shapes:N or shapes:N:SEED"


def _existing(path: str, what: str, spec: str, *, is_dir: bool) -> Path:
    p = Path(path).expanduser()
    ok = p.is_dir() if is_dir else p.is_file()
    if not ok:
        raise FileNotFoundError(f"dataset spec {spec!r}: {what} {p} does not exist")
    return p


def build_dataset(spec: str) -> Dataset:
    """Build a dataset from a spec string (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "coco":
        ann, sep, image_dir = rest.partition(":")
        if not sep or not ann or not image_dir:
            raise ValueError(f"dataset spec {spec!r}: expected coco:ANNOTATIONS.json:IMAGE_DIR")
        return CocoDataset(
            _existing(ann, "annotation file", spec, is_dir=False),
            _existing(image_dir, "image directory", spec, is_dir=True),
        )
    if kind in ("via", "masks"):
        if not rest:
            raise ValueError(f"dataset spec {spec!r}: expected {kind}:DIR")
        directory = _existing(rest, "directory", spec, is_dir=True)
        return ViaDataset(directory) if kind == "via" else MaskFolderDataset(directory)
    if kind == "shapes":
        parts = rest.split(":") if rest else []
        if len(parts) > 2:
            raise ValueError(f"dataset spec {spec!r}: expected shapes, shapes:N or shapes:N:SEED")
        try:
            n = int(parts[0]) if parts else 200
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise ValueError(f"dataset spec {spec!r}: N and SEED must be integers") from None
        return ShapesDataset(n, seed=seed)
    raise ValueError(f"unknown dataset kind {kind!r} in spec {spec!r}; expected one of {_USAGE}")


def _image_entry(dataset: Any, index: int) -> tuple[dict, Targets]:
    """COCO image record and targets of item `index`, avoiding image decoding when possible."""
    if hasattr(dataset, "load_targets") and hasattr(dataset, "image_size"):
        targets, _ = dataset.load_targets(index)
        h, w = dataset.image_size(index)
        image_id = int(dataset.image_ids[index]) if hasattr(dataset, "image_ids") else index
        name = dataset.file_name(index) if hasattr(dataset, "file_name") else str(index)
    else:
        sample = dataset[index]
        targets, image_id, name = sample.targets, int(sample.image_id), sample.file_name
        h, w = sample.image.shape[-2:]
    return {"id": image_id, "file_name": name, "height": int(h), "width": int(w)}, targets


def write_coco_json(dataset: Dataset, out_path: Union[str, Path]) -> Path:
    """Write `dataset` as a COCO instances file and return its path.

    Categories: the dataset's class names with ids `dataset.category_ids` (1..K; a CocoDataset's
    original category records are copied, so its sparse ids are kept). Annotations: one per target
    instance, with compressed RLE segmentation (string counts), tight bbox [x, y, w, h], mask area
    and iscrowd 0. Crowd regions are not written. The file is written to a temporary file and moved
    into place atomically.
    """
    out_path = Path(out_path)
    names = list(dataset.class_names)  # type: ignore[attr-defined]
    cat_ids = list(getattr(dataset, "category_ids", range(1, len(names) + 1)))
    images, annotations = [], []
    for index in range(len(dataset)):  # type: ignore[arg-type]
        image, targets = _image_entry(dataset, index)
        images.append(image)
        masks = targets.masks.to("cpu", dtype=torch.uint8).numpy()
        for k in range(len(targets)):
            rle = mask_utils.encode(np.asfortranarray(masks[k]))
            area = float(mask_utils.area(rle))
            if area <= 0:
                continue
            x1, y1, x2, y2 = (float(v) for v in targets.boxes[k].tolist())
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image["id"],
                    "category_id": int(cat_ids[int(targets.labels[k]) - 1]),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": area,
                    "iscrowd": 0,
                }
            )
    categories = getattr(dataset, "categories", None)  # CocoDataset keeps its original records
    if categories is None:
        categories = [{"id": int(c), "name": n, "supercategory": ""} for c, n in zip(cat_ids, names)]
    payload = {
        "info": {"description": f"written by maskrcnn.data from {type(dataset).__name__}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out_path
