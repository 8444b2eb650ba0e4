"""CocoDataset on the real coco-mini / coco-2img data and on small hand-made COCO files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data import CocoDataset, masks_to_boxes


def _coco(shared_data: Path, name: str, split: str) -> CocoDataset:
    root = shared_data / name
    image_dir = root / f"{split}2017" if name == "coco-mini" else root / "images" / f"{split}2017"
    return CocoDataset(root / "annotations" / f"instances_{split}2017.json", image_dir)


def _totals(ds: CocoDataset) -> tuple[int, int, int, int]:
    """(JSON non-crowd, JSON crowd, decoded targets, decoded crowd boxes) over the dataset."""
    json_non_crowd = sum(ds.num_annotations(i) for i in range(len(ds)))
    json_crowd = sum(ds.num_annotations(i, crowd=True) for i in range(len(ds)))
    targets = crowd = 0
    for i in range(len(ds)):
        t, c = ds.load_targets(i)
        assert t.masks.dtype == torch.uint8 and t.masks.shape[1:] == ds.image_size(i)
        assert torch.equal(t.boxes, masks_to_boxes(t.masks))
        targets += len(t)
        crowd += len(c)
    return json_non_crowd, json_crowd, targets, crowd


@pytest.mark.parametrize(
    "split, images, non_crowd, crowd",
    # coco-mini has no degenerate (zero-area) annotation: every polygon rasterises to >= 1 pixel,
    # so all 731 (train) / 619 (val) non-crowd instances become targets.
    [("train", 80, 731, 8), ("val", 79, 619, 5)],
)
def test_coco_mini_counts(shared_data: Path, split: str, images: int, non_crowd: int, crowd: int) -> None:
    ds = _coco(shared_data, "coco-mini", split)
    assert len(ds) == images
    assert _totals(ds) == (non_crowd, crowd, non_crowd, crowd)


def test_coco_mini_category_mapping(shared_data: Path) -> None:
    ds = _coco(shared_data, "coco-mini", "train")
    assert ds.num_classes == 80 and len(ds.category_ids) == 80
    assert ds.category_ids == sorted(ds.category_ids) and ds.category_ids[-1] == 90
    assert (ds.category_ids[0], ds.class_names[0]) == (1, "person")
    assert ds.class_names[ds.category_ids.index(90)] == "toothbrush"
    assert ds.category_ids.index(90) + 1 == 80  # sparse id 90 -> label 80
    # Image 174375 has two crowd regions (category ids 1 and 62) besides its ordinary instances.
    index = ds.image_ids.index(174375)
    data = json.loads(ds.annotation_file.read_text())
    anns = [a for a in data["annotations"] if a["image_id"] == 174375 and not a["iscrowd"]]
    targets, crowd_boxes = ds.load_targets(index)
    expected = sorted(ds.category_ids.index(a["category_id"]) + 1 for a in anns)
    assert sorted(targets.labels.tolist()) == expected
    assert crowd_boxes.shape == (2, 4)
    crowd_json = sorted([a["bbox"] for a in data["annotations"] if a["image_id"] == 174375 and a["iscrowd"]])
    got = sorted((b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in crowd_boxes.tolist())
    np.testing.assert_allclose(np.array(got), np.array(crowd_json), atol=1.0)


def test_coco_2img(shared_data: Path) -> None:
    train, val = _coco(shared_data, "coco-2img", "train"), _coco(shared_data, "coco-2img", "val")
    assert (len(train), len(val)) == (1, 1)
    assert len(train[0].targets) == 4
    s = val[0]
    assert s.image_id == 397133 and s.file_name == "000000397133.jpg"
    assert s.image.shape == (3, 427, 640) and s.image.dtype == torch.float32
    assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0
    t = s.targets
    assert len(t) == 19 and t.masks.shape == (19, 427, 640) and t.labels.dtype == torch.int64
    assert s.crowd_boxes is not None and s.crowd_boxes.shape == (0, 4)
    # Mask boxes agree with the JSON boxes (which are float polygon extents) to about a pixel.
    data = json.loads(val.annotation_file.read_text())
    json_boxes = torch.tensor([a["bbox"] for a in data["annotations"]], dtype=torch.float32)
    json_boxes[:, 2:] += json_boxes[:, :2]
    assert (t.boxes - json_boxes).abs().max() <= 1.5


def _write_png(path: Path, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 200, np.uint8)).save(path)


def _tiny_coco(tmp_path: Path, annotations: list, images: list | None = None) -> Path:
    images = images or [{"id": 5, "file_name": "a.png", "height": 6, "width": 8}]
    for im in images:
        _write_png(tmp_path / "imgs" / im["file_name"], im["height"], im["width"])
    data = {
        "images": images,
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": annotations,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_polygon_rle_crowd_and_degenerate(tmp_path: Path) -> None:
    from pycocotools import mask as mask_utils

    h, w = 6, 8
    rle_mask = np.zeros((h, w), np.uint8, order="F")
    rle_mask[4:6, 0:3] = 1  # rows 4-5, columns 0-2
    compressed = mask_utils.encode(rle_mask)
    # Uncompressed RLE, column-major: column 7 rows 1..3 set.
    uncompressed = [7 * h + 1, 3, 2]
    anns = [
        {"id": 11, "image_id": 5, "category_id": 7, "iscrowd": 0, "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},
        {"id": 12, "image_id": 5, "category_id": 3, "iscrowd": 0,
         "segmentation": {"size": [h, w], "counts": compressed["counts"].decode()}},
        {"id": 13, "image_id": 5, "category_id": 7, "iscrowd": 0,
         "segmentation": {"size": [h, w], "counts": uncompressed}},
        {"id": 14, "image_id": 5, "category_id": 3, "iscrowd": 1,
         "segmentation": {"size": [h, w], "counts": [2 * h + 2, 2, h - 2, 2, 26]}},
        # Degenerate: a collinear polygon covers no pixel centre, and a 2-point "polygon".
        {"id": 15, "image_id": 5, "category_id": 7, "iscrowd": 0, "segmentation": [[0, 0, 5, 0, 7, 0]]},
        {"id": 16, "image_id": 5, "category_id": 7, "iscrowd": 0, "segmentation": [[0, 0, 5, 5]]},
    ]  # fmt: skip
    ds = CocoDataset(_tiny_coco(tmp_path, anns), tmp_path / "imgs")
    # Sparse ids {3, 7} -> contiguous labels in sorted id order.
    assert ds.category_ids == [3, 7] and ds.class_names == ["three", "seven"]
    s = ds[0]
    assert s.image_id == 5 and s.image.shape == (3, h, w)
    t = s.targets
    assert t.labels.tolist() == [2, 1, 2]
    poly = np.zeros((h, w), np.uint8)
    poly[1:3, 1:4] = 1  # polygon [1,4)x[1,3) covers pixel centres of columns 1-3, rows 1-2
    col = np.zeros((h, w), np.uint8)
    col[1:4, 7] = 1
    np.testing.assert_array_equal(t.masks[0].numpy(), poly)
    np.testing.assert_array_equal(t.masks[1].numpy(), rle_mask)
    np.testing.assert_array_equal(t.masks[2].numpy(), col)
    assert t.boxes.tolist() == [[1, 1, 4, 3], [0, 4, 3, 6], [7, 1, 8, 4]]
    # The crowd region (columns 2 and 3, rows 2-3) is not a target but a crowd box.
    assert s.crowd_boxes.tolist() == [[2.0, 2.0, 4.0, 4.0]]


def test_image_without_annotations_is_kept(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "a.png", "height": 6, "width": 8},
        {"id": 2, "file_name": "b.png", "height": 5, "width": 4},
    ]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4, 4]]}]
    ds = CocoDataset(_tiny_coco(tmp_path, anns, images), tmp_path / "imgs")
    assert ds.image_ids == [1, 2]
    s = ds[1]
    assert s.targets.boxes.shape == (0, 4) and s.targets.masks.shape == (0, 5, 4)
    assert s.targets.labels.shape == (0,) and s.targets.labels.dtype == torch.int64


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDataset(tmp_path / "nope.json", tmp_path)
    # a malformed annotation is recorded as the file is read; reading an item then names it
    bad_poly = [{"id": 99, "image_id": 5, "category_id": 3, "segmentation": [[0, 0, 4, 0, 4]]}]
    ds = CocoDataset(_tiny_coco(tmp_path, bad_poly), tmp_path / "imgs")
    assert [(p.kind, p.image_id, p.annotation_id) for p in ds.problems.problems] == [("malformed", 5, 99)]
    with pytest.raises(
        ValueError, match=r"\(image 5, annotation 99\): polygon 0: .*odd number of coordinates"
    ):
        ds[0]
    bad_size = [{"id": 42, "image_id": 5, "category_id": 3, "segmentation": {"size": [3, 3], "counts": [9]}}]
    with pytest.raises(ValueError, match=r"annotation 42\): RLE size .* does not match the image size"):
        CocoDataset(_tiny_coco(tmp_path, bad_size), tmp_path / "imgs")[0]
    bad_cat = [{"id": 8, "image_id": 5, "category_id": 4, "segmentation": [[0, 0, 4, 0, 4, 4]]}]
    with pytest.raises(ValueError, match=r"annotation 8\): unknown category id 4"):
        CocoDataset(_tiny_coco(tmp_path, bad_cat), tmp_path / "imgs").load_targets(0)
    ds = CocoDataset(_tiny_coco(tmp_path, []), tmp_path / "imgs")
    (tmp_path / "imgs" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.png \(image id 5\)"):
        ds[0]


def test_torchvision_label_space(shared_data: Path) -> None:
    ds = CocoDataset(
        shared_data / "coco-2img" / "annotations" / "instances_val2017.json",
        shared_data / "coco-2img" / "images" / "val2017",
        contiguous_labels=False,
    )
    assert ds.num_classes == 90 and ds.category_ids == list(range(1, 91))
    assert ds.class_names[0] == "person" and ds.class_names[11] == "N/A"  # id 12 is unused in COCO
    data = json.loads(ds.annotation_file.read_text())
    labels = ds.load_targets(0)[0].labels.tolist()
    assert sorted(labels) == sorted(a["category_id"] for a in data["annotations"])
