"""COCO-format instance segmentation dataset.

Segmentations may be polygons, compressed RLE (string counts) or uncompressed RLE (list counts);
all are rasterised with `pycocotools.mask`. Category ids (sparse in COCO: 1..90 for 80 classes)
are mapped to contiguous labels 1..K in sorted id order. `iscrowd=1` regions are never targets;
their boxes are returned as `Sample.crowd_boxes`. Annotations whose mask is empty (zero area) are
dropped. Boxes are the tight boxes of the decoded masks, not the JSON `bbox` field.

Keypoints (COCO person-keypoint files): a category's `keypoints` (J names) and `skeleton` (1-based
index pairs) are the dataset's `keypoint_names` and `skeleton`; an annotation's `keypoints` (x, y, v
flattened, J times) become `Targets.keypoints` (G, J, 3) with COCO's visibility v (0 not labelled,
1 labelled but hidden, 2 visible). In a file with keypoints every instance has a row: annotations
without `keypoints` get J rows of zeros (v = 0). Coordinates are kept as written (no half-pixel
shift, as torchvision reads them) and are read as continuous image coordinates, like boxes.
"""

from __future__ import annotations

import json
import warnings
from numbers import Real
from pathlib import Path
from typing import Any, Optional, Union

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


def targets_from_rles(
    rles: list, labels: list[int], h: int, w: int, keypoints: Optional[torch.Tensor] = None
) -> Targets:
    """Instance RLEs (empty ones dropped) and their labels (and keypoints (G, J, 3), when given)
    -> Targets with tight boxes."""
    keep = mask_utils.area(rles) > 0 if rles else np.zeros(0, dtype=bool)
    rles = [r for r, k in zip(rles, keep) if k]
    labels = [lab for lab, k in zip(labels, keep) if k]
    if keypoints is not None:
        keypoints = keypoints[torch.from_numpy(keep.astype(bool))]
    masks = decode_rles(rles, h, w)
    return Targets(masks_to_boxes(masks), torch.tensor(labels, dtype=torch.int64), masks, keypoints)


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


def _category_keypoints(categories: list[dict], where: str) -> tuple[list[str], list[tuple[int, int]]]:
    """The keypoint names and skeleton of the categories that have `keypoints` (all must agree)."""
    found: Optional[tuple[list[str], list[tuple[int, int]]]] = None
    for c in categories:
        if "keypoints" not in c:
            continue
        names, skeleton = c["keypoints"], c.get("skeleton") or []
        what = f"{where}: category {c['id']} ({c['name']})"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{what}: 'keypoints' must be a list of keypoint names")
        pairs_ok = isinstance(skeleton, list) and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(v, int) and 1 <= v <= len(names) for v in p)
            for p in skeleton
        )
        if not pairs_ok:
            raise UserError(
                f"{what}: 'skeleton' must be pairs of 1-based keypoint indices in 1..{len(names)}"
            )
        meta = (list(names), [(int(a), int(b)) for a, b in skeleton])
        if found is not None and found[0] != meta[0]:
            raise UserError(f"{what}: keypoints {names} differ from another category's {found[0]}")
        found = found or meta
    return found or ([], [])


def _check_keypoints(kps: Any, num_keypoints: int) -> str | None:
    """Return what is wrong with an annotation's flat [x, y, v, ...] keypoints, or None if valid."""
    if not isinstance(kps, list) or not all(isinstance(v, Real) and not isinstance(v, bool) for v in kps):
        return "keypoints must be a flat list of numbers [x1, y1, v1, x2, y2, v2, ...]"
    if len(kps) != 3 * num_keypoints:
        return f"keypoints has {len(kps)} values, expected {3 * num_keypoints} (x, y, v for {num_keypoints})"
    if not all(np.isfinite(kps)):
        return "keypoint coordinates must be finite"
    bad = [v for v in kps[2::3] if v not in (0, 1, 2)]
    if bad:
        return f"keypoint visibility must be 0, 1 or 2, got {bad[0]!r}"
    return None


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
    index i ↔ label i+1), `category_ids` (label i+1 ↔ category_ids[i]); keypoint metadata (see the
    module docstring): `num_keypoints` (J, 0 without keypoints), `keypoint_names` (J names, or [] when
    the categories name none) and `skeleton` (1-based index pairs).

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
            keys = ("id", "name", "supercategory", "keypoints", "skeleton")
            self.categories.append({k: c[k] for k in keys if k in c})
        if contiguous_labels:
            self.category_ids = sorted(cats)
            self.class_names = [cats[i] for i in self.category_ids]
        else:
            if min(cats, default=1) < 1:
                raise UserError(f"{where}: contiguous_labels=False needs category ids >= 1")
            self.category_ids = list(range(1, max(cats, default=0) + 1))
            self.class_names = [cats.get(i, "N/A") for i in self.category_ids]
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids) if cid in cats}
        self.keypoint_names, self.skeleton = _category_keypoints(self.categories, where)
        # J: the names' count, else that of the first annotation with keypoints (0: no keypoints)
        self.num_keypoints = len(self.keypoint_names)

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

        # Per image: list of (annotation id, label, iscrowd, segmentation, flat keypoints or None).
        self._anns: dict[int, list[tuple[int, int, bool, Any, Optional[list]]]] = {
            i: [] for i in self.image_ids
        }
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
        kps = a.get("keypoints")
        if kps == [] and not self.num_keypoints:  # an empty list in a file without keypoints
            kps = None
        if kps is not None:
            if not self.num_keypoints and isinstance(kps, list) and len(kps) >= 3:
                self.num_keypoints = len(kps) // 3
            problem = _check_keypoints(kps, self.num_keypoints)
            if problem:
                raise UserError(f"{where}: annotation {aid} (image {a['image_id']}): {problem}")
        self._anns[int(a["image_id"])].append((aid, label, crowd, a["segmentation"], kps))

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
        keypoints: list[list] = []
        crowd_rles: list[dict] = []
        for _aid, label, crowd, seg, kps in self._anns[self.image_ids[index]]:
            rle = decode_segmentation(seg, h, w)
            if crowd:
                crowd_rles.append(rle)
            else:
                rles.append(rle)
                labels.append(label)
                keypoints.append(kps if kps is not None else [0.0] * (3 * self.num_keypoints))

        kp_tensor = None
        if self.num_keypoints:
            kp_tensor = torch.tensor(keypoints, dtype=torch.float32).reshape(-1, self.num_keypoints, 3)
        targets = targets_from_rles(rles, labels, h, w, kp_tensor)

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
