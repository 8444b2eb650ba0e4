"""`maskrcnn predict --to labelme|coco|yolo|cvat`: a real model's predictions on coco-mini photos (one
of them turned by its EXIF orientation) written as an annotation set, read back through our own
dataset spec of that format: the same images and the same instances as predictions.json."""

from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from maskrcnn import cli
from maskrcnn.data.specs import build_dataset
from maskrcnn.inputs import load_image
from tests.helpers import assert_same_instances, dataset_instances

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SPECS = {
    "labelme": "labelme:{out}/labelme",
    "coco": "coco:{out}/coco/instances.json:{out}/coco/images",
    "yolo": "yolo:{out}/yolo",
    "cvat": "cvat:{out}/cvat",
}


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory) -> Path:
    """A folder of 2 coco-mini photos and `turned.jpg`, a small photo stored landscape (160 x 120)
    whose EXIF orientation 6 shows it portrait (120 x 160)."""
    folder = tmp_path_factory.mktemp("prelabel-in")
    photos = sorted((shared_data / "coco-mini/val2017").iterdir())[:2]
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(photos[0]) as im:
        im.convert("RGB").resize((160, 120)).save(folder / "turned.jpg", exif=exif, quality=95)
    return folder


def _expected(out: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Written file name -> (class, mask) of every prediction with pixels, from predictions.json."""
    found: dict[str, list] = {}
    for r in json.loads((out / "predictions.json").read_text()):
        name = "turned.png" if r["file_name"] == "turned.jpg" else r["file_name"]
        mask = mask_util.decode({**r["segmentation"], "counts": r["segmentation"]["counts"].encode()})
        if mask.any():
            found.setdefault(name, []).append((["cat", "dog"][r["category_id"] - 1], mask.astype(bool)))
    return found


@pytest.fixture(scope="module")
def prelabelled(tiny_weights, inputs, tmp_path_factory) -> tuple[Path, str]:
    """One `predict --to labelme,coco,yolo,cvat` run of the tiny model: (its --out, its stdout)."""
    out = tmp_path_factory.mktemp("prelabel") / "out"
    args = ["predict", "--no-progress", "--no-overlays", "--weights", str(tiny_weights), "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert cli.main([*args, "--to", ",".join(SPECS), str(inputs)]) == 0
    return out, stdout.getvalue()


@pytest.mark.parametrize("to", list(SPECS))
def test_predictions_read_back_as_the_same_instances(to, prelabelled, inputs):
    out, stdout = prelabelled
    dataset = build_dataset(SPECS[to].format(out=out))
    assert dataset.class_names == ["cat", "dog"]
    expected = _expected(out)
    count = sum(map(len, expected.values()))
    assert count >= 12  # the tiny model's 5 per image, less any whose mask covers no pixel
    assert f"wrote {out / to} ({to} pre-labels): 3 images, {count} instances" in stdout
    assert assert_same_instances(expected, dataset_instances(dataset), min_iou=0.95) >= 0.95
    for index in range(len(dataset)):  # each image is the one predicted on (as displayed)
        name = Path(dataset.file_name(index)).name
        original = inputs / ("turned.jpg" if name == "turned.png" else name)
        assert torch.equal(dataset[index].image, load_image(original)), name
    if to == "cvat":
        root = ET.parse(out / "cvat/annotations.xml").getroot()
        assert root.findtext("version") == "1.1"
        sources = {s.get("source") for tag in ("polygon", "mask") for s in root.iter(tag)}
        assert sources == {"auto"}
    if to == "labelme":
        record = json.loads((out / "labelme/turned.json").read_text())
        assert (record["imagePath"], record["imageHeight"], record["imageWidth"]) == ("turned.png", 160, 120)
        assert {s["shape_type"] for s in record["shapes"]} <= {"polygon", "mask"}


def test_an_existing_prelabel_folder_or_unknown_format_is_refused_before_any_work(
    tiny_weights, inputs, tmp_path, capsys
):
    out = tmp_path / "out"
    (out / "yolo").mkdir(parents=True)
    (out / "yolo/data.yaml").write_text("names: [mine]\n")
    args = ["predict", "--no-progress", "--weights", str(tiny_weights), "--out", str(out), "--to"]
    assert cli.main([*args, "coco,yolo", str(inputs)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out / 'yolo'}: exists and is not empty") and err.count("\n") == 1
    assert cli.main([*args, "labelme,via", str(inputs)]) == 1
    assert capsys.readouterr().err.startswith("error: --to: unknown format 'via'; expected labelme, coco")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert cli.main([*args, "coco", str(video)]) == 1
    assert "--to writes the predictions of image inputs, and there are none" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["yolo"]  # no predictions.json, no coco/
    assert (out / "yolo/data.yaml").read_text() == "names: [mine]\n"
