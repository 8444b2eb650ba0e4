"""COCO-format instance segmentation dataset.

Segmentations may be polygons, compressed RLE (string counts) or uncompressed RLE (list counts);
all are rasterised with `pycocotools.mask`. Category ids (sparse in COCO: 1..90 for 80 classes)
are mapped to contiguous labels 1..K in sorted id order. `iscrowd=1` regions are never targets;
their boxes are returned as `Sample.crowd_boxes`. Annotations whose mask is empty (zero area) are
dropped. Boxes are the tight boxes of the decoded masks, not the JSON `bbox` field.

The file is checked as it is read (`maskrcnn.data.coco_records`): what is wrong is recorded in the
dataset's `problems`; fixable problems are fixed (short polygons dropped, polygons clipped to the
image), and a dataset with a fatal problem raises `DataProblemsError` when an item is read.
`check_item(i, log)` adds the checks that need the files (`maskrcnn.data.check`).

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
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.check import check_image_file
from maskrcnn.data.coco_records import read_coco_records
from maskrcnn.data.problems import ProblemLog
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image
from maskrcnn.ops.boxes import masks_to_boxes
from maskrcnn.structures import Sample, Targets

__all__ = ["CocoDataset", "decode_rles", "decode_segmentation", "rle_areas"]

# pycocotools' `area` of a list of RLEs overflows a uint8 count from 256 RLEs on (2.0.11:
# "OverflowError: Python integer 256 out of bounds for uint8"); it is called on at most this many
# (and `decode_rles` decodes this many at a time).
_AREA_CHUNK = 255


def read_json(path: Path, what: str = "annotation") -> Any:
    """Parse a JSON file; a missing or malformed file raises an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} file {path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} file {path} is not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from e
    except RecursionError:
        raise UserError(f"{what} file {path} is not valid JSON: nested too deeply") from None


def targets_from_rles(
    rles: list, labels: list[int], h: int, w: int, keypoints: Optional[torch.Tensor] = None
) -> Targets:
    """Instance RLEs (empty ones dropped) and their labels (and keypoints (G, J, 3), when given)
    -> Targets with tight boxes."""
    keep = rle_areas(rles) > 0
    rles = [r for r, k in zip(rles, keep) if k]
    labels = [lab for lab, k in zip(labels, keep) if k]
    if keypoints is not None:
        keypoints = keypoints[torch.from_numpy(keep.astype(bool))]
    masks = decode_rles(rles, h, w)
    return Targets(masks_to_boxes(masks), torch.tensor(labels, dtype=torch.int64), masks, keypoints)


def rle_areas(rles: list[dict]) -> np.ndarray:
    """The pixel counts of a list of compressed RLEs, (G,) uint32 (G may be 0 or in the thousands:
    pycocotools' `area` is called on chunks of at most 255, the most it counts without overflow)."""
    parts = [mask_utils.area(rles[i : i + _AREA_CHUNK]) for i in range(0, len(rles), _AREA_CHUNK)]
    return np.concatenate(parts).astype(np.uint32) if parts else np.zeros(0, dtype=np.uint32)


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
    """Decode compressed RLEs into a (G, H, W) uint8 tensor (G may be 0), in chunks of RLEs, so that
    beside the result only one chunk's (H, W, chunk) planes are held (not a second copy of all G)."""
    out = torch.empty((len(rles), height, width), dtype=torch.uint8)
    with warnings.catch_warnings():
        # pycocotools' Cython decode triggers a NumPy 2 "copy keyword" DeprecationWarning.
        warnings.simplefilter("ignore", DeprecationWarning)
        for i in range(0, len(rles), _AREA_CHUNK):
            hwn = mask_utils.decode(rles[i : i + _AREA_CHUNK])
            out[i : i + hwn.shape[2]] = torch.from_numpy(hwn).permute(2, 0, 1)
    return out


class CocoDataset(Dataset):
    """Images and instance annotations of a COCO JSON file.

    Attributes: `image_ids` (sorted COCO image ids, item i ↔ image_ids[i]), `class_names` (K names,
    index i ↔ label i+1), `category_ids` (label i+1 ↔ category_ids[i]); keypoint metadata (see the
    module docstring): `num_keypoints` (J, 0 without keypoints), `keypoint_names` (J names, or [] when
    the categories name none) and `skeleton` (1-based index pairs); `problems`, what reading the file
    found wrong (see the module docstring).

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
        where = str(self.annotation_file)
        self.problems = ProblemLog()
        records = read_coco_records(read_json(self.annotation_file), where, self.problems)
        cats = records.names
        self.categories: list[dict] = records.categories  # the original category records, in id order
        if contiguous_labels:
            self.category_ids = sorted(cats)
            self.class_names = [cats[i] for i in self.category_ids]
        else:
            if cats and not 1 <= min(cats) <= max(cats) <= 10_000:
                raise UserError(f"{where}: contiguous_labels=False needs category ids in 1..10000")
            self.category_ids = list(range(1, max(cats, default=0) + 1))
            self.class_names = [cats.get(i, "N/A") for i in self.category_ids]
        self._label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids) if cid in cats}
        self.keypoint_names, self.skeleton = records.keypoint_names, records.skeleton
        # J: the names' count, else that of the first annotation with keypoints (0: no keypoints)
        self.num_keypoints = records.num_keypoints
        self._images = records.images
        self.image_ids: list[int] = sorted(self._images)
        self._anns = records.annotations

    def _usable(self) -> None:
        self.problems.raise_if_fatal()

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

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.file_name(index)

    def num_annotations(self, index: int, *, crowd: bool = False) -> int:
        """Number of (crowd or non-crowd) annotations of item `index` in the JSON (those kept)."""
        return sum(1 for a in self._anns[self.image_ids[index]] if a.crowd == crowd)

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        """Decode the targets and crowd boxes of item `index` without reading the image."""
        self._usable()
        h, w = self.image_size(index)
        rles: list[dict] = []
        labels: list[int] = []
        keypoints: list[list] = []
        crowd_rles: list[dict] = []
        for ann in self._anns[self.image_ids[index]]:
            rle = decode_segmentation(ann.segmentation, h, w)
            if ann.crowd:
                crowd_rles.append(rle)
            else:
                rles.append(rle)
                labels.append(self._label_of[ann.category_id])
                kps = ann.keypoints
                keypoints.append(kps if kps is not None else [0.0] * (3 * self.num_keypoints))

        kp_tensor = None
        if self.num_keypoints:
            kp_tensor = torch.tensor(keypoints, dtype=torch.float32).reshape(-1, self.num_keypoints, 3)
        targets = targets_from_rles(rles, labels, h, w, kp_tensor)

        crowd_boxes = torch.zeros((0, 4), dtype=torch.float32)
        if crowd_rles:
            areas = rle_areas(crowd_rles)
            xywh = mask_utils.toBbox(crowd_rles)[areas > 0]  # tight integer boxes of the RLEs
            crowd_boxes = torch.from_numpy(xywh).float()
            crowd_boxes[:, 2:] += crowd_boxes[:, :2]
        return targets, crowd_boxes

    def check_item(self, index: int, log: ProblemLog) -> None:
        """Record what is wrong with item `index` that the JSON alone does not show: its image file
        (missing, unreadable, another size than the JSON's) and annotations that cover no pixel
        (dropped by `load_targets`)."""
        image_id = self.image_ids[index]
        info = self._images[image_id]
        path = self.image_dir / info["file_name"]
        check_image_file(path, log=log, image_id=image_id, expected=(info["height"], info["width"]))
        anns = self._anns[image_id]
        if not anns:
            return
        areas = rle_areas([decode_segmentation(a.segmentation, info["height"], info["width"]) for a in anns])
        for ann, area in zip(anns, areas):
            if area == 0:
                what = "crowd region" if ann.crowd else "segmentation"
                detail = f"the {what} covers no pixel"
                log.add(
                    "zero_area", self.annotation_file, image_id=image_id, annotation_id=ann.id, detail=detail
                )

    def __getitem__(self, index: int) -> Sample:
        self._usable()
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
