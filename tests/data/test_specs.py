"""Dataset spec strings and the COCO JSON writer (round trip through pycocotools)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO

from maskrcnn.data import (
    CocoDataset,
    MaskFolderDataset,
    ShapesDataset,
    ViaDataset,
    build_dataset,
    write_coco_json,
)

# pycocotools' annToMask triggers a NumPy 2 "copy keyword" DeprecationWarning inside its Cython code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def test_build_dataset_kinds(shared_data: Path) -> None:
    root = shared_data / "coco-2img"
    coco = build_dataset(f"coco:{root}/annotations/instances_val2017.json:{root}/images/val2017")
    assert isinstance(coco, CocoDataset) and len(coco) == 1
    via = build_dataset(f"via:{shared_data}/balloon/val")
    assert isinstance(via, ViaDataset) and len(via) == 13
    masks = build_dataset(f"masks:{shared_data}/nuclei/test")
    assert isinstance(masks, MaskFolderDataset) and len(masks) == 3
    shapes = build_dataset("shapes")
    assert isinstance(shapes, ShapesDataset) and len(shapes) == 200 and shapes.seed == 0
    shapes = build_dataset("shapes:10:3")
    assert len(shapes) == 10 and shapes.seed == 3
    assert len(build_dataset("shapes:7")) == 7


def test_build_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset kind 'voc'"):
        build_dataset("voc:/data")
    with pytest.raises(FileNotFoundError, match=r"directory .*nothing-here does not exist"):
        build_dataset(f"via:{tmp_path}/nothing-here")
    with pytest.raises(FileNotFoundError, match=r"annotation file .*missing\.json does not exist"):
        build_dataset(f"coco:{tmp_path}/missing.json:{tmp_path}")
    with pytest.raises(ValueError, match="expected coco:ANNOTATIONS.json:IMAGE_DIR"):
        build_dataset(f"coco:{tmp_path}/a.json")
    with pytest.raises(ValueError, match="must be integers"):
        build_dataset("shapes:ten")


def _assert_round_trip(dataset: Any, path: Path) -> COCO:
    """The written file, read by pycocotools, reproduces every mask, box and label."""
    gt = COCO(str(path))
    for index in range(len(dataset)):
        targets, _ = dataset.load_targets(index)
        image_id = int(dataset.image_ids[index])
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(targets)
        for k, ann in enumerate(anns):
            np.testing.assert_array_equal(gt.annToMask(ann), targets.masks[k].numpy())
            x1, y1, x2, y2 = targets.boxes[k].tolist()
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert ann["area"] == float(targets.masks[k].sum()) and ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"]["counts"], str)
            assert ann["category_id"] == dataset.category_ids[int(targets.labels[k]) - 1]
    return gt


def test_write_coco_json_shapes(tmp_path: Path) -> None:
    ds = ShapesDataset(6, seed=4)
    path = write_coco_json(ds, tmp_path / "out" / "shapes.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["shapes.json"]  # no temp file left behind
    gt = _assert_round_trip(ds, path)
    assert [(c["id"], c["name"]) for c in gt.loadCats(gt.getCatIds())] == [
        (1, "square"),
        (2, "circle"),
        (3, "triangle"),
    ]
    assert len(gt.getImgIds()) == 6 and gt.imgs[0]["height"] == 128 and gt.imgs[0]["width"] == 128


def test_write_coco_json_keeps_coco_category_ids(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "coco-2img"
    ds = CocoDataset(root / "annotations" / "instances_val2017.json", root / "images" / "val2017")
    path = write_coco_json(ds, tmp_path / "val.json")
    gt = _assert_round_trip(ds, path)
    assert len(gt.anns) == 19 and list(gt.imgs) == [397133]
    original = json.loads((root / "annotations" / "instances_val2017.json").read_text())["categories"]
    assert sorted(gt.getCatIds()) == sorted(c["id"] for c in original)
    assert gt.loadCats([90])[0]["name"] == "toothbrush"
    # Overwriting an existing file works (atomic replace).
    write_coco_json(ds, path)
    assert len(COCO(str(path)).anns) == 19


def test_write_coco_json_via(shared_data: Path, tmp_path: Path) -> None:
    ds = ViaDataset(shared_data / "balloon" / "val", class_name="balloon")
    gt = _assert_round_trip(ds, write_coco_json(ds, tmp_path / "balloon.json"))
    assert len(gt.anns) == 50 and [c["name"] for c in gt.dataset["categories"]] == ["balloon"]
