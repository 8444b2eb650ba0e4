"""labelme datasets: a folder of labelme JSON files, one per image.

Layout: `DIR/*.json` (sub-folders are not searched), each naming its image by `imagePath`, relative
to the JSON file (Windows separators are accepted); when that file does not exist, the image stored
in the JSON itself (`imageData`, base64 of the image file) is decoded instead. `imageHeight` and
`imageWidth` give the image size without decoding it (the decoded image must have that size).

Shapes (`shapes`: `label`, `points`, `shape_type`, `group_id`; `flags` and `description` are not
used):
- polygon (and oriented_rectangle): the points in order;
- rectangle: two opposite corners (with any other number of points: read as a polygon);
- circle: the centre and a point on the circle, read as a 64-gon;
- mask: `mask`, a base64 PNG of the box between the two corner `points` (labelme's layout: rows y1
  to y2 and columns x1 to x2 of the integer corners, both inclusive), nonzero pixels in the mask;
- point, points, line, linestrip: not regions, so not instances: skipped (and recorded).
Shapes with the same `group_id` and label form one instance (their union), as labelme's own
labelme2coco does; a shape without a group_id is an instance of its own.

Classes: the labels sorted by name are labels 1..K, unless DIR holds `labels.txt` or `classes.txt`
(one name a line, as labelme's `--labels` file; `__ignore__` and `_background_` lines are skipped),
which fixes the order (a label missing from it is then an error).

Bad input: a file that is not labelme JSON, a missing or mistyped key, a non-finite coordinate or an
undecodable mask raises `UserError` naming the file and the shape index. Repairs are applied the
same way every time and recorded in `problems` (a `maskrcnn.data.problems.ProblemLog`; file: the
JSON file, image id: the item index, annotation id: the shape index): a polygon of fewer than 3
points, a shape without area or without any part inside the image is dropped; a shape partly
outside the image is clipped to it. A JSON file without instances is kept as a background image.
Item order: the JSON files sorted by name; image_id = position.

`maskrcnn.data.writing.write_labelme` writes any dataset as such a folder (`maskrcnn convert-dataset
--to labelme`).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.coco import read_json, targets_from_rles
from maskrcnn.data.outlines import checked_polygon, instance_rle
from maskrcnn.data.problems import ProblemLog
from maskrcnn.errors import UserError
from maskrcnn.files import (
    STORED_PIXELS,
    ImageReadError,
    NamedBytes,
    pixels_to_tensor,
    read_image,
    read_pixels,
)
from maskrcnn.structures import Sample, Targets

__all__ = ["CLASS_FILES", "LabelmeDataset"]

CLASS_FILES = ("labels.txt", "classes.txt")
MAX_SIDE = 65_535  # the largest image side read (JPEG's limit)
_SKIPPED_NAMES = ("__ignore__", "_background_")
_NOT_REGIONS = ("point", "points", "line", "linestrip")
_POLYGONS = ("polygon", "oriented_rectangle")


@dataclass
class _Instance:
    label: str
    polygons: list[np.ndarray] = field(default_factory=list)  # (N, 2), inside the image
    patches: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # (x0, y0, bool mask)


@dataclass
class _Item:
    json_path: Path
    image_path: Path  # the file imagePath names (it may not exist)
    file_name: str
    has_data: bool  # whether the JSON holds imageData
    height: int
    width: int
    instances: list[_Instance]


def _image_side(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Real) or not float(value).is_integer():
        raise UserError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    if not 0 < value <= MAX_SIDE:
        raise UserError(f"{where}: '{key}' must be a positive integer up to {MAX_SIDE}, got {value!r}")
    return int(value)


def _points(shape: dict, where: str) -> np.ndarray:
    """The shape's points as an (N, 2) float array (finite numbers)."""
    points = shape.get("points")
    ok = isinstance(points, list) and all(
        isinstance(p, (list, tuple))
        and len(p) == 2
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in p)
        for p in points
    )
    if not ok:
        raise UserError(f"{where}: 'points' must be a list of [x, y] number pairs")
    pts = np.array(points, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise UserError(f"{where}: points must be finite numbers")
    return pts


def _circle(pts: np.ndarray, where: str, n: int = 64) -> np.ndarray:
    if len(pts) != 2:
        raise UserError(f"{where}: a circle needs 2 points (centre, a point on the circle), has {len(pts)}")
    (cx, cy), (px, py) = pts
    r = math.hypot(px - cx, py - cy)
    angles = 2 * math.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def _rectangle(pts: np.ndarray) -> np.ndarray:
    if len(pts) != 2:
        return pts
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def _mask_patch(shape: dict, pts: np.ndarray, height: int, width: int, where: str, report) -> tuple | None:
    """(x0, y0, bool patch) of a mask shape, clipped to the image, or None when dropped."""
    if len(pts) != 2:
        raise UserError(f"{where}: a mask shape needs 2 corner points, has {len(pts)}")
    if not isinstance(shape.get("mask"), str):
        raise UserError(f"{where}: a mask shape needs 'mask', a base64 PNG")
    if np.abs(pts).max() > 1e9:
        raise UserError(f"{where}: mask corners {pts.tolist()} are not pixel coordinates")
    (x1, y1), (x2, y2) = pts.astype(np.int64).tolist()
    try:
        data = base64.b64decode(shape["mask"], validate=True)
    except (binascii.Error, ValueError) as e:
        raise UserError(f"{where}: 'mask' is not a base64 PNG image ({e})") from None
    try:
        patch = read_pixels(NamedBytes(data, f"{where}: 'mask'"), policy=STORED_PIXELS).any(axis=2)
    except ImageReadError as e:
        raise UserError(str(e)) from None
    if patch.shape != (y2 - y1 + 1, x2 - x1 + 1):
        raise UserError(
            f"{where}: mask is {patch.shape[0]}x{patch.shape[1]} but its corners {pts.tolist()} span "
            f"{y2 - y1 + 1}x{x2 - x1 + 1} pixels"
        )
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
    if cx1 > cx2 or cy1 > cy2 or not patch[cy1 - y1 : cy2 - y1 + 1, cx1 - x1 : cx2 - x1 + 1].any():
        kind = "box_entirely_outside_image" if (cx1 > cx2 or cy1 > cy2) else "zero_area"
        report(kind, "mask has no pixel inside the image" if kind != "zero_area" else "mask has no pixel")
        return None
    if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
        report("box_outside_image", f"mask partly outside the {width}x{height} image, clipped to it")
    return cx1, cy1, patch[cy1 - y1 : cy2 - y1 + 1, cx1 - x1 : cx2 - x1 + 1]


def _class_order(directory: Path) -> list[str] | None:
    """The class names of DIR/labels.txt or DIR/classes.txt, or None without such a file."""
    for name in CLASS_FILES:
        path = directory / name
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise UserError(f"class list {path} is not UTF-8 text: {e}") from None
            names: list[str] = []
            for n, line in enumerate(lines, 1):
                label = line.strip()
                if not label or label in _SKIPPED_NAMES:
                    continue
                if label in names:
                    raise UserError(f"class list {path} line {n}: class {label!r} is listed twice")
                names.append(label)
            return names
    return None


class LabelmeDataset(Dataset):
    """The labelme JSON files of a folder (see the module docstring)."""

    def __init__(self, directory: Union[str, Path], *, problems: ProblemLog | None = None) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"labelme directory not found: {self.directory}")
        self.problems = problems if problems is not None else ProblemLog()
        files = sorted(p for p in self.directory.glob("*.json") if p.is_file())
        if not files:
            raise UserError(f"{self.directory}: no labelme .json files found")
        order = _class_order(self.directory)
        self._labels: set[str] = set()  # of every region shape, dropped ones too
        self._items = [self._parse(path, index, order) for index, path in enumerate(files)]
        self.class_names: list[str] = order if order is not None else sorted(self._labels)
        self.category_ids: list[int] = list(range(1, len(self.class_names) + 1))
        self.image_ids: list[int] = list(range(len(self._items)))
        self._label_of = {name: i + 1 for i, name in enumerate(self.class_names)}

    def _parse(self, path: Path, index: int, order: list[str] | None) -> _Item:
        where = str(path)
        data = read_json(path, "labelme")
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise UserError(f"{where}: not a labelme file (expected an object with a 'shapes' list)")
        height = _image_side(data.get("imageHeight"), where, "imageHeight")
        width = _image_side(data.get("imageWidth"), where, "imageWidth")
        image_path, image_data = data.get("imagePath"), data.get("imageData")
        if not isinstance(image_path, str) or not image_path.strip():
            raise UserError(f"{where}: 'imagePath' must name the image file, got {image_path!r}")
        if image_data is not None and not isinstance(image_data, str):
            raise UserError(f"{where}: 'imageData' must be base64 text or null")
        relative = Path(os.path.normpath(image_path.replace("\\", "/")))
        full = path.parent / relative
        file_name = os.path.normpath(os.path.relpath(full, self.directory))

        groups: dict[tuple[str, int], _Instance] = {}
        found: list[_Instance] = []
        for j, shape in enumerate(data["shapes"]):
            instance = self._shape(shape, j, path, index, height, width, order)
            if instance is None:
                continue
            group_id = shape.get("group_id")
            if group_id is None:
                found.append(instance)
                continue
            key = (instance.label, group_id)
            if key not in groups:
                groups[key] = _Instance(instance.label)
                found.append(groups[key])
            groups[key].polygons += instance.polygons
            groups[key].patches += instance.patches
        kept = [inst for inst in found if inst.polygons or inst.patches]
        if not kept:
            self.problems.add("image_without_annotations", path, image_id=index)
        return _Item(path, full, file_name, bool(image_data), height, width, kept)

    def _shape(
        self, shape: Any, j: int, path: Path, index: int, height: int, width: int, order: list[str] | None
    ) -> _Instance | None:
        """The shape's instance part (None: not a region, or dropped)."""
        where = f"{path}: shape {j}"
        if not isinstance(shape, dict):
            raise UserError(f"{where}: a shape must be an object, got {type(shape).__name__}")
        label, kind = shape.get("label"), shape.get("shape_type") or "polygon"
        if not isinstance(label, str) or not label:
            raise UserError(f"{where}: 'label' must be a non-empty string, got {label!r}")
        if not isinstance(kind, str):
            raise UserError(f"{where}: 'shape_type' must be a string, got {kind!r}")
        group_id = shape.get("group_id")
        if group_id is not None and (isinstance(group_id, bool) or not isinstance(group_id, int)):
            raise UserError(f"{where}: 'group_id' must be an integer or null, got {group_id!r}")
        if order is not None and label not in order and kind not in _NOT_REGIONS:
            raise UserError(f"{where}: label {label!r} is not in the class list ({', '.join(order)})")

        def report(problem: str, detail: str) -> None:
            self.problems.add(
                problem, path, image_id=index, annotation_id=j, detail=f"shape {j} ({kind}): {detail}"
            )

        pts = _points(shape, where)
        if kind in _NOT_REGIONS:
            report("shape_not_a_region", "skipped")
            return None
        self._labels.add(label)
        if kind == "mask":
            patch = _mask_patch(shape, pts, height, width, where, report)
            return _Instance(label, patches=[patch]) if patch is not None else None
        if kind == "circle":
            pts = _circle(pts, where)
        elif kind == "rectangle":
            pts = _rectangle(pts)
        elif kind not in _POLYGONS:
            raise UserError(
                f"{where}: unknown shape_type {kind!r} (polygon, rectangle, circle, mask; "
                f"{', '.join(_NOT_REGIONS)} are skipped)"
            )
        polygon = checked_polygon(pts, width, height, where=where, report=report)
        return _Instance(label, polygons=[polygon]) if polygon is not None else None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._items)

    def file_name(self, index: int) -> str:
        return self._items[index].file_name

    def json_file(self, index: int) -> Path:
        """The labelme JSON file of item `index`."""
        return self._items[index].json_path

    def image_path(self, index: int) -> Path | None:
        """The image file of item `index`, or None when the image is only the JSON's imageData."""
        path = self._items[index].image_path
        return path if path.is_file() else None

    def num_annotations(self, index: int) -> int:
        """Number of instances of item `index` (after grouping, without the dropped shapes)."""
        return len(self._items[index].instances)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item `index`: imageHeight and imageWidth of its JSON (no decoding)."""
        item = self._items[index]
        return item.height, item.width

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        item = self._items[index]
        rles = [instance_rle(inst.polygons, inst.patches, item.height, item.width) for inst in item.instances]
        labels = [self._label_of[inst.label] for inst in item.instances]
        return targets_from_rles(rles, labels, item.height, item.width), torch.zeros(
            (0, 4), dtype=torch.float32
        )

    def check_item(self, index: int, log: ProblemLog) -> None:
        """`maskrcnn check-data`'s file checks of item `index` (see `maskrcnn.data.check`): its image
        (file, else imageData) missing, unreadable or not imageHeight x imageWidth; instances that
        cover no pixel."""
        from maskrcnn.data.check import check_image_file

        item = self._items[index]
        if not item.image_path.is_file() and not item.has_data:  # an annotation file without its image
            count = len(item.instances)
            detail = f"image file not found (its labelme file {item.json_path.name} has {count} instances)"
            log.add("missing_image", item.image_path, image_id=index, detail=detail)
        elif item.image_path.is_file():
            check_image_file(item.image_path, log=log, image_id=index, expected=(item.height, item.width))
        else:
            try:
                self[index]
            except UserError as e:
                log.add("unreadable_image", item.json_path, image_id=index, detail=str(e))
        for k, inst in enumerate(item.instances):
            if not mask_utils.area(instance_rle(inst.polygons, inst.patches, item.height, item.width)):
                detail = f"instance {k} ({inst.label}) covers no pixel"
                log.add("zero_area", item.json_path, image_id=index, detail=detail)

    def _image(self, index: int) -> torch.Tensor:
        item = self._items[index]
        if item.image_path.is_file():
            return read_image(item.image_path, policy=STORED_PIXELS)
        if not item.has_data:
            raise FileNotFoundError(
                f"image file not found: {item.image_path} (labelme file {item.json_path}, image id {index}; "
                "it has no imageData either)"
            )
        data = read_json(item.json_path, "labelme")
        text = data.get("imageData") if isinstance(data, dict) else None
        name = f"{item.json_path} imageData"
        try:
            raw = base64.b64decode(text if isinstance(text, str) else "", validate=True)
        except (binascii.Error, ValueError) as e:
            raise UserError(f"{name}: not base64 ({e})") from None
        try:
            return pixels_to_tensor(read_pixels(NamedBytes(raw, name), policy=STORED_PIXELS))
        except ImageReadError as e:
            raise UserError(f"{e} (image id {index})") from None

    def __getitem__(self, index: int) -> Sample:
        item = self._items[index]
        image = self._image(index)
        if tuple(image.shape[-2:]) != (item.height, item.width):
            raise UserError(
                f"{item.json_path}: the image is {image.shape[-2]}x{image.shape[-1]} but imageHeight x "
                f"imageWidth say {item.height}x{item.width} (image id {index})"
            )
        targets, crowd = self.load_targets(index)
        return Sample(image, targets, index, item.file_name, crowd_boxes=crowd)

    def __repr__(self) -> str:
        return f"LabelmeDataset({self.directory}, {len(self)} images, classes={self.class_names})"
