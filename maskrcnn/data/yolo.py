"""YOLO segmentation datasets (the Ultralytics layout).

Layout:

    DIR/data.yaml                names: a list, or a mapping {class index: name}; optional path,
                                 train, val, test
    DIR/images/<split>/*.jpg     (or images/*.jpg directly: the layout without splits)
    DIR/labels/<split>/*.txt     one file per image, the image's path with its last `images` folder
                                 replaced by `labels` and its suffix by `.txt` (Ultralytics' rule)

Specs: `yolo:DIR` is every image under DIR/images (sub-folders included), or, without an `images`
folder, those of the data.yaml's train, val and test entries; `yolo:DIR:SPLIT` is the folder of the
data.yaml's entry SPLIT (e.g. `val: images/val`), else DIR/images/SPLIT. Entries are folders (or
lists of folders) relative to the dataset root: `path` when it names an existing folder (absolute,
or relative to DIR), else DIR.

A label line is `class x1 y1 x2 y2 ...`: a class index of `names` and a polygon in coordinates
normalised by the image width and height. A line of exactly 4 numbers after the class is a YOLO
detection box `class cx cy w h`: it is read as a box-shaped mask. An image without a label file (or
with an empty one) is a background image.

Classes: `names` in index order are labels 1..K; category id = class index + 1.

Bad input: a line that is not numbers, a class index not in `names`, an odd number of coordinates
or a non-finite one raises `UserError` naming the label file and the line number. Repairs are
applied the same way every time and recorded in `problems` (`maskrcnn.data.problems.ProblemLog`;
file: the label file, image id: the item index, annotation id: the line number): a polygon of fewer
than 3 points, without area, or entirely outside the image is dropped; one partly outside is
clipped to it.

Item order: image paths sorted; image_id = position. `maskrcnn.data.writing.write_yolo` writes any
dataset in this layout (`maskrcnn convert-dataset --to yolo`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import torch
import yaml
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from maskrcnn.data.coco import targets_from_rles
from maskrcnn.data.outlines import checked_polygon, instance_rle
from maskrcnn.data.problems import ProblemLog
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image, read_image_size
from maskrcnn.structures import Sample, Targets

__all__ = ["YoloDataset", "label_path"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPLIT_KEYS = ("train", "val", "test")


def label_path(image: Path) -> Path:
    """The label file of an image: its last `images` folder replaced by `labels`, suffix `.txt`."""
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"YOLO dataset file not found: {path} (it lists the class names)")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise UserError(f"{path} is not valid YAML: {e or type(e).__name__}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping with 'names', got {type(data).__name__}")
    return data


def _names(data: dict, where: Path) -> tuple[list[str], list[int]]:
    """(class names, class indices) of data.yaml's `names`, in index order."""
    names = data.get("names")
    if isinstance(names, list):
        pairs = list(enumerate(names))
    elif isinstance(names, dict):
        pairs = []
        for key, name in names.items():
            index = int(key) if isinstance(key, str) and key.strip().isdigit() else key
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise UserError(f"{where}: 'names' keys must be class indices 0, 1, ..., got {key!r}")
            pairs.append((index, name))
        pairs.sort()
    else:
        raise UserError(f"{where}: 'names' must be a list of class names or a mapping index: name")
    if not pairs:
        raise UserError(f"{where}: 'names' lists no class")
    for index, name in pairs:
        if isinstance(name, bool) or not isinstance(name, (str, int, float)) or not str(name).strip():
            raise UserError(f"{where}: class {index} has no usable name ({name!r})")
    if len({str(n) for _, n in pairs}) != len(pairs):
        raise UserError(f"{where}: 'names' lists a class name twice")
    return [str(n) for _, n in pairs], [i for i, _ in pairs]


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _entry_folders(data: dict, key: str, root: Path, where: Path) -> list[Path]:
    entry = data[key]
    entries = entry if isinstance(entry, list) else [entry]
    folders = []
    for e in entries:
        if not isinstance(e, str) or not e:
            raise UserError(f"{where}: '{key}' must be a folder or a list of folders, got {entry!r}")
        folder = root / e
        if not folder.is_dir():
            raise FileNotFoundError(f"{where}: '{key}' folder {folder} does not exist")
        folders.append(folder)
    return folders


def _polygon_of(values: list[float], where: str) -> np.ndarray:
    """Normalised (N, 2) polygon of a label line's coordinates (4 numbers: a cx cy w h box)."""
    if len(values) == 4:
        cx, cy, w, h = values
        if w < 0 or h < 0:
            raise UserError(f"{where}: box 'class cx cy w h' has a negative width or height")
        x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)
    if len(values) % 2:
        raise UserError(f"{where}: {len(values)} coordinates after the class; expected x y pairs")
    return np.array(values, dtype=np.float64).reshape(-1, 2)


class YoloDataset(Dataset):
    """The images and polygon labels of a YOLO segmentation folder (see the module docstring)."""

    def __init__(
        self, directory: Union[str, Path], *, split: str | None = None, problems: ProblemLog | None = None
    ) -> None:
        self.directory = Path(directory)
        self.split = split
        self.problems = problems if problems is not None else ProblemLog()
        yaml_path = self.directory / "data.yaml"
        data = _read_yaml(yaml_path)
        self.class_names, indices = _names(data, yaml_path)
        self.category_ids: list[int] = [i + 1 for i in indices]
        self._label_of = {index: k + 1 for k, index in enumerate(indices)}
        root = self.directory
        if isinstance(data.get("path"), str) and data["path"] and (self.directory / data["path"]).is_dir():
            root = self.directory / data["path"]
        self.root = root

        if split is not None and split in data:
            folders = _entry_folders(data, split, root, yaml_path)
        elif split is not None:
            folders = [root / "images" / split]
            if not folders[0].is_dir():
                found = [k for k in _SPLIT_KEYS if k in data]
                raise FileNotFoundError(
                    f"{yaml_path}: no split {split!r}: no '{split}' entry and no folder {folders[0]} "
                    f"(entries: {', '.join(found) or 'none'})"
                )
        elif (root / "images").is_dir():
            folders = [root / "images"]
        else:
            keys = [k for k in _SPLIT_KEYS if k in data]
            if not keys:
                raise UserError(
                    f"{self.directory}: no images/ folder and no train/val/test entry in {yaml_path}"
                )
            folders = [f for k in keys for f in _entry_folders(data, k, root, yaml_path)]
        self._images = sorted({p for folder in folders for p in _images_in(folder)})
        if not self._images:
            raise UserError(f"{self.directory}: no images in {', '.join(str(f) for f in folders)}")
        self.image_ids: list[int] = list(range(len(self._images)))
        self._labels = [self._parse(index, image) for index, image in enumerate(self._images)]
        self._sizes: dict[int, tuple[int, int]] = {}
        self._note_labels_without_images(folders)

    def _note_labels_without_images(self, folders: list[Path]) -> None:
        """Record the label files of the image folders' `labels/` twins that no image has (their
        instances are never used), with their number of instances (non-empty lines)."""
        used = {label_path(image) for image in self._images}
        for folder in folders:
            labels = label_path(folder / "image.jpg").parent
            if labels == folder or not labels.is_dir():
                continue  # labels beside the images: other .txt files there are not labels
            for path in sorted(p for p in labels.rglob("*.txt") if p.is_file() and p not in used):
                try:
                    count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
                except (OSError, UnicodeDecodeError):
                    count = 0
                detail = f"no image for this label file ({count} instance{'' if count == 1 else 's'})"
                self.problems.add("label_without_image", path, detail=detail)

    def _parse(self, index: int, image: Path) -> list[tuple[int, np.ndarray, int]]:
        """(label, normalised (N, 2) polygon clipped to [0, 1], line number) of each kept line."""
        path = label_path(image)
        if not path.is_file():
            self.problems.add("image_without_annotations", image, image_id=index, detail="no label file")
            return []
        try:
            lines = path.read_bytes().decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise UserError(f"label file {path} is not UTF-8 text: {e}") from None
        found = []
        for n, line in enumerate(lines, 1):
            tokens = line.split()
            if not tokens:
                continue
            where = f"{path} line {n}"
            try:
                values = [float(t) for t in tokens]
            except ValueError:
                raise UserError(
                    f"{where}: expected numbers 'class x1 y1 x2 y2 ...', got {line.strip()[:80]!r}"
                ) from None
            cls = values[0]
            if not math.isfinite(cls) or not cls.is_integer() or int(cls) not in self._label_of:
                raise UserError(
                    f"{where}: class {tokens[0]!r} is not a class index of data.yaml's names "
                    f"({len(self.class_names)} classes)"
                )

            def report(kind: str, detail: str, n: int = n) -> None:
                self.problems.add(kind, path, image_id=index, annotation_id=n, detail=f"line {n}: {detail}")

            polygon = _polygon_of(values[1:], where)
            kept = checked_polygon(polygon, 1, 1, where=where, report=report)
            if kept is not None:
                found.append((self._label_of[int(cls)], kept, n))
        if not found:
            self.problems.add("image_without_annotations", path, image_id=index)
        return found

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def file_name(self, index: int) -> str:
        return str(self._images[index].relative_to(self.root))

    def image_path(self, index: int) -> Path:
        return self._images[index]

    def num_annotations(self, index: int) -> int:
        """Number of instances of item `index` (label lines kept)."""
        return len(self._labels[index])

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of item `index`, read from the image header."""
        if index not in self._sizes:
            self._sizes[index] = read_image_size(self._images[index])
        return self._sizes[index]

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        h, w = self.image_size(index)
        scale = np.array([w, h], dtype=np.float64)
        rles = [instance_rle([polygon * scale], [], h, w) for _, polygon, _ in self._labels[index]]
        labels = [label for label, _, _ in self._labels[index]]
        return targets_from_rles(rles, labels, h, w), torch.zeros((0, 4), dtype=torch.float32)

    def check_item(self, index: int, log: ProblemLog) -> None:
        """`maskrcnn check-data`'s file checks of item `index` (see `maskrcnn.data.check`): its image
        missing or unreadable; label lines that cover no pixel at the image's size."""
        from maskrcnn.data.check import check_image_file

        size = check_image_file(self._images[index], log=log, image_id=index)
        if size is None:
            return
        h, w = size
        scale = np.array([w, h], dtype=np.float64)
        for _, polygon, line in self._labels[index]:
            if not mask_utils.area(instance_rle([polygon * scale], [], h, w)):
                path = label_path(self._images[index])
                log.add(
                    "zero_area",
                    path,
                    image_id=index,
                    annotation_id=line,
                    detail=f"line {line} covers no pixel",
                )

    def __getitem__(self, index: int) -> Sample:
        image = read_image(self._images[index], policy=STORED_PIXELS)
        self._sizes[index] = (image.shape[1], image.shape[2])
        targets, crowd = self.load_targets(index)
        return Sample(image, targets, index, self.file_name(index), crowd_boxes=crowd)

    def __repr__(self) -> str:
        split = f", split {self.split}" if self.split else ""
        return f"YoloDataset({self.directory}{split}, {len(self)} images, classes={self.class_names})"
