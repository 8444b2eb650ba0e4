"""Writing any dataset as a labelme folder (`write_labelme`) or a YOLO segmentation folder
(`write_yolo`): `maskrcnn convert-dataset --to labelme|yolo`.

Any `InstanceDataset` (see `maskrcnn.data.dataset`) is written into a new folder
(`maskrcnn.files.atomic_write_folder`: all of it or nothing). Per item:

- the image: the dataset's own file is copied byte for byte when it can be found (the dataset's
  `image_path(index)` when it has one, else its `image_dir` or `directory` joined with
  `file_name(index)`, as for `CocoDataset`, `ViaDataset` and `MaskFolderDataset`); otherwise
  (synthetic images, labelme images held only as `imageData`) the decoded image is written as PNG.
  Each image keeps its file's name; a file stem met twice gets the item index appended;
- the instances (`instances`): class and binary mask of every target with pixels, from
  `load_targets` (crowd regions and keypoints are not written: neither format holds them), written
  as the exact pixel outlines of the masks (`maskrcnn.data.outlines`), so that reading the folder
  back gives the same masks.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Union

import numpy as np
import yaml
from PIL import Image

from maskrcnn.data.labelme import CLASS_FILES
from maskrcnn.data.outlines import join_loops, mask_outlines, polygon_area
from maskrcnn.errors import UserError
from maskrcnn.files import atomic_write, atomic_write_folder, atomic_write_json, atomic_write_text

__all__ = ["image_source", "instances", "write_image", "write_labelme", "write_yolo"]


def image_source(dataset: Any, index: int) -> Path | None:
    """The image file of item `index` when the dataset keeps its images as files, else None."""
    method = getattr(dataset, "image_path", None)
    if callable(method):
        return method(index)
    for attr in ("image_dir", "directory"):
        root = getattr(dataset, attr, None)
        if root is not None:
            path = Path(root) / dataset.file_name(index)
            if path.is_file():
                return path
    return None


def write_image(dataset: Any, index: int, folder: Path, used: set[str]) -> str:
    """Write the image of item `index` into `folder` (see the module docstring) and return its file
    name there; `used` holds the file stems taken so far (lower-cased; a format's other files are
    named after the image's stem) and gets this one."""
    source = image_source(dataset, index)
    stem = Path(dataset.file_name(index)).stem or f"image_{index}"
    if stem.lower() in used:
        stem = f"{stem}_{index}"
    used.add(stem.lower())
    name = f"{stem}{source.suffix if source is not None else '.png'}"
    if source is not None:
        data = source.read_bytes()
    else:
        pixels = (dataset[index].image.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255)
        buffer = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()
    atomic_write(folder / name, lambda f: f.write(data))
    return name


def instances(dataset: Any, index: int) -> list[tuple[int, np.ndarray]]:
    """(0-based class index, (H, W) bool mask) of every instance of item `index` with pixels."""
    targets, _ = dataset.load_targets(index)
    masks = targets.masks.to("cpu").numpy().astype(bool)
    labels = targets.labels.tolist()
    return [(int(label) - 1, mask) for label, mask in zip(labels, masks) if mask.any()]


def _polygon_shape(label: str, loop: np.ndarray, group_id: int | None) -> dict:
    points = [[float(x), float(y)] for x, y in loop.tolist()]
    return {
        "label": label,
        "points": points,
        "group_id": group_id,
        "description": "",
        "shape_type": "polygon",
        "flags": {},
        "mask": None,
    }


def _mask_shape(label: str, mask: np.ndarray) -> dict:
    ys, xs = np.nonzero(mask)
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    buffer = io.BytesIO()
    Image.fromarray(mask[y1 : y2 + 1, x1 : x2 + 1].astype(np.uint8)).save(buffer, format="PNG")
    return {
        "label": label,
        "points": [[float(x1), float(y1)], [float(x2), float(y2)]],
        "group_id": None,
        "description": "",
        "shape_type": "mask",
        "flags": {},
        "mask": base64.b64encode(buffer.getvalue()).decode("ascii"),
    }


def write_labelme(dataset: Any, directory: Union[str, Path]) -> Path:
    """Write `dataset` as a new labelme folder `directory` (created whole; refused when it exists and
    is not empty): per item its image (see `maskrcnn.data.writing`) and `<image stem>.json`, and
    `labels.txt` with the class names in the dataset's order.

    An instance is a polygon shape (the pixel outline of its mask, exact), or several polygon shapes
    sharing a group_id when its mask has several parts; an instance with a hole is a mask shape.
    """
    names = list(dataset.class_names)
    with atomic_write_folder(directory) as folder:
        used: set[str] = set()
        for index in range(len(dataset)):
            image_name = write_image(dataset, index, folder, used)
            height, width = dataset.image_size(index)
            shapes, group = [], 0
            for label, mask in instances(dataset, index):
                loops = mask_outlines(mask)
                if any(polygon_area(loop) < 0 for loop in loops):  # a hole: polygons cannot hold it
                    shapes.append(_mask_shape(names[label], mask))
                    continue
                group_id = None
                if len(loops) > 1:
                    group += 1
                    group_id = group
                shapes += [_polygon_shape(names[label], loop, group_id) for loop in loops]
            record = {
                "version": "5.5.0",
                "flags": {},
                "shapes": shapes,
                "imagePath": image_name,
                "imageData": None,
                "imageHeight": int(height),
                "imageWidth": int(width),
            }
            atomic_write_json(folder / f"{Path(image_name).stem}.json", record, indent=1)
        atomic_write_text(folder / CLASS_FILES[0], "".join(f"{n}\n" for n in names))
    return Path(directory)


def write_yolo(dataset: Any, directory: Union[str, Path], *, split: str = "train") -> Path:
    """Write `dataset` as a new YOLO segmentation folder `directory` (created whole; refused when it
    exists and is not empty): `images/<split>/` (see `maskrcnn.data.writing`), `labels/<split>/`
    with one line per instance, and `data.yaml` (`<split>: images/<split>` and the class names).

    An instance's line is the pixel outline of its mask (exact); a mask of several parts or with
    holes is one polygon whose parts are joined by zero-width bridges (its even-odd fill is the mask).
    """
    if not split or "/" in split or split in (".", ".."):
        raise UserError(f"split {split!r} must be a plain folder name such as train or val")
    with atomic_write_folder(directory) as folder:
        images, labels = folder / "images" / split, folder / "labels" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        used: set[str] = set()
        for index in range(len(dataset)):
            name = write_image(dataset, index, images, used)
            h, w = dataset.image_size(index)
            lines = []
            for label, mask in instances(dataset, index):
                polygon = join_loops(mask_outlines(mask)) / np.array([w, h], dtype=np.float64)
                lines.append(" ".join([str(label), *(f"{v:.7f}" for v in polygon.ravel().tolist())]))
            atomic_write_text(labels / f"{Path(name).stem}.txt", "".join(f"{line}\n" for line in lines))
        names = {i: str(n) for i, n in enumerate(dataset.class_names)}
        text = yaml.safe_dump({split: f"images/{split}", "nc": len(names), "names": names}, sort_keys=False)
        atomic_write_text(folder / "data.yaml", text)
    return Path(directory)
