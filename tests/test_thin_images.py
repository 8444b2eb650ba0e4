"""Images too thin or too large for the model, in every command (issue 19, item 4): predict skips them
with one `error:` line and writes the other images' predictions, check-data reports them (fatal: train
stops before its first step), evaluate and `Predictor.predict` name them, `--max-pixels` refuses large
images from their header (suggesting --tile) while a 12000x9000 photograph passes. The server's 422
is tested in tests/serve/test_thin_upload.py."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn import cli
from maskrcnn.files import ImageReadError, read_image_size
from maskrcnn.image_limits import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    ImageShapeError,
    image_shape_problem,
    pillow_pixel_limit,
)
from tests.helpers import small_photo

THIN = {"strip.png": (1, 20000), "column.png": (20000, 1)}  # name -> (height, width)


def write_images(folder: Path, shared_data: Path, *thin: str) -> list[str]:
    """Two small photos (good_a.jpg, good_b.png) and the thin images named -> the good names."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small_photo(shared_data, (160, 120))).save(folder / "good_a.jpg")
    Image.fromarray(small_photo(shared_data, (120, 150))).save(folder / "good_b.png")
    for name in thin:
        h, w = THIN[name]
        Image.new("RGB", (w, h), (200, 40, 40)).save(folder / name)
    return ["good_a.jpg", "good_b.png"]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_predict_skips_a_thin_image_and_writes_the_others(tmp_path, shared_data, tiny_weights, capsys):
    good = write_images(tmp_path / "in", shared_data, *THIN)
    args = ["predict", "--weights", str(tiny_weights), "--no-progress", "--no-overlays"]
    found = []
    for thin in THIN:  # 1 x 20000, then 20000 x 1, each with the good images
        out = tmp_path / thin
        inputs = [str(tmp_path / "in" / name) for name in (thin, *good)]
        assert cli.main([*args, "--out", str(out), *inputs]) == 1
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and "Traceback" not in err
        (line,) = error_lines(err)
        assert inputs[0] in line and "too thin" in line and "aspect ratio of 20000:1" in line
        records = json.loads((out / "predictions.json").read_text())
        assert sorted({r["file_name"] for r in records}) == good and len(records) == 10
        found.append([{k: v for k, v in r.items() if k != "image_id"} for r in records])
    assert found[0] == found[1]


def test_predict_max_pixels_names_the_file_and_suggests_tiles(tmp_path, shared_data, tiny_weights, capsys):
    write_images(tmp_path / "in", shared_data)
    photo = str(tmp_path / "in" / "good_a.jpg")  # 160 x 120 = 19200 pixels
    args = ["predict", "--weights", str(tiny_weights), "--no-progress", "--out", str(tmp_path / "out")]
    assert cli.main([*args, "--max-pixels", "19199", photo]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert photo in line and "160x120 = 19200 pixels" in line and "--max-pixels" in line and "--tile" in line
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == []
    assert cli.main([*args, "--max-pixels", "19200", photo]) == 0
    assert cli.main([*args, "--max-pixels", "-1", photo]) == 1
    assert "--max-pixels" in error_lines(capsys.readouterr().err)[-1]


def _png_header(width: int, height: int) -> bytes:
    """A grayscale PNG that declares width x height pixels (its data is a few zero rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 2, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def test_the_default_limit_lets_a_12000x9000_photo_through(tmp_path):
    assert image_shape_problem(9000, 12000, max_pixels=DEFAULT_MAX_PIXELS) is None
    kind, reason = image_shape_problem(15000, 14000, max_pixels=DEFAULT_MAX_PIXELS)
    assert kind == "too_large" and "14000x15000 = 210000000 pixels" in reason and "--tile" in reason
    # 13000 x 14500 = 188.5 MP: over Pillow's own refusal (2 x 89.5 MP), under ours
    path = tmp_path / "large.png"
    path.write_bytes(_png_header(14500, 13000))
    with pytest.raises(ImageReadError, match="too large"):
        read_image_size(path)
    with pillow_pixel_limit(DEFAULT_MAX_PIXELS):
        assert read_image_size(path) == (13000, 14500)
    assert image_shape_problem(13000, 14500, max_pixels=DEFAULT_MAX_PIXELS) is None


def test_the_thin_rule():
    assert image_shape_problem(1, MAX_ASPECT_RATIO) is None
    assert image_shape_problem(1, MAX_ASPECT_RATIO + 1)[0] == "thin"
    assert image_shape_problem(7, 700) is None and image_shape_problem(7, 701)[0] == "thin"
    assert image_shape_problem(0, 5)[0] == "thin"
    # the model's resize makes a side < 1 px: thin, whatever the ratio
    assert image_shape_problem(2, 150, resized=(0, 128))[0] == "thin"


def test_predictor_names_a_thin_image(tiny_weights):
    predictor = maskrcnn.load(str(tiny_weights))
    good = torch.rand(3, 40, 60)
    with pytest.raises(ImageShapeError, match="image 1 of the call: image is 20000x1") as info:
        predictor.predict([good, torch.rand(3, 1, 20000)])
    assert info.value.kind == "thin"
    assert predictor.input_size(1, 100) == (1, 192)  # the limit: 1 px high once resized
    assert len(predictor.predict([np.zeros((1, 100, 3), np.uint8)])) == 1


def _coco_with_a_thin_image(folder: Path, shared_data: Path) -> str:
    good = write_images(folder, shared_data, "strip.png")
    images = [
        {"id": 1, "file_name": good[0], "height": 120, "width": 160},
        {"id": 2, "file_name": "strip.png", "height": 1, "width": 20000},
    ]
    square = [[10.0, 10.0, 50.0, 10.0, 50.0, 50.0, 10.0, 50.0]]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": square, "bbox": [10, 10, 40, 40]},
        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": [[0, 0, 900, 0, 900, 1, 0, 1]]},
    ]
    for a in annotations:
        a.update(iscrowd=0, area=1.0, bbox=a.get("bbox", [0, 0, 900, 1]))
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]  # the tiny model's classes
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(coco))
    return f"coco:{folder / 'instances.json'}:{folder}"


def test_check_data_reports_a_thin_image_and_train_never_meets_it(
    tmp_path, shared_data, tiny_weights, capsys
):
    spec = _coco_with_a_thin_image(tmp_path / "data", shared_data)
    assert cli.main(["check-data", spec, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "fatal: 1 x image too thin for the model" in out
    assert str(tmp_path / "data" / "strip.png") in out and "aspect ratio of 20000:1" in out
    run = tmp_path / "run"
    train = ["train", "--config", "shapes_demo", "--train-data", spec, "--out", str(run), "--no-progress"]
    assert cli.main(train) == 1
    captured = capsys.readouterr()
    assert len(error_lines(captured.err)) == 1 and "image too thin" in captured.err
    assert not (run / "model_final.pt").exists() and not (run / "checkpoint.pt").exists()
    # evaluate stops at it with one line naming the file (a dataset's image, not an input to skip)
    evaluate = ["evaluate", "--weights", str(tiny_weights), "--data", spec, "--out", str(tmp_path / "report")]
    assert cli.main([*evaluate, "--no-progress"]) == 1
    captured = capsys.readouterr()
    (line,) = error_lines(captured.err)
    assert "strip.png: image is 20000x1" in line and "too thin" in line
