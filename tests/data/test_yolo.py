"""YoloDataset on hand-made folders (polygon and box lines, splits, hand-computed masks), on a YOLO
version of coco-mini images written by the test, `convert-dataset --to yolo` round trips, and
randomly corrupted folders (hypothesis)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskrcnn.cli import main as cli_main
from maskrcnn.data.outlines import join_loops, mask_outlines, polygon_area
from maskrcnn.data.specs import build_dataset
from maskrcnn.data.writing import write_yolo
from maskrcnn.data.yolo import YoloDataset, label_path
from maskrcnn.errors import UserError
from tests.helpers import (
    assert_same_instances,
    coco_instances,
    coco_subset,
    dataset_instances,
    read_every_item,
    run,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _image(path: Path, size=(32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 120, np.uint8)).save(path)


def _labels(image: Path, text: str) -> None:
    path = label_path(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _box(x1: int, y1: int, x2: int, y2: int, size=(32, 32)) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y1:y2, x1:x2] = True
    return m


def test_lines_and_splits(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    a, b, c = (tmp_path / p for p in ("images/train/a.png", "images/train/b.png", "images/val/c.jpg"))
    for image in (a, b, c):
        _image(image)
    _labels(
        a,
        "\n".join(
            [
                "0 0.0625 0.0625 0.3125 0.0625 0.3125 0.25 0.0625 0.25",  # 1: x 2..10, y 2..8
                "1 0.5 0.25 0.25 0.125",  # 2: a detection box cx cy w h: x 12..20, y 6..10
                "",
                "0 0.875 0.0 1.25 0.0 1.25 0.25 0.875 0.25",  # 4: partly outside: clipped to x 28..32
                "1 0.125 0.125 0.25 0.25",  # 5: box x 0..8, y 0..8
                "0 0.5 0.75 0.5 0.25",  # 6: box x 8..24, y 20..28
                "1 0.5 0.5 0.7 0.7 0.9 0.9",  # 7: collinear: no area, dropped
                "0 0.5 0.5 0.6 0",  # 8: box of zero height, dropped
                "1 1.5 1.5 2.0 1.5 2.0 2.0",  # 9: entirely outside, dropped
                "0 0.5 0.5",  # 10: one point, dropped
            ]
        )
        + "\n",
    )
    # b has no label file: a background image
    _labels(c, "1 0 0 0.5 0 0.5 0.5 0 0.5\n")
    ds = build_dataset(f"yolo:{tmp_path}")
    assert isinstance(ds, YoloDataset) and len(ds) == 3
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [1, 2]
    assert [ds.file_name(i) for i in range(3)] == [
        "images/train/a.png",
        "images/train/b.png",
        "images/val/c.jpg",
    ]
    s = ds[0]
    t = s.targets
    assert s.image.shape == (3, 32, 32) and t.labels.tolist() == [1, 2, 1, 2, 1]
    masks = t.masks.numpy().astype(bool)
    np.testing.assert_array_equal(masks[0], _box(2, 2, 10, 8))
    np.testing.assert_array_equal(masks[1], _box(12, 6, 20, 10))
    np.testing.assert_array_equal(masks[2], _box(28, 0, 32, 8))
    np.testing.assert_array_equal(masks[3], _box(0, 0, 8, 8))
    np.testing.assert_array_equal(masks[4], _box(8, 20, 24, 28))
    assert len(ds[1].targets) == 0
    problems = {(p.kind, p.annotation_id) for p in ds.problems.problems}
    assert problems == {
        ("box_outside_image", 4),
        ("zero_area", 7),
        ("zero_area", 8),
        ("box_entirely_outside_image", 9),
        ("polygon_too_few_points", 10),
        ("image_without_annotations", None),
    }
    assert all(p.file == str(label_path(a)) for p in ds.problems.problems if p.annotation_id is not None)

    val = build_dataset(f"yolo:{tmp_path}:val")
    assert len(val) == 1 and val.file_name(0) == "images/val/c.jpg"
    np.testing.assert_array_equal(val.load_targets(0)[0].masks[0].numpy().astype(bool), _box(0, 0, 16, 16))
    with pytest.raises(FileNotFoundError, match=r"no split 'test'.*entries: train, val"):
        build_dataset(f"yolo:{tmp_path}:test")


def test_layout_without_splits_and_names_list(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("names: [person, bicycle]\n")
    _image(tmp_path / "images/x.png", (10, 20))
    _labels(tmp_path / "images/x.png", "1 0 0 0.5 0 0.5 1 0 1\n")
    ds = YoloDataset(tmp_path)
    assert ds.class_names == ["person", "bicycle"] and ds.image_size(0) == (10, 20)
    np.testing.assert_array_equal(
        ds.load_targets(0)[0].masks[0].numpy().astype(bool), _box(0, 0, 10, 10, (10, 20))
    )
    assert ds.load_targets(0)[0].labels.tolist() == [2]


@pytest.mark.parametrize(
    "line, message",
    [
        ("0 0.1 0.1 0.5 zero 0.5 0.5", r"line 2: expected numbers"),
        ("2 0.1 0.1 0.5 0.1 0.5 0.5", r"line 2: class '2' is not a class index"),
        ("0.5 0.1 0.1 0.5 0.1 0.5 0.5", r"line 2: class '0.5' is not a class index"),
        ("0 0.1 0.1 0.5 0.1 0.5", r"line 2: 5 coordinates after the class"),
        ("1 0.1 nan 0.5 0.1 0.5 0.5", r"line 2: polygon coordinates must be finite"),
        ("1 0.5 0.5 -0.1 0.2", r"line 2: box .* negative width"),
    ],
)
def test_malformed_lines(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "data.yaml").write_text("names: [a, b]\n")
    _image(tmp_path / "images/a.png")
    _labels(tmp_path / "images/a.png", f"0 0 0 1 0 1 1\n{line}\n")
    with pytest.raises(UserError, match=r"labels/a\.txt " + message):
        YoloDataset(tmp_path)


def test_bad_yaml_and_missing_things(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.yaml"):
        YoloDataset(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [a, b\n")
    with pytest.raises(UserError, match=r"data\.yaml is not valid YAML"):
        YoloDataset(tmp_path)
    (tmp_path / "data.yaml").write_text("names: {0: a, x: b}\n")
    with pytest.raises(UserError, match=r"'names' keys must be class indices"):
        YoloDataset(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [a]\ntrain: images/train\n")
    with pytest.raises(FileNotFoundError, match=r"'train' folder .*images/train does not exist"):
        YoloDataset(tmp_path)
    _image(tmp_path / "images/train/a.png")
    (tmp_path / "images/train/a.png").write_bytes(b"not a png")
    ds = YoloDataset(tmp_path)
    with pytest.raises(UserError, match=r"a\.png: not an image file"):
        ds.load_targets(0)


def _yolo_lines_from_coco(ann: dict, image: dict, class_index: dict) -> str:
    """The test's own YOLO writer: one line per single-polygon annotation, coordinates / width, height
    (10 decimals: at the usual 6, a vertex can move by 1e-4 px, enough to flip a pixel whose centre
    lies on an edge, which is 1% of a 90-pixel object)."""
    lines = []
    for a in ann["annotations"]:
        if a["image_id"] == image["id"] and len(a["segmentation"]) == 1:
            xy = np.array(a["segmentation"][0]).reshape(-1, 2) / [image["width"], image["height"]]
            lines.append(" ".join([str(class_index[a["category_id"]]), *(f"{v:.10f}" for v in xy.ravel())]))
    return "\n".join(lines) + "\n"


def test_coco_subset_as_yolo(tmp_path: Path, shared_data: Path) -> None:
    """YOLO lines written by the test from the COCO polygons load to the COCO file's instances."""
    ann_file, image_dir = coco_subset(shared_data, tmp_path / "subset.json")
    ann = json.loads(ann_file.read_text())
    categories = sorted(ann["categories"], key=lambda c: c["id"])
    class_index = {c["id"]: i for i, c in enumerate(categories)}
    root = tmp_path / "yolo"
    names = "".join(f"  {i}: {c['name']}\n" for i, c in enumerate(categories))
    (root / "images/val").mkdir(parents=True)
    (root / "data.yaml").write_text(f"val: images/val\nnames:\n{names}")
    for im in ann["images"]:
        (root / "images/val" / im["file_name"]).symlink_to(image_dir / im["file_name"])
        _labels(root / "images/val" / im["file_name"], _yolo_lines_from_coco(ann, im, class_index))
    ds = build_dataset(f"yolo:{root}:val")
    expected = coco_instances(ann_file)
    anns_of = {
        im["file_name"]: [a for a in ann["annotations"] if a["image_id"] == im["id"]] for im in ann["images"]
    }
    single = {  # the annotations of one polygon (a YOLO line holds one)
        name: [inst for inst, a in zip(insts, anns_of[name]) if len(a["segmentation"]) == 1]
        for name, insts in expected.items()
    }
    assert sum(map(len, single.values())) == len(ann["annotations"]) - 2
    assert assert_same_instances(single, dataset_instances(ds)) >= 0.99


def test_convert_dataset_round_trip(tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture) -> None:
    """COCO -> YOLO -> COCO with the CLI gives the same instances again (objects of several polygons
    too: one polygon joined by bridges)."""
    ann_file, image_dir = coco_subset(shared_data, tmp_path / "subset.json")
    folder, back = tmp_path / "yolo", tmp_path / "back.json"
    args = ["convert-dataset", f"coco:{ann_file}:{image_dir}", str(folder), "--to", "yolo", "--split", "val"]
    assert cli_main(args) == 0
    assert "(yolo folder): 6 images, 80 classes" in capsys.readouterr().out
    assert sorted(p.name for p in (folder / "labels/val").iterdir())[0] == "000000000139.txt"
    assert cli_main(["convert-dataset", f"yolo:{folder}:val", str(back)]) == 0
    lowest = assert_same_instances(coco_instances(ann_file), coco_instances(back))
    assert lowest >= 0.99
    assert cli_main(["convert-dataset", f"coco:{ann_file}:{image_dir}", str(back), "--split", "val"]) == 1
    assert "only written by the yolo format" in capsys.readouterr().err


def test_outlines_are_exact() -> None:
    """A mask's pixel outlines, joined into one polygon, rasterise back to the same pixels (holes,
    parts touching at a corner, several parts)."""
    from pycocotools import mask as mu

    rng = np.random.default_rng(0)
    for _ in range(30):
        mask = rng.random((14, 17)) < 0.45
        loops = mask_outlines(mask)
        assert sum(polygon_area(loop) for loop in loops) == mask.sum()
        polygon = join_loops(loops)
        got = mu.decode(mu.frPyObjects([polygon.ravel().tolist()], 14, 17))[:, :, 0]
        np.testing.assert_array_equal(got.astype(bool), mask)


def test_cli_error_line(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    _image(tmp_path / "images/a.png")
    _labels(tmp_path / "images/a.png", "0 0 0 1 0 1 1\n3 0 0 1 0 1 1\n")
    result = run("show-data", f"yolo:{tmp_path}", "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = "class '3' is not a class index of data.yaml's names (1 classes)"
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}/labels/a.txt line 2: {message}"]


def test_writer_refuses_a_bad_split(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="plain folder name"):
        write_yolo(build_dataset("shapes:1"), tmp_path / "out", split="a/b")
    assert not (tmp_path / "out").exists()


# ---- random corruption (hypothesis) -------------------------------------------------------------

_TOKENS = st.sampled_from(
    ["0", "1", "2", "-1", "0.5", "1.5", "-0.2", "nan", "inf", "1e300", "-1e300", "x", "", "3.0"]
)


def _valid_folder(root: Path) -> None:
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n")
    for name in ("train/a", "train/b", "val/c"):
        _image(root / f"images/{name}.png")
    _labels(root / "images/train/a.png", "0 0.1 0.1 0.5 0.1 0.5 0.5\n1 0.5 0.5 0.2 0.2\n")
    _labels(root / "images/val/c.png", "1 0 0 1 0 1 1 0 1\n")


@st.composite
def _corruptions(draw) -> list:
    actions = []
    for _ in range(draw(st.integers(1, 3))):
        what = draw(st.sampled_from(["line", "truncate_label", "yaml", "image", "delete_label", "names"]))
        tokens = draw(st.lists(_TOKENS, max_size=9))
        actions.append(
            (what, draw(st.sampled_from(["train/a", "train/b", "val/c"])), tokens, draw(st.integers(0, 300)))
        )
    return actions


def _apply(root: Path, actions: list) -> None:
    for what, name, tokens, cut in actions:
        image = root / f"images/{name}.png"
        labels = label_path(image)
        if what == "line":
            old = labels.read_text() if labels.exists() else ""
            _labels(image, old + " ".join(tokens) + "\n")
        elif what == "truncate_label" and labels.exists():
            labels.write_text(labels.read_text()[: cut % 40])
        elif what == "delete_label" and labels.exists():
            labels.unlink()
        elif what == "yaml":
            text = (root / "data.yaml").read_text()
            (root / "data.yaml").write_text(text[: cut % max(len(text), 1)])
        elif what == "names":
            (root / "data.yaml").write_text(f"names: {' '.join(tokens) or '[]'}\n")
        elif what == "image" and image.exists():
            image.write_bytes(image.read_bytes()[: cut // 3])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_corruptions())
def test_random_corruption_is_reported(actions: list) -> None:
    """Whatever is broken, loading and reading every item either works or raises our documented
    error (UserError, FileNotFoundError) naming the file at fault."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _valid_folder(root)
        _apply(root, actions)
        names = ("data.yaml", "a.png", "b.png", "c.png", "a.txt", "b.txt", "c.txt", tmp)
        read_every_item(lambda: YoloDataset(root), names=names, numbered=".txt line ")


def test_check_item(tmp_path: Path) -> None:
    """`maskrcnn check-data`'s per-item checks: a truncated image, and a label line that covers no
    pixel at the image's size (named by its line number)."""
    check = pytest.importorskip("maskrcnn.data.check")
    (tmp_path / "data.yaml").write_text("names: [a]\n")
    for name in ("a", "b"):
        _image(tmp_path / f"images/{name}.png")
    _labels(tmp_path / "images/a.png", "0 0 0 0.5 0 0.5 0.5\n0 0.01 0.01 0.02 0.01 0.02 0.02\n")
    (tmp_path / "images/b.png").write_bytes((tmp_path / "images/b.png").read_bytes()[:60])
    ds = YoloDataset(tmp_path)
    found = {(p.kind, p.image_id, p.annotation_id, Path(p.file).name) for p in check.check_items(ds).problems}
    assert found == {("zero_area", 0, 2, "a.txt"), ("unreadable_image", 1, None, "b.png")}
