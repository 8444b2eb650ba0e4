"""COCO-format instance segmentation dataset.

Segmentations may be polygons, compressed RLE (string counts) or uncompressed RLE (list counts);
all are rasterised with `pycocotools.mask`. Category ids (sparse in COCO: 1..90 for 80 classes)
are mapped to contiguous labels 1..K in sorted id order. `iscrowd=1` regions are never targets;
their boxes are returned as `Sample.crowd_boxes`. Annotations whose mask is empty (zero area) are
dropped. Boxes are the tight boxes of the decoded masks, not the JSON `bbox` field.
"""

from __future__ import annotations

import json
import warnings
from numbers import Real
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image
from maskrcnn.ops.boxes import masks_to_boxes
from maskrcnn.structures import Sample, Targets

__all__ = ["CocoDataset", "decode_rles", "decode_segmentation"]


def read_json(path: Path, what: str = "annotation") -> Any:
    """Parse a JSON file; a missing or malformed file raises an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} file {path} is not valid JSON: {e}") from e


def targets_from_rles(rles: list, labels: list[int], h: int, w: int) -> Targets:
    """Instance RLEs (empty ones dropped) and their labels -> Targets with tight boxes."""
    if rles:
        keep = mask_utils.area(rles) > 0
        rles = [r for r, k in zip(rles, keep) if k]
        labels = [lab for lab, k in zip(labels, keep) if k]
    masks = decode_rles(rles, h, w)
    return Targets(masks_to_boxes(masks), torch.tensor(labels, dtype=torch.int64), masks)


def _check_segmentation(seg: Any, height: int, width: int) -> str | None:
    """Return a description of what is wrong with a COCO segmentation, or None if it is valid."""
    if isinstance(seg, list):
        if not all(isinstance(p, list) for p in seg):
            return "polygon segmentation must be a list of coordinate lists"
        for p in seg:
            if not all(isinstance(v, Real) for v in p):
                return "polygon coordinates must be numbers"
            if len(p) % 2:
                return f"polygon has an odd number of coordinates ({len(p)})"
        return None
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return f"RLE segmentation needs 'counts' and 'size', has {sorted(seg)}"
        size = seg["size"]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, Real) for v in size)):
            return f"RLE 'size' must be [height, width], got {size!r}"
        if [int(size[0]), int(size[1])] != [height, width]:
            return f"RLE size {size} does not match the image size [{height}, {width}]"
        counts = seg["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts):
                return "uncompressed RLE counts must be non-negative integers"
            if sum(counts) != height * width:
                return f"uncompressed RLE counts sum to {sum(counts)}, expected {height * width}"
        elif not isinstance(counts, (str, bytes)):
            return f"RLE counts must be a string or a list, got {type(counts).__name__}"
        return None
    return f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}"


def decode_segmentation(seg: Any, height: int, width: int) -> dict:
    """Convert a (validated) COCO segmentation into a compressed RLE dict for pycocotools.

    Polygons with fewer than 3 points cannot enclose any pixel and are ignored; an annotation made
    only of those yields an empty RLE.
    """
    if isinstance(seg, list):
        polys = [[float(v) for v in p] for p in seg if len(p) >= 6]
        if not polys:
            return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    counts = seg["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def decode_rles(rles: list[dict], height: int, width: int) -> torch.Tensor:
    """Decode compressed RLEs into a (G, H, W) uint8 tensor (G may be 0)."""
    if not rles:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    with warnings.catch_warnings():
        # pycocotools' Cython decode triggers a NumPy 2 "copy keyword" DeprecationWarning.
        warnings.simplefilter("ignore", DeprecationWarning)
        hwn = mask_utils.decode(rles)
    return torch.from_numpy(np.ascontiguousarray(hwn.transpose(2, 0, 1)))


class CocoDataset(Dataset):
    """Images and instance annotations of a COCO JSON file.

    Attributes: `image_ids` (sorted COCO image ids, item i ↔ image_ids[i]), `class_names` (K names,
    index i ↔ label i+1), `category_ids` (label i+1 ↔ category_ids[i]).

    With `contiguous_labels=False` the label is the category id itself (torchvision's 91-slot COCO
    layout): K = largest category id and unused slots are named "N/A".
    """

    def __init__(
        self,
        annotation_file: Union[str, Path],
        image_dir: Union[str, Path],
        *,
        contiguous_labels: bool = True,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = read_json(self.annotation_file)
        where = str(self.annotation_file)
        if not isinstance(data, dict) or "images" not in data or "categories" not in data:
            raise UserError(f"{where}: a COCO file needs 'images' and 'categories' lists")

        cats = {}
        self.categories: list[dict] = []  # the original category records, in id order
        for c in sorted(data["categories"], key=lambda c: int(c.get("id", 0))):
            if "id" not in c or "name" not in c:
                raise UserError(f"{where}: category {c!r} needs 'id' and 'name'")
            if int(c["id"]) in cats:
                raise UserError(f"{where}: duplicate category id {c['id']}")
            cats[int(c["id"])] = str(c["name"])
            self.categories.append({k: c[k] for k in ("id", "name", "supercategory") if k in c})
        if contiguous_labels:
            self.category_ids = sorted(cats)
            self.class_names = [cats[i] for i in self.category_ids]
        else:
            if min(cats, default=1) < 1:
                raise UserError(f"{where}: contiguous_labels=False needs category ids >= 1")
            self.category_ids = list(range(1, max(cats, default=0) + 1))
            self.class_names = [cats.get(i, "N/A") for i in self.category_ids]
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids) if cid in cats}

        self._images: dict[int, dict] = {}
        for im in data["images"]:
            missing = [k for k in ("id", "file_name", "height", "width") if k not in im]
            if missing:
                raise UserError(f"{where}: image {im.get('id', '?')} is missing {missing}")
            self._images[int(im["id"])] = {
                "file_name": str(im["file_name"]),
                "height": int(im["height"]),
                "width": int(im["width"]),
            }
        self.image_ids: list[int] = sorted(self._images)

        # Per image: list of (annotation id, label, iscrowd, segmentation).
        self._anns: dict[int, list[tuple[int, int, bool, Any]]] = {i: [] for i in self.image_ids}
        for a in data.get("annotations", []):
            self._add_annotation(a, where)

    def _add_annotation(self, a: dict, where: str) -> None:
        aid = a.get("id", "?")
        for key in ("image_id", "category_id", "segmentation"):
            if key not in a:
                raise UserError(f"{where}: annotation {aid} has no '{key}'")
        img = self._images.get(int(a["image_id"]))
        if img is None:
            raise UserError(f"{where}: annotation {aid} refers to unknown image id {a['image_id']}")
        label = self._label_of.get(int(a["category_id"]))
        if label is None:
            raise UserError(f"{where}: annotation {aid} has unknown category id {a['category_id']}")
        problem = _check_segmentation(a["segmentation"], img["height"], img["width"])
        if problem:
            raise UserError(f"{where}: annotation {aid} (image {a['image_id']}): {problem}")
        crowd = bool(a.get("iscrowd", 0))
        self._anns[int(a["image_id"])].append((aid, label, crowd, a["segmentation"]))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item `index` as recorded in the JSON (no decoding)."""
        info = self._images[self.image_ids[index]]
        return info["height"], info["width"]

    def file_name(self, index: int) -> str:
        return self._images[self.image_ids[index]]["file_name"]

    def num_annotations(self, index: int, *, crowd: bool = False) -> int:
        """Number of (crowd or non-crowd) annotations of item `index` in the JSON."""
        return sum(1 for a in self._anns[self.image_ids[index]] if a[2] == crowd)

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        """Decode the targets and crowd boxes of item `index` without reading the image."""
        h, w = self.image_size(index)
        rles: list[dict] = []
        labels: list[int] = []
        crowd_rles: list[dict] = []
        for _aid, label, crowd, seg in self._anns[self.image_ids[index]]:
            rle = decode_segmentation(seg, h, w)
            if crowd:
                crowd_rles.append(rle)
            else:
                rles.append(rle)
                labels.append(label)

        targets = targets_from_rles(rles, labels, h, w)

        crowd_boxes = torch.zeros((0, 4), dtype=torch.float32)
        if crowd_rles:
            areas = mask_utils.area(crowd_rles)
            xywh = mask_utils.toBbox(crowd_rles)[areas > 0]  # tight integer boxes of the RLEs
            crowd_boxes = torch.from_numpy(xywh).float()
            crowd_boxes[:, 2:] += crowd_boxes[:, :2]
        return targets, crowd_boxes

    def __getitem__(self, index: int) -> Sample:
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (image id {image_id})")
        image = read_image(path, policy=STORED_PIXELS)
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise UserError(
                f"image {path} (image id {image_id}) is {image.shape[-2]}x{image.shape[-1]} but the "
                f"annotations say {info['height']}x{info['width']}"
            )
        targets, crowd_boxes = self.load_targets(index)
        return Sample(image, targets, image_id, info["file_name"], crowd_boxes=crowd_boxes)

    def __repr__(self) -> str:
        return f"CocoDataset({self.annotation_file}, {len(self)} images, {self.num_classes} classes)"
