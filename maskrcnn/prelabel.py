"""Pre-labelling: a model's predictions written as an annotation set, to correct in an annotation
tool (`maskrcnn predict --to labelme|coco|yolo|cvat`).

The predictions of the image inputs (COCO result records, as `maskrcnn.predict` makes them) become
a `PredictionSet`, an `InstanceDataset` (`maskrcnn.data.dataset`) held in memory: one item per
image predicted (images without detections included, as background images), one instance per
detection (its mask; a box-shaped mask for a model without the mask branch), labels 1..K of the
model's classes. It is written by the writers of `maskrcnn convert-dataset`, so that each format
reads back through its own dataset spec with the same instances (the masks' exact pixel outlines):

    OUT/labelme/   labelme folder (`write_labelme`): the images, <stem>.json with polygons, labels.txt
                   -> labelme:OUT/labelme
    OUT/coco/      instances.json (`write_coco_json`: RLE masks, the model's category ids) and images/
                   -> coco:OUT/coco/instances.json:OUT/coco/images
    OUT/yolo/      YOLO segmentation folder (`write_yolo`): data.yaml, images/train/, labels/train/
                   -> yolo:OUT/yolo
    OUT/cvat/      CVAT for images 1.1 (`write_cvat`, shapes marked source="auto"): annotations.xml
                   and images/ (zip the folder to import it into a CVAT task) -> cvat:OUT/cvat

Image files are copied byte for byte, except those whose EXIF orientation turns them (predictions
are made on the image as displayed, annotations refer to the stored pixels): these are written as
PNG of the displayed image. Each image keeps its file name (a name met twice gets a number).
Class names that repeat (torchvision's 91-slot COCO label space) get their category id appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from pycocotools import mask as mask_utils

from .data.coco import targets_from_rles
from .data.cvat import write_cvat
from .data.specs import write_coco_json
from .data.writing import write_image, write_labelme, write_yolo
from .errors import UserError
from .files import atomic_write_folder
from .inputs import InputItem, load_image
from .predict_records import image_id_for
from .structures import Sample, Targets

__all__ = [
    "PRELABEL_FORMATS",
    "PredictionSet",
    "check_prelabel_folder",
    "check_prelabel_request",
    "write_prelabels",
    "write_report_prelabels",
]

PRELABEL_FORMATS = ("labelme", "coco", "yolo", "cvat")
_ORIENTATION = 0x0112  # the EXIF orientation tag


@dataclass(frozen=True)
class _Image:
    path: Path
    file_name: str  # unique in the set (case-insensitively by stem)
    image_id: int
    height: int  # as displayed (as predicted)
    width: int
    turned: bool  # EXIF orientation changes the pixels: write the decoded image, not the file
    rles: tuple  # one RLE per detection
    labels: tuple[int, ...]  # 1..K


def _displayed_size(path: Path) -> tuple[int, int, bool]:
    """(height, width) of the image as displayed, and whether its EXIF orientation turns it."""
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):
        h, w = w, h
    return h, w, orientation not in (None, 1)


def _record_rle(record: dict, h: int, w: int) -> dict:
    if "segmentation" in record:
        return record["segmentation"]
    return mask_utils.frPyObjects([record["bbox"]], h, w)[0]  # a model without masks: the box


class PredictionSet:
    """Predicted images as an `InstanceDataset` (see the module docstring); `image_path(i)` is the
    input file, or None when it must be written from its decoded pixels."""

    def __init__(self, images: Sequence[_Image], *, class_names: Sequence[str], category_ids: Sequence[int]):
        self._images = list(images)
        names, seen = [], set()
        for name, cid in zip(class_names, category_ids):
            unique = str(name) if str(name) not in seen else f"{name}_{cid}"
            seen.add(unique)
            names.append(unique)
        self.class_names: list[str] = names
        self.category_ids: list[int] = [int(c) for c in category_ids]
        ids = [im.image_id for im in self._images]
        self.image_ids: list[int] = ids if len(set(ids)) == len(ids) else list(range(1, len(ids) + 1))

    @classmethod
    def from_records(
        cls,
        items: Sequence[InputItem],
        records: Sequence[dict],
        *,
        failed: set[str],
        class_names: Sequence[str],
        category_ids: Sequence[int],
    ) -> PredictionSet:
        """The image inputs `items` (in the order prediction ran them; those named in `failed`
        were skipped) with their `records` (COCO results in the same order)."""
        label_of = {int(c): k + 1 for k, c in enumerate(category_ids)}
        images, used, at = [], set(), 0
        for index, item in enumerate(i for i in items if i.kind == "image"):
            if str(item.path) in failed:
                continue
            key = (image_id_for(item.path, index), item.name)
            mine = []
            while at < len(records) and (records[at]["image_id"], records[at]["file_name"]) == key:
                mine.append(records[at])
                at += 1
            h, w, turned = _displayed_size(item.path)
            stem, n = Path(item.name).stem or "image", 2
            base = stem
            while base.lower() in used:
                base, n = f"{stem}_{n}", n + 1
            used.add(base.lower())
            suffix = ".png" if turned else item.path.suffix
            rles = tuple(_record_rle(r, h, w) for r in mine)
            labels = tuple(label_of[int(r["category_id"])] for r in mine)
            images.append(_Image(item.path, base + suffix, key[0], h, w, turned, rles, labels))
        return cls(images, class_names=class_names, category_ids=category_ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._images)

    def file_name(self, index: int) -> str:
        return self._images[index].file_name

    def image_path(self, index: int) -> Path | None:
        image = self._images[index]
        return None if image.turned else image.path

    def image_size(self, index: int) -> tuple[int, int]:
        return self._images[index].height, self._images[index].width

    def num_instances(self) -> int:
        """Instances with pixels (what the writers write)."""
        return sum(int(mask_utils.area(rle) > 0) for im in self._images for rle in im.rles)

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        im = self._images[index]
        targets = targets_from_rles(list(im.rles), list(im.labels), im.height, im.width)
        return targets, torch.zeros((0, 4), dtype=torch.float32)

    def __getitem__(self, index: int) -> Sample:
        targets, crowd = self.load_targets(index)
        image = load_image(self._images[index].path)  # as displayed, as it was predicted
        return Sample(image, targets, index, self.file_name(index), crowd_boxes=crowd)


def check_prelabel_folder(out: str | Path, to: str) -> Path:
    """OUT/<to>, checked before any prediction: an unknown format or a folder that exists and is not
    empty (it is never overwritten) is a UserError."""
    if to not in PRELABEL_FORMATS:
        raise UserError(
            f"--to: unknown format {to!r}; expected {', '.join(PRELABEL_FORMATS)} (comma-separated)"
        )
    folder = Path(out) / to
    if folder.exists() and not (folder.is_dir() and not any(folder.iterdir())):
        raise UserError(f"{folder}: exists and is not empty; refusing to overwrite it (choose a new --out)")
    return folder


def check_prelabel_request(out: str | Path, formats: Sequence[str], items: Sequence[InputItem]) -> None:
    """`predict --to`, before any prediction: every format known, its folder new or empty, and some
    image inputs (videos get no annotation set); else a UserError."""
    for to in formats:
        check_prelabel_folder(out, to)
    if not any(item.kind == "image" for item in items):
        raise UserError(
            "--to writes the predictions of image inputs, and there are none (videos get no pre-labels)"
        )


def _write_coco(dataset: PredictionSet, directory: Path) -> Path:
    with atomic_write_folder(directory) as folder:
        (folder / "images").mkdir()
        used: set[str] = set()
        for index in range(len(dataset)):
            write_image(dataset, index, folder / "images", used)
        write_coco_json(dataset, folder / "instances.json")
    return directory


def write_prelabels(dataset: PredictionSet, out: str | Path, *, to: str) -> Path:
    """Write `dataset` as the annotation set `to` in OUT/<to>/ (see the module docstring); the
    folder is written whole or not at all. Returns the folder."""
    folder = check_prelabel_folder(out, to)
    if to == "labelme":
        return write_labelme(dataset, folder)
    if to == "yolo":
        return write_yolo(dataset, folder)
    if to == "cvat":
        return write_cvat(dataset, folder, source="auto")
    return _write_coco(dataset, folder)


def write_report_prelabels(report, items: Sequence[InputItem], out: str | Path, *, to: str, predictor) -> str:
    """`maskrcnn predict --to FORMAT`: the image predictions of a `PredictReport` (of the inputs
    `items`, by `predictor`) written as OUT/FORMAT/; -> the line that says so."""
    dataset = PredictionSet.from_records(
        items,
        report.records,
        failed={name for name, _ in report.failures},
        class_names=predictor.class_names,
        category_ids=predictor.category_ids,
    )
    folder = write_prelabels(dataset, out, to=to)
    return f"wrote {folder} ({to} pre-labels): {len(dataset)} images, {dataset.num_instances()} instances"
