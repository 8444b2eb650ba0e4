"""Corrupted datasets, at random (hypothesis): COCO, VIA and mask-folder datasets of tiny images
written by the tests, broken in every way a file can be (truncated JSON, wrong types, missing
keys, bad polygons, NaN, negative and huge coordinates, unknown categories, missing, truncated and
garbage images and masks).

Two properties for each format:
- whatever the corruption, building the dataset, reading every item and `maskrcnn check-data`
  either work or raise our documented error (a UserError or FileNotFoundError) naming the file;
  nothing else escapes (no KeyError, TypeError, numpy or pycocotools error);
- each planted problem of a known kind is reported by the check with that kind and its ids.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from maskrcnn import cli
from maskrcnn.data import CocoDataset, MaskFolderDataset, ViaDataset
from maskrcnn.data.check import check_dataset_files
from maskrcnn.data.problems import ProblemLog
from tests.helpers import DOCUMENTED_ERRORS, assert_documented_error

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SIZES = {"a.png": (32, 32), "b.jpg": (24, 32), "c.png": (32, 20)}  # file -> (height, width)


def _write_image(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _exercise(build: Callable, names: list[str], spec: str) -> ProblemLog | None:
    """Build the dataset, read every item, check it, run `check-data` on it: each step works or
    raises a documented error whose message names one of `names` (the dataset's files)."""
    try:
        dataset = build()
    except DOCUMENTED_ERRORS as e:
        assert_documented_error(e, names=names)
        assert cli.main(["check-data", spec, "--no-progress"]) == 1
        return None
    for index in range(len(dataset)):
        for read in (dataset.load_targets, dataset.__getitem__):
            try:
                read(index)
            except DOCUMENTED_ERRORS as e:
                assert_documented_error(e, names=names)
    log = check_dataset_files(dataset)
    assert cli.main(["check-data", spec, "--no-progress"]) == (1 if log.fatal else 0)
    return log


def _found(log: ProblemLog | None) -> set[tuple]:
    return {(p.kind, p.image_id, p.annotation_id) for p in (log.problems if log else [])}


# ---- random mutations of a JSON document ------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def _mutate(data: st.DataObject, doc) -> str:
    """Apply 1-3 random mutations to `doc`, each at the end of a random walk down its containers:
    a value replaced by a random JSON value (mostly) or a key or element deleted; then now and then
    cut the text short. Returns the JSON text to write. (The walk draws from a Random seeded by
    hypothesis: its own draws favour the first choices and would stop most walks at the top.)"""
    rnd = data.draw(st.randoms(use_true_random=True))
    for _ in range(rnd.randint(1, 3)):
        node = doc
        while isinstance(node, (dict, list)) and node:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            inner = [k for k in keys if isinstance(node[k], (dict, list)) and node[k]]
            if inner and rnd.random() < 0.75:
                node = node[rnd.choice(inner)]
                continue
            key = rnd.choice(keys)
            if rnd.random() < 0.8:
                node[key] = data.draw(JSON_VALUES)
            else:
                del node[key]
            break
    text = json.dumps(doc)
    if rnd.random() < 0.15:
        text = text[: rnd.randrange(len(text))]
    return text


# ---- COCO ---------------------------------------------------------------------------------------

TRI = [4.0, 4.0, 14.0, 4.0, 9.0, 12.0]


def _coco_doc() -> dict:
    images = [
        {"id": i + 1, "file_name": f, "height": h, "width": w} for i, (f, (h, w)) in enumerate(SIZES.items())
    ]
    anns = [
        {"id": k + 1, "image_id": k % 3 + 1, "category_id": k % 2 + 1, "iscrowd": 0, "bbox": [4, 4, 10, 8],
         "segmentation": [[v + k for v in TRI]]}
        for k in range(8)
    ]  # fmt: skip
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def _coco_files(root: Path, doc: dict, text: str | None = None) -> tuple[Callable, list[str], str]:
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        _write_image(root / "images" / name, h, w, seed=i)
    (root / "ann.json").write_text(json.dumps(doc) if text is None else text)
    spec = f"coco:{root / 'ann.json'}:{root / 'images'}"
    return (lambda: CocoDataset(root / "ann.json", root / "images")), ["ann.json", *SIZES], spec


@SETTINGS
@given(data=st.data())
def test_coco_random_corruption_raises_only_documented_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        doc = _coco_doc()
        text = _mutate(data, doc)
        _exercise(*_coco_files(Path(tmp), doc, text))


# annotation corruptions: (name, how, expected kind; None: found only with a readable image)
ANN_CORRUPTIONS = {
    "short polygon": (lambda a: a.update(segmentation=[[1.0, 1.0, 5.0, 5.0]]), "polygon_too_few_points"),
    "NaN": (lambda a: a["segmentation"][0].__setitem__(1, float("nan")), "malformed"),
    "huge": (lambda a: a["segmentation"][0].__setitem__(0, 1e300), "box_outside_image"),
    "negative": (lambda a: a["segmentation"][0].__setitem__(0, -7.0), "box_outside_image"),
    "outside": (lambda a: a.update(segmentation=[[v + 500 for v in TRI]]), "box_entirely_outside_image"),
    "unknown category": (lambda a: a.update(category_id=77), "unknown_category"),
    "missing key": (lambda a: a.pop("segmentation"), "malformed"),
    "wrong type": (lambda a: a.update(category_id="1"), "malformed"),
    "no area": (lambda a: a.update(segmentation=[[2.0, 2.0, 6.0, 2.0, 10.0, 2.0]]), "zero_area"),
}
FILE_CORRUPTIONS = ("missing", "truncated", "garbage", "size", "height type")


def _size_readable(path: Path) -> bool:
    """Whether Pillow reads the image size from the (possibly damaged) file's header."""
    try:
        with Image.open(path) as im:
            return im.size > (0, 0)
    except (OSError, ValueError):
        return False


def _corrupt_file(path: Path, how: str) -> str:
    """Break an image file; returns the kind the check reports."""
    if how == "missing":
        path.unlink()
        return "missing_image"
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"not an image at all" * 3)
    return "unreadable_image"


@SETTINGS
@given(
    anns=st.lists(st.sampled_from(sorted(ANN_CORRUPTIONS)), min_size=8, max_size=8),
    files=st.lists(st.sampled_from((None, *FILE_CORRUPTIONS)), min_size=3, max_size=3),
)
def test_coco_planted_problems_are_reported(anns, files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc = _coco_doc()
        expected = set()
        for ann, name in zip(doc["annotations"], anns):
            how, kind = ANN_CORRUPTIONS[name]
            how(ann)
            expected.add((kind, ann["image_id"], ann["id"]))
        build, names, spec = _coco_files(root, doc)
        for image, how in zip(doc["images"], files):
            if how == "size":
                image["height"] += 3
                expected.add(("image_size_mismatch", image["id"], None))
            elif how == "height type":  # the image record is left out, and its annotations with it
                image["height"] = str(image["height"])
                expected = {e for e in expected if e[1] != image["id"]} | {("malformed", image["id"], None)}
            elif how:
                expected.add((_corrupt_file(root / "images" / image["file_name"], how), image["id"], None))
        (root / "ann.json").write_text(json.dumps(doc))
        log = _exercise(build, names, spec)
        assert expected <= _found(log), sorted(expected - _found(log))


# ---- VIA ----------------------------------------------------------------------------------------


def _via_doc() -> dict:
    doc = {}
    for i, name in enumerate(SIZES):
        poly = {"name": "polygon", "all_points_x": [4, 14, 9], "all_points_y": [4, 4, 12]}
        rect = {"name": "rect", "x": 2, "y": 3, "width": 6, "height": 5}
        circle = {"name": "circle", "cx": 10, "cy": 10, "r": 4}
        regions = [
            {"shape_attributes": s, "region_attributes": {"name": "ab"[j % 2]}}
            for j, s in enumerate((poly, rect, circle))
        ]
        doc[f"{name}{i}"] = {"filename": name, "size": i, "regions": regions}
    return doc


def _via_files(root: Path, doc: dict, text: str | None = None) -> tuple[Callable, list[str], str]:
    for i, (name, (h, w)) in enumerate(SIZES.items()):
        _write_image(root / name, h, w, seed=i)
    (root / "via_region_data.json").write_text(json.dumps(doc) if text is None else text)
    return (lambda: ViaDataset(root)), ["via_region_data.json", *SIZES], f"via:{root}"


@SETTINGS
@given(data=st.data())
def test_via_random_corruption_raises_only_documented_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        doc = _via_doc()
        text = _mutate(data, doc)
        _exercise(*_via_files(Path(tmp), doc, text))


def _set(key: str, index: int, value):
    return lambda shape: shape[key].__setitem__(index, value)


# region corruptions on the polygon (region 0): (how, kind, needs the image's size)
REGION_CORRUPTIONS = {
    "short polygon": (
        lambda s: s.update(all_points_x=[1, 5], all_points_y=[1, 5]),
        "polygon_too_few_points",
        False,
    ),
    "NaN": (_set("all_points_x", 1, float("nan")), "malformed", False),
    "huge": (_set("all_points_y", 0, 1e300), "box_outside_image", True),
    "string": (_set("all_points_y", 2, "12"), "malformed", False),
    "lengths differ": (lambda s: s["all_points_y"].pop(), "malformed", False),
    "missing key": (lambda s: s.pop("all_points_x"), "malformed", False),
    "unsupported": (lambda s: s.update(name="point"), "malformed", False),
    "negative": (_set("all_points_x", 0, -6), "box_outside_image", True),
    "outside": (lambda s: s.update(all_points_x=[504, 514, 509]), "box_entirely_outside_image", True),
    "no area": (lambda s: s.update(all_points_y=[4, 4, 4]), "zero_area", True),
}


@SETTINGS
@given(
    regions=st.lists(st.sampled_from(sorted(REGION_CORRUPTIONS)), min_size=3, max_size=3),
    rect_width=st.sampled_from([6, 0]),
    files=st.lists(st.sampled_from((None, "missing", "truncated", "garbage")), min_size=3, max_size=3),
)
def test_via_planted_problems_are_reported(regions, rect_width, files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        doc = _via_doc()
        build, names, spec = _via_files(root, doc)
        expected = set()
        for i, (entry, name, how) in enumerate(zip(doc.values(), regions, files)):
            change, kind, needs_size = REGION_CORRUPTIONS[name]
            change(entry["regions"][0]["shape_attributes"])
            if how:
                expected.add((_corrupt_file(root / entry["filename"], how), i, None))
            if not needs_size or _size_readable(root / entry["filename"]):  # else nothing to clip against
                expected.add((kind, i, 0))
            if rect_width == 0 and i == 1:
                entry["regions"][1]["shape_attributes"]["width"] = 0
                expected.add(("zero_area", i, 1))
        (root / "via_region_data.json").write_text(json.dumps(doc))
        log = _exercise(build, names, spec)
        assert expected <= _found(log), sorted(expected - _found(log))


# ---- mask folders -------------------------------------------------------------------------------

FOLDERS = ("f0", "f1", "f2", "f3")


def _mask_folders(root: Path) -> None:
    for i, name in enumerate(FOLDERS):
        h, w = (24, 32) if i % 2 else (32, 32)
        _write_image(root / name / "images" / f"{name}.png", h, w, seed=i)
        (root / name / "masks").mkdir()
        for k in range(2):
            mask = np.zeros((h, w), np.uint8)
            mask[2 + 8 * k : 8 + 8 * k, 3:12] = 255
            Image.fromarray(mask).save(root / name / "masks" / f"m{k}.png")


def _mask_spec(root: Path) -> tuple[Callable, list[str], str]:
    names = [*FOLDERS, "m0.png", "m1.png", str(root)]
    return (lambda: MaskFolderDataset(root)), names, f"masks:{root}"


# folder corruptions: (how, kind, the file the problem names)
def _folder_corruption(root: Path, name: str, how: str) -> tuple[str, Path]:
    image, mask = root / name / "images" / f"{name}.png", root / name / "masks" / "m1.png"
    if how == "no image":
        image.unlink()
        return "missing_image", image.parent
    if how == "truncated image":
        return _corrupt_file(image, "truncated"), image
    if how == "garbage mask":
        _corrupt_file(mask, "garbage")
        return "unreadable_image", mask
    if how == "mask size":
        Image.fromarray(np.full((5, 7), 255, np.uint8)).save(mask)
        return "mask_size_mismatch", mask
    if how == "empty mask":
        with Image.open(image) as im:
            Image.fromarray(np.full((im.height, im.width), 100, np.uint8)).save(mask)  # <= 127
        return "zero_area", mask
    for m in (root / name / "masks").iterdir():
        m.unlink()
    return "image_without_annotations", image


FOLDER_CORRUPTIONS = (
    None,
    "no image",
    "truncated image",
    "garbage mask",
    "mask size",
    "empty mask",
    "no masks",
)


@SETTINGS
@given(corruptions=st.lists(st.sampled_from(FOLDER_CORRUPTIONS), min_size=4, max_size=4))
def test_mask_folder_planted_problems_are_reported(corruptions):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _mask_folders(root)
        expected = {_folder_corruption(root, name, how) for name, how in zip(FOLDERS, corruptions) if how}
        log = _exercise(*_mask_spec(root))
        found = {(p.kind, Path(p.file)) for p in (log.problems if log else [])}
        assert expected <= found, sorted(expected - found)


@SETTINGS
@given(data=st.data())
def test_mask_folder_random_file_damage_raises_only_documented_errors(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _mask_folders(root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        for path in data.draw(st.lists(st.sampled_from(files), min_size=1, max_size=4, unique=True)):
            how = data.draw(st.sampled_from(["delete", "truncate", "garbage", "resize", "mode"]))
            if how == "delete":
                path.unlink()
            elif how == "truncate":
                path.write_bytes(path.read_bytes()[: data.draw(st.integers(0, path.stat().st_size - 1))])
            elif how == "garbage":
                path.write_bytes(data.draw(st.binary(max_size=64)))
            elif how == "resize":
                Image.fromarray(np.full((3, 4), 255, np.uint8)).save(path, format="PNG")
            else:  # a 16-bit mask, or an RGBA one
                mode = data.draw(st.sampled_from(["I;16", "RGBA", "1", "P"]))
                Image.new(mode, (32, 24)).save(path, format="PNG")
        _exercise(*_mask_spec(root))
