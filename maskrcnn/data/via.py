"""VGG Image Annotator (VIA) polygon datasets.

Layout: `DIR/via_region_data.json` plus the images in DIR (as in Matterport's balloon example).
Both VIA 1.x (`regions` is a dict keyed "0", "1", ...) and VIA 2.x (`regions` is a list) exports
are read, as is a VIA 2 project file (`_via_img_metadata`). Shapes: polygon, rect, circle and
ellipse (the last two as 64-gons), rasterised with pycocotools like COCO polygons.

Classes: a region attribute `name` or `class` (string) names the region's class; regions without
one get `class_name`. Class names are sorted to give labels 1..K. Without any such attribute the
dataset has a single class `class_name`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.coco import targets_from_rles
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image
from maskrcnn.structures import Sample, Targets

__all__ = ["ViaDataset"]

_CLASS_KEYS = ("name", "class")


def _region_class(region: dict) -> str | None:
    attrs = region.get("region_attributes") or {}
    for key in attrs:
        if key.lower() in _CLASS_KEYS and isinstance(attrs[key], str) and attrs[key].strip():
            return attrs[key].strip()
    return None


def _ellipse(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0, n: int = 64) -> list[float]:
    pts: list[float] = []
    c, s = math.cos(theta), math.sin(theta)
    for k in range(n):
        a = 2 * math.pi * k / n
        x, y = rx * math.cos(a), ry * math.sin(a)
        pts += [cx + c * x - s * y, cy + s * x + c * y]
    return pts


def _region_polygon(shape: dict, where: str) -> list[float]:
    """Flat [x0, y0, x1, y1, ...] outline of a VIA shape."""
    kind = shape.get("name")
    try:
        if kind in ("polygon", "polyline"):
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            if len(xs) != len(ys):
                raise UserError(f"{where}: polygon has {len(xs)} x but {len(ys)} y coordinates")
            return [float(v) for xy in zip(xs, ys) for v in xy]
        if kind == "rect":
            x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
            return [x, y, x + w, y, x + w, y + h, x, y + h]
        if kind == "circle":
            return _ellipse(float(shape["cx"]), float(shape["cy"]), float(shape["r"]), float(shape["r"]))
        if kind == "ellipse":
            rx, ry = float(shape["rx"]), float(shape["ry"])
            return _ellipse(float(shape["cx"]), float(shape["cy"]), rx, ry, float(shape.get("theta", 0.0)))
    except KeyError as e:
        raise UserError(f"{where}: {kind} shape is missing {e}") from None
    raise UserError(f"{where}: unsupported region shape {kind!r} (polygon, rect, circle, ellipse)")


class ViaDataset(Dataset):
    """Images of a directory annotated with VIA polygons; image_id = position in the JSON."""

    def __init__(
        self,
        directory: Union[str, Path],
        *,
        class_name: str = "object",
        annotation_file: str = "via_region_data.json",
    ) -> None:
        self.directory = Path(directory)
        path = self.directory / annotation_file
        if not path.is_file():
            raise FileNotFoundError(f"VIA annotation file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                data: Any = json.load(f)
        except json.JSONDecodeError as e:
            raise UserError(f"VIA file {path} is not valid JSON: {e}") from e
        if isinstance(data, dict) and "_via_img_metadata" in data:
            data = data["_via_img_metadata"]
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of image entries, got {type(data).__name__}")

        self._files: list[str] = []
        self._regions: list[list[tuple[list[float], str]]] = []
        names = set()
        for key, entry in data.items():
            if not isinstance(entry, dict) or "filename" not in entry:
                raise UserError(f"{path}: entry {key!r} has no 'filename'")
            regions = entry.get("regions") or []
            if isinstance(regions, dict):
                regions = list(regions.values())
            parsed = []
            for j, region in enumerate(regions):
                where = f"{path}: image {entry['filename']!r} region {j}"
                if not isinstance(region, dict) or "shape_attributes" not in region:
                    raise UserError(f"{where}: region has no 'shape_attributes'")
                cls = _region_class(region) or class_name
                names.add(cls)
                parsed.append((_region_polygon(region["shape_attributes"], where), cls))
            self._files.append(str(entry["filename"]))
            self._regions.append(parsed)
        self.class_names: list[str] = sorted(names) if names else [class_name]
        self.category_ids: list[int] = list(range(1, len(self.class_names) + 1))
        self.image_ids: list[int] = list(range(len(self._files)))
        self._label_of = {n: i + 1 for i, n in enumerate(self.class_names)}
        self._sizes: dict[int, tuple[int, int]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._files)

    def file_name(self, index: int) -> str:
        return self._files[index]

    def num_annotations(self, index: int) -> int:
        return len(self._regions[index])

    def _path(self, index: int) -> Path:
        path = self.directory / self._files[index]
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (image id {index})")
        return path

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item `index`, read from the image header."""
        if index not in self._sizes:
            with Image.open(self._path(index)) as im:
                self._sizes[index] = (im.height, im.width)
        return self._sizes[index]

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        """Rasterised targets of item `index` (regions with an empty mask are dropped)."""
        h, w = self.image_size(index)
        rles, labels = [], []
        for poly, cls in self._regions[index]:
            if len(poly) < 6:
                continue
            rles.append(mask_utils.merge(mask_utils.frPyObjects([poly], h, w)))
            labels.append(self._label_of[cls])
        return targets_from_rles(rles, labels, h, w), torch.zeros((0, 4), dtype=torch.float32)

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self._path(index), policy=STORED_PIXELS)
        self._sizes[index] = (image.shape[1], image.shape[2])
        targets, crowd = self.load_targets(index)
        return Sample(image, targets, index, self._files[index], crowd_boxes=crowd)

    def __repr__(self) -> str:
        return f"ViaDataset({self.directory}, {len(self)} images, classes={self.class_names})"
