"""LabelmeDataset on hand-made files (every shape type, with hand-computed masks), on a labelme
version of coco-mini images written by the test, `convert-dataset --to labelme` round trips, and
randomly corrupted folders (hypothesis)."""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_util

from maskrcnn.cli import main as cli_main
from maskrcnn.data import ShapesDataset
from maskrcnn.data.coco import targets_from_rles
from maskrcnn.data.labelme import LabelmeDataset
from maskrcnn.data.specs import build_dataset
from maskrcnn.data.writing import write_labelme
from maskrcnn.errors import UserError
from maskrcnn.structures import Sample
from tests.helpers import (
    assert_same_instances,
    coco_instances,
    coco_subset,
    dataset_instances,
    read_every_item,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _shape(label: str, points: list, kind: str = "polygon", group_id=None, **extra) -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": kind, "flags": {}, **extra}


def _write(folder: Path, name: str, shapes: list, *, size=(32, 32), image=True, **extra) -> Path:
    """`folder/name.json` for a `name.png` image of `size` (h, w), written too when `image`."""
    h, w = size
    if image:
        (folder / f"{name}.png").write_bytes(_png(np.full((h, w, 3), 90, np.uint8)))
    record = {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": f"{name}.png",
        "imageData": None,
        "imageHeight": h,
        "imageWidth": w,
        **extra,
    }
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def _box_mask(x1: int, y1: int, x2: int, y2: int, size=(32, 32)) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y1:y2, x1:x2] = True
    return m


def test_shape_types(tmp_path: Path) -> None:
    patch = np.array([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]], np.uint8)  # rows y 20..22, cols x 2..5
    shapes = [
        _shape("cat", [[2, 2], [10, 2], [10, 8], [2, 8]]),  # 0: the pixels x 2..9, y 2..7
        _shape("dog", [[20, 4], [12, 1]], "rectangle"),  # 1: corners in any order: x 12..19, y 1..3
        _shape("dog", [[24, 24], [24, 28]], "circle"),  # 2: radius 4 around (24, 24)
        _shape("cat", [[2, 20], [5, 22]], "mask", mask=base64.b64encode(_png(patch)).decode()),  # 3
        _shape("cat", [[12, 12], [14, 12], [14, 14], [12, 14]], group_id=7),  # 4 and 5: one instance
        _shape("cat", [[16, 12], [18, 12], [18, 14], [16, 14]], group_id=7),
        _shape("dog", [[12, 16], [14, 16], [14, 18]], group_id=7),  # 6: same group, other label
        _shape("cat", [[1, 1]], "point"),  # 7, 8: not regions
        _shape("cat", [[1, 1], [5, 5], [9, 1]], "linestrip"),
        _shape("cat", [[3, 3], [9, 9]]),  # 9: 2 points: dropped
        _shape("dog", [[28, 1], [40, 1], [40, 5], [28, 5]]),  # 10: clipped to x 28..31
        _shape("dog", [[40, 1], [50, 1], [50, 5]]),  # 11: entirely outside: dropped
        _shape("dog", [[1, 1], [5, 5], [9, 9]]),  # 12: no area: dropped
    ]
    _write(tmp_path, "a", shapes)
    _write(tmp_path, "b", [], size=(8, 12))
    ds = LabelmeDataset(tmp_path)
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2] and len(ds) == 2
    assert ds.file_name(0) == "a.png" and ds.image_size(1) == (8, 12)
    s = ds[0]
    assert s.image.shape == (3, 32, 32) and s.file_name == "a.png"
    t = s.targets
    assert t.labels.tolist() == [1, 2, 2, 1, 1, 2, 2]
    masks = t.masks.numpy().astype(bool)
    np.testing.assert_array_equal(masks[0], _box_mask(2, 2, 10, 8))
    np.testing.assert_array_equal(masks[1], _box_mask(12, 1, 20, 4))
    assert 44 <= masks[2].sum() <= 56  # pi * 4^2 = 50.3
    assert t.boxes[2].tolist() == [20.0, 20.0, 28.0, 28.0]
    expected_patch = np.zeros((32, 32), bool)
    expected_patch[20:23, 2:6] = patch.astype(bool)
    np.testing.assert_array_equal(masks[3], expected_patch)
    np.testing.assert_array_equal(masks[4], _box_mask(12, 12, 14, 14) | _box_mask(16, 12, 18, 14))
    # the triangle's only pixel whose centre is inside it (the centres (12.5, 16.5) and (13.5, 17.5)
    # lie on its hypotenuse)
    np.testing.assert_array_equal(masks[5], _box_mask(13, 16, 14, 17))
    np.testing.assert_array_equal(masks[6], _box_mask(28, 1, 32, 5))
    assert t.boxes[0].tolist() == [2.0, 2.0, 10.0, 8.0]
    assert ds.num_annotations(0) == 7 and len(ds[1].targets) == 0

    problems = {(p.kind, p.annotation_id) for p in ds.problems.problems}
    assert {
        ("polygon_too_few_points", 9),
        ("box_outside_image", 10),
        ("box_entirely_outside_image", 11),
        ("zero_area", 12),
        ("image_without_annotations", None),
    } <= problems
    assert all(
        p.file == str(tmp_path / "a.json") for p in ds.problems.problems if p.annotation_id is not None
    )
    skipped = {a for k, a in problems if k == "shape_not_a_region"}
    assert skipped == {7, 8}  # the point and the line shape
    targets, crowd = ds.load_targets(0)  # the same without the image
    assert np.array_equal(targets.masks.numpy(), t.masks.numpy()) and crowd.shape == (0, 4)


def test_class_list_image_data_and_paths(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ndog\ncat\n\nbird\n")
    pixels = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    data = base64.b64encode(_png(pixels)).decode()
    _write(tmp_path, "only_data", [_shape("cat", [[0, 0], [4, 0], [4, 4]])], image=False, imageData=data)
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "x.png").write_bytes(_png(pixels))
    record = json.loads(_write(tmp_path, "sub", [], image=False).read_text())
    (tmp_path / "sub.json").write_text(json.dumps({**record, "imagePath": "pics\\x.png"}))  # Windows path
    ds = build_dataset(f"labelme:{tmp_path}")
    assert isinstance(ds, LabelmeDataset) and ds.class_names == ["dog", "cat", "bird"]
    s = ds[0]
    assert s.targets.labels.tolist() == [2]
    np.testing.assert_array_equal((s.image.permute(1, 2, 0).numpy() * 255).round(), pixels)
    assert ds.image_path(0) is None and ds.file_name(1) == os.path.join("pics", "x.png")
    assert ds[1].image.shape == (3, 32, 32)

    _write(tmp_path, "zz", [_shape("horse", [[0, 0], [4, 0], [4, 4]])])
    with pytest.raises(UserError, match=r"zz\.json: shape 0: label 'horse' is not in the class list"):
        LabelmeDataset(tmp_path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"shapes": None}, r"not a labelme file"),
        ({"imageHeight": "32"}, r"'imageHeight' must be a positive integer"),
        ({"imagePath": 3}, r"'imagePath' must name the image file"),
        ({"shapes": [7]}, r"shape 0: a shape must be an object"),
        ({"shapes": [_shape(None, [[0, 0], [1, 1], [2, 0]])]}, r"shape 0: 'label' must be"),
        ({"shapes": [_shape("a", [[0, 0], [1, "1"], [2, 0]])]}, r"shape 0: 'points' must be"),
        (
            {"shapes": [_shape("a", [[0, 0], [1, 1]], "circle"), _shape("a", [[0, 0]], "circle")]},
            r"shape 1: a circle",
        ),
        (
            {"shapes": [_shape("a", [[0, 0], [1, 1]], "mask", mask="%%%")]},
            r"shape 0: 'mask' is not a base64 PNG",
        ),
        (
            {
                "shapes": [
                    _shape(
                        "a",
                        [[0, 0], [1, 1]],
                        "mask",
                        mask=base64.b64encode(_png(np.ones((3, 3), np.uint8))).decode(),
                    )
                ]
            },
            r"shape 0: mask is 3x3 but its corners",
        ),
        ({"shapes": [_shape("a", [[0, 0], [1, 1], [2, 0]], "blob")]}, r"shape 0: unknown shape_type 'blob'"),
        ({"shapes": [_shape("a", [[0, 0], [1, 1], [2, 0]], group_id="g")]}, r"shape 0: 'group_id' must be"),
    ],
)
def test_malformed_files(tmp_path: Path, change: dict, message: str) -> None:
    path = _write(tmp_path, "bad", [])
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError, match=r"bad\.json: " + message):
        LabelmeDataset(tmp_path)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"shapes": [')
    with pytest.raises(UserError, match=r"labelme file .*a\.json is not valid JSON"):
        LabelmeDataset(tmp_path)
    (tmp_path / "a.json").unlink()
    with pytest.raises(UserError, match="no labelme .json files"):
        LabelmeDataset(tmp_path)
    _write(tmp_path, "gone", [_shape("a", [[0, 0], [4, 0], [4, 4]])], image=False)
    ds = LabelmeDataset(tmp_path)
    assert not ds.problems.problems  # a missing image is found when items are read (or checked)
    assert len(ds.load_targets(0)[0]) == 1  # the annotations need no image
    with pytest.raises(FileNotFoundError, match=r"gone\.png .*labelme file .*gone\.json, image id 0"):
        ds[0]
    (tmp_path / "gone.png").write_bytes(_png(np.zeros((16, 32, 3), np.uint8)))
    with pytest.raises(UserError, match=r"gone\.json: the image is 16x32 but .* say 32x32"):
        ds[0]


def test_coco_subset_as_labelme(tmp_path: Path, shared_data: Path) -> None:
    """Written by the test from the COCO polygons (one shape per polygon; an object's polygons share a
    group_id), the labelme folder loads to the instances of the COCO file."""
    ann_file, image_dir = coco_subset(shared_data, tmp_path / "subset.json")
    ann = json.loads(ann_file.read_text())
    names = {c["id"]: c["name"] for c in ann["categories"]}
    folder = tmp_path / "labelme"
    folder.mkdir()
    for im in ann["images"]:
        shapes = []
        for k, a in enumerate(x for x in ann["annotations"] if x["image_id"] == im["id"]):
            group = k if len(a["segmentation"]) > 1 else None
            for poly in a["segmentation"]:
                points = np.array(poly).reshape(-1, 2).tolist()
                shapes.append(_shape(names[a["category_id"]], points, group_id=group))
        record = {
            "shapes": shapes,
            "imagePath": os.path.relpath(image_dir / im["file_name"], folder),
            "imageData": None,
            "imageHeight": im["height"],
            "imageWidth": im["width"],
        }
        (folder / f"{Path(im['file_name']).stem}.json").write_text(json.dumps(record))
    ds = LabelmeDataset(folder)
    assert len(ds) == 6 and sum(ds.num_annotations(i) for i in range(len(ds))) == len(ann["annotations"])
    assert assert_same_instances(coco_instances(ann_file), dataset_instances(ds)) >= 0.99
    assert ds[0].image.shape[1:] == ds.image_size(0)


def test_convert_dataset_round_trip(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    """COCO -> labelme -> COCO with the CLI gives the same instances again; the images are copied."""
    ann_file, image_dir = coco_subset(shared_data, tmp_path / "subset.json")
    folder, back = tmp_path / "labelme", tmp_path / "back.json"
    assert cli_main(["convert-dataset", f"coco:{ann_file}:{image_dir}", str(folder), "--to", "labelme"]) == 0
    assert "(labelme folder): 6 images, 80 classes" in capsys.readouterr().out
    assert len(list(folder.glob("*.json"))) == 6 and (folder / "labels.txt").read_text().startswith(
        "person\n"
    )
    first = sorted(folder.glob("*.jpg"))[0]
    assert first.read_bytes() == (image_dir / first.name).read_bytes()
    assert cli_main(["convert-dataset", f"labelme:{folder}", str(back)]) == 0
    expected = coco_instances(ann_file)
    assert assert_same_instances(expected, coco_instances(back)) >= 0.99
    # the written folder as a dataset: the same classes in the same order
    ds = LabelmeDataset(folder)
    assert ds.class_names == [
        c["name"] for c in sorted(json.loads(ann_file.read_text())["categories"], key=lambda c: c["id"])
    ]
    # a folder that exists and is not empty is never overwritten
    assert cli_main(["convert-dataset", f"labelme:{folder}", str(folder), "--to", "labelme"]) == 1
    assert "folder is not empty; refusing to overwrite it" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_writer_keeps_holes_and_parts(tmp_path: Path) -> None:
    """An instance with a hole is written as a mask shape, one of several parts as grouped polygons:
    both read back pixel for pixel; images without a file are written as PNG."""
    source = ShapesDataset(3, seed=1)
    write_labelme(source, tmp_path / "shapes")
    back = LabelmeDataset(tmp_path / "shapes")
    assert back.class_names == source.class_names
    for i in range(3):
        want, got = source.load_targets(i)[0], back.load_targets(i)[0]
        assert (
            np.array_equal(want.masks.numpy(), got.masks.numpy())
            and want.labels.tolist() == got.labels.tolist()
        )
    np.testing.assert_allclose(back[0].image.numpy(), source[0].image.numpy(), atol=1 / 255)

    ring = np.zeros((1, 12, 12), np.uint8)
    ring[0, 2:10, 2:10] = 1
    ring[0, 5:7, 5:7] = 0
    two = np.zeros((12, 12), np.uint8)
    two[1:3, 1:3] = two[8:11, 6:9] = 1

    class Two:
        class_names, category_ids, image_ids = ["ring", "pair"], [1, 2], [0]
        num_classes = 2

        def __len__(self):
            return 1

        def image_size(self, i):
            return 12, 12

        def file_name(self, i):
            return "x.png"

        def load_targets(self, i):
            rles = [mask_util.encode(np.asfortranarray(m)) for m in (ring[0], two)]
            return targets_from_rles(rles, [1, 2], 12, 12), None

        def __getitem__(self, i):
            return Sample(torch.zeros(3, 12, 12), self.load_targets(i)[0], 0, "x.png")

    write_labelme(Two(), tmp_path / "two")
    shapes = json.loads((tmp_path / "two" / "x.json").read_text())["shapes"]
    assert [s["shape_type"] for s in shapes] == ["mask", "polygon", "polygon"]
    assert shapes[1]["group_id"] == shapes[2]["group_id"] == 1
    got = LabelmeDataset(tmp_path / "two").load_targets(0)[0].masks.numpy()
    np.testing.assert_array_equal(got, np.stack([ring[0], two]))


# ---- random corruption (hypothesis) -------------------------------------------------------------

_JUNK = st.sampled_from(
    [None, "x", "", -1, 0, 1e308, -1e308, float("nan"), float("inf"), [], {}, True, [1], [[1]]]
)
_COORD = st.one_of(
    st.floats(-40, 80), st.sampled_from([float("nan"), float("inf"), -1e300, 1e300, -5.0, 1e12])
)
_KINDS = st.sampled_from(
    ["polygon", "rectangle", "circle", "mask", "point", "line", "linestrip", "blob", None]
)


def _valid_folder(folder: Path) -> None:
    mask = base64.b64encode(_png(np.ones((4, 5), np.uint8))).decode()
    _write(
        folder,
        "a",
        [
            _shape("cat", [[2, 2], [10, 2], [10, 8]]),
            _shape("dog", [[12, 1], [20, 4]], "rectangle", group_id=1),
            _shape("dog", [[22, 1], [26, 4]], "rectangle", group_id=1),
            _shape("cat", [[3, 20], [7, 23]], "mask", mask=mask),
            _shape("cat", [[24, 24], [24, 28]], "circle"),
        ],
    )
    _write(
        folder,
        "b",
        [_shape("dog", [[0, 0], [31, 0], [31, 31]])],
        image=False,
        imageData=base64.b64encode(_png(np.zeros((32, 32, 3), np.uint8))).decode(),
    )


@st.composite
def _corruptions(draw) -> list:
    """A list of (what, arguments) changes to apply to the valid folder."""
    actions = []
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["truncate", "key", "delete", "points", "kind", "image", "mask", "data"]))
        name = draw(st.sampled_from(["a", "b"]))
        shape = draw(st.integers(0, 4))
        key = draw(
            st.sampled_from(
                [
                    "shapes",
                    "imagePath",
                    "imageHeight",
                    "imageWidth",
                    "imageData",
                    "label",
                    "points",
                    "shape_type",
                    "group_id",
                    "mask",
                ]
            )
        )
        points = draw(st.lists(st.lists(_COORD, min_size=2, max_size=2), max_size=5))
        actions.append((what, name, shape, key, draw(_JUNK), points, draw(_KINDS), draw(st.integers(0, 400))))
    return actions


def _apply(folder: Path, actions: list) -> None:
    for what, name, shape_index, key, junk, points, kind, cut in actions:
        path = folder / f"{name}.json"
        if what == "image":
            image = folder / f"{name}.png"
            if image.exists():
                image.write_bytes(image.read_bytes()[: cut // 4])  # truncated, or empty
            continue
        text = path.read_text()
        if what == "truncate":
            path.write_text(text[: cut % max(len(text), 1)])
            continue
        try:
            record = json.loads(text)
            shapes = record["shapes"]
            shape = shapes[shape_index % len(shapes)]
        except Exception:  # already broken by an earlier change
            continue
        top = key in ("shapes", "imagePath", "imageHeight", "imageWidth", "imageData")
        target = record if top else shape
        if what == "key":
            target[key] = junk
        elif what == "delete":
            target.pop(key, None)
        elif what == "points":
            shape["points"] = points
        elif what == "kind":
            shape["shape_type"] = kind
        elif what == "mask":
            shape["mask"] = base64.b64encode(_png(np.ones((cut % 7 + 1, 3), np.uint8))).decode()[:cut]
        elif what == "data":
            record["imageData"] = base64.b64encode(b"\x89PNG\r\n" + bytes(cut % 50)).decode()
        path.write_text(json.dumps(record))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_corruptions())
def test_random_corruption_is_reported(actions: list) -> None:
    """Whatever is broken, loading and reading every item either works or raises our documented
    error (UserError, FileNotFoundError) naming the file at fault."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _valid_folder(folder)
        _apply(folder, actions)
        names = ("a.json", "b.json", "a.png", "b.png")
        read_every_item(lambda: LabelmeDataset(folder), names=names, numbered=": shape ")


def test_check_item(tmp_path: Path) -> None:
    """`maskrcnn check-data`'s per-item checks: a missing image, one of another size than the JSON
    says, imageData that is no image, and an instance that covers no pixel."""
    check = pytest.importorskip("maskrcnn.data.check")
    triangle = [_shape("cat", [[2, 2], [10, 2], [10, 8]])]
    _write(tmp_path, "a", triangle, image=False)
    _write(tmp_path, "b", [_shape("cat", [[2.1, 2.1], [2.4, 2.1], [2.4, 2.4]])])  # covers no pixel centre
    (tmp_path / "b.png").write_bytes(_png(np.zeros((16, 32, 3), np.uint8)))
    bad_data = base64.b64encode(b"\x89PNG\r\n not really").decode()
    _write(tmp_path, "c", triangle, image=False, imageData=bad_data)
    ds = LabelmeDataset(tmp_path)
    found = {(p.kind, p.image_id, Path(p.file).name) for p in check.check_items(ds).problems}
    assert found == {
        ("missing_image", 0, "a.png"),
        ("image_size_mismatch", 1, "b.png"),
        ("zero_area", 1, "b.json"),
        ("unreadable_image", 2, "c.json"),
    }
