"""CVAT for images 1.1 XML: reading (`CvatDataset`, specs `cvat:DIR` and `cvat:ANNOTATIONS.xml:IMAGE_DIR`)
and writing (`write_cvat`: `maskrcnn convert-dataset --to cvat`, `maskrcnn predict --to cvat`).

Layout of `cvat:DIR`: CVAT's "CVAT for images 1.1" export, unzipped: `DIR/annotations.xml` and the
images in `DIR/images/` (or beside the XML). The XML:

    <annotations><version>1.1</version>
      <meta><task><labels><label><name>cat</name>...</label></labels></task></meta>
      <image id="0" name="a.jpg" width="640" height="480">
        <polygon label="cat" points="x1,y1;x2,y2;..." group_id="1" .../>
        <box label="cat" xtl=".." ytl=".." xbr=".." ybr=".." rotation="0" .../>
        <ellipse label="cat" cx=".." cy=".." rx=".." ry=".." rotation="0" .../>
        <mask label="cat" rle="n0, n1, ..." left="x0" top="y0" width="w" height="h" .../>
      </image>
    </annotations>

Regions: polygon (points in order), box (rotated by `rotation` degrees clockwise about its centre),
ellipse (a 64-gon), mask (`rle`: run lengths over its w x h box, row by row, starting with a run of
background; `left`, `top`: the box's first column and row). polyline, points, skeleton, cuboid and
tag are not regions: skipped (recorded). Shapes sharing a `group_id` (non-zero) and label are one
instance (their union), as for labelme. Coordinates are continuous pixel coordinates (pixel (r, c)
is [c, c+1] x [r, r+1]), as COCO's.

Classes: the labels of `meta` in their order are labels 1..K (a shape's label missing from them is
an error); without labels in `meta`, the shapes' labels sorted by name. Item order: the `image`
elements in file order; image_id = position. Bad input (not XML, a missing attribute, a number that
is not one, a malformed RLE) raises `UserError` naming the file, the image and the shape; repairs
(clipping, dropped empty polygons) are recorded in `problems` as in the other formats.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.coco import targets_from_rles
from maskrcnn.data.outlines import checked_polygon, instance_rle, mask_outlines, polygon_area
from maskrcnn.data.problems import ProblemLog
from maskrcnn.data.writing import instances, write_image
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, atomic_write, atomic_write_folder, read_image
from maskrcnn.structures import Sample, Targets

__all__ = ["CvatDataset", "write_cvat"]

ANNOTATIONS = "annotations.xml"
_NOT_REGIONS = ("polyline", "points", "skeleton", "cuboid", "tag")
_REGIONS = ("polygon", "box", "ellipse", "mask")


def _number(element: ET.Element, key: str, where: str) -> float:
    text = element.get(key)
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(f"{where}: attribute {key!r} must be a finite number, got {text!r}")
    return value


def _rotated(pts: np.ndarray, degrees: float) -> np.ndarray:
    """`pts` turned by `degrees` clockwise on screen (y down) about their centre."""
    if not degrees:
        return pts
    c = (pts.min(0) + pts.max(0)) / 2
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return (pts - c) @ rot.T + c


def _mask_patch(shape: ET.Element, where: str, height: int, width: int, report) -> tuple | None:
    """(x0, y0, bool patch) of a mask element, clipped to the image, or None when it has no pixel."""
    x0, y0 = int(_number(shape, "left", where)), int(_number(shape, "top", where))
    w, h = int(_number(shape, "width", where)), int(_number(shape, "height", where))
    try:
        runs = [int(v) for v in (shape.get("rle") or "").replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UserError(f"{where}: 'rle' must be comma-separated run lengths") from None
    if w < 1 or h < 1 or any(r < 0 for r in runs) or sum(runs) != w * h:
        raise UserError(f"{where}: 'rle' runs add up to {sum(runs)}, not width x height = {w}x{h}")
    flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    patch = flat.reshape(h, w)
    cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if cx1 >= cx2 or cy1 >= cy2 or not patch[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0].any():
        report("zero_area", "mask has no pixel inside the image")
        return None
    if (cx1, cy1, cx2, cy2) != (x0, y0, x0 + w, y0 + h):
        report("box_outside_image", f"mask partly outside the {width}x{height} image, clipped to it")
    return cx1, cy1, patch[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]


def _polygon_points(shape: ET.Element, where: str) -> np.ndarray:
    tag = shape.tag
    if tag == "polygon":
        try:
            pairs = [p.split(",") for p in (shape.get("points") or "").strip().split(";") if p]
            pts = np.array([[float(x), float(y)] for x, y in pairs], dtype=np.float64).reshape(-1, 2)
        except ValueError:
            raise UserError(f"{where}: 'points' must be 'x1,y1;x2,y2;...' numbers") from None
        if not np.isfinite(pts).all():
            raise UserError(f"{where}: points must be finite numbers")
        return pts
    if tag == "box":
        x1, y1, x2, y2 = (_number(shape, k, where) for k in ("xtl", "ytl", "xbr", "ybr"))
        pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
        return _rotated(pts, float(shape.get("rotation") or 0.0))
    cx, cy, rx, ry = (_number(shape, k, where) for k in ("cx", "cy", "rx", "ry"))
    angles = 2 * math.pi * np.arange(64) / 64
    pts = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)
    return _rotated(pts, float(shape.get("rotation") or 0.0))


class CvatDataset(Dataset):
    """The images of a CVAT for images 1.1 XML file (see the module docstring)."""

    def __init__(
        self,
        annotations: Union[str, Path],
        image_dir: Union[str, Path, None] = None,
        *,
        problems: ProblemLog | None = None,
    ) -> None:
        path = Path(annotations)
        if path.is_dir():
            path = path / ANNOTATIONS
        if not path.is_file():
            raise FileNotFoundError(f"CVAT annotation file not found: {path}")
        self.path = path
        if image_dir is None:
            image_dir = path.parent / "images" if (path.parent / "images").is_dir() else path.parent
        self.image_dir = Path(image_dir)
        self.problems = problems if problems is not None else ProblemLog()
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            raise UserError(f"CVAT annotation file {path} is not valid XML: {e}") from None
        if root.tag != "annotations":
            raise UserError(
                f"{path}: not a CVAT XML file (the root element is <{root.tag}>, not <annotations>)"
            )
        order = [(n.text or "").strip() for n in root.findall("./meta//labels/label/name")]
        self._labels: set[str] = set()
        self._items = [self._parse(image, k, order) for k, image in enumerate(root.findall("image"))]
        if not self._items:
            raise UserError(f"{path}: no <image> elements")
        self.class_names: list[str] = order if order else sorted(self._labels)
        self.category_ids: list[int] = list(range(1, len(self.class_names) + 1))
        self.image_ids: list[int] = list(range(len(self._items)))
        self._label_of = {name: i + 1 for i, name in enumerate(self.class_names)}

    def _parse(self, image: ET.Element, index: int, order: list[str]) -> tuple:
        name = image.get("name")
        if not name:
            raise UserError(f"{self.path}: image element {index} has no 'name'")
        where = f"{self.path}: image {name!r}"
        width, height = int(_number(image, "width", where)), int(_number(image, "height", where))
        if width < 1 or height < 1:
            raise UserError(f"{where}: width and height must be positive, got {width}x{height}")
        groups: dict[tuple[str, str], list] = {}
        found: list[list] = []  # [label, polygons, patches]
        for j, shape in enumerate(image):
            here = f"{where}, shape {j} <{shape.tag}>"

            def report(kind: str, detail: str, j: int = j, tag: str = shape.tag) -> None:
                self.problems.add(kind, self.path, image_id=index, annotation_id=j, detail=f"{tag}: {detail}")

            if shape.tag in _NOT_REGIONS:
                report("shape_not_a_region", "skipped")
                continue
            if shape.tag not in _REGIONS:
                raise UserError(
                    f"{here}: unknown shape (expected one of {', '.join(_REGIONS + _NOT_REGIONS)})"
                )
            label = shape.get("label")
            if not label:
                raise UserError(f"{here}: no 'label'")
            if order and label not in order:
                raise UserError(
                    f"{here}: label {label!r} is not among the file's labels ({', '.join(order)})"
                )
            self._labels.add(label)
            part: list = [label, [], []]
            if shape.tag == "mask":
                patch = _mask_patch(shape, here, height, width, report)
                part[2] += [patch] if patch is not None else []
            else:
                pts = _polygon_points(shape, here)
                polygon = checked_polygon(pts, width, height, where=here, report=report)
                part[1] += [polygon] if polygon is not None else []
            group = shape.get("group_id") or "0"
            if group == "0":
                found.append(part)
            elif (label, group) in groups:
                groups[label, group][1] += part[1]
                groups[label, group][2] += part[2]
            else:
                groups[label, group] = part
                found.append(part)
        kept = [p for p in found if p[1] or p[2]]
        if not kept:
            self.problems.add("image_without_annotations", self.path, image_id=index, detail=name)
        return name, height, width, kept

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._items)

    def file_name(self, index: int) -> str:
        return self._items[index][0]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._items[index][0]

    def num_annotations(self, index: int) -> int:
        return len(self._items[index][3])

    def image_size(self, index: int) -> tuple[int, int]:
        return self._items[index][1], self._items[index][2]

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        _, h, w, kept = self._items[index]
        rles = [instance_rle(polygons, patches, h, w) for _, polygons, patches in kept]
        labels = [self._label_of[label] for label, _, _ in kept]
        return targets_from_rles(rles, labels, h, w), torch.zeros((0, 4), dtype=torch.float32)

    def check_item(self, index: int, log: ProblemLog) -> None:
        """`maskrcnn check-data`'s file checks of item `index` (see `maskrcnn.data.check`): its image
        missing, unreadable or not of the XML's size; instances that cover no pixel."""
        from maskrcnn.data.check import check_image_file

        name, h, w, kept = self._items[index]
        check_image_file(self.image_path(index), log=log, image_id=index, expected=(h, w))
        for k, (label, polygons, patches) in enumerate(kept):
            if not mask_utils.area(instance_rle(polygons, patches, h, w)):
                log.add("zero_area", self.path, image_id=index, detail=f"{name}: instance {k} ({label})")

    def __getitem__(self, index: int) -> Sample:
        name, h, w, _ = self._items[index]
        image = read_image(self.image_path(index), policy=STORED_PIXELS)
        if tuple(image.shape[-2:]) != (h, w):
            raise UserError(
                f"{self.path}: image {name!r} is {image.shape[-2]}x{image.shape[-1]} but the XML says "
                f"{h}x{w} (height x width)"
            )
        targets, crowd = self.load_targets(index)
        return Sample(image, targets, index, name, crowd_boxes=crowd)

    def __repr__(self) -> str:
        return f"CvatDataset({self.path}, {len(self)} images, classes={self.class_names})"


# ---- writing -------------------------------------------------------------------------------------


def _mask_rle(mask: np.ndarray) -> tuple[int, int, int, int, str]:
    """(left, top, width, height, rle) of a mask's box, CVAT's run lengths starting with background."""
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    flat = mask[y1 : y2 + 1, x1 : x2 + 1].ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return x1, y1, x2 - x1 + 1, y2 - y1 + 1, ", ".join(str(r) for r in runs)


def write_cvat(dataset: Any, directory: Union[str, Path], *, source: str = "manual") -> Path:
    """Write `dataset` as a new CVAT for images 1.1 folder `directory` (created whole; refused when it
    exists and is not empty): `annotations.xml` and `images/` (see `maskrcnn.data.writing`), the
    layout of CVAT's export (zip it to import it into a CVAT task).

    An instance is a polygon (the exact pixel outline of its mask), or polygons sharing a group_id
    when its mask has several parts; an instance with a hole is a mask element. `source`: the
    shapes' `source` attribute ("manual", or "auto" for a model's predictions)."""
    names = [str(n) for n in dataset.class_names]
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    labels = ET.SubElement(ET.SubElement(ET.SubElement(root, "meta"), "task"), "labels")
    for name in names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
    with atomic_write_folder(directory) as folder:
        (folder / "images").mkdir()
        used: set[str] = set()
        group = 0
        for index in range(len(dataset)):
            image_name = write_image(dataset, index, folder / "images", used)
            h, w = dataset.image_size(index)
            image = ET.SubElement(root, "image", id=str(index), name=image_name, width=str(w), height=str(h))
            for label, mask in instances(dataset, index):
                common = {"label": names[label], "source": source, "occluded": "0", "z_order": "0"}
                loops = mask_outlines(mask)
                if any(polygon_area(loop) < 0 for loop in loops):  # a hole: polygons cannot hold it
                    x0, y0, mw, mh, rle = _mask_rle(mask)
                    size = {"left": str(x0), "top": str(y0), "width": str(mw), "height": str(mh)}
                    ET.SubElement(image, "mask", **common, rle=rle, **size)
                    continue
                if len(loops) > 1:
                    group += 1
                    common["group_id"] = str(group)
                for loop in loops:
                    points = ";".join(f"{x:.2f},{y:.2f}" for x, y in loop.tolist())
                    ET.SubElement(image, "polygon", **common, points=points)
        ET.indent(root)
        text = ET.tostring(root, encoding="unicode")
        data = f'<?xml version="1.0" encoding="utf-8"?>\n{text}\n'.encode()
        atomic_write(folder / ANNOTATIONS, lambda f: f.write(data))
    return Path(directory)
