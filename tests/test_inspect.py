"""`maskrcnn inspect` on a real COCO image: every picture, a page that Chromium renders, and the
numbers behind the pictures checked against the model's own matcher, level mapper and output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn.cli import main
from maskrcnn.config import resolve
from maskrcnn.data.coco import CocoDataset
from maskrcnn.data.transforms import load_image
from maskrcnn.engine.checkpoint import save_model
from maskrcnn.inspect import inspect_model, write_inspection
from maskrcnn.model.matcher import BACKGROUND, IGNORE
from maskrcnn.model.roi_pooler import assign_levels
from maskrcnn.ops.boxes import box_iou
from maskrcnn.structures import Targets
from tests.conftest import skip_or_fail_in_ci
from tests.helpers import TINY_NET, chromium_screenshot, find_chromium, run

IMAGE = "coco-mini/val2017/000000214753.jpg"  # 640x424, two riders on horses: 4 instances
ANNOTATIONS = "coco-mini/annotations/instances_val2017.json"
STAGES = [
    "anchors",
    "rpn_pre_nms",
    "rpn_post_nms",
    "roi_levels",
    "box_refinement",
    "mask_logits",
    "detections",
]
TINY = [*TINY_NET, "model.num_classes=80"]  # the tiny network at the default 800 px inputs


def coco_spec(shared_data: Path) -> str:
    return f"coco:{shared_data / ANNOTATIONS}:{shared_data / 'coco-mini/val2017'}"


@pytest.fixture(scope="module")
def weights(tmp_path_factory, shared_data) -> Path:
    """A tiny random model at the default input size (800 px), made decisive so that it detects
    things: sharper class, objectness and mask layers (the default init gives near-uniform scores)."""
    torch.manual_seed(0)
    names = CocoDataset(shared_data / ANNOTATIONS, shared_data / "coco-mini/val2017").class_names
    model = maskrcnn.build_model(resolve("default", TINY), class_names=names)
    with torch.no_grad():
        model.roi_heads.box.predictor.cls_score.weight.mul_(40.0)
        model.roi_heads.box.predictor.bbox_pred.weight.mul_(5.0)
        model.rpn.head.objectness.weight.mul_(3.0)
        model.roi_heads.mask.head.predictor.weight.mul_(3.0)
    path = tmp_path_factory.mktemp("inspect") / "tiny.pt"
    save_model(model, path)
    return path


@pytest.fixture(scope="module")
def inspected(weights, shared_data, tmp_path_factory) -> Path:
    """The command as a user runs it, with the image's COCO annotations."""
    out = tmp_path_factory.mktemp("inspect") / "out"
    result = run(
        "inspect",
        "--weights",
        str(weights),
        "--annotations",
        coco_spec(shared_data),
        "--out",
        str(out),
        str(shared_data / IMAGE),
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote 8 pictures and {out / 'index.html'}" in result.stdout
    return out


def test_writes_every_picture_and_a_page(inspected):
    page = (inspected / "index.html").read_text()
    summary = json.loads((inspected / "summary.json").read_text())
    files = [p["file"] for p in summary["pictures"]]
    assert files == [f"{s}.png" for s in STAGES[:1] + ["anchor_targets"] + STAGES[1:]]
    for picture in summary["pictures"]:
        with Image.open(inspected / picture["file"]) as im:
            assert im.width >= 400 and im.height >= 200
            colors = im.convert("RGB").getcolors(maxcolors=1 << 24)
            assert len(colors) > 200, picture["file"]  # a photograph under the drawing, not a blank
        assert f'src="{picture["file"]}"' in page
        assert picture["caption"] and len(picture["caption"]) > 80
    assert summary["image"]["original_size"] == [424, 640]
    assert summary["image"]["input_size"] == [800, 1207]  # shorter side to 800, as the model resizes


def test_page_renders_in_chromium(inspected, tmp_path):
    chromium = find_chromium()
    if chromium is None:
        skip_or_fail_in_ci("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    pixels = chromium_screenshot(chromium, inspected / "index.html", tmp_path, size=(1280, 2000))
    assert pixels.shape[:2] == (2000, 1280)
    # a page of text alone has a few hundred colours (anti-aliasing); the pictures bring thousands
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000
    # below the header the page is mostly pictures, not the near-white background
    body = pixels[400:]
    assert (body.min(axis=2) < 200).mean() > 0.3


@pytest.fixture(scope="module")
def reference(weights, shared_data) -> dict:
    """What the model itself says about the image: anchor matches, RoI levels, detections."""
    model = maskrcnn.load(str(weights)).model
    image = load_image(shared_data / IMAGE)
    dataset = CocoDataset(shared_data / ANNOTATIONS, shared_data / "coco-mini/val2017")
    index = [dataset.file_name(i) for i in range(len(dataset))].index(Path(IMAGE).name)
    targets, _ = dataset.load_targets(index)
    with torch.no_grad():
        batch, resized = model.preprocess([image], [targets])
        features = model.backbone(batch.tensor)
        sizes = [tuple(f.shape[-2:]) for f in features]
        anchors = torch.cat(model.rpn.anchor_generator(sizes, tuple(batch.tensor.shape[-2:]), "cpu"))
        matched = model.rpn.matcher(box_iou(resized[0].boxes, anchors))
        proposals, _ = model.propose(batch, features)
    pooler = model.roi_heads.box.pooler
    levels = assign_levels(
        proposals[0].boxes,
        min_level=pooler.min_level,
        max_level=pooler.max_level,
        canonical_box_size=pooler.canonical_box_size,
        canonical_level=pooler.canonical_level,
    )
    (det,) = model.predict([image])
    return {
        "matched": matched,
        "gt_boxes": resized[0].boxes,
        "levels": {f"P{pooler.min_level + i}": int((levels == i).sum()) for i in range(len(pooler.scales))},
        "detections": det,
    }


def test_anchor_targets_are_the_matchers(inspected, reference):
    summary = json.loads((inspected / "summary.json").read_text())
    targets = summary["anchor_targets"]
    matched = reference["matched"]
    positive = int((matched >= 0).sum())
    assert 0 < positive < 2000
    assert targets["positive"] == targets["positive_drawn"] == positive
    assert targets["negative"] == int((matched == BACKGROUND).sum())
    assert targets["ignored"] == int((matched == IGNORE).sum())
    assert sum(targets["positive_per_box"]) == positive and min(targets["positive_per_box"]) >= 1
    # the ground truth went through the model's resize (640x424 -> 1207x800)
    assert torch.allclose(torch.tensor(targets["gt_boxes"]), reference["gt_boxes"], atol=0.01)
    caption = next(p["caption"] for p in summary["pictures"] if p["id"] == "anchor_targets")
    assert f"{positive} positive" in caption
    # the dashed white outlines of the ground truth lie on those resized boxes in the picture
    with Image.open(inspected / "anchor_targets.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    for x1, y1, x2, y2 in reference["gt_boxes"].round().int().tolist():
        white = (pixels[y2 - 2, x1 + 2 : x2 - 2] == 255).all(axis=1)  # the bottom edge
        assert white.mean() > 0.4, (x1, y1, x2, y2)


def test_roi_levels_and_detections_are_the_models(inspected, reference):
    summary = json.loads((inspected / "summary.json").read_text())
    levels = summary["roi_levels"]
    assert levels["counts"] == reference["levels"]
    assert sum(1 for c in levels["counts"].values() if c > 0) >= 2  # not vacuous: several levels used
    page = (inspected / "index.html").read_text()
    for name, count in levels["counts"].items():
        assert f"{name} {count:,}" in page
    det = reference["detections"]
    final = summary["detections"]
    assert final["count"] == len(det) > 0
    n = final["drawn"]
    assert torch.allclose(torch.tensor(final["boxes"]), det.boxes[:n], atol=0.01)
    assert final["labels"] == det.labels[:n].tolist()
    # every refined box came from a proposal and ends as one of the model's detections
    for row in summary["box_refinement"]["shown"]:
        assert 0 <= row["proposal_index"] < summary["rpn"]["post_nms"]
    assert len(summary["mask_logits"]["shown"]) == min(8, len(det))


def test_box_refinement_pairs_are_the_models_own_proposal_indices(inspected, weights, shared_data):
    """Each drawn pair (proposal -> detection) is the proposal the model refined: decoding that
    proposal with the box branch's deltas for the detection's class gives the detection's box, and
    its class probability is the detection's score. A nearest-box guess would fail this for
    detections whose proposals overlap."""
    model = maskrcnn.load(str(weights)).model
    image = load_image(shared_data / IMAGE)
    ins = inspect_model(model, image)
    with torch.no_grad():
        batch, _ = model.preprocess([image])
        features = model.backbone(batch.tensor)
        (proposals,), _ = model.propose(batch, features)
        class_logits, box_deltas = model.roi_heads.box(features, [proposals.boxes])
    assert torch.equal(ins.proposal_boxes, proposals.boxes)  # the model's proposals, not a copy's
    labels, sources = ins.detections.labels, ins.det_sources
    assert len(sources) > 10 and len(set(sources.tolist())) > 1
    refined = model.roi_heads.box.box_coder.decode(
        box_deltas.reshape(len(proposals), -1, 4)[sources, labels], proposals.boxes[sources]
    )[:, 0]
    h, w = ins.input_size
    refined[:, 0::2] = refined[:, 0::2].clamp(0, w)
    refined[:, 1::2] = refined[:, 1::2].clamp(0, h)
    assert torch.equal(refined, ins.det_input_boxes)
    scores = class_logits.softmax(-1)[sources, labels]
    assert torch.equal(scores, ins.detections.scores)
    # the page's table lists those same indices
    summary = json.loads((inspected / "summary.json").read_text())
    shown = summary["box_refinement"]["shown"]
    assert {r["rank"]: r["proposal_index"] for r in shown} == {
        j + 1: int(sources[j]) for j in range(len(shown))
    }


def test_without_annotations_there_is_no_anchor_target_picture(weights, shared_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["inspect", "--weights", str(weights), "--out", str(out), str(shared_data / IMAGE)]) == 0
    assert "wrote 7 pictures" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{s}.png" for s in STAGES)
    summary = json.loads((out / "summary.json").read_text())
    assert "anchor_targets" not in summary
    assert "anchor_targets.png" not in (out / "index.html").read_text()


def test_image_missing_from_the_annotations_is_a_one_line_error(weights, shared_data, tmp_path, capsys):
    two = shared_data / "coco-2img"
    spec = f"coco:{two / 'annotations/instances_val2017.json'}:{two / 'images/val2017'}"
    out = tmp_path / "out"
    argv = ["inspect", "--weights", str(weights), "--annotations", spec, "--out", str(out)]
    assert main([*argv, str(shared_data / IMAGE)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no image named '000000214753.jpg'") and err.count("\n") == 1
    assert not out.exists()


def test_no_detections_and_no_ground_truth_still_give_every_picture(weights, shared_data, tmp_path):
    model = maskrcnn.load(str(weights)).model
    model.roi_heads.box.score_thresh = 1.01  # nothing passes
    image = load_image(shared_data / IMAGE)
    h, w = image.shape[-2:]
    empty = Targets(
        torch.zeros((0, 4)), torch.zeros(0, dtype=torch.int64), torch.zeros((0, h, w), dtype=torch.uint8)
    )
    result = inspect_model(model, image, targets=empty)
    pictures = write_inspection(result, tmp_path, title="nothing to see")
    assert len(pictures) == 8 and all((tmp_path / p["file"]).is_file() for p in pictures)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["detections"]["count"] == 0 and summary["mask_logits"]["shown"] == []
    targets = summary["anchor_targets"]
    assert targets["positive"] == targets["ignored"] == 0
    assert targets["negative"] == summary["anchors"]["total"]
