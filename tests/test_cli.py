"""The command line as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from tests.helpers import run

from .model.tv_reference import torchvision_model

CONSOLE_SCRIPT = Path(sys.executable).parent / "maskrcnn"
# a square image (612 x 612 -> 800 x 800 at the default size): the cheapest full-size prediction
IMAGE = "coco-mini/val2017/000000165518.jpg"


def test_help_lists_the_commands():
    # the installed console script (each process pays for importing torch: keep their number low)
    result = subprocess.run([str(CONSOLE_SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: maskrcnn" in result.stdout
    for name in ("convert", "predict"):
        assert name in result.stdout


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """`maskrcnn convert` run on a saved torchvision v1 state dict (random but decisive weights)."""
    folder = tmp_path_factory.mktemp("convert")
    tv_path, out_path = folder / "tv.pth", folder / "ours.pt"
    torch.save(torchvision_model("v1").state_dict(), tv_path)
    result = run("convert", "--from", "torchvision-v1", str(tv_path), str(out_path))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out_path}" in result.stdout and "90 classes" in result.stdout
    tv_path.unlink()  # 170 MB; not needed any more
    return out_path


def test_convert_writes_a_loadable_checkpoint(converted):
    from maskrcnn.checkpoints import read_checkpoint

    ckpt = read_checkpoint(converted)
    assert ckpt["format"] == "maskrcnn"
    assert ckpt["config"]["model"]["num_classes"] == 90
    assert ckpt["config"]["model"]["anchors"]["image_size_strides"] is True  # the torchvision_v1 preset
    assert ckpt["class_names"][0] == "person" and len(ckpt["class_names"]) == 90
    # torchvision's 91 mask channels lose the background one
    assert ckpt["model"]["roi_heads.mask.head.predictor.weight"].shape[0] == 90


def test_predict_writes_coco_results(converted, shared_data, tmp_path):
    image = shared_data / IMAGE
    out = tmp_path / "out"
    result = run("predict", "--weights", str(converted), "--out", str(out), str(image))
    assert result.returncode == 0, result.stderr
    path = out / "predictions.json"
    assert f"wrote {path}" in result.stdout
    records = json.loads(path.read_text())
    assert len(records) > 0
    for r in records:
        assert r["image_id"] == 165518 and r["file_name"] == image.name
        assert len(r["bbox"]) == 4 and all(isinstance(v, (int, float)) for v in r["bbox"])
        assert r["bbox"][2] >= 0 and r["bbox"][3] >= 0
        assert isinstance(r["score"], float) and 0.05 < r["score"] <= 1.0
        assert isinstance(r["category_id"], int) and 1 <= r["category_id"] <= 90
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [612, 612]
    scores = [r["score"] for r in records]
    assert scores == sorted(scores, reverse=True)
    # pycocotools reads the file as detection results for the val annotations
    gt = COCO(str(shared_data / "coco-mini/annotations/instances_val2017.json"))
    dt = gt.loadRes(str(path))
    assert len(dt.getAnnIds()) == len(records)
    assert {a["image_id"] for a in dt.loadAnns(dt.getAnnIds())} == {165518}
    assert sum(a["area"] > 0 for a in dt.loadAnns(dt.getAnnIds())) > 0


def test_predict_missing_input_fails_with_its_name(converted, shared_data, tmp_path):
    missing = tmp_path / "no_such_image.jpg"
    out = tmp_path / "out"
    result = run(
        "predict", "--weights", str(converted), "--out", str(out), str(shared_data / IMAGE), str(missing)
    )
    assert result.returncode != 0
    assert str(missing) in result.stderr and "not found" in result.stderr
    assert not (out / "predictions.json").exists()


def test_help_does_not_import_torch():
    # `maskrcnn --help` and building the parser stay quick: torch loads only when a command runs
    code = "import sys, maskrcnn.cli; maskrcnn.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools decode
def test_predict_matches_torchvision_on_the_same_weights(converted, shared_data, tmp_path):
    """`maskrcnn convert` + `maskrcnn predict` give torchvision's own detections of the converted
    model, detection by detection: xywh boxes, scores, category ids (torchvision's COCO labels are
    the category ids) and masks."""
    import numpy as np
    import pycocotools.mask as mask_util
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    images = [shared_data / IMAGE]  # one full-size image: two R50 forward passes cost ~20 s here
    out = tmp_path / "out"
    result = run(
        "predict", "--weights", str(converted), "--out", str(out), "--no-overlays", *map(str, images)
    )
    assert result.returncode == 0, result.stderr
    records = json.loads((out / "predictions.json").read_text())
    tv = torchvision_model("v1")  # the weights the `converted` fixture saved
    for path in images:
        with Image.open(path) as im:  # decoded the torchvision way, independently of our decoder
            tensor = pil_to_tensor(im.convert("RGB")).float() / 255.0
        with torch.no_grad():
            expected = tv([tensor])[0]
        mine = [r for r in records if r["file_name"] == path.name]
        assert len(mine) == len(expected["boxes"]) > 10, path.name
        x1, y1, x2, y2 = expected["boxes"].unbind(1)
        xywh = torch.stack((x1, y1, x2 - x1, y2 - y1), dim=1)
        assert torch.allclose(torch.tensor([r["bbox"] for r in mine]), xywh, rtol=0, atol=1e-2)
        assert torch.allclose(torch.tensor([r["score"] for r in mine]), expected["scores"], rtol=0, atol=1e-4)
        assert [r["category_id"] for r in mine] == expected["labels"].tolist()
        assert all(r["image_id"] == int(path.stem) for r in mine)
        ours = np.stack([mask_util.decode(r["segmentation"]) for r in mine]).astype(bool)
        theirs = (expected["masks"][:, 0] > 0.5).numpy()
        assert ours.shape == theirs.shape == (len(mine), tensor.shape[1], tensor.shape[2])
        inter, union = (ours & theirs).sum((1, 2)), (ours | theirs).sum((1, 2))
        assert (inter >= 0.99 * union).all() and (union > 0).all()
