"""ViaDataset on the real balloon data and on small hand-made VIA files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data import ViaDataset, masks_to_boxes


@pytest.mark.parametrize("split, images, polygons", [("train", 61, 255), ("val", 13, 50)])
def test_balloon_counts(shared_data: Path, split: str, images: int, polygons: int) -> None:
    ds = ViaDataset(shared_data / "balloon" / split)
    assert len(ds) == images
    assert ds.class_names == ["object"] and ds.num_classes == 1
    assert sum(ds.num_annotations(i) for i in range(len(ds))) == polygons
    # Every balloon polygon encloses pixels: none is dropped as degenerate.
    total = 0
    for i in range(len(ds)):
        t, crowd = ds.load_targets(i)
        assert t.masks.shape[1:] == ds.image_size(i) and crowd.shape == (0, 4)
        assert set(t.labels.tolist()) <= {1}
        total += len(t)
    assert total == polygons


def test_balloon_sample_matches_polygons(shared_data: Path) -> None:
    directory = shared_data / "balloon" / "val"
    ds = ViaDataset(directory, class_name="balloon")
    assert ds.class_names == ["balloon"]
    entries = list(json.loads((directory / "via_region_data.json").read_text()).values())
    s = ds[0]
    assert s.file_name == entries[0]["filename"] and s.image_id == 0
    assert s.image.shape[0] == 3 and s.image.shape[1:] == s.targets.masks.shape[1:]
    regions = entries[0]["regions"]
    regions = list(regions.values()) if isinstance(regions, dict) else regions
    assert len(s.targets) == len(regions)
    assert torch.equal(s.targets.boxes, masks_to_boxes(s.targets.masks))
    for box, region in zip(s.targets.boxes.tolist(), regions):
        xs, ys = region["shape_attributes"]["all_points_x"], region["shape_attributes"]["all_points_y"]
        np.testing.assert_allclose(box, [min(xs), min(ys), max(xs), max(ys)], atol=1.0)


def _make_via(tmp_path: Path, data: dict) -> Path:
    for entry in data.values():
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / entry["filename"])
    (tmp_path / "via_region_data.json").write_text(json.dumps(data))
    return tmp_path


def test_list_regions_with_classes_and_shapes(tmp_path: Path) -> None:
    rect = {"name": "rect", "x": 2, "y": 1, "width": 3, "height": 4}
    poly = {"name": "polygon", "all_points_x": [6, 11, 11, 6], "all_points_y": [5, 5, 9, 9]}
    circle = {"name": "circle", "cx": 5, "cy": 5, "r": 2}
    data = {
        "a.png123": {
            "filename": "a.png",
            "regions": [
                {"shape_attributes": rect, "region_attributes": {"name": "dog"}},
                {"shape_attributes": poly, "region_attributes": {"class": "cat"}},
                {"shape_attributes": circle, "region_attributes": {}},
            ],
        },
        "b.png9": {"filename": "b.png", "regions": []},
    }
    ds = ViaDataset(_make_via(tmp_path, data), class_name="thing")
    assert ds.class_names == ["cat", "dog", "thing"]
    s = ds[0]
    assert s.targets.labels.tolist() == [2, 1, 3]
    expected = np.zeros((10, 12), np.uint8)
    expected[1:5, 2:5] = 1
    np.testing.assert_array_equal(s.targets.masks[0].numpy(), expected)
    assert s.targets.boxes[:2].tolist() == [[2, 1, 5, 5], [6, 5, 11, 9]]
    assert int(s.targets.masks[2].sum()) in range(9, 17)  # a radius-2 disc (~12.6 px)
    empty = ds[1]
    assert empty.targets.masks.shape == (0, 10, 12) and empty.targets.boxes.shape == (0, 4)


def test_dict_regions_and_errors(tmp_path: Path) -> None:
    poly = {"name": "polygon", "all_points_x": [0, 4, 4, 0], "all_points_y": [0, 0, 4, 4]}
    data = {"x": {"filename": "a.png", "regions": {"0": {"shape_attributes": poly, "region_attributes": {}}}}}
    ds = ViaDataset(_make_via(tmp_path, data))
    assert ds.class_names == ["object"] and ds[0].targets.boxes.tolist() == [[0, 0, 4, 4]]

    (tmp_path / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"a\.png \(image id 0\)"):
        ds[0]
    point_region = {"shape_attributes": {"name": "point", "cx": 1, "cy": 1}}
    point = {"x": {"filename": "a.png", "regions": [point_region]}}
    with pytest.raises(ValueError, match=r"'a\.png' region 0: unsupported region shape 'point'"):
        ViaDataset(_make_via(tmp_path, point))[0]
    with pytest.raises(FileNotFoundError, match="via_region_data.json"):
        ViaDataset(tmp_path / "missing")
