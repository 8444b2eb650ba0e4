"""VGG Image Annotator (VIA) polygon datasets.

Layout: `DIR/via_region_data.json` plus the images in DIR (as in Matterport's balloon example).
Both VIA 1.x (`regions` is a dict keyed "0", "1", ...) and VIA 2.x (`regions` is a list) exports
are read, as is a VIA 2 project file (`_via_img_metadata`). Shapes: polygon, rect, circle and
ellipse (the last two as 64-gons), rasterised with pycocotools like COCO polygons.

Classes: a region attribute `name` or `class` (string) names the region's class; regions without
one get `class_name`. Class names are sorted to give labels 1..K. Without any such attribute the
dataset has a single class `class_name`.

Checks (`maskrcnn.data.problems`): what is wrong is recorded in `problems` as the file is read (a
malformed entry or region, an image listed twice: fatal, and the dataset then refuses to serve
items; a polygon with fewer than 3 points, or a rect, circle or ellipse of zero size: dropped; an
image without regions: noted). The image size comes from the image file, so regions reaching past
it are clipped when rasterised (`maskrcnn.data.outlines.checked_polygon`, as for the other polygon
formats; those entirely outside or without area are dropped), and `check_item` records that along
with a missing or unreadable image and regions that cover no pixel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.check import check_image_file
from maskrcnn.data.coco import read_json, targets_from_rles
from maskrcnn.data.coco_records import coordinates, finite_number
from maskrcnn.data.outlines import checked_polygon, instance_rle
from maskrcnn.data.problems import ProblemLog
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image, read_image_size
from maskrcnn.structures import Sample, Targets

__all__ = ["ViaDataset"]

_CLASS_KEYS = ("name", "class")


def _region_class(region: dict) -> str | None:
    attrs = region.get("region_attributes")
    if not isinstance(attrs, dict):
        return None
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


def _numbers(shape: dict, keys: tuple[str, ...]) -> list[float]:
    """The shape's values of `keys` as floats; a KeyError or ValueError naming the one at fault."""
    values = []
    for key in keys:
        if key not in shape:
            raise KeyError(key)
        v = finite_number(shape[key])
        if v is None:
            raise ValueError(f"'{key}' must be a finite number, got {shape[key]!r:.40}")
        values.append(v)
    return values


def _region_polygon(shape: Any) -> tuple[list[float], str, str]:
    """(flat [x0, y0, x1, y1, ...] outline of a VIA shape, problem kind, detail); the kind is ""
    when the outline is fine, "malformed" (the outline is []) or "zero_area"."""
    if not isinstance(shape, dict):
        return [], "malformed", f"'shape_attributes' must be an object, got {type(shape).__name__}"
    kind = shape.get("name")
    try:
        if kind in ("polygon", "polyline"):
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
                return [], "malformed", "'all_points_x' and 'all_points_y' must be lists of the same length"
            coords, problem = coordinates([v for xy in zip(xs, ys) for v in xy])
            return coords.tolist(), ("malformed" if problem else ""), problem or ""
        if kind == "rect":
            x, y, w, h = _numbers(shape, ("x", "y", "width", "height"))
            outline = [x, y, x + w, y, x + w, y + h, x, y + h]
            return outline, ("" if w > 0 and h > 0 else "zero_area"), f"rect of size {w}x{h}"
        if kind in ("circle", "ellipse"):
            if kind == "circle":
                cx, cy, rx = _numbers(shape, ("cx", "cy", "r"))
                ry, theta = rx, 0.0
            else:
                cx, cy, rx, ry = _numbers(shape, ("cx", "cy", "rx", "ry"))
                (theta,) = _numbers({"theta": shape.get("theta", 0.0)}, ("theta",))
            outline = _ellipse(cx, cy, rx, ry, theta)
            return outline, ("" if rx > 0 and ry > 0 else "zero_area"), f"{kind} of radius {rx}x{ry}"
    except KeyError as e:
        return [], "malformed", f"{kind} shape is missing {e}"
    except ValueError as e:
        return [], "malformed", f"{kind} shape: {e}"
    return [], "malformed", f"unsupported region shape {kind!r:.40} (polygon, rect, circle, ellipse)"


def _rasterise(
    outline: list[float], h: int, w: int, *, where: str, report=lambda kind, detail: None
) -> dict | None:
    """The region's RLE after `checked_polygon` (clipped to the image; None when it is dropped:
    outside the image or without area), which calls `report(kind, detail)` for each repair."""
    points = np.asarray(outline, dtype=np.float64).reshape(-1, 2)
    checked = checked_polygon(points, w, h, where=where, report=report)
    return None if checked is None else instance_rle([checked], [], h, w)


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
        self.annotation_file = path
        data: Any = read_json(path, "VIA annotation")
        if isinstance(data, dict) and "_via_img_metadata" in data:
            data = data["_via_img_metadata"]
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of image entries, got {type(data).__name__}")

        self.problems = ProblemLog()
        self._files: list[str] = []
        self._regions: list[list[tuple[int, list[float], str]]] = []  # (region index, outline, class)
        names = set()
        position: dict[str, int] = {}  # file name -> its item index
        for key, entry in data.items():
            filename = entry.get("filename") if isinstance(entry, dict) else None
            if not isinstance(filename, str) or not filename:
                self.problems.add("malformed", path, detail=f"entry {key!r:.60} has no 'filename'")
                continue
            if filename in position:
                first = position[filename]
                detail = f"{filename!r} is listed twice (entries {first} and {len(self._files)})"
                self.problems.add("duplicate_image_id", path, image_id=first, detail=detail)
                continue
            regions = entry.get("regions") or []
            if isinstance(regions, dict):
                regions = list(regions.values())
            if not isinstance(regions, list):
                detail = f"{filename!r}: 'regions' must be a list or an object, got {type(regions).__name__}"
                self.problems.add("malformed", path, image_id=len(self._files), detail=detail)
                continue
            parsed = []
            for j, region in enumerate(regions):
                ids = {"image_id": len(self._files), "annotation_id": j}
                shape = region.get("shape_attributes") if isinstance(region, dict) else None
                outline, problem, detail = _region_polygon(shape)
                if problem:
                    self.problems.add(problem, path, **ids, detail=f"{filename!r} region {j}: {detail}")
                elif len(outline) < 6:
                    detail = f"{filename!r} region {j}: polygon of {len(outline) // 2} point(s)"
                    self.problems.add("polygon_too_few_points", path, **ids, detail=detail)
                else:
                    cls = _region_class(region) or class_name
                    names.add(cls)
                    parsed.append((j, outline, cls))
            if not regions:
                self.problems.add(
                    "image_without_annotations", path, image_id=len(self._files), detail=filename
                )
            position[filename] = len(self._files)
            self._files.append(filename)
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
        """Regions of item `index` kept when reading the file (before rasterising them)."""
        return len(self._regions[index])

    def _path(self, index: int) -> Path:
        path = self.directory / self._files[index]
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (image id {index})")
        return path

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item `index`, read from the image header."""
        if index not in self._sizes:
            self._sizes[index] = read_image_size(self._path(index))
        return self._sizes[index]

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        """Rasterised targets of item `index` (regions clipped to the image; those outside it or
        with an empty mask are dropped)."""
        self.problems.raise_if_fatal()
        h, w = self.image_size(index)
        rles, labels = [], []
        for j, outline, cls in self._regions[index]:
            rle = _rasterise(
                outline, h, w, where=f"{self.annotation_file}: {self._files[index]!r} region {j}"
            )
            if rle is not None:
                rles.append(rle)
                labels.append(self._label_of[cls])
        return targets_from_rles(rles, labels, h, w), torch.zeros((0, 4), dtype=torch.float32)

    def check_item(self, index: int, log: ProblemLog) -> None:
        """Record item `index`'s image file problems and regions reaching past the image (clipped),
        lying outside it or covering no pixel (dropped)."""
        size = check_image_file(self.directory / self._files[index], log=log, image_id=index)
        if size is None:
            return
        h, w = size
        for j, outline, _ in self._regions[index]:
            ids = {"image_id": index, "annotation_id": j}
            where = f"{self._files[index]!r} region {j}"

            def report(kind: str, detail: str, ids: dict = ids, where: str = where) -> None:
                log.add(kind, self.annotation_file, **ids, detail=f"{where}: {detail}")

            rle = _rasterise(outline, h, w, where=f"{self.annotation_file}: {where}", report=report)
            if rle is not None and mask_utils.area(rle) == 0:
                report("zero_area", "covers no pixel")

    def __getitem__(self, index: int) -> Sample:
        self.problems.raise_if_fatal()
        image = read_image(self._path(index), policy=STORED_PIXELS)
        self._sizes[index] = (image.shape[1], image.shape[2])
        targets, crowd = self.load_targets(index)
        return Sample(image, targets, index, self._files[index], crowd_boxes=crowd)

    def __repr__(self) -> str:
        return f"ViaDataset({self.directory}, {len(self)} images, classes={self.class_names})"
