"""Dataset specification strings, resolved through one table, and COCO JSON export.

A spec is `KIND` or `KIND:ARGUMENTS`; `DATASET_SPECS` maps each kind to its usage text and the
function that builds the dataset from the arguments:

    coco:ANNOTATIONS.json:IMAGE_DIR   COCO JSON + image folder   (CocoDataset)
    via:DIR                           VIA polygons               (ViaDataset)
    masks:DIR                         one folder per image       (MaskFolderDataset)
    labelme:DIR                       labelme JSON files         (LabelmeDataset)
    yolo:DIR | yolo:DIR:SPLIT         YOLO segmentation labels   (YoloDataset)
    cvat:DIR | cvat:XML:IMAGE_DIR     CVAT for images 1.1 XML    (CvatDataset)
    shapes | shapes:N | shapes:N:SEED synthetic shapes, N=200 and SEED=0 by default (ShapesDataset)

A new format is one module with a dataset class satisfying `maskrcnn.data.dataset.InstanceDataset`
plus one entry in `DATASET_SPECS`.

`write_coco_json` turns any of these datasets into a COCO ground-truth file (for COCO evaluation
of datasets that are not COCO to begin with); `write_dataset` writes one in any of `OUTPUT_FORMATS`
(COCO JSON, or a labelme, YOLO or CVAT folder: `maskrcnn convert-dataset --to FORMAT`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from pycocotools import mask as mask_utils

from maskrcnn.data.check import dataset_problems
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.cvat import CvatDataset, write_cvat
from maskrcnn.data.dataset import InstanceDataset, dataset_keypoints
from maskrcnn.data.labelme import LabelmeDataset
from maskrcnn.data.mask_folder import MaskFolderDataset
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.data.via import ViaDataset
from maskrcnn.data.writing import write_labelme, write_yolo
from maskrcnn.data.yolo import YoloDataset
from maskrcnn.errors import UserError
from maskrcnn.files import atomic_write_json
from maskrcnn.structures import Targets

__all__ = [
    "DATASET_KINDS",
    "DATASET_SPECS",
    "OUTPUT_FORMATS",
    "DatasetSpec",
    "build_dataset",
    "spec_usage",
    "write_coco_json",
    "write_dataset",
]


@dataclass(frozen=True)
class DatasetSpec:
    """One kind of dataset spec: its `usage` forms (e.g. "via:DIR") and `build(spec, arguments)`,
    which gets the whole spec (for messages) and the text after "KIND:" ("" when there is none)."""

    usage: tuple[str, ...]
    build: Callable[[str, str], InstanceDataset]


def existing_path(path: str, what: str, spec: str, *, is_dir: bool) -> Path:
    """`path` as a Path when it is an existing folder (`is_dir`) or file; else a FileNotFoundError
    naming the spec, what the path is and the path."""
    p = Path(path).expanduser()
    ok = p.is_dir() if is_dir else p.is_file()
    if not ok:
        raise FileNotFoundError(f"dataset spec {spec!r}: {what} {p} does not exist")
    return p


def _coco(spec: str, rest: str) -> CocoDataset:
    ann, sep, image_dir = rest.partition(":")
    if not sep or not ann or not image_dir:
        raise UserError(f"dataset spec {spec!r}: expected coco:ANNOTATIONS.json:IMAGE_DIR")
    return CocoDataset(
        existing_path(ann, "annotation file", spec, is_dir=False),
        existing_path(image_dir, "image directory", spec, is_dir=True),
    )


def _directory(kind: str, spec: str, rest: str) -> Path:
    if not rest:
        raise UserError(f"dataset spec {spec!r}: expected {kind}:DIR")
    return existing_path(rest, "directory", spec, is_dir=True)


def _via(spec: str, rest: str) -> ViaDataset:
    return ViaDataset(_directory("via", spec, rest))


def _masks(spec: str, rest: str) -> MaskFolderDataset:
    return MaskFolderDataset(_directory("masks", spec, rest))


def _labelme(spec: str, rest: str) -> LabelmeDataset:
    return LabelmeDataset(_directory("labelme", spec, rest))


def _yolo(spec: str, rest: str) -> YoloDataset:
    folder, sep, split = rest.rpartition(":")
    if not sep or not folder or Path(rest).expanduser().is_dir():  # yolo:DIR (a DIR may hold ':')
        return YoloDataset(_directory("yolo", spec, rest))
    if not split:
        raise UserError(f"dataset spec {spec!r}: expected yolo:DIR or yolo:DIR:SPLIT")
    return YoloDataset(_directory("yolo", spec, folder), split=split)


def _cvat(spec: str, rest: str) -> CvatDataset:
    xml, sep, image_dir = rest.partition(":")
    if not sep or Path(rest).expanduser().is_dir():  # cvat:DIR (a DIR may hold ':')
        return CvatDataset(_directory("cvat", spec, rest))
    if not xml or not image_dir:
        raise UserError(f"dataset spec {spec!r}: expected cvat:DIR or cvat:ANNOTATIONS.xml:IMAGE_DIR")
    return CvatDataset(
        existing_path(xml, "annotation file", spec, is_dir=False),
        existing_path(image_dir, "image directory", spec, is_dir=True),
    )


def _shapes(spec: str, rest: str) -> ShapesDataset:
    parts = rest.split(":") if rest else []
    if len(parts) > 2:
        raise UserError(f"dataset spec {spec!r}: expected shapes, shapes:N or shapes:N:SEED")
    try:
        n = int(parts[0]) if parts else 200
        seed = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UserError(f"dataset spec {spec!r}: N and SEED must be integers") from None
    return ShapesDataset(n, seed=seed)


DATASET_SPECS: dict[str, DatasetSpec] = {
    "coco": DatasetSpec(("coco:ANNOTATIONS.json:IMAGE_DIR",), _coco),
    "via": DatasetSpec(("via:DIR",), _via),
    "masks": DatasetSpec(("masks:DIR",), _masks),
    "labelme": DatasetSpec(("labelme:DIR",), _labelme),
    "yolo": DatasetSpec(("yolo:DIR", "yolo:DIR:SPLIT"), _yolo),
    "cvat": DatasetSpec(("cvat:DIR", "cvat:ANNOTATIONS.xml:IMAGE_DIR"), _cvat),
    "shapes": DatasetSpec(("shapes", "shapes:N", "shapes:N:SEED"), _shapes),
}
DATASET_KINDS = tuple(DATASET_SPECS)


def spec_usage() -> str:
    """Every spec form of the table, e.g. "coco:ANNOTATIONS.json:IMAGE_DIR, via:DIR, ... or shapes:N:SEED"."""
    forms = [form for entry in DATASET_SPECS.values() for form in entry.usage]
    return ", ".join(forms[:-1]) + " or " + forms[-1] if len(forms) > 1 else "".join(forms)


def build_dataset(spec: str, *, checked: bool = True) -> InstanceDataset:
    """Build a dataset from a spec string (see the module docstring). `checked`: raise
    `DataProblemsError` (naming the first) when reading its annotation files found a fatal problem;
    `check-data` and `train` pass False, to report them all (`maskrcnn.data.check`)."""
    kind, _, rest = spec.partition(":")
    entry = DATASET_SPECS.get(kind)
    if entry is None:
        raise UserError(f"unknown dataset kind {kind!r} in spec {spec!r}; expected one of {spec_usage()}")
    dataset = entry.build(spec, rest)
    if checked:
        dataset_problems(dataset).raise_if_fatal()
    return dataset


def _image_entry(dataset: InstanceDataset, index: int) -> tuple[dict, Targets]:
    """COCO image record and targets of item `index`, without decoding the image."""
    targets, _ = dataset.load_targets(index)
    h, w = dataset.image_size(index)
    record = {"id": int(dataset.image_ids[index]), "file_name": dataset.file_name(index)}
    return {**record, "height": int(h), "width": int(w)}, targets


def _keypoint_fields(keypoints: torch.Tensor) -> dict:
    """COCO's `keypoints` (x, y, v flattened; unlabelled ones written as 0, 0, 0 as COCO does) and
    `num_keypoints` (the labelled ones) of one instance's (J, 3) keypoints."""
    kps = keypoints.to("cpu", torch.float64).clone()
    kps[kps[:, 2] <= 0] = 0.0
    flat = [float(v) for v in kps.flatten().tolist()]
    for i in range(2, len(flat), 3):
        flat[i] = int(flat[i])
    return {"keypoints": flat, "num_keypoints": int((kps[:, 2] > 0).sum())}


def write_coco_json(dataset: InstanceDataset, out_path: Union[str, Path]) -> Path:
    """Write `dataset` as a COCO instances file and return its path.

    Categories: the dataset's class names with ids `dataset.category_ids` (1..K; a CocoDataset's
    original category records are copied, so its sparse ids are kept). Annotations: one per target
    instance, with compressed RLE segmentation (string counts), tight bbox [x, y, w, h], mask area
    and iscrowd 0; with keypoints, COCO's `keypoints` and `num_keypoints` (and the dataset's keypoint
    names and skeleton in every category). Crowd regions are not written. The file is written to a
    temporary file and moved into place atomically.
    """
    out_path = Path(out_path)
    names, cat_ids = list(dataset.class_names), list(dataset.category_ids)
    images, annotations = [], []
    for index in range(len(dataset)):
        image, targets = _image_entry(dataset, index)
        images.append(image)
        masks = targets.masks.to("cpu", dtype=torch.uint8).numpy()
        for k in range(len(targets)):
            rle = mask_utils.encode(np.asfortranarray(masks[k]))
            area = float(mask_utils.area(rle))
            if area <= 0:
                continue
            x1, y1, x2, y2 = (float(v) for v in targets.boxes[k].tolist())
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image["id"],
                "category_id": int(cat_ids[int(targets.labels[k]) - 1]),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": area,
                "iscrowd": 0,
            }
            if targets.keypoints is not None:
                annotation.update(_keypoint_fields(targets.keypoints[k]))
            annotations.append(annotation)
    if isinstance(dataset, CocoDataset):  # keeps its original category records
        categories = dataset.categories
    else:
        _, keypoints = dataset_keypoints(dataset)
        extra = {"keypoints": list(keypoints.names), "skeleton": [list(p) for p in keypoints.skeleton]}
        categories = [
            {"id": int(c), "name": n, "supercategory": "", **(extra if keypoints.names else {})}
            for c, n in zip(cat_ids, names)
        ]
    payload = {
        "info": {"description": f"written by maskrcnn.data from {type(dataset).__name__}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    return atomic_write_json(out_path, payload)


OUTPUT_FORMATS = ("coco", "labelme", "yolo", "cvat")


def write_dataset(
    dataset: InstanceDataset, out: Union[str, Path], *, to: str = "coco", split: str | None = None
) -> Path:
    """Write `dataset` as `to`: "coco" (`write_coco_json`: the JSON file `out`), "labelme"
    (`maskrcnn.data.writing.write_labelme`), "yolo" (`maskrcnn.data.writing.write_yolo`, its images
    under `split`, "train" by default) or "cvat" (`maskrcnn.data.cvat.write_cvat`): a new folder
    `out`, written whole or not at all."""
    if to not in OUTPUT_FORMATS:
        raise UserError(f"unknown output format {to!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    if split is not None and to != "yolo":
        raise UserError(f"a split ({split!r}) is only written by the yolo format, not {to}")
    if to == "labelme":
        return write_labelme(dataset, out)
    if to == "cvat":
        return write_cvat(dataset, out)
    if to == "yolo":
        return write_yolo(dataset, out, split=split or "train")
    return write_coco_json(dataset, out)
