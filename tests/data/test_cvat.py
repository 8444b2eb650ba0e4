"""CvatDataset (CVAT for images 1.1 XML) on a hand-made file with hand-computed masks, the
`convert-dataset --to cvat` round trip of coco-mini images (objects of several polygons too) and of a
mask with a hole, and the errors for bad files."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrcnn.cli import main as cli_main
from maskrcnn.data.specs import build_dataset
from maskrcnn.errors import UserError
from tests.helpers import assert_same_instances, coco_instances, coco_subset, dataset_instances

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPES = """
    <polygon label="a" source="manual" occluded="0" points="0,0;4,0;4,4;0,4" z_order="0"/>
    <box label="b" source="manual" occluded="0" xtl="5" ytl="0" xbr="9" ybr="2" z_order="0"/>
    <polygon label="a" points="10,0;12,0;12,2;10,2" group_id="1"/>
    <polygon label="a" points="14.00,0.00;16.00,0.00;16.00,2.00;14.00,2.00" group_id="1"/>
    <mask label="b" rle="1, 2, 3" left="0" top="6" width="3" height="2"/>
    <polyline label="a" points="0,9;19,9"/>
    <box label="a" xtl="4" ytl="5" xbr="8" ybr="7" rotation="90"/>
    <ellipse label="b" cx="15" cy="7" rx="2" ry="2"/>
    <polygon label="b" points="18,8;25,8;25,12;18,12"/>
"""


def _xml(shapes: str, labels=("a", "b"), name: str = "img.png") -> str:
    names = "".join(f"<label><name>{n}</name><type>any</type></label>" for n in labels)
    return (
        f'<?xml version="1.0" encoding="utf-8"?>\n<annotations><version>1.1</version><meta><task><labels>'
        f'{names}</labels></task></meta><image id="0" name="{name}" width="20" height="10">{shapes}</image>'
        "</annotations>"
    )


def _folder(tmp_path: Path, xml: str) -> Path:
    folder = tmp_path / "cvat"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(np.full((10, 20, 3), 80, np.uint8)).save(folder / "images/img.png")
    (folder / "annotations.xml").write_text(xml)
    return folder


def test_every_shape_kind_by_hand(tmp_path: Path) -> None:
    dataset = build_dataset(f"cvat:{_folder(tmp_path, _xml(SHAPES))}", checked=False)
    assert dataset.class_names == ["a", "b"] and len(dataset) == 1 and dataset.image_size(0) == (10, 20)
    targets, _ = dataset.load_targets(0)
    masks = targets.masks.numpy().astype(bool)
    assert targets.labels.tolist() == [1, 2, 1, 2, 1, 2, 2]
    assert [int(m.sum()) for m in masks[:5]] == [16, 8, 8, 2, 8]
    assert masks[2][0:2, 10:12].all() and masks[2][0:2, 14:16].all()  # the group: one instance, 2 parts
    assert masks[3][6].tolist()[:3] == [False, True, True] and not masks[3][7].any()  # rle: 1 off, 2 on
    assert masks[4][4:8, 5:7].all()  # the 4 x 2 box turned by 90 degrees about its centre (6, 6)
    assert 10 <= masks[5].sum() <= 16 and masks[5][6:8, 14:16].all()  # the ellipse: about pi * 2 * 2
    assert masks[6].sum() == 2 * 2 and masks[6][8:10, 18:20].all()  # clipped to the image
    kinds = [p.kind for p in dataset.problems.problems]
    assert "shape_not_a_region" in kinds and "box_outside_image" in kinds
    sample = dataset[0]
    assert sample.image.shape == (3, 10, 20) and sample.file_name == "img.png"


def test_coco_images_round_trip(tmp_path: Path, shared_data: Path, capsys) -> None:
    ann_file, image_dir = coco_subset(shared_data, tmp_path / "subset.json")
    folder, back = tmp_path / "cvat", tmp_path / "back.json"
    assert cli_main(["convert-dataset", f"coco:{ann_file}:{image_dir}", str(folder), "--to", "cvat"]) == 0
    assert "(cvat folder): 6 images, 80 classes" in capsys.readouterr().out
    assert "group_id" in (folder / "annotations.xml").read_text()  # 139 and 22892: objects of 2 polygons
    dataset = build_dataset(f"cvat:{folder / 'annotations.xml'}:{folder / 'images'}")
    assert assert_same_instances(coco_instances(ann_file), dataset_instances(dataset)) == 1.0
    assert cli_main(["convert-dataset", f"cvat:{folder}", str(back)]) == 0
    assert assert_same_instances(coco_instances(ann_file), coco_instances(back)) == 1.0


def test_a_mask_with_a_hole_is_a_mask_element(tmp_path: Path) -> None:
    ring = np.zeros((10, 20), np.uint8)
    ring[2:8, 3:9] = 1
    ring[4:6, 5:7] = 0
    png = io.BytesIO()
    Image.fromarray(ring[2:8, 3:9]).save(png, format="PNG")
    labelme = tmp_path / "labelme"
    labelme.mkdir()
    Image.fromarray(np.full((10, 20, 3), 80, np.uint8)).save(labelme / "ring.png")
    shape = {"label": "ring", "points": [[3, 2], [8, 7]], "shape_type": "mask", "group_id": None, "flags": {}}
    shape["mask"] = base64.b64encode(png.getvalue()).decode()
    record = {
        "shapes": [shape],
        "imagePath": "ring.png",
        "imageData": None,
        "imageHeight": 10,
        "imageWidth": 20,
    }
    (labelme / "ring.json").write_text(json.dumps(record))
    assert cli_main(["convert-dataset", f"labelme:{labelme}", str(tmp_path / "cvat"), "--to", "cvat"]) == 0
    assert '<mask label="ring"' in (tmp_path / "cvat/annotations.xml").read_text()
    targets, _ = build_dataset(f"cvat:{tmp_path / 'cvat'}").load_targets(0)
    assert np.array_equal(targets.masks[0].numpy().astype(bool), ring.astype(bool))


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<annotations><image", "is not valid XML"),
        ("<labels/>", "not a CVAT XML file"),
        (
            _xml('<mask label="a" rle="1, 2" left="0" top="0" width="2" height="2"/>'),
            "'rle' runs add up to 3",
        ),
        (_xml('<polygon label="c" points="0,0;1,0;1,1"/>'), "label 'c' is not among"),
        (_xml('<polygon label="a" points="0,0;x,0;1,1"/>'), "'points' must be"),
        (_xml('<box label="a" xtl="0" ytl="nan" xbr="1" ybr="1"/>'), "'ytl' must be a finite number"),
    ],
)
def test_bad_files_name_the_file_and_shape(tmp_path: Path, xml: str, message: str) -> None:
    folder = _folder(tmp_path, xml)
    with pytest.raises(UserError, match=message) as info:
        build_dataset(f"cvat:{folder}")
    assert str(folder / "annotations.xml") in str(info.value)
    if xml.startswith("<?xml"):  # a shape's error names the image and the shape
        assert "image 'img.png', shape 0 <" in str(info.value)
